"""The dense whole-frame graph on a trained model: its export, its parity gate, and what it agrees on with tiles.

Measured on the 96 px line model (tests/conftest.py), and on every crackscope model tried so far: on a frame that is
exactly one tile the dense graph gives the tiled logit to float rounding (same pixels, same zero padding); in larger
frames the logits differ by the tile's context, and as much in tiles far from the frame's edge as in tiles that reach
its reflect padding (line model, 8 synthetic frames: mean |logit diff| 3.09 inside, 3.06 at the edge). A crack
in or next to a tile changes its cells differently when the tile's edge is zero padding or more surface. So tile
decisions agree fully on clean frames and differ only on tiles that hold a crack, frame verdicts agree, and the
measured agreement, not an assumed one, is what the runtime's gate reads.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from crackscope.cli import main
from crackscope.deploy import export as export_module
from crackscope.deploy.export import ExportConfig, ExportError, add_dense, export
from crackscope.inspect.agreement import compare_frame
from crackscope.inspect.card import Calibration, read_card, write_calibration
from crackscope.inspect.dense import dense_grid
from crackscope.inspect.model import DENSE_MIN_AGREEMENT, DenseModel, DenseModeRefused, OnnxModel, open_model
from crackscope.training.synthetic import make_frame

pytestmark = pytest.mark.slow


def test_the_dense_graph_takes_whole_frames_and_carries_the_tile_models_card(line_model):
    graph = onnx.load(str(line_model.dense)).graph
    (image,) = graph.input
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", "height", "width", 3]
    assert [o.name for o in graph.output] == ["cam", "bias"]
    ops = Counter(node.op_type for node in graph.node)
    tile_ops = Counter(node.op_type for node in onnx.load(str(line_model.fp32)).graph.node)
    # The tile size's static pads, folded into the convolutions: no Pad and no shape arithmetic at any frame size.
    assert not {"Pad", "Shape", "Ceil", "ConstantOfShape"} & set(ops), ops
    assert ops["Conv"] == tile_ops["Conv"] and ops["Transpose"] == 1
    card, tile_card = read_card(line_model.dense), read_card(line_model.fp32)
    assert (card.graph, tile_card.graph) == ("dense", "tiles")
    same = ("backbone", "input_size", "feature_size", "calibration", "part_scoring", "precision")
    assert all(getattr(card, name) == getattr(tile_card, name) for name in same)
    verification = card.verification
    assert verification["passed"] and verification["static_padding"] is True
    assert verification["max_abs_cam_diff"] <= 1e-3 and verification["candidate"] == "onnx-fp32-dense"
    assert verification["agreement"] == line_model.dense_agreement
    assert verification["agreement"]["tiles"] >= 100 and "synthetic" in verification["agreement"]["source"]


def test_the_runtime_holds_the_gate_the_export_recorded(line_model):
    recorded = line_model.dense_agreement["decision_agreement"]
    if recorded < DENSE_MIN_AGREEMENT:
        with pytest.raises(DenseModeRefused, match=f"{recorded:.2%}"):
            open_model(line_model.fp32, "dense")
    with open_model(line_model.fp32, "dense", force_dense=True) as model:
        assert model.path == line_model.dense


def test_a_frame_that_is_one_tile_gets_the_tiled_logit_from_the_dense_graph(line_model):
    """Same pixels, same zero padding at the frame's edge, same function: only the float summation order differs
    (measured up to 5e-7 on this model), so 1e-4 is a tolerance that still catches any real difference."""
    rng = np.random.default_rng(11)
    with OnnxModel(line_model.fp32) as tiles, DenseModel(line_model.dense) as dense:
        for cracks in (0, 1, 2):
            frame = make_frame(96, 96, rng, n_cracks=cracks)[0]
            compared = compare_frame(tiles, dense, frame, overlap=0.25)
            assert len(compared.tiled_logits) == 1
            np.testing.assert_allclose(compared.dense_logits, compared.tiled_logits, atol=1e-4)


def _write_frames(folder: Path, count: int) -> list[bool]:
    """Synthetic 288 x 384 frames, every other one cracked; returns which are."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(21)
    cracked = [i % 2 == 1 for i in range(count)]
    for i, crack in enumerate(cracked):
        frame, _ = make_frame(288, 384, rng, n_cracks=2 if crack else 0)
        cv2.imwrite(str(folder / f"frame{i}.png"), frame)
    return cracked


