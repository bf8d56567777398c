"""Accuracy of crackscope's trainer on the real shared datasets, and training time per epoch on this machine.

Trains the default backbone (EfficientNet-Lite0, ImageNet weights) on each set, evaluates on a held-out test split
that the trainer never sees (not even for early stopping), and prints one table. Also scores the concrete model on
DeepCrack patches it was not trained on (cross-dataset), since a random split of Özgenel patches mixes patches of
one photo into train and test.

Each trained model is then exported the way ``crackscope export`` does it (fp32 and int8, each verified by its
parity gate; int8 calibrated on the job's training images only) into ``benchmarks/results/models/<job>.onnx`` and
``<job>.int8.onnx``, with ``<job>.split.json`` listing the held-out test images, so that ``benchmarks/frames.py``
and ``benchmarks/localization.py`` measure these very models on images they never saw.

Two more jobs cut magnetic-tile images into the runtime's 224 px tiles at their own resolution, labelled from the
masks: ``magnetic-tile-native`` (every image) and ``magnetic-tile-rare`` (every defect-free image, 24 defect images
in train + validation: about 1% crack tiles), each scored per tile and per image on the full held-out split, with
the head-only and fine-tuned validation AP and the run time beside it. ``magnetic-tile-weak`` cuts the same images
into the same tiles but trains on the images' class labels only (``mode: tiles``: each defective image's tiles are
weak, and the model learns which of them are defective); it is split like ``magnetic-tile-native`` and judged by its
masks, so the two rows compare a model trained with masks and one trained without. ``--set key=value`` overrides a
``TrainConfig`` field for every job (paired comparisons of trainer settings).

Run:
    python benchmarks/accuracy.py                     # every job; the two native-tile jobs take 10 min on 2 cores
    python benchmarks/accuracy.py --only magnetic-tile-native --only magnetic-tile-rare --set mask_weight=0
    python benchmarks/accuracy.py --only magnetic-tile-weak     # image labels only, judged by the masks
    python benchmarks/accuracy.py --only magnetic-tile --epochs 6
    python benchmarks/accuracy.py --export-only      # re-export the trained checkpoints (same split, current exporter)
    python benchmarks/accuracy.py --only magnetic-tile --epochs 1 --steps-per-epoch 2 --max-items 60   # smoke run
    python benchmarks/accuracy.py --domains          # leave-one-domain-out table and augmentation presets (domains.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import domains
import numpy as np
import torch
import yaml
from domains import DomainOptions
from saved_models import MODELS_DIR, HeldOut, model_path, write_held_out

from crackscope.config import from_dict, to_dict
from crackscope.labelled import (
    DataConfig,
    MaskLabelling,
    Sample,
    load_samples,
    split_by_group,
)
from crackscope.training.checkpoint import load_checkpoint
from crackscope.training.evaluate import Metrics, metrics_for, predict
from crackscope.training.train import Split, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
NATIVE_TILES = DataConfig(mode="mask", masks=MaskLabelling(patch_size=224, stride=168))
PATCHES_128 = DataConfig(masks=MaskLabelling(patch_size=128, stride=128))  # the tiles of the published figures


@dataclass(frozen=True)
class Job:
    name: str
    folder: str
    split_note: str
    input_size: int
    epochs: int | None = None  # None: the trainer's automatic schedule
    data_config: DataConfig = field(default_factory=DataConfig)
    augment: str | None = None  # None: the trainer's default preset
    lr: float = 1e-3
    cross: tuple[tuple[str, str, DataConfig], ...] = ()  # (label, folder, config) evaluated with this job's model
    rare_defect_images: int | None = None  # keep only this many defect images in train + validation (rare defects)
    # Split and judge by another layout of the same images: the images go to train / validation / test as that
    # layout splits them, and the test items are that layout's (a model trained on image labels judged by masks).
    judged_by: DataConfig | None = None


JOBS = (
    Job(
        "ozgenel-concrete",
        "ozgenel-concrete",
        "random (group-free: source photos unknown)",
        input_size=160,
        cross=(("DeepCrack 128px patches (cross-dataset)", "deepcrack-train", PATCHES_128),),
    ),
    # Defects can be a few pixels: heavy augmentation (dropout holes, blur, noise, JPEG) erases them, so light.
    Job(
        "magnetic-tile",
        "magnetic-tile",
        "grouped by image; whole image resized",
        input_size=224,
        augment="light",
        lr=3e-3,
    ),
    # Tiles cut from each image at its own resolution, as the runtime cuts frames (224 px, 25% overlap), labelled
    # from the masks: what training, evaluation and inspection all see. Trainer defaults otherwise.
    Job(
        "magnetic-tile-native",
        "magnetic-tile",
        "grouped by image; 224 px tiles at native resolution, labelled from masks",
        input_size=224,
        data_config=NATIVE_TILES,
    ),
    # Rare defects: every defect-free image but only 24 defect images in train + validation (under 1% of the
    # tiles are defective, as on a real line); the test split is the full held-out split, so image AP is measured
    # on as many defective parts as the other magnetic-tile jobs.
    Job(
        "magnetic-tile-rare",
        "magnetic-tile",
        "grouped by image; native tiles; 24 defect images among all free ones in train/val",
        input_size=224,
        data_config=NATIVE_TILES,
        rare_defect_images=24,
    ),
    # The same images labelled only as a whole (MT_Free good, every other class defective), cut into the same
    # native tiles and learned from them (multiple-instance learning); split like, and judged by, the masks of
    # magnetic-tile-native, so the two rows compare one model trained with masks and one without.
    Job(
        "magnetic-tile-weak",
        "magnetic-tile",
        "grouped by image as magnetic-tile-native; trained on image labels only; judged by the masks",
        input_size=224,
        data_config=DataConfig(mode="tiles", masks=NATIVE_TILES.masks),
        judged_by=NATIVE_TILES,
    ),
)


@dataclass(frozen=True)
class Options:
    """What the command line decides for every job."""

    data_root: Path
    out_root: Path
    models_dir: Path
    seed: int = 0
    epochs: int | None = None  # None: each job's own
    workers: int = 1
    steps_per_epoch: int | None = None  # cap on training batches per epoch (smoke runs)
    max_items: int | None = None  # a class-balanced subset of this many source images per job (smoke runs)
    export: bool = True
    export_only: bool = False  # re-export the checkpoints of an earlier run with the current exporter
    overrides: tuple[tuple[str, object], ...] = ()  # TrainConfig fields set from the command line (--set key=value)


def run(job: Job, options: Options) -> list[dict]:
    data_root, seed, workers = options.data_root, options.seed, options.workers
    dataset = load_samples(data_root / job.folder, job.data_config)
    samples = subset(dataset.samples, options.max_items, seed) if options.max_items else list(dataset.samples)
    judged = list(load_samples(data_root / job.folder, job.judged_by).samples) if job.judged_by else samples
    if options.max_items and job.judged_by:
        judged = [s for s in judged if s.group in {t.group for t in samples}]
    rest, test = split_by_group(judged, 0.2, seed)
    if job.rare_defect_images is not None:
        rest = keep_defect_images(rest, job.rare_defect_images, seed)
    train_part, val_part = split_by_group(rest, 0.125, seed + 1)
    if job.judged_by:  # the same images, in this job's own layout
        rest, train_part, val_part = (
            [s for s in samples if s.group in {t.group for t in part}] for part in (rest, train_part, val_part)
        )
    if options.export_only:  # the same seeded split, the checkpoint of an earlier run, the current exporter
        checkpoint = options.out_root / job.name / "model.pt"
        if not checkpoint.is_file():
            raise SystemExit(f"{checkpoint}: no trained model; run benchmarks/accuracy.py --only {job.name} first")
        save_models(checkpoint, rest, _held_out(job, options, test, train_part, val_part), options)
        return []
    summary = {"train": len(train_part), "val": len(val_part), "test": len(test), **dataset.summary()}
    config = TrainConfig(
        data=str(data_root / job.folder),
        out=str(options.out_root / job.name),
        input_size=job.input_size,
        epochs=options.epochs or job.epochs,
        lr=job.lr,
        **({"augment": job.augment} if job.augment else {}),
        seed=seed,
        workers=workers,
        patience=3,
        steps_per_epoch=options.steps_per_epoch,
        data_config=job.data_config,
    )
    config = from_dict(TrainConfig, {**to_dict(config), **dict(options.overrides)})
    print(
        f"\n=== {job.name}: {len(train_part)} train / {len(val_part)} val / {len(test)} test, "
        f"{config.input_size}px, {config.epochs or 'automatic'} epochs; defective train tiles "
        f"{defect_share(train_part):.2%} ===",
        flush=True,
    )
    started = time.time()
    result = train(config, Split(tuple(train_part), tuple(val_part), summary))
    minutes = (time.time() - started) / 60
    model, _ = load_checkpoint(result.checkpoint)
    finetune = [h for h in result.history if h.stage == "finetune"] or list(result.history)
    timing = {
        "sec_per_epoch": float(np.mean([h.seconds for h in finetune])),
        "train_img_per_s": float(np.mean([h.images_per_second for h in finetune])),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "run_minutes": minutes,
        "defect_share": defect_share(train_part),
        "head_val_ap": result.fine_tuning.head_ap,
        "finetune_val_ap": result.fine_tuning.best_finetune_ap,
    }
    predictions = predict(model, test, batch_size=64, workers=workers)
    base = {"train_items": len(train_part), "input_px": config.input_size, **timing}
    chosen = result.validation.image_level  # test images are scored the way validation chose
    test_metrics = metrics_for(predictions, chosen.scoring, "validation") if chosen else metrics_for(predictions)
    rows = [_row(job.name, job.split_note, test_metrics, base)]
    for label, folder, data_config in job.cross:
        cross = predict(model, load_samples(data_root / folder, data_config).samples, batch_size=64, workers=workers)
        rows.append(_row(label, f"trained on {job.name}", metrics_for(cross), {"input_px": config.input_size}))
    if options.export:
        save_models(result.checkpoint, rest, _held_out(job, options, test, train_part, val_part), options)
    return rows


def _held_out(job: Job, options: Options, test: list, train_part: list, val_part: list) -> HeldOut:
    return HeldOut(
        job=job.name,
        dataset=job.folder,
        seed=options.seed,
        input_size=job.input_size,
        test=tuple(sorted({s.group for s in test})),
        never_seen=tuple(folder for _, folder, _ in job.cross if folder != job.folder),
        counts={"train": len(train_part), "val": len(val_part), "test": len(test)},
    )


def keep_defect_images(samples: Sequence[Sample], keep: int, seed: int) -> list[Sample]:
    """Every image without a clear defect tile, and a seeded choice of ``keep`` images with one (rare defects)."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample)
    defective = sorted(name for name, members in groups.items() if any(s.label == 1 for s in members))
    kept = {defective[i] for i in np.random.default_rng(seed).permutation(len(defective))[:keep]}
    return [s for s in samples if s.group in kept or s.group not in set(defective)]


