"""Does the heatmap point at the defect? Localisation of the deployed path, scored against real pixel masks.

Images go through :class:`~crackscope.inspect.model.OnnxModel` and :func:`~crackscope.inspect.pipeline.inspect_frames`
exactly as on a line (same tiles, overlap, batches and stitching; no PyTorch), and three figures are scored against
each image's mask:

- **pointing game**: the stitched heatmap's maximum lies inside the mask dilated by 8 px (within 8 px, Euclidean,
  of a mask pixel). Images with an empty mask are left out and counted; a heatmap that is zero everywhere counts as
  a miss. Goal: >= 90%. Printed with a 95% Wilson interval and the chance level (the mean share of the image the
  dilated mask covers: where a random point would land), and again with the tolerance set to one CAM cell
  (input size / feature size, 32 px for EfficientNet-Lite0): the heatmap is bilinear between cell centres, so at
  0% overlap its maximum sits on a cell centre and cannot come closer to a thin crack than the cell grid allows;
- **tile-level ROC-AUC** of the tile logits against labels derived from the mask at the tile's size by the training
  code's rule (:func:`crackscope.labelled.label_from_mask` with the default
  :class:`~crackscope.labelled.MaskLabelling`: crack when enough crack pixels lie in the tile's centre, ok when
  none lie in the tile); ambiguous tiles are left out and counted;
- **image-level ROC-AUC** of the frame score (the highest calibrated tile probability), defect vs defect-free
  images; only where the dataset has defect-free images.

Datasets and the models scored on them (the ones ``benchmarks/accuracy.py`` trained and exported):

- ``deepcrack-train`` (300 photos of cracked surfaces) with the ``ozgenel-concrete`` model. That model was trained on
  Özgenel patches only and never saw a DeepCrack image, so all of DeepCrack is held out. DeepCrack has no crack-free
  image, so its image-level ROC-AUC is not defined and not reported.
- ``magnetic-tile`` with the ``magnetic-tile`` model, on the test split recorded in ``magnetic-tile.split.json`` only
  (images the model was not trained, early-stopped or int8-calibrated on); its ``MT_Free`` test images give the
  image-level ROC-AUC. Note that this model was trained on whole images resized to 224 px, while the runtime tiles
  images at their own resolution.

Run:
    python benchmarks/localization.py                           # both datasets, fp32 models, a few minutes
    python benchmarks/localization.py --precision int8 --json localization-int8.json
    python benchmarks/localization.py --only magnetic-tile --overlap 0
    python benchmarks/localization.py --quick                   # smoke run: 12 images per dataset
    python benchmarks/localization.py --model m.onnx --only deepcrack-train   # any model (held-out status unknown)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from saved_models import DATA_DIR, MODELS_DIR, HeldOut, read_held_out, read_held_out_file, require_model
from sklearn.metrics import roc_auc_score

from crackscope.inspect.images import read_image
from crackscope.inspect.model import OnnxModel
from crackscope.inspect.pipeline import FrameInspection, InspectConfig, inspect_frames
from crackscope.inspect.tiling import pad_to_grid, tile_grid
from crackscope.labelled import (
    AMBIGUOUS,
    CRACK,
    OK,
    DataConfig,
    MaskLabelling,
    classify_folder,
    label_from_mask,
)

JOBS = {"deepcrack-train": "ozgenel-concrete", "magnetic-tile": "magnetic-tile"}  # dataset -> model's job
POINTING_GOAL = 0.90
FRAMES_PER_CALL = 8  # images inspected together: their tiles share model batches


# --- settings ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    datasets: tuple[str, ...]
    data_root: Path
    models_dir: Path
    model: Path | None  # overrides the saved models for every dataset
    held_out: Path | None  # a split.json for --model
    precision: str
    overlap: float
    dilation: int
    limit: int | None
    threads: int | None
    json_path: Path | None


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(JOBS), action="append", help="datasets to score (default: all)")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="datasets root (%(default)s; CRACKSCOPE_DATA)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="saved models (%(default)s)")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="which saved model (fp32)")
    parser.add_argument("--model", type=Path, help="score this model file instead of the saved ones")
    parser.add_argument("--held-out", type=Path, help="with --model: a <job>.split.json naming its held-out images")
    parser.add_argument("--overlap", type=float, default=InspectConfig().overlap, help="tile overlap (%(default)s)")
    parser.add_argument("--dilation", type=int, default=8, help="pointing-game tolerance in pixels (%(default)s)")
    parser.add_argument("--limit", type=int, help="score an evenly spaced subset of N images per dataset and class")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ONNX Runtime's)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke run: --limit 12 (numbers not meaningful)")
    args = parser.parse_args(argv)
    return Settings(
        datasets=tuple(args.only or JOBS),
        data_root=args.data,
        models_dir=args.models_dir,
        model=args.model,
        held_out=args.held_out,
        precision=args.precision,
        overlap=args.overlap,
        dilation=args.dilation,
        limit=args.limit or (12 if args.quick else None),
        threads=args.threads,
        json_path=args.json,
    )


# --- images and what the model never saw ------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    image: Path
    mask: Path
    defect: bool  # image-level label
    group: str  # class folder, for the per-class breakdown


@dataclass(frozen=True)
class Images:
    items: tuple[Item, ...]
    held_out_note: str


def dataset_items(dataset: str, root: Path) -> list[Item]:
    """Every image with a mask: ``images/`` + ``masks/`` (DeepCrack) or ``x.jpg`` + ``x.png`` in class folders."""
    if (root / "images").is_dir() and (root / "masks").is_dir():
        masks = {p.stem: p for p in (root / "masks").iterdir()}
        return [Item(p, masks[p.stem], True, dataset) for p in sorted((root / "images").iterdir()) if p.stem in masks]
    items = []
    for image in sorted(root.glob("*/*.jpg")):
        kind = classify_folder(image.parent.name, {})
        if kind in (CRACK, OK) and image.with_suffix(".png").is_file():
            items.append(Item(image, image.with_suffix(".png"), kind == CRACK, image.parent.name))
    return items


def held_out_images(dataset: str, root: Path, held_out: HeldOut | None, model_name: str) -> Images:
    """The images of ``dataset`` that the model never trained on, and a sentence saying how that is known."""
    items = dataset_items(dataset, root)
    if held_out is None:
        return Images(tuple(items), f"unknown: {model_name} given by --model without --held-out; all images scored")
    if dataset in held_out.never_seen:
        return Images(
            tuple(items), f"all: the {held_out.job} model was trained on {held_out.dataset} and never saw {dataset}"
        )
    if dataset == held_out.dataset:
        test = set(held_out.test)
        chosen = tuple(i for i in items if str(i.image.relative_to(root)) in test)
        return Images(chosen, f"test split of {held_out.job} (seed {held_out.seed}, {len(test)} images held out)")
    raise ValueError(f"the {held_out.job} model's split says nothing about {dataset}; no held-out images known")


def spread(items: Sequence[Item], limit: int | None) -> list[Item]:
    """An evenly spaced subset of at most ``limit`` items per class (all when no limit)."""
    if limit is None:
        return list(items)
    chosen = []
    for defect in (True, False):
        members = [i for i in items if i.defect == defect]
        if members:
            picks = np.unique(np.linspace(0, len(members) - 1, min(limit, len(members))).round().astype(int))
            chosen += [members[i] for i in picks]
    return chosen


# --- scoring ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageScore:
    item: Item
    score: float  # frame score: highest calibrated tile probability
    mask_pixels: int
    peak_distance: float  # pixels from the heatmap's maximum to the nearest mask pixel (inf: empty mask)
    flat: bool  # heatmap zero everywhere
    within: dict[float, float]  # tolerance -> share of the image within it of a mask pixel (chance level)
    tile_logits: tuple[float, ...]
    tile_labels: tuple[str, ...]  # crack / ok / ambiguous, from the mask


def inspect_in_groups(model: OnnxModel, items: Sequence[Item], config: InspectConfig) -> Iterator[tuple]:
    """``(item, frame, mask, inspection)``, a few frames per ``inspect_frames`` call so small images share batches."""
    for start in range(0, len(items), FRAMES_PER_CALL):
        group = items[start : start + FRAMES_PER_CALL]
        frames = [read_image(item.image) for item in group]
        masks = [read_image(item.mask, grayscale=True) > 0 for item in group]
        yield from zip(group, frames, masks, inspect_frames(model, frames, config), strict=True)


def score_image(
    item: Item, mask: np.ndarray, inspection: FrameInspection, size: int, overlap: float, tolerances: Sequence[float]
) -> ImageScore:
    heatmap = inspection.heatmap
    # Distance of every pixel to the nearest mask pixel: "inside the mask dilated by t" is "distance <= t".
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    if not mask.any():
        distance = np.full(mask.shape, np.inf, np.float32)
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return ImageScore(
        item=item,
        score=inspection.score,
        mask_pixels=int(mask.sum()),
        peak_distance=float(distance[peak]),
        flat=float(heatmap.max()) <= 0.0,
        within={t: float((distance <= t).mean()) for t in tolerances},
        tile_logits=tuple(t.logit for t in inspection.tiles),
        tile_labels=tile_labels(mask, inspection, size, overlap, DataConfig().masks),
    )


def hit(score: ImageScore, tolerance: float) -> bool:
    """The pointing game for one image: the heatmap's maximum lies within ``tolerance`` px of the mask."""
    return not score.flat and score.peak_distance <= tolerance


