"""The logistic head fit, the epoch sampler (balanced draws, hard negatives, sharding) and the time budget."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from crackscope.training.head import fit_head, logistic_head
from crackscope.training.sampling import EpochSampler, hardest
from crackscope.training.schedule import Budget, Clock, Horizon

# --- logistic head --------------------------------------------------------------------------------------------------


def _features(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feature 0 decides the class (far from the others' scale); features 1..4 are noise around 100."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    features = rng.normal(100.0, 5.0, size=(n, 5))
    features[:, 0] = np.where(labels == 1, 3.0, 1.0) + rng.normal(0, 0.2, n)
    return features.astype(np.float32), labels.astype(np.float64)


def test_logistic_head_separates_classes_on_raw_unstandardised_features():
    features, labels = _features(200)
    weight, bias, accuracy = logistic_head(features, labels)
    logits = features @ weight + bias
    assert accuracy == 1.0 and ((logits >= 0) == (labels == 1)).all()
    assert weight[0] > 0 and abs(weight[0]) > 10 * np.abs(weight[1:]).max()  # the decisive feature dominates


def test_soft_targets_of_one_half_pull_the_logit_towards_zero():
    features, labels = _features(200)
    hard_weight, hard_bias, _ = logistic_head(features, labels)
    soft = labels.copy()
    soft[labels == 1] = 0.5  # experts split on every "crack"
    soft_weight, soft_bias, _ = logistic_head(features, soft)
    crack = features[labels == 1]
    assert np.median(crack @ soft_weight + soft_bias) < 0.5 * np.median(crack @ hard_weight + hard_bias)


def test_logistic_head_refuses_a_single_class():
    features, _ = _features(20)
    with pytest.raises(ValueError, match="both crack and ok"):
        logistic_head(features, np.zeros(20))


def test_fit_head_sets_the_network_head_so_the_network_reproduces_the_fit(patch_data):
    from crackscope.labelled import Clarity, load_samples
    from crackscope.training.backbones import build_model

    clear = [s for s in load_samples(patch_data).samples if s.clarity is Clarity.CLEAR]
    samples = [s for s in clear if s.label == 1][:20] + [s for s in clear if s.label == 0][:20]
    model = build_model("tf_efficientnet_lite0", pretrained=True, input_size=64)
    fit = fit_head(model, samples, batch_size=16, progress=False)
    from crackscope.training.evaluate import predict

    logits = predict(model, samples, batch_size=16, progress=False).logits
    hard = np.array([s.label for s in samples])
    assert fit.items == 40 and fit.features == model.spec.channels + model.fine.in_features
    assert np.isclose(((logits >= 0) == hard).mean(), fit.train_accuracy, atol=1e-9)
    assert fit.train_accuracy >= 0.9
    assert torch.isfinite(model.fc.weight).all()


# --- sampling -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "share", "expected"),
    [
        ([0.1, 0.9, 0.5, 0.7], 0.5, [1, 3]),
        ([0.1, 0.9, 0.5, 0.7], 1.0, [1, 3, 2, 0]),
        ([0.3, 0.3, 0.1], 0.01, [0]),  # at least one; ties keep the order
        ([], 0.5, []),
    ],
)
def test_hardest_keeps_the_highest_scoring_share(scores, share, expected):
    assert hardest(np.array(scores), share).tolist() == expected


def test_balanced_sampler_draws_positives_at_the_configured_share():
    positives = [1] * 10 + [0] * 990
    sampler = EpochSampler(positives, balanced=True, positive_share=0.3, seed=1)
    drawn = np.array([positives[i] for epoch in range(5) for i in (sampler.set_epoch(epoch) or list(sampler))])
    assert len(sampler) == 1000 and abs(drawn.mean() - 0.3) < 0.02


def test_shuffling_sampler_visits_every_item_once_per_epoch_and_repeats_under_a_seed():
    sampler = EpochSampler([1, 0, 0, 1, 0], seed=7)
    sampler.set_epoch(2)
    first = list(sampler)
    assert sorted(first) == [0, 1, 2, 3, 4] and list(sampler) == first
    sampler.set_epoch(3)
    assert list(sampler) != first


def test_kept_negatives_restrict_the_epoch_to_positives_and_the_hardest_ok_items():
    positives = [1, 1] + [0] * 8
    sampler = EpochSampler(positives, negatives_kept=0.25, seed=0)
    assert len(sampler) == 4  # 2 positives + 2 of 8 negatives, known before any scores
    sampler.keep_negatives(np.array([9, 5]))
    assert sorted(sampler) == [0, 1, 5, 9]


def test_ranks_get_disjoint_equal_shards_of_the_same_epoch():
    positives = [1, 0, 0, 1, 0, 0, 1]
    shards = [list(EpochSampler(positives, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 4
    assert set(shards[0] + shards[1]) == set(range(7))  # 8 slots: one item is drawn twice to even them out


def test_balanced_sampling_refuses_a_single_class():
    with pytest.raises(ValueError, match="both crack and ok"):
        EpochSampler([0, 0, 0], balanced=True)


# --- time budget ----------------------------------------------------------------------------------------------------


def test_a_clock_without_a_budget_never_expires_and_never_shortens_a_stage():
    clock = Clock(time.perf_counter(), None)
    horizon = Horizon(100)
    budget = Budget(horizon, clock, epochs_left=5, steps_per_epoch=20)
    for step in range(1, 30):
        budget.after_step(step)
    assert not clock.expired() and horizon.total == 100


def test_a_budget_shortens_the_stage_to_the_steps_that_fit():
    clock = Clock(time.perf_counter(), max_minutes=1.0)  # 60 s
    clock.validation_took(10.0)
    horizon = Horizon(10_000)
    budget = Budget(horizon, clock, epochs_left=2, steps_per_epoch=5_000)
    budget.started -= 5.0  # pretend the first 5 steps took 1 s each
    for step in range(1, 6):
        budget.after_step(step)
    # About 60 s left, 20 s kept for two validation passes: about 40 more steps of 1 s after the 5 done.
    assert 40 <= horizon.total <= 45


def test_an_expired_budget_warns_when_too_few_steps_were_left():
    clock = Clock(time.perf_counter() - 120.0, max_minutes=1.0)
    assert clock.expired()
    assert "only 3 fine-tuning step(s)" in clock.shortened_warning(3)
    assert clock.shortened_warning(500) is None
