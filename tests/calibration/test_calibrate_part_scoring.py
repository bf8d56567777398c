"""Calibration and the runtime agree under any part scoring: calibration items are one tile each."""

from __future__ import annotations

import dataclasses

import onnx
import pytest

from crackscope.calibration.calibrate import CalibrateConfig, calibrate
from crackscope.inspect.card import read_card, save_atomically, with_card
from crackscope.inspect.images import read_image
from crackscope.inspect.model import OnnxModel
from crackscope.inspect.parts import PartScoring
from crackscope.inspect.pipeline import InspectConfig, inspect_frames


@pytest.mark.parametrize("scoring", [PartScoring("noisy_or"), PartScoring("topk", 3)])
def test_the_runtime_gives_the_verdicts_calibrate_reported_whatever_the_cards_part_scoring(
    brightness_model, grey_dataset, tmp_path, scoring
):
    # A one-tile frame's part score is its tile's probability under every scoring, so thresholds fitted on items
    # mean the same to the runtime's frame verdicts.
    proto = onnx.load(str(brightness_model))
    save_atomically(
        with_card(proto, dataclasses.replace(read_card(brightness_model), part_scoring=scoring)), brightness_model
    )
    data = grey_dataset(tmp_path / "calib", {"crack": 120, "ok": 120, "ambiguous": 30}, seed=1)
    outcome = calibrate(
        CalibrateConfig(
            model=str(brightness_model), data=str(data), out=str(tmp_path / "o"), progress=False, escape_rate=0.05
        )
    )
    assert read_card(brightness_model).part_scoring == scoring  # calibrate rewrites the calibration only
    counts = {}
    with OnnxModel(brightness_model) as model:
        for label in ("crack", "ok", "ambiguous"):
            frames = [read_image(p) for p in sorted((data / label).glob("*.png"))]
            found = [r.verdict.value for r in inspect_frames(model, frames, InspectConfig())]
            counts[label] = {v: found.count(v) for v in ("OK", "REVIEW", "DEFECT")}
    assert counts["crack"] == outcome.clear.crack and counts["ok"] == outcome.clear.ok
    assert counts["ambiguous"] == outcome.ambiguous
