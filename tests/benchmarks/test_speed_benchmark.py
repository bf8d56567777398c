"""benchmarks/speed.py times what it should: every graph it times computes the model's answers first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_speed_benchmark_times_a_plain_export_of_the_same_network_beside_ours(tmp_path):
    out = tmp_path / "speed.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "speed.py"), "--quick", "--input-size", "64"]
    result = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    checks = payload["checks"]
    scale = checks["fp32 logit std over the check tiles (scale for the rest)"]
    assert scale > 0
    # The plain graph (preprocessed float NCHW in, no CAM) is the same network as the exported one.
    assert checks["plain export vs cam graph: logit max |diff|"] <= 1e-3 * max(1.0, scale)
    assert checks["ORT fp32 vs PyTorch: logit max |diff|"] <= 1e-3 * max(1.0, scale)
    ratios = {row["ratio"]: row for row in payload["ratios"]}
    plain = ratios["plain export / ORT fp32 (cost of our graph)"]
    assert plain["goal"] == "<= 1.15x" and set(plain["values"]) == {"1", "2"}
    assert all(value > 0 for value in plain["values"].values())
    assert "ONNX Runtime fp32, plain export (float NCHW in, logit only)" in result.stdout
