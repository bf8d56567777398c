"""Context training for dense mode: crops around tiles, the region mask, and the dense graph's logit in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crackscope.inspect.dense import tile_logits
from crackscope.labelled import Clarity, Sample
from crackscope.training.augment import build_transform, eval_transform
from crackscope.training.backbones import build_model
from crackscope.training.context import ContextDataset, collate_context, context_box, cut_with_reflection


def test_a_crop_inside_the_image_is_the_image_and_one_past_its_edge_is_mirrored():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    np.testing.assert_array_equal(cut_with_reflection(image, (2, 3, 4, 5)), image[3:8, 2:6])
    crop = cut_with_reflection(image, context_box((0, 0, 4, 4), 2))  # 2 px beyond the top-left corner
    assert crop.shape == (8, 8, 3)
    np.testing.assert_array_equal(crop[2:6, 2:6], image[0:4, 0:4])
    np.testing.assert_array_equal(crop[1, 2:6], image[1, 0:4])  # row -1 mirrors row 1 (BORDER_REFLECT_101)
    np.testing.assert_array_equal(crop[2:6, 1], image[0:4, 1])  # column -1 mirrors column 1


def test_the_context_dataset_gives_the_crop_and_the_tile_region_at_its_centre(tmp_path):
    import cv2

    image = np.random.default_rng(0).integers(0, 256, (128, 192, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    sample = Sample(tmp_path / "a.png", 1.0, Clarity.CLEAR, "a.png", (64, 32, 64, 64))
    dataset = ContextDataset([sample], eval_transform(128), size=64, margin=32)
    crop, region, target = dataset[0]
    np.testing.assert_array_equal(crop, image[0:128, 32:160])
    assert target == 1.0 and region.shape == (128, 128)
    assert (region[32:96, 32:96] == 255).all() and region.sum() == 255 * 64 * 64
    with pytest.raises(ValueError, match="multiple of 32"):
        ContextDataset([sample], eval_transform(128), size=64, margin=16)


def test_augmentation_moves_the_region_with_the_crop(tmp_path):
    import cv2

    image = np.zeros((128, 128, 3), np.uint8)
    image[32:96, 32:96] = 255  # the tile is the bright square, so the region must stay on it
    cv2.imwrite(str(tmp_path / "a.png"), image)
    sample = Sample(tmp_path / "a.png", 0.0, Clarity.CLEAR, "a.png", (32, 32, 64, 64))
    dataset = ContextDataset([sample], build_transform("scale", 128, seed=0), size=64, margin=32)
    for _ in range(8):  # the scale preset zooms in and out, flips and rotates
        crop, region, _ = dataset[0]
        bright = crop.mean(axis=2) > 127
        assert bright[region > 0].mean() > 0.9 and bright[region == 0].mean() < 0.1


def _model_and_crops(seed: int, count: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A random 64 px model with a live stride-16 term, ``count`` random 128 px crops, and regions: the centre tile,
    the top-right tile, then one off the cell grid."""
    torch.manual_seed(seed)
    model = build_model("tf_efficientnet_lite0", pretrained=False, input_size=64).eval()
    model.fine.reset_parameters()
    crops = torch.randint(0, 256, (count, 128, 128, 3), dtype=torch.uint8)
    regions = torch.zeros(count, 128, 128)
    boxes = [(32, 32, 64, 64), (0, 64, 64, 64), (10, 20, 60, 70)]  # top, left, height, width
    for region, (top, left, height, width) in zip(regions, boxes, strict=False):
        region[top : top + height, left : left + width] = 1
    return model, crops, regions


