"""Mask supervision of the heatmap: cell targets from masks and the balanced per-cell loss."""

from __future__ import annotations

import pytest
import torch

from crackscope.training.supervision import cam_mask_loss, cell_targets


def _crack_mask(column: int, size: int = 224) -> torch.Tensor:
    """A 2-px vertical crack at ``column`` down the whole input."""
    mask = torch.zeros(size, size)
    mask[:, column : column + 2] = 1.0
    return mask


def test_cell_targets_mark_every_cell_a_known_mask_touches_on_a_7x7_grid():
    mask = torch.zeros(224, 224)
    mask[100:102, 40:200] = 1.0  # a thin horizontal crack in row 3 (pixels 96-127), columns 1-6
    mask[5, 5] = 1.0  # one stray pixel in cell (0, 0)
    targets = cell_targets(mask[None], (7, 7))[0]
    expected = torch.zeros(7, 7)
    expected[3, 1:7] = 1.0
    expected[0, 0] = 1.0
    assert torch.equal(targets, expected)


def test_cell_targets_of_an_empty_mask_are_all_zero():
    assert not cell_targets(torch.zeros(3, 64, 64), (2, 2)).any()


def test_the_loss_is_zero_without_masks_and_still_backpropagates():
    cam = torch.randn(4, 7, 7, requires_grad=True)
    bias = torch.tensor(0.3, requires_grad=True)
    loss = cam_mask_loss(cam, bias, torch.ones(4, 224, 224), torch.zeros(4, dtype=torch.bool))
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert torch.equal(cam.grad, torch.zeros_like(cam))


def test_a_cam_that_matches_the_mask_scores_lower_than_one_that_is_shifted():
    masks = _crack_mask(100)[None]  # cell column 3
    targets = cell_targets(masks, (7, 7))
    matching = (targets * 2 - 1) * 0.1  # per-cell logit +-4.9 at h*w = 49
    shifted = torch.roll(matching, shifts=2, dims=2)
    has_mask = torch.tensor([True])
    bias = torch.tensor(0.0)
    assert cam_mask_loss(matching, bias, masks, has_mask) < 0.1 < cam_mask_loss(shifted, bias, masks, has_mask)


def test_crack_cells_and_background_cells_weigh_the_same_however_few_the_crack_cells():
    masks = _crack_mask(100)[None]  # 7 crack cells, 42 background cells
    targets = cell_targets(masks, (7, 7))
    all_background = torch.full((1, 7, 7), -0.1)  # calls every cell background, confidently
    loss = cam_mask_loss(all_background, torch.tensor(0.0), masks, torch.tensor([True]))
    crack_cell = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(-4.9), torch.tensor(1.0))
    background_cell = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(-4.9), torch.tensor(0.0))
    assert targets.sum() == 7
    assert loss.item() == pytest.approx(((crack_cell + background_cell) / 2).item(), rel=1e-5)


def test_items_without_a_mask_do_not_count():
    masks = torch.stack([_crack_mask(100), torch.zeros(224, 224)])
    cam = torch.randn(2, 7, 7)
    both = cam_mask_loss(cam, torch.tensor(0.1), masks, torch.tensor([True, False]))
    first = cam_mask_loss(cam[:1], torch.tensor(0.1), masks[:1], torch.tensor([True]))
    assert both.item() == pytest.approx(first.item())


def test_the_gradient_reaches_the_cam_and_the_bias():
    cam = torch.zeros(2, 7, 7, requires_grad=True)
    bias = torch.tensor(0.0, requires_grad=True)
    masks = torch.stack([_crack_mask(100), torch.zeros(224, 224)])
    cam_mask_loss(cam, bias, masks, torch.tensor([True, True])).backward()
    crack_cells = cell_targets(masks, (7, 7)).bool()
    assert (cam.grad[crack_cells] < 0).all() and (cam.grad[~crack_cells] > 0).all()  # up on cracks, down elsewhere
    assert bias.grad is not None and bias.grad != 0


def test_a_half_precision_cam_gives_a_float32_loss():
    cam = torch.zeros(1, 7, 7, dtype=torch.bfloat16)
    loss = cam_mask_loss(cam, torch.tensor(0.0), _crack_mask(100)[None], torch.tensor([True]))
    assert loss.dtype == torch.float32
