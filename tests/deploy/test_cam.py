"""The CAM output is Grad-CAM: proven against pytorch-grad-cam on the torch model at the same layer.

The default model's CAM has 16 px cells: Grad-CAM at the last feature map, each cell repeated over the 2 x 2 cells it
covers, plus the exact CAM of the linear term on the stride-16 stage. The first tests prove the stride-32 part
(:func:`without_stride16_term`), the last ones the sum.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from pytorch_grad_cam import GradCAM
from torch import nn

from crackscope.deploy.export import to_onnx_bytes
from crackscope.training.backbones import build_model, without_stride16_term
from crackscope.training.synthetic import make_patch

pytestmark = pytest.mark.slow


class Head(nn.Module):
    """The classifier from the normalised NCHW tensor on: what GradCAM needs to hook the feature map."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.fc(self.model.features(x).mean((2, 3)))  # [N, 1]


def _gradcam_style(cam: np.ndarray, size: int) -> np.ndarray:
    """What pytorch-grad-cam does to its map: ReLU, resize to the input, min-max normalise per image."""
    out = []
    for item in np.maximum(cam, 0):
        item = cv2.resize(item, (size, size))
        item = item - item.min()
        out.append(item / (1e-7 + item.max()))
    return np.stack(out)


@pytest.fixture(scope="module")
def model_and_tiles():
    torch.manual_seed(0)
    model = without_stride16_term(build_model("tf_efficientnet_lite0", pretrained=True)).eval()
    rng = np.random.default_rng(0)
    tiles = np.stack([make_patch(224, label, rng) for label in ("crack", "ok", "crack", "ok")])
    return model, tiles


@pytest.fixture(scope="module")
def fine_model(model_and_tiles):
    """The default two-term model, with a stride-16 term that is not zero (a trained one is not)."""
    torch.manual_seed(1)
    model = build_model("tf_efficientnet_lite0", pretrained=True).eval()
    model.fine.reset_parameters()
    return model


def test_exported_cam_equals_pytorch_grad_cam_at_the_last_feature_map(model_and_tiles):
    model, tiles = model_and_tiles
    session = ort.InferenceSession(to_onnx_bytes(model), providers=["CPUExecutionProvider"])
    _, onnx_cams = session.run(None, {"image": tiles})
    with torch.no_grad():
        normalised = model.preprocess(torch.from_numpy(tiles))
    head = Head(model).eval()
    with GradCAM(model=head, target_layers=[model.features]) as grad_cam:
        reference = grad_cam(input_tensor=normalised, targets=[lambda output: output[0]] * len(tiles))
    assert onnx_cams.shape == (4, 7, 7)
    ours = _gradcam_style(onnx_cams, 224)
    assert reference.shape == ours.shape
    np.testing.assert_allclose(ours, reference, atol=2e-3)
    assert all(reference[i].max() > 0.99 for i in range(len(tiles)))  # not a trivially empty map


def test_cam_costs_no_gradients_and_sums_to_the_logit_of_the_plain_forward_pass(model_and_tiles):
    model, tiles = model_and_tiles
    images = torch.from_numpy(tiles)
    with torch.inference_mode():  # no autograd at all
        logit, cam = model.forward_with_cam(images)
        plain = model(images)  # another code path: pooled features -> dropout -> fc, no CAM
    assert cam.shape == (4, 7, 7)
    torch.testing.assert_close(logit, plain, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cam.sum((1, 2)) + model.fc.bias, plain, atol=1e-4, rtol=1e-4)


def test_cam_is_grad_cam_before_its_relu_computed_by_autograd_through_the_plain_forward_pass(model_and_tiles):
    # Grad-CAM at the last feature map A: sum_c mean_hw(d logit / d A_c) * A_c, here with autograd's gradients
    # (not the head's weights) and unnormalised, so the heatmap's scale is checked too, not only its shape.
    model, tiles = model_and_tiles
    images = torch.from_numpy(tiles)
    captured = []
    hook = model.features.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = model(images)
    finally:
        hook.remove()
    (feature_map,) = captured
    (gradients,) = torch.autograd.grad(logits.sum(), feature_map)  # items are independent in eval mode
    expected = (gradients.mean((2, 3), keepdim=True) * feature_map).sum(1).detach()
    with torch.inference_mode():
        _, cam = model.forward_with_cam(images)
    assert expected.abs().max() > 1e-3  # a real map, not zeros
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-4)


def test_default_cam_has_16_px_cells_and_sums_to_the_logit_of_the_plain_forward_pass(fine_model, model_and_tiles):
    _, tiles = model_and_tiles
    images = torch.from_numpy(tiles)
    with torch.inference_mode():
        logit, cam = fine_model.forward_with_cam(images)
        plain = fine_model(images)
        coarse_logit = without_stride16_term(fine_model)(images)
    assert cam.shape == (4, 14, 14)
    assert (plain - coarse_logit).abs().max() > 1e-3  # the stride-16 term changes the logit: it is in the sum
    torch.testing.assert_close(logit, plain, atol=1e-4, rtol=1e-4)


def test_default_cam_is_the_upsampled_grad_cam_plus_the_stride16_terms_own_cam(fine_model, model_and_tiles):
    # Autograd, not the head's weights: Grad-CAM of the logit at the last feature map (through the plain forward
    # pass), repeated over 2 x 2 cells and rescaled to 14 x 14 cells, plus the stride-16 term's CAM computed from
    # the stage's output (captured by a hook) and the logit's gradient with respect to that term's pooled input.
    _, tiles = model_and_tiles
    images = torch.from_numpy(tiles)
    stage = fine_model.features.model.blocks[4]  # Lite0's last stage at stride 16
    captured = {}
    hooks = [
        fine_model.features.register_forward_hook(lambda m, i, o: captured.__setitem__("coarse", o)),
        stage.register_forward_hook(lambda m, i, o: captured.__setitem__("fine", o)),
    ]
    try:
        logits = fine_model(images)
    finally:
        for hook in hooks:
            hook.remove()
    coarse, fine = captured["coarse"], captured["fine"]
    (coarse_grad,) = torch.autograd.grad(logits.sum(), coarse, retain_graph=True)
    grad_cam = (coarse_grad.mean((2, 3), keepdim=True) * coarse).sum(1).detach()  # [4, 7, 7], cells of 32 px
    pooled = fine.mean((2, 3))
    (term_grad,) = torch.autograd.grad(fine_model.fine(pooled).sum(), pooled)  # d logit / d mean(A16), direct term
    fine_cam = (term_grad[:, :, None, None] * fine).sum(1).detach() / (14 * 14)
    expected = grad_cam.repeat_interleave(2, 1).repeat_interleave(2, 2) / 4 + fine_cam
    with torch.inference_mode():
        _, cam = fine_model.forward_with_cam(images)
    assert fine_cam.abs().max() > 1e-3 and grad_cam.abs().max() > 1e-3
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-4)


def test_exported_default_cam_matches_pytorch(fine_model, model_and_tiles):
    _, tiles = model_and_tiles
    session = ort.InferenceSession(to_onnx_bytes(fine_model), providers=["CPUExecutionProvider"])
    logits, cams = session.run(None, {"image": tiles})
    with torch.inference_mode():
        expected_logit, expected_cam = fine_model.forward_with_cam(torch.from_numpy(tiles))
    assert cams.shape == (4, 14, 14)
    np.testing.assert_allclose(cams, expected_cam.numpy(), atol=1e-5)
    np.testing.assert_allclose(logits, expected_logit.numpy(), atol=1e-4)
