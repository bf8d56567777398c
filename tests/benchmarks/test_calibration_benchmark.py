"""benchmarks/calibration.py runs end to end on any model and folder (--model/--data) and prints its tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_calibration_benchmark_measures_a_model_on_held_out_halves(brightness_model, grey_dataset, tmp_path):
    data = grey_dataset(tmp_path / "grey", {"crack": 500, "ok": 500, "ambiguous": 60}, seed=6)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "calibration.py"),
            "--model",
            str(brightness_model),
            "--data",
            str(data),
            "--ambiguous-data",
            str(data),
            "--json",
            str(tmp_path / "rows.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "rows.json").read_text())
    strict = rows[0]
    assert strict["setting"].startswith("escape 0.01") and strict["refused"] is None  # 250 cracks per half
    assert strict["calibration_items"]["crack"] + strict["test_items"]["crack"] == 500
    assert strict["escape_rate"] <= 0.02 and strict["ece_after"] < strict["ece_before"]
    assert strict["ambiguous"]["ratio"] >= 3
    assert "| ECE <= 1% after scaling |" in result.stdout and "ambiguous patches in REVIEW" in result.stdout
