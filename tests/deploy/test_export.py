"""Export writes one self-describing ONNX file, and only after it matches PyTorch."""

from __future__ import annotations

import copy
import re
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from crackscope.deploy import export as export_module
from crackscope.deploy.export import ExportConfig, export
from crackscope.deploy.verify import ParityError
from crackscope.inspect.card import Calibration, ModelCard, read_card, write_calibration
from crackscope.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def _by_precision(result, precision):
    return next(m for m in result.models if m.precision == precision)


def test_graph_takes_uint8_bgr_tiles_with_dynamic_batch_and_returns_logit_and_cam(exported):
    graph = onnx.load(str(_by_precision(exported, "fp32").path)).graph
    (image,) = graph.input
    assert image.name == "image"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", 64, 64, 3]
    assert [o.name for o in graph.output] == ["logit", "cam"]


def test_preprocessing_is_inside_the_graph(exported):
    ops = {node.op_type for node in onnx.load(str(_by_precision(exported, "fp32").path)).graph.node}
    assert {"Cast", "Mul", "Add", "Transpose"} <= ops


def test_onnx_matches_pytorch_on_batch_sizes_not_used_at_export(exported, tiny_run):
    model, _ = load_checkpoint(tiny_run.checkpoint)
    tiles = np.random.default_rng(5).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(_by_precision(exported, "fp32").path), providers=["CPUExecutionProvider"])
    logits, cams = session.run(None, {"image": tiles})
    with torch.inference_mode():
        torch_logits, torch_cams = model.forward_with_cam(torch.from_numpy(tiles))
    np.testing.assert_allclose(logits, torch_logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(cams, torch_cams.numpy(), atol=1e-4, rtol=1e-4)


def test_metadata_card_carries_everything_the_runtime_needs(exported):
    card = read_card(_by_precision(exported, "fp32").path)
    assert card.backbone == "tf_efficientnet_lite0" and card.input_size == 64 and card.feature_size == 4
    assert card.class_names == ("ok", "crack") and card.channel_order == "BGR"
    assert card.normalisation["mean"] == [0.5, 0.5, 0.5]
    assert card.calibration == Calibration()  # identity until calibrated
    assert card.training["data_fingerprint"] and card.training["validation"]["roc_auc"] is not None
    assert card.verification["passed"] is True and card.verification["batch_sizes"] == [1, 8]
    assert card.verification["max_abs_logit_diff"] <= 1e-3


def test_int8_variant_is_static_qdq_and_reports_agreement_and_accuracy_drop(exported):
    int8 = _by_precision(exported, "int8")
    assert int8.path.name == "model.int8.onnx"
    ops = {node.op_type for node in onnx.load(str(int8.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8.parity.decision_agreement >= 0.8 and int8.parity.min_agreement == 0.8
    assert int8.parity.accuracy_drop is not None
    assert read_card(int8.path).precision == "int8"
    assert int8.size_bytes < _by_precision(exported, "fp32").size_bytes / 2


def test_fp16_variant_passes_its_own_gate(exported):
    fp16 = _by_precision(exported, "fp16")
    assert fp16.parity.passed and read_card(fp16.path).precision == "fp16"
    session = ort.InferenceSession(str(fp16.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert session.get_outputs()[0].type == "tensor(float)"


def test_export_refuses_to_write_a_model_that_differs_from_pytorch(tiny_run, tmp_path, monkeypatch):
    honest = export_module.to_onnx_bytes

    def broken(model, opset=17):
        drifted = copy.deepcopy(model)
        with torch.no_grad():
            drifted.fc.bias += 0.5
        return honest(drifted, opset)

    monkeypatch.setattr(export_module, "to_onnx_bytes", broken)
    out = tmp_path / "model.onnx"
    with pytest.raises(ParityError, match=r"max \|logit diff\| 5\.0+e-01"):
        export(ExportConfig(checkpoint=str(tiny_run.checkpoint), out=str(out), verify_tiles=8))
    assert not out.exists()


def test_int8_that_flips_too_many_decisions_is_not_written(tiny_run, patch_data, tmp_path):
    out = tmp_path / "model.onnx"
    config = ExportConfig(
        checkpoint=str(tiny_run.checkpoint),
        out=str(out),
        int8=True,
        calib_data=str(patch_data),
        calib_tiles=32,
        verify_tiles=8,
        int8_min_agreement=1.01,  # no model can agree on more than 100%
        int8_max_float_units=2,
    )
    result = export(config)
    (reason,) = result.refused
    assert re.search(r"model\.int8\.onnx failed the parity gate with the plain recipe.*2 most sensitive", reason)
    assert "minimum 101%" in reason
    assert [m.precision for m in result.models] == ["fp32"] and out.exists()  # the verified fp32 model is kept
    assert not (tmp_path / "model.int8.onnx").exists()
    assert not list(tmp_path.glob("*.staged"))


def _earlier_export(exported, folder) -> dict[str, bytes]:
    """Copy the session's fp32, int8 and fp16 models into ``folder``, as if an earlier export had written them."""
    for model in exported.models:
        (folder / model.path.name).write_bytes(model.path.read_bytes())
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_new_export_leaves_no_variant_of_an_earlier_export_beside_it(exported, tiny_run, patch_data, tmp_path):
    assert sorted(_earlier_export(exported, tmp_path)) == ["model.fp16.onnx", "model.int8.onnx", "model.onnx"]
    config = ExportConfig(
        checkpoint=str(tiny_run.checkpoint),
        out=str(tmp_path / "model.onnx"),
        int8=True,
        calib_data=str(patch_data),
        calib_tiles=32,
        verify_tiles=8,
        int8_min_agreement=1.01,  # refused
        int8_max_float_units=1,
    )
    result = export(config)
    (reason,) = result.refused
    assert "failed the parity gate" in reason
    assert "the model.int8.onnx of an earlier export was removed: it no longer matches model.onnx" in reason
    assert result.removed == (tmp_path / "model.fp16.onnx",)  # not asked for this time, and stale all the same
    assert f"REMOVED  {tmp_path / 'model.fp16.onnx'}" in result.describe()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_refused_fp32_model_leaves_the_earlier_export_as_it_was(exported, tiny_run, tmp_path, monkeypatch):
    before = _earlier_export(exported, tmp_path)
    honest = export_module.to_onnx_bytes

    def broken(model, opset=17):
        drifted = copy.deepcopy(model)
        with torch.no_grad():
            drifted.fc.bias += 0.5
        return honest(drifted, opset)

    monkeypatch.setattr(export_module, "to_onnx_bytes", broken)
    config = ExportConfig(checkpoint=str(tiny_run.checkpoint), out=str(tmp_path / "model.onnx"), verify_tiles=8)
    with pytest.raises(ParityError, match=r"not written.*model\.onnx already there \(an earlier export\) was left"):
        export(config)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_int8_without_calibration_data_calibrates_on_the_checkpoints_own_splits(tiny_run, tmp_path):
    config = ExportConfig(
        checkpoint=str(tiny_run.checkpoint),
        out=str(tmp_path / "model.onnx"),
        int8=True,
        calib_tiles=32,
        verify_tiles=16,
        int8_min_agreement=0.8,  # the barely trained tiny model (see the ``exported`` fixture)
        int8_min_cam_correlation=0.5,
        int8_max_float_units=1,
    )
    result = export(config)
    assert not result.refused, result.describe()
    verification = read_card(tmp_path / "model.int8.onnx").verification
    assert "of the checkpoint's validation split" in verification["tiles_source"]
    assert "of the checkpoint's training split" in verification["calibration_source"]
    assert verification["verification_tiles"] == 16 and verification["calibration_tiles"] == 32


def test_int8_without_calibration_data_names_the_training_data_when_it_is_gone(tiny_run, tmp_path):
    from crackscope.deploy.export import ExportError
    from crackscope.training.checkpoint import save_checkpoint

    model, header = load_checkpoint(tiny_run.checkpoint)
    moved = replace(header, config={**header.config, "data": str(tmp_path / "moved-away")})
    checkpoint = save_checkpoint(model, moved, tmp_path / "model.pt")
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"moved-away is gone; pass --calib-data DIR"):
        export(ExportConfig(checkpoint=str(checkpoint), out=str(out), int8=True))
    assert not out.exists()


def test_calibration_is_rewritten_without_touching_the_weights(exported, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(_by_precision(exported, "fp32").path.read_bytes())
    before = onnx.load(str(path)).graph
    calibration = Calibration(temperature=1.7, ok_below=0.2, defect_at_or_above=0.8, method="test")
    write_calibration(path, calibration)
    after = onnx.load(str(path)).graph
    assert read_card(path).calibration == calibration
    assert after.SerializeToString() == before.SerializeToString()


def test_card_round_trips_and_rejects_foreign_or_future_metadata():
    card = ModelCard(backbone="resnet18", input_size=224, feature_size=7)
    assert ModelCard.from_metadata(card.to_metadata()) == card
    with pytest.raises(ValueError, match="not a crackscope model"):
        ModelCard.from_metadata({"author": "someone"}, "foreign.onnx")
    future = {**card.to_metadata(), "crackscope.format_version": "99"}
    with pytest.raises(ValueError, match="version 99"):
        ModelCard.from_metadata(future, "future.onnx")


def test_calibration_rejects_thresholds_out_of_order():
    with pytest.raises(ValueError, match="ok_below <= defect_at_or_above"):
        Calibration(ok_below=0.8, defect_at_or_above=0.2)


def test_a_small_split_is_topped_up_with_views_that_count_as_their_item(patch_data):
    from crackscope.deploy.export import read_tiles, read_tiles_with_views, tile_groups
    from crackscope.labelled import Clarity, load_samples

    clear = [s for s in load_samples(patch_data).samples if s.clarity is Clarity.CLEAR]
    samples = [*[s for s in clear if s.label == 0][:2], *[s for s in clear if s.label == 1][:2]]
    plain = read_tiles(samples, 64, "four")
    tiles = read_tiles_with_views(samples, 64, 30, seed=0, source="four")
    assert len(tiles) == 30 and "topped up to 30" in tiles.source
    np.testing.assert_array_equal(tiles.images[:4], plain.images)  # the items themselves come first
    np.testing.assert_array_equal(tiles.labels, np.resize(plain.labels, 30))
    # views 1-7 are the other flips and turns: view 1 of each item is its quarter turn
    np.testing.assert_array_equal(tiles.images[4:8], np.rot90(plain.images, 1, axes=(1, 2)))
    assert len({image.tobytes() for image in tiles.images}) == 30  # no view repeats another
    assert sorted(set(tile_groups(tiles))) == sorted(s.key for s in samples)
    assert read_tiles_with_views(samples, 64, 3, seed=0, source="four").images.shape[0] == 4  # enough: as they are
