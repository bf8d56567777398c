"""Could the dense whole-frame graph run in int8? Accuracy against dense fp32 and speed on a 5 MP frame.

For one member of ``benchmarks/int8_suite.py`` (its trained run must exist: run the suite first), this exports the
dense graph (``crackscope export --dense``), quantises it with the default int8 recipe without and with bias
correction (:mod:`crackscope.deploy.bias`), calibrated on mosaics of the checkpoint's training-split tiles (the
tiles ``export --int8`` calibrates on, laid out 2 x 3 so that the graph sees frame-sized inputs), and judges both
against dense fp32 on mosaics of the member's held-out tiles:

- tile decisions kept: the tile logits of the 0%-overlap grid (each grid box is exactly one held-out tile),
  ``logit >= 0`` on both sides;
- the mean per-frame correlation of the CAM.

Then it times dense fp32 and the bias-corrected dense int8 on a synthetic 2448 x 2048 frame in paired rounds (one
session each, ONNX Runtime's default threads) and prints frames/s, the ratio and the load average. Nothing here
is shipped: ``crackscope export`` writes no dense int8 graph yet; this measures whether it would pass and pay.

Run:
    python benchmarks/dense_int8.py --member magnetic-tile
    python benchmarks/dense_int8.py --member ozgenel-3744 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import int8_suite
import numpy as np
from saved_models import REPO, data_missing

from crackscope.deploy.export import balanced, checkpoint_tiles, read_tiles
from crackscope.deploy.quantize import Int8Recipe, quantize_int8
from crackscope.inspect.agreement import correlation
from crackscope.inspect.dense import dense_grid, tile_logits
from crackscope.inspect.model import DenseModel
from crackscope.inspect.tiling import pad_to_grid
from crackscope.training import synthetic
from crackscope.training.checkpoint import load_checkpoint

ROWS, COLUMNS = 2, 3  # tiles per mosaic
FRAME = (2048, 2448)  # height, width: 5 MP


def mosaics(tiles: np.ndarray, rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    """Whole ``rows x columns`` mosaics of ``tiles`` (N, S, S, 3), row by row; tiles left over are dropped."""
    per = rows * columns
    count = len(tiles) // per
    grid = tiles[: count * per].reshape(count, rows, columns, *tiles.shape[1:])
    return np.ascontiguousarray(grid.transpose(0, 1, 3, 2, 4, 5).reshape(count, rows * tiles.shape[1], -1, 3))


def judge(fp32: Path, int8: Path, frames: np.ndarray, size: int) -> tuple[float, float, int]:
    """Tile decisions kept, mean frame CAM correlation and tiles compared, int8 against fp32."""
    reference, candidate, correlations = [], [], []
    with DenseModel(fp32, providers="cpu") as base, DenseModel(int8, providers="cpu") as quantised:
        for frame in frames:
            grid = dense_grid(frame.shape[0], frame.shape[1], size, 0.0, base.stride)
            a, b = base.predict(frame), quantised.predict(frame)
            reference.append(tile_logits(a.cam, a.bias, grid.boxes, base.cell))
            candidate.append(tile_logits(b.cam, b.bias, grid.boxes, quantised.cell))
            correlations.append(correlation(a.cam, b.cam))
    r, c = np.concatenate(reference), np.concatenate(candidate)
    return float(((r >= 0) == (c >= 0)).mean()), float(np.mean(correlations)), len(r)


def frame_speed(fp32: Path, int8: Path, size: int, rounds: int) -> tuple[float, float, float]:
    """Median frames/s of dense fp32 and int8 on one 5 MP frame, and the median per-round ratio."""
    frame, _mask = synthetic.make_frame(*FRAME, np.random.default_rng(0))
    grid = dense_grid(frame.shape[0], frame.shape[1], size, 0.0, 32)
    padded = np.ascontiguousarray(pad_to_grid(frame, grid))
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    with DenseModel(fp32, providers="cpu") as base, DenseModel(int8, providers="cpu") as quantised:
        models = {"fp32": base, "int8": quantised}
        for model in models.values():
            model.predict(padded)  # warm-up
        for _round in range(rounds):
            for name, model in models.items():
                started = time.perf_counter()
                model.predict(padded)
                times[name].append(time.perf_counter() - started)
    ratio = statistics.median(a / b for a, b in zip(times["fp32"], times["int8"], strict=True))
    return 1 / statistics.median(times["fp32"]), 1 / statistics.median(times["int8"]), ratio


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--member", default="magnetic-tile", choices=list(int8_suite.MEMBERS))
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "int8-suite")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if data_missing():
        return 2
    name, work = settings.member, settings.work
    view = int8_suite.MEMBERS[name](work)
    checkpoint = view.checkpoint or work / "runs" / name / "model.pt"
    if not checkpoint.is_file():
        print(f"{checkpoint} is missing: run benchmarks/int8_suite.py --members {name} first", file=sys.stderr)
        return 2
    folder = work / "dense-int8" / name
    out = folder / "model.onnx"
    code, _ = int8_suite._run(
        [*int8_suite.CLI, "export", "--checkpoint", str(checkpoint), "--out", str(out), "--dense"],
        work / "logs" / f"{name}-dense.log",
    )
    dense = folder / "model.dense.onnx"
    if code not in (0, 1) or not dense.is_file():
        print(f"the dense export failed (exit {code}); see {work / 'logs' / f'{name}-dense.log'}", file=sys.stderr)
        return 2
    model, header = load_checkpoint(checkpoint)
    size = model.spec.input_size
    _verify, calibration = checkpoint_tiles(header, size, 256, 256, settings.seed)
    held = balanced(view.held_out, 2 * int8_suite.HELD_OUT_PER_CLASS, settings.seed)
    tiles = read_tiles(held, size, f"held-out tiles of {name}")
    calibration_frames, test_frames = mosaics(calibration.images), mosaics(tiles.images)
    print(f"{name}: {len(calibration_frames)} calibration, {len(test_frames)} test mosaics of {ROWS}x{COLUMNS} tiles")
    print("| bias correction | tile decisions kept | frame CAM correlation | quantising |")
    print("|---|---|---|---|")
    cache = folder / "ranges.json"
    cache.unlink(missing_ok=True)
    for corrected in (False, True):
        int8 = folder / f"model.dense.int8-{'corrected' if corrected else 'plain'}.onnx"
        started = time.perf_counter()
        quantize_int8(dense, int8, calibration_frames, Int8Recipe(bias_correction=corrected), calibration_cache=cache)
        seconds = time.perf_counter() - started
        kept, correlated, count = judge(dense, int8, test_frames, size)
        print(f"| {'yes' if corrected else 'no'} | {kept:.2%} of {count} | {correlated:.3f} | {seconds:.0f} s |")
    load = os.getloadavg()[0]
    fp32_fps, int8_fps, ratio = frame_speed(dense, folder / "model.dense.int8-corrected.onnx", size, settings.rounds)
    print(
        f"\n{FRAME[1]}x{FRAME[0]} frame, dense, 1 session: fp32 {fp32_fps:.2f} frames/s, int8 {int8_fps:.2f} "
        f"frames/s, int8/fp32 {ratio:.2f}x (median of {settings.rounds} paired rounds; load {load:.2f} -> "
        f"{os.getloadavg()[0]:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
