"""Backbones load offline; the bundled Lite0 weights behave like the original model; CAM algebra holds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crackscope.training.backbones import (
    BACKBONES,
    Preprocess,
    PretrainedWeightsMissing,
    build_lite0_imagenet,
    build_model,
    lite0_weights_path,
    without_stride16_term,
)

# --- an independent EfficientNet-Lite0 written the way the original code names its tensors ----------------------


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, as the original TF-ported model uses."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def bn(channels):
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    def __init__(self, cin, cout, kernel, stride, expand):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return y + x if self.skip else y


class OriginalLite0(nn.Module):
    STAGES = (
        (1, 3, 1, 1, 16),
        (2, 3, 2, 6, 24),
        (2, 5, 2, 6, 40),
        (3, 3, 2, 6, 80),
        (3, 5, 1, 6, 112),
        (4, 5, 2, 6, 192),
        (1, 3, 1, 6, 320),
    )  # repeats, kernel, stride, expand, channels

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in self.STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, bias=False)
        self._bn1 = bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def test_bundled_lite0_weights_give_the_original_models_imagenet_logits():
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    original = OriginalLite0().eval()
    original.load_state_dict(state, strict=True)  # by name: proves the original layout
    ours = build_lite0_imagenet(pretrained=True).eval()  # by position into timm
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = original(x), ours(x)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    assert actual.argmax(1).tolist() == expected.argmax(1).tolist()


def test_pretrained_default_backbone_loads_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_model("tf_efficientnet_lite0", pretrained=True)
    random_model = build_model("tf_efficientnet_lite0", pretrained=False)
    first = next(model.features.parameters())
    assert not torch.equal(first, next(random_model.features.parameters()))


@pytest.mark.parametrize("name", sorted(set(BACKBONES) - {"tf_efficientnet_lite0"}))
def test_torchvision_backbone_without_cached_weights_says_where_to_put_the_file(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsMissing, match=r"(?s)Copy https://.*\.pth to .*--no-pretrained"):
        build_model(name, pretrained=True)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_without_weights_and_gives_one_logit_per_image(name):
    model = build_model(name, pretrained=False, input_size=64).eval()
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert model(images).shape == (2,)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        build_model("vgg99")


def test_preprocess_converts_bgr_uint8_to_normalised_rgb_nchw():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    expected = (images[..., [2, 1, 0]].float() / 255 - torch.tensor(mean)) / torch.tensor(std)
    actual = Preprocess(mean, std)(images)
    assert actual.shape == (2, 3, 5, 7)
    torch.testing.assert_close(actual, expected.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


def test_cam_sums_to_the_logit_minus_bias():
    model = build_model("tf_efficientnet_lite0", pretrained=True, input_size=96).eval()
    model.fine.reset_parameters()  # the stride-16 term starts at zero; a trained one is not
    images = torch.randint(0, 256, (3, 96, 96, 3), dtype=torch.uint8)
    with torch.no_grad():
        logit = model(images)
        cam_logit, cam = model.forward_with_cam(images)
    assert cam.shape == (3, 6, 6)  # 16 px cells
    torch.testing.assert_close(cam_logit, logit, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cam.sum((1, 2)) + model.fc.bias, logit, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18", "mobilenet_v3_large", "efficientnet_b0"])
def test_every_backbone_has_a_stride16_stage_whose_map_is_twice_the_last_maps_side(name):
    model = build_model(name, pretrained=False, input_size=64).eval()
    with torch.no_grad():
        coarse, fine = model.feature_maps(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
    assert coarse.shape[-2:] == (2, 2) and fine.shape[-2:] == (4, 4)
    assert fine.shape[1] == model.fine.in_features and model.heatmap_stride == 16


def test_a_32_px_heatmap_model_has_no_stride16_term_and_the_16_px_one_needs_a_multiple_of_32():
    coarse = build_model("tf_efficientnet_lite0", pretrained=False, input_size=64, heatmap_stride=32)
    assert coarse.fine is None and coarse.heatmap_stride == 32
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("tf_efficientnet_lite0", pretrained=False, input_size=80)
    with pytest.raises(ValueError, match="heatmap_stride"):
        build_model("tf_efficientnet_lite0", pretrained=False, input_size=64, heatmap_stride=8)


def test_dropping_the_stride16_term_leaves_the_last_maps_logit():
    model = build_model("tf_efficientnet_lite0", pretrained=False, input_size=64).eval()
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        before = model(images)
        model.fine.reset_parameters()
        after = model(images)
        coarse = without_stride16_term(model)(images)
    torch.testing.assert_close(coarse, before)  # the term starts at zero, so the model was its 32 px part
    assert (after - coarse).abs().max() > 1e-3
