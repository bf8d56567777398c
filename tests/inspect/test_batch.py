"""Batch runs over folders: one record per input, ERROR records for bad files, resume after kill -9, report."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackscope.cli import main
from crackscope.inspect.batch import BatchConfig, InputError, expand_inputs, run_batch
from crackscope.inspect.sinks import ResultStore, StoreError
from crackscope.training.synthetic import make_frame

pytestmark = pytest.mark.slow

BAD_FILES = {"empty.jpg": "file is empty", "notes.png": "not a decodable image", "cut.jpg": "truncated JPEG"}


def _write_frames(folder: Path, count: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        frame, _ = make_frame(256, 320, np.random.default_rng(i), n_cracks=i % 2)
        path = folder / f"part_{i:03d}.jpg"
        cv2.imwrite(str(path), frame)
        paths.append(path)
    return paths


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    good = _write_frames(folder / "nested", 6)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not a picture")
    raw = good[1].read_bytes()
    (folder / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    (folder / "readme.txt").write_text("not an image name: ignored in folders")
    return folder


def _config(inputs: Path, line_model, out: Path, **overrides) -> BatchConfig:
    return BatchConfig(inputs=(str(inputs),), model=str(line_model.fp32), out=str(out), progress=False, **overrides)


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_every_input_gets_one_record_and_bad_files_get_error_records(inputs, line_model, tmp_path):
    out = tmp_path / "out"
    summary = run_batch(_config(inputs, line_model, out))
    assert summary.inspected == 9 and summary.counts["ERROR"] == 3 and summary.exit_code == 0
    with ResultStore(out) as store:
        records = {Path(r.source).name: r for r in store.records()}
        assert store.integrity() == "ok"
    assert set(records) == {f"part_{i:03d}.jpg" for i in range(6)} | set(BAD_FILES)
    for name, reason in BAD_FILES.items():
        assert records[name].verdict.value == "ERROR" and reason in records[name].error
    assert {r.verdict.value for n, r in records.items() if n.startswith("part")} <= {"OK", "DEFECT", "REVIEW"}
    assert sorted(r["id"] for r in _jsonl(out)) == sorted(r.id for r in records.values())
    flagged = [r for r in records.values() if r.verdict.value in ("DEFECT", "REVIEW")]
    assert flagged and all((out / r.overlay_path).is_file() and (out / r.heatmap_path).is_file() for r in flagged)
    assert all(r.overlay_path is None for r in records.values() if r.verdict.value == "OK")


def test_the_report_is_one_static_page_with_counts_model_and_gallery(inputs, line_model, tmp_path):
    out = tmp_path / "out"
    summary = run_batch(_config(inputs, line_model, out, save_overlays="all"))
    page = summary.report.read_text()
    assert "http://" not in page and "https://" not in page  # no external assets
    with ResultStore(out) as store:
        model_id = next(store.records()).model_id
        overlays = [r.overlay_path for r in store.records() if r.overlay_path]
    assert model_id in page and "not calibrated" not in page and "identity" in page
    assert len(overlays) == 6 and all(f"href='{path}'" in page for path in overlays)
    assert "truncated JPEG" in page


def test_running_again_skips_what_is_recorded_and_reinspects_changed_files(inputs, line_model, tmp_path):
    out = tmp_path / "out"
    run_batch(_config(inputs, line_model, out))
    again = run_batch(_config(inputs, line_model, out))
    assert (again.inspected, again.skipped) == (0, 9)
    changed = inputs / "nested" / "part_000.jpg"
    cv2.imwrite(str(changed), make_frame(256, 320, np.random.default_rng(99), n_cracks=1)[0])
    third = run_batch(_config(inputs, line_model, out))
    assert (third.inspected, third.skipped) == (1, 8)
    assert len(_jsonl(out)) == 10  # the old record of the changed file stays: it was true of the old bytes


def test_a_run_killed_with_sigkill_resumes_without_losing_or_duplicating_records(line_model, tmp_path):
    folder = tmp_path / "many"
    _write_frames(folder, 40)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "crackscope.cli", "inspect", str(folder), "--model", str(line_model.fp32)]
    command += ["--out", str(out), "--no-progress", "--batch-size", "8", "--save-overlays", "all", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if _row_count(out) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored_before = _row_count(out)
    assert 5 <= stored_before < 40, "the kill should land mid-run"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with ResultStore(out) as store:
        records = list(store.records())
        assert store.integrity() == "ok"
    assert len(records) == 40 and len({r.source for r in records}) == 40
    lines = _jsonl(out)
    assert sorted(r["id"] for r in lines) == sorted(r.id for r in records)
    assert not list(out.rglob("*.partial"))


def _row_count(out: Path) -> int:
    if not (out / "results.sqlite").exists():
        return 0
    try:
        with sqlite3.connect(out / "results.sqlite", timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_fail_on_defect_exits_3_and_usage_errors_exit_2_without_writing(inputs, line_model, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["inspect", str(inputs), "--model", str(line_model.fp32), "--out", str(out), "--no-progress"]
    assert main(base) == 0
    assert main([*base, "--fail-on", "defect"]) == 3
    missing = tmp_path / "out-missing"
    assert main(["inspect", str(tmp_path / "nope"), "--model", str(line_model.fp32), "--out", str(missing)]) == 2
    assert "nope: no such file or folder" in capsys.readouterr().err
    assert not missing.exists()
    assert main(["inspect", str(inputs), "--model", str(tmp_path / "none.onnx"), "--out", str(missing)]) == 2
    assert not missing.exists()


def test_globs_folders_and_files_expand_in_order_without_duplicates(inputs):
    files = expand_inputs([str(inputs / "nested" / "part_00*.jpg"), str(inputs), str(inputs / "notes.png")])
    names = [p.name for p in files]
    assert names[:6] == [f"part_{i:03d}.jpg" for i in range(6)] and len(names) == len(set(names)) == 9
    with pytest.raises(InputError, match="matches"):
        expand_inputs([str(inputs / "*.tiff")])


def test_sixteen_bit_and_grey_png_inputs_are_inspected(line_model, tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    frame, _ = make_frame(200, 240, np.random.default_rng(5), n_cracks=1)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(folder / "grey.png"), grey)
    cv2.imwrite(str(folder / "deep.png"), grey.astype(np.uint16) * 257)
    summary = run_batch(_config(folder, line_model, tmp_path / "out"))
    assert summary.counts["ERROR"] == 0 and summary.inspected == 2


def test_a_results_folder_of_another_model_is_refused_before_anything_changes(inputs, line_model, tmp_path):
    out = tmp_path / "out"
    run_batch(_config(inputs, line_model, out))
    before = (out / "results.jsonl").read_bytes()
    with pytest.raises(StoreError, match="another model"):
        run_batch(BatchConfig(inputs=(str(inputs),), model=str(line_model.int8), out=str(out), progress=False))
    assert (out / "results.jsonl").read_bytes() == before
