"""The review loop, measured: a model meets a new surface, people review what it flagged, one retrain follows.

A plant trains on the surface it has, then points the line at another. This benchmark plays that out with two
shared sources, through the same commands a plant runs:

1. **base model**: ``crackscope train`` on ``--base-per-class`` crack + ok Özgenel concrete patches (a seeded
   draw), ``crackscope export``, ``crackscope calibrate`` on other Özgenel patches (disjoint from training);
2. **the line**: the DeepCrack photos are split once (seeded) into line frames and held-out frames;
   ``crackscope inspect`` runs the base model on the line frames;
3. **review**: simulated reviewers decide on every flagged frame (DEFECT or REVIEW) and a seeded sample of the
   passed ones, at most ``--reviewed`` frames in all, from the masks. Two reviewers see each frame; a frame with a
   clear crack tile (:func:`~crackscope.labelled.label_from_mask`, the runtime's tiles) is a defect to both, one
   without a crack pixel is OK to both, and on a frame whose crack tiles are all mask-ambiguous the first says
   defect and the second disagrees with probability ``--disagreement``. On a defect frame the first reviewer also
   boxes, on the item page, every crack they see, found or missed: the crack pixels of each tile-sized cell, one
   box per cell (:meth:`~crackscope.inspect.review.store.ReviewStore.add_mark`), so flagged tiles outside the boxes
   train as good;
4. **one retrain**: ``crackscope review export`` writes the reviewed tiles; ``crackscope train --data base --data
   export`` trains a new model with the base model's recipe, exported and calibrated on the same Özgenel patches;
5. **measured on the held-out frames**, before and after, per runtime tile labelled from its mask: recall (clear
   crack tiles not called OK: DEFECT or REVIEW, so a person or the ejector sees them), the false-reject rate (clear
   ok tiles called DEFECT), the review rate of clear ok tiles, the tile AP (threshold-free), recall at the base
   model's false-reject rate (the retrained model's ROC read at the same false-reject rate) and recall at 1% and 5%
   false reject (each model's ROC read there), with the CPU minutes of each step.

Goal (issue 17): recall on the new surface up by >= 15 points at an unchanged false-reject rate, with at most 100
reviewed frames and one retrain under 5 minutes.

Run:
    .venv/bin/python benchmarks/review_loop.py                 # about 10 minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/review_loop.py --reviewed 50 --disagreement 0.3 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from crackscope.cli import main as crackscope
from crackscope.inspect.card import read_card
from crackscope.inspect.decision import Verdict
from crackscope.inspect.parts import average_precision
from crackscope.inspect.results import InspectionResult
from crackscope.inspect.review.export import export_dataset
from crackscope.inspect.review.store import ReviewStore
from crackscope.inspect.sinks import ResultStore
from crackscope.labelled import AMBIGUOUS, CRACK, OK, MaskLabelling, label_from_mask

REVIEWERS = ("alice", "bob")
GOAL_RECALL_GAIN = 0.15  # points of held-out tile recall
GOAL_RETRAIN_MINUTES = 5.0
GOAL_REVIEWED = 100
MARGIN = 4  # px a reviewer's box leaves around a crack


@dataclass(frozen=True)
class LoopOptions:
    out: str
    data: str
    base_per_class: int = 200
    calib_per_class: int = 300  # 230 clear cracks certify the default 1% escape rate at 90%
    surface: str = "deepcrack"  # a key of SURFACES
    line_frames: int = 150
    reviewed: int = GOAL_REVIEWED
    passed_share: float = 0.2  # share of the reviewed frames drawn from the passed ones
    disagreement: float = 0.5
    seed: int = 0
    epochs: int | None = None


# --- data ---------------------------------------------------------------------------------------------------------


def link_patches(source: Path, target: Path, per_class: int, rng: random.Random, taken: set[Path]) -> Path:
    """A class-folder dataset of symbolic links to ``per_class`` unseen patches of each class (nothing copied)."""
    for name in ("crack", "ok"):
        pool = sorted(p for p in (source / name).iterdir() if p.suffix.lower() == ".jpg" and p not in taken)
        chosen = rng.sample(pool, per_class)
        (target / name).mkdir(parents=True)
        for path in chosen:
            (target / name / path.name).symlink_to(path.resolve())
            taken.add(path)
    return target


@dataclass(frozen=True)
class Surface:
    """A shared mask dataset the base model never saw, as line frames."""

    folder: str
    images: str  # glob of the frames under the folder
    mask_beside: bool  # mask ``<stem>.png`` beside the image, else in ``../masks/``
    rules: MaskLabelling  # how a tile's mask makes it crack / ok / ambiguous (tile side filled in later)


SURFACES = {
    "deepcrack": Surface("deepcrack-train", "images/*.jpg", False, MaskLabelling()),
    # defects of a few pixels (blowholes) count, as in benchmarks/domains.py
    "magnetic": Surface("magnetic-tile", "MT_*/*.jpg", True, MaskLabelling(crack_min_center_fraction=0.001)),
}


def split_frames(folder: Path, surface: Surface, line_frames: int, rng: random.Random) -> tuple[list[Path], list[Path]]:
    """The surface's frames as line frames and held-out frames (disjoint, seeded)."""
    images = sorted(folder.glob(surface.images))
    rng.shuffle(images)
    return sorted(images[:line_frames]), sorted(images[line_frames:])