def tile_labels(
    mask: np.ndarray, inspection: FrameInspection, size: int, overlap: float, rules: MaskLabelling
) -> tuple[str, ...]:
    """Each inspected tile's label from the mask under it, padded like the frame (the model saw the padding too)."""
    grid = tile_grid(*mask.shape, size, overlap)
    padded = pad_to_grid(mask.astype(np.uint8), grid)
    return tuple(
        label_from_mask(padded[y : y + size, x : x + size], rules) for x, y, _, _ in (t.box for t in inspection.tiles)
    )


# --- figures ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    dataset: str
    model: str
    precision: str
    held_out: str
    images: int
    pointing_n: int  # images with a non-empty mask
    pointing_hits: int
    tolerance: float
    cell: float  # CAM cell side in pixels
    cell_hits: int  # pointing game with one CAM cell of tolerance
    empty_masks: int  # defect images left out of the pointing game
    flat_heatmaps: int
    chance: float
    cell_chance: float
    tile_auc: float | None
    tiles: dict[str, int]  # crack / ok / ambiguous (left out)
    image_auc: float | None
    image_n: dict[str, int]  # defect / defect-free
    image_note: str
    by_class: dict[str, tuple[int, int]]  # class folder -> (hits, n)
    seconds: float
    load_start: float
    load_end: float

    @property
    def pointing(self) -> float:
        return self.pointing_hits / self.pointing_n if self.pointing_n else float("nan")


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    return float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None


