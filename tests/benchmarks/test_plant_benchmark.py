"""benchmarks/plant.py hostile: a batch with every kind of hostile file gets one record per file, each as its kind
should, and the entries that are not inputs are listed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import plant


def test_a_small_hostile_batch_meets_the_goal_with_every_kind_present(brightness_model, tmp_path, capsys):
    out = tmp_path / "figures.json"
    code = plant.main(
        ["hostile", "--model", str(brightness_model), "--inputs", "96", "--hostile-share", "0.25", "--json", str(out)]
    )
    figures = json.loads(out.read_text())
    assert code == 0 and figures["goal_met"], figures
    assert figures["records"] == figures["inputs"] == 96 and figures["hostile"] == 24
    assert set(figures["errors_by_kind"]) == {k for k, (_, _, error) in plant.HOSTILE.items() if error}
    assert all(count == 3 for count in figures["errors_by_kind"].values())  # 24 hostile files, 8 kinds in turn
    assert set(figures["skipped_entries"]) == {"dangling.jpg", "loop.jpg", "x.jpg"}
