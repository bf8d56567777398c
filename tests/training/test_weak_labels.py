"""Images labelled as a whole, learned from their tiles: reading them as weak tiles, choosing each image's crack
tiles (multiple-instance learning) in the head fit and the sampler, and scoring such images as parts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from crackscope.labelled import Clarity, DataConfig, DataError, MaskLabelling, Sample, load_samples
from crackscope.training.evaluate import Predictions, image_level
from crackscope.training.head import fit_head, mil_logistic_head
from crackscope.training.sampling import EpochSampler, top_per_group
from crackscope.training.synthetic import make_patch

TILE = 64
TILES = DataConfig(mode="tiles", masks=MaskLabelling(patch_size=TILE, stride=TILE))


def _write_whole_images(root, n_crack: int, n_ok: int, seed: int = 0) -> dict[str, int]:
    """2 x 2 tiles of 64 px per image; a crack image has one crack tile (where is returned per file), the rest ok."""
    where = {}
    for label, count in (("crack", n_crack), ("ok", n_ok)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, label == "crack", i])
            kind = "concrete"
            tiles = [make_patch(TILE, "ok", rng, kind=kind) for _ in range(4)]
            if label == "crack":
                where[f"{label}/{i:03d}.png"] = hot = int(rng.integers(4))
                tiles[hot] = make_patch(TILE, "crack", rng, kind=kind)
            image = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
            cv2.imwrite(str(root / label / f"{i:03d}.png"), image)
    return where


def _tile_index(sample: Sample) -> int:
    x, y, _, _ = sample.box
    return (y // TILE) * 2 + x // TILE


def test_tiles_mode_cuts_good_images_into_clear_ok_tiles_and_defective_ones_into_weak_tiles(tmp_path):
    _write_whole_images(tmp_path, n_crack=2, n_ok=3)
    (tmp_path / "ambiguous").mkdir()
    cv2.imwrite(str(tmp_path / "ambiguous" / "a.png"), make_patch(2 * TILE, "ok", 0))
    data = load_samples(tmp_path, TILES)
    by_folder = {}
    for s in data.samples:
        by_folder.setdefault(s.path.parent.name, []).append(s)
    assert {len(v) for v in by_folder.values()} == {4 * 2, 4 * 3, 4}
    assert all(s.clarity is Clarity.CLEAR and s.target == 0.0 for s in by_folder["ok"])
    assert all(s.clarity is Clarity.WEAK and s.target == 1.0 for s in by_folder["crack"])
    assert all(s.clarity is Clarity.WEAK and s.target == 0.5 for s in by_folder["ambiguous"])
    assert data.counts() == {"crack": 0, "ok": 12, "ambiguous": 0, "weak": 12}
    assert len({s.group for s in by_folder["crack"]}) == 2  # the tiles of one image share its group
    assert sorted(s.box for s in by_folder["crack"][:4]) == [
        (0, 0, 64, 64),
        (0, 64, 64, 64),
        (64, 0, 64, 64),
        (64, 64, 64, 64),
    ]


def test_votes_label_the_image_before_it_is_cut(tmp_path):
    _write_whole_images(tmp_path, n_crack=1, n_ok=2)
    (tmp_path / "votes.csv").write_text("image,annotator,label\nok/000.png,a,crack\nok/000.png,b,ok\n")
    tiles = [s for s in load_samples(tmp_path, TILES).samples if s.path.parent.name == "ok"]
    voted = [s for s in tiles if s.path.name == "000.png"]
    assert len(voted) == 4 and all(s.clarity is Clarity.WEAK and s.target == 0.5 for s in voted)
    assert all(s.clarity is Clarity.CLEAR and s.target == 0.0 for s in tiles if s.path.name != "000.png")


def test_tiles_mode_with_only_good_images_is_refused_by_name(tmp_path):
    _write_whole_images(tmp_path, n_crack=0, n_ok=2)
    with pytest.raises(DataError, match="no readable crack images"):
        load_samples(tmp_path, TILES)


@pytest.mark.parametrize(
    ("scores", "groups", "k", "expected"),
    [
        ([0.1, 0.9, 0.5, 0.2, 0.3], ["a", "a", "a", "b", "b"], 1, [1, 4]),
        ([0.1, 0.9, 0.5, 0.2, 0.3], ["a", "a", "a", "b", "b"], 2, [1, 2, 3, 4]),
        ([0.5, 0.5, 0.1], ["a", "a", "b"], 1, [0, 2]),  # ties keep the first
    ],
)
def test_top_per_group_keeps_each_groups_highest_scores(scores, groups, k, expected):
    assert top_per_group(np.array(scores), groups, k).tolist() == expected


def test_the_sampler_draws_weak_tiles_only_once_chosen_and_then_only_those():
    positives = [0, 0, 0, 1, 1, 1, 1]
    weak = [False, False, False, False, True, True, True]
    sampler = EpochSampler(positives, weak=weak, weak_per_epoch=1, seed=0)
    assert len(sampler) == 3 + 1 + 1
    assert set(sampler) == {0, 1, 2, 3}  # before any choice: no weak tile
    sampler.keep_weak(np.array([5]))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert set(sampler) <= {0, 1, 2, 3, 5} and 5 in set(sampler)
    with pytest.raises(ValueError, match="not a weak tile"):
        sampler.keep_weak(np.array([0]))


def test_the_mil_fit_finds_the_one_informative_tile_of_each_defective_image():
    # 40 defective images of 4 tiles: one tile carries the signal (feature 0 high); 40 good images of 4 tiles.
    rng = np.random.default_rng(0)
    n, tiles = 40, 4
    features = rng.normal(0.0, 1.0, size=(2 * n * tiles, 6))
    hot = rng.integers(tiles, size=n)
    features[hot + np.arange(n) * tiles, 0] += 4.0
    targets = np.r_[np.ones(n * tiles), np.zeros(n * tiles)]
    weak = targets == 1
    groups = [f"img{i // tiles}" for i in range(2 * n * tiles)]
    coef, _bias, _, selected, rounds = mil_logistic_head(features, targets, weak, groups)
    assert rounds >= 1 and len(selected) == n
    assert np.mean(selected == hot + np.arange(n) * tiles) >= 0.95
    assert coef[0] > 5 * np.abs(coef[1:]).max()


@pytest.mark.slow
def test_the_head_fit_chooses_the_crack_tile_of_each_defective_image_from_real_features(tmp_path):
    where = _write_whole_images(tmp_path, n_crack=24, n_ok=24)
    samples = list(load_samples(tmp_path, TILES).samples)
    torch.manual_seed(0)
    from crackscope.training.backbones import build_model

    model = build_model("tf_efficientnet_lite0", pretrained=True, input_size=TILE).eval()
    fit = fit_head(model, samples, batch_size=32, progress=False)
    chosen = [samples[i] for i in fit.weak_selected]
    assert len(chosen) == 24 and fit.mil_rounds >= 1
    right = [_tile_index(s) == where[f"crack/{s.path.name}"] for s in chosen]
    assert np.mean(right) >= 0.8, right  # chance: 0.25
    assert "taken as crack" in fit.describe()


def test_an_image_labelled_as_a_whole_is_scored_as_a_part():
    def tile(group, target, clarity, box):
        return Sample(__file__, target, clarity, group, box)

    samples = (
        [tile("bad", 1.0, Clarity.WEAK, (x, 0, 8, 8)) for x in (0, 8)]
        + [tile("good", 0.0, Clarity.CLEAR, (x, 0, 8, 8)) for x in (0, 8)]
        + [tile("split", 0.5, Clarity.WEAK, (x, 0, 8, 8)) for x in (0, 8)]
    )
    logits = np.array([3.0, -2.0, -1.0, -3.0, 0.0, 0.0], np.float32)
    level = image_level(Predictions(tuple(samples), logits))
    assert (level.crack, level.ok, level.ambiguous) == (1, 1, 1)
    assert level.metrics.average_precision == 1.0


@pytest.mark.slow
def test_a_run_on_images_labelled_as_a_whole_trains_on_chosen_tiles_and_ranks_epochs_by_image_ap(tmp_path, capsys):
    from crackscope.training.train import TrainConfig, train

    _write_whole_images(tmp_path / "data", n_crack=16, n_ok=16)
    config = TrainConfig(
        data=str(tmp_path / "data"),
        out=str(tmp_path / "run"),
        input_size=TILE,
        epochs=2,
        batch_size=16,
        workers=0,
        augment="light",
        progress=False,
        data_config=TILES,
        seed=0,
    )
    result = train(config)
    printed = capsys.readouterr().out
    # 13 defective images train, 3 validate (the split is stratified by the images' labels)
    assert "weak tiles: 13 taken as crack" in printed  # the head fit's choice: one tile of each training image
    assert "weak tiles: 13 of 52 taken as crack (1 per image" in printed  # rescored before fine-tuning
    assert "crack loss weighted 4.00" in printed  # 52 ok tiles against the 13 weak tiles an epoch trains on
    assert [r.stage for r in result.history] == ["head", "finetune"]
    image = result.validation.image_level
    assert image is not None and image.crack == 3 and image.ok == 3
    assert result.validation.clear.average_precision is None  # the clear tiles are all ok: no tile AP
    assert all(r.val_ap == image.metrics.average_precision or r.epoch != result.best_epoch for r in result.history)
