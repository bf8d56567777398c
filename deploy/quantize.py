"""Reduced-precision variants of a verified fp32 model for edge devices: int8 (static QDQ) and fp16.

int8 uses static quantisation in QDQ format with per-channel weights, calibrated on real tiles (MinMax): activation
ranges come from the data the model will see, and ONNX Runtime fuses the QDQ pairs into integer kernels. The recipe
(:class:`Int8Recipe`) was chosen by measurement (README, "Inference speed"): Conv, Clip (ReLU6) and Add are
quantised, so activations stay int8 from one convolution to the next; quantising Conv alone left about 30
DequantizeLinear -> Clip -> QuantizeLinear round trips in the optimised graph and ran ~1.2x fp32 instead of ~1.4-1.6x.
The stem (it sees raw pixels) and the last convolution (it makes the feature map the heatmap is computed from) stay
float: quantising the stem was slower and dropped the heatmap correlation with fp32 (0.92 -> 0.86 on the 96 px demo
model); the last conv made no measurable speed difference. Preprocessing, the head and the CAM stay float
(quantised preprocessing lets ONNX Runtime move it back to NHWC). Dynamic quantisation was 14x slower than fp32 on
CPU here, so it is not offered.

fp16 halves the file and suits GPU targets; inputs and outputs keep their types (uint8 in, float32 out), so
callers do not change.

Example:
    >>> quantize_int8("model.onnx", "model.int8.onnx", calibration_tiles)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx


class _TileReader:
    """Feeds calibration tiles to the quantiser in batches (the ``CalibrationDataReader`` protocol)."""

    def __init__(self, tiles: np.ndarray, batch_size: int = 16) -> None:
        self._batches = iter([tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {"image": batch}

    def rewind(self) -> None:  # pragma: no cover - part of the protocol, unused by MinMax calibration
        pass


@dataclass(frozen=True)
class Int8Recipe:
    """What is quantised: op types, and whether the stem (first) and last convolutions stay float.

    Preprocessing (everything before the first convolution) and the head and CAM (everything after the last
    convolution) are never quantised: quantising the preprocessing lets ONNX Runtime's layout pass move it back to
    NHWC, and the head is a few hundred multiply-adds.
    """

    op_types: tuple[str, ...] = ("Conv", "Clip", "Add")
    float_stem: bool = True
    float_last_conv: bool = True
    calibration: str = "MinMax"  # an onnxruntime CalibrationMethod name: MinMax, Entropy, Percentile, Distribution


CONV_ONLY = Int8Recipe(op_types=("Conv",))  # the recipe before Clip and Add were quantised too (for comparison)


def quantize_int8(
    fp32_path: str | os.PathLike, out_path: str | os.PathLike, tiles: np.ndarray, recipe: Int8Recipe = Int8Recipe()
) -> Path:
    """Static QDQ int8 (per-channel weights, uint8 activations) calibrated on ``tiles``, following ``recipe``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _TileReader(tiles),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[recipe.calibration],
            op_types_to_quantize=list(recipe.op_types),
            nodes_to_exclude=float_nodes(onnx.load(str(prepared)).graph, recipe),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return out_path


def float_nodes(graph: onnx.GraphProto, recipe: Int8Recipe) -> list[str]:
    """Names of the nodes kept float: preprocessing, head and CAM, and the stem/last conv as the recipe says.

    Graph order is topological, so "before the first Conv" and "after the last Conv" are index ranges.
    """
    nodes = list(graph.node)
    convs = [i for i, node in enumerate(nodes) if node.op_type == "Conv"]
    if not convs:
        return []
    first, last = convs[0], convs[-1]
    kept = [node.name for node in nodes[:first] + nodes[last + 1 :]]
    if recipe.float_stem:
        kept.append(nodes[first].name)
    if recipe.float_last_conv and last != first:
        kept.append(nodes[last].name)
    return kept


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
