"""benchmarks/dense_consistency.py fine-tunes on unlabelled frames and measures dense vs tiled agreement around it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackscope.training.synthetic import make_frame

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "benchmarks" / "dense_consistency.py"


def _frames(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        frame, _ = make_frame(128, 160, rng, n_cracks=i % 2)
        cv2.imwrite(str(folder / f"frame_{i}.jpg"), frame)
    return folder


@pytest.mark.slow
def test_the_experiment_measures_before_and_after_on_frames_it_does_not_train_on(tiny_run, tmp_path):
    first, second = _frames(tmp_path / "a", 3, 0), _frames(tmp_path / "b", 3, 1)
    out = tmp_path / "result.json"
    command = [sys.executable, str(SCRIPT), "--checkpoint", str(tiny_run.checkpoint), "--steps", "2"]
    command += ["--frames", str(first), "--frames", str(second), "--measure-frames", "1", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 training frames, 2 measured" in result.stdout  # the measured frames are held out of training
    payload = json.loads(out.read_text())
    assert [row["frames"] for row in payload["before"]] == [f"1 {first}", f"1 {second}"]
    # A 128x160 frame padded to 128x160 and tiled at 64 px with 25% overlap (stride 32 on the cell grid): 3 x 4.
    assert [row["tiles"] for row in payload["before"]] == [12, 12]
    for row in payload["before"]:  # before any step the model is the original
        assert row["tiled_vs_original"] == 1.0 and row["tiled_mean_abs_drift"] == 0.0
        assert 0.0 <= row["dense_vs_tiled"] <= 1.0 and row["mean_abs_diff"] > 0.0  # context changes the logits
    assert all(0.0 <= row["dense_vs_tiled"] <= 1.0 for row in payload["after"])
    assert "| dense vs tiled before | after |" in result.stdout


def test_no_frames_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--frames", str(empty)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: no frames to train or measure on in {empty}"
