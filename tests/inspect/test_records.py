"""frames_to_records: one record per input in order, one error policy for batch runs and the daemon."""

from __future__ import annotations

import numpy as np

from crackscope.inspect.decision import Verdict
from crackscope.inspect.model import OnnxModel
from crackscope.inspect.pipeline import InspectConfig
from crackscope.inspect.records import Input, frames_to_records
from crackscope.inspect.sinks import SavePolicy


def test_an_image_the_pipeline_cannot_take_costs_only_its_own_record(brightness_model, tmp_path, caplog):
    bright, dark = np.full((40, 40, 3), 200, np.uint8), np.full((40, 40, 3), 60, np.uint8)
    seven_channels = np.zeros((40, 40, 7), np.uint8)  # no colour conversion takes it: the pipeline raises
    inputs = [
        Input("bright.png", "a" * 64, bright, timings={"read": 0.01}),
        Input("odd.tif", "b" * 64, seven_channels),
        Input("cut.jpg", "c" * 64, None, "truncated JPEG (no end-of-image marker)"),
        Input("dark.png", "d" * 64, dark),
    ]
    with OnnxModel(brightness_model) as model:
        records = frames_to_records(model, inputs, InspectConfig(), folder=tmp_path, policy=SavePolicy("none"))
    assert [r.source for r in records] == ["bright.png", "odd.tif", "cut.jpg", "dark.png"]
    assert [r.verdict for r in records] == [Verdict.DEFECT, Verdict.ERROR, Verdict.ERROR, Verdict.OK]
    assert records[1].error.startswith("cannot inspect this image (")
    assert records[2].error == "truncated JPEG (no end-of-image marker)"
    assert records[0].timings["read"] == 0.01 and "model" in records[0].timings
    assert "an image could not be inspected" in caplog.text
