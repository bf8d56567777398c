"""Bias correction gives each quantised convolution back the channel means its fp32 twin computes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from crackscope.deploy.bias import correct_biases
from crackscope.deploy.export import draw_tiles
from crackscope.deploy.quantize import Int8Recipe, quantize_int8
from crackscope.deploy.verify import run_session
from crackscope.inspect.model import make_session
from crackscope.labelled import load_samples


def _fp32(exported):
    return next(m for m in exported.models if m.precision == "fp32").path


def _tiles(patch_data):
    return draw_tiles(load_samples(patch_data), 64, verify_count=16, calib_count=64, seed=0)


def test_after_correction_the_channel_means_of_every_quantised_convolution_match_fp32(exported, patch_data, tmp_path):
    _verify, calibration = _tiles(patch_data)
    staged = tmp_path / "int8.onnx"
    quantize_int8(_fp32(exported), staged, calibration.images, replace(Int8Recipe(), bias_correction=False))
    first = correct_biases(_fp32(exported), staged, calibration.images)
    again = correct_biases(_fp32(exported), staged, calibration.images)  # measures what the first one left
    assert first.layers == again.layers > 10  # every convolution between the float stem and the float tail
    assert first.mean_shift > 0
    assert again.mean_shift < 0.5 * first.mean_shift


def test_the_corrected_model_moves_logits_less_on_tiles_it_was_not_corrected_on(exported, patch_data, tmp_path):
    verify, calibration = _tiles(patch_data)
    fp32 = _fp32(exported)
    logits = {}
    for corrected in (False, True):
        path = tmp_path / f"int8-{corrected}.onnx"
        quantize_int8(fp32, path, calibration.images, replace(Int8Recipe(), bias_correction=corrected))
        logits[corrected] = run_session(make_session(str(path), providers="cpu"), verify.images, 8)[0]
    reference = run_session(make_session(str(fp32), providers="cpu"), verify.images, 8)[0]
    error = {corrected: np.abs(values - reference).mean() for corrected, values in logits.items()}
    assert error[True] < error[False]


def _no_bias_network(path, rng) -> None:
    """conv -> ReLU6 -> conv -> ReLU6 -> conv, none of them with a bias."""
    weights = [rng.normal(0, 0.3, shape).astype(np.float32) for shape in ((8, 3, 3, 3), (8, 8, 1, 1), (4, 8, 1, 1))]
    nodes, source = [], "image"
    for index in range(3):
        nodes.append(helper.make_node("Conv", [source, f"w{index}"], [f"conv{index}"], name=f"conv{index}"))
        source = f"conv{index}"
        if index < 2:
            nodes.append(helper.make_node("Clip", [source, "zero", "six"], [f"act{index}"], name=f"act{index}"))
            source = f"act{index}"
    constants = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)] + [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
    ]
    graph = helper.make_graph(
        nodes,
        "no-bias",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, None)],
        constants,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_convolutions_without_a_bias_are_left_as_they_are(tmp_path):
    rng = np.random.default_rng(0)
    _no_bias_network(tmp_path / "toy.onnx", rng)
    tiles = rng.uniform(0, 1, (32, 3, 8, 8)).astype(np.float32)
    quantize_int8(tmp_path / "toy.onnx", tmp_path / "int8.onnx", tiles, Int8Recipe(bias_correction=False))
    before = onnx.load(str(tmp_path / "int8.onnx")).SerializeToString()
    assert correct_biases(tmp_path / "toy.onnx", tmp_path / "int8.onnx", tiles).layers == 0
    assert onnx.load(str(tmp_path / "int8.onnx")).SerializeToString() == before
