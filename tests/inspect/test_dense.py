"""Dense whole-frame mode: the 32 px tile grid, tile logits as box sums of the CAM, the heatmap, the gate, the CLI.

The runtime tests use the brightness model and its dense twin (tests/conftest.py): on the 32 px grid the twin scores
every tile exactly as the tile model does, so what is tested here is the dense path itself, not the network's
context (tests/deploy/test_dense_export.py measures that on a trained model).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackscope.cli import main
from crackscope.config import ConfigError, from_dict
from crackscope.inspect.agreement import measure_agreement
from crackscope.inspect.batch import BatchConfig
from crackscope.inspect.bench import BenchConfig, bench_path, run_bench
from crackscope.inspect.card import Calibration, ModelCardError, read_card, write_calibration
from crackscope.inspect.daemon import daemon_config
from crackscope.inspect.dense import dense_grid, dense_heat, tile_logits
from crackscope.inspect.model import DenseModel, DenseModeRefused, ModelLoadError, OnnxModel, open_model
from crackscope.inspect.pipeline import InspectConfig, inspect_frames
from crackscope.inspect.tiling import scaled_grid, stitch, upsample_cams
from crackscope.training.synthetic import write_video

# --- geometry -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "size", "overlap", "padded", "stride", "rows", "columns"),
    [
        # 25% of 224 asks for a 168 px stride: rounded down to whole cells, 160
        (480, 640, 224, 0.25, (480, 640), 160, [0, 160, 256], [0, 160, 320, 416]),
        # 5 MP: 2448 is not a multiple of 32, so the width is padded to 2464; the last column is flush with it
        (2048, 2448, 224, 0.25, (2048, 2464), 160, [*range(0, 1761, 160), 1824], list(range(0, 2241, 160))),
        (2048, 2448, 224, 0.0, (2048, 2464), 224, [*range(0, 1793, 224), 1824], [*range(0, 2017, 224), 2240]),
        # smaller than a tile along one side: padded up to one tile
        (100, 50, 64, 0.0, (128, 64), 64, [0, 64], [0]),
        (96, 96, 96, 0.5, (96, 96), 32, [0], [0]),
        (200, 300, 96, 0.5, (224, 320), 32, [0, 32, 64, 96, 128], [0, 32, 64, 96, 128, 160, 192, 224]),
    ],
)
def test_dense_tile_origins_sit_on_the_32_px_grid_with_at_least_the_asked_overlap(
    height, width, size, overlap, padded, stride, rows, columns
):
    grid = dense_grid(height, width, size, overlap)
    assert (grid.height, grid.width) == padded and grid.frame_shape == (height, width) and grid.stride == stride
    assert sorted({int(y) for y in grid.boxes[:, 1]}) == rows
    assert sorted({int(x) for x in grid.boxes[:, 0]}) == columns
    assert len(grid) == len(rows) * len(columns) and not (grid.boxes[:, :2] % 32).any()
    assert 1 - stride / size >= overlap


def test_a_tile_side_off_the_cell_grid_is_refused():
    with pytest.raises(ValueError, match="not a multiple of the backbone's 32 px stride"):
        dense_grid(480, 640, 100)


def test_a_tile_logit_is_the_bias_plus_the_cam_cells_under_it():
    cam = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    boxes = np.array([[0, 0, 64, 64], [32, 0, 64, 64], [64, 32, 32, 32], [0, 0, 96, 64]])
    # 1+2+4+5, 2+3+5+6, 6 alone, all six
    np.testing.assert_allclose(tile_logits(cam, 0.5, boxes, 32), [12.5, 16.5, 6.5, 21.5])
    # The same CAM on 16 px cells: the same boxes, in pixels, cover a quarter of the area
    np.testing.assert_allclose(tile_logits(cam, 0.5, boxes // 2, 16), [12.5, 16.5, 6.5, 21.5])


@pytest.mark.parametrize(
    ("box", "message"), [((16, 0, 64, 64), "on the 32 px cell grid"), ((64, 0, 64, 64), "beyond the CAM")]
)
def test_a_tile_off_the_grid_or_beyond_the_cam_is_refused(box, message):
    with pytest.raises(ValueError, match=message):
        tile_logits(np.zeros((2, 3), np.float32), 0.0, np.array([box]), 32)


@pytest.mark.parametrize("factor", [1, 4])
def test_the_dense_heatmap_equals_the_stitched_tile_heatmap_where_no_tile_edge_is_near(factor):
    """Cut the frame's CAM into the tiles' CAMs and stitch them as the tiled path does: inside each tile (more than
    half a cell from its edge) both heatmaps interpolate between the same cells, so they must be equal there."""
    cam = np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32)
    grid = dense_grid(256, 320, 64, overlap=0.0)  # 4 x 5 tiles of 2 x 2 cells, no overlap
    blocks = np.stack([cam[y // 32 : y // 32 + 2, x // 32 : x // 32 + 2] for x, y, _, _ in grid.boxes])
    small = scaled_grid(grid, factor)
    tiled = stitch(upsample_cams(blocks, small.size), small)
    dense = dense_heat(cam, small)
    assert dense.shape == tiled.shape == (256 // factor, 320 // factor)
    half_cell, side = 16 // factor, 64 // factor
    inside = np.zeros(side, bool)
    inside[half_cell : side - half_cell] = True
    interior = np.outer(np.tile(inside, 4), np.tile(inside, 5))
    np.testing.assert_allclose(dense[interior], tiled[interior], atol=1e-5)
    assert not np.allclose(dense[~interior], tiled[~interior], atol=1e-3)  # near tile edges the tiles clamp


# --- the brightness pair: dense and tiled score the same tiles alike ------------------------------------------------


def _grey_blocks(height: int, width: int, seed: int, levels: tuple[int, int] = (60, 200)) -> np.ndarray:
    """A frame of random grey 32 px blocks (grey levels in ``levels``) with noise; by default bright and dark enough
    to give tiles of both verdicts (a tile's logit is its mean grey level minus 128, over 8)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(*levels, (-(-height // 32), -(-width // 32))).astype(np.float32)
    grey = np.kron(blocks, np.ones((32, 32), np.float32))[:height, :width] + rng.normal(0, 6, (height, width))
    return cv2.cvtColor(np.clip(grey, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def test_dense_and_tiled_agree_exactly_when_the_dense_cam_is_the_tiles_own(brightness_pair):
    frames = [_grey_blocks(200, 300, seed) for seed in range(3)]  # 200 x 300: reflect-padded to 224 x 320
    with OnnxModel(brightness_pair) as tiles, DenseModel(brightness_pair.with_suffix(".dense.onnx")) as dense:
        agreement = measure_agreement(tiles, dense, frames, overlap=0.5, source="grey blocks")
    assert agreement.decision_agreement == 1.0 and agreement.passed
    assert agreement.max_abs_logit_diff < 1e-4
    # 64 px tiles at a 32 px stride over 224 x 320: 6 x 9 per frame; those below y 136 and left of x 236 are interior
    assert agreement.tiles == 3 * 6 * 9 and agreement.interior_tiles == 3 * 5 * 8
    assert 0.0 < agreement.tiled_positive < 1.0


def test_inspect_frames_in_dense_mode_gives_the_tiled_results_where_the_grids_coincide(brightness_pair):
    frame = _grey_blocks(256, 320, 7)  # whole tiles at 0% overlap: the tiled and the dense grid are the same
    with OnnxModel(brightness_pair) as model:
        [tiled] = inspect_frames(model, [frame], InspectConfig(overlap=0.0))
    with open_model(brightness_pair, "dense") as model:
        [dense] = inspect_frames(model, [frame], InspectConfig(overlap=0.0, mode="dense"))
    assert [t.box for t in dense.tiles] == [t.box for t in tiled.tiles] and len(dense.tiles) == 20
    np.testing.assert_allclose([t.logit for t in dense.tiles], [t.logit for t in tiled.tiles], atol=1e-4)
    assert [t.verdict for t in dense.tiles] == [t.verdict for t in tiled.tiles]
    assert (dense.verdict, dense.tiles_total) == (tiled.verdict, tiled.tiles_total)
    assert dense.score == pytest.approx(tiled.score, abs=1e-6)
    assert dense.heatmap.shape == tiled.heatmap.shape == (256, 320)
    assert set(dense.timings) == {"prepare", "model", "decide"}


def test_a_dense_frame_keeps_only_the_tiles_inside_the_roi_and_its_heat_inside_them(brightness_pair):
    frame = _grey_blocks(256, 320, 3)
    config = InspectConfig(overlap=0.0, mode="dense", roi=((0, 0), (100, 0), (100, 100), (0, 100)))
    with open_model(brightness_pair, "dense") as model:
        [result] = inspect_frames(model, [frame], config)
    assert [t.box[:2] for t in result.tiles] == [(0, 0), (64, 0), (0, 64), (64, 64)]
    assert result.tiles_skipped == 16 and not result.heatmap[:, 140:].any() and not result.heatmap[140:].any()


def test_a_model_of_the_other_mode_is_refused_by_name(brightness_pair):
    dense = brightness_pair.with_suffix(".dense.onnx")
    with pytest.raises(ModelCardError, match=r"model\.dense\.onnx: expected a tiles graph.*runs with --mode dense"):
        OnnxModel(dense)
    with pytest.raises(ModelCardError, match=r"model\.onnx: expected a dense graph.*runs with --mode tiled"):
        DenseModel(brightness_pair)
    with OnnxModel(brightness_pair) as model, pytest.raises(TypeError, match="dense mode needs the dense graph"):
        inspect_frames(model, [np.zeros((64, 64, 3), np.uint8)], InspectConfig(mode="dense"))


# --- the gate -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agreement", "message"),
    [
        (0.95, r"agreed with tiled inference on 95\.00% of 200 tiles at export, below the 99% gate"),
        (None, "its card records no agreement with tiled inference"),
    ],
)
def test_dense_mode_is_refused_below_the_agreement_gate_unless_forced(
    tmp_path, dense_brightness_model, agreement, message
):
    tiles = tmp_path / "model.onnx"  # absent: dense mode opens the dense graph beside it
    dense = dense_brightness_model(tmp_path / "model.dense.onnx", agreement=agreement)
    with pytest.raises(DenseModeRefused, match=message) as refused:
        open_model(tiles, "dense")
    assert "--force-dense" in str(refused.value) and str(dense) in str(refused.value)
    with open_model(dense, "dense", force_dense=True) as model:
        assert isinstance(model, DenseModel)


def test_dense_mode_at_the_gate_opens(tmp_path, dense_brightness_model):
    dense_brightness_model(tmp_path / "model.dense.onnx", agreement=0.99)
    with open_model(tmp_path / "model.onnx", "dense") as model:
        assert model.path.name == "model.dense.onnx" and model.cell == 32


def test_a_dense_graph_whose_calibration_differs_from_its_tile_models_is_refused(brightness_pair):
    write_calibration(brightness_pair, Calibration(temperature=2.0, ok_below=0.3, defect_at_or_above=0.7, method="t"))
    with pytest.raises(ModelLoadError, match=r"calibration or part scoring differs from model\.onnx's.*calibrate"):
        open_model(brightness_pair, "dense")


# --- configuration and command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "sparse"}, "config.inspect.mode: expected 'tiled' or 'dense', got str 'sparse'"),
        ({"force_dense": "yes"}, "config.inspect.force_dense: expected bool, got str 'yes'"),
        ({"force_dense": True}, "force_dense applies only to mode dense"),
    ],
)
def test_the_mode_is_type_checked_when_read(values, message):
    with pytest.raises((ConfigError, ValueError)) as error:
        from_dict(BatchConfig, {"inputs": ["x"], "model": "m.onnx", "inspect": values})
    assert message in str(error.value)
    with pytest.raises((ConfigError, ValueError)) as error:
        daemon_config({"source": "line.avi", "model": "m.onnx", "out": "o", "inspect": values}, {})
    assert message.split(": ", 1)[-1] in str(error.value)


