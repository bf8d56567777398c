"""Leave-one-domain-out accuracy: train on every shared source but one, test on the one left out.

A model that is perfect on the surface it was trained on can be weak on the next one, and a factory's surface is
never the training set's. This benchmark measures that directly on the three shared sources:

* ``ozgenel``: Özgenel concrete patches (class folders, one 227 px patch per photo crop);
* ``deepcrack``: DeepCrack photos of pavement and walls, cut into 128 px patches labelled from their masks;
* ``magnetic``: magnetic-tile part images, 128 px patches every 64 px labelled from their masks (a defect of a
  few pixels in a patch's centre counts, so small blowholes are cracks, not "ambiguous").

Each source is split once, grouped by source image: 20% test, then 12.5% of the rest validation. Training sets
are capped at ``--cap`` items per source (class-balanced: cracks up to half), so every run takes a few minutes on
2 CPU cores; test splits are never capped. Every model is trained with the trainer's defaults except the input
size (``--input-size``, 128: the patches' own size) and the augmentation preset.

1. **Preset comparison**: for each preset in ``--presets``, train on all sources but ``ozgenel`` and test on
   ``ozgenel``, then the same for ``deepcrack``; the preset with the best mean held-out ROC-AUC is the one that
   generalises best (the in-domain numbers are 1.00 for every preset and say nothing).
2. **Leave-one-domain-out table** with that preset: each source held out in turn (patch level, and image level
   where a source has several patches per image), and a model trained on all sources scored on each source's
   test split. For magnetic tile, image-level scores also use the folder label (``MT_Free`` = ok, any other
   ``MT_*`` = defect), which does not depend on the mask thresholds.

Run:
    python benchmarks/accuracy.py --domains                            # about 40 min on 2 idle CPU cores
    python benchmarks/accuracy.py --domains --presets heavy domain --cap 600
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crackscope.inspect.parts import PartScoring, average_precision, part_score, roc_auc
from crackscope.labelled import (
    Clarity,
    DataConfig,
    DataSource,
    MaskLabelling,
    Sample,
    load_sources,
    split_by_group,
)
from crackscope.training.checkpoint import load_checkpoint
from crackscope.training.evaluate import Metrics, metrics_for, predict
from crackscope.training.train import Split, TrainConfig, train

CRACK_SOURCES = ("ozgenel", "deepcrack")  # the held-out sources that decide the default preset
GOAL_ROC_AUC = 0.95  # leave-one-domain-out, each crack source
GOAL_IMAGE_AP = 0.95  # magnetic tile, image level


PATCHES_128 = DataConfig(masks=MaskLabelling(patch_size=128, stride=128))  # the tiles of the published figures


def sources(data_root: Path) -> tuple[DataSource, ...]:
    magnetic = DataConfig(mode="mask", masks=MaskLabelling(patch_size=128, stride=64, crack_min_center_fraction=0.001))
    return (
        DataSource(str(data_root / "ozgenel-concrete"), "ozgenel"),
        DataSource(str(data_root / "deepcrack-train"), "deepcrack", PATCHES_128),
        DataSource(str(data_root / "magnetic-tile"), "magnetic", magnetic),
    )


@dataclass(frozen=True)
class DomainOptions:
    out: str
    presets: tuple[str, ...] = ("light", "heavy", "colour", "domain")
    cap: int = 1200
    input_size: int = 128
    seed: int = 0
    workers: int = 2


@dataclass(frozen=True)
class SourceSplit:
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...]


def split_sources(samples: Sequence[Sample], seed: int, cap: int) -> dict[str, SourceSplit]:
    """Per source: a grouped 20% test split, 12.5% of the rest for validation, training and validation capped."""
    by_source: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_source[sample.source].append(sample)
    splits = {}
    for name, members in by_source.items():
        rest, test = split_by_group(members, 0.2, seed)
        train_part, val_part = split_by_group(rest, 0.125, seed + 1)
        splits[name] = SourceSplit(
            tuple(balanced_cap(train_part, cap, seed)), tuple(balanced_cap(val_part, cap // 4, seed)), tuple(test)
        )
    return splits


def balanced_cap(samples: Sequence[Sample], cap: int, seed: int) -> list[Sample]:
    """At most ``cap`` items, seeded: clear cracks up to half of them, the rest from ok and ambiguous items."""
    if len(samples) <= cap:
        return list(samples)
    rng = np.random.default_rng(seed)
    cracks = [s for s in samples if s.label == 1 and s.clarity is Clarity.CLEAR]
    others = [s for s in samples if not (s.label == 1 and s.clarity is Clarity.CLEAR)]
    chosen = [cracks[i] for i in rng.permutation(len(cracks))[: cap // 2]]
    chosen += [others[i] for i in rng.permutation(len(others))[: cap - len(chosen)]]
    return chosen


@dataclass(frozen=True)
class Trained:
    checkpoint: Path
    seconds: float
    sec_per_epoch: float
    epochs: int
    items: int


def train_on(
    names: Sequence[str], splits: dict[str, SourceSplit], preset: str, options: DomainOptions, out: Path
) -> Trained:
    train_items = tuple(s for n in names for s in splits[n].train)
    val_items = tuple(s for n in names for s in splits[n].val)
    config = TrainConfig(
        out=str(out),
        input_size=options.input_size,
        augment=preset,
        seed=options.seed,
        workers=options.workers,
        progress=False,
    )
    print(f"\n=== {preset}: train on {', '.join(names)} ({len(train_items)} items) ===", flush=True)
    started = time.perf_counter()
    result = train(config, Split(train_items, val_items, {"train": len(train_items), "val": len(val_items)}))
    finetune = [h.seconds for h in result.history if h.stage == "finetune"] or [h.seconds for h in result.history]
    return Trained(
        result.checkpoint,
        time.perf_counter() - started,
        float(np.mean(finetune)),
        len(result.history),
        len(train_items),
    )


def score(trained: Trained, test: Sequence[Sample], workers: int) -> dict:
    """Patch-level and image-level scores of a trained model on one source's test split."""
    model, header = load_checkpoint(trained.checkpoint)
    scoring = header.part_scoring()
    predictions = predict(model, test, batch_size=64, workers=workers, progress=False)
    metrics: Metrics = metrics_for(predictions, scoring, "validation")
    row = {
        "test_items": metrics.clear.n,
        "accuracy": metrics.clear.accuracy,
        "roc_auc": metrics.clear.roc_auc,
        "average_precision": metrics.clear.average_precision,
        "part_scoring": scoring.label,
        "train_items": trained.items,
        "epochs": trained.epochs,
        "sec_per_epoch": trained.sec_per_epoch,
        "run_seconds": trained.seconds,
    }
    image = metrics.image_level
    if image is not None and image.crack and image.ok:
        row["image_ap"] = image.metrics.average_precision
        row["image_roc_auc"] = image.metrics.roc_auc
        row["images"] = {"crack": image.crack, "ok": image.ok, "ambiguous": image.ambiguous}
    folder = folder_labelled(predictions.samples, predictions.probabilities, scoring)
    if folder is not None:
        row.update(folder)
    return row


