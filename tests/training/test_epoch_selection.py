"""Which epoch a run keeps, and how it reports fine-tuning that did not beat the head-only epoch."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from crackscope.labelled import Clarity, Sample
from crackscope.training.train import (
    Best,
    EpochRecord,
    TrainConfig,
    check_choices,
    choose_balance,
    fine_tuning_report,
)


def _record(epoch: int, val_loss: float, val_ap: float | None, stage: str = "finetune") -> EpochRecord:
    return EpochRecord(stage, epoch, 0.1, val_loss, 0.9, 0.9, 1.0, 10.0, val_ap)


@pytest.mark.parametrize(
    ("best", "candidate", "select_by", "kept"),
    [
        # Rare defects: the loss rises (a few confident mistakes on easy ok items) while cracks rank better.
        (Best(0.09, 0.60, epoch=1), _record(2, 0.12, 0.80), "ap", True),
        (Best(0.09, 0.60, epoch=1), _record(2, 0.12, 0.80), "loss", False),
        # The loss falls while the ranking collapses: AP keeps the earlier epoch.
        (Best(0.50, 0.90, epoch=1), _record(2, 0.20, 0.40), "ap", False),
        # Equal AP (1.0 is common on easy sets): the lower loss wins.
        (Best(0.05, 1.0, epoch=1), _record(2, 0.04, 1.0), "ap", True),
        (Best(0.05, 1.0, epoch=1), _record(2, 0.06, 1.0), "ap", False),
        # AP undefined (one class in validation): the loss decides.
        (Best(0.05, None, epoch=1), _record(2, 0.04, None), "ap", True),
        # The first finite epoch is always kept; a non-finite one never.
        (Best(), _record(1, 3.0, 0.1), "ap", True),
        (Best(), _record(1, math.nan, 0.9), "ap", False),
        (Best(0.05, 0.5, epoch=1), _record(2, math.inf, 0.9), "ap", False),
    ],
)
def test_the_kept_epoch_is_the_one_with_the_best_validation_ap_ties_to_the_lower_loss(best, candidate, select_by, kept):
    assert best.beaten_by(candidate, select_by) is kept


def test_fine_tuning_below_the_head_only_ap_is_reported_with_its_epochs():
    history = [_record(1, 0.1, 0.70, "head"), _record(2, 0.3, 0.55), _record(3, 0.2, 0.69)]
    report = fine_tuning_report(history)
    assert report.head_ap == 0.70 and report.best_finetune_ap == 0.69
    assert report.below_head == (2, 3) and report.helped is False
    assert "did not beat the head-only epoch" in report.describe() and "epochs below it: 2, 3" in report.describe()


def test_fine_tuning_that_raises_the_ap_is_reported_as_helping():
    report = fine_tuning_report([_record(1, 0.1, 0.70, "head"), _record(2, 0.3, 0.60), _record(3, 0.2, 0.90)])
    assert report.helped is True and report.below_head == (2,)
    assert report.describe() == "fine-tuning raised validation AP from 0.7000 (head only) to 0.9000"


def test_a_run_without_a_head_epoch_or_without_ap_reports_nothing():
    assert fine_tuning_report([_record(1, 0.1, 0.7)]).describe() is None
    assert fine_tuning_report([_record(1, 0.1, None, "head"), _record(2, 0.1, None)]).describe() is None


def _samples(cracks: int, oks: int) -> list[Sample]:
    return [Sample(Path(f"c{i}.png"), 1.0, Clarity.CLEAR, f"c{i}") for i in range(cracks)] + [
        Sample(Path(f"o{i}.png"), 0.0, Clarity.CLEAR, f"o{i}") for i in range(oks)
    ]


@pytest.mark.parametrize(
    ("cracks", "oks", "changes", "sampler", "pos_weight"),
    [
        (50, 50, {}, "shuffle", 1.0),  # balanced classes: nothing to do
        (20, 80, {}, "shuffle", 4.0),  # ratio 4: weighted loss, at the cap
        (20, 90, {}, "balanced", 1.0),  # ratio 4.5: above the cap, auto draws cracks instead
        (10, 100, {"max_positive_weight": 10.0}, "shuffle", 10.0),
        (2, 300, {"sampler": "shuffle"}, "shuffle", 4.0),  # forced shuffle: the weight stays capped
        (2, 300, {"sampler": "shuffle", "max_positive_weight": 200.0}, "shuffle", 150.0),
        (50, 50, {"sampler": "balanced"}, "balanced", 1.0),
    ],
)
def test_rare_cracks_are_drawn_more_often_instead_of_weighted_beyond_the_cap(cracks, oks, changes, sampler, pos_weight):
    balance = choose_balance(_samples(cracks, oks), TrainConfig(**changes))
    assert (balance.sampler, balance.pos_weight) == (sampler, pytest.approx(pos_weight))
    assert balance.describe().startswith("class balance: ")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"select_by": "f1"}, "select_by: unknown value 'f1'"),
        ({"max_positive_weight": 0.5}, "max_positive_weight: expected a weight of at least 1"),
        ({"mask_weight": -1.0}, "mask_weight: expected a non-negative number"),
        ({"grad_clip": 0.0}, "grad_clip: expected a positive number"),
    ],
)
def test_meaningless_balance_and_selection_settings_are_refused_before_any_data_is_read(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_choices(TrainConfig(**changes))
