"""Reduced-precision variants of a verified fp32 model for edge devices: int8 (static QDQ) and fp16.

int8 uses static quantisation in QDQ format with per-channel weights, calibrated on real tiles: activation ranges
come from the data the model will see, not from guesses, and ONNX Runtime fuses the QDQ pairs into integer
kernels. Only convolutions are quantised, and not the first one (it sees raw pixels) nor the last one (it makes the
feature map the heatmap is computed from): keeping those two in float cut the mean logit error by a third on the
demo model at no measurable speed cost. Preprocessing, the head and the CAM stay in float. (Dynamic quantisation
was 14x slower than fp32 on CPU here, so it is not offered.)

fp16 halves the file and suits GPU targets; inputs and outputs keep their types (uint8 in, float32 out), so
callers do not change.

Example:
    >>> quantize_int8("model.onnx", "model.int8.onnx", calibration_tiles)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
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


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, tiles: np.ndarray) -> Path:
    """Static QDQ int8 (per-channel weights, uint8 activations) calibrated on ``tiles``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        convs = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv"]
        quantize_static(
            str(prepared),
            str(out_path),
            _TileReader(tiles),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=[convs[0], convs[-1]] if len(convs) > 2 else [],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return out_path


def convert_fp16(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """fp16 weights and activations; uint8 input and float32 outputs kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(out_path))
    return Path(out_path)
