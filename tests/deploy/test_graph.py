"""The exported graph is static at its input size: no padding arithmetic, one layout change on uint8."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from timm.layers import Conv2dSame

from crackscope.deploy.graph import export_copy, fold_pads_into_convs, same_pads_hold_for, staticise_same_padding
from crackscope.deploy.quantize import (
    Int8Recipe,
    PixelStem,
    float_nodes,
    fold_preprocessing_into_stem,
    quantize_int8,
    requantisation_pairs,
)
from crackscope.training.backbones import build_model

PIXEL_STEM = Int8Recipe(float_stem=False, pixel_stem=True)  # the stem quantised, reading the uint8 pixels


@pytest.mark.parametrize("size", [7, 8, 64, 65])
@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (3, 2), (5, 2), (1, 1)])
def test_static_padding_equals_tf_same_padding_for_even_and_odd_sizes(size, kernel, stride):
    torch.manual_seed(0)
    features = torch.nn.Sequential(Conv2dSame(4, 6, kernel, stride=stride, groups=2, bias=True)).eval()
    image = torch.randn(2, 4, size, size)
    with torch.inference_mode():
        expected = features(image)
        assert staticise_same_padding(features, image) == 1
        assert not any(isinstance(module, Conv2dSame) for module in features.modules())
        torch.testing.assert_close(features(image), expected, atol=0, rtol=0)


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18", "mobilenet_v3_large"])
def test_export_copy_gives_the_training_models_outputs_and_leaves_it_untouched(backbone):
    torch.manual_seed(0)
    model = build_model(backbone, pretrained=False, input_size=64).eval()  # ImageNet mean/std: BGR order matters
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    copy = export_copy(model)
    with torch.inference_mode():
        for ours, theirs in zip(copy.forward_with_cam(tiles), model.forward_with_cam(tiles), strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    if backbone == "tf_efficientnet_lite0":
        assert sum(isinstance(module, Conv2dSame) for module in model.modules()) == 5  # training keeps TF-"same"
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def _pad_then_conv(value: float) -> onnx.ModelProto:
    pads = numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 1, 2], dtype=np.int64), "pads")
    fill = numpy_helper.from_array(np.array(value, dtype=np.float32), "fill")
    weight = numpy_helper.from_array(np.ones((1, 1, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Pad", ["x", "pads", "fill"], ["padded"]),
            helper.make_node("Conv", ["padded", "w"], ["y"], strides=[2, 2]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [pads, fill, weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_zero_pad_is_folded_into_the_conv_with_the_same_result_and_any_other_pad_is_kept():
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    expected = _run(_pad_then_conv(0.0), x)
    folded = fold_pads_into_convs(_pad_then_conv(0.0))
    assert [node.op_type for node in folded.graph.node] == ["Conv"]
    assert list(helper.get_attribute_value(folded.graph.node[0].attribute[-1])) == [0, 1, 1, 2]
    np.testing.assert_array_equal(_run(folded, x), expected)
    assert [node.op_type for node in fold_pads_into_convs(_pad_then_conv(1.0)).graph.node] == ["Pad", "Conv"]


def _optimised(path, tmp_path) -> onnx.GraphProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath).graph


def _assert_static_and_transposed_first_on_uint8(graph: onnx.GraphProto) -> Counter:
    ops = Counter(node.op_type for node in graph.node)
    assert not {"Pad", "Shape", "Gather", "Slice", "Ceil", "ConstantOfShape"} & set(ops), ops
    first_conv = next(i for i, node in enumerate(graph.node) if node.op_type in ("Conv", "FusedConv"))
    (transpose,) = [node for node in graph.node[:first_conv] if node.op_type == "Transpose"]
    assert list(transpose.input) == ["image"]  # the uint8 input itself: the layout changes before the cast
    assert list(helper.get_attribute_value(transpose.attribute[0])) == [0, 3, 1, 2]
    return ops


@pytest.mark.slow
def test_exported_graph_has_no_padding_arithmetic_and_one_transpose_of_the_uint8_input(exported, tmp_path):
    path = next(m.path for m in exported.models if m.precision == "fp32")
    ops = _assert_static_and_transposed_first_on_uint8(onnx.load(str(path)).graph)
    assert ops["Transpose"] == 1 and ops["Cast"] == 1, ops
    ops = _assert_static_and_transposed_first_on_uint8(_optimised(path, tmp_path))
    # The CAM reads two maps (the last one and the stride-16 stage's): at most one ReorderOutput out of ORT's
    # blocked layout each.
    assert ops["Transpose"] == 1 and ops["ReorderInput"] == 0 and ops["ReorderOutput"] <= 2, ops


@pytest.mark.slow
def test_int8_graph_keeps_activations_int8_between_convolutions_and_preprocessing_float_nchw(exported, tmp_path):
    path = next(m.path for m in exported.models if m.precision == "int8")
    optimised = _optimised(path, tmp_path)
    ops = _assert_static_and_transposed_first_on_uint8(optimised)
    assert requantisation_pairs(optimised) == 0, ops  # no int8 -> float -> int8 round trips left
    assert ops["QLinearConv"] >= 40 and ops["Conv"] == 2, ops  # every conv but the stem and the last one
    # Besides the input's, ONNX Runtime may add one Transpose into its NHWC int8 kernels and one back out for each
    # of the two maps the CAM reads in float (the last one and the stride-16 stage's).
    assert ops["Transpose"] <= 4 and ops["QuantizeLinear"] <= 1 and ops["DequantizeLinear"] <= 2, ops


@pytest.mark.slow
def test_a_pixel_stem_int8_graph_is_one_chain_of_integer_kernels_from_the_uint8_pixels(exported, tmp_path):
    fp32 = next(m.path for m in exported.models if m.precision == "fp32")
    tiles = np.random.default_rng(1).integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)
    path = quantize_int8(fp32, tmp_path / "pixel-stem.onnx", tiles, PIXEL_STEM)
    optimised = _optimised(path, tmp_path)
    ops = Counter(node.op_type for node in optimised.node)
    assert requantisation_pairs(optimised) == 0, ops  # no int8 -> float -> int8 round trips left
    first = optimised.node[0]
    assert first.op_type == "QLinearConv" and first.input[0] == "image", first  # the stem reads the pixels
    assert ops["QLinearConv"] >= 40 and ops["Conv"] == 1, ops  # every conv but the last one
    # No float preprocessing and no quantising of the input; the ways out of the NHWC integer kernels are into
    # the float last convolution (DequantizeLinear, Transpose to NCHW, ORT's blocked layout) and the stride-16
    # stage's output that the CAM reads (DequantizeLinear, Transpose).
    assert not {"Cast", "Mul", "QuantizeLinear"} & set(ops), ops
    assert ops["DequantizeLinear"] == 2 and ops["Transpose"] <= 2 and ops["ReorderInput"] <= 1, ops


def test_folding_the_preprocessing_into_the_stem_gives_the_same_convolution_output():
    """Without padding the fold is exact for any per-channel scale and shift (and any zero point it picks)."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["image"], ["pixels"], perm=[0, 3, 1, 2]),
            helper.make_node("Cast", ["pixels"], ["float_pixels"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["float_pixels", "a"], ["scaled"]),
            helper.make_node("Add", ["scaled", "b"], ["normalised"]),
            helper.make_node("Conv", ["normalised", "w", "bias"], ["out"], name="stem", strides=[2, 2]),
        ],
        "toy",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 9, 9, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(
                (1 / (255 * np.array([0.229, 0.224, 0.225]))).reshape(1, 3, 1, 1).astype(np.float32), "a"
            ),
            numpy_helper.from_array(
                (-np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).reshape(1, 3, 1, 1).astype(np.float32), "b"
            ),
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    image = rng.integers(0, 256, (1, 9, 9, 3), dtype=np.uint8)
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": image}
    )
    pixels = fold_preprocessing_into_stem(model)
    assert pixels == PixelStem(
        "normalised", "pixels", pytest.approx(1 / (255 * 0.224)), 114
    )  # 255 x the mean of the ImageNet means
    (folded,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": image}
    )
    np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-4)
    (normalised,) = [n for n in model.graph.node if n.op_type == "Add"]
    (scale,) = [n for n in model.graph.node if n.op_type == "Mul"]
    assert set(numpy_helper.to_array(_initializer(model, scale.input[1])).ravel()) == {np.float32(pixels.scale)}
    assert np.allclose(numpy_helper.to_array(_initializer(model, normalised.input[1])), -114 * pixels.scale)


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(init for init in model.graph.initializer if init.name == name)


