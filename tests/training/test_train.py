"""End-to-end training on synthetic data: outputs, reload, both stages, and DDP with two gloo processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from crackscope.config import from_dict
from crackscope.labelled import Clarity, load_samples, split_by_group
from crackscope.training.checkpoint import load_checkpoint
from crackscope.training.evaluate import metrics_for, predict
from crackscope.training.schedule import plan_schedule
from crackscope.training.train import TrainConfig, positive_weight, stages

pytestmark = pytest.mark.slow


def test_training_writes_checkpoint_config_and_metrics(tiny_run):
    run = Path(tiny_run.run_dir)
    assert {"model.pt", "config.yaml", "metrics.json"} <= {p.name for p in run.iterdir()}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["skipped_unreadable"] == 1
    assert [h["stage"] for h in metrics["history"]] == ["head", "finetune", "finetune"]
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "confusion_matrix"):
        assert key in metrics
    assert metrics["ambiguous"]["n"] > 0


def test_saved_config_reloads_into_the_same_typed_config(tiny_run):
    saved = yaml.safe_load((Path(tiny_run.run_dir) / "config.yaml").read_text())
    config = from_dict(TrainConfig, saved)
    assert config.input_size == 64 and config.epochs == 3 and config.data_config.ambiguous == "soft"


def test_reloaded_checkpoint_predicts_exactly_like_the_trained_model(tiny_run, patch_data):
    model, header = load_checkpoint(tiny_run.checkpoint)
    assert header.class_names == ("ok", "crack") and header.input_size == 64
    # The trainer scored its best epoch on this validation split (seed 1) before saving it; the reloaded weights
    # must give back that epoch's validation loss and metrics.
    _, val = split_by_group(load_samples(patch_data).samples, 0.2, seed=1)
    predictions = predict(model, val, batch_size=16, progress=False)
    targets, _ = predictions.subset(Clarity.CLEAR)
    clear = np.array([s.clarity is Clarity.CLEAR for s in val])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(predictions.logits[clear]), torch.from_numpy(targets).float()
    )
    assert float(loss) == pytest.approx(tiny_run.best_val_loss, rel=1e-4)
    reloaded, trained = metrics_for(predictions).clear, tiny_run.validation.clear
    assert reloaded.confusion_matrix == trained.confusion_matrix
    assert reloaded.roc_auc == pytest.approx(trained.roc_auc)


def test_two_stage_training_learns_to_separate_synthetic_cracks(tiny_run):
    # 3 short epochs on 64 px patches: far from converged, but clearly better than chance.
    assert tiny_run.validation.clear.roc_auc > 0.8


def test_stage_one_freezes_the_backbone_and_stage_two_trains_it():
    def plan(epochs: int, head_epochs: int) -> list:
        schedule = plan_schedule(items=64, batch_size=16, epochs=epochs, head_epochs=head_epochs, target_steps=200)
        return stages(schedule)

    assert [(s.name, s.epochs, s.train_backbone) for s in plan(4, 1)] == [("head", 1, False), ("finetune", 3, True)]
    assert [s.name for s in plan(1, 1)] == ["head"]
    assert [s.name for s in plan(2, 0)] == ["finetune"]


def test_frozen_backbone_weights_do_not_change_in_stage_one(patch_data, tmp_path):
    from crackscope.training.backbones import build_model
    from crackscope.training.train import train

    result = train(
        TrainConfig(
            data=str(patch_data),
            out=str(tmp_path),
            input_size=64,
            epochs=1,
            head_epochs=1,
            batch_size=16,
            workers=0,
            augment="none",
            progress=False,
        )
    )
    trained, _ = load_checkpoint(result.checkpoint)
    pretrained = build_model("tf_efficientnet_lite0", pretrained=True, input_size=64)
    for (name, a), b in zip(
        trained.features.state_dict().items(), pretrained.features.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not torch.equal(trained.fc.weight, pretrained.fc.weight)


def test_positive_weight_balances_classes_over_clear_items(patch_data):
    samples = list(load_samples(patch_data).samples)
    assert positive_weight(samples) == pytest.approx(1.0)
    cracks = [s for s in samples if s.target == 1.0]
    assert positive_weight([s for s in samples if s.target == 0.0] + cracks[:10]) == pytest.approx(6.0)


@pytest.mark.timeout(600)
def test_training_runs_unchanged_under_torchrun_with_two_gloo_processes(patch_data, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    out = tmp_path / "ddp"
    command = [
        torchrun,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "crackscope.cli",
        "train",
        "--data",
        str(patch_data),
        "--out",
        str(out),
        "--input-size",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--augment",
        "light",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=540, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    load_checkpoint(out / "model.pt")


@pytest.mark.timeout(600)
def test_context_training_runs_under_torchrun_with_two_gloo_processes(tmp_path):
    from crackscope.training.synthetic import write_frame_dataset

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    data = write_frame_dataset(tmp_path / "frames", n=8, height=128, width=192, seed=0)
    out = tmp_path / "ddp-context"
    flags = ["--data", str(data), "--out", str(out), "--data-mode", "mask", "--input-size", "64"]
    flags += ["--epochs", "2", "--batch-size", "8", "--workers", "0", "--augment", "light", "--device", "cpu"]
    command = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "crackscope.cli", "train", *flags]
    command += ["--context", "32", "--steps-per-epoch", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=540, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout and "context: 2 crop(s) of 128 px" in result.stdout
    load_checkpoint(out / "model.pt")
