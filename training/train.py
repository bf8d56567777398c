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
from collections.abc import Callable, Iterator
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
from crackscope.training.augment import PRESETS, build_transform, eval_transform
from crackscope.training.backbones import CrackNet, build_model, get_spec
from crackscope.training.checkpoint import CheckpointHeader, save_checkpoint
from crackscope.training.data import (
    Clarity,
    DataConfig,
    Dataset,
    Sample,
    describe,
    load_samples,
    split_by_group,
    training_view,
)
from crackscope.training.dataset import PatchDataset, collate
from crackscope.training.evaluate import Metrics, Predictions, metrics_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` in the run folder."""

    data: str = ""
    out: str = "runs/train"
    val_data: str | None = None
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    input_size: int | None = None  # default: the backbone's
    dropout: float = 0.2
    augment: str = "heavy"
    epochs: int = 8  # total, both stages
    head_epochs: int = 1  # stage 1: frozen backbone
    batch_size: int = 32
    lr: float = 1e-3  # head learning rate; the backbone gets lr * backbone_lr_scale in stage 2
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1  # share of each stage's steps spent warming up
    patience: int = 3  # epochs without validation improvement before stopping
    steps_per_epoch: int | None = None  # cap on batches per epoch (quick runs); None = the whole set
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
    train_loss: float
    val_loss: float
    val_accuracy: float | None
    val_roc_auc: float | None
    seconds: float
    images_per_second: float


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

    def to_dict(self) -> dict[str, object]:
        """The contents of ``metrics.json``: validation metrics of the best epoch, then the run's history."""
        return {
            **self.validation.to_dict(),
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "history": [asdict(record) for record in self.history],
            "data": self.data,
        }


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
    """Train and validation samples (a grouped split of ``data`` unless ``val_data`` is given) and a summary."""
    train_set = load_samples(config.data, config.data_config)
    describe(train_set, emit)
    if config.val_data:
        val_set = load_samples(config.val_data, config.data_config)
        describe(val_set, emit)
        train, val = list(train_set.samples), list(val_set.samples)
        skipped = len(train_set.skipped) + len(val_set.skipped)
    else:
        train, val = split_by_group(train_set.samples, config.val_fraction, config.seed)
        skipped = len(train_set.skipped)
        emit(f"split by source image (seed {config.seed}): {len(train)} train, {len(val)} validation items")
    train = training_view(train, config.data_config)
    summary = {
        "train": _counts(train),
        "val": _counts(val),
        "skipped_unreadable": skipped,
        "fingerprint": data_fingerprint(train_set),
    }
    return train, val, summary


def _counts(samples: list[Sample]) -> dict[str, int]:
    return Dataset(Path("."), tuple(samples)).counts()


def data_fingerprint(dataset: Dataset) -> str:
    """sha256 over the sample list (paths relative to the root, boxes, targets): same data, same fingerprint."""
    digest = hashlib.sha256()
    for sample in sorted(dataset.samples, key=lambda s: s.key):
        relative = sample.path.relative_to(dataset.root)
        digest.update(f"{relative}|{sample.box}|{sample.target:.4f}\n".encode())
    return digest.hexdigest()


def make_loader(
    samples: list[Sample], config: TrainConfig, runtime: Runtime, *, train: bool
) -> tuple[DataLoader, DistributedSampler | None]:
    size = config.resolved_input_size()
    transform = build_transform(config.augment, size) if train else eval_transform(size)
    dataset = PatchDataset(samples, transform)
    sampler = None
    if runtime.distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=train, seed=config.seed
        )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=config.workers,
        collate_fn=collate,
        drop_last=train and len(dataset) > config.batch_size,
        pin_memory=runtime.device.type == "cuda",
        worker_init_fn=_worker_seed,
        persistent_workers=config.workers > 0,
        generator=torch.Generator().manual_seed(config.seed),
    )
    return loader, sampler


def positive_weight(samples: list[Sample]) -> float:
    """``n_ok / n_crack`` over clear training items, so each class weighs the same in the loss."""
    clear = [s.label for s in samples if s.clarity is Clarity.CLEAR]
    positives = sum(clear)
    return (len(clear) - positives) / positives if positives else 1.0


def stages(config: TrainConfig) -> list[Stage]:
    head = min(config.head_epochs, config.epochs)
    plan = [Stage("head", head, train_backbone=False), Stage("finetune", config.epochs - head, train_backbone=True)]
    return [stage for stage in plan if stage.epochs > 0]


def set_backbone_trainable(model: CrackNet, trainable: bool) -> None:
    for parameter in model.backbone_parameters():
        parameter.requires_grad_(trainable)


def set_train_mode(model: CrackNet, train_backbone: bool) -> None:
    """Head in train mode; a frozen backbone stays in eval mode so its BatchNorm statistics do not drift."""
    model.train()
    if not train_backbone:
        model.features.eval()


def make_optimizer(model: CrackNet, config: TrainConfig, stage: Stage) -> torch.optim.Optimizer:
    groups = [{"params": model.head_parameters(), "lr": config.lr}]
    if stage.train_backbone:
        groups.append({"params": model.backbone_parameters(), "lr": config.lr * config.backbone_lr_scale})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    """Linear warmup from 1% then cosine decay to 1% of each group's learning rate."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
) -> tuple[float, int]:
    """One pass over the training loader; returns (mean loss, images seen by this process)."""
    total_loss, seen = 0.0, 0
    limit = config.steps_per_epoch or len(loader)
    bar = tqdm(
        total=min(limit, len(loader)), desc=description, leave=False, disable=not (config.progress and runtime.is_main)
    )
    for step, batch in enumerate(loader):
        if step >= limit:
            break
        images = batch.images.to(runtime.device, non_blocking=True)
        targets = batch.targets.to(runtime.device, non_blocking=True)
        with autocast_for(runtime, config.amp):
            logits = model(images)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(targets)
        seen += len(targets)
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    bar.close()
    return total_loss / max(1, seen), seen


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


MIN_OPTIMISER_STEPS = 50  # below this a fine-tuned head has barely moved from its random start


def few_steps_warning(config: TrainConfig, train_items: int, batches_per_epoch: int) -> str | None:
    """A warning, saying how to fix it, when the whole run takes fewer than ``MIN_OPTIMISER_STEPS`` steps."""
    per_epoch = min(config.steps_per_epoch or batches_per_epoch, batches_per_epoch)
    steps = per_epoch * config.epochs
    if steps >= MIN_OPTIMISER_STEPS:
        return None
    fixes = ["a smaller --batch-size", "more --epochs", "more data"]
    if config.steps_per_epoch and config.steps_per_epoch < batches_per_epoch:
        fixes.insert(0, "a larger --steps-per-epoch")
    return (
        f"this run takes only {steps} optimiser step(s) ({per_epoch} per epoch x {config.epochs} epoch(s); "
        f"{train_items} training items in batches of {config.batch_size}), too few to train a useful model; "
        f"use {', '.join(fixes[:-1])} or {fixes[-1]} (at least {MIN_OPTIMISER_STEPS} steps)"
    )


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
    if config.augment not in PRESETS:
        raise ValueError(f"unknown augmentation preset {config.augment!r}; choose one of: {', '.join(PRESETS)}")
    with distributed_runtime(config.device) as runtime:
        return _train(config, runtime, split)


@dataclass(frozen=True)
class Fit:
    """Everything one training run's epochs share."""

    config: TrainConfig
    runtime: Runtime
    model: CrackNet
    train_loader: DataLoader
    train_sampler: DistributedSampler | None
    val_loader: DataLoader
    val_samples: list[Sample]
    loss_fn: nn.Module
    scaler: torch.amp.GradScaler
    run: RunFolder
    data_summary: dict
    emit: Callable[[str], None]


@dataclass(frozen=True)
class Best:
    """The best epoch so far (lowest validation loss on clear items) and how long ago it was."""

    val_loss: float = math.inf
    metrics: Metrics | None = None
    epoch: int | None = None
    stale: int = 0


def _train(config: TrainConfig, runtime: Runtime, split: Split | None) -> TrainResult:
    emit = print if runtime.is_main else (lambda _message: None)
    seed_everything(config.seed)
    run = RunFolder(Path(config.out))
    run.check()
    fit = _prepare(config, runtime, split, run, emit)  # reads and checks the data: nothing is written before this
    _warn_if_few_steps(fit)
    if run.earlier_files():
        emit(f"{run.path} holds an earlier run: its files are replaced when this run saves its first epoch")
    history: list[EpochRecord] = []
    best = Best()
    for stage in stages(config):
        records, best = _run_stage(fit, stage, len(history), best)
        history += records
    if best.metrics is None or best.epoch is None:
        raise RuntimeError(
            f"no epoch reached a finite validation loss (last: {history[-1].val_loss if history else 'none'}), so "
            f"nothing was saved in {run.path}; check the data and try a lower --lr"
        )
    emit(best.metrics.describe_parts())  # the part scoring chosen on the saved epoch's validation images
    result = TrainResult(
        run.path, run.checkpoint, best.metrics, best.epoch, best.val_loss, tuple(history), fit.data_summary
    )
    if runtime.is_main:
        run.finish(result)
        emit(f"best epoch {best.epoch}: wrote {run.checkpoint}, {run.metrics}, {run.config}")
    return result


def _warn_if_few_steps(fit: Fit) -> None:
    message = few_steps_warning(fit.config, len(fit.train_loader.dataset), len(fit.train_loader))
    if message and fit.runtime.is_main:
        log.warning(message)
        fit.emit(f"WARNING: {message}")


def _prepare(config: TrainConfig, runtime: Runtime, split: Split | None, run: RunFolder, emit) -> Fit:
    """Data, model, loaders and loss for a run."""
    if split is None:
        train_samples, val_samples, data_summary = load_split(config, emit)
    else:
        train_samples = training_view(split.train, config.data_config)
        val_samples, data_summary = list(split.val), split.summary
    model = build_model(
        config.backbone, pretrained=config.pretrained, dropout=config.dropout, input_size=config.input_size
    ).to(runtime.device, memory_format=torch.channels_last)
    emit(
        f"model: {config.backbone} ({'ImageNet weights' if config.pretrained else 'random init'}), "
        f"input {model.spec.input_size}px, device {runtime.device}, {runtime.world_size} process(es)"
    )
    train_loader, train_sampler = make_loader(train_samples, config, runtime, train=True)
    val_loader, _ = make_loader(val_samples, config, runtime, train=False)
    pos_weight = torch.tensor(positive_weight(train_samples), device=runtime.device)
    return Fit(
        config=config,
        runtime=runtime,
        model=model,
        train_loader=train_loader,
        train_sampler=train_sampler,
        val_loader=val_loader,
        val_samples=val_samples,
        loss_fn=nn.BCEWithLogitsLoss(pos_weight=pos_weight),
        scaler=torch.amp.GradScaler("cuda", enabled=runtime.device.type == "cuda" and config.amp),
        run=run,
        data_summary=data_summary,
        emit=emit,
    )


def _run_stage(fit: Fit, stage: Stage, epochs_done: int, best: Best) -> tuple[list[EpochRecord], Best]:
    """The epochs of one stage, with its own optimizer and schedule; stops early once fine-tuning stalls."""
    config, runtime, model = fit.config, fit.runtime, fit.model
    set_backbone_trainable(model, stage.train_backbone)
    wrapped = DistributedDataParallel(model) if runtime.distributed else model
    optimizer = make_optimizer(model, config, stage)
    steps = min(config.steps_per_epoch or len(fit.train_loader), len(fit.train_loader)) * stage.epochs
    scheduler = warmup_cosine(optimizer, steps, config.warmup_fraction)
    records = []
    for stage_epoch in range(stage.epochs):
        epoch = epochs_done + stage_epoch + 1
        if fit.train_sampler is not None:
            fit.train_sampler.set_epoch(epoch)
        set_train_mode(model, stage.train_backbone)
        started = time.perf_counter()
        train_loss, seen = train_one_epoch(
            wrapped,
            fit.train_loader,
            optimizer,
            scheduler,
            fit.loss_fn,
            fit.scaler,
            runtime,
            config,
            f"epoch {epoch}/{config.epochs} {stage.name}",
        )
        seconds = time.perf_counter() - started
        metrics, val_loss = validate(model, fit.val_loader, fit.val_samples, runtime, config)
        record = EpochRecord(
            stage.name,
            epoch,
            train_loss,
            val_loss,
            metrics.clear.accuracy,
            metrics.clear.roc_auc,
            seconds,
            seen * runtime.world_size / seconds,
        )
        records.append(record)
        improved = val_loss < best.val_loss
        fit.emit(_epoch_line(record, improved))
        if improved:
            if runtime.is_main:
                header = CheckpointHeader.for_model(
                    model, config=to_dict(config), metrics=metrics.to_dict(), data=fit.data_summary, epoch=epoch
                )
                fit.run.save_epoch(model, header, first=best.epoch is None)
            best = Best(val_loss, metrics, epoch, 0)
        else:
            best = replace(best, stale=best.stale + 1)
        if stage.train_backbone and best.stale >= config.patience and stage_epoch < stage.epochs - 1:
            fit.emit(f"early stop: validation loss has not improved for {best.stale} epochs")
            break
    return records, best


def _epoch_line(record: EpochRecord, improved: bool) -> str:
    accuracy = "n/a" if record.val_accuracy is None else f"{record.val_accuracy:.4f}"
    auc = "n/a" if record.val_roc_auc is None else f"{record.val_roc_auc:.4f}"
    return (
        f"epoch {record.epoch} [{record.stage}] train loss {record.train_loss:.4f} | val loss {record.val_loss:.4f} "
        f"acc {accuracy} auc {auc} | {record.seconds:.0f}s, {record.images_per_second:.1f} img/s"
        + (" *" if improved else "")
    )
