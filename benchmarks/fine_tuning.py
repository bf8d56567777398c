"""Why fine-tuning diverged on rare defects: the loss of every optimiser step under several class-balance settings.

Magnetic tile, cut into the runtime's 224 px tiles at native resolution and labelled from the masks, with every
defect-free image but only 24 defect images kept (grouped splits: 20% of the images held out first, then 20% of the
rest for validation; about 0.8% clear crack tiles in training). Each variant trains with the trainer's automatic
schedule (one head fit, one fine-tuning epoch of about 160 steps) and prints the validation metrics of both epochs
and the loss of every fifth optimiser step, from which the README's account of the class-balance default is taken:

- ``weighted``: every tile once per epoch, crack loss weighted n_ok / n_crack (118): the previous default;
- ``weighted-clip``: the same with the gradient's global norm clipped to 1;
- ``capped-clip``: the weight capped at 10, gradient clipped to 1;
- ``balanced``: cracks drawn at 30% of each batch, loss unweighted: today's default for such data.

Mask supervision is off in every variant, so only the class balance differs. The step losses are recorded by
wrapping the loss function the trainer is given; nothing else about the run changes.

Run:
    python benchmarks/fine_tuning.py                         # all four, about 20 min on 2 idle CPU cores
    python benchmarks/fine_tuning.py --variants balanced weighted
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from crackscope.labelled import DataConfig, MaskLabelling, Sample, class_counts, load_samples, split_by_group
from crackscope.training import train as trainer

REPO = Path(__file__).resolve().parents[1]
NATIVE_TILES = DataConfig(mode="mask", masks=MaskLabelling(patch_size=224, stride=168))
VARIANTS = {
    "weighted": {"sampler": "shuffle", "max_positive_weight": 1e6},
    "weighted-clip": {"sampler": "shuffle", "max_positive_weight": 1e6, "grad_clip": 1.0},
    "capped-clip": {"sampler": "shuffle", "max_positive_weight": 10.0, "grad_clip": 1.0},
    "balanced": {"sampler": "balanced", "positive_share": 0.3},
}


def rare_split(root: Path, defect_images: int = 24, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Training and validation tiles: every defect-free image and ``defect_images`` defect images (seeded)."""
    samples = list(load_samples(root, NATIVE_TILES).samples)
    rest, _test = split_by_group(samples, 0.2, seed)
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in rest:
        groups[sample.group].append(sample)
    defect = sorted(name for name in groups if not name.startswith("MT_Free"))
    random.Random(seed).shuffle(defect)
    keep = {name for name in groups if name.startswith("MT_Free")} | set(defect[:defect_images])
    return split_by_group([s for s in rest if s.group in keep], 0.2, seed + 1)


class StepLosses(torch.nn.Module):
    """The trainer's loss function, recording each step's loss."""

    def __init__(self, loss_fn: torch.nn.Module, steps: list[float]) -> None:
        super().__init__()
        self.loss_fn, self.steps = loss_fn, steps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(logits, targets)
        self.steps.append(float(loss.detach()))
        return loss


def run_variant(name: str, train: list[Sample], val: list[Sample], out: Path) -> None:
    steps: list[float] = []
    one_epoch = trainer.train_one_epoch

    def recorded(model, loader, optimizer, scheduler, loss_fn, *args, **kwargs):
        return one_epoch(model, loader, optimizer, scheduler, StepLosses(loss_fn, steps), *args, **kwargs)

    config = trainer.TrainConfig(
        out=str(out / name), input_size=224, progress=False, workers=2, mask_weight=0.0, **VARIANTS[name]
    )
    print(f"\n=== {name}: {VARIANTS[name]} ===", flush=True)
    started = time.time()
    trainer.train_one_epoch = recorded
    try:
        result = trainer.train(config, trainer.Split(tuple(train), tuple(val), {}))
    finally:
        trainer.train_one_epoch = one_epoch
    for record in result.history:
        train_loss = "logistic fit" if record.train_loss is None else f"train loss {record.train_loss:.4f}"
        print(
            f"  epoch {record.epoch} [{record.stage}] {train_loss} | val loss {record.val_loss:.4f} "
            f"acc {record.val_accuracy:.4f} ROC-AUC {record.val_roc_auc:.4f} AP {record.val_ap:.4f}"
        )
    print("  step losses (every 5th): " + " ".join(f"{i}:{loss:.3f}" for i, loss in enumerate(steps) if i % 5 == 0))
    print(f"  {time.time() - started:.0f}s, load {os.getloadavg()[0]:.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("CRACKSCOPE_DATA", str(REPO.parent / "shared" / "datasets")))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    root = Path(args.data) / "magnetic-tile"
    if not root.is_dir():
        print(f"{root}: not found (set CRACKSCOPE_DATA)", file=sys.stderr)
        return 2
    train, val = rare_split(root)
    print(f"train {class_counts(train)}, validation {class_counts(val)}")
    with tempfile.TemporaryDirectory(prefix="crackscope-fine-tuning-") as scratch:
        for name in args.variants:
            run_variant(name, train, val, Path(scratch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
