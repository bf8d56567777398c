"""benchmarks/frames.py measures every session layout of a model on the same frame, in shared rounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_frames_benchmark_reports_one_session_x_two_threads_and_two_sessions_x_one(brightness_model, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "frames.py"),
            "--model",
            str(brightness_model),
            "--width",
            "200",
            "--height",
            "160",
            "--overlaps",
            "0",
            "--quick",
            "--json",
            str(tmp_path / "frames.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "frames.json").read_text())["rows"]
    assert [(row["layout"], row["overlap"]) for row in rows] == [("1x2", 0.0), ("2x1", 0.0)]
    assert all(row["error"] is None and len(row["rounds_s"]) == 2 for row in rows)
    # 32-px tiles without overlap: x at 0, 32, ..., 160 and 168 (flush with the edge), y at 0, 32, ..., 128
    assert rows[0]["tiles"] == rows[1]["tiles"] == 7 * 5
    assert rows[0]["batches"] == rows[1]["batches"] == 2  # 35 tiles: 32 + 3 on one session, 17 + 18 on two
    assert "## Session layouts" in result.stdout
    assert "| 1 session x 2 threads |" in result.stdout and "| 2 sessions x 1 thread |" in result.stdout


def test_the_frames_benchmark_times_dense_against_tiled_inference_and_measures_their_agreement(
    brightness_pair, tmp_path
):
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "frames.py"), "--model", str(brightness_pair)]
    command += ["--width", "256", "--height", "192", "--dense-only", "--quick", "--agreement-frames", "2"]
    result = subprocess.run(
        [*command, "--json", str(tmp_path / "frames.json")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    dense = json.loads((tmp_path / "frames.json").read_text())["dense"]
    speed = dense["speed"]
    # 64 px tiles: tiled at a 48 px stride (25% overlap), dense at 32 px (the stride rounded down to whole cells)
    assert (speed["tiled_tiles"], speed["dense_tiles"], speed["dense_overlap"]) == (4 * 5, 5 * 7, 0.5)
    assert speed["tiled_s"] > 0 and speed["dense_s"] > 0 and speed["rounds"] == 2
    # On real frames where the shared datasets are present; the brightness pair agrees exactly
    assert all(a["decision_agreement"] == 1.0 and a["frames"] == 2 for a in dense["agreement"])
    assert "## Dense whole-frame mode vs tiled" in result.stdout and "paired rounds" in result.stdout