def mask_of(image: Path, surface: Surface) -> np.ndarray:
    """The frame's defect mask as bool ``[H, W]``."""
    folder = image.parent if surface.mask_beside else image.parent.parent / "masks"
    mask = cv2.imread(str(folder / f"{image.stem}.png"), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"no mask for {image}")
    return mask > 127


def tile_label(mask: np.ndarray, box: Sequence[int], rules: MaskLabelling) -> str:
    x, y, w, h = box[:4]
    return label_from_mask(mask[y : y + h, x : x + w].astype(np.uint8), rules)


# --- simulated review -----------------------------------------------------------------------------------------------


def frame_truth(record: InspectionResult, mask: np.ndarray, rules: MaskLabelling) -> str:
    """crack when a runtime tile of the frame is a clear crack, ok when the mask is empty, else ambiguous."""
    labels = {tile_label(mask, tile, rules) for tile in record.tiles}
    if CRACK in labels:
        return CRACK
    return OK if not mask.any() else AMBIGUOUS


def defect_boxes(mask: np.ndarray, size: int) -> list[tuple[int, int, int, int]]:
    """Boxes a reviewer draws round the cracks of a frame, found or missed: per tile-sized cell, its crack pixels'
    box with a :data:`MARGIN` px margin (a cell with a few stray pixels gets none)."""
    height, width = mask.shape
    boxes = []
    for top in range(0, height, size):
        for left in range(0, width, size):
            ys, xs = np.nonzero(mask[top : top + size, left : left + size])
            if len(xs) < 20:  # a few stray pixels: nothing a person would mark
                continue
            x0, y0 = max(left + int(xs.min()) - MARGIN, 0), max(top + int(ys.min()) - MARGIN, 0)
            x1, y1 = min(left + int(xs.max()) + 1 + MARGIN, width), min(top + int(ys.max()) + 1 + MARGIN, height)
            boxes.append((x0, y0, x1 - x0, y1 - y0))
    return boxes


def simulate_review(
    results: Path, masks: dict[str, np.ndarray], options: LoopOptions, rules: MaskLabelling, size: int
) -> dict:
    """Decide and mark the reviewed frames in the results folder's review store; what was reviewed."""
    rng = random.Random(options.seed)
    with ReviewStore(results) as store:
        records = [r for r in _records(results) if r.verdict is not Verdict.ERROR]
        flagged = [r for r in records if r.verdict in (Verdict.DEFECT, Verdict.REVIEW)]
        passed = [r for r in records if r.verdict is Verdict.OK]
        n_passed = min(
            len(passed), max(round(options.reviewed * options.passed_share), options.reviewed - len(flagged))
        )
        n_flagged = min(len(flagged), options.reviewed - n_passed)
        chosen = sorted(flagged, key=lambda r: -(r.score or 0))[:n_flagged] + rng.sample(passed, n_passed)
        truths, marks, split = {CRACK: 0, OK: 0, AMBIGUOUS: 0}, 0, 0
        for record in chosen:
            mask = masks[record.source]
            truth = frame_truth(record, mask, rules)
            truths[truth] += 1
            first = "ok" if truth == OK else "defect"
            second = first
            if truth == AMBIGUOUS and rng.random() < options.disagreement:
                second, split = "ok", split + 1
            store.decide(record.id, REVIEWERS[0], first)
            store.decide(record.id, REVIEWERS[1], second)
            if truth == CRACK:
                for box in defect_boxes(mask, size):
                    store.add_mark(record.id, REVIEWERS[0], box)
                    marks += 1
    return {
        "frames": len(chosen),
        "flagged": n_flagged,
        "passed": n_passed,
        "truth": truths,
        "split_votes": split,
        "marks": marks,
    }


# --- measuring --------------------------------------------------------------------------------------------------