def _write_inputs(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        frame = _grey_blocks(200, 260, i, levels=(40, 110))  # dark: every tile OK
        if i % 2:
            frame[:, :64] = 230  # a bright band on the left edge: DEFECT
        cv2.imwrite(str(folder / f"part{i}.png"), frame)
    return folder


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_crackscope_inspect_mode_dense_writes_the_records_a_tiled_run_writes(brightness_pair, tmp_path, capsys):
    inputs = _write_inputs(tmp_path / "in")
    base = ["inspect", str(inputs), "--model", str(brightness_pair), "--no-progress", "--overlap", "0"]
    assert main([*base, "--out", str(tmp_path / "tiled")]) == 0
    tiled_err = capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "dense"), "--mode", "dense"]) == 0
    dense_err = capsys.readouterr().err
    assert "tiled mode: 64 px tiles at 0% overlap" in tiled_err
    assert "with model.dense.onnx" in dense_err and "dense mode: one pass of model.dense.onnx per frame" in dense_err
    assert "agreed with tiled inference on 100.00% of 200 tiles at export (gate 99%)" in dense_err
    tiled, dense = _records(tmp_path / "tiled"), _records(tmp_path / "dense")
    assert [sorted(r) for r in dense] == [sorted(r) for r in tiled]
    assert [(r["source"], r["verdict"]) for r in dense] == [(r["source"], r["verdict"]) for r in tiled]
    assert {r["verdict"] for r in dense} == {"OK", "DEFECT"}
    flagged = [r for r in dense if r["verdict"] == "DEFECT"]
    assert all((tmp_path / "dense" / r["overlay_path"]).is_file() for r in flagged)
    assert dense[0]["model_id"] != tiled[0]["model_id"]  # the dense graph decided, and the record says so
    assert "mode: dense" in (tmp_path / "dense" / "inspect-config.yaml").read_text()


