"""crackscope bench: candidate layouts, the CPU other processes took, a real measurement in-process, and the result
saved beside the model for this machine."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from datetime import datetime

import pytest
import yaml

from crackscope.cli import main
from crackscope.config import from_dict
from crackscope.inspect.batch import BatchConfig
from crackscope.inspect.bench import (
    BenchConfig,
    Round,
    bench_path,
    busy_seconds,
    candidate_layouts,
    choose_layout,
    machine_key,
    others_share,
    parse_frame,
    run_bench,
    usable_cores,
)
from crackscope.inspect.daemon import daemon_config
from crackscope.inspect.model import Layout, file_sha256


@pytest.mark.parametrize(
    ("cores", "labels"),
    [
        (1, ["1x1"]),
        (2, ["1x2", "2x1"]),
        (4, ["1x4", "2x2", "4x1"]),
        (6, ["1x6", "2x3", "3x2", "6x1"]),
        (16, ["1x16", "2x8", "4x4", "8x2", "16x1"]),
    ],
)
def test_candidates_split_every_core_into_sessions_x_threads(cores, labels):
    assert [layout.label for layout in candidate_layouts(cores)] == labels


@pytest.mark.parametrize(
    ("text", "size"), [("2448x2048", (2448, 2048)), ("640X480", (640, 480)), (" 32x32 ", (32, 32))]
)
def test_a_frame_size_is_width_x_height(text, size):
    assert parse_frame(text) == size


@pytest.mark.parametrize("text", ["2448", "2448x", "x2048", "0x10", "wide x tall", "-5x5"])
def test_a_frame_size_that_is_not_width_x_height_is_a_clear_error(text):
    with pytest.raises(ValueError, match=r"expected WIDTHxHEIGHT in pixels, e\.g\. 2448x2048"):
        parse_frame(text)


def test_busy_time_is_user_nice_system_irq_softirq_and_steal_not_idle_or_iowait():
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice
    line = ["cpu", "1000", "200", "300", "90000", "500", "10", "20", "30", "7", "0"]
    assert busy_seconds(line) == pytest.approx((1000 + 200 + 300 + 10 + 20 + 30) / ticks)
    assert busy_seconds(["cpu0", "1", "2", "3", "4", "5", "6", "7", "8"]) is None
    assert busy_seconds(["cpu", "1"]) is None


@pytest.mark.parametrize(
    ("busy", "own", "wall", "cpus", "share"),
    [
        (3.0, 2.0, 1.0, 2, 0.5),  # 3 busy CPU-seconds in 1 s on 2 CPUs, 2 of them ours: others took 1 of 2
        (2.0, 2.0, 1.0, 2, 0.0),  # all busy time was ours
        (1.9, 2.0, 1.0, 2, 0.0),  # counters tick at different moments: never below 0
        (8.0, 0.0, 2.0, 4, 1.0),
        (None, 1.0, 1.0, 2, None),  # no /proc/stat
        (1.0, 0.0, 0.0, 2, None),  # no time passed
    ],
)
def test_the_share_of_other_processes_is_what_is_left_of_the_machines_busy_time(busy, own, wall, cpus, share):
    assert others_share(busy, own, wall, cpus) == (share if share is None else pytest.approx(share))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": ""}, "no model: pass --model"),
        ({"frame": (0, 100)}, "frame: width and height must be at least 1"),
        ({"overlap": 1.0}, "overlap must be in [0, 1)"),
        ({"max_batch": 0}, "max_batch must be at least 1"),
        ({"cores": 0}, "cores: must be at least 1"),
        ({"seconds": -1}, "seconds: must be 0 or more"),
        ({"busy_share": 2.0}, "busy_share: must be in [0, 1]"),
    ],
)
def test_a_bench_config_out_of_range_is_refused_naming_the_key(values, message):
    with pytest.raises(ValueError) as error:
        BenchConfig(**{"model": "m.onnx", **values})
    assert message in str(error.value)


def test_bench_times_every_layout_in_rounds_and_names_the_best_as_config_lines(brightness_model, tmp_path):
    out = tmp_path / "bench.json"
    lines: list[str] = []
    config = BenchConfig(
        model=str(brightness_model), frame=(320, 256), seconds=0.3, cores=2, providers="cpu", out=str(out)
    )
    result = run_bench(config, progress=lines.append)
    assert [r.layout.label for r in result.layouts] == ["1x2", "2x1"]
    # 32-px tiles at stride 24: 13 across 320 (0, 24, ..., 288); 11 down 256 (0, ..., 216, and 224 flush with the edge)
    assert result.tiles_per_frame == 13 * 11
    assert result.rounds and all(set(r.seconds) == {"1x2", "2x1"} for r in result.rounds)
    for layout in result.layouts:
        assert layout.tiles_per_s == pytest.approx(layout.frames_per_s * 143)
        # A per-round ratio to the layout with the best median: another layout can win most rounds on a busy
        # machine (its median ratio then exceeds 1), so only the best's own ratio is fixed.
        assert layout.vs_best > 0
    assert result.best.vs_best == pytest.approx(1.0)
    assert all(r.redone <= config.max_redos for r in result.rounds)
    assert any(line.startswith("round 1:") for line in lines)

    text = result.describe()
    assert "| 1x2 | 1 session x 2 threads |" in text and "| 2x1 | 2 sessions x 1 thread |" in text
    assert "(best)" in text and "load average (1, 5, 15 min):" in text
    assert text.endswith(result.config_lines())

    # The printed lines are a config file that inspect and daemon read as they are.
    pasted = yaml.safe_load(result.config_lines())
    best = result.best.layout
    assert from_dict(BatchConfig, {"model": "m", **pasted}).layout == best
    daemon = daemon_config({"source": "line.avi", "model": "m", "out": "o", **pasted}, {})
    assert Layout(daemon.session_workers, daemon.threads) == best

    saved = json.loads(out.read_text())
    assert saved["best"] == {"session_workers": best.workers, "threads": best.threads}
    assert [row["layout"] for row in saved["layouts"]] == ["1x2", "2x1"] and len(saved["rounds"]) == len(result.rounds)


# --- the result saved beside the model --------------------------------------------------------------------------------


def tiny_bench(model, **overrides):
    """A real bench of a few milliseconds. busy_share 1: no round counts as busy, so the result is trusted even while
    other processes load the machine (another test run, a training job)."""
    values = {"model": str(model), "frame": (64, 64), "seconds": 0.0, "cores": 2, "providers": "cpu", "busy_share": 1.0}
    return run_bench(BenchConfig(**{**values, **overrides}))


@pytest.mark.parametrize(
    ("model", "saved"),
    [
        ("m/model.int8.onnx", "m/model.int8.bench.json"),
        ("m/model.onnx", "m/model.bench.json"),
        ("m/model.dense.onnx", "m/model.dense.bench.json"),
        ("m/model", "m/model.bench.json"),
    ],
)
def test_the_bench_file_sits_beside_its_model_one_per_model_file(model, saved):
    assert bench_path(model).as_posix() == saved


def test_the_machine_key_names_the_host_the_cpu_and_the_usable_cores():
    host, cpu, cores = machine_key().split(" | ")
    assert host == socket.gethostname() and cpu and cores == f"{usable_cores()} cores"


def test_bench_saves_its_result_beside_the_model_under_this_machine_with_the_models_sha256(brightness_model):
    result = tiny_bench(brightness_model)
    path = brightness_model.with_name("brightness.bench.json")
    assert result.saved == path
    saved = json.loads(path.read_text())
    assert saved["crackscope_bench"] == 1 and saved["model"] == "brightness.onnx"
    assert list(saved["machines"]) == [machine_key()]
    entry = saved["machines"][machine_key()]
    best = result.best
    assert entry["model_sha256"] == file_sha256(brightness_model)
    assert entry["best"] == {"session_workers": best.layout.workers, "threads": best.layout.threads}
    assert entry["frames_per_s"] == pytest.approx(best.frames_per_s) and entry["frame"] == [64, 64]
    assert entry["provider"] == "CPUExecutionProvider" and entry["trusted"] is True
    assert datetime.fromisoformat(entry["measured_at"]).tzinfo is not None
    assert entry["load_before"] == (list(result.load_before) if result.load_before else None)
    assert entry["result"] == json.loads(json.dumps(result.to_dict()))
    assert f"saved for this machine in {path}" in result.describe()
    assert result.describe().endswith(result.config_lines())


def test_a_new_bench_replaces_this_machines_entry_and_keeps_another_machines(brightness_model):
    path = tiny_bench(brightness_model).saved
    saved = json.loads(path.read_text())
    ours = saved["machines"][machine_key()]
    other = {**ours, "machine": "line2 | Other CPU | 8 cores", "best": {"session_workers": 4, "threads": 2}}
    saved["machines"] = {other["machine"]: other, machine_key(): {**ours, "model_sha256": "an older model"}}
    path.write_text(json.dumps(saved))

    tiny_bench(brightness_model)
    machines = json.loads(path.read_text())["machines"]
    assert sorted(machines) == sorted([machine_key(), other["machine"]])
    assert machines[other["machine"]] == other
    assert machines[machine_key()]["model_sha256"] == file_sha256(brightness_model)


def test_bench_replaces_a_bench_file_it_cannot_read(brightness_model):
    path = bench_path(brightness_model)
    path.write_text("{not json")
    tiny_bench(brightness_model)
    assert list(json.loads(path.read_text())["machines"]) == [machine_key()]


@pytest.mark.parametrize(
    ("shares", "trusted"),
    [
        ([0.0, 0.1, 0.2], True),
        ([0.9, 0.1], True),  # half the rounds busy: still trusted
        ([0.9, 0.9, 0.1], False),
        ([None, None], True),  # no /proc/stat: nothing known to be busy
    ],
)
def test_a_bench_whose_rounds_were_mostly_busy_is_not_trusted(shares, trusted, brightness_model):
    result = tiny_bench(brightness_model)
    rounds = tuple(Round(result.rounds[0].seconds, share, 3) for share in shares)
    busy = dataclasses.replace(result, rounds=rounds, busy_share=0.25)
    assert busy.trusted is trusted
    assert ("marked as not trusted" in busy.describe()) is not trusted


def test_bench_that_cannot_write_beside_the_model_says_so_in_one_line_and_goes_on(brightness_model, tmp_path, capsys):
    # A folder where the partial file would go: writing fails as in a read-only folder (which root could still write).
    bench_path(brightness_model).with_name("brightness.bench.json.partial").mkdir()
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(brightness_model), "--frame", "64x64", "--seconds", "0", "--cores", "2"]
    assert main([*args, "--providers", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    notes = [line for line in printed.err.splitlines() if not line.startswith(("warm-up", "round"))]
    assert len(notes) == 1 and notes[0].startswith("note: the result is not saved beside the model")
    assert "brightness.bench.json.partial" in notes[0] and "Traceback" not in printed.err
    assert not bench_path(brightness_model).exists()
    assert json.loads(out.read_text())["tiles_per_frame"] == 9  # --out is written all the same
    assert "session_workers:" in printed.out and "saved for this machine" not in printed.out


@pytest.mark.parametrize(
    ("session_workers", "threads", "mode", "expected"),
    [
        (None, None, "tiled", "saved"),
        (1, None, "tiled", Layout(1, None)),  # given explicitly: wins, even when it is the default
        (None, 1, "tiled", Layout(1, 1)),
        (3, 1, "tiled", Layout(3, 1)),
        (None, None, "dense", Layout()),  # bench measures tile models; the dense graph runs one session
    ],
)
def test_a_run_takes_the_saved_layout_only_when_given_neither_key_in_tiled_mode(
    session_workers, threads, mode, expected, brightness_model
):
    best = tiny_bench(brightness_model).best.layout
    layout, saved = choose_layout(brightness_model, session_workers, threads, mode=mode, providers="cpu")
    if expected == "saved":
        assert layout == best and saved is not None and saved.layout == best
        assert saved.note.startswith(f"session layout {best.describe()} from crackscope bench of {saved.file} (")
    else:
        assert (layout, saved) == (expected, None)


def test_with_no_bench_file_a_run_takes_the_default_and_says_nothing(brightness_model):
    assert choose_layout(brightness_model, None, None, providers="cpu") == (Layout(), None)