def tile_outcomes(records: Sequence[InspectionResult], masks: dict[str, np.ndarray], rules: MaskLabelling) -> dict:
    """Clear crack / clear ok tiles of the records, with their probabilities (ambiguous tiles left out)."""
    probabilities: dict[str, list[float]] = {CRACK: [], OK: []}
    for record in records:
        for tile in record.tiles:
            label = tile_label(masks[record.source], tile, rules)
            if label in probabilities:
                probabilities[label].append(float(tile[4]))
    return {k: np.asarray(v) for k, v in probabilities.items()}


def held_out_figures(outcomes: dict, ok_below: float, defect_at: float, match_frr: float | None = None) -> dict:
    crack, ok = outcomes[CRACK], outcomes[OK]
    labels = np.r_[np.ones(len(crack)), np.zeros(len(ok))]
    figures = {
        "crack_tiles": len(crack),
        "ok_tiles": len(ok),
        "recall": float((crack >= ok_below).mean()),
        "defect_recall": float((crack >= defect_at).mean()),
        "false_reject": float((ok >= defect_at).mean()),
        "ok_review_rate": float(((ok >= ok_below) & (ok < defect_at)).mean()),
        "tile_ap": float(average_precision(labels, np.r_[crack, ok])),
    }
    for rate in (0.01, 0.05):
        figures[f"recall_at_{rate:.0%}_false_reject"] = recall_at(crack, ok, rate)
    if match_frr is not None:
        figures["recall_at_base_false_reject"] = recall_at(crack, ok, match_frr)
    return figures


def recall_at(crack: np.ndarray, ok: np.ndarray, false_reject: float) -> float:
    """Share of crack tiles above the lowest threshold that rejects at most ``false_reject`` of the ok tiles."""
    allowed = int(np.floor(false_reject * len(ok) + 1e-9))  # ok tiles that may lie above the threshold
    ranked = np.sort(ok)[::-1]
    threshold = ranked[allowed] if allowed < len(ranked) else -np.inf
    return float((crack > threshold).mean())


# --- the loop --------------------------------------------------------------------------------------------------


def run(options: LoopOptions) -> dict:
    out, data = Path(options.out), Path(options.data).resolve()  # records name their inputs by absolute path
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(options.seed)
    minutes: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="review-loop-", dir=out))
    taken: set[Path] = set()
    base = link_patches(data / "ozgenel-concrete", work / "base", options.base_per_class, rng, taken)
    calib = link_patches(data / "ozgenel-concrete", work / "calib", options.calib_per_class, rng, taken)
    surface = SURFACES[options.surface]
    line, held = split_frames(data / surface.folder, surface, options.line_frames, rng)
    masks = {str(p): mask_of(p, surface) for p in line + held}

    base_model = _model(work / "base-run", [base], calib, options, minutes, "base")
    size = read_card(base_model).input_size
    rules = surface.rules.for_tile(size)
    line_results = _inspect(base_model, line, work / "line", minutes, "inspect line")
    review = simulate_review(line_results, masks, options, rules, size)
    start = time.process_time(), time.perf_counter()
    exported = export_dataset(line_results, work / "export")
    minutes["review export"] = _elapsed(start)
    retrained = _model(work / "retrain-run", [base, work / "export"], calib, options, minutes, "retrain")

    before = tile_outcomes(
        _records(_inspect(base_model, held, work / "held-base", minutes, "inspect held")), masks, rules
    )
    after = tile_outcomes(
        _records(_inspect(retrained, held, work / "held-retrain", minutes, "inspect held")), masks, rules
    )
    base_card, new_card = read_card(base_model).calibration, read_card(retrained).calibration
    figures_before = held_out_figures(before, base_card.ok_below, base_card.defect_at_or_above)
    figures_after = held_out_figures(
        after, new_card.ok_below, new_card.defect_at_or_above, match_frr=figures_before["false_reject"]
    )
    report = {
        "options": options.__dict__,
        "load": os.getloadavg(),
        "review": review,
        "export": {"tiles": exported.tiles, "frames": exported.counts, "unmarked_escapes": exported.unmarked_escapes},
        "held_out_frames": len(held),
        "before": figures_before,
        "after": figures_after,
        "minutes": minutes,
    }
    report["goal"] = {
        "recall_gain": figures_after["recall"] - figures_before["recall"],
        "recall_gain_at_base_false_reject": figures_after["recall_at_base_false_reject"] - figures_before["recall"],
        "false_reject_change": figures_after["false_reject"] - figures_before["false_reject"],
        "retrain_minutes": minutes["retrain: train"]["wall"],
        "met": bool(
            figures_after["recall_at_base_false_reject"] - figures_before["recall"] >= GOAL_RECALL_GAIN
            and minutes["retrain: train"]["wall"] <= GOAL_RETRAIN_MINUTES
            and review["frames"] <= GOAL_REVIEWED
        ),
    }
    (out / "review_loop.json").write_text(json.dumps(report, indent=2))
    return report


