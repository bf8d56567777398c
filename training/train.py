"""Transfer-learning trainer: new head on a frozen backbone, then fine-tune everything.

Stage 1 trains only the new one-logit head while the pretrained feature extractor stays frozen (its BatchNorm
statistics too), so the random head cannot wreck the ImageNet features with large early gradients. Stage 2
unfreezes the backbone and fine-tunes it with a learning rate several times lower than the head's. Both stages use
AdamW with linear warmup then cosine decay and BCE-with-logits on soft targets (ambiguous items and split votes
give targets between 0 and 1), with ``pos_weight`` balancing rare cracks. The best epoch on the validation set is
kept; training stops early when validation stops improving.

The same code runs on one CPU, one GPU (AMP, channels_last) or many processes under ``torchrun``
(DistributedDataParallel; only rank 0 writes files).

Example:
    $ crackscope train --data ../shared/datasets/ozgenel-concrete --out runs/concrete --epochs 3
    $ torchrun --nproc_per_node=2 -m crackscope.cli train --data DIR --out runs/ddp
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from crackscope.config import replacing, to_dict, write_yaml
from crackscope.labelled import (
    Clarity,
    DataConfig,
    DataSource,
    LabelledSet,
    LabelledSources,
    Sample,
    class_counts,
    describe,
    for_tile,
    load_sources,
    split_by_source,
    training_view,
)
from crackscope.training.augment import (
    PRESETS,
    REFERENCE_PRESETS,
    Transform,
    build_transform,
    eval_transform,
    read_references,
)
from crackscope.training.backbones import CrackNet, build_model, get_spec
from crackscope.training.checkpoint import CheckpointHeader, save_checkpoint
from crackscope.training.context import ContextBatch, ContextDataset, collate_context
from crackscope.training.dataset import PatchDataset, collate
from crackscope.training.evaluate import Metrics, Predictions, metrics_for, predict
from crackscope.training.head import fit_head
from crackscope.training.sampling import EpochSampler, hardest, top_per_group
from crackscope.training.schedule import Budget, Clock, Horizon, Schedule, few_steps_warning, plan_schedule
from crackscope.training.supervision import cam_mask_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` in the run folder."""

    data: str | tuple[str | DataSource, ...] = ""  # one folder, or several sources (folders or DataSource)
    out: str = "runs/train"
    val_data: str | tuple[str | DataSource, ...] | None = None
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    input_size: int | None = None  # default: the backbone's
    dropout: float = 0.2
    heatmap_stride: int = 16  # CAM cell side in px: 16 adds a linear term on the stride-16 stage; 32: last map only
    augment: str = "colour"  # the preset that generalised best to held-out surfaces (benchmarks/domains.py)
    epochs: int | None = None  # total, both stages; None: enough fine-tuning epochs to reach target_steps
    head_epochs: int = 1  # stage 1: frozen backbone
    head_fit: str = "logistic"  # logistic: one feature pass + logistic regression (seconds); sgd: head_epochs of SGD
    batch_size: int | None = None  # per process; None: from the data size (8 / 16 / 32, see training.schedule)
    target_steps: int = 150  # fine-tuning optimiser steps the automatic schedule aims for
    max_epochs: int = 50  # most fine-tuning epochs the automatic schedule plans
    max_minutes: float | None = None  # time budget for the whole run; the schedule shrinks to fit it
    lr: float = 1e-3  # head learning rate; the backbone gets lr * backbone_lr_scale in stage 2
    backbone_lr_scale: float = 0.1
    freeze_batchnorm: bool = True  # fine-tuning keeps BatchNorm running statistics (small batches are noisy)
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1  # share of each stage's steps spent warming up
    patience: int = 3  # epochs without validation improvement before stopping
    select_by: str = "ap"  # the kept epoch: best validation AP on clear items (ties: lower loss), or "loss"
    steps_per_epoch: int | None = None  # cap on batches per epoch (quick runs); None = the whole set
    sampler: str = "auto"  # auto | shuffle | balanced (cracks drawn at positive_share, no pos_weight); see Balance
    positive_share: float = 0.3
    max_positive_weight: float = 4.0  # shuffle's pos_weight n_ok / n_crack is capped here; auto goes balanced above it
    grad_clip: float | None = None  # clip the gradient's global norm to this; None: no clipping
    mask_weight: float = 1.0  # heatmap-vs-mask loss weight (training.supervision) for items with masks; 0: off
    hard_negatives: float | None = None  # keep this hardest share of ok items each fine-tuning epoch; None: all
    weak_positives: int = 1  # tiles of each image labelled as a whole (data mode tiles) trained as its crack tiles
    context: int = 0  # px of surrounding surface in dense-mode training crops (a multiple of 32; 0: off)
    context_share: float = 0.25  # context crops per training batch, as a share of its tiles
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    progress: bool = True
    data_config: DataConfig = field(default_factory=DataConfig)

    def resolved_input_size(self) -> int:
        return self.input_size or get_spec(self.backbone).input_size


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    train_backbone: bool


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, distributed rank and world size."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class EpochRecord:
    stage: str
    epoch: int
    train_loss: float | None  # None for a logistic head fit
    val_loss: float
    val_accuracy: float | None
    val_roc_auc: float | None
    seconds: float
    images_per_second: float
    val_ap: float | None = None  # average precision on clear validation items: what selects the kept epoch
    train_mask_loss: float | None = None  # mean CAM-vs-mask loss of the batches with masks; None: no mask supervision