@pytest.mark.slow
def test_the_quantised_stem_reading_the_pixels_gives_exactly_what_quantising_its_input_gave(
    exported, tmp_path, monkeypatch
):
    """QuantizeLinear((pixels - Z) * a) with scale a and zero point Z is the pixels: dropping it changes nothing."""
    import crackscope.deploy.quantize as quantize

    fp32 = next(m.path for m in exported.models if m.precision == "fp32")
    tiles = np.random.default_rng(1).integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)
    direct = quantize.quantize_int8(fp32, tmp_path / "direct.onnx", tiles, PIXEL_STEM)
    monkeypatch.setattr(quantize, "read_pixels_directly", lambda path, pixels: None)
    through = quantize.quantize_int8(fp32, tmp_path / "through.onnx", tiles, PIXEL_STEM)
    assert {"Cast", "Mul"} <= {node.op_type for node in onnx.load(str(through)).graph.node}  # still float in front
    assert not {"Cast", "Mul"} & {node.op_type for node in onnx.load(str(direct)).graph.node}
    test = np.random.default_rng(2).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    for a, b in zip(_outputs(direct, test), _outputs(through, test), strict=True):
        np.testing.assert_array_equal(a, b)


def _outputs(path, tiles):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": tiles})


def _chain(*ops: tuple[str, str]) -> onnx.GraphProto:
    """A graph of named nodes, each fed by the one before it."""
    nodes = [
        helper.make_node(op, [f"{ops[i - 1][1]}_out"] if i else ["image"], [f"{name}_out"], name=name)
        for i, (op, name) in enumerate(ops)
    ]
    return helper.make_graph(nodes, "g", [], [])


