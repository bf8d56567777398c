"""Accuracy of crackscope's trainer on the real shared datasets, and training time per epoch on this machine.

Trains the default backbone (EfficientNet-Lite0, ImageNet weights) on each set, evaluates on a held-out test split
that the trainer never sees (not even for early stopping), and prints one table. Also scores the concrete model on
DeepCrack patches it was not trained on (cross-dataset), since a random split of Özgenel patches mixes patches of
one photo into train and test.

Run:
    python benchmarks/accuracy.py                     # both sets, about 20 min on 2 idle CPU cores
    python benchmarks/accuracy.py --only magnetic-tile --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from crackscope.training.checkpoint import load_checkpoint
from crackscope.training.data import (
    DataConfig,
    load_samples,
    split_by_group,
)
from crackscope.training.evaluate import Metrics, metrics_for, predict
from crackscope.training.train import Split, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Job:
    name: str
    folder: str
    split_note: str
    input_size: int
    epochs: int
    data_config: DataConfig = field(default_factory=DataConfig)
    augment: str = "heavy"
    lr: float = 1e-3
    cross: tuple[tuple[str, str, DataConfig], ...] = ()  # (label, folder, config) evaluated with this job's model


JOBS = (
    Job(
        "ozgenel-concrete",
        "ozgenel-concrete",
        "random (group-free: source photos unknown)",
        input_size=160,
        epochs=4,
        cross=(("DeepCrack 128px patches (cross-dataset)", "deepcrack-train", DataConfig()),),
    ),
    # Defects can be a few pixels: heavy augmentation (dropout holes, blur, noise, JPEG) erases them, so light.
    Job(
        "magnetic-tile",
        "magnetic-tile",
        "grouped by image; whole image resized",
        input_size=224,
        epochs=12,
        augment="light",
        lr=3e-3,
    ),
)


def run(job: Job, data_root: Path, out_root: Path, seed: int, epochs: int | None, workers: int) -> list[dict]:
    dataset = load_samples(data_root / job.folder, job.data_config)
    rest, test = split_by_group(dataset.samples, 0.2, seed)
    train_part, val_part = split_by_group(rest, 0.125, seed + 1)
    summary = {"train": len(train_part), "val": len(val_part), "test": len(test), **dataset.summary()}
    config = TrainConfig(
        data=str(data_root / job.folder),
        out=str(out_root / job.name),
        input_size=job.input_size,
        epochs=epochs or job.epochs,
        head_epochs=1,
        batch_size=32,
        lr=job.lr,
        augment=job.augment,
        seed=seed,
        workers=workers,
        patience=3,
        data_config=job.data_config,
    )
    print(
        f"\n=== {job.name}: {len(train_part)} train / {len(val_part)} val / {len(test)} test, "
        f"{config.input_size}px, {config.epochs} epochs ===",
        flush=True,
    )
    result = train(config, Split(tuple(train_part), tuple(val_part), summary))
    model, _ = load_checkpoint(result.checkpoint)
    finetune = [h for h in result.history if h.stage == "finetune"] or list(result.history)
    timing = {
        "sec_per_epoch": float(np.mean([h.seconds for h in finetune])),
        "train_img_per_s": float(np.mean([h.images_per_second for h in finetune])),
        "epochs_run": len(result.history),
    }
    predictions = predict(model, test, batch_size=64, workers=workers)
    base = {"train_items": len(train_part), "input_px": config.input_size, **timing}
    rows = [_row(job.name, job.split_note, metrics_for(predictions), base)]
    for label, folder, data_config in job.cross:
        cross = predict(model, load_samples(data_root / folder, data_config).samples, batch_size=64, workers=workers)
        rows.append(_row(label, f"trained on {job.name}", metrics_for(cross), {"input_px": config.input_size}))
    return rows


def _row(name: str, split_note: str, metrics: Metrics, extra: dict) -> dict:
    clear = metrics.clear
    return {
        "dataset": name,
        "split": split_note,
        "test_items": clear.n,
        "accuracy": clear.accuracy,
        "f1": clear.f1,
        "roc_auc": clear.roc_auc,
        "average_precision": clear.average_precision,
        "confusion_matrix": clear.to_dict()["confusion_matrix"],
        **extra,
    }


def table(rows: list[dict]) -> str:
    head = (
        "| dataset | split | train | test (clear) | input | epochs | accuracy | F1 | ROC-AUC | AP "
        "| s/epoch (fine-tune) | train img/s |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        sec = f"{r['sec_per_epoch']:.0f}" if "sec_per_epoch" in r else ""
        ips = f"{r['train_img_per_s']:.1f}" if "train_img_per_s" in r else ""
        lines.append(
            f"| {r['dataset']} | {r['split']} | {r.get('train_items', '')} | {r['test_items']} | {r['input_px']} "
            f"| {r.get('epochs_run', '')} | {r['accuracy']:.4f} | {r['f1']:.4f} | {r['roc_auc']:.4f} "
            f"| {r['average_precision']:.4f} | {sec} | {ips} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("CRACKSCOPE_DATA", str(REPO.parent / "shared" / "datasets")))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "accuracy"))
    parser.add_argument("--only", choices=[j.name for j in JOBS], action="append")
    parser.add_argument("--epochs", type=int, help="override every job's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    data_root, out_root = Path(args.data), Path(args.out)
    if not data_root.is_dir():
        print(f"datasets not found at {data_root} (set CRACKSCOPE_DATA)", file=sys.stderr)
        return 2
    started = time.time()
    rows = []
    for job in JOBS:
        if args.only and job.name not in args.only:
            continue
        rows += run(job, data_root, out_root, args.seed, args.epochs, args.workers)
    print(f"\n{table(rows)}\n")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"total {time.time() - started:.0f}s"
    )
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