@dataclass(frozen=True)
class TrainResult:
    """What a run wrote, and how the saved (best) epoch scored on the validation set."""

    run_dir: Path
    checkpoint: Path
    validation: Metrics  # of the best epoch, the one in model.pt
    best_epoch: int
    best_val_loss: float
    history: tuple[EpochRecord, ...]
    data: dict[str, object]  # data summary: train/val counts, unreadable files skipped, fingerprint
    selected_by: str = "ap"  # what chose the kept epoch: ap (ties to the lower loss) or loss

    @property
    def fine_tuning(self) -> FineTuningReport:
        return fine_tuning_report(self.history)

    def to_dict(self) -> dict[str, object]:
        """The contents of ``metrics.json``: validation metrics of the best epoch, then the run's history."""
        return {
            **self.validation.to_dict(),
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "selected_by": self.selected_by,
            "fine_tuning": asdict(self.fine_tuning),
            "history": [asdict(record) for record in self.history],
            "data": self.data,
        }


@dataclass(frozen=True)
class FineTuningReport:
    """Whether fine-tuning beat the head-only epoch on validation AP, epoch by epoch."""

    head_ap: float | None
    best_finetune_ap: float | None
    below_head: tuple[int, ...]  # fine-tuning epochs whose validation AP ended below the head-only epoch's

    @property
    def helped(self) -> bool | None:
        if self.head_ap is None or self.best_finetune_ap is None:
            return None
        return self.best_finetune_ap > self.head_ap

    def describe(self) -> str | None:
        """One line for the run's summary; None when there is nothing to compare."""
        if self.helped is None:
            return None
        if self.helped:
            return (
                f"fine-tuning raised validation AP from {self.head_ap:.4f} (head only) to {self.best_finetune_ap:.4f}"
            )
        epochs = ", ".join(map(str, self.below_head)) or "none"
        return (
            f"fine-tuning did not beat the head-only epoch: validation AP {self.best_finetune_ap:.4f} at best against "
            f"{self.head_ap:.4f} (epochs below it: {epochs})"
        )


def fine_tuning_report(history: tuple[EpochRecord, ...] | list[EpochRecord]) -> FineTuningReport:
    head = [r.val_ap for r in history if r.stage == "head" and r.val_ap is not None]
    finetune = [r for r in history if r.stage == "finetune" and r.val_ap is not None]
    head_ap = head[-1] if head else None
    best = max((r.val_ap for r in finetune), default=None)
    below = tuple(r.epoch for r in finetune if head_ap is not None and r.val_ap < head_ap)
    return FineTuningReport(head_ap, best, below)


# --- set-up ---------------------------------------------------------------------------------------------------------


@contextmanager
def distributed_runtime(device: str) -> Iterator[Runtime]:
    """A :class:`Runtime`; joins the process group when started by ``torchrun`` (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local_rank}"
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but PyTorch sees no CUDA device; use --device cpu")
    if world_size > 1:
        torch_dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
    try:
        yield Runtime(torch_device, rank, world_size)
    finally:
        if world_size > 1:
            torch_dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_seed(worker_id: int) -> None:
    # Each DataLoader worker gets its own augmentation stream, derived from torch's per-worker seed.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def load_split(config: TrainConfig, emit) -> tuple[list[Sample], list[Sample], dict]:
    """Train and validation samples (a grouped split of each source of ``data`` unless ``val_data`` is given) and
    a summary with per-source counts."""
    train_set = load_sources(config.data, config.data_config)
    describe(train_set, emit)
    if config.val_data:
        val_set = load_sources(config.val_data, config.data_config)
        describe(val_set, emit)
        train, val = list(train_set.samples), list(val_set.samples)
        skipped = len(train_set.skipped) + len(val_set.skipped)
    else:
        train, val = split_by_source(train_set.samples, config.val_fraction, config.seed)
        skipped = len(train_set.skipped)
        within = " within each source" if len(train_set.sources) > 1 else ""
        emit(f"split by source image{within} (seed {config.seed}): {len(train)} train, {len(val)} validation items")
    train = train_set.training_view(train)
    summary = {
        "train": _counts(train),
        "val": _counts(val),
        "skipped_unreadable": skipped,
        "fingerprint": data_fingerprint(train_set),
        "sources": {
            name: {"train": _counts(train, name), "val": _counts(val, name)}
            for name in dict.fromkeys(s.source for s in (*train, *val))
        },
    }
    return train, val, summary


def _counts(samples: list[Sample], source: str | None = None) -> dict[str, int]:
    """Items per class, of one source's samples when ``source`` is given."""
    return class_counts(s for s in samples if source is None or s.source == source)


def data_fingerprint(dataset: LabelledSet | LabelledSources) -> str:
    """sha256 over the sample list (paths relative to the root, boxes, targets): same data, same fingerprint.

    With several sources each path is relative to its source's root and prefixed with the source's name, and the
    order of the sources does not matter; one source gives the same fingerprint as that folder alone.
    """
    if isinstance(dataset, LabelledSources):
        named = sorted(zip((s.name for s in dataset.sources), dataset.parts, strict=True), key=lambda pair: pair[0])
    else:
        named = [("", dataset)]
    digest = hashlib.sha256()
    for name, part in named:
        prefix = f"{name}/" if len(named) > 1 else ""
        for sample in sorted(part.samples, key=lambda s: s.key):
            relative = sample.path.relative_to(part.root)
            digest.update(f"{prefix}{relative}|{sample.box}|{sample.target:.4f}\n".encode())
    return digest.hexdigest()


