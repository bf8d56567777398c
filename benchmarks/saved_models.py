"""Where the accuracy benchmark leaves the models it trains, and which images each model never saw.

``benchmarks/accuracy.py`` trains one model per job and, for each, writes into ``benchmarks/results/models/``
(git-ignored):

- ``<job>.onnx``: the fp32 model, exported and verified by :func:`crackscope.deploy.export.export`;
- ``<job>.int8.onnx``: its int8 variant, calibrated on the job's training images only (absent if its gate refused it);
- ``<job>.dense.onnx``: the dense whole-frame graph, when ``benchmarks/frames.py --dense`` has added it from the
  job's checkpoint (``benchmarks/results/accuracy/<job>/model.pt``);
- ``<job>.split.json``: the held-out test images (paths relative to the dataset folder) and the dataset folders the
  model was never trained on at all.

``benchmarks/frames.py`` and ``benchmarks/localization.py`` read them from here, so their figures are about the very
models whose accuracy the accuracy benchmark printed, and localization is scored on images those models never saw.

Example:
    >>> from saved_models import model_path
    >>> model_path("magnetic-tile", "int8").name
    'magnetic-tile.int8.onnx'
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "benchmarks" / "results" / "models"
ACCURACY_DIR = REPO / "benchmarks" / "results" / "accuracy"  # <job>/model.pt: the checkpoint each model came from
DATA_DIR = Path(os.environ.get("CRACKSCOPE_DATA", str(REPO.parent / "shared" / "datasets")))


@dataclass(frozen=True)
class HeldOut:
    """What one job's model was not trained on.

    Attributes:
        job: the accuracy benchmark's job name (also the model's file stem).
        dataset: the dataset folder the model was trained on (under the datasets root).
        seed: the split's seed.
        input_size: the model's tile side in pixels.
        test: the test split's source images, relative to ``dataset``: never trained on, never used for early
            stopping, nor for int8 calibration.
        never_seen: other dataset folders the model was never trained on (all of their images are held out).
        counts: items in train / val / test.
        exported: ``precision -> file name`` of the exported models; ``refused``: why a variant was not written.
    """

    job: str
    dataset: str
    seed: int
    input_size: int
    test: tuple[str, ...]
    never_seen: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    exported: dict[str, str] = field(default_factory=dict)
    refused: tuple[str, ...] = ()


def model_path(job: str, precision: str = "fp32", root: Path = MODELS_DIR) -> Path:
    """``<root>/<job>.onnx`` for fp32, ``<root>/<job>.<precision>.onnx`` otherwise (export's naming)."""
    return root / (f"{job}.onnx" if precision == "fp32" else f"{job}.{precision}.onnx")


def checkpoint_path(job: str, root: Path = ACCURACY_DIR) -> Path:
    """``<root>/<job>/model.pt``: the trained checkpoint the job's models were exported from."""
    return root / job / "model.pt"


def split_path(job: str, root: Path = MODELS_DIR) -> Path:
    return root / f"{job}.split.json"


def write_held_out(held_out: HeldOut, root: Path = MODELS_DIR) -> Path:
    path = split_path(held_out.job, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(held_out), indent=2), encoding="utf-8")
    return path


def read_held_out(job: str, root: Path = MODELS_DIR) -> HeldOut:
    """The job's held-out record; a missing file is a ``FileNotFoundError`` that says what to run."""
    path = split_path(job, root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {how_to_make(job)}")
    return read_held_out_file(path)


def read_held_out_file(path: Path) -> HeldOut:
    raw = json.loads(path.read_text(encoding="utf-8"))
    tuples = {key: tuple(raw.get(key, ())) for key in ("test", "never_seen", "refused")}
    return HeldOut(**{**raw, **tuples})


def how_to_make(job: str) -> str:
    return (
        f"train and export it with: python benchmarks/accuracy.py --only {job}  "
        "(or pass the model file explicitly, see --help)"
    )


def require_model(job: str, precision: str = "fp32", root: Path = MODELS_DIR) -> Path:
    """The saved model file, or a ``FileNotFoundError`` that says which command writes it."""
    path = model_path(job, precision, root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {how_to_make(job)}")
    return path


def data_missing() -> bool:
    """Whether the shared datasets are absent; says so on stderr (the caller exits 2)."""
    if DATA_DIR.is_dir():
        return False
    print(f"the shared datasets are not at {DATA_DIR} (set CRACKSCOPE_DATA)", file=sys.stderr)
    return True
