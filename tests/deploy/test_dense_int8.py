"""The dense whole-frame graph in int8 (``model.int8.dense.onnx``): quantised on mosaics of tiles, gated tile by tile
against the dense fp32 graph, and what ``inspect --model model.int8.onnx --mode dense`` runs."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from crackscope.deploy import export as export_module
from crackscope.deploy.export import ExportConfig, add_dense, export
from crackscope.deploy.verify import dense_tile_outputs, mosaic_outputs
from crackscope.inspect.card import read_card
from crackscope.inspect.dense import dense_grid, mosaic_boxes, mosaics, tile_logits
from crackscope.inspect.model import DenseModel, ModelLoadError, OnnxModel, make_session, open_model
from crackscope.training.synthetic import make_frame


def test_a_mosaic_holds_every_tile_at_its_box_and_fills_its_last_frame_with_the_first_tiles():
    tiles = np.random.default_rng(0).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    frames = mosaics(tiles, rows=2, columns=3)
    assert frames.shape == (2, 64, 96, 3)
    boxes = mosaic_boxes(32, rows=2, columns=3)
    cut = [frames[i // 6][y : y + h, x : x + w] for i, (x, y, w, h) in enumerate(np.tile(boxes, (2, 1)))]
    assert all(np.array_equal(cut[i], tiles[i]) for i in range(11))
    assert np.array_equal(cut[11], tiles[0])  # the 12th place repeats the first tile


@pytest.fixture(scope="module")
def dense_int8(line_model, tmp_path_factory) -> Path:
    """The line model's exports copied, and the int8 dense graph added beside them (``export --add-dense --int8``)."""
    folder = tmp_path_factory.mktemp("dense-int8")
    for path in (line_model.fp32, line_model.int8, line_model.dense):
        shutil.copy(path, folder / path.name)
    result = add_dense(
        ExportConfig(
            checkpoint=str(line_model.checkpoint),
            out=str(folder / "model.onnx"),
            int8=True,
            dense=True,
            calib_data=str(line_model.data),
            calib_tiles=128,
            verify_tiles=32,
            int8_min_agreement=0.95,  # a 5-epoch model: allow one flip in 32 tiles (the line model's own int8 gate)
            dense_frame_count=4,
        )
    )
    assert not result.refused, result.describe()
    assert [m.label for m in result.models] == ["dense", "int8 dense"]
    return folder


@pytest.mark.slow
def test_the_int8_dense_graph_is_quantised_and_carries_the_int8_models_card(dense_int8):
    path = dense_int8 / "model.int8.dense.onnx"
    graph = onnx.load(str(path)).graph
    (image,) = graph.input
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", "height", "width", 3]
    ops = Counter(node.op_type for node in graph.node)
    assert ops["QuantizeLinear"] > 10 and ops["DequantizeLinear"] > 10
    card, tile_card = read_card(path), read_card(dense_int8 / "model.int8.onnx")
    assert (card.graph, card.precision, tile_card.graph) == ("dense", "int8", "tiles")
    assert (card.calibration, card.part_scoring) == (tile_card.calibration, tile_card.part_scoring)
    verification = card.verification
    assert verification["passed"] and verification["candidate"] == "onnx-int8-dense"
    assert verification["reference"] == "onnx-fp32-dense" and verification["tiles"] == 32
    assert "mosaics of 2 x 4" in verification["unit"] and verification["calibration_tiles"] == 128
    assert verification["speedup_vs_dense_fp32"] > 0 and verification["agreement"]["tiles"] > 0


@pytest.mark.slow
def test_its_tile_logits_follow_the_dense_fp32_graph_on_frames_it_was_not_gated_on(dense_int8, line_model):
    with (
        DenseModel(dense_int8 / "model.dense.onnx", providers="cpu") as base,
        DenseModel(dense_int8 / "model.int8.dense.onnx", providers="cpu") as quantised,
    ):
        rng = np.random.default_rng(7)
        reference, candidate = [], []
        for index in range(4):
            frame, _mask = make_frame(4 * 96, 5 * 96, rng, n_cracks=2 if index % 2 else 0)
            grid = dense_grid(*frame.shape[:2], 96, 0.25, base.stride)
            a, b = base.predict(frame), quantised.predict(frame)
            reference.append(tile_logits(a.cam, a.bias, grid.boxes, base.cell))
            candidate.append(tile_logits(b.cam, b.bias, grid.boxes, quantised.cell))
    reference, candidate = np.concatenate(reference), np.concatenate(candidate)
    assert ((reference >= 0) == (candidate >= 0)).mean() >= 0.95
    assert np.corrcoef(reference, candidate)[0, 1] > 0.95