def _model(run_dir: Path, data: list[Path], calib: Path, options: LoopOptions, minutes: dict, name: str) -> Path:
    """Train, export and calibrate a model (a failed step stops the benchmark with its exit code)."""
    args = ["train", "--out", str(run_dir), "--seed", str(options.seed)]
    args += [a for d in data for a in ("--data", str(d))]
    if options.epochs:
        args += ["--epochs", str(options.epochs)]
    _step(args, minutes, f"{name}: train")
    model = run_dir / "model.onnx"
    _step(["export", "--checkpoint", str(run_dir / "model.pt"), "--out", str(model)], minutes, f"{name}: export")
    _step(
        [
            "calibrate",
            "--model",
            str(model),
            "--data",
            str(calib),
            "--out",
            str(run_dir / "calibration"),
            "--ambiguous-review",
            "0",
            "--no-progress",
        ],
        minutes,
        f"{name}: calibrate",
    )
    return model


def _inspect(model: Path, frames: list[Path], out: Path, minutes: dict, name: str) -> Path:
    _step(["inspect", "--model", str(model), "--out", str(out), "--no-progress", *map(str, frames)], minutes, name)
    return out


def _step(args: list[str], minutes: dict, name: str) -> None:
    start = time.process_time(), time.perf_counter()
    code = crackscope(args)
    if code != 0:
        raise SystemExit(f"crackscope {args[0]} failed with exit code {code}")
    spent = _elapsed(start)
    if name in minutes:  # the same step twice (two held-out inspections): add up
        spent = {k: minutes[name][k] + spent[k] for k in spent}
    minutes[name] = spent


def _elapsed(start: tuple[float, float]) -> dict[str, float]:
    cpu, wall = start
    return {"cpu": round((time.process_time() - cpu) / 60, 2), "wall": round((time.perf_counter() - wall) / 60, 2)}


def _records(results: Path) -> list[InspectionResult]:
    with ResultStore(results) as store:
        return list(store.records())


def table(report: dict) -> str:
    before, after = report["before"], report["after"]
    rows = [
        "| | recall (not OK) | DEFECT recall | false reject | ok tiles to REVIEW | tile AP "
        "| recall at 1% / 5% false reject |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in (("base model", before), ("after one retrain", after)):
        rows.append(
            f"| {name} | {f['recall']:.1%} | {f['defect_recall']:.1%} | {f['false_reject']:.2%} | "
            f"{f['ok_review_rate']:.1%} | {f['tile_ap']:.3f} | {f['recall_at_1%_false_reject']:.1%} / "
            f"{f['recall_at_5%_false_reject']:.1%} |"
        )
    goal = report["goal"]
    rows.append("")
    rows.append(
        f"recall {goal['recall_gain'] * 100:+.1f} points at the calibrated thresholds "
        f"(false reject {goal['false_reject_change'] * 100:+.2f} points); "
        f"{goal['recall_gain_at_base_false_reject'] * 100:+.1f} points at the base model's false-reject rate; "
        f"{report['review']['frames']} frames reviewed; retrain {goal['retrain_minutes']:.1f} min; "
        f"goal {'met' if goal['met'] else 'not met'}"
    )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/review-loop")
    parser.add_argument("--data", default=os.environ.get("CRACKSCOPE_DATA", "../shared/datasets"))
    parser.add_argument("--base-per-class", type=int, default=LoopOptions.base_per_class)
    parser.add_argument("--calib-per-class", type=int, default=LoopOptions.calib_per_class)
    parser.add_argument("--surface", choices=sorted(SURFACES), default=LoopOptions.surface, help="the new surface")
    parser.add_argument("--line-frames", type=int, default=LoopOptions.line_frames)
    parser.add_argument("--reviewed", type=int, default=LoopOptions.reviewed)
    parser.add_argument("--passed-share", type=float, default=LoopOptions.passed_share)
    parser.add_argument("--disagreement", type=float, default=LoopOptions.disagreement)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run(LoopOptions(**{k.replace("-", "_"): v for k, v in vars(args).items()}))
    print(json.dumps({k: report[k] for k in ("review", "export", "minutes")}, indent=2))
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
