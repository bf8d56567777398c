"""Reduced-precision variants of a verified fp32 model for edge devices: int8 (static QDQ) and fp16.

int8 uses static quantisation in QDQ format with per-channel weights, calibrated on real tiles: activation ranges
come from the data the model will see, and ONNX Runtime fuses the QDQ pairs into integer kernels. The recipe
(:class:`Int8Recipe`) was chosen by measurement: ``benchmarks/int8.py`` on the accuracy benchmark's Özgenel concrete
(160 px) and magnetic-tile (224 px) models, calibrated on training images and compared with fp32 on the held-out
test images (heatmap correlation: :func:`~crackscope.deploy.verify.heatmap_correlations`).

- Conv, Clip (ReLU6) and Add are quantised, so activations stay int8 from one convolution to the next; quantising
  Conv alone left about 30 DequantizeLinear -> Clip -> QuantizeLinear round trips in the optimised graph, ran
  ~1.2x fp32 instead of ~1.4-1.6x, and its heatmaps correlated worse (0.84 vs 0.92 on concrete).
- The stem, the preprocessing, the last convolution, the head and the CAM stay float. Keeping the last one to
  three blocks float as well changed the heatmap correlation by at most 0.001; quantising the last convolution
  too made no measurable speed difference.
- A quantised stem is offered, not the default: with ``float_stem=False`` and ``pixel_stem`` (the option's
  default) the preprocessing's per-channel scale and shift are folded into the stem's weights and bias
  (:func:`fold_preprocessing_into_stem`), so the stem reads ``(pixel - zero_point) * scale``, which int8 holds
  exactly, and the Cast, Mul, Add and QuantizeLinear in front of it are removed: one chain of integer kernels from
  the uint8 NHWC input on, with no float stem, NCHWc reorders or layout transposes. On the 224 px magnetic-tile
  model (2 cores, AVX2; ``benchmarks/int8.py --job magnetic-tile --rounds 7``) int8 went from 1.48x to 1.58x fp32
  at batch 8 in paired rounds, but the stem's quantised weights cost heatmap correlation everywhere downstream:
  0.958 -> 0.880 and 99.25% -> 97.8% of decisions (magnetic tile, failing the gates), 0.975 -> 0.955 (concrete).
  Quantising the stem on the preprocessed image (``pixel_stem=False``) was slower than keeping it float: the
  optimiser moves the float preprocessing to NHWC.
- Pair-safe weights (:func:`pair_safe_ranges`) are what the heatmaps needed. On x86 CPUs without VNNI (AVX2, where
  these numbers were measured) ONNX Runtime's u8 x s8 kernels add neighbouring products in saturating 16-bit
  arithmetic; ReLU6 outputs sit at 255 often, so with weights scaled to +-127 the sums overflowed: correlation
  0.92 (concrete) and 0.84 (magnetic tile, 95% of decisions kept) against 0.97 and 0.96 for the same file run with
  exact arithmetic. 7-bit weights (``reduce_range``) avoid the overflow but cost as much (0.92, 0.82); unsigned
  weights (u8 x u8 kernels, ``session.x64quantprecision``) are exact but slower. Pair-safe weights scale each
  channel by its largest pair sum instead: 0.973 and 0.957, with the same graph and kernels as before. CPUs with
  VNNI and ARM do not saturate; there the pair-safe range costs at most one bit on some channels.
- Percentile calibration (99.99th percentile of |activation|) kept 99.25% of magnetic-tile decisions with two
  calibration seeds, MinMax 98.1-98.9% (2 vs 3-5 of 268 held-out tiles), with the same heatmap correlation
  (0.958 vs 0.955-0.957; concrete 0.975 vs 0.973, all decisions kept). Entropy did as well as Percentile;
  averaging MinMax ranges, 1024 calibration tiles instead of 256 and QOperator instead of QDQ were no better;
  per-tensor weights and symmetric activations lost 0.07-0.5 of correlation.

- Bias correction (:mod:`crackscope.deploy.bias`, on by default): after quantising, each quantised convolution's
  int32 bias is corrected, layer after layer, so that its output channels' means on 64 calibration tiles match
  fp32. Quantisation error is not zero-mean (Percentile clipping, weight rounding) and its shifts add up over
  the network's depth: on held-out tiles of six default-trained models it took the heatmap correlation from
  0.937-0.977 to 0.968-0.994 and changed decisions from 1-13 to 0-6 (``benchmarks/int8_suite.py --bias-ablation``).

Dynamic quantisation was 14x slower than fp32 on CPU here, so it is not offered.

fp16 halves the file and suits GPU targets; inputs and outputs keep their types (uint8 in, float32 out), so
callers do not change.

Example:
    >>> quantize_int8("model.onnx", "model.int8.onnx", calibration_tiles)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

log = logging.getLogger(__name__)


class _TileReader:
    """Feeds calibration tiles to the quantiser in batches (the ``CalibrationDataReader`` protocol).

    ``__len__`` and ``set_range`` (in batches) let ONNX Runtime calibrate one batch at a time
    (``CalibStridedMinMax``): histogram calibrators keep every activation they are given until they are asked to
    summarise, which for a few hundred 224 px tiles is gigabytes.
    """

    def __init__(self, tiles: np.ndarray, batch_size: int = 16) -> None:
        self._all = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
        self._batches = iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._batches = iter(self._all[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"image": batch}

    def rewind(self) -> None:  # pragma: no cover - part of the protocol, unused by the calibrators used here
        self._batches = iter(self._all)


Calibration = Literal["MinMax", "Entropy", "Percentile", "Distribution"]


@dataclass(frozen=True)
class Int8Recipe:
    """What is quantised and how its ranges are found; the defaults are the measured best (module docstring).

    Preprocessing (everything before the first convolution) and the head and CAM (everything after the last
    convolution) are never quantised: quantising the preprocessing lets ONNX Runtime's layout pass move it back to
    NHWC, and the head is a few hundred multiply-adds.

    Attributes:
        op_types: ONNX op types that are quantised.
        float_stem: keep the first convolution float (with the preprocessing in front of it).
        pixel_stem: when the stem is quantised, fold the preprocessing into it so that it reads the uint8 pixels
            (:func:`fold_preprocessing_into_stem`); without it, the quantised stem reads the preprocessed image.
        float_tail_convs: keep the last this many convolutions, and every node after the first of them, float.
            1 keeps the convolution that makes the CAM's feature map; in EfficientNet-Lite0 each inverted-residual
            block is three convolutions, so 4 also keeps the last block float, 7 the last two.
        calibration: how activation ranges are found from the calibration tiles (an ONNX Runtime
            ``CalibrationMethod`` name): MinMax takes the extremes, Percentile clips at ``percentile``, Entropy
            minimises the KL divergence of the quantised histogram.
        percentile: the percentile of absolute activations kept by Percentile calibration.
        moving_average: MinMax only: average the per-batch extremes instead of taking the overall extremes.
        per_channel: one weight scale per output channel instead of one per tensor.
        reduce_range: 7-bit weights. On x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels add pairs of
            products in saturating 16-bit arithmetic, which 7-bit weights cannot overflow.
        weight_type: signed (QInt8) or unsigned (QUInt8, the u8 x u8 kernels, which do not saturate) weights.
        pair_safe_weights: weight scales chosen so that the u8 x s8 kernels cannot overflow (see
            :func:`pair_safe_ranges`) on x86 CPUs without VNNI, at the cost of a little weight resolution.
        symmetric_activations: activation ranges symmetric around 0 (zero point 128) instead of fitted.
        quant_format: QDQ (Quantize/DequantizeLinear pairs that ONNX Runtime fuses into integer kernels) or
            QOperator (integer operators written into the file).
        float_units: blocks of the network (:func:`unit_of` of their node names) kept float on top of the above;
            the export's accuracy-aware search (:mod:`crackscope.deploy.mixed`) fills this in when the plain recipe
            fails a gate. Ranges do not depend on it, so it shares :meth:`calibration_key` with the plain recipe.
        bias_correction: after quantising, give each quantised convolution's output channels back the mean the fp32
            model computes on the calibration tiles (:func:`~crackscope.deploy.bias.correct_biases`).
    """

    op_types: tuple[str, ...] = ("Conv", "Clip", "Add")
    float_stem: bool = True
    pixel_stem: bool = True
    float_tail_convs: int = 1
    calibration: Calibration = "Percentile"
    percentile: float = 99.99
    moving_average: bool = False
    per_channel: bool = True
    reduce_range: bool = False
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    pair_safe_weights: bool = True
    symmetric_activations: bool = False
    quant_format: Literal["QDQ", "QOperator"] = "QDQ"
    float_units: tuple[str, ...] = ()  # units (:func:`unit_of`) kept float as well, chosen by the int8 search
    bias_correction: bool = True

    def __post_init__(self) -> None:
        if self.float_tail_convs < 0:
            raise ValueError(f"float_tail_convs must be 0 or more, got {self.float_tail_convs}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.pair_safe_weights and not self.per_channel:
            raise ValueError("pair_safe_weights needs per_channel: the safe range is chosen for each output channel")

    def calibration_key(self) -> str:
        """The settings that decide the calibrated ranges (recipes with equal keys can share them)."""
        key = f"{self.calibration}-{'-'.join(self.op_types)}"
        if self.calibration == "Percentile":
            key += f"-p{self.percentile:g}"
        if self.calibration == "MinMax" and self.moving_average:
            key += "-moving-average"
        if self.pixel_stem and not self.float_stem:
            key += "-pixel-stem"  # a slightly different graph in front of the stem
        return key


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    tiles: np.ndarray,
    recipe: Int8Recipe = Int8Recipe(),
    *,
    calibration_cache: str | os.PathLike | None = None,
    tiles_per_input: int = 1,
) -> Path:
    """Static int8 (uint8 activations) calibrated on ``tiles``, following ``recipe`` (with its bias correction, also
    on ``tiles``).

    ``calibration_cache`` is a JSON file of calibrated ranges that is written on first use and read afterwards,
    for trying recipes that share :meth:`Int8Recipe.calibration_key` on the same tiles (benchmarks/int8.py).
    ``tiles_per_input``: how many tiles each input holds (the dense graph reads mosaics of tiles); the bias
    correction measures on as many tiles, not inputs, as for the tile graph.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        pixels = fold_preprocessing_into_stem(model) if recipe.pixel_stem and not recipe.float_stem else None
        if pixels is not None:
            onnx.save(model, str(prepared))
        graph = model.graph
        kept_float = float_nodes(graph, recipe)
        overrides = pair_safe_ranges(graph, kept_float) if recipe.pair_safe_weights else {}
        if pixels is not None:  # the stem's input is exactly representable: pin its scale and zero point
            overrides[pixels.stem_input] = [
                {"scale": np.array(pixels.scale, np.float32), "zero_point": np.array(pixels.zero_point, np.uint8)}
            ]
        chatter = io.StringIO()  # ONNX Runtime's calibrators print progress lines to stdout
        with contextlib.redirect_stdout(chatter):
            quantize_static(
                str(prepared),
                str(out_path),
                _TileReader(tiles),
                quant_format=QuantFormat[recipe.quant_format],
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType[recipe.weight_type],
                calibrate_method=CalibrationMethod[recipe.calibration],
                op_types_to_quantize=list(recipe.op_types),
                nodes_to_exclude=kept_float,
                extra_options=_extra_options(recipe, overrides),
                calibration_cache_path=calibration_cache,
            )
        if chatter.getvalue():
            log.debug("quantize_static: %s", chatter.getvalue().strip())
    if pixels is not None:
        read_pixels_directly(out_path, pixels)
    if recipe.bias_correction:
        from crackscope.deploy.bias import BIAS_TILES, correct_biases

        correct_biases(fp32_path, out_path, tiles, max(1, BIAS_TILES // tiles_per_input))
    return out_path


@dataclass(frozen=True)
class PixelStem:
    """The stem's input after :func:`fold_preprocessing_into_stem`: ``(pixels - zero_point) * scale``."""

    stem_input: str  # the float tensor the stem convolution reads
    pixels: str  # the uint8 NCHW pixels it is computed from (the transposed input)
    scale: float
    zero_point: int


def fold_preprocessing_into_stem(model: onnx.ModelProto) -> PixelStem | None:
    """Move the preprocessing's per-channel affine map into the stem convolution, in place.

    The graph's ``Cast(pixels) * a_c + b_c`` becomes ``(Cast(pixels) - Z) * a`` with one scale ``a = max a_c`` and
    one integer zero point ``Z`` (the mean of the channels' ``-b_c / a_c``, 127 or 128 for EfficientNet-Lite's
    0.5/0.5 normalisation), and the stem absorbs the rest: its weights are scaled by ``a_c / a`` per input
    channel, and ``sum W[:, c] * (b_c + Z * a_c)`` is added to its bias. Inside the image this is the same function;
    where the stem pads (TF-"same": one row and column at the bottom and right for even sizes) the padded value is
    0 in the new input, which is ``b_c + Z * a_c`` (about 0.004 here) in the old one. The new stem input is
    ``pixels - Z`` scaled by ``a``: int8 with that scale and zero point holds it exactly, so
    :func:`read_pixels_directly` can drop the float arithmetic in front of the quantised stem.

    Returns ``None`` (and leaves the graph alone) when the nodes in front of the first convolution are not
    ``Cast -> Mul -> Add`` with constant operands, or the convolution is grouped or lacks constant weights and bias
    (an exported stem has both: BatchNorm is folded into it).
    """
    from onnx import numpy_helper

    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    stem = next((node for node in graph.node if node.op_type == "Conv"), None)
    add = producer.get(stem.input[0]) if stem is not None else None
    mul = producer.get(add.input[0]) if add is not None and add.op_type == "Add" else None
    cast = producer.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" else None
    if cast is None or cast.op_type != "Cast" or len(stem.input) < 3:
        return None
    constants = _constants(graph)
    if not {mul.input[1], add.input[1], stem.input[1], stem.input[2]} <= set(constants):
        return None
    if next((a.i for a in stem.attribute if a.name == "group"), 1) != 1:
        return None
    weight = numpy_helper.to_array(constants[stem.input[1]]).astype(np.float64)
    channels = weight.shape[1]
    a = np.broadcast_to(numpy_helper.to_array(constants[mul.input[1]]).astype(np.float64).reshape(-1), channels)
    b = np.broadcast_to(numpy_helper.to_array(constants[add.input[1]]).astype(np.float64).reshape(-1), channels)
    if np.any(a <= 0):
        return None
    scale = float(a.max())
    zero_point = int(np.clip(np.round(np.mean(-b / a)), 0, 255))
    offset = b + zero_point * a  # what the old input is where the new one is 0
    bias = numpy_helper.to_array(constants[stem.input[2]]).astype(np.float64)
    bias = bias + np.einsum("ochw,c->o", weight, offset)
    weight = weight * (a / scale)[None, :, None, None]
    shape = (1, channels, 1, 1)
    _set_constant(graph, constants, mul.input[1], np.full(shape, scale, np.float32))
    _set_constant(graph, constants, add.input[1], np.full(shape, -zero_point * scale, np.float32))
    _set_constant(graph, constants, stem.input[1], weight.astype(np.float32))
    _set_constant(graph, constants, stem.input[2], bias.astype(np.float32))
    return PixelStem(stem.input[0], cast.input[0], scale, zero_point)


def read_pixels_directly(path: Path, pixels: PixelStem) -> None:
    """Feed the quantised stem the uint8 pixels in place of ``QuantizeLinear((pixels - Z) * a)``, which is them.

    Checks that the QuantizeLinear has the pinned scale and zero point (else the graph is left alone and this is
    a ``RuntimeError``), then drops it and the float preprocessing that fed only it.
    """
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    constants = _constants(graph)
    quantize = next(
        (node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] == pixels.stem_input), None
    )
    if quantize is None:
        raise RuntimeError(f"{path}: the stem's input {pixels.stem_input} was not quantised")
    scale = float(numpy_helper.to_array(constants[quantize.input[1]]))
    zero_point = int(numpy_helper.to_array(constants[quantize.input[2]]))
    if not np.isclose(scale, pixels.scale, rtol=1e-6) or zero_point != pixels.zero_point:
        raise RuntimeError(
            f"{path}: the stem's input was quantised with scale {scale} and zero point {zero_point}, not the pinned "
            f"{pixels.scale} and {pixels.zero_point}"
        )
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == quantize.output[0]:
                node.input[i] = pixels.pixels
    graph.node.remove(quantize)
    _drop_unused(graph)
    onnx.save(model, str(path))


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and ``Constant`` node values by name."""
    found = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = node.attribute[0].t
    return found


def _set_constant(graph: onnx.GraphProto, constants: dict[str, onnx.TensorProto], name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    replacement = numpy_helper.from_array(value, name)
    for init in graph.initializer:
        if init.name == name:
            init.CopyFrom(replacement)
            return
    replacement.name = ""
    constants[name].CopyFrom(replacement)  # a Constant node's value


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is used (repeatedly), then initializers nothing reads."""
    outputs = {output.name for output in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def _extra_options(recipe: Int8Recipe, overrides: dict[str, list[dict[str, object]]]) -> dict[str, object]:
    options: dict[str, object] = {
        "ActivationSymmetric": recipe.symmetric_activations,
        "WeightSymmetric": True,
        "CalibMovingAverage": recipe.moving_average,
    }
    if overrides:
        options["TensorQuantOverrides"] = overrides
    if recipe.calibration == "Percentile":
        options["CalibPercentile"] = recipe.percentile
    if recipe.calibration != "MinMax":
        options["CalibStridedMinMax"] = 1  # one batch at a time (see _TileReader); MinMax reduces in the graph
    return options


# ONNX Runtime's u8 x s8 kernels on x86 without VNNI (AVX2, AVX-512 before VNNI) multiply uint8 activations by int8
# weights with VPMADDUBSW, which adds each pair of neighbouring products in saturating 16-bit arithmetic, then
# widens. A pair overflows when 255 * (|w_k| + |w_k+1|) > 32767, i.e. when two neighbouring int8 weights add up
# to more than 128 in magnitude and both activations are large (a ReLU6 at its top is 255).
PAIR_LIMIT = 127  # |q_k| + |q_k+1| <= 127 + 1 (rounding) = 128 after quantising: 255 * 128 = 32640 fits


def pair_sums(weight: np.ndarray) -> np.ndarray:
    """Per output channel, the largest ``|w_k| + |w_k+1|`` over the pairs the u8 x s8 kernels add (``[C_out]``).

    Pairs are neighbours along the reduction axis, starting at an even index. A convolution's reduction axis is
    ordered (input channel, kernel row, column) when ONNX Runtime computes it as a matrix product of NCHW patches,
    and (kernel row, column, input channel) in its NHWC kernels; both orders are covered. A last element without a
    neighbour pairs with zero padding.
    """
    magnitude = np.abs(weight.astype(np.float64))
    orders = [magnitude.reshape(len(weight), -1)]
    if magnitude.ndim == 4:
        orders.append(magnitude.transpose(0, 2, 3, 1).reshape(len(weight), -1))
    largest = np.zeros(len(weight))
    for flat in orders:
        padded = np.pad(flat, ((0, 0), (0, flat.shape[1] % 2)))
        largest = np.maximum(largest, padded.reshape(len(weight), -1, 2).sum(axis=2).max(axis=1))
    return largest


def pair_safe_ranges(graph: onnx.GraphProto, kept_float: Sequence[str] = ()) -> dict[str, list[dict[str, object]]]:
    """Per-channel symmetric weight ranges of the quantised (non-depthwise) convolutions that cannot overflow a pair.

    A channel's range is its largest pair sum instead of its largest weight, so after scaling to [-127, 127] no two
    neighbouring weights add up to more than :data:`PAIR_LIMIT` (+1 from rounding). That costs at most one bit of
    that channel's resolution, and usually much less: two neighbours are seldom both near the channel's largest
    weight. Depthwise convolutions run on other kernels, which do not add pairs, and keep their full range. The
    result is ONNX Runtime's ``TensorQuantOverrides``.
    """
    from onnx import numpy_helper

    weights = {init.name: init for init in graph.initializer}
    excluded = set(kept_float)
    overrides: dict[str, list[dict[str, object]]] = {}
    for node in graph.node:
        if node.op_type != "Conv" or node.name in excluded or node.input[1] not in weights:
            continue
        if next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
            continue
        ranges = pair_sums(numpy_helper.to_array(weights[node.input[1]])) * 127.0 / PAIR_LIMIT
        overrides[node.input[1]] = [{"rmin": np.array(-r, np.float32), "rmax": np.array(r, np.float32)} for r in ranges]
        overrides[node.input[1]][0]["axis"] = 0
    return overrides


def float_nodes(graph: onnx.GraphProto, recipe: Int8Recipe) -> list[str]:
    """Names of the nodes kept float: preprocessing, head and CAM, and the stem/tail convolutions as the recipe says.

    Graph order is topological, so "before the first Conv" and "from the k-th last Conv on" are index ranges.
    Nodes of the recipe's ``float_units`` are kept float too.
    """
    nodes = list(graph.node)
    convs = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
    if not convs:
        return []
    first = convs[0]
    tail = convs[-min(recipe.float_tail_convs, len(convs))] if recipe.float_tail_convs else convs[-1] + 1
    kept = [node.name for node in nodes[:first] + nodes[max(tail, first + 1) :]]
    if recipe.float_stem or tail <= first:
        kept.append(nodes[first].name)
    if recipe.float_units:  # every node under a unit's path: its convolutions, activations and residual Add
        prefixes = tuple(unit + "/" for unit in recipe.float_units)
        kept += [node.name for node in nodes[first : max(tail, first + 1)] if node.name.startswith(prefixes)]
    return list(dict.fromkeys(kept))


def unit_of(node_name: str) -> str | None:
    """The block a node belongs to, from the module path the exporter writes into node names: the path up to its
    first ``conv...`` part (``/features/blocks/blocks.3/blocks.3.1/conv_pw/Conv`` -> ``/features/blocks/blocks.3/
    blocks.3.1``; a ResNet's ``/features/layer1/layer1.0/conv1/Conv`` -> ``/features/layer1/layer1.0``). ``None`` for
    a node outside any such block.
    """
    parts = node_name.split("/")
    for index, part in enumerate(parts):
        if index and part.lower().startswith("conv"):
            return "/".join(parts[:index]) or None
    return None


def quantised_units(fp32_path: str | os.PathLike, recipe: Int8Recipe | None = None) -> list[str]:
    """The units (:func:`unit_of`) with a convolution the recipe (default: the plain one) quantises, in graph order."""
    graph = onnx.load(str(fp32_path)).graph
    kept = set(float_nodes(graph, recipe or Int8Recipe()))
    units = [unit_of(n.name) for n in graph.node if n.op_type == "Conv" and n.name not in kept]
    return list(dict.fromkeys(unit for unit in units if unit))


def requantisation_pairs(graph: onnx.GraphProto) -> int:
    """``DequantizeLinear -> [one float op] -> QuantizeLinear`` chains: int8 made float and back again.

    Meant for ONNX Runtime's optimised graph (``SessionOptions.optimized_model_filepath``), where quantised ops
    have become integer kernels and what is left of QDQ is overhead; in the QDQ file itself every quantised op
    looks like such a chain.
    """
    producer = {output: node for node in graph.node for output in node.output}
    constants = {init.name for init in graph.initializer}

    def from_dequantize(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    count = 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in producer:
            continue
        source = producer[node.input[0]]
        activations = [name for name in source.input if name and name not in constants and name in producer]
        if source.op_type == "DequantizeLinear" or (activations and all(map(from_dequantize, activations))):
            count += 1
    return count


def convert_fp16(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """fp16 weights and activations; uint8 input and float32 outputs kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(out_path))
    return Path(out_path)
