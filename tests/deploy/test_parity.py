"""The fp32 parity gate scales with the logits, and still refuses a graph that computes something else."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from crackscope.deploy.export import synthetic_tiles, to_onnx_bytes
from crackscope.deploy.verify import ParityReport, _compare, logit_scale, mean_interval, torch_parity
from crackscope.training.backbones import build_model


@pytest.fixture(scope="module")
def large_logits():
    """A pretrained backbone whose head makes logits of a few hundred, as long-trained heads do."""
    torch.manual_seed(0)
    model = build_model("tf_efficientnet_lite0", pretrained=True, input_size=64).eval()
    with torch.no_grad():
        model.fc.weight.normal_(0.0, 20.0)
        model.fine.weight.normal_(0.0, 20.0)
    tiles = synthetic_tiles(64, 16, seed=0).images
    return model, tiles


def test_large_logits_pass_the_scaled_gate_where_an_absolute_one_refuses_them(large_logits):
    model, tiles = large_logits
    graph = to_onnx_bytes(model)
    report = torch_parity(model, graph, tiles)
    assert report.passed, report.describe()
    with torch.inference_mode():
        assert float(model(torch.from_numpy(tiles)).abs().median()) > 50  # large, as the fixture promises
    absolute = torch_parity(model, graph, tiles, rtol=0.0)
    assert report.max_abs_logit_diff > 1e-3 and not absolute.passed  # the same graph under the old gate


def test_a_changed_weight_is_refused(large_logits):
    model, tiles = large_logits
    changed = copy.deepcopy(model)
    with torch.no_grad():
        conv = [m for m in changed.features.modules() if isinstance(m, torch.nn.Conv2d)][10]
        conv.weight[0] *= 1.05  # one output channel of one convolution, 5% off
    report = torch_parity(model, to_onnx_bytes(changed), tiles)
    assert not report.passed and "of tolerance" in " ".join(report.failures())


def test_a_dropped_normalisation_is_refused(large_logits):
    model, tiles = large_logits
    unnormalised = copy.deepcopy(model)
    unnormalised.preprocess.scale.fill_(1.0 / 255.0)  # pixels / 255 only: mean and std forgotten
    unnormalised.preprocess.shift.zero_()
    report = torch_parity(model, to_onnx_bytes(unnormalised), tiles)
    assert not report.passed and report.tolerance_used > 10


def test_decisions_are_compared_exactly_outside_the_tolerance():
    cams = np.full((3, 2, 2), 0.25, dtype=np.float32)  # each cell a quarter of 1: scale |bias| + 1
    reference = (np.array([5.0, -5.0, 1e-5], dtype=np.float32), cams)
    flipped_far = (np.array([5.0, 5.0, -1e-5], dtype=np.float32), cams)  # tile 1 flips; tile 2 is within 1e-3 of 0
    measured = _compare([reference], [flipped_far], None, atol=1e-3, rtol=1e-4, cam_atol=1e-3)
    assert measured["decision_flips"] == 1 and measured["decision_agreement"] == pytest.approx(1 / 3)
    near_zero_only = (np.array([5.0, -5.0, -1e-5], dtype=np.float32), cams)
    measured = _compare([reference], [near_zero_only], None, atol=1e-3, rtol=1e-4, cam_atol=1e-3)
    assert measured["decision_flips"] == 0 and measured["tolerance_used"] <= 1.0


def test_the_logit_scale_is_the_size_of_the_terms_the_logit_adds_up():
    cams = np.array([[[3.0, -3.0], [1.0, 0.0]]])  # sum 1, magnitudes 7
    logits = np.array([-1.0])  # so the bias is -2
    np.testing.assert_allclose(logit_scale(logits, cams), [9.0])


# --- the heatmap correlation's confidence interval, and the gate on its lower end ---------------------------------


def test_the_interval_of_independent_tiles_is_the_usual_one_and_views_of_one_item_widen_it():
    rng = np.random.default_rng(0)
    values = rng.normal(0.96, 0.05, 40)
    low, high = mean_interval(values)
    assert (low + high) / 2 == pytest.approx(values.mean())
    assert (high - low) / 2 == pytest.approx(1.96 * values.std(ddof=1) / np.sqrt(40))
    assert mean_interval(values, [str(i) for i in range(40)]) == pytest.approx((low, high))  # one tile per item
    # the same 40 figures as 8 views of 5 items: the item means vary, so the interval is wider than 40 tiles claim
    items = rng.normal(0.96, 0.05, 5)
    views = np.repeat(items, 8) + rng.normal(0, 0.005, 40)
    grouped = mean_interval(views, [str(i // 8) for i in range(40)])
    naive = mean_interval(views)
    assert grouped[1] - grouped[0] > 2.5 * (naive[1] - naive[0])
    assert mean_interval(views, ["one"] * 40) == (-1.0, 1.0)  # a single item says nothing about others


def test_the_correlation_gate_holds_the_lower_end_of_the_interval():
    rng = np.random.default_rng(1)
    cams = rng.normal(size=(12, 4, 4)).astype(np.float32)
    logits = cams.sum(axis=(1, 2))
    noisy = cams + rng.normal(0, 0.35, cams.shape).astype(np.float32)  # mean correlation about 0.94
    measured = _compare([(logits, cams)], [(logits, noisy)], None, atol=float("inf"), rtol=0.0)
    mean, (low, high) = measured["cam_correlation"], measured["cam_correlation_ci"]
    assert low < mean < high
    gate = {"reference": "onnx-fp32", "candidate": "onnx-int8", "tiles": 12, "batch_sizes": (8,)}
    gate |= {"logit_tolerance": float("inf"), "min_agreement": 0.0, **measured}
    between = (low + mean) / 2  # a mean above it, a lower end below it: not certain
    failures = ParityReport(**gate, min_cam_correlation=between).failures()
    assert len(failures) == 1 and "not certainly >= " in failures[0]
    assert ParityReport(**gate, min_cam_correlation=low - 1e-6).passed
