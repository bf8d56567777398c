"""Experiment: can label-free fine-tuning make a model's dense tile logits agree with its tiled ones?

Dense whole-frame mode (``crackscope inspect --mode dense``) scores a tile as the bias plus the CAM cells under it,
computed in one pass over the frame; tiled inference scores the tile alone. The two differ by the context a tile
sees (the surface around it vs the network's zero padding), and on the accuracy benchmark's models they agree on
only 87-90% of tile decisions (README, "Frame throughput"), below the 99% gate of dense mode. This script tries the
obvious fix and measures it, without shipping anything:

- **frames**: whole images of the same folders ``benchmarks/frames.py`` measures agreement on (DeepCrack photos and
  magnetic-tile images), minus the very frames it measures on; no labels are used;
- **loss**, per step on one random frame, padded and tiled exactly as the runtime does (``dense_grid`` at 25%
  overlap, ``pad_to_grid``, ``cut_tiles``): ``mean (dense - original tiled)^2 + anchor * mean (tiled - original
  tiled)^2`` over up to 6 of its tiles, where "original" is the frozen starting model. The first term pulls the
  box sums of the CAM onto the original tile logits, the second keeps the tile model's own answers where they
  were (a tile model that drifts changes every decision the accuracy benchmark measured);
- **measured** before and after, in PyTorch, on the frames ``benchmarks/frames.py --dense-only`` uses (24 of each
  folder): dense vs tiled decision agreement and mean |logit difference|, and how many tiled decisions still agree
  with the original model's (the price). PyTorch gives the ONNX graphs' numbers to within the parity gate's 1e-3,
  so "before" reproduces the agreement table of ``benchmarks/frames.py``.

Nothing is written unless ``--save`` is given (then the fine-tuned state dict).

Run:
    python benchmarks/dense_consistency.py                                  # magnetic-tile, 300 steps, lr 3e-5
    python benchmarks/dense_consistency.py --steps 150 --lr 1e-4 --anchor 1 --json dense-consistency.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from frames import REAL_FRAMES, real_frames
from saved_models import checkpoint_path

from crackscope.inspect.dense import dense_grid
from crackscope.inspect.tiling import TileGrid, cut_tiles, pad_to_grid
from crackscope.training.backbones import CrackNet
from crackscope.training.checkpoint import load_checkpoint

OVERLAP = 0.25  # benchmarks/frames.py measures dense agreement at this overlap
TILES_PER_STEP = 6


@dataclass(frozen=True)
class Agreement:
    frames: str
    tiles: int
    dense_vs_tiled: float  # share of tiles with the same decision (logit >= 0)
    mean_abs_diff: float
    tiled_vs_original: float  # share of tiled decisions unchanged from the starting model
    tiled_mean_abs_drift: float


@dataclass(frozen=True)
class Prepared:
    padded: np.ndarray
    grid: TileGrid
    tiles: np.ndarray


def prepare(path: Path, size: int) -> Prepared:
    """The frame padded and tiled as the runtime's dense path and the agreement measurement do."""
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        raise ValueError(f"{path}: not a decodable image")
    grid = dense_grid(*frame.shape[:2], size, OVERLAP)
    padded = np.ascontiguousarray(pad_to_grid(frame, grid))
    return Prepared(padded, grid, np.ascontiguousarray(cut_tiles(padded, grid)))


def dense_logits(model: CrackNet, prepared: Prepared) -> torch.Tensor:
    """Bias + the CAM cells under each tile, from one pass over the padded frame (differentiable)."""
    cell = model.heatmap_stride
    side = model.spec.input_size // cell
    cam = model.cam_of(model.feature_maps(torch.from_numpy(prepared.padded)[None]), side * side)[0]
    integral = torch.nn.functional.pad(cam.cumsum(0).cumsum(1), (1, 0, 1, 0))
    cells = torch.from_numpy(prepared.grid.boxes // cell)
    x0, y0 = cells[:, 0], cells[:, 1]
    x1, y1 = x0 + cells[:, 2], y0 + cells[:, 3]
    return model.fc.bias[0] + integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]


def tile_logits(model: CrackNet, tiles: np.ndarray) -> torch.Tensor:
    return model(torch.from_numpy(tiles)).reshape(-1)


