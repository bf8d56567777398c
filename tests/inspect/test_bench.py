"""crackscope bench: candidate layouts, the CPU other processes took, and a real measurement in-process."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from crackscope.config import from_dict
from crackscope.inspect.batch import BatchConfig
from crackscope.inspect.bench import (
    BenchConfig,
    busy_seconds,
    candidate_layouts,
    others_share,
    parse_frame,
    run_bench,
)
from crackscope.inspect.daemon import daemon_config
from crackscope.inspect.model import Layout


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
