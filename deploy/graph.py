"""Shape the network for export: static at its fixed input size, one layout change, on uint8.

Training keeps its modules; export works on a copy (:func:`export_copy`) in which

* every timm ``Conv2dSame`` (TF-"same" padding, computed per forward from the input's shape, which exports as
  ``Shape``/``Gather``/arithmetic/``Pad`` around each strided convolution) becomes a convolution with the constant
  padding of the fixed input size: symmetric padding in the ``nn.Conv2d`` itself, or a ``ZeroPad2d`` in front of it
  where TF pads one side more (every even-sized input to a stride-2 layer). :func:`fold_pads_into_convs` then moves
  those constant ``Pad`` nodes into the ``pads`` attribute of the ``Conv`` they feed (ONNX convolutions take
  asymmetric pads; PyTorch's do not), so the graph has no ``Pad`` and no shape arithmetic left;
* preprocessing transposes the uint8 NHWC input to NCHW first (one layout change, on a quarter of the bytes), then
  casts and applies one per-channel multiply-add in BGR order; the BGR->RGB swap is folded into the first
  convolution's weights (a reordering of its input channels, so exact).

The outputs are those of the training model; the parity gate in :mod:`crackscope.deploy.verify` proves it for
every export.

The dense whole-frame graph takes frames of any size whose sides are multiples of 32. It reuses the tile size's
static pads when :func:`same_pads_hold_for` finds them equal at other multiples of 32 (they are for every backbone
here: each stride-2 layer then sees an even size), else it keeps the dynamic padding
(``export_copy(..., static_padding=False)``).

Example:
    >>> net = export_copy(model)                    # doctest: +SKIP
    >>> proto = fold_pads_into_convs(onnx.load_from_string(traced))   # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from crackscope.training.backbones import CrackNet


class NchwPreprocess(nn.Module):
    """uint8 BGR ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` still in BGR order, scaled and shifted per channel.

    The channel order is left to the first convolution (see :func:`export_copy`); the layout change happens on the
    uint8 tensor, before the cast.
    """

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        # Preprocess holds them in RGB order; the input stays BGR here.
        self.register_buffer("scale", scale.flip(0).reshape(1, 3, 1, 1).clone(), persistent=False)
        self.register_buffer("shift", shift.flip(0).reshape(1, 3, 1, 1).clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).to(self.scale.dtype) * self.scale + self.shift


def export_copy(model: CrackNet, *, static_padding: bool = True) -> CrackNet:
    """A copy of ``model`` (eval mode) with NCHW-first preprocessing; ``model`` is untouched.

    With ``static_padding`` (the default) every TF-"same" convolution gets the constant padding of the model's input
    size. The dense whole-frame graph passes ``False`` when :func:`same_pads_hold_for` says those pads would not
    hold for every frame size it takes, and keeps the dynamic padding.
    """
    net = copy.deepcopy(model).eval()
    first = first_convolution(net)
    with torch.no_grad():
        first.weight.copy_(first.weight.flip(1))  # the input now arrives in BGR order
        if static_padding:
            size = net.spec.input_size
            staticise_same_padding(net.features, net.preprocess(torch.zeros(1, size, size, 3, dtype=torch.uint8)))
    net.preprocess = NchwPreprocess(net.preprocess.scale, net.preprocess.shift)
    return net


def first_convolution(net: CrackNet) -> nn.Conv2d:
    """The convolution that reads the preprocessed image (checked by running the network, not by module order)."""
    size = net.spec.input_size
    with torch.inference_mode():
        image = net.preprocess(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    seen: list[tuple[nn.Module, torch.Tensor]] = []

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append((module, args[0]))

    hooks = [
        module.register_forward_pre_hook(record) for module in net.features.modules() if isinstance(module, nn.Conv2d)
    ]
    try:
        with torch.inference_mode():
            net.features(image)
    finally:
        for hook in hooks:
            hook.remove()
    module, consumed = seen[0]
    if consumed is not image or module.groups != 1:
        raise ValueError("the first layer of the backbone is not a plain convolution of the image; cannot fold BGR")
    return module


def staticise_same_padding(features: nn.Module, example: torch.Tensor) -> int:
    """Replace each TF-"same" ``Conv2dSame`` by a statically padded convolution for ``example``'s size.

    Returns how many were replaced. Runs ``features`` once to learn each layer's input size.
    """
    from timm.layers import Conv2dSame

    sizes = _same_padding_inputs(features, example)
    for parent in list(features.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv2dSame):
                setattr(parent, name, _static_conv(child, sizes[child]))
    return len(sizes)


def _same_padding_inputs(features: nn.Module, example: torch.Tensor) -> dict[nn.Module, tuple[int, int]]:
    """The input size (height, width) of every TF-"same" convolution when ``features`` runs on ``example``."""
    from timm.layers import Conv2dSame

    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:  # a pre-hook's return replaces args
        sizes[module] = tuple(args[0].shape[-2:])

    hooks = [
        module.register_forward_pre_hook(record) for module in features.modules() if isinstance(module, Conv2dSame)
    ]
    try:
        with torch.inference_mode():
            features(example)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def same_pads_hold_for(features: nn.Module, examples: Sequence[torch.Tensor]) -> bool:
    """Whether every TF-"same" convolution pads each of ``examples`` (inputs of different sizes) alike.

    TF-"same" pads a stride-``s`` convolution by ``max((ceil(x / s) - 1) * s + k - x, 0)`` in total, which depends
    on ``x mod s`` only; for frames whose sides are multiples of the network's stride (32), every stride-2 layer
    sees an even size and the pads are those of the tile size. Checked here by running the layers, not assumed:
    when it holds, the dense graph can take the tile graph's static pads; when not, it keeps the dynamic padding.
    """
    pads = [
        {module: same_pads(size, module.kernel_size, module.stride, module.dilation) for module, size in seen.items()}
        for seen in (_same_padding_inputs(features, example) for example in examples)
    ]
    return all(other == pads[0] for other in pads[1:])


def same_pads(size: tuple[int, int], kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]):
    """TF-"same" ``(top, bottom, left, right)`` for an input of ``size`` (what timm's ``pad_same`` computes)."""
    pads = []
    for x, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        total = max((-(-x // s) - 1) * s + (k - 1) * d + 1 - x, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def _static_conv(conv: nn.Conv2d, size: tuple[int, int]) -> nn.Module:
    top, bottom, left, right = same_pads(size, conv.kernel_size, conv.stride, conv.dilation)
    symmetric = top == bottom and left == right
    static = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        padding=(top, left) if symmetric else 0,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    static.load_state_dict(conv.state_dict())
    return static if symmetric else nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), static)


# --- ONNX pass --------------------------------------------------------------------------------------------------


def fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate every node whose inputs are all constants and store its outputs as initializers.

    torch's exporter leaves the pads of ``F.pad`` as a small constant subgraph (a ``Slice`` with step -1 it does
    not fold); after this pass they are one initializer. Returns ``proto``, changed in place.
    """
    from onnx.reference import ReferenceEvaluator

    graph = proto.graph
    constants = _constants(graph)
    folded = []
    for node in graph.node:
        if node.op_type == "Constant" or not all(name in constants for name in node.input if name):
            continue
        values = ReferenceEvaluator(node).run(None, {name: constants[name] for name in node.input if name})
        for name, value in zip(node.output, values, strict=True):
            constants[name] = np.asarray(value)
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    _drop_unused(graph)
    return proto


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return constants


def fold_pads_into_convs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Move each constant zero ``Pad`` of the spatial axes into the ``pads`` of the one ``Conv`` it feeds.

    Constant subgraphs are folded first (:func:`fold_constants`). Returns ``proto``, changed in place. A ``Pad``
    that is not constant, not zero-valued, pads the batch or channel axes, or feeds anything else is left as it is.
    """
    graph = fold_constants(proto).graph
    constants = _constants(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {output.name for output in graph.output}
    folded = []
    for pad in (node for node in graph.node if node.op_type == "Pad"):
        spatial = _spatial_zero_pads(pad, constants)
        users = consumers.get(pad.output[0], [])
        if spatial is None or len(users) != 1 or users[0].op_type != "Conv" or pad.output[0] in outputs:
            continue
        conv = users[0]
        if conv.input[0] != pad.output[0] or _attribute(conv, "auto_pad", b"NOTSET") != b"NOTSET":
            continue
        _add_conv_pads(conv, spatial)
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    _drop_unused(graph)
    return proto


def _spatial_zero_pads(pad: onnx.NodeProto, constants: dict[str, np.ndarray]) -> list[int] | None:
    """The Pad's ``[h_begin, w_begin, h_end, w_end]`` when it is a constant zero pad of the last two axes of NCHW."""
    if _attribute(pad, "mode", b"constant") != b"constant" or len(pad.input) < 2 or pad.input[1] not in constants:
        return None
    if len(pad.input) > 2 and pad.input[2]:
        value = constants.get(pad.input[2])
        if value is None or np.any(value != 0):
            return None
    if len(pad.input) > 3 and pad.input[3]:  # explicit axes: not produced by torch's exporter
        return None
    pads = [int(p) for p in constants[pad.input[1]].ravel()]
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or any(p < 0 for p in pads):
        return None
    return [pads[2], pads[3], pads[6], pads[7]]


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _add_conv_pads(conv: onnx.NodeProto, spatial: list[int]) -> None:
    current = _attribute(conv, "pads", [0, 0, 0, 0])
    for attribute in [a for a in conv.attribute if a.name == "pads"]:
        conv.attribute.remove(attribute)
    conv.attribute.append(onnx.helper.make_attribute("pads", [a + b for a, b in zip(current, spatial, strict=True)]))


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers and ``Constant`` nodes nothing reads any more (the folded pads)."""
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
