"""The exported card carries what training chose: the part scoring comes from the checkpoint's validation metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crackscope.deploy.export import card_for
from crackscope.inspect.card import ModelCard
from crackscope.inspect.parts import PartScoring
from crackscope.labelled import Clarity, Sample
from crackscope.training.backbones import build_model
from crackscope.training.checkpoint import CheckpointHeader
from crackscope.training.evaluate import Predictions, metrics_for


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tf_efficientnet_lite0", pretrained=False, dropout=0.2, input_size=32).eval()


def _validation_metrics() -> dict:
    """Validation metrics as the trainer stores them, from patches of two images where noisy-OR ranks best.

    Crack image [0.5 x 6] scores max 0.5, noisy-OR 0.984; ok image [0.6, 0.6] scores max 0.6, noisy-OR 0.84.
    """
    patches = [("crack.png", 1.0, 0.5)] + [("crack.png", 0.0, 0.5)] * 5 + [("ok.png", 0.0, 0.6)] * 2
    samples = tuple(Sample(Path(g), t, Clarity.CLEAR, g, (i, 0, 8, 8)) for i, (g, t, _) in enumerate(patches))
    probabilities = np.array([p for *_, p in patches])
    return metrics_for(Predictions(samples, np.log(probabilities / (1 - probabilities)))).to_dict()


def _header(model, metrics: dict) -> CheckpointHeader:
    return CheckpointHeader.for_model(model, config={}, metrics=metrics, data={}, epoch=1)


def test_export_copies_the_part_scoring_the_trainer_chose_into_the_card(model):
    card = card_for(model, _header(model, _validation_metrics()), "fp32")
    assert card.part_scoring == PartScoring("noisy_or")
    assert ModelCard.from_metadata(card.to_metadata()).part_scoring == PartScoring("noisy_or")


def test_a_checkpoint_without_a_part_scoring_exports_a_card_that_scores_frames_by_max(model):
    assert card_for(model, _header(model, {"accuracy": 0.9}), "fp32").part_scoring == PartScoring("max")
