"""The model card: what an exported ONNX file says about itself, in its ``metadata_props``.

Everything a runtime needs to use the model correctly travels inside the file: input size, channel order,
normalisation (already applied inside the graph, recorded for humans and audits), class names, the calibration
that turns a logit into a probability and a verdict, how a frame is scored from its tiles (the part scoring), and
a summary of how the model was trained and verified. This module is torch-free: the runtime reads a card from
``session.get_modelmeta()`` with it, and :func:`read_card` / :func:`write_calibration` read and rewrite a file's
card with the ``onnx`` package alone (so ``crackscope calibrate`` runs on an edge box without PyTorch).

Each field is stored under its own ``crackscope.<field>`` key as JSON, so tools can read one field without
parsing the rest, and calibration can be rewritten without touching the weights.

``graph`` says which of the two graphs a file holds: ``tiles`` (``model.onnx``: tiles of ``input_size`` -> logit and
CAM) or ``dense`` (``model.dense.onnx``: whole frames -> the CAM on the frame's 32 px grid and the head's bias, see
:mod:`crackscope.inspect.dense`); a card without it is a tile graph's.

Format version 2 added ``part_scoring``. Version 1 cards still load (their frames are scored by the highest tile
probability, as version 1 runtimes did); a version 1 runtime refuses a version 2 card rather than silently
ignoring a part scoring it does not know.

Example:
    >>> card = ModelCard(backbone="tf_efficientnet_lite0", input_size=224, feature_size=7)
    >>> ModelCard.from_metadata(card.to_metadata()) == card
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from crackscope.inspect.parts import PartScoring

if TYPE_CHECKING:
    import onnx

FORMAT = "crackscope-onnx"
FORMAT_VERSION = 2  # written by this crackscope
READABLE_VERSIONS = (1, 2)  # 1: before part_scoring (frames scored by their highest tile)
PREFIX = "crackscope."
INPUT_NAME = "image"
OUTPUT_NAMES = ("logit", "cam")
DENSE_OUTPUT_NAMES = ("cam", "bias")  # the dense whole-frame graph: CAM on the frame's 32 px grid, the head's bias
GRAPHS = ("tiles", "dense")


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
    part_scoring: PartScoring = field(default_factory=PartScoring)  # tile probabilities -> frame score
    precision: str = "fp32"  # fp32 | int8 | fp16
    graph: str = "tiles"  # tiles: fixed-size tiles -> logit, cam; dense: whole frames -> cam on the 32 px grid, bias
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
        if values.get("format_version") not in READABLE_VERSIONS:
            raise ModelCardError(
                f"{source}: model card version {values.get('format_version')} is not supported by this crackscope "
                f"(reads versions {', '.join(map(str, READABLE_VERSIONS))}); re-export the model or upgrade crackscope"
            )
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in values and _required(f)]
        if missing:
            raise ModelCardError(f"{source}: model card lacks {', '.join(missing)}")
        values = {k: v for k, v in values.items() if k in known}
        values["class_names"] = tuple(values.get("class_names", ("ok", "crack")))
        if values.get("graph", "tiles") not in GRAPHS:
            raise ModelCardError(f"{source}: model card graph {values['graph']!r} is not one of {', '.join(GRAPHS)}")
        try:
            values["calibration"] = Calibration(**values.get("calibration", {}))
            values["part_scoring"] = PartScoring.from_dict(values.get("part_scoring", {}), "part_scoring")
            return cls(**values)
        except ModelCardError:
            raise  # a calibration out of range names itself
        except (TypeError, ValueError) as error:  # a field or part scoring this version does not know
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


# --- reading and writing the card of a model file --------------------------------------------------------------------


def with_card(model: bytes | onnx.ModelProto, card: ModelCard, producer_version: str = "") -> onnx.ModelProto:
    """The model with its ``crackscope.*`` metadata replaced by ``card`` (other metadata kept)."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
    kept = {p.key: p.value for p in proto.metadata_props if not p.key.startswith(PREFIX)}
    del proto.metadata_props[:]
    for key, value in {**kept, **card.to_metadata()}.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "crackscope"
    proto.producer_version = producer_version or card.crackscope_version
    return proto


def read_card(path: str | os.PathLike) -> ModelCard:
    """The validated card of a model file, without loading its weights into a session."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelCardError(f"{path}: model file does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and friends for files that are not ONNX
        raise ModelCardError(f"{path}: not an ONNX model ({error})") from error
    return ModelCard.from_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


def calibration_folder(model: str | os.PathLike) -> Path:
    """Where ``crackscope calibrate`` writes its report by default: ``model.onnx`` -> ``model.calibration/``."""
    model = Path(model)
    return model.with_name(model.name.removesuffix(".onnx") + ".calibration")


def write_calibration(path: str | os.PathLike, calibration: Calibration) -> ModelCard:
    """Rewrite only the calibration in a model file's card; graph and weights are untouched (atomic replace)."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path))
    card = ModelCard.from_metadata({p.key: p.value for p in proto.metadata_props}, str(path))
    updated = card.with_calibration(calibration)
    save_atomically(with_card(proto, updated, proto.producer_version), path)
    return updated


def save_atomically(proto: onnx.ModelProto, path: Path) -> None:
    """Write beside the target, then rename: a reader never sees half a model, a failure leaves no partial file."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        onnx.save(proto, str(partial))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
