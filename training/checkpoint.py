"""A run's ``model.pt``: the one place that saves and loads it.

The file is a ``torch.save`` of a plain dict: the weights (``state_dict``) plus a header that says everything else
the model needs to be rebuilt, evaluated and exported (backbone, input size, preprocessing, class names, the
resolved training config, validation metrics, a data summary and the epoch). The header is a typed
:class:`CheckpointHeader` in code and plain values on disk, so a checkpoint never depends on the classes of the
version that wrote it. Saves are atomic: a reader (or a crash) never sees half a checkpoint.

Example:
    >>> from crackscope.training.checkpoint import load_checkpoint
    >>> model, header = load_checkpoint("runs/demo/model.pt")   # doctest: +SKIP
    >>> header.backbone, header.input_size, header.epoch          # doctest: +SKIP
    ('tf_efficientnet_lite0', 96, 4)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import crackscope
from crackscope.config import from_dict, replacing, to_dict
from crackscope.inspect.parts import MAX, PartScoring
from crackscope.labelled import CLASS_NAMES, DataConfig
from crackscope.training.backbones import CrackNet, build_model

CHECKPOINT_FORMAT = "crackscope-checkpoint/1"


@dataclass(frozen=True)
class Preprocessing:
    """What the model does to its input before the backbone (recorded for people; the model does it itself)."""

    input: str = "uint8 BGR [N,H,W,3]"
    resize: str = "area"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class CheckpointHeader:
    """Everything in ``model.pt`` but the weights."""

    format: str
    crackscope_version: str  # the version that trained the model
    backbone: str
    input_size: int
    dropout: float
    preprocessing: Preprocessing
    class_names: tuple[str, ...]  # index = label
    config: dict[str, Any]  # the resolved training config, as in the run's config.yaml
    metrics: dict[str, Any]  # validation metrics of the saved epoch, as in metrics.json
    data: dict[str, Any]  # data summary: item counts, unreadable files skipped, fingerprint
    epoch: int | None  # the saved (best) epoch

    @classmethod
    def for_model(
        cls,
        model: CrackNet,
        *,
        config: Mapping[str, Any],
        metrics: Mapping[str, Any],
        data: Mapping[str, Any],
        epoch: int | None,
    ) -> CheckpointHeader:
        """The header of ``model`` as trained now, by this version of crackscope."""
        spec = model.spec
        return cls(
            format=CHECKPOINT_FORMAT,
            crackscope_version=crackscope.__version__,
            backbone=spec.name,
            input_size=spec.input_size,
            dropout=float(model.dropout.p),
            preprocessing=Preprocessing(mean=tuple(spec.mean), std=tuple(spec.std)),
            class_names=tuple(CLASS_NAMES),
            config=dict(config),
            metrics=dict(metrics),
            data=dict(data),
            epoch=epoch,
        )

    def data_config(self) -> DataConfig:
        """How the training data was read (layout, class map, mask thresholds), to read test data alike."""
        saved = self.config.get("data_config", {})
        return from_dict(DataConfig, {k: v for k, v in saved.items() if k in ("mode", "class_map", "masks")})

    def part_scoring(self) -> PartScoring:
        """How a part is scored from its tiles, as training chose it on validation images (``metrics.part_scoring``).

        Checkpoints trained before part scoring, or on data with one item per image, store none: ``max``, the
        runtime's behaviour before part scoring existed.
        """
        saved = self.metrics.get("part_scoring")
        return MAX if saved is None else PartScoring.from_dict(saved, "metrics.part_scoring")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (no crackscope classes), as stored in the file."""
        return to_dict(self)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any], source: str) -> CheckpointHeader:
        """The header of a loaded checkpoint dict; a clear ``ValueError`` for anything that is not one."""
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{source}: not a crackscope checkpoint (expected format {CHECKPOINT_FORMAT})")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in saved]
        if missing:
            raise ValueError(f"{source}: damaged crackscope checkpoint (missing {', '.join(missing)})")
        try:
            header = from_dict(cls, {name: saved[name] for name in names}, "header")
            header.part_scoring()  # a damaged stored scoring fails here, naming the checkpoint
        except ValueError as error:  # a ConfigError (wrong type) or a bad part scoring
            raise ValueError(f"{source}: damaged crackscope checkpoint ({error})") from error
        return header


def save_checkpoint(model: CrackNet, header: CheckpointHeader, path: str | os.PathLike) -> Path:
    """Write the weights and ``header`` to ``path`` atomically: the old file stays until the new one is whole."""
    path = Path(path)
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    with replacing(path) as partial:
        torch.save({**header.to_dict(), "state_dict": state_dict}, partial)
    return path


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CrackNet, CheckpointHeader]:
    """The model of a ``model.pt`` written by ``crackscope train`` (in eval mode, on ``device``) and its header."""
    path = Path(path)
    saved = _read(path)
    header = CheckpointHeader.from_saved(saved, str(path))
    if not isinstance(saved.get("state_dict"), Mapping):
        raise ValueError(f"{path}: damaged crackscope checkpoint (no state_dict)")
    # Checkpoints from before the stride-16 heatmap term have no ``fine.*`` weights: they keep the 32 px heatmap.
    stride = 16 if any(str(name).startswith("fine.") for name in saved["state_dict"]) else 32
    model = build_model(
        header.backbone,
        pretrained=False,
        dropout=header.dropout,
        input_size=header.input_size,
        heatmap_stride=stride,
    )
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), header


def _read(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint does not exist")
    try:
        # weights_only=False: the checkpoint holds plain metadata next to the tensors; load only files you trust
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike for a foreign file
        raise ValueError(f"{path}: not a crackscope checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(saved, Mapping):
        raise ValueError(f"{path}: not a crackscope checkpoint (expected format {CHECKPOINT_FORMAT})")
    return saved