def make_loader(
    samples: list[Sample],
    config: TrainConfig,
    runtime: Runtime,
    *,
    train: bool,
    batch_size: int,
    balanced: bool = False,
) -> tuple[DataLoader, EpochSampler | None]:
    """The training loader (augmented, drawn by an :class:`EpochSampler`, with cracks at ``positive_share`` when
    ``balanced``) or a plain validation loader."""
    size = config.resolved_input_size()
    transform = training_transform(samples, config, runtime) if train else eval_transform(size)
    dataset = PatchDataset(samples, transform, masks=train and config.mask_weight > 0)
    sampler = None
    if train:
        sampler = EpochSampler(
            [int(s.label == 1 or s.clarity is Clarity.AMBIGUOUS) for s in samples],
            balanced=balanced,
            positive_share=config.positive_share,
            negatives_kept=config.hard_negatives or 1.0,
            weak=[s.clarity is Clarity.WEAK for s in samples],
            weak_per_epoch=weak_kept(samples, config.weak_positives),
            seed=config.seed,
            rank=runtime.rank,
            world_size=runtime.world_size,
        )
    elif runtime.distributed:
        sampler = DistributedSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=False)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate,
        drop_last=train and len(sampler or dataset) > batch_size,
        pin_memory=runtime.device.type == "cuda",
        worker_init_fn=_worker_seed,
        persistent_workers=config.workers > 0,
    )
    return loader, sampler if train else None


def training_transform(samples: list[Sample], config: TrainConfig, runtime: Runtime) -> Transform:
    """The training augmentation; presets that histogram-match get references drawn from the training items."""
    references = read_references(samples, seed=config.seed) if config.augment in REFERENCE_PRESETS else ()
    # One augmentation stream per rank; DataLoader workers branch off it (see augment.Augmentation).
    seed = config.seed + runtime.rank
    return build_transform(config.augment, config.resolved_input_size(), references=references, seed=seed)


def positive_weight(samples: list[Sample], weak_positives: int = 1) -> float:
    """``n_ok / n_crack`` over clear training items, so each class weighs the same in the loss; the weak tiles an
    epoch trains on (``weak_positives`` per image labelled as a whole) count as cracks."""
    clear = [s.label for s in samples if s.clarity is Clarity.CLEAR]
    positives = sum(clear) + weak_kept(samples, weak_positives)
    negatives = len(clear) - sum(clear)
    return negatives / positives if positives else 1.0


def weak_kept(samples: Sequence[Sample], per_image: int) -> int:
    """How many weak tiles an epoch trains on: ``per_image`` of each image's (all of an image with fewer)."""
    tiles = Counter(s.group for s in samples if s.clarity is Clarity.WEAK)
    return sum(min(per_image, count) for count in tiles.values())


def selection_ap(metrics: Metrics, samples: Sequence[Sample]) -> float | None:
    """The validation AP that ranks epochs: the clear items', or the images' where validation holds weak tiles
    (their tiles' labels are unknown; their images' are not)."""
    if any(s.clarity is Clarity.WEAK for s in samples) and metrics.image_level is not None:
        return metrics.image_level.metrics.average_precision
    return metrics.clear.average_precision


@dataclass(frozen=True)
class Balance:
    """How a run balances cracks against ok items: the sampler it draws with and the loss's ``pos_weight``.

    ``sampler="auto"`` (the default) weights the loss by ``n_ok / n_crack`` while that ratio is at most
    ``max_positive_weight`` (4), and above it draws cracks at ``positive_share`` (30%) of every batch with the loss
    unweighted. Measured by ``benchmarks/fine_tuning.py`` on magnetic tile cut into native-resolution tiles with 24
    defect images kept (0.8% defective tiles, ratio 118): with the loss weighted by 118, fine-tuning oscillated (one
    crack in a batch of 16 made a batch loss of 20-90, the following ok batches 5-25; validation accuracy fell from
    0.998 to 0.79); with gradients clipped to norm 1 as well, it collapsed to calling everything ok (validation AP
    0.67 -> 0.20), and so it did with the weight capped at 10 and clipping (AP 0.006); with balanced draws at 30%
    the batch loss fell smoothly from 0.7 to 0.4 and validation ROC-AUC rose 0.86 -> 0.98. With one crack in most
    batches and none in the rest, a large weight swings the network on single items and a small one lets it forget
    cracks between them; showing it cracks in every batch, unweighted, does neither. Magnetic tile at native
    resolution with every image (18% crack or ambiguous tiles, ratio 9.3) fell from validation AP 0.79 (head only)
    to 0.46 when fine-tuned with the loss weighted by 9.3, hence the cap of 4; whole magnetic-tile images (ratio
    2.4) and the balanced Özgenel and DeepCrack sets trained well weighted.
    """

    sampler: str  # shuffle | balanced
    pos_weight: float
    reason: str

    def describe(self) -> str:
        return f"class balance: {self.reason}"


def choose_balance(samples: list[Sample], config: TrainConfig) -> Balance:
    ratio = positive_weight(samples, config.weak_positives)
    if config.sampler == "balanced" or (config.sampler == "auto" and ratio > config.max_positive_weight):
        why = (
            "as configured"
            if config.sampler == "balanced"
            else f"auto: n_ok / n_crack {ratio:.0f} > {config.max_positive_weight:g}"
        )
        return Balance(
            "balanced", 1.0, f"cracks drawn at {config.positive_share:.0%} of each batch, loss unweighted ({why})"
        )
    weight = min(ratio, config.max_positive_weight)
    capped = f", capped from {ratio:.1f}" if weight < ratio else ""
    return Balance(
        "shuffle", weight, f"every item once per epoch, crack loss weighted {weight:.2f} (n_ok / n_crack{capped})"
    )


