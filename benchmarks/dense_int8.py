"""The int8 dense graph that ``crackscope export --int8 --dense`` ships: held-out accuracy against dense fp32, and
speed on a 5 MP frame.

For one member of ``benchmarks/int8_suite.py`` (its trained run must exist: run the suite first), this exports the
member's checkpoint with ``--int8 --dense`` and defaults, which writes ``model.int8.dense.onnx`` when the dense
graph in int8 passes its gates (calibrated on mosaics of the checkpoint's training-split tiles, 2 x 4 tiles per
frame, and verified on mosaics of its validation-split tiles; see :mod:`crackscope.deploy.export`). Then it judges
the written graph against dense fp32 on mosaics of the member's held-out tiles, tile by tile as the export's gate
does (:func:`crackscope.deploy.verify.dense_onnx_parity`):

- tile decisions kept (``logit >= 0`` on both sides);
- the mean per-tile heatmap correlation, with its 95% confidence interval.

Then it times dense fp32 and dense int8 on a synthetic 2448 x 2048 frame at 0% overlap in paired rounds (one
session each, ONNX Runtime's default threads) and prints frames/s, the ratio and the load average.

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

from crackscope.deploy.export import balanced, read_tiles
from crackscope.deploy.verify import dense_onnx_parity
from crackscope.inspect.card import read_card
from crackscope.inspect.dense import dense_grid
from crackscope.inspect.model import DenseModel
from crackscope.inspect.tiling import pad_to_grid
from crackscope.training import synthetic

FRAME = (2048, 2448)  # height, width: 5 MP


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
    log = work / "logs" / f"{name}-dense-int8.log"
    code, seconds = int8_suite._run(
        [*int8_suite.CLI, "export", "--checkpoint", str(checkpoint), "--out", str(out), "--int8", "--dense"], log
    )
    dense, int8 = folder / "model.dense.onnx", folder / "model.int8.dense.onnx"
    print(f"{name}: crackscope export --int8 --dense exited {code} after {seconds / 60:.1f} min (log: {log})")
    if not int8.is_file():
        refused = [line for line in log.read_text(encoding="utf-8").splitlines() if line.startswith("REFUSED")]
        print("\n".join(refused) or "model.int8.dense.onnx was not written", file=sys.stderr)
        return 1
    card = read_card(int8).verification
    floats = card.get("float_units") or []
    print(
        f"written: validation decisions {card['decision_agreement']:.2%}, heatmap correlation "
        f"{card['cam_correlation']:.3f}, {len(floats)} float block(s), {card['speedup_vs_dense_fp32']:.2f}x dense "
        f"fp32 at export; agreement with tiled int8 {card['agreement']['decision_agreement']:.2%}"
    )
    size = read_card(dense).input_size
    held = balanced(view.held_out, 2 * int8_suite.HELD_OUT_PER_CLASS, settings.seed)
    tiles = read_tiles(held, size, f"held-out tiles of {name}")
    report = dense_onnx_parity(
        str(dense),
        str(int8),
        tiles.images,
        candidate="onnx-int8-dense",
        min_agreement=int8_suite.MIN_AGREEMENT,
        min_cam_correlation=int8_suite.MIN_CORRELATION,
        labels=tiles.labels,
    )
    low, high = report.cam_correlation_ci
    print(
        f"held out ({report.unit}): decisions kept {report.decision_agreement:.2%} of {report.tiles}, heatmap "
        f"correlation {report.cam_correlation:.3f} (95% CI {low:.3f}-{high:.3f}): "
        f"{'passes' if report.passed else 'FAILS'} the int8 gates"
    )
    load = os.getloadavg()[0]
    fp32_fps, int8_fps, ratio = frame_speed(dense, int8, size, settings.rounds)
    print(
        f"\n{FRAME[1]}x{FRAME[0]} frame, dense, 1 session: fp32 {fp32_fps:.2f} frames/s, int8 {int8_fps:.2f} "
        f"frames/s, int8/fp32 {ratio:.2f}x (median of {settings.rounds} paired rounds; load {load:.2f} -> "
        f"{os.getloadavg()[0]:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
