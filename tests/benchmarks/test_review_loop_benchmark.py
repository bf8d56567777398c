"""benchmarks/review_loop.py: the simulated reviewers decide and mark from the masks, and the figures count tiles."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from crackscope.inspect.card import Calibration, ModelCard
from crackscope.inspect.decision import Verdict
from crackscope.inspect.results import InspectionResult, new_id, utc_now
from crackscope.inspect.review.store import Label, ReviewStore
from crackscope.inspect.sinks import ResultStore
from crackscope.labelled import MaskLabelling

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import review_loop

RULES = MaskLabelling().for_tile(64)
MODEL = "d" * 64
CALIBRATION = Calibration(ok_below=0.3, defect_at_or_above=0.8, method="test")


def _record(source: str, verdict: Verdict, tiles, regions=()) -> InspectionResult:
    return InspectionResult(
        new_id(),
        source,
        "0" * 64,
        utc_now(),
        verdict,
        max(t[4] for t in tiles),
        MODEL,
        128,
        64,
        regions=tuple(regions),
        tiles=tuple(tiles),
    )


def _crack_mask() -> np.ndarray:
    """A 128 x 64 frame: a crack through the centre of the left tile, and one through the right tile."""
    mask = np.zeros((64, 128), bool)
    mask[30:34, 10:54] = True
    mask[10:54, 94:97] = True
    return mask


def test_a_reviewer_boxes_each_crack_per_tile_sized_cell_and_frames_are_judged_by_their_clear_tiles():
    mask = _crack_mask()
    assert review_loop.defect_boxes(mask, 64) == [(6, 26, 52, 12), (90, 6, 11, 52)]
    assert review_loop.defect_boxes(mask, 128) == [(6, 6, 95, 52)]  # one cell: one box round both
    passed = _record("b.png", Verdict.OK, [(0, 0, 64, 64, 0.1), (64, 0, 64, 64, 0.1)])
    assert review_loop.frame_truth(passed, mask, RULES) == "crack"
    assert review_loop.frame_truth(passed, np.zeros_like(mask), RULES) == "ok"
    corner = np.zeros_like(mask)
    corner[0:3, 0:6] = True  # a few crack pixels at a tile's edge: mask-ambiguous, and too few to box
    assert review_loop.frame_truth(passed, corner, RULES) == "ambiguous"
    assert review_loop.defect_boxes(corner, 64) == []


def test_the_simulated_review_decides_marks_and_splits_as_stated(tmp_path):
    folder = tmp_path / "results"
    hot, cold = [(0, 0, 64, 64, 0.95), (64, 0, 64, 64, 0.1)], [(0, 0, 64, 64, 0.1), (64, 0, 64, 64, 0.1)]
    corner = np.zeros((64, 128), bool)
    corner[0:3, 0:3] = True
    records = [_record("hit.png", Verdict.DEFECT, hot), _record("miss.png", Verdict.OK, cold)]
    records += [_record(f"amb{i}.png", Verdict.REVIEW, [(0, 0, 64, 64, 0.5)]) for i in range(20)]
    masks = {"hit.png": _crack_mask(), "miss.png": _crack_mask(), **{f"amb{i}.png": corner for i in range(20)}}
    with ResultStore(folder) as store:
        store.add(records)
        card = ModelCard(backbone="tf_efficientnet_lite0", input_size=64, feature_size=2, calibration=CALIBRATION)
        store.set_meta(model_id=MODEL, model_path="m.onnx", card=card.to_metadata())
    options = review_loop.LoopOptions(out=str(tmp_path), data="", reviewed=22, passed_share=0.05, disagreement=0.5)
    summary = review_loop.simulate_review(folder, masks, options, RULES, 64)
    assert (
        summary["frames"] == 22
        and summary["passed"] == 1
        and summary["truth"] == {"crack": 2, "ok": 0, "ambiguous": 20}
    )
    assert 3 <= summary["split_votes"] <= 17  # 20 draws at 0.5
    with ReviewStore(folder) as review:
        ids = {r.source: r.id for r in review.records(review.all_decisions())}
        assert [d.label for d in review.decisions(ids["miss.png"])] == [Label.DEFECT, Label.DEFECT]
        assert [m.box for m in review.marks(ids["miss.png"])] == [(6, 26, 52, 12), (90, 6, 11, 52)]
        assert [m.box for m in review.marks(ids["hit.png"])] == [(6, 26, 52, 12), (90, 6, 11, 52)]  # found or not
        splits = sum(Label.OK in [d.label for d in review.decisions(ids[f"amb{i}.png"])] for i in range(20))
    assert splits == summary["split_votes"]


def test_held_out_figures_count_tiles_at_the_thresholds_and_at_a_matched_false_reject_rate():
    outcomes = {"crack": np.array([0.1, 0.4, 0.9, 0.95]), "ok": np.array([0.05, 0.1, 0.2, 0.5, 0.85])}
    figures = review_loop.held_out_figures(outcomes, 0.3, 0.8, match_frr=0.2)
    assert figures["recall"] == 0.75 and figures["defect_recall"] == 0.5
    assert figures["false_reject"] == pytest.approx(0.2) and figures["ok_review_rate"] == pytest.approx(0.2)
    assert figures["recall_at_base_false_reject"] == 0.5  # above the 0.5 of the second-highest ok tile: 0.9, 0.95
    assert figures["recall_at_1%_false_reject"] == 0.5  # above every ok tile (0.85): 0.9 and 0.95
    assert review_loop.recall_at(outcomes["crack"], outcomes["ok"], 0.4) == 0.75  # two ok tiles may pass: > 0.2