def figures(
    dataset: str, model: OnnxModel, images: Images, scores: Sequence[ImageScore], tolerance: float, extra: dict
) -> Figures:
    cell = cell_size(model)
    pointed = [s for s in scores if s.item.defect and s.mask_pixels > 0]
    tile_pairs = [(lab, lg) for s in scores for lab, lg in zip(s.tile_labels, s.tile_logits, strict=True)]
    clear = [(int(lab == CRACK), lg) for lab, lg in tile_pairs if lab != AMBIGUOUS]
    counts = {name: sum(lab == name for lab, _ in tile_pairs) for name in (CRACK, OK, AMBIGUOUS)}
    defect = [s for s in scores if s.item.defect]
    free = [s for s in scores if not s.item.defect]
    image_auc = auc([int(s.item.defect) for s in scores], [s.score for s in scores]) if free and defect else None
    by_class: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in pointed:
        by_class[s.item.group][0] += int(hit(s, tolerance))
        by_class[s.item.group][1] += 1
    return Figures(
        dataset=dataset,
        model=model.path.name,
        precision=model.card.precision,
        held_out=images.held_out_note,
        images=len(scores),
        pointing_n=len(pointed),
        pointing_hits=sum(hit(s, tolerance) for s in pointed),
        tolerance=tolerance,
        cell=cell,
        cell_hits=sum(hit(s, cell) for s in pointed),
        empty_masks=sum(1 for s in defect if s.mask_pixels == 0),
        flat_heatmaps=sum(s.flat for s in pointed),
        chance=float(np.mean([s.within[tolerance] for s in pointed])) if pointed else float("nan"),
        cell_chance=float(np.mean([s.within[cell] for s in pointed])) if pointed else float("nan"),
        tile_auc=auc([y for y, _ in clear], [lg for _, lg in clear]),
        tiles=counts,
        image_auc=image_auc,
        image_n={"defect": len(defect), "defect-free": len(free)},
        image_note="" if free else f"not defined: {dataset} has no defect-free images",
        by_class={k: (v[0], v[1]) for k, v in sorted(by_class.items())},
        **extra,
    )


def score_dataset(dataset: str, settings: Settings) -> Figures:
    root = settings.data_root / dataset
    job = JOBS[dataset]
    if settings.model:
        path = settings.model
        held_out = read_held_out_file(settings.held_out) if settings.held_out else None
    else:
        path = require_model(job, settings.precision, settings.models_dir)
        held_out = read_held_out(job, settings.models_dir)
    images = held_out_images(dataset, root, held_out, path.name)
    items = spread(images.items, settings.limit)
    config = InspectConfig(overlap=settings.overlap)
    tolerance = float(settings.dilation)
    load_start, started = load_average(), time.perf_counter()
    with OnnxModel(path, providers="cpu", intra_op_threads=settings.threads) as model:
        print(f"{dataset}: {len(items)} images, {model.path.name} ({model.card.precision}, {model.input_size} px)")
        scores = [
            score_image(item, mask, inspection, model.input_size, settings.overlap, (tolerance, cell_size(model)))
            for item, _, mask, inspection in inspect_in_groups(model, items, config)
        ]
        extra = {"seconds": time.perf_counter() - started, "load_start": load_start, "load_end": load_average()}
        return figures(dataset, model, images, scores, tolerance, extra)


