"""The runtime scores a frame with part_score and the card's part scoring; the thresholds decide on that score."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from crackscope.cli import main
from crackscope.config import ConfigError, from_dict
from crackscope.inspect.card import Calibration, ModelCard, ModelCardError, read_card, save_atomically, with_card
from crackscope.inspect.daemon import daemon_config
from crackscope.inspect.decision import Verdict, probability, verdicts, worst
from crackscope.inspect.model import OnnxModel
from crackscope.inspect.parts import MAX, PartScoring
from crackscope.inspect.pipeline import InspectConfig, _prepare, decide, inspect_frames

BAND = Calibration(temperature=2.0, ok_below=0.3, defect_at_or_above=0.8, method="test")
TOP2, TOP5, NOISY_OR = PartScoring("topk", 2), PartScoring("topk", 5), PartScoring("noisy_or")


def _logits(probabilities: list[float], temperature: float) -> np.ndarray:
    """Logits whose calibrated probabilities are the given ones."""
    p = np.array(probabilities)
    return (temperature * np.log(p / (1 - p))).astype(np.float32)


def _decide(probabilities: list[float], scoring: PartScoring, calibration: Calibration = BAND):
    """A 64 x 96 frame cut into six 32-px tiles (no overlap), decided with the given tile probabilities."""
    config = InspectConfig(overlap=0.0)
    item = _prepare(np.zeros((64, 96, 3), np.uint8), 32, config)
    assert int(item.keep.sum()) == len(probabilities) == 6
    cams = np.zeros((6, 2, 2), np.float32)
    return decide(item, _logits(probabilities, calibration.temperature), cams, calibration, config, scoring)


def test_under_max_scoring_the_frame_is_its_worst_tile_as_before_part_scoring():
    rng = np.random.default_rng(0)
    for _ in range(200):
        probabilities = rng.choice([0.05, 0.29, 0.3, 0.31, 0.5, 0.79, 0.8, 0.81, 0.97], 6).tolist()
        result = _decide(probabilities, MAX)
        tile_probs = probability(_logits(probabilities, BAND.temperature), BAND)
        assert result.verdict is worst(verdicts(tile_probs, BAND))
        assert result.score == float(tile_probs.max())


# Six tiles, thresholds OK below 0.3, DEFECT at or above 0.8; frame scores worked by hand.
#   four lukewarm tiles: max 0.5; top-2 0.5; top-5 (4 * 0.5 + 0.1) / 5 = 0.42; noisy-OR 1 - 0.5^4 * 0.9^2 = 0.949375
#   one hot tile:        max 0.9; top-2 (0.9 + 0.1) / 2 = 0.5; top-5 (0.9 + 4 * 0.1) / 5 = 0.26; noisy-OR
#                        1 - 0.1 * 0.9^5 = 0.940951
LUKEWARM = [0.5, 0.5, 0.5, 0.5, 0.1, 0.1]
ONE_HOT = [0.9, 0.1, 0.1, 0.1, 0.1, 0.1]


@pytest.mark.parametrize(
    ("tiles", "scoring", "score", "frame_verdict"),
    [
        (LUKEWARM, MAX, 0.5, Verdict.REVIEW),
        (LUKEWARM, TOP2, 0.5, Verdict.REVIEW),
        (LUKEWARM, TOP5, 0.42, Verdict.REVIEW),
        (LUKEWARM, NOISY_OR, 0.949375, Verdict.DEFECT),
        (ONE_HOT, MAX, 0.9, Verdict.DEFECT),
        (ONE_HOT, TOP2, 0.5, Verdict.REVIEW),
        (ONE_HOT, TOP5, 0.26, Verdict.OK),
        (ONE_HOT, NOISY_OR, 0.940951, Verdict.DEFECT),
    ],
)
def test_the_frame_score_is_the_part_score_of_its_tiles_and_the_thresholds_decide_on_it(
    tiles, scoring, score, frame_verdict
):
    result = _decide(tiles, scoring)
    assert result.score == pytest.approx(score, abs=1e-6)
    assert result.verdict is frame_verdict


@pytest.mark.parametrize(
    ("tiles", "scoring", "frame_verdict", "reason"),
    [
        (LUKEWARM, MAX, Verdict.REVIEW, "in the ambiguity band: 4 uncertain tile(s)"),
        (ONE_HOT, TOP2, Verdict.REVIEW, "tiles disagree: 1 tile(s) score DEFECT"),
        ([0.06] * 6, NOISY_OR, Verdict.REVIEW, "tiles add up: every tile is OK"),  # 1 - 0.94^6 = 0.310
        ([0.05] * 6, NOISY_OR, Verdict.OK, None),  # 1 - 0.95^6 = 0.265
        (ONE_HOT, MAX, Verdict.DEFECT, None),
    ],
)
def test_a_review_frame_carries_why_and_other_frames_carry_none(tiles, scoring, frame_verdict, reason):
    result = _decide(tiles, scoring)
    assert result.verdict is frame_verdict
    if reason is None:
        assert result.reason is None
    else:
        assert result.reason.startswith(reason)


def test_tile_verdicts_do_not_depend_on_the_part_scoring():
    per_scoring = [[t.verdict for t in _decide(ONE_HOT, scoring).tiles] for scoring in (MAX, TOP5, NOISY_OR)]
    assert per_scoring[0] == [Verdict.DEFECT] + [Verdict.OK] * 5 and per_scoring[0] == per_scoring[1] == per_scoring[2]


def test_a_frame_with_no_inspected_tile_is_ok_with_score_zero_under_every_scoring():
    config = InspectConfig(overlap=0.0, roi=((200, 200), (300, 200), (300, 300)))  # outside the frame
    item = _prepare(np.zeros((64, 96, 3), np.uint8), 32, config)
    empty = np.zeros(0, np.float32), np.zeros((0, 2, 2), np.float32)
    eager = Calibration(ok_below=0.0, defect_at_or_above=0.0, method="test")  # any score is DEFECT
    for scoring in (MAX, TOP2, NOISY_OR):
        result = decide(item, *empty, eager, config, scoring)
        assert (result.verdict, result.score, result.tiles) == (Verdict.OK, 0.0, ())


# --- through a real ONNX file: the card's scoring, and overrides --------------------------------------------------


def _with_scoring(path: Path, scoring: PartScoring) -> Path:
    proto = onnx.load(str(path))
    save_atomically(with_card(proto, dataclasses.replace(read_card(path), part_scoring=scoring)), path)
    return path


def _frame() -> np.ndarray:
    """Six 32-px tiles under the brightness model: grey 136 scores logit +1 (top left), grey 120 logit -1."""
    frame = np.full((64, 96, 3), 120, np.uint8)
    frame[:32, :32] = 136
    return frame


HOT, COLD = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))  # sigmoid(1) = 0.7311, sigmoid(-1) = 0.2689


@pytest.mark.parametrize(
    ("card_scoring", "override", "score", "frame_verdict"),
    [
        (MAX, {}, HOT, Verdict.DEFECT),
        (TOP5, {}, (HOT + 4 * COLD) / 5, Verdict.OK),  # 0.3614: below the identity threshold 0.5
        (NOISY_OR, {}, 1 - COLD * HOT**5, Verdict.DEFECT),  # 1 - (1 - HOT)(1 - COLD)^5 = 0.9438
        (TOP5, {"part_scoring": "max"}, HOT, Verdict.DEFECT),
        (MAX, {"part_scoring": "topk", "part_k": 6}, (HOT + 5 * COLD) / 6, Verdict.OK),  # 0.3460
        (MAX, {"part_scoring": "topk"}, (HOT + 2 * COLD) / 3, Verdict.OK),  # k defaults to 3
    ],
)
def test_inspect_frames_scores_with_the_cards_part_scoring_unless_the_config_overrides_it(
    brightness_model, card_scoring, override, score, frame_verdict
):
    with OnnxModel(_with_scoring(brightness_model, card_scoring), providers="cpu") as model:
        [result] = inspect_frames(model, [_frame()], InspectConfig(overlap=0.0, **override))
    assert result.score == pytest.approx(score, abs=1e-6)
    assert result.verdict is frame_verdict
    assert [t.verdict for t in result.tiles] == [Verdict.DEFECT] + [Verdict.OK] * 5


def test_the_inspect_start_line_names_the_part_scoring_in_force(brightness_model, tmp_path, capsys):
    model = _with_scoring(brightness_model, TOP5)
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "frame.png"), _frame())
    base = ["inspect", str(folder), "--model", str(model), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "card")]) == 0
    from_card = "frame score: mean of the 5 highest tile probabilities (top-k, k=5), from the model card"
    assert from_card in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "flag"), "--part-scoring", "noisy_or"]) == 0
    from_flag = "frame score: noisy-OR of the tile probabilities, 1 - prod(1 - p), set by part_scoring"
    assert f"{from_flag} (the model card says top5)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"part_scoring": "mean"},
            r"config.part_scoring: expected Literal\['max', 'topk', 'noisy_or'\] or None, got str 'mean'",
        ),
        ({"part_scoring": "topk", "part_k": "2"}, "config.part_k: expected int or None, got str '2'"),
        ({"part_scoring": "topk", "part_k": 0}, "k must be an integer of at least 1, got 0"),
        ({"part_k": 2}, "part_k applies only to part_scoring topk"),
        ({"part_scoring": "noisy_or", "part_k": 2}, "part_k applies only to part_scoring topk"),
    ],
)
def test_part_scoring_settings_are_checked_when_read(values, message):
    with pytest.raises(ValueError, match=message):
        from_dict(InspectConfig, values)


def test_a_daemon_config_with_an_unknown_part_scoring_names_the_key():
    with pytest.raises(ConfigError, match=r"daemon config\.inspect\.part_scoring: expected"):
        daemon_config({"source": "0", "model": "m.onnx", "inspect": {"part_scoring": "avg"}}, {})


# --- the card carries the scoring -----------------------------------------------------------------------------------


def test_the_card_round_trips_its_part_scoring():
    card = ModelCard(backbone="resnet18", input_size=224, feature_size=7, part_scoring=PartScoring("topk", 5))
    metadata = card.to_metadata()
    assert metadata["crackscope.part_scoring"] == '{"k": 5, "method": "topk"}'
    assert ModelCard.from_metadata(metadata) == card


def test_a_version_1_card_without_part_scoring_loads_with_max():
    card = ModelCard(backbone="resnet18", input_size=224, feature_size=7)
    old = {k: v for k, v in card.to_metadata().items() if k != "crackscope.part_scoring"}
    old["crackscope.format_version"] = "1"
    loaded = ModelCard.from_metadata(old, "old.onnx")
    assert loaded.part_scoring == MAX and loaded.format_version == 1


def test_a_card_with_a_part_scoring_this_version_does_not_know_is_refused_by_name():
    metadata = {**ModelCard("resnet18", 224, 7).to_metadata(), "crackscope.part_scoring": '{"method": "median"}'}
    with pytest.raises(ModelCardError, match=r"^new\.onnx: model card does not fit .*'median'"):
        ModelCard.from_metadata(metadata, "new.onnx")