def stages(schedule: Schedule) -> list[Stage]:
    plan = [
        Stage("head", schedule.head_epochs, train_backbone=False),
        Stage("finetune", schedule.finetune_epochs, train_backbone=True),
    ]
    return [stage for stage in plan if stage.epochs > 0]


def set_backbone_trainable(model: CrackNet, trainable: bool) -> None:
    for parameter in model.backbone_parameters():
        parameter.requires_grad_(trainable)


def set_train_mode(model: CrackNet, train_backbone: bool, freeze_batchnorm: bool = True) -> None:
    """Head in train mode; a frozen backbone stays in eval mode so its BatchNorm statistics do not drift.

    While fine-tuning, BatchNorm layers keep their ImageNet running statistics too (``freeze_batchnorm``; their
    scale and shift still learn): batch statistics of 8 or 16 crack patches are noisy and far from what the
    head was fitted on, and switching to them at the start of fine-tuning undoes the head fit (train loss jumped
    from ~0 to ~15 on 80 Özgenel patches in batches of 8 when they were not frozen).
    """
    model.train()
    if not train_backbone:
        model.features.eval()
    elif freeze_batchnorm:
        for module in model.features.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def make_optimizer(model: CrackNet, config: TrainConfig, stage: Stage) -> torch.optim.Optimizer:
    groups = [{"params": model.head_parameters(), "lr": config.lr}]
    if stage.train_backbone:
        groups.append({"params": model.backbone_parameters(), "lr": config.lr * config.backbone_lr_scale})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, horizon: Horizon, warmup_fraction: float):
    """Linear warmup from 1% then cosine decay to 1% of each group's learning rate at the horizon's end.

    The horizon is read at every step, so when a time budget shortens the stage the decay tightens to finish
    at the new end instead of stopping at a high learning rate.
    """
    warmup = max(1, int(horizon.planned * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        progress = min(1.0, (step - warmup) / max(1, horizon.total - warmup))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _unwrapped(model: nn.Module) -> CrackNet:
    return model.module if isinstance(model, DistributedDataParallel) else model


def autocast_for(runtime: Runtime, enabled: bool):
    if runtime.device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


# --- the loop -------------------------------------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: nn.Module,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
    config: TrainConfig,
    description: str,
    budget: Budget,
    context: Iterator[ContextBatch] | None = None,
) -> tuple[float, int, float | None]:
    """One pass over the training loader; returns (mean loss, images seen by this process, mean mask loss of the
    batches that had masks, or None when none had).

    With ``context``, every step also scores one batch of context crops the way the dense graph scores tiles and
    adds their loss (:mod:`crackscope.training.context`). Stops early at ``steps_per_epoch`` or when the stage's
    horizon (shortened by a time budget) is reached.
    """
    total_loss, seen, mask_losses = 0.0, 0, []
    limit = config.steps_per_epoch or len(loader)
    bar = tqdm(
        total=min(limit, len(loader)), desc=description, leave=False, disable=not (config.progress and runtime.is_main)
    )
    for step, batch in enumerate(loader):
        if step >= limit or budget.horizon.reached(scheduler.last_epoch):
            break
        images = batch.images.to(runtime.device, non_blocking=True)
        targets = batch.targets.to(runtime.device, non_blocking=True)
        supervised = config.mask_weight > 0 and bool(batch.has_mask.any())
        with autocast_for(runtime, config.amp):
            outputs = model(images, with_cam=supervised)
        logits, cam = outputs if supervised else (outputs, None)
        loss = loss_fn(logits.float(), targets)
        if cam is not None:
            masks = batch.masks.to(runtime.device, non_blocking=True)
            has_mask = batch.has_mask.to(runtime.device, non_blocking=True)
            mask_loss = cam_mask_loss(cam.float(), _unwrapped(model).fc.bias[0], masks, has_mask)
            mask_losses.append(mask_loss.detach())
            loss = loss + config.mask_weight * mask_loss
        if context is not None:
            crops = next(context)
            # The module itself, not its DistributedDataParallel wrapper: one DDP forward per backward. Gradients
            # of both passes meet in each parameter before its all-reduce hook fires, so ranks still agree.
            with autocast_for(runtime, config.amp):
                region_logits = _unwrapped(model)(
                    crops.images.to(runtime.device, non_blocking=True),
                    region=crops.regions.to(runtime.device, non_blocking=True),
                )
            loss = loss + loss_fn(region_logits.float(), crops.targets.to(runtime.device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        budget.after_step(scheduler.last_epoch)
        total_loss += loss.item() * len(targets)
        seen += len(targets)
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    bar.close()
    mask_loss = float(torch.stack(mask_losses).mean()) if mask_losses else None
    return total_loss / max(1, seen), seen, mask_loss


@torch.inference_mode()
def validate(
    model: CrackNet, loader: DataLoader, samples: list[Sample], runtime: Runtime, config: TrainConfig
) -> tuple[Metrics, float]:
    """Validation metrics (clear and ambiguous items apart) and the clear-item BCE loss.

    Under DDP every rank scores its shard and the logits are gathered so every rank sees the same metrics
    (and so takes the same early-stopping decision).
    """
    model.eval()
    indices, logits = [], []
    for batch in tqdm(loader, desc="validating", leave=False, disable=not (config.progress and runtime.is_main)):
        with autocast_for(runtime, config.amp):
            logits.append(model(batch.images.to(runtime.device, non_blocking=True)).float())
        indices.append(batch.indices.to(runtime.device))
    local_logits = torch.cat(logits) if logits else torch.zeros(0, device=runtime.device)
    local_indices = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64, device=runtime.device)
    all_logits, all_indices = _gather(local_logits, local_indices, runtime)
    values = np.zeros(len(samples), dtype=np.float32)
    values[all_indices.cpu().numpy()] = all_logits.cpu().numpy()
    predictions = Predictions(tuple(samples), values)
    metrics = metrics_for(predictions)
    targets, _ = predictions.subset(Clarity.CLEAR)
    clear = np.array([s.clarity is Clarity.CLEAR for s in samples])
    loss = nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(values[clear]), torch.from_numpy(targets).float()
    )
    return metrics, float(loss)


def _gather(logits: torch.Tensor, indices: torch.Tensor, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    if not runtime.distributed:
        return logits, indices
    sizes = [torch.zeros(1, dtype=torch.int64, device=logits.device) for _ in range(runtime.world_size)]
    torch_dist.all_gather(sizes, torch.tensor([len(logits)], device=logits.device))
    longest = int(max(s.item() for s in sizes))
    padded_logits = torch.zeros(longest, device=logits.device)
    padded_indices = torch.zeros(longest, dtype=torch.int64, device=logits.device)
    padded_logits[: len(logits)], padded_indices[: len(indices)] = logits, indices
    gathered_logits = [torch.zeros_like(padded_logits) for _ in range(runtime.world_size)]
    gathered_indices = [torch.zeros_like(padded_indices) for _ in range(runtime.world_size)]
    torch_dist.all_gather(gathered_logits, padded_logits)
    torch_dist.all_gather(gathered_indices, padded_indices)
    keep = [slice(0, int(s.item())) for s in sizes]
    return (
        torch.cat([g[k] for g, k in zip(gathered_logits, keep, strict=True)]),
        torch.cat([g[k] for g, k in zip(gathered_indices, keep, strict=True)]),
    )


@dataclass(frozen=True)
class RunFolder:
    """A run folder's files, written so that ``config.yaml`` and ``model.pt`` always come from the same run.

    Nothing is written before the run saves its first epoch, so a run that fails on bad data (or anything else
    before then) leaves the folder, and any earlier run in it, as it was. The first save deletes the earlier
    run's ``model.pt`` and ``metrics.json``, then writes ``config.yaml`` (from the checkpoint's own header), then
    ``model.pt``; later best epochs replace ``model.pt``; ``metrics.json`` comes last. Every file is written
    atomically, so a run stopped at any point leaves either no ``model.pt`` or one that matches ``config.yaml``.
    """

    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / "model.pt"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    def check(self) -> None:
        """Refuse an output that cannot be a run folder, before any work."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path}: --out must be a folder for model.pt, config.yaml and metrics.json")

    def earlier_files(self) -> list[Path]:
        return [path for path in (self.checkpoint, self.config, self.metrics) if path.exists()]

    def save_epoch(self, model: CrackNet, header: CheckpointHeader, *, first: bool) -> None:
        if first:
            self.metrics.unlink(missing_ok=True)
            self.checkpoint.unlink(missing_ok=True)
            write_yaml(header.config, self.config)
        save_checkpoint(model, header, self.checkpoint)

    def finish(self, result: TrainResult) -> None:
        with replacing(self.metrics) as partial:
            partial.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")


@dataclass(frozen=True)
class Split:
    """Samples to train and validate on, for callers that split data themselves (benchmarks, cross-validation)."""

    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    summary: dict


def train(config: TrainConfig, split: Split | None = None) -> TrainResult:
    """Run both stages; write ``model.pt`` (best epoch), ``config.yaml`` and ``metrics.json`` to ``config.out``.

    The data comes from ``config.data`` / ``config.val_data`` unless an explicit ``split`` is given.
    """
    check_choices(config)
    config = native_tiles(config)
    with distributed_runtime(config.device) as runtime:
        return _train(config, runtime, split)


def native_tiles(config: TrainConfig) -> TrainConfig:
    """The run's settings with mask datasets cut into tiles of the model's input size at their own resolution,
    with the runtime's overlap, wherever no tile size was set: the tiles ``crackscope inspect`` will see."""
    size = config.resolved_input_size()
    data, data_config = for_tile(config.data, config.data_config, size)
    val_data = for_tile(config.val_data, data_config, size)[0] if config.val_data else config.val_data
    return replace(config, data=data, val_data=val_data, data_config=data_config)


def check_choices(config: TrainConfig) -> None:
    """Refuse settings with no meaning before any data is read."""
    choices = {
        "augment": PRESETS,
        "head_fit": ("logistic", "sgd"),
        "sampler": ("auto", "shuffle", "balanced"),
        "select_by": ("ap", "loss"),
        "heatmap_stride": (16, 32),
    }
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise ValueError(
                f"{key}: unknown value {getattr(config, key)!r}; choose one of: {', '.join(map(str, allowed))}"
            )
    if config.hard_negatives is not None and not 0.0 < config.hard_negatives <= 1.0:
        raise ValueError(f"hard_negatives: expected a share in (0, 1], got {config.hard_negatives}")
    if not 0.0 < config.positive_share < 1.0:
        raise ValueError(f"positive_share: expected a share in (0, 1), got {config.positive_share}")
    if config.max_positive_weight < 1.0:
        raise ValueError(f"max_positive_weight: expected a weight of at least 1, got {config.max_positive_weight}")
    if not (math.isfinite(config.mask_weight) and config.mask_weight >= 0.0):
        raise ValueError(f"mask_weight: expected a non-negative number, got {config.mask_weight}")
    if config.grad_clip is not None and not (math.isfinite(config.grad_clip) and config.grad_clip > 0.0):
        raise ValueError(f"grad_clip: expected a positive number, got {config.grad_clip}")
    if isinstance(config.weak_positives, bool) or config.weak_positives < 1:
        raise ValueError(f"weak_positives: expected a whole number of at least 1, got {config.weak_positives}")
    if isinstance(config.context, bool) or config.context < 0 or config.context % 32:
        raise ValueError(f"context: expected 0 or a positive multiple of 32 px, got {config.context}")
    if not 0.0 < config.context_share <= 1.0:
        raise ValueError(f"context_share: expected a share in (0, 1], got {config.context_share}")
    if config.max_minutes is not None and config.max_minutes <= 0:
        raise ValueError(f"max_minutes: expected a positive number of minutes, got {config.max_minutes}")


@dataclass(frozen=True)
class Fit:
    """Everything one training run's epochs share."""

    config: TrainConfig
    runtime: Runtime
    model: CrackNet
    schedule: Schedule
    train_samples: list[Sample]
    train_loader: DataLoader
    sampler: EpochSampler
    val_loader: DataLoader
    val_samples: list[Sample]
    loss_fn: nn.Module
    scaler: torch.amp.GradScaler
    run: RunFolder
    data_summary: dict
    emit: Callable[[str], None]
    clock: Clock
    context: Iterator[ContextBatch] | None = None  # endless context crops for dense-mode training; None: off


@dataclass(frozen=True)
class Best:
    """The best epoch so far and how long ago it was.

    Epochs are ranked by average precision on the clear validation items, ties going to the lower validation
    loss: what a line cares about is how well cracks rank above good parts, and with rare defects the loss (an
    average dominated by thousands of easy ok items) can rise while the ranking improves, or fall while it
    collapses. ``select_by="loss"`` ranks by loss alone (the choice before AP), as does a validation set with one
    class, where AP is undefined.
    """

    val_loss: float = math.inf
    val_ap: float | None = None
    metrics: Metrics | None = None
    epoch: int | None = None
    stale: int = 0

    def beaten_by(self, record: EpochRecord, select_by: str) -> bool:
        if not math.isfinite(record.val_loss):
            return False
        if self.epoch is None:
            return True
        comparable = select_by == "ap" and record.val_ap is not None and self.val_ap is not None
        if comparable and record.val_ap != self.val_ap:
            return record.val_ap > self.val_ap
        return record.val_loss < self.val_loss


def _train(config: TrainConfig, runtime: Runtime, split: Split | None) -> TrainResult:
    emit = print if runtime.is_main else (lambda _message: None)
    clock = Clock(time.perf_counter(), config.max_minutes)
    seed_everything(config.seed)
    run = RunFolder(Path(config.out))
    run.check()
    fit = _prepare(config, runtime, split, run, emit, clock)  # reads and checks the data: nothing written before
    emit(f"schedule: {fit.schedule.describe()}")
    _warn(fit, few_steps_warning(fit.schedule, capped=config.steps_per_epoch is not None))
    if run.earlier_files():
        emit(f"{run.path} holds an earlier run: its files are replaced when this run saves its first epoch")
    history: list[EpochRecord] = []
    best = Best()
    for stage in stages(fit.schedule):
        records, best = _run_stage(fit, stage, len(history), best)
        history += records
        if clock.expired():
            break
    if best.metrics is None or best.epoch is None:
        raise RuntimeError(
            f"no epoch reached a finite validation loss (last: {history[-1].val_loss if history else 'none'}), so "
            f"nothing was saved in {run.path}; check the data and try a lower --lr"
        )
    emit(best.metrics.describe_parts())  # the part scoring chosen on the saved epoch's validation images
    result = TrainResult(
        run.path,
        run.checkpoint,
        best.metrics,
        best.epoch,
        best.val_loss,
        tuple(history),
        fit.data_summary,
        config.select_by,
    )
    if note := result.fine_tuning.describe():
        emit(note)
    if runtime.is_main:
        run.finish(result)
        emit(f"best epoch {best.epoch}: wrote {run.checkpoint}, {run.metrics}, {run.config}")
    return result


def _warn(fit: Fit, message: str | None) -> None:
    if message and fit.runtime.is_main:
        log.warning(message)
        fit.emit(f"WARNING: {message}")


def _prepare(config: TrainConfig, runtime: Runtime, split: Split | None, run: RunFolder, emit, clock: Clock) -> Fit:
    """Data, schedule, model, loaders and loss for a run."""
    if split is None:
        train_samples, val_samples, data_summary = load_split(config, emit)
    else:
        train_samples = training_view(split.train, config.data_config)
        val_samples, data_summary = list(split.val), split.summary
    model = build_model(
        config.backbone,
        pretrained=config.pretrained,
        dropout=config.dropout,
        input_size=config.input_size,
        heatmap_stride=config.heatmap_stride,
    ).to(runtime.device, memory_format=torch.channels_last)
    emit(
        f"model: {config.backbone} ({'ImageNet weights' if config.pretrained else 'random init'}), "
        f"input {model.spec.input_size}px, {model.heatmap_stride}px heatmap cells, device {runtime.device}, "
        f"{runtime.world_size} process(es)"
    )
    schedule = plan_schedule(
        items=-(-_epoch_items(train_samples, config) // runtime.world_size),
        batch_size=config.batch_size,
        epochs=config.epochs,
        head_epochs=config.head_epochs,
        target_steps=config.target_steps,
        max_epochs=config.max_epochs,
        steps_per_epoch=config.steps_per_epoch,
    )
    # Balanced draws already show the network cracks in every batch: weighting their loss again would count the
    # imbalance twice.
    balance = choose_balance(train_samples, config)
    emit(balance.describe())
    train_loader, sampler = make_loader(
        train_samples,
        config,
        runtime,
        train=True,
        batch_size=schedule.batch_size,
        balanced=balance.sampler == "balanced",
    )
    val_loader, _ = make_loader(val_samples, config, runtime, train=False, batch_size=max(32, schedule.batch_size))
    context = context_crops(train_samples, config, runtime, schedule.batch_size, balance, emit)
    return Fit(
        config=config,
        runtime=runtime,
        model=model,
        schedule=schedule,
        train_samples=train_samples,
        train_loader=train_loader,
        sampler=sampler,
        val_loader=val_loader,
        val_samples=val_samples,
        loss_fn=nn.BCEWithLogitsLoss(pos_weight=torch.tensor(balance.pos_weight, device=runtime.device)),
        scaler=torch.amp.GradScaler("cuda", enabled=runtime.device.type == "cuda" and config.amp),
        run=run,
        data_summary=data_summary,
        emit=emit,
        clock=clock,
        context=context,
    )


def context_crops(
    samples: list[Sample], config: TrainConfig, runtime: Runtime, batch_size: int, balance: Balance, emit
) -> Iterator[ContextBatch] | None:
    """Endless batches of context crops of the training tiles (clear and ambiguous ones cut from larger images),
    drawn like the training batches; None when ``config.context`` is 0 or no tile has a surrounding."""
    if not config.context:
        return None
    tiles = [s for s in samples if s.box is not None and s.clarity is not Clarity.WEAK]
    if not tiles:
        emit("context: no training item is a tile of a larger image, so there is no surrounding to train with")
        return None
    size = config.resolved_input_size()
    transform = training_transform(tiles, replace(config, input_size=size + 2 * config.context), runtime)
    positives = [int(s.label == 1 or s.clarity is Clarity.AMBIGUOUS) for s in tiles]
    sampler = EpochSampler(
        positives,
        balanced=balance.sampler == "balanced" and 0 < sum(positives) < len(positives),
        positive_share=config.positive_share,
        seed=config.seed + 1,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )
    per_batch = max(1, round(config.context_share * batch_size))
    loader = DataLoader(
        ContextDataset(tiles, transform, size, config.context),
        batch_size=per_batch,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate_context,
        drop_last=len(sampler) > per_batch,
        worker_init_fn=_worker_seed,
        persistent_workers=config.workers > 0,
    )
    emit(
        f"context: {per_batch} crop(s) of {size + 2 * config.context} px ({config.context} px around the tile) beside "
        f"each batch, scored as dense mode scores tiles"
    )
    return _endless(loader, sampler)


def _endless(loader: DataLoader, sampler: EpochSampler) -> Iterator[ContextBatch]:
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _epoch_items(samples: list[Sample], config: TrainConfig) -> int:
    """Items one epoch draws: every item, or the positives plus the kept share of ok items; of the weak tiles, the
    ones chosen per image."""
    weak = sum(1 for s in samples if s.clarity is Clarity.WEAK)
    items = len(samples) - weak + weak_kept(samples, config.weak_positives)
    negatives = sum(1 for s in samples if s.label == 0 and s.clarity is Clarity.CLEAR)
    if config.hard_negatives is None or not negatives:
        return items
    return items - negatives + max(1, round(config.hard_negatives * negatives))


def _run_stage(fit: Fit, stage: Stage, epochs_done: int, best: Best) -> tuple[list[EpochRecord], Best]:
    """The epochs of one stage, with its own optimizer and schedule; stops early once fine-tuning stalls."""
    if stage.name == "head" and fit.config.head_fit == "logistic":
        return _fit_head_stage(fit, epochs_done + 1, best)
    config, runtime, model = fit.config, fit.runtime, fit.model
    set_backbone_trainable(model, stage.train_backbone)
    wrapped = DistributedDataParallel(model) if runtime.distributed else model
    optimizer = make_optimizer(model, config, stage)
    horizon = Horizon(fit.schedule.steps_per_epoch * stage.epochs)
    scheduler = warmup_cosine(optimizer, horizon, config.warmup_fraction)
    records = []
    for stage_epoch in range(stage.epochs):
        if horizon.reached(scheduler.last_epoch) or fit.clock.expired():
            break
        epoch = epochs_done + stage_epoch + 1
        if stage.train_backbone and config.hard_negatives is not None:
            _mine_hard_negatives(fit)
        if fit.sampler.weak.any() and (stage.train_backbone or not len(fit.sampler.weak_kept)):
            _choose_weak_tiles(fit)
        fit.sampler.set_epoch(epoch)
        set_train_mode(model, stage.train_backbone, config.freeze_batchnorm)
        started = time.perf_counter()
        train_loss, seen, mask_loss = train_one_epoch(
            wrapped,
            fit.train_loader,
            optimizer,
            scheduler,
            fit.loss_fn,
            fit.scaler,
            runtime,
            config,
            f"epoch {epoch}/{fit.schedule.epochs} {stage.name}",
            Budget(horizon, fit.clock, stage.epochs - stage_epoch, fit.schedule.steps_per_epoch),
            fit.context,
        )
        seconds = time.perf_counter() - started
        metrics, val_loss = validate(model, fit.val_loader, fit.val_samples, runtime, config)
        fit.clock.validation_took(time.perf_counter() - started - seconds)
        record = EpochRecord(
            stage.name,
            epoch,
            train_loss,
            val_loss,
            metrics.clear.accuracy,
            metrics.clear.roc_auc,
            seconds,
            seen * runtime.world_size / seconds,
            selection_ap(metrics, fit.val_samples),
            mask_loss,
        )
        records.append(record)
        best = _keep_if_better(fit, record, metrics, best)
        if stage.train_backbone and best.stale >= config.patience and stage_epoch < stage.epochs - 1:
            what = "AP" if config.select_by == "ap" else "loss"
            fit.emit(f"early stop: validation {what} has not improved for {best.stale} epochs")
            break
    if horizon.total < fit.schedule.steps_per_epoch * stage.epochs:
        _warn(fit, fit.clock.shortened_warning(horizon.total))
    return records, best


def _keep_if_better(fit: Fit, record: EpochRecord, metrics: Metrics, best: Best) -> Best:
    """Log the epoch; save the model when its validation loss is the best so far."""
    improved = best.beaten_by(record, fit.config.select_by)
    fit.emit(_epoch_line(record, improved))
    if not improved:
        return replace(best, stale=best.stale + 1)
    if fit.runtime.is_main:
        header = CheckpointHeader.for_model(
            fit.model, config=to_dict(fit.config), metrics=metrics.to_dict(), data=fit.data_summary, epoch=record.epoch
        )
        fit.run.save_epoch(fit.model, header, first=best.epoch is None)
    return Best(record.val_loss, record.val_ap, metrics, record.epoch, 0)


def _fit_head_stage(fit: Fit, epoch: int, best: Best) -> tuple[list[EpochRecord], Best]:
    """Stage 1 as one logistic-regression fit on frozen features (every rank fits the same head)."""
    config, runtime = fit.config, fit.runtime
    started = time.perf_counter()
    head = fit_head(
        fit.model,
        fit.train_samples,
        batch_size=max(32, fit.schedule.batch_size),
        workers=config.workers,
        device=runtime.device,
        progress=config.progress and runtime.is_main,
        weak_positives=config.weak_positives,
        context=config.context,
    )
    if head.weak_selected:
        fit.sampler.keep_weak(np.asarray(head.weak_selected))
    seconds = time.perf_counter() - started
    fit.emit(head.describe())
    metrics, val_loss = validate(fit.model, fit.val_loader, fit.val_samples, runtime, config)
    fit.clock.validation_took(time.perf_counter() - started - seconds)
    record = EpochRecord(
        "head",
        epoch,
        None,
        val_loss,
        metrics.clear.accuracy,
        metrics.clear.roc_auc,
        seconds,
        len(fit.train_samples) / seconds,
        selection_ap(metrics, fit.val_samples),
    )
    return [record], _keep_if_better(fit, record, metrics, best)


def _rescore(fit: Fit, items: Sequence[int]) -> np.ndarray:
    """The current model's logits for these training items (evaluation transform, eval mode)."""
    return predict(
        fit.model,
        [fit.train_samples[i] for i in items],
        batch_size=max(32, fit.schedule.batch_size),
        workers=fit.config.workers,
        device=str(fit.runtime.device),
        progress=fit.config.progress and fit.runtime.is_main,
    ).logits


def _mine_hard_negatives(fit: Fit) -> None:
    """Rescore the clear ok items with the current model and keep the hardest share for the next epoch."""
    negatives = [i for i, s in enumerate(fit.train_samples) if s.label == 0 and s.clarity is Clarity.CLEAR]
    if not negatives:
        return
    scores = _rescore(fit, negatives)
    kept = np.asarray(negatives)[hardest(scores, fit.config.hard_negatives or 1.0)]
    fit.sampler.keep_negatives(kept)
    fit.emit(
        f"hard negatives: kept {len(kept)} of {len(negatives)} ok items (logits {scores.min():.2f} to "
        f"{scores.max():.2f}; kept from {scores[hardest(scores, fit.config.hard_negatives or 1.0)[-1]]:.2f})"
    )


def _choose_weak_tiles(fit: Fit) -> None:
    """Rescore the weak tiles with the current model and train this epoch on each image's top tiles as cracks."""
    weak = np.flatnonzero(fit.sampler.weak)
    if not len(weak):
        return
    scores = _rescore(fit, weak)
    chosen = weak[top_per_group(scores, [fit.train_samples[i].group for i in weak], fit.config.weak_positives)]
    changed = len(np.setdiff1d(chosen, fit.sampler.weak_kept))
    fit.sampler.keep_weak(chosen)
    fit.emit(
        f"weak tiles: {len(chosen)} of {len(weak)} taken as crack ({fit.config.weak_positives} per image, by the "
        f"current model; {changed} changed since the last choice)"
    )


def _epoch_line(record: EpochRecord, improved: bool) -> str:
    accuracy = "n/a" if record.val_accuracy is None else f"{record.val_accuracy:.4f}"
    auc = "n/a" if record.val_roc_auc is None else f"{record.val_roc_auc:.4f}"
    ap = "n/a" if record.val_ap is None else f"{record.val_ap:.4f}"
    train_loss = "logistic fit |" if record.train_loss is None else f"train loss {record.train_loss:.4f} |"
    if record.train_mask_loss is not None:
        train_loss = f"{train_loss[:-2]} (mask {record.train_mask_loss:.4f}) |"
    return (
        f"epoch {record.epoch} [{record.stage}] {train_loss} val loss {record.val_loss:.4f} "
        f"acc {accuracy} auc {auc} ap {ap} | {record.seconds:.0f}s, {record.images_per_second:.1f} img/s"
        + (" *" if improved else "")
    )
