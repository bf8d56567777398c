"""Mask supervision of the heatmap: the CAM's cells trained against a crack mask, beside the tile label.

The head is global-average-pool + linear, so the model's CAM (:meth:`CrackNet.forward_with_cam`) is that linear
head applied at each cell of the last feature map, divided by the number of cells: the per-cell crack logit is
``cam * (h * w) + bias``, and the tile logit is their mean. Where a dataset has pixel masks, each cell can be told
whether it holds crack, so the heatmap learns to point at the crack rather than at whatever the tile label
happened to correlate with. Items without a mask (class-folder data) add nothing.

The per-cell BCE was measured against no mask loss and against one alternative on magnetic tile cut into 224 px
tiles at native resolution: with it, fine-tuning on rare defects beat the head-only epoch (validation AP 0.31 ->
0.54, where the same run without masks fell to 0.24). A softmax of the CAM over its cells against the mask's crack
cells (training only *where* the heatmap's mass sits) was worse than none: the head's per-cell logits span tens, so
that softmax is nearly one-hot and its loss (about 10) swamped the tile loss (validation AP 0.79 -> 0.27 and 0.31 ->
0.03).

Example:
    >>> import torch
    >>> from crackscope.training.supervision import cam_mask_loss, cell_targets
    >>> masks = torch.zeros(2, 224, 224)
    >>> masks[0, 100:103, :] = 1.0  # a thin horizontal crack in the first item
    >>> cell_targets(masks, (7, 7))[0, :, 0].tolist()
    [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    >>> cam = torch.zeros(2, 7, 7, requires_grad=True)
    >>> loss = cam_mask_loss(cam, torch.tensor(0.0), masks, has_mask=torch.tensor([True, False]))
    >>> round(loss.item(), 4)  # every cell at logit 0: log 2, whatever the crack's share of cells
    0.6931
    >>> loss.backward()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cell_targets(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """1 for each cell of a ``grid`` (h, w) over the masks that holds any crack pixel, else 0.

    Max pooling, not the share of crack pixels: a hairline crack 2 px wide crossing a 32 x 32 cell covers about 6%
    of its pixels, yet the cell does hold a crack and its feature should say so; an average would call it
    background (or a faint 0.06 target that the loss barely rewards).

    Args:
        masks: float ``[N, S, S]`` (or ``[N, H, W]``) in {0, 1}, the crack masks at the model's input size.
        grid: ``(h, w)``, the CAM's shape. Where ``S`` is not a multiple of the grid, neighbouring cells share a
            border row or column of pixels (adaptive pooling).

    Returns:
        float ``[N, h, w]`` in {0, 1}, the dtype of ``masks``.
    """
    return F.adaptive_max_pool2d(masks.unsqueeze(1), grid).squeeze(1)


def cam_mask_loss(cam: torch.Tensor, bias: torch.Tensor, masks: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the per-cell logits ``cam * (h*w) + bias`` against :func:`cell_targets`.

    Only the items with a mask count. Within the batch, the crack cells and the background cells each weigh half
    of the loss (the mean over crack cells plus the mean over background cells, halved), so a thin crack that
    fills 3 cells of 49 is not drowned by the background cells around it; when the batch holds cells of one kind
    only, their mean is the loss. No item with a mask gives a zero that is still part of the graph, so
    ``backward()`` and DistributedDataParallel (which wants every parameter used) work on any batch. The batch is
    never inspected on the host (no ``.item()``), so the loss adds no device synchronisation.

    Args:
        cam: ``[N, h, w]`` class activation maps, as :meth:`CrackNet.forward_with_cam` gives them.
        bias: the head's bias (``model.fc.bias[0]``), a scalar tensor.
        masks: float ``[N, S, S]`` in {0, 1} on ``cam``'s device (``Batch.masks``).
        has_mask: bool ``[N]`` on ``cam``'s device (``Batch.has_mask``).

    Returns:
        A scalar float32 tensor. It is computed in float32 whatever autocast gave ``cam``.
    """
    _, height, width = cam.shape
    logits = cam.float() * (height * width) + bias.float()
    targets = cell_targets(masks.float(), (height, width))
    per_cell = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    counted = has_mask.to(per_cell.dtype)[:, None, None]
    crack, background = targets * counted, (1.0 - targets) * counted
    crack_cells, background_cells = crack.sum(), background.sum()
    crack_mean = (per_cell * crack).sum() / crack_cells.clamp(min=1.0)
    background_mean = (per_cell * background).sum() / background_cells.clamp(min=1.0)
    kinds = (crack_cells > 0).float() + (background_cells > 0).float()
    return (crack_mean + background_mean) / kinds.clamp(min=1.0)
