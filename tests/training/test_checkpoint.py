"""model.pt: one module writes and reads it; saves are atomic; foreign or damaged files are clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from crackscope.inspect.parts import PartScoring
from crackscope.labelled import DataConfig, MaskLabelling
from crackscope.training.backbones import build_model, without_stride16_term
from crackscope.training.checkpoint import CHECKPOINT_FORMAT, CheckpointHeader, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_model("tf_efficientnet_lite0", pretrained=False, dropout=0.3, input_size=32).eval()
    model.fine.reset_parameters()  # not zero, so a checkpoint that dropped the stride-16 term would show it
    return model


def _header(model, **changes) -> CheckpointHeader:
    config = {"epochs": 2, "data_config": {"mode": "mask", "class_map": {"MT_*": "crack"}, "masks": {"stride": 64}}}
    header = CheckpointHeader.for_model(
        model, config=config, metrics={"accuracy": 0.9}, data={"fingerprint": "abc"}, epoch=2
    )
    return dataclasses.replace(header, **changes)


def test_a_saved_checkpoint_loads_back_with_its_header_and_the_same_outputs(model, tmp_path):
    path = save_checkpoint(model, _header(model), tmp_path / "model.pt")
    loaded, header = load_checkpoint(path)
    assert header == _header(model)
    assert (header.backbone, header.input_size, header.dropout, header.epoch) == ("tf_efficientnet_lite0", 32, 0.3, 2)
    assert header.class_names == ("ok", "crack") and header.preprocessing.mean == (0.5, 0.5, 0.5)
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(images), model(images), atol=0, rtol=0)


def test_the_header_gives_back_how_the_training_data_was_read(model):
    data_config = _header(model).data_config()
    assert data_config == DataConfig(mode="mask", class_map={"MT_*": "crack"}, masks=MaskLabelling(stride=64))


def test_a_checkpoint_written_by_the_earlier_save_code_still_loads(model, tmp_path):
    # The dict the trainer wrote before this module existed (tuples for mean/std, a list of class names).
    legacy = {
        "format": CHECKPOINT_FORMAT,
        "crackscope_version": "0.1.0",
        "state_dict": model.state_dict(),
        "backbone": "tf_efficientnet_lite0",
        "input_size": 32,
        "dropout": 0.3,
        "preprocessing": {"input": "uint8 BGR [N,H,W,3]", "resize": "area", "mean": (0.5,) * 3, "std": (0.5,) * 3},
        "class_names": ["ok", "crack"],
        "config": {"augment": "heavy"},
        "metrics": {"roc_auc": 0.97},
        "data": {},
        "epoch": 3,
    }
    torch.save(legacy, tmp_path / "model.pt")
    _, header = load_checkpoint(tmp_path / "model.pt")
    assert header.epoch == 3 and header.metrics == {"roc_auc": 0.97} and header.data_config() == DataConfig()


def test_a_failed_save_leaves_the_old_checkpoint_and_no_partial_file(model, tmp_path):
    path = save_checkpoint(model, _header(model), tmp_path / "model.pt")
    before = path.read_bytes()
    unpicklable = _header(model, metrics={"curve": lambda: None})  # torch.save fails halfway through writing
    with pytest.raises(Exception, match="pickle"):
        save_checkpoint(model, unpicklable, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.pt: checkpoint does not exist"):
        load_checkpoint(tmp_path / "model.pt")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint", r"not a crackscope checkpoint \(UnpicklingError"),
        ([1, 2, 3], r"not a crackscope checkpoint \(expected format crackscope-checkpoint/1\)"),
        ({"format": "someone-else/3"}, r"not a crackscope checkpoint \(expected format"),
        ({"format": CHECKPOINT_FORMAT, "backbone": "resnet18"}, r"damaged crackscope checkpoint \(missing .*epoch"),
    ],
)
def test_a_foreign_or_damaged_file_is_refused_by_name(content, message, tmp_path):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_a_header_value_of_the_wrong_type_is_a_damaged_checkpoint(model, tmp_path):
    saved = {**_header(model).to_dict(), "input_size": "big", "state_dict": model.state_dict()}
    torch.save(saved, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt: damaged crackscope checkpoint \(header\.input_size: expected"):
        load_checkpoint(tmp_path / "model.pt")


def test_the_part_scoring_chosen_on_validation_travels_in_the_header_metrics(model, tmp_path):
    header = _header(model, metrics={"accuracy": 0.9, "part_scoring": {"method": "topk", "k": 5}})
    _, loaded = load_checkpoint(save_checkpoint(model, header, tmp_path / "model.pt"))
    assert loaded.part_scoring() == PartScoring("topk", 5)


def test_a_checkpoint_without_a_part_scoring_scores_parts_by_max(model):
    assert _header(model).part_scoring() == PartScoring("max")


def test_a_damaged_part_scoring_is_a_damaged_checkpoint_named_by_file(model, tmp_path):
    header = _header(model, metrics={"part_scoring": {"method": "mean"}})
    torch.save({**header.to_dict(), "state_dict": model.state_dict()}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt: damaged crackscope checkpoint \(metrics\.part_scoring: part"):
        load_checkpoint(tmp_path / "model.pt")


def test_a_checkpoint_without_the_stride16_term_loads_as_a_32_px_heatmap_model(model, tmp_path):
    coarse = without_stride16_term(model)
    loaded, _ = load_checkpoint(save_checkpoint(coarse, _header(coarse), tmp_path / "model.pt"))
    assert loaded.heatmap_stride == 32 and loaded.fine is None
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(images), coarse(images), atol=0, rtol=0)
        assert loaded.forward_with_cam(images)[1].shape == (2, 1, 1)
        assert model.forward_with_cam(images)[1].shape == (2, 2, 2)
