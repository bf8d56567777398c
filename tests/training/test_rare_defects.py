"""Rare defects end to end: balanced sampling, hard-negative mining and a time budget in real (tiny) runs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from crackscope.training import synthetic
from crackscope.training.train import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rare_data(tmp_path_factory) -> Path:
    """6 crack and 60 ok patches of 32 px: cracks are 1 in 11."""
    return synthetic.write_patch_dataset(tmp_path_factory.mktemp("rare"), n_crack=6, n_ok=60, size=32, seed=5)


def _config(data: Path, out: Path, **changes) -> TrainConfig:
    values = dict(input_size=32, batch_size=8, workers=0, augment="light", progress=False, pretrained=False)
    values.update(changes)
    return TrainConfig(data=str(data), out=str(out), **values)


def test_balanced_sampling_with_hard_negatives_trains_and_logs_the_kept_share(rare_data, tmp_path, capsys):
    result = train(_config(rare_data, tmp_path / "run", epochs=3, sampler="balanced", hard_negatives=0.25))
    out = capsys.readouterr().out
    # 48 training ok items (80% of 60), a quarter kept before each of the 2 fine-tuning epochs.
    kept = [line for line in out.splitlines() if line.startswith("hard negatives: kept")]
    assert len(kept) == 2 and all("kept 12 of 48 ok items" in line for line in kept)
    assert [h.stage for h in result.history] == ["head", "finetune", "finetune"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["history"][0]["train_loss"] is None and saved["history"][1]["train_loss"] > 0


def test_a_time_budget_ends_the_run_early_and_warns_that_it_was_too_short(rare_data, tmp_path, caplog):
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="crackscope.training.train"):
        # No head stage, so the budget goes to fine-tuning however long a head fit would take on busy cores.
        budget = dict(max_minutes=0.05, target_steps=100_000, max_epochs=500, head_epochs=0)
        result = train(_config(rare_data, tmp_path / "run", **budget))
    assert time.perf_counter() - started < 60
    assert len(result.history) < 500
    warnings = [r.getMessage() for r in caplog.records]
    assert any("time budget (--max-minutes)" in w for w in warnings), warnings
    assert (tmp_path / "run" / "model.pt").is_file()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sampler": "oversample"}, "sampler: unknown value 'oversample'"),
        ({"hard_negatives": 0.0}, "hard_negatives: expected a share in (0, 1]"),
        ({"positive_share": 1.0}, "positive_share: expected a share in (0, 1)"),
        ({"max_minutes": -1.0}, "max_minutes: expected a positive number"),
        ({"head_fit": "svm"}, "head_fit: unknown value 'svm'"),
    ],
)
def test_meaningless_settings_are_refused_before_any_data_is_read(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        train(_config(tmp_path / "no-such-folder", tmp_path / "run", **changes))
    assert not (tmp_path / "run").exists()
