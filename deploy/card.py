"""The model card: what an exported ONNX file says about itself, in its ``metadata_props``.

Everything a runtime needs to use the model correctly travels inside the file: input size, channel order,
normalisation (already applied inside the graph, recorded for humans and audits), class names, the calibration
that turns a logit into a probability and a verdict, and a summary of how the model was trained and verified.
This module is torch-free and onnx-free: the runtime reads a card from ``session.get_modelmeta()`` with it.

Each field is stored under its own ``crackscope.<field>`` key as JSON, so tools can read one field without
parsing the rest, and calibration can be rewritten without touching the weights.

Example:
    >>> card = ModelCard(backbone="tf_efficientnet_lite0", input_size=224, feature_size=7)
    >>> ModelCard.from_metadata(card.to_metadata()) == card
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace

FORMAT = "crackscope-onnx"
FORMAT_VERSION = 1
PREFIX = "crackscope."
INPUT_NAME = "image"
OUTPUT_NAMES = ("logit", "cam")


class ModelCardError(ValueError):
    """A model whose metadata is missing, foreign or from an unsupported format version."""


@dataclass(frozen=True)
class Calibration:
    """Logit -> probability -> verdict.

    ``probability = sigmoid(logit / temperature)``; a probability below ``ok_below`` is OK, at or above
    ``defect_at_or_above`` is DEFECT, and the band between is REVIEW (a person decides). The identity calibration
    (temperature 1, both thresholds 0.5) has no REVIEW band.
    """

    temperature: float = 1.0
    ok_below: float = 0.5
    defect_at_or_above: float = 0.5
    method: str = "identity"  # how it was fitted, e.g. "temperature scaling on 1200 clear validation tiles"
    targets: dict[str, float] = field(default_factory=dict)  # e.g. {"escape_rate": 0.001, "false_reject_rate": 0.02}
    fitted_on: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ModelCardError(f"calibration temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.ok_below <= self.defect_at_or_above <= 1.0:
            raise ModelCardError(
                f"calibration thresholds must satisfy 0 <= ok_below <= defect_at_or_above <= 1, "
                f"got {self.ok_below} and {self.defect_at_or_above}"
            )


@dataclass(frozen=True)
class ModelCard:
    """Metadata of one exported model (see module docstring)."""

    backbone: str
    input_size: int
    feature_size: int  # side of the CAM grid (input_size / backbone stride)
    class_names: tuple[str, ...] = ("ok", "crack")
    channel_order: str = "BGR"
    input_dtype: str = "uint8"
    normalisation: dict[str, list[float]] = field(default_factory=dict)  # {"mean": [...], "std": [...]}, in-graph
    calibration: Calibration = field(default_factory=Calibration)
    precision: str = "fp32"  # fp32 | int8 | fp16
    training: dict[str, object] = field(default_factory=dict)  # data fingerprint, metrics, epochs, config
    verification: dict[str, object] = field(default_factory=dict)  # parity numbers measured at export
    crackscope_version: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_metadata(self) -> dict[str, str]:
        """``{"crackscope.<field>": json}`` for ONNX ``metadata_props``."""
        return {PREFIX + f.name: json.dumps(_plain(getattr(self, f.name)), sort_keys=True) for f in fields(self)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str = "model") -> ModelCard:
        """Read and validate a card; a missing or foreign model is a :class:`ModelCardError` naming the problem."""
        if PREFIX + "format" not in metadata:
            raise ModelCardError(
                f"{source}: not a crackscope model (no '{PREFIX}format' in its metadata); export it with "
                "'crackscope export'"
            )
        try:
            values = {k[len(PREFIX) :]: json.loads(v) for k, v in metadata.items() if k.startswith(PREFIX)}
        except json.JSONDecodeError as error:
            raise ModelCardError(f"{source}: corrupt crackscope metadata ({error})") from error
        if values.get("format") != FORMAT:
            raise ModelCardError(f"{source}: metadata format is {values.get('format')!r}, expected {FORMAT!r}")
        if values.get("format_version") != FORMAT_VERSION:
            raise ModelCardError(
                f"{source}: model card version {values.get('format_version')} is not supported by this crackscope "
                f"(reads version {FORMAT_VERSION}); re-export the model or upgrade crackscope"
            )
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in values and _required(f)]
        if missing:
            raise ModelCardError(f"{source}: model card lacks {', '.join(missing)}")
        values = {k: v for k, v in values.items() if k in known}
        values["class_names"] = tuple(values.get("class_names", ("ok", "crack")))
        try:
            values["calibration"] = Calibration(**values.get("calibration", {}))
            return cls(**values)
        except TypeError as error:
            raise ModelCardError(f"{source}: model card does not fit this crackscope ({error})") from error

    def with_calibration(self, calibration: Calibration) -> ModelCard:
        return replace(self, calibration=calibration)


def _required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _plain(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, tuple):
        return list(value)
    return value