def test_dense_mode_runs_one_session_whatever_bench_saved_for_the_tile_model(brightness_pair, tmp_path, capsys):
    # bench measures tile models only: its layout is of the tile model's sessions, not of the dense graph's one
    run_bench(BenchConfig(str(brightness_pair), frame=(64, 64), seconds=0.0, cores=2, providers="cpu"))
    assert bench_path(brightness_pair).is_file()
    inputs = _write_inputs(tmp_path / "in", 1)
    args = ["inspect", str(inputs), "--model", str(brightness_pair), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*args, "--mode", "dense", "--providers", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "crackscope bench" not in err
    assert "with model.dense.onnx (fp32, CPUExecutionProvider, 1 session x ONNX Runtime's default threads)" in err


def test_dense_mode_on_a_model_without_a_dense_graph_is_one_line_naming_the_file(brightness_model, tmp_path, capsys):
    inputs = _write_inputs(tmp_path / "in", 1)
    out = tmp_path / "out"
    args = ["inspect", str(inputs), "--model", str(brightness_model), "--out", str(out), "--mode", "dense"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{brightness_model.with_name('brightness.dense.onnx')}: no dense graph beside brightness.onnx" in err
    assert not out.exists()


def test_the_daemon_runs_dense_mode_and_names_it_at_start(brightness_pair, tmp_path, capsys, caplog):
    video = write_video(tmp_path / "line.avi", [_grey_blocks(128, 192, i) for i in range(5)])
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="crackscope"):
        code = main(
            ["daemon", "--source", str(video), "--model", str(brightness_pair), "--out", str(out), "--mode", "dense"]
        )
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["inspected"] == 5
    assert any("dense mode: one pass of model.dense.onnx" in r.getMessage() for r in caplog.records)
    assert len(_records(out)) == 5 and all(r["error"] is None for r in _records(out))


def test_calibrate_gives_the_dense_graph_beside_the_model_the_same_calibration(brightness_pair, grey_dataset, tmp_path):
    data = grey_dataset(tmp_path / "calib", {"crack": 120, "ok": 120}, seed=1)
    targets = ["--escape-rate", "0.05", "--false-reject-rate", "0.05", "--confidence", "0.9", "--no-progress"]
    targets += ["--ambiguous-review", "0"]  # no ambiguous items in this grey set
    code = main(
        ["calibrate", "--model", str(brightness_pair), "--data", str(data), "--out", str(tmp_path / "r"), *targets]
    )
    assert code == 0
    calibration = read_card(brightness_pair).calibration
    assert calibration.method != "identity"
    assert read_card(brightness_pair.with_suffix(".dense.onnx")).calibration == calibration
    report = json.loads((tmp_path / "r" / "calibration.json").read_text())
    assert report["model"]["also_written"] == [str(brightness_pair.with_suffix(".dense.onnx"))]
    with open_model(brightness_pair, "dense") as model:  # and the runtime takes it
        assert model.card.calibration == calibration
