"""Mask supervision of the heatmap in real (tiny) training runs: on with masks, absent without them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crackscope.labelled import DataConfig, MaskLabelling
from crackscope.training import synthetic
from crackscope.training.train import TrainConfig, train

pytestmark = pytest.mark.slow

TILES = DataConfig(mode="mask", masks=MaskLabelling(patch_size=64, stride=64))


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    return synthetic.write_frame_dataset(tmp_path_factory.mktemp("frames"), n=12, height=128, width=192, seed=3)


def _config(data: Path, out: Path, **changes) -> TrainConfig:
    values = dict(input_size=64, epochs=4, batch_size=8, workers=0, augment="light", progress=False, pretrained=False)
    values.update(changes)
    return TrainConfig(data=str(data), out=str(out), **values)


def test_a_mask_dataset_trains_the_heatmap_against_its_masks_and_the_mask_loss_falls(frames, tmp_path, capsys):
    result = train(_config(frames, tmp_path / "run", data_config=TILES))
    mask_losses = [h.train_mask_loss for h in result.history if h.stage == "finetune"]
    assert all(loss is not None and loss > 0 for loss in mask_losses)
    assert mask_losses[-1] < mask_losses[0]
    assert "(mask " in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["history"][-1]["train_mask_loss"] == pytest.approx(mask_losses[-1])


def test_mask_weight_zero_and_class_folders_train_without_the_mask_loss(frames, tmp_path):
    off = train(_config(frames, tmp_path / "off", data_config=TILES, mask_weight=0.0, epochs=2))
    assert [h.train_mask_loss for h in off.history] == [None, None]
    folders = synthetic.write_patch_dataset(tmp_path / "patches", n_crack=12, n_ok=12, size=64, seed=2)
    plain = train(_config(folders, tmp_path / "plain", epochs=2))
    assert [h.train_mask_loss for h in plain.history] == [None, None]