def cell_size(model: OnnxModel) -> float:
    """Side of one CAM cell in tile pixels (the heatmap's resolution)."""
    return model.input_size / model.card.feature_size


def load_average() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


# --- reporting --------------------------------------------------------------------------------------------------


def percent(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.1%}"


def main_table(results: Sequence[Figures]) -> str:
    lines = [
        "| dataset | model | held out | pointing game (hits / n, 95% CI) | chance | within one CAM cell (chance) "
        "| flat heatmaps | tile ROC-AUC | tiles crack / ok (ambiguous left out) "
        "| image ROC-AUC (defect / defect-free) | load 1 min |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for f in results:
        low, high = wilson(f.pointing_hits, f.pointing_n)
        pointing = f"{percent(f.pointing)} ({f.pointing_hits} / {f.pointing_n}, {percent(low)}-{percent(high)})"
        if f.empty_masks:
            pointing += f"; {f.empty_masks} defect image(s) with an empty mask left out"
        tile_auc = "" if f.tile_auc is None else f"{f.tile_auc:.4f}"
        tiles = f"{f.tiles[CRACK]} / {f.tiles[OK]} ({f.tiles[AMBIGUOUS]})"
        load = f"{f.load_start} -> {f.load_end}"
        image = f.image_note or f"{f.image_auc:.4f} ({f.image_n['defect']} / {f.image_n['defect-free']})"
        lines.append(
            f"| {f.dataset} | {f.precision} ({f.model}) | {f.held_out} | {pointing} | {percent(f.chance)} "
            f"| {percent(f.cell_hits / f.pointing_n if f.pointing_n else None)} at {f.cell:g} px "
            f"({percent(f.cell_chance)}) | {f.flat_heatmaps} | {tile_auc} | {tiles} | {image} | {load} |"
        )
    return "\n".join(lines)


def class_table(results: Sequence[Figures]) -> str:
    lines = ["| dataset | class | pointing game | n |", "|---|---|---:|---:|"]
    for f in results:
        for name, (hits, n) in f.by_class.items():
            lines.append(f"| {f.dataset} | {name} | {percent(hits / n)} | {n} |")
    return "\n".join(lines)


def goal_table(results: Sequence[Figures]) -> tuple[str, list[dict]]:
    lines = ["| goal | dataset | measured | met |", "|---|---|---:|---|"]
    verdicts = []
    for f in results:
        met = (
            "not judged (no image with a mask)"
            if not f.pointing_n
            else ("met" if f.pointing >= POINTING_GOAL else "not met")
        )
        lines.append(f"| pointing game >= {POINTING_GOAL:.0%} | {f.dataset} | {percent(f.pointing)} | {met} |")
        verdicts.append({"goal": f"pointing game >= {POINTING_GOAL:.0%}", "dataset": f.dataset, "met": met})
    return "\n".join(lines), verdicts


def report(settings: Settings, results: Sequence[Figures]) -> list[dict]:
    rules = DataConfig().masks
    print(
        f"\n## Localisation (overlap {settings.overlap:.0%}, pointing tolerance {settings.dilation} px, tile labels: "
        f"crack when >= {rules.crack_min_center_fraction:.1%} of the central {rules.center_fraction:.0%} square is "
        f"crack, ok when <= {rules.ok_max_pixels} crack pixels in the tile)\n\n{main_table(results)}"
    )
    print(f"\n## Pointing game by class\n\n{class_table(results)}")
    table, verdicts = goal_table(results)
    print(f"\n## Goal\n\n{table}")
    if settings.limit:
        print(f"\nSUBSET RUN: at most {settings.limit} images per dataset and class; not the benchmark's figures.")
    print(f"\nload average (1, 5, 15 min) at end {os.getloadavg()}")
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if not settings.data_root.is_dir():
        print(f"datasets not found at {settings.data_root} (set CRACKSCOPE_DATA or --data)", file=sys.stderr)
        return 2
    print(f"load average (1, 5, 15 min) at start {os.getloadavg()}\n", flush=True)
    try:
        results = [score_dataset(dataset, settings) for dataset in settings.datasets]
    except FileNotFoundError as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    verdicts = report(settings, results)
    if settings.json_path is not None:
        payload = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
            "results": [asdict(f) | {"pointing": f.pointing} for f in results],
            "goals": verdicts,
        }
        settings.json_path.parent.mkdir(parents=True, exist_ok=True)
        settings.json_path.write_text(json.dumps(payload, indent=2, default=str))
        print(f"results written to {settings.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