TOY = _chain(
    ("Transpose", "transpose"),
    ("Cast", "cast"),
    ("Mul", "scale"),
    ("Add", "shift"),
    ("Conv", "stem"),
    ("Clip", "stem_act"),
    ("Conv", "block"),
    ("Add", "residual"),
    ("Conv", "last"),
    ("Clip", "last_act"),
    ("Einsum", "cam"),
    ("Add", "bias"),
)


def test_the_default_int8_recipe_keeps_preprocessing_stem_last_conv_and_head_float():
    kept = set(float_nodes(TOY, Int8Recipe()))
    assert kept == {"transpose", "cast", "scale", "shift", "stem", "last", "last_act", "cam", "bias"}
    assert set(float_nodes(TOY, Int8Recipe(float_stem=False, float_tail_convs=0))) == kept - {"stem", "last"}


def test_float_tail_convs_keeps_everything_from_the_kth_last_convolution_on_float():
    kept = set(float_nodes(TOY, Int8Recipe(float_tail_convs=2)))
    assert kept == {"transpose", "cast", "scale", "shift", "stem"} | {
        "block",
        "residual",
        "last",
        "last_act",
        "cam",
        "bias",
    }
    everything = {node.name for node in TOY.node}
    assert set(float_nodes(TOY, Int8Recipe(float_stem=False, float_tail_convs=9))) == everything


@pytest.mark.parametrize(("stride", "holds"), [(2, True), (1, True), (3, False)])
def test_tf_same_pads_of_one_frame_size_hold_for_another_only_where_the_stride_divides_32(stride, holds):
    """TF-"same" pads depend on the input size modulo the stride: for sides that are multiples of 32 a stride-2
    (or stride-1) layer pads every frame alike, a stride-3 layer does not (96 and 128 leave 0 and 2)."""
    features = torch.nn.Sequential(Conv2dSame(3, 4, 3, stride=stride)).eval()
    examples = [torch.zeros(1, 3, 96, 96), torch.zeros(1, 3, 128, 160)]
    assert same_pads_hold_for(features, examples) is holds