@pytest.mark.slow
def test_dense_mode_on_the_int8_model_opens_the_int8_dense_graph(dense_int8, tmp_path):
    with open_model(dense_int8 / "model.int8.onnx", "dense", force_dense=True, providers="cpu") as model:
        assert model.path.name == "model.int8.dense.onnx"
    shutil.copy(dense_int8 / "model.int8.onnx", tmp_path / "model.int8.onnx")
    with pytest.raises(ModelLoadError, match=r"model\.int8\.dense\.onnx: no dense graph .*--dense --int8"):
        open_model(tmp_path / "model.int8.onnx", "dense", providers="cpu")


@pytest.mark.slow
def test_a_tile_cut_from_a_mosaic_has_the_logit_the_frames_box_sum_gives_it(line_model):
    tiles = mosaics(np.stack([make_frame(96, 96, np.random.default_rng(i), n_cracks=i % 2)[0] for i in range(8)]))
    session = make_session(str(line_model.dense), providers="cpu")
    logits, cams = mosaic_outputs(session, tiles)
    with DenseModel(line_model.dense, providers="cpu") as dense:
        output = dense.predict(tiles[0])
        summed = tile_logits(output.cam, output.bias, mosaic_boxes(96), dense.cell)
    np.testing.assert_allclose(logits, summed, rtol=1e-5, atol=1e-4)
    assert cams.shape == (8, 96 // dense.cell, 96 // dense.cell)
    # Alone in a one-tile mosaic, a tile is the tile model's input: the same logit to float rounding.
    single = np.stack([make_frame(96, 96, np.random.default_rng(i), n_cracks=1)[0] for i in range(3)])
    alone, _ = dense_tile_outputs(session, single, rows=1, columns=1)
    with OnnxModel(line_model.fp32, providers="cpu") as tile_model:
        tiled = tile_model.predict(single).logits
    np.testing.assert_allclose(alone, tiled, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_a_dense_int8_graph_that_fails_its_gate_is_not_written_and_an_earlier_one_is_removed(
    tiny_run, patch_data, tmp_path, monkeypatch, capsys
):
    honest = export_module.dense_onnx_parity

    def strict(*args, **kwargs):  # a heatmap gate no int8 graph reaches
        return honest(*args, **{**kwargs, "min_cam_correlation": 0.99999})

    monkeypatch.setattr(export_module, "dense_onnx_parity", strict)
    (tmp_path / "model.int8.dense.onnx").write_bytes(b"an earlier export's int8 dense graph")
    config = ExportConfig(
        checkpoint=str(tiny_run.checkpoint),
        out=str(tmp_path / "model.onnx"),
        int8=True,
        dense=True,
        calib_data=str(patch_data),
        calib_tiles=64,
        verify_tiles=16,
        int8_min_agreement=0.8,
        int8_min_cam_correlation=0.5,
        int8_max_float_units=0,  # no search: the plain recipe's refusal is what is tested
        int8_min_speedup=0.0,
        dense_frame_count=2,
    )
    result = export(config)
    assert "Collecting tensor data" not in capsys.readouterr().out  # ONNX Runtime's calibration chatter is kept off
    (reason,) = result.refused
    assert re.search(r"model\.int8\.dense\.onnx failed the parity gate \(heatmap correlation .* not certainly", reason)
    assert "onnx-int8-dense vs onnx-fp32-dense on 16 tiles (in 2 mosaics of 2 x 4)" in reason
    assert "the model.int8.dense.onnx of an earlier export was removed" in reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dense.onnx", "model.int8.onnx", "model.onnx"]
    # Without model.int8.onnx (its own gate refused it) there is nothing to make the int8 dense graph from.
    monkeypatch.setattr(export_module, "dense_onnx_parity", honest)
    result = export(replace(config, out=str(tmp_path / "strict" / "model.onnx"), int8_min_cam_correlation=0.99999))
    assert any(re.search(r"model\.int8\.onnx failed the parity gate", r) for r in result.refused)
    assert any(
        "model.int8.dense.onnx is made from model.int8.onnx and model.dense.onnx, and model.int8.onnx was "
        "not written" in r
        for r in result.refused
    )
    assert not (tmp_path / "strict" / "model.int8.dense.onnx").exists()