def test_dense_and_tiled_inspection_give_synthetic_frames_the_same_verdicts(line_model, tmp_path, capsys):
    cracked = _write_frames(tmp_path / "frames", 6)
    base = ["inspect", str(tmp_path / "frames"), "--model", str(line_model.fp32), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "tiled")]) == 0
    assert main([*base, "--out", str(tmp_path / "dense"), "--mode", "dense", "--force-dense"]) == 0
    assert "dense mode: one pass of model.dense.onnx" in capsys.readouterr().err
    runs = {
        mode: {Path(r["source"]).name: r for r in map(json.loads, (tmp_path / mode / "results.jsonl").open())}
        for mode in ("tiled", "dense")
    }
    assert sorted(runs["dense"]) == sorted(runs["tiled"]) == [f"frame{i}.png" for i in range(6)]
    for i, crack in enumerate(cracked):
        tiled, dense = runs["tiled"][f"frame{i}.png"], runs["dense"][f"frame{i}.png"]
        assert tiled["verdict"] == dense["verdict"] == ("DEFECT" if crack else "OK")
        assert sorted(dense) == sorted(tiled)
        assert bool(dense["regions"]) == crack


def test_tile_decisions_on_clean_frames_agree_and_differ_only_on_tiles_holding_a_crack(line_model):
    rng = np.random.default_rng(31)
    grid = dense_grid(288, 384, 96, 0.25)
    with OnnxModel(line_model.fp32) as tiles, DenseModel(line_model.dense) as dense:
        for cracks in (0, 0, 0, 2, 2, 2):
            frame, mask = make_frame(288, 384, rng, n_cracks=cracks)
            compared = compare_frame(tiles, dense, frame, 0.25)
            differ = (compared.tiled_logits >= 0) != (compared.dense_logits >= 0)
            if cracks == 0:
                assert (compared.tiled_logits < 0).all() and (compared.dense_logits < 0).all()
                continue
            assert compared.tiled_logits.max() > 0 and compared.dense_logits.max() > 0  # found either way
            holds_crack = np.array([mask[y : y + 96, x : x + 96].any() for x, y, _, _ in grid.boxes])
            assert not (differ & ~holds_crack).any() and differ.mean() <= 0.5


# --- export's gates and files (the tiny 64 px run) -------------------------------------------------------------------


def test_the_parity_gate_refuses_a_broken_dense_graph_and_leaves_no_dense_file(tiny_run, tmp_path, monkeypatch):
    honest = export_module.to_dense_onnx_bytes

    def broken(model, opset=17):
        drifted = copy.deepcopy(model)
        with torch.no_grad():
            drifted.fc.weight *= 1.5
        return honest(drifted, opset)

    monkeypatch.setattr(export_module, "to_dense_onnx_bytes", broken)
    (tmp_path / "model.dense.onnx").write_bytes(b"an earlier export's dense graph")
    config = ExportConfig(
        checkpoint=str(tiny_run.checkpoint), out=str(tmp_path / "model.onnx"), verify_tiles=8, dense=True
    )
    result = export(config)
    (reason,) = result.refused
    assert re.search(
        r"model\.dense\.onnx failed the parity gate \(logit diff at \d+% of tolerance.*\), so it was not", reason
    )
    assert "onnx-fp32-dense vs pytorch on 2 frames (128x96, 128x160)" in reason
    assert "the model.dense.onnx of an earlier export was removed" in reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_dense_graph_keeps_dynamic_padding_where_static_pads_would_not_hold(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "dense_padding_is_static", lambda model: False)
    config = ExportConfig(
        checkpoint=str(tiny_run.checkpoint),
        out=str(tmp_path / "model.onnx"),
        verify_tiles=8,
        dense=True,
        dense_frame_count=2,
    )
    result = export(config)
    assert not result.refused, result.describe()
    dense = tmp_path / "model.dense.onnx"
    ops = Counter(node.op_type for node in onnx.load(str(dense)).graph.node)
    assert ops["Pad"] == 5, ops  # one per TF-"same" stride-2 convolution, sized at run time
    verification = read_card(dense).verification
    assert verification["passed"] and verification["static_padding"] is False


def test_add_dense_keeps_the_existing_model_and_its_calibration(exported, tiny_run, line_model, tmp_path, capsys):
    tiles = tmp_path / "model.onnx"
    shutil.copy(next(m.path for m in exported.models if m.precision == "fp32"), tiles)
    calibration = Calibration(temperature=1.5, ok_below=0.3, defect_at_or_above=0.7, method="test")
    write_calibration(tiles, calibration)
    before = tiles.read_bytes()
    args = ["export", "--checkpoint", str(tiny_run.checkpoint), "--out", str(tiles), "--add-dense"]
    assert main([*args, "--dense-frame-count", "2"]) == 0
    assert "dense  " in capsys.readouterr().out
    assert tiles.read_bytes() == before
    assert read_card(tiles.with_name("model.dense.onnx")).calibration == calibration
    other = tmp_path / "other.onnx"
    shutil.copy(line_model.fp32, other)
    with pytest.raises(ExportError, match=r"other\.onnx was not exported from"):
        add_dense(ExportConfig(checkpoint=str(tiny_run.checkpoint), out=str(other), dense=True))