def test_the_region_logit_is_the_dense_graphs_logit_for_that_tile():
    model, crops, regions = _model_and_crops(0, 2)
    with torch.no_grad():
        ours = model(crops, region=regions).numpy()
        cams = model.cam_of(model.feature_maps(crops), cells=(64 // 16) ** 2).numpy()
    dense = [
        tile_logits(cams[0], float(model.fc.bias[0].detach()), np.array([[32, 32, 64, 64]]), 16)[0],
        tile_logits(cams[1], float(model.fc.bias[0].detach()), np.array([[64, 0, 64, 64]]), 16)[0],
    ]
    np.testing.assert_allclose(ours, dense, atol=1e-5)
    with torch.no_grad():  # a crop that is exactly the tile gives the tile's own logit
        tile = crops[:, 32:96, 32:96].contiguous()
        np.testing.assert_allclose(model(tile, region=torch.ones(2, 64, 64)).numpy(), model(tile).numpy(), atol=1e-5)


def test_context_batches_stack_crops_and_regions():
    crop, region = np.zeros((96, 96, 3), np.uint8), np.zeros((96, 96), np.uint8)
    region[32:64, 32:64] = 255
    batch = collate_context([(crop, region, 1.0), (crop, region, 0.0)])
    assert batch.images.shape == (2, 96, 96, 3) and batch.regions.shape == (2, 96, 96)
    assert batch.regions.sum().item() == 2 * 32 * 32 and batch.targets.tolist() == [1.0, 0.0]


@pytest.mark.slow
def test_a_run_with_context_trains_on_crops_beside_its_tiles(tmp_path, capsys):
    from crackscope.labelled import DataConfig, MaskLabelling
    from crackscope.training.synthetic import write_frame_dataset
    from crackscope.training.train import TrainConfig, train

    data = write_frame_dataset(tmp_path / "frames", n=10, height=128, width=192, seed=0)
    config = TrainConfig(
        data=str(data),
        out=str(tmp_path / "run"),
        input_size=64,
        epochs=2,
        batch_size=8,
        steps_per_epoch=3,
        workers=0,
        augment="light",
        progress=False,
        context=32,
        data_config=DataConfig(mode="mask", masks=MaskLabelling(patch_size=64, stride=64)),
    )
    result = train(config)
    printed = capsys.readouterr().out
    assert "context: 2 crop(s) of 128 px (32 px around the tile) beside each batch" in printed
    assert [r.stage for r in result.history] == ["head", "finetune"] and result.history[1].train_loss is not None


def test_features_pooled_over_the_region_give_the_region_logit():
    model, crops, regions = _model_and_crops(1, 3)  # the third region is off the cell grid: cells count by share
    weight = torch.cat([model.fc.weight[0], model.fine.weight[0]])
    with torch.no_grad():
        features = model.region_pooled(model.feature_maps(crops), regions)
        np.testing.assert_allclose(
            (features @ weight + model.fc.bias[0]).numpy(), model(crops, region=regions).numpy(), atol=1e-4
        )


def test_a_head_fitted_in_context_fits_each_tile_alone_and_in_its_surroundings(tmp_path):
    from crackscope.labelled import DataConfig, MaskLabelling, load_samples
    from crackscope.training.evaluate import predict
    from crackscope.training.head import fit_head
    from crackscope.training.synthetic import write_frame_dataset

    data = write_frame_dataset(tmp_path / "frames", n=6, height=128, width=192, seed=0)
    config = DataConfig(mode="mask", masks=MaskLabelling(patch_size=64, stride=64))
    samples = [s for s in load_samples(data, config).samples if s.clarity is Clarity.CLEAR]
    model = build_model("tf_efficientnet_lite0", pretrained=True, input_size=64)
    fit = fit_head(model, samples, batch_size=16, progress=False, context=32)
    assert fit.context_items == len(samples) and f"{len(samples)} items + {len(samples)} in context" in fit.describe()
    # The fit's accuracy counts both views: each tile alone (tiled inference) and as dense mode scores it.
    alone = predict(model, samples, batch_size=16, progress=False).logits
    batch = collate_context(list(ContextDataset(samples, eval_transform(128), 64, 32)))
    with torch.no_grad():
        in_context = model.eval()(batch.images, region=batch.regions).numpy()
    hard = np.array([s.label for s in samples] * 2)
    assert np.isclose(((np.concatenate([alone, in_context]) >= 0) == hard).mean(), fit.train_accuracy, atol=1e-9)
    plain = fit_head(model, samples, batch_size=16, progress=False)
    assert plain.context_items == 0 and "in context" not in plain.describe()
