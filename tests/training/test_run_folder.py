"""The run folder: nothing is written before the data is read and an epoch is saved; config.yaml matches model.pt.

Also the warning for runs too short to train anything.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from crackscope.training import synthetic
from crackscope.training.checkpoint import load_checkpoint
from crackscope.training.schedule import MIN_OPTIMISER_STEPS, few_steps_warning, plan_schedule
from crackscope.training.train import TrainConfig, train

EARLIER = {"config.yaml": "epochs: 99\n", "metrics.json": '{"accuracy": 0.5}', "model.pt": "weights of an earlier run"}


def _earlier_run(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in EARLIER.items():
        (folder / name).write_text(text)
    return {path.name: path.read_text() for path in folder.iterdir()}


def _tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    values = dict(input_size=32, epochs=1, head_epochs=1, batch_size=16, workers=0, augment="none", progress=False)
    values.update(changes)
    return TrainConfig(data=str(data), out=str(out), pretrained=False, **values)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """12 patches of 32 px: fewer training items than one batch of 16."""
    return synthetic.write_patch_dataset(tmp_path_factory.mktemp("tiny"), n_crack=6, n_ok=6, size=32, seed=0)


@pytest.fixture
def bad_data(tmp_path) -> Path:
    root = synthetic.write_patch_dataset(tmp_path / "bad", n_crack=2, n_ok=2, size=32, seed=0)
    (root / "scratches").mkdir()  # a class folder that maps to no class: a DataError before training
    (root / "scratches" / "a.png").write_bytes((root / "ok" / "ok_00000.png").read_bytes())
    return root


def test_a_run_on_bad_data_leaves_an_earlier_run_in_the_folder_unchanged(bad_data, tmp_path):
    run = tmp_path / "run"
    before = _earlier_run(run)
    with pytest.raises(ValueError, match="scratches"):
        train(_tiny_config(bad_data, run))
    assert {path.name: path.read_text() for path in run.iterdir()} == before


def test_the_cli_leaves_an_earlier_run_unchanged_when_the_data_is_bad(bad_data, tmp_path, capsys):
    from crackscope.cli import main

    run = tmp_path / "run"
    before = _earlier_run(run)
    assert main(["train", "--data", str(bad_data), "--out", str(run), "--epochs", "1"]) == 2
    assert "scratches" in capsys.readouterr().err
    assert {path.name: path.read_text() for path in run.iterdir()} == before


def test_an_output_that_is_a_file_is_refused_before_the_data_is_read(tmp_path):
    out = tmp_path / "run"
    out.write_text("not a folder")
    with pytest.raises(ValueError, match=r"run: --out must be a folder"):
        train(_tiny_config(tmp_path / "no-such-data", out))


@pytest.mark.slow
def test_a_new_run_replaces_every_file_of_an_earlier_run_with_a_config_that_matches_its_model(tiny_data, tmp_path):
    run = tmp_path / "run"
    _earlier_run(run)
    result = train(_tiny_config(tiny_data, run, epochs=2, head_epochs=1, seed=4))
    _, header = load_checkpoint(run / "model.pt")
    saved_config = yaml.safe_load((run / "config.yaml").read_text())
    assert saved_config == header.config and saved_config["epochs"] == 2 and saved_config["seed"] == 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == result.best_epoch == header.epoch
    assert sorted(path.name for path in run.iterdir()) == ["config.yaml", "metrics.json", "model.pt"]


# --- too few optimiser steps ---------------------------------------------------------------------------------------


def _schedule(items: int, **changes):
    values = {"batch_size": None, "epochs": None, "head_epochs": 1, "target_steps": 200, **changes}
    return plan_schedule(items=items, **values)


@pytest.mark.parametrize(
    ("changes", "items", "steps"),
    [
        ({"epochs": 4, "batch_size": 32}, 10, 3),  # fewer items than one batch: one step per epoch
        ({"epochs": 8, "batch_size": 32}, 200, 42),  # 6 steps x 7 fine-tuning epochs
        ({"epochs": 9, "batch_size": 32, "steps_per_epoch": 2}, 2000, 16),
    ],
)
def test_a_run_of_too_few_optimiser_steps_gets_a_warning_saying_how_to_fix_it(changes, items, steps):
    schedule = _schedule(items, **changes)
    message = few_steps_warning(schedule, capped="steps_per_epoch" in changes)
    assert message is not None and f"only {steps} optimiser step(s)" in message
    assert f"{items} training items in batches of {changes['batch_size']}" in message
    assert "a smaller --batch-size, more --epochs (or leave --epochs unset) or more data" in message
    assert ("--steps-per-epoch" in message) == ("steps_per_epoch" in changes)


@pytest.mark.parametrize(
    ("changes", "items"),
    [
        ({"epochs": 9, "batch_size": 32}, 7 * 32),  # 56 steps
        ({"epochs": 2, "batch_size": 16}, MIN_OPTIMISER_STEPS * 16),
        ({}, 10),  # the automatic schedule: 50 epochs of one step of 8
        ({}, 80),
    ],
)
def test_a_run_of_enough_steps_gets_no_warning(changes, items):
    assert few_steps_warning(_schedule(items, **changes)) is None


@pytest.mark.parametrize(
    ("items", "batch", "per_epoch", "finetune_epochs"),
    [
        (80, 8, 10, 20),  # a few dozen labelled images: small batches, many epochs
        (640, 8, 80, 3),
        (1000, 16, 62, 4),
        (3000, 16, 187, 2),
        (20000, 32, 625, 1),  # large sets: at least one whole epoch
        (4, 8, 1, 50),  # capped at max_epochs
    ],
)
def test_the_automatic_schedule_aims_at_the_target_number_of_steps(items, batch, per_epoch, finetune_epochs):
    schedule = _schedule(items)
    assert (schedule.batch_size, schedule.steps_per_epoch, schedule.finetune_epochs) == (
        batch,
        per_epoch,
        finetune_epochs,
    )
    assert schedule.automatic and schedule.head_epochs == 1


def test_explicit_epochs_and_batch_size_win_over_the_automatic_schedule():
    schedule = _schedule(80, epochs=4, batch_size=16)
    assert (schedule.batch_size, schedule.head_epochs, schedule.finetune_epochs, schedule.automatic) == (
        16,
        1,
        3,
        False,
    )


@pytest.mark.slow
def test_training_on_fewer_items_than_one_batch_warns_in_the_log_and_the_output(tiny_data, tmp_path, caplog, capsys):
    with caplog.at_level(logging.WARNING, logger="crackscope.training.train"):
        result = train(_tiny_config(tiny_data, tmp_path / "run", epochs=2))
    assert len(result.history) == 2
    warnings = [r.getMessage() for r in caplog.records if "optimiser step" in r.getMessage()]
    assert len(warnings) == 1 and "only 1 optimiser step(s) (1 per epoch x 1 epoch(s)" in warnings[0]
    assert "WARNING: this run fine-tunes for only 1 optimiser step(s)" in capsys.readouterr().out
    assert np.isfinite(result.best_val_loss)
