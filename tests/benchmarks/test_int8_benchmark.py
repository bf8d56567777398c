"""benchmarks/int8.py measures int8 recipes of any checkpoint against fp32 on its held-out images, and times them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_int8_benchmark_reports_agreement_correlation_and_paired_speed_of_each_candidate(
    tiny_run, patch_data, tmp_path
):
    images = sorted(str(path.relative_to(patch_data)) for path in patch_data.glob("[co]*/*.png"))
    held_out = images[::4]
    split = tmp_path / "tiny.split.json"
    split.write_text(
        json.dumps({"job": "tiny", "dataset": patch_data.name, "seed": 0, "input_size": 64, "test": held_out})
    )
    candidates = ["main", "default", "pair-safe+tail-4+tiles-32"]
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "int8.py"), "--checkpoint", str(tiny_run.checkpoint)]
    command += ["--split", str(split), "--data", str(patch_data.parent), "--candidates", *candidates]
    command += ["--calib-tiles", "48", "--rounds", "2", "--runs", "1", "--warmup", "1", "--sizes", "1", "2"]
    result = subprocess.run(
        [*command, "--json", str(tmp_path / "int8.json")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((tmp_path / "int8.json").read_text())
    assert payload["verification"] == f"{len(held_out)} held-out test images of tiny"
    accuracy = payload["accuracy"]
    assert list(accuracy) == candidates
    assert [accuracy[name]["calibration_tiles"] for name in candidates] == [48, 48, 32]
    for measured in accuracy.values():
        assert 0.0 <= measured["agreement"] <= 1.0
        assert -1.0 <= measured["correlation_p5"] <= measured["correlation_mean"] <= 1.0
    assert payload["candidates"]["pair-safe+tail-4+tiles-32"]["recipe"]["float_tail_convs"] == 4
    timing = payload["timing"]
    assert set(timing["fp32 ms/tile"]) == {"1", "2"} and set(timing["default speed-up"]) == {"1", "2"}
    assert "| default (default) |" in result.stdout and "x fp32 b2" in result.stdout