def folder_labelled(samples: Sequence[Sample], probabilities: np.ndarray, scoring: PartScoring) -> dict | None:
    """Magnetic tile: image-level AP and ROC-AUC with the folder's label (``MT_Free`` ok, other ``MT_*`` defect)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        if sample.path.parent.name.startswith("MT_"):
            groups[sample.group].append(index)
    if not groups:
        return None
    labels = np.array([int(samples[members[0]].path.parent.name != "MT_Free") for members in groups.values()])
    scores = np.array([part_score(probabilities[members], scoring) for members in groups.values()])
    return {
        "folder_image_ap": average_precision(labels, scores),
        "folder_image_roc_auc": roc_auc(labels, scores),
        "folder_images": {"defect": int(labels.sum()), "free": int((1 - labels).sum())},
    }


def run(data_root: Path, options: DomainOptions) -> int:
    """Both parts of the benchmark; prints the tables and writes ``domains.json`` beside the accuracy results."""
    started = time.time()
    dataset = load_sources(sources(data_root))
    splits = split_sources(dataset.samples, options.seed, options.cap)
    for name, split in splits.items():
        print(f"{name}: {len(split.train)} train / {len(split.val)} val / {len(split.test)} test items", flush=True)
    results_path = Path(options.out) / "domains.json"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="crackscope-domains-") as scratch:

        def job(preset: str, names: Sequence[str], tested: Sequence[str], kind: str) -> None:
            trained = train_on(names, splits, preset, options, Path(scratch) / f"{preset}-{'-'.join(names)}")
            for name in tested:
                row = {"preset": preset, "kind": kind, "trained_on": list(names), "tested_on": name}
                rows.append({**row, **score(trained, splits[name].test, options.workers)})
                print(json.dumps(rows[-1]), flush=True)
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(rows, indent=2))

        every = list(splits)
        for preset in options.presets:
            for held_out in CRACK_SOURCES:
                job(preset, [n for n in every if n != held_out], [held_out], "held out")
        best = best_preset(rows)
        print(f"\npreset that generalises best (mean held-out ROC-AUC on {', '.join(CRACK_SOURCES)}): {best}")
        for held_out in every:
            if held_out not in CRACK_SOURCES:
                job(best, [n for n in every if n != held_out], [held_out], "held out")
        job(best, every, every, "all sources")
    print(f"\n{preset_table(rows)}\n\n{domain_table(rows, best)}\n")
    load = os.getloadavg()
    print(
        f"input {options.input_size}px, cap {options.cap} training items per source; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f} at the end; total {time.time() - started:.0f}s; rows in {results_path}"
    )
    return 0


def best_preset(rows: list[dict]) -> str:
    means: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row["kind"] == "held out" and row["tested_on"] in CRACK_SOURCES:
            means[row["preset"]].append(row["roc_auc"])
    return max(means, key=lambda preset: (np.mean(means[preset]), -list(means).index(preset)))


def preset_table(rows: list[dict]) -> str:
    lines = [
        "| preset | held-out Özgenel ROC-AUC | held-out DeepCrack ROC-AUC | mean | run time (each) |",
        "|---|---|---|---|---|",
    ]
    by_preset: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if row["kind"] == "held out" and row["tested_on"] in CRACK_SOURCES:
            by_preset[row["preset"]][row["tested_on"]] = row
    for preset, held in by_preset.items():
        aucs = [held[n]["roc_auc"] for n in CRACK_SOURCES if n in held]
        times = " / ".join(f"{held[n]['run_seconds'] / 60:.1f} min" for n in CRACK_SOURCES if n in held)
        cells = " | ".join(f"{held[n]['roc_auc']:.4f}" if n in held else "" for n in CRACK_SOURCES)
        lines.append(f"| {preset} | {cells} | {np.mean(aucs):.4f} | {times} |")
    return "\n".join(lines)


def domain_table(rows: list[dict], preset: str) -> str:
    lines = [
        f"| model ({preset}) | tested on | test patches | accuracy | ROC-AUC | AP | image AP (masks) "
        "| image AP (folders) | goal | s/epoch | train items |",
        "|" + "---|" * 11,
    ]
    for row in rows:
        if row["preset"] != preset:
            continue
        model = f"all but {row['tested_on']}" if row["kind"] == "held out" else "all sources"
        lines.append(
            f"| {model} | {row['tested_on']} | {row['test_items']} | {row['accuracy']:.4f} | {row['roc_auc']:.4f} "
            f"| {row['average_precision']:.4f} | {_cell(row.get('image_ap'))} | {_cell(row.get('folder_image_ap'))} "
            f"| {_goal(row)} | {row['sec_per_epoch']:.0f} | {row['train_items']} |"
        )
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _goal(row: dict) -> str:
    if row["kind"] == "held out" and row["tested_on"] in CRACK_SOURCES:
        return f"ROC-AUC >= {GOAL_ROC_AUC}: {'met' if row['roc_auc'] >= GOAL_ROC_AUC else 'NOT met'}"
    if row["tested_on"] == "magnetic" and "folder_image_ap" in row:
        met = row["folder_image_ap"] >= GOAL_IMAGE_AP
        return f"image AP >= {GOAL_IMAGE_AP}: {'met' if met else 'NOT met'}"
    return ""