@torch.no_grad()
def measure(model: CrackNet, original: CrackNet, frames: dict[str, list[Path]]) -> list[Agreement]:
    results = []
    for name, files in frames.items():
        tiled, dense, before = [], [], []
        for path in files:
            prepared = prepare(path, model.spec.input_size)
            tiled.append(tile_logits(model, prepared.tiles))
            dense.append(dense_logits(model, prepared))
            before.append(tile_logits(original, prepared.tiles))
        t, d, o = torch.cat(tiled), torch.cat(dense), torch.cat(before)
        results.append(
            Agreement(
                frames=f"{len(files)} {name}",
                tiles=len(t),
                dense_vs_tiled=float(((t >= 0) == (d >= 0)).float().mean()),
                mean_abs_diff=float((t - d).abs().mean()),
                tiled_vs_original=float(((t >= 0) == (o >= 0)).float().mean()),
                tiled_mean_abs_drift=float((t - o).abs().mean()),
            )
        )
    return results


def fine_tune(
    model: CrackNet, original: CrackNet, pool: Sequence[Path], steps: int, lr: float, anchor: float, seed: int
) -> None:
    """Consistency fine-tuning in eval mode (BatchNorm statistics and dropout fixed), AdamW on every weight."""
    rng = random.Random(seed)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(steps):
        prepared = prepare(rng.choice(pool), model.spec.input_size)
        keep = np.arange(len(prepared.tiles))
        if len(keep) > TILES_PER_STEP:
            keep = np.sort(np.random.default_rng(seed + step).choice(len(keep), TILES_PER_STEP, replace=False))
        tiled = tile_logits(model, prepared.tiles[keep])
        with torch.no_grad():
            target = tile_logits(original, prepared.tiles[keep])
        dense = dense_logits(model, prepared)[torch.from_numpy(keep)]
        loss = ((dense - target) ** 2).mean() + anchor * ((tiled - target) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            print(
                f"  step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True
            )


def table(before: Sequence[Agreement], after: Sequence[Agreement]) -> str:
    lines = [
        "| frames | tiles | dense vs tiled before | after | mean abs diff before -> after "
        "| tiled decisions unchanged | tiled mean abs drift |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for b, a in zip(before, after, strict=True):
        lines.append(
            f"| {b.frames} | {b.tiles} | {b.dense_vs_tiled:.2%} | {a.dense_vs_tiled:.2%} "
            f"| {b.mean_abs_diff:.2f} -> {a.mean_abs_diff:.2f} | {a.tiled_vs_original:.2%} "
            f"| {a.tiled_mean_abs_drift:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", default="magnetic-tile", help="accuracy-benchmark job whose checkpoint to start from")
    parser.add_argument("--checkpoint", type=Path, help="any training checkpoint instead (default: the job's model.pt)")
    parser.add_argument(
        "--frames", type=Path, action="append", help="folders of whole frames (default: those of benchmarks/frames.py)"
    )
    parser.add_argument("--measure-frames", type=int, default=24, help="frames measured per folder (default 24)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--anchor", type=float, default=4.0, help="weight of keeping the tiled logits (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--save", type=Path, help="write the fine-tuned state dict here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    folders = {str(folder): folder for folder in args.frames} if args.frames else dict(REAL_FRAMES)
    measured = {name: real_frames(folder, args.measure_frames) for name, folder in folders.items()}
    held = {path for files in measured.values() for path in files}
    pool = [
        path
        for folder in folders.values()
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in (".jpg", ".jpeg") and path not in held
    ]
    if not pool or not held:
        where = ", ".join(str(folder) for folder in folders.values())
        print(f"error: no frames to train or measure on in {where}", file=sys.stderr)
        return 2
    model, _ = load_checkpoint(args.checkpoint or checkpoint_path(args.job))
    model.eval()
    original = copy.deepcopy(model).eval()
    print(f"{len(pool)} training frames, {len(held)} measured; load {os.getloadavg()[0]:.2f}", flush=True)
    before = measure(model, original, measured)
    fine_tune(model, original, pool, args.steps, args.lr, args.anchor, args.seed)
    after = measure(model, original, measured)
    print(f"\n{args.steps} steps, lr {args.lr:g}, anchor {args.anchor:g}\n\n{table(before, after)}")
    print(f"\nload average (1 min) at end {os.getloadavg()[0]:.2f}")
    if args.json:
        payload = {"settings": {k: str(v) for k, v in vars(args).items()}}
        payload |= {"before": [asdict(b) for b in before], "after": [asdict(a) for a in after]}
        args.json.write_text(json.dumps(payload, indent=2))
    if args.save:
        torch.save(model.state_dict(), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