def defect_share(samples: Sequence[Sample]) -> float:
    return sum(s.label == 1 for s in samples) / max(1, len(samples))


def _row(name: str, split_note: str, metrics: Metrics, extra: dict) -> dict:
    clear = metrics.clear
    image = metrics.image_level.metrics if metrics.image_level else None
    return {
        "dataset": name,
        "split": split_note,
        "test_items": clear.n,
        "accuracy": clear.accuracy,
        "f1": clear.f1,
        "roc_auc": clear.roc_auc,
        "average_precision": clear.average_precision,
        "confusion_matrix": clear.to_dict()["confusion_matrix"],
        "image_ap": image.average_precision if image else None,
        "image_roc_auc": image.roc_auc if image else None,
        **extra,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| dataset | split | train (defective) | test (clear) | input | epochs (kept) | accuracy | F1 | ROC-AUC | AP "
        "| image AP | image ROC-AUC | val AP head / fine-tuned | s/epoch (fine-tune) | train img/s | run time |"
    )
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        sec = f"{r['sec_per_epoch']:.0f}" if "sec_per_epoch" in r else ""
        ips = f"{r['train_img_per_s']:.1f}" if "train_img_per_s" in r else ""
        train_items = f"{r['train_items']} ({r['defect_share']:.1%})" if "train_items" in r else ""
        epochs = f"{r['epochs_run']} ({r['best_epoch']})" if "epochs_run" in r else ""
        val_ap = f"{_fmt(r.get('head_val_ap'))} / {_fmt(r.get('finetune_val_ap'))}" if "head_val_ap" in r else ""
        minutes = f"{r['run_minutes']:.1f} min" if "run_minutes" in r else ""
        lines.append(
            f"| {r['dataset']} | {r['split']} | {train_items} | {r['test_items']} | {r['input_px']} "
            f"| {epochs} | {r['accuracy']:.4f} | {r['f1']:.4f} | {_fmt(r['roc_auc'])} "
            f"| {_fmt(r['average_precision'])} | {_fmt(r['image_ap'])} | {_fmt(r['image_roc_auc'])} | {val_ap} "
            f"| {sec} | {ips} | {minutes} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def subset(samples: Sequence[Sample], max_items: int, seed: int) -> list[Sample]:
    """All samples of a seeded, class-balanced choice of ``max_items`` source images (for smoke runs)."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample)
    rng = np.random.default_rng(seed)
    chosen: list[Sample] = []
    for label in (0, 1):
        names = sorted(name for name, members in groups.items() if max(s.label for s in members) == label)
        for index in rng.permutation(len(names))[: max(2, max_items // 2)]:
            chosen += groups[names[index]]
    return chosen


def save_models(checkpoint: Path, trained_on: Sequence[Sample], held_out: HeldOut, options: Options) -> None:
    """Export fp32 + int8 into the models folder and write the held-out record beside them.

    int8 ranges and the parity checks use tiles of the training and validation images only (a folder of links to
    them), so the test images stay unseen by everything that shaped the deployed file. Jobs trained on tiles cut
    from masks export fp32 only: int8 calibration reads class folders.
    """
    # Imported here so that a --no-export run does not load the export stack (onnx, quantisation).
    from crackscope.deploy.export import ExportConfig, export

    out = model_path(held_out.job, "fp32", options.models_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    model_path(held_out.job, "int8", options.models_dir).unlink(missing_ok=True)  # never pair a stale int8 file
    int8 = all(s.box is None for s in trained_on)
    with tempfile.TemporaryDirectory(prefix=f"crackscope-calib-{held_out.job}-") as scratch:
        calib = link_images(trained_on, options.data_root / held_out.dataset, Path(scratch) / held_out.dataset)
        started = time.time()
        result = export(
            ExportConfig(
                checkpoint=str(checkpoint),
                out=str(out),
                int8=int8,
                calib_data=str(calib) if int8 else None,
                seed=held_out.seed,
            )
        )
    print(f"\nexported {held_out.job} in {time.time() - started:.0f}s:\n{result.describe()}", flush=True)
    exported = {m.precision: m.path.name for m in result.models}
    path = write_held_out(replace(held_out, exported=exported, refused=result.refused), options.models_dir)
    print(f"held-out images of {held_out.job}: {path}", flush=True)


def link_images(samples: Sequence[Sample], root: Path, folder: Path) -> Path:
    """A folder of symbolic links to the samples' image files, laid out as under ``root`` (class folders kept)."""
    for path in sorted({s.path for s in samples}):
        link = folder / path.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    return folder


def _override(item: str) -> tuple[str, object]:
    key, _, value = item.partition("=")
    return key, yaml.safe_load(value)


def run_domains(args: argparse.Namespace) -> int:
    chosen = {"presets": tuple(args.presets or ()), "cap": args.cap, "input_size": args.input_size}
    options = DomainOptions(
        out=args.out, seed=args.seed, workers=max(args.workers, 2), **{k: v for k, v in chosen.items() if v}
    )
    return domains.run(Path(args.data), options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("CRACKSCOPE_DATA", str(REPO.parent / "shared" / "datasets")))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "accuracy"))
    parser.add_argument("--only", choices=[j.name for j in JOBS], action="append")
    parser.add_argument("--epochs", type=int, help="override every job's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--models", default=str(MODELS_DIR), help="where the exported models go (default: %(default)s)")
    parser.add_argument("--no-export", action="store_true", help="train and score only; write no ONNX models")
    parser.add_argument(
        "--export-only", action="store_true", help="re-export an earlier run's checkpoints (same split), no training"
    )
    parser.add_argument("--steps-per-epoch", type=int, help="smoke runs: cap training batches per epoch")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a TrainConfig field for every job, e.g. --set mask_weight=0 --set sampler=shuffle",
    )
    parser.add_argument("--max-items", type=int, help="smoke runs: a class-balanced subset of N source images per job")
    parser.add_argument(
        "--domains", action="store_true", help="leave-one-domain-out table and preset comparison instead (domains.py)"
    )
    parser.add_argument("--presets", nargs="+", help="--domains: augmentation presets to compare")
    parser.add_argument("--cap", type=int, help="--domains: most training items per source (default 1200)")
    parser.add_argument("--input-size", type=int, help="--domains: model input side (default 128)")
    args = parser.parse_args()
    if args.domains:
        return run_domains(args)
    options = Options(
        data_root=Path(args.data),
        out_root=Path(args.out),
        models_dir=Path(args.models),
        seed=args.seed,
        epochs=args.epochs,
        workers=args.workers,
        steps_per_epoch=args.steps_per_epoch,
        max_items=args.max_items,
        export=not args.no_export,
        export_only=args.export_only,
        overrides=tuple(_override(item) for item in args.set),
    )
    if not options.data_root.is_dir():
        print(f"datasets not found at {options.data_root} (set CRACKSCOPE_DATA)", file=sys.stderr)
        return 2
    started = time.time()
    rows = []
    for job in JOBS:
        if args.only and job.name not in args.only:
            continue
        rows += run(job, options)
    if options.export_only:
        return 0
    print(f"\n{table(rows)}\n")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"total {time.time() - started:.0f}s"
    )
    options.out_root.mkdir(parents=True, exist_ok=True)
    (options.out_root / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
