"""The camera daemon end to end: real videos and folders in, the results store out, metrics over real HTTP."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import pytest

from crackscope.cli import main
from crackscope.config import ConfigError
from crackscope.inspect.bench import BenchConfig, bench_path, run_bench
from crackscope.inspect.daemon import DaemonConfig, daemon_config, run_daemon
from crackscope.inspect.model import file_sha256
from crackscope.inspect.sinks import ResultStore
from crackscope.inspect.sources import Backoff, HotFolderConfig, SourceState
from crackscope.inspect.trigger import TriggerConfig
from crackscope.training.synthetic import make_frame, write_video

REPO_ROOT = Path(__file__).resolve().parents[2]


def _frames(count: int, seed: int = 0) -> list:
    return [make_frame(96, 128, seed + i, n_cracks=i % 2)[0] for i in range(count)]


def _jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(_frames(count, seed)):
        path = folder / f"part{seed + i:03d}.jpg"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def _integrity(out: Path) -> str:
    with sqlite3.connect(out / "results.sqlite") as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# --- configuration --------------------------------------------------------------------------------------------------


def test_yaml_values_are_defaults_and_flags_override_them_down_to_nested_keys():
    yaml_values = {
        "source": "inbox",
        "model": "m.onnx",
        "out": "results",
        "queue_size": 3,
        "trigger": {"mode": "motion", "motion_threshold": 6},
        "inspect": {"overlap": 0.5, "max_batch": 8, "roi": [[0, 0], [100, 0], [100, 80]], "skip_uniform_std": 2.5},
    }
    flags = {"source": "line.avi", "out": None, "trigger": {"mode": None, "motion_threshold": 9.0}}
    config = daemon_config(yaml_values, flags)
    assert (config.source, config.out, config.queue_size) == ("line.avi", "results", 3)
    assert config.trigger.mode == "motion" and config.trigger.motion_threshold == 9.0
    assert config.inspect.overlap == 0.5 and config.inspect.max_batch == 8 and config.inspect.skip_uniform_std == 2.5
    assert len(config.inspect.roi) == 3


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"queue_size": "8"}, "config.queue_size: expected int, got str '8'"),
        ({"inspect": {"overlap": "wide"}}, "config.inspect.overlap: expected float, got str 'wide'"),
        (
            {"trigger": {"mode": "sometimes"}},
            "config.trigger.mode: expected 'none' or 'interval' or 'motion', got str 'sometimes'",
        ),
        ({"save_frame": "yes"}, "config.save_frame: expected bool, got str 'yes'"),
        ({"hot_folder": 5}, "hot_folder: expected a mapping"),
        ({"reconnect": {"initial_s": 1, "wait": 3}}, "unknown key(s) wait"),
        ({"inspect": {"overlap": 1.5}}, "overlap must be in [0, 1)"),
        ({"model": None}, "no model: pass --model"),
        ({"session_workers": "two"}, "config.session_workers: expected int or None, got str 'two'"),
        ({"session_workers": 0}, "session_workers: must be an integer of at least 1, got 0"),
        ({"threads": 0}, "threads: must be an integer of at least 1, or unset, got 0"),
        ({"threads": 1.5}, "config.threads: expected int or None, got float 1.5"),
    ],
)
def test_a_bad_config_value_is_reported_with_its_key(values, message):
    base = {"source": "line.avi", "model": "m.onnx", "out": "results"}
    with pytest.raises(ConfigError) as error:
        daemon_config({**base, **values}, {})
    assert message in str(error.value)


def test_a_trigger_on_a_hot_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="hot folder"):
        DaemonConfig(source=str(tmp_path), model="m.onnx", out="o", trigger=TriggerConfig(mode="motion"))
    with pytest.raises(ConfigError, match="hot folder"):
        daemon_config({"source": str(tmp_path), "model": "m", "out": "o", "trigger": {"mode": "interval"}}, {})


def test_a_missing_model_or_an_impossible_source_ends_with_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "inbox").mkdir()
    args = ["daemon", "--source", str(tmp_path / "inbox"), "--out", str(tmp_path / "out")]
    assert main([*args, "--model", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert "missing.onnx: model file does not exist" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["daemon", "--source", str(tmp_path / "nowhere"), "--model", "m.onnx", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "nowhere: does not exist" in err and "Traceback" not in err


# --- video files ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_video_file_gets_one_record_per_frame_and_the_daemon_exits_0_at_its_end(line_model, tmp_path, capsys, caplog):
    video = write_video(tmp_path / "line.avi", _frames(16))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="crackscope"):
        code = main(["daemon", "--source", str(video), "--model", str(line_model.fp32), "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["inspected"] == 16 and summary["state"] == "ended" and summary["dropped"] == 0
    with ResultStore(out) as store:
        records = list(store.records())
        assert store.integrity() == "ok"
    assert [r.source for r in records] == [f"{video.resolve()}#{i:06d}" for i in range(16)]
    assert [r["id"] for r in _jsonl(out)] == [r.id for r in records]
    flagged = [r for r in records if r.verdict.value in ("DEFECT", "REVIEW")]
    assert flagged and sum(r.verdict.value == "DEFECT" for r in records) >= 6  # half the frames have a crack
    for record in records:
        paths = (record.image_path, record.overlay_path, record.heatmap_path)
        if record in flagged:
            assert all((out / p).is_file() for p in paths)
        else:
            assert paths == (None, None, None)
    assert (out / "daemon.yaml").is_file()
    uncalibrated = [r for r in caplog.records if "not calibrated" in r.getMessage()]
    assert len(uncalibrated) == 1


def test_the_daemon_runs_the_session_layout_it_was_given_and_says_so_at_start(brightness_model, tmp_path, caplog):
    video = write_video(tmp_path / "line.avi", _frames(4))
    flags = {"source": str(video), "model": str(brightness_model), "out": str(tmp_path / "out")}
    config = daemon_config({"session_workers": 2, "threads": 1, "providers": "cpu"}, flags)
    with caplog.at_level(logging.INFO, logger="crackscope"):
        summary = run_daemon(config)
    assert summary.frames == 4
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("inspecting ")]
    assert len(started) == 1 and started[0].endswith("on CPUExecutionProvider as 2 sessions x 1 thread")
    assert "session_workers: 2" in (tmp_path / "out" / "daemon.yaml").read_text()


def test_the_daemon_given_no_layout_runs_the_one_bench_saved_for_this_machine(brightness_model, tmp_path, caplog):
    # busy_share 1: no round counts as busy, so the result is trusted even on a loaded machine
    bench = BenchConfig(str(brightness_model), frame=(64, 64), seconds=0.0, cores=2, providers="cpu", busy_share=1.0)
    best = run_bench(bench).best.layout
    video = write_video(tmp_path / "line.avi", _frames(2))
    flags = {"source": str(video), "model": str(brightness_model), "out": str(tmp_path / "out")}
    with caplog.at_level(logging.INFO, logger="crackscope"):
        assert run_daemon(daemon_config({"providers": "cpu"}, flags)).frames == 2
    messages = [r.getMessage() for r in caplog.records]
    chosen = [m for m in messages if "crackscope bench" in m]
    assert len(chosen) == 1
    assert chosen[0].startswith(
        f"session layout {best.describe()} from crackscope bench of {bench_path(brightness_model)}"
    )
    assert any(m.startswith("inspecting ") and m.endswith(f"as {best.describe()}") for m in messages)
    assert (
        f"session_workers: {best.workers}\nthreads: {best.threads}\n" in (tmp_path / "out" / "daemon.yaml").read_text()
    )


def test_the_daemon_warns_when_the_saved_bench_is_for_another_version_of_the_model(
    brightness_model, write_brightness_model, tmp_path, caplog
):
    run_bench(BenchConfig(str(brightness_model), frame=(64, 64), seconds=0.0, cores=2, providers="cpu"))
    write_brightness_model(brightness_model, precision="int8")
    video = write_video(tmp_path / "line.avi", _frames(1))
    flags = {"source": str(video), "model": str(brightness_model), "out": str(tmp_path / "out")}
    with caplog.at_level(logging.INFO, logger="crackscope"):
        run_daemon(daemon_config({"providers": "cpu"}, flags))
    (warning,) = [r for r in caplog.records if "crackscope bench" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "measured for another version of the model" in warning.getMessage()
    assert "session_workers: 1\nthreads: null\n" in (tmp_path / "out" / "daemon.yaml").read_text()


@pytest.mark.slow
def test_a_restarted_daemon_skips_the_frames_already_stored(line_model, tmp_path):
    video = write_video(tmp_path / "line.avi", _frames(8))
    config = DaemonConfig(source=str(video), model=str(line_model.fp32), out=str(tmp_path / "out"))
    first = run_daemon(config)
    again = run_daemon(config)
    assert first.frames == 8 and again.frames == 0 and again.skipped["done"] == 8
    with ResultStore(tmp_path / "out") as store:
        assert sum(store.counts().values()) == 8


@pytest.mark.slow
def test_the_motion_gate_inspects_a_scene_once_until_it_changes(line_model, tmp_path):
    scene_a, scene_b = _frames(2, seed=40)
    video = write_video(tmp_path / "idle.avi", [scene_a] * 6 + [scene_b] * 6 + [scene_a] * 3)
    config = daemon_config(
        {"trigger": {"mode": "motion"}},
        {"source": str(video), "model": str(line_model.fp32), "out": str(tmp_path / "out")},
    )
    summary = run_daemon(config)
    assert summary.frames == 3 and summary.skipped["motion"] == 12
    with ResultStore(tmp_path / "out") as store:
        assert [r.source[-7:] for r in store.records()] == ["#000000", "#000006", "#000012"]


@pytest.mark.slow
def test_a_video_cut_short_mid_run_ends_the_daemon_cleanly_with_what_was_read(line_model, tmp_path):
    video = write_video(tmp_path / "cut.avi", _frames(120, seed=200))
    out = tmp_path / "out"

    def cut_after_some_records() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (out / "results.jsonl").exists() and len((out / "results.jsonl").read_text().splitlines()) >= 3:
                break
            time.sleep(0.01)
        os.truncate(video, video.stat().st_size // 2)

    cutter = threading.Thread(target=cut_after_some_records)
    cutter.start()
    config = DaemonConfig(
        source=str(video),
        model=str(line_model.fp32),
        out=str(out),
        queue_size=1,
        batch_frames=1,
        reconnect=Backoff(initial_s=0.05),
    )
    summary = run_daemon(config)
    cutter.join()
    assert summary.source.state is SourceState.ENDED and "cut short" in summary.source.last_error
    assert 3 <= summary.frames < 120 and summary.source.reconnects == 1
    assert _integrity(out) == "ok" and len(_jsonl(out)) == summary.frames


# --- hot folders ----------------------------------------------------------------------------------------------------


def _run_in_thread(config: DaemonConfig) -> tuple[threading.Thread, threading.Event, list]:
    stop, result = threading.Event(), []
    thread = threading.Thread(target=lambda: result.append(run_daemon(config, stop=stop)))
    thread.start()
    return thread, stop, result


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_hot_folder_files_present_at_start_are_inspected_moved_and_not_inspected_again_after_a_restart(
    line_model, tmp_path
):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    originals = _jpegs(inbox, 3)
    kept = {p.name: p.read_bytes() for p in originals}
    config = DaemonConfig(
        source=str(inbox),
        model=str(line_model.fp32),
        out=str(out),
        hot_folder=HotFolderConfig(settle_s=0.1, poll_s=0.05),
    )
    processed = inbox / "processed"
    thread, stop, result = _run_in_thread(config)
    _wait_for(lambda: processed.is_dir() and len(list(processed.iterdir())) == 3)
    stop.set()
    thread.join(timeout=30)
    assert result[0].frames == 3 and not any(inbox.glob("*.jpg"))

    for name, data in kept.items():  # the same files dropped in again, plus one new file
        (inbox / name).write_bytes(data)
    _jpegs(inbox, 1, seed=50)
    thread, stop, result = _run_in_thread(config)
    _wait_for(lambda: not any(inbox.glob("*.jpg")))
    stop.set()
    thread.join(timeout=30)
    assert result[0].frames == 1 and result[0].skipped["done"] == 3
    with ResultStore(out) as store:
        sources = sorted(Path(r.source).name for r in store.records())
    assert sources == ["part000.jpg", "part001.jpg", "part002.jpg", "part050.jpg"]
    assert len(list(processed.iterdir())) == 4  # same names, same bytes: the first copies are kept, not doubled


# --- the daemon as a process ----------------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _metric(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert values, f"{name} not in /metrics"
    return values[0]


@pytest.mark.slow
def test_daemon_process_serves_metrics_and_health_over_http_and_exits_0_on_sigterm(line_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    _jpegs(inbox, 4)
    (inbox / "broken.jpg").write_bytes(b"not an image")
    config = tmp_path / "daemon.yaml"
    config.write_text("hot_folder:\n  settle_s: 0.1\n  poll_s: 0.05\ninspect:\n  max_batch: 16\n")
    command = [sys.executable, "-m", "crackscope.cli", "daemon", "--source", str(inbox)]
    command += ["--model", str(line_model.fp32), "--out", str(out), "--config", str(config), "--metrics-port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    try:
        base, deadline = None, time.monotonic() + 60
        while base is None:
            assert process.poll() is None and time.monotonic() < deadline, "the daemon did not start serving"
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                if "serving http://" in line:
                    base = line.split("serving ", 1)[1].split("/healthz", 1)[0]
        assert base.startswith("http://127.0.0.1:")

        def inspected() -> float:
            text = _get(base + "/metrics")[1].decode()
            return sum(
                _metric(text, f'crackscope_frames_inspected_total{{verdict="{v}"}}')
                for v in ("OK", "REVIEW", "DEFECT", "ERROR")
            )

        _wait_for(lambda: inspected() == 5)
        code, body = _get(base + "/metrics")
        metrics = body.decode()
        assert code == 200
        assert _metric(metrics, 'crackscope_frames_inspected_total{verdict="ERROR"}') == 1
        assert _metric(metrics, "crackscope_frame_latency_seconds_count") == 5
        for name in ("crackscope_queue_depth", "crackscope_source_reconnects_total", "crackscope_frames_dropped_total"):
            assert _metric(metrics, name) == 0
        assert _metric(metrics, "crackscope_source_up") == 1

        code, body = _get(base + "/healthz")
        health = json.loads(body)
        assert code == 200 and health["status"] == "ok" and health["source"]["state"] == "open"
        assert health["model_id"] == file_sha256(line_model.fp32) and health["calibrated"] is False
        assert health["last_frame_time"] and sum(health["inspected"].values()) == 5
        assert _get(base + "/nothing")[0] == 404

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    summary = json.loads(process.stdout.read().strip().splitlines()[-1])
    assert summary["inspected"] == 5 and summary["state"] == "closed"
    assert _integrity(out) == "ok"
    with ResultStore(out) as store:
        records = list(store.records())
    assert len(records) == 5 == len(_jsonl(out))
    [error] = [r for r in records if r.verdict.value == "ERROR"]
    assert Path(error.source).name == "broken.jpg" and error.error
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == sorted(
        ["broken.jpg", "part000.jpg", "part001.jpg", "part002.jpg", "part003.jpg"]
    )
