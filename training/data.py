"""Datasets of crack / no-crack patches, with ambiguous items as first-class data.

Two layouts are read as they are:

* **class folders**: ``crack/`` (or ``defect/``, ``Positive/``), ``ok/`` (or ``Negative/``, ``MT_Free/``) and an
  optional ``ambiguous/``; other folder names map through :attr:`DataConfig.class_map` (glob patterns, e.g.
  ``MT_*`` -> crack). A mask lying beside its image (``x.jpg`` + ``x.png``) is never a training image.
* **masks**: image + same-stem mask, side by side or in ``images/`` + ``masks/``. Images are cut into patches on a
  grid and each patch is labelled from its mask (:func:`label_from_mask`): crack when enough mask pixels lie in the
  patch centre, ok when none lie in the patch, ambiguous otherwise.

An optional ``votes.csv`` (``image,annotator,label``) turns annotator disagreement into soft targets. Every sample
remembers its source image (``group``) so splits never put one photo in both train and validation.

Example:
    >>> from crackscope.training.data import DataConfig, load_samples
    >>> dataset = load_samples("../shared/datasets/ozgenel-concrete", DataConfig())   # doctest: +SKIP
    >>> dataset.summary()                                                              # doctest: +SKIP
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np
from tqdm import tqdm

from crackscope.inspect.images import ImageReadError, is_image_file, read_image
from crackscope.inspect.tiling import patch_boxes

log = logging.getLogger(__name__)

CRACK, OK, AMBIGUOUS, IGNORE = "crack", "ok", "ambiguous", "ignore"
CLASS_NAMES = (OK, CRACK)  # index = label: 0 ok, 1 crack
DEFAULT_CLASS_MAP = {
    "crack": CRACK,
    "cracks": CRACK,
    "defect": CRACK,
    "defects": CRACK,
    "positive": CRACK,
    "ok": OK,
    "good": OK,
    "negative": OK,
    "mt_free": OK,
    "ambiguous": AMBIGUOUS,
    "mt_*": CRACK,  # magnetic-tile: every MT_<defect> class except MT_Free
}
MASK_FOLDER_NAMES = frozenset({"masks", "mask", "labels", "groundtruth", "ground_truth", "gt"})
IMAGE_FOLDER_NAMES = frozenset({"images", "image", "imgs"})
VOTE_LABELS = {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}


class DataError(ValueError):
    """A dataset that cannot be used: missing path, empty class, unknown folder, bad votes file."""


class Clarity(str, Enum):
    """Whether experts agree on an item's label."""

    CLEAR = "clear"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class Sample:
    """One training item: an image file, or a patch of one, with a soft crack target in ``[0, 1]``."""

    path: Path
    target: float
    clarity: Clarity
    group: str
    box: tuple[int, int, int, int] | None = None  # x, y, width, height of the patch in the source image

    @property
    def label(self) -> int:
        """Hard label (1 = crack) for stratification and metrics; a 0.5 target counts as crack (be safe)."""
        return int(self.target >= 0.5)

    @property
    def key(self) -> str:
        return str(self.path) if self.box is None else f"{self.path}@{','.join(map(str, self.box))}"


@dataclass(frozen=True)
class MaskLabelling:
    """Thresholds that turn a mask patch into crack / ok / ambiguous."""

    patch_size: int = 128
    stride: int = 128
    center_fraction: float = 0.5  # side of the centre square, as a share of the patch side
    crack_min_center_fraction: float = 0.004  # share of centre pixels that must be crack for a clear crack
    ok_max_pixels: int = 0  # at most this many mask pixels anywhere in the patch for a clear ok


@dataclass(frozen=True)
class DataConfig:
    """How a dataset folder is read and labelled."""

    mode: str = "auto"  # auto | folder | mask
    class_map: dict[str, str] = field(default_factory=dict)  # extra folder-name patterns -> crack|ok|ambiguous|ignore
    masks: MaskLabelling = field(default_factory=MaskLabelling)
    ambiguous: str = "soft"  # soft: train on ambiguous_target; exclude: leave them out of training
    ambiguous_target: float = 0.5
    votes: str | None = None  # votes.csv path; default: <data>/votes.csv when present
    consensus: str = "share"  # share | dawid-skene
    verify_images: bool = True  # decode each image once up front and drop unreadable ones


@dataclass(frozen=True)
class Dataset:
    """Samples plus what was skipped while reading them."""

    root: Path
    samples: tuple[Sample, ...]
    skipped: tuple[str, ...] = ()  # "path: reason" for each unreadable file

    def counts(self) -> dict[str, int]:
        counter = Counter(AMBIGUOUS if s.clarity is Clarity.AMBIGUOUS else CLASS_NAMES[s.label] for s in self.samples)
        return {name: counter.get(name, 0) for name in (CRACK, OK, AMBIGUOUS)}

    def summary(self) -> dict[str, object]:
        return {
            "root": str(self.root),
            "items": len(self.samples),
            "groups": len({s.group for s in self.samples}),
            **self.counts(),
            "skipped_unreadable": len(self.skipped),
        }


# --- labels from masks ----------------------------------------------------------------------------------------------


def label_from_mask(mask_patch: np.ndarray, rules: MaskLabelling) -> str:
    """crack / ok / ambiguous for one mask patch (non-zero = crack pixel).

    crack: the centre square holds at least ``crack_min_center_fraction`` crack pixels (at least one);
    ok: at most ``ok_max_pixels`` crack pixels anywhere; ambiguous: anything between (a crack too small to be
    sure of, or one that only touches the border, where a shifted crop would show no crack).
    """
    crack_pixels = mask_patch > 0
    total = int(crack_pixels.sum())
    if total <= rules.ok_max_pixels:
        return OK
    height, width = crack_pixels.shape
    ch, cw = max(1, round(height * rules.center_fraction)), max(1, round(width * rules.center_fraction))
    top, left = (height - ch) // 2, (width - cw) // 2
    center = int(crack_pixels[top : top + ch, left : left + cw].sum())
    if center >= max(1, rules.crack_min_center_fraction * ch * cw):
        return CRACK
    return AMBIGUOUS


# --- discovering files ----------------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    """Images under ``folder`` (recursive, sorted), leaving out masks that lie beside their image."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    stems = defaultdict(list)
    for path in files:
        stems[path.with_suffix("")].append(path)
    images = []
    for path in files:
        if any(part.lower() in MASK_FOLDER_NAMES for part in path.relative_to(folder).parts[:-1]):
            continue
        siblings = stems[path.with_suffix("")]
        is_mask = path.suffix.lower() == ".png" and any(s.suffix.lower() != ".png" for s in siblings)
        if not is_mask:
            images.append(path)
    return images


def classify_folder(name: str, class_map: dict[str, str]) -> str | None:
    """crack / ok / ambiguous / ignore for a class-folder name, or None when nothing maps it.

    User entries win over the defaults; exact names win over glob patterns; matching ignores case.
    """
    lowered = name.lower()
    for table in ({k.lower(): v for k, v in class_map.items()}, DEFAULT_CLASS_MAP):
        if lowered in table:
            return table[lowered]
        for pattern, value in table.items():
            if fnmatch.fnmatchcase(lowered, pattern):
                return value
    return None


def _mask_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs: ``images/`` + ``masks/`` folders, or same-stem files side by side (any depth)."""
    image_dir = next((root / n for n in sorted(os.listdir(root)) if n.lower() in IMAGE_FOLDER_NAMES), None)
    mask_dir = next((root / n for n in sorted(os.listdir(root)) if n.lower() in MASK_FOLDER_NAMES), None)
    if image_dir is not None and mask_dir is not None:
        masks = {p.stem: p for p in mask_dir.rglob("*") if p.is_file() and is_image_file(p)}
        images = sorted(p for p in image_dir.rglob("*") if p.is_file() and is_image_file(p))
        return [(p, masks[p.stem]) for p in images if p.stem in masks]
    pairs = []
    for image in _image_files(root):
        mask = image.with_suffix(".png")
        if mask != image and mask.is_file():
            pairs.append((image, mask))
    return pairs


def detect_mode(root: Path, class_map: dict[str, str]) -> str:
    """``folder`` when the root holds class folders, ``mask`` when it holds images/ + masks/."""
    names = [p.name for p in root.iterdir() if p.is_dir()]
    lowered = {n.lower() for n in names}
    if lowered & IMAGE_FOLDER_NAMES and lowered & MASK_FOLDER_NAMES:
        return "mask"
    if any(classify_folder(n, class_map) not in (None, IGNORE) for n in names):
        return "folder"
    if _mask_pairs(root):
        return "mask"
    raise DataError(
        f"{root}: found neither class folders (crack/, ok/, ambiguous/ ...) nor images with same-stem masks"
    )


# --- building samples -----------------------------------------------------------------------------------------------


def _folder_samples(root: Path, config: DataConfig) -> list[Sample]:
    samples: list[Sample] = []
    unknown = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        kind = classify_folder(folder.name, config.class_map)
        if kind is None:
            if folder.name.lower() not in MASK_FOLDER_NAMES and not folder.name.startswith("."):
                unknown.append(folder.name)
            continue
        if kind == IGNORE:
            continue
        for path in _image_files(folder):
            group = str(path.relative_to(root))
            if kind == AMBIGUOUS:
                samples.append(Sample(path, config.ambiguous_target, Clarity.AMBIGUOUS, group))
            else:
                samples.append(Sample(path, 1.0 if kind == CRACK else 0.0, Clarity.CLEAR, group))
    if unknown:
        raise DataError(
            f"{root}: class folder(s) {', '.join(sorted(unknown))} map to no class; add them to data_config.class_map "
            "(e.g. 'MT_*: crack', or 'ignore')"
        )
    return samples


def _mask_samples(
    pairs: Sequence[tuple[Path, Path]], root: Path, config: DataConfig, skipped: list[str]
) -> list[Sample]:
    rules = config.masks

    def one(pair: tuple[Path, Path]) -> list[Sample]:
        image_path, mask_path = pair
        try:
            image = read_image(image_path)
            mask = read_image(mask_path, grayscale=True)
        except ImageReadError as error:
            log.warning("skipping unreadable image: %s", error)
            skipped.append(str(error))
            return []
        if mask.shape[:2] != image.shape[:2]:
            message = (
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {image.shape[1]}x{image.shape[0]}"
            )
            log.warning("skipping pair: %s", message)
            skipped.append(message)
            return []
        group = str(image_path.relative_to(root))
        out = []
        for box in patch_boxes(*mask.shape[:2], rules.patch_size, rules.stride):
            x, y, w, h = box
            kind = label_from_mask(mask[y : y + h, x : x + w], rules)
            if kind == AMBIGUOUS:
                out.append(Sample(image_path, config.ambiguous_target, Clarity.AMBIGUOUS, group, box))
            else:
                out.append(Sample(image_path, 1.0 if kind == CRACK else 0.0, Clarity.CLEAR, group, box))
        return out

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(tqdm(pool.map(one, pairs), total=len(pairs), desc=f"labelling {root.name}", leave=False))
    return [sample for patch_samples in results for sample in patch_samples]


def _drop_unreadable(samples: list[Sample], skipped: list[str]) -> list[Sample]:
    """Decode every distinct file once; drop samples whose file is unreadable, with one warning each."""
    paths = sorted({s.path for s in samples})

    def check(path: Path) -> str | None:
        try:
            read_image(path)
        except ImageReadError as error:
            return str(error)
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(tqdm(pool.map(check, paths), total=len(paths), desc="checking images", leave=False))
    bad = set()
    for path, problem in zip(paths, problems, strict=True):
        if problem is not None:
            log.warning("skipping unreadable image: %s", problem)
            skipped.append(problem)
            bad.add(path)
    return [s for s in samples if s.path not in bad]


# --- votes ----------------------------------------------------------------------------------------------------------


def read_votes(path: Path, class_map: dict[str, str]) -> list[tuple[str, str, float]]:
    """``(image, annotator, vote)`` rows of a votes file, vote 1.0 = crack; bad rows are a DataError."""
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "annotator", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected image,annotator,label")
        for line, row in enumerate(reader, start=2):
            label = row["label"].strip().lower()
            kind = classify_folder(label, class_map)
            vote = VOTE_LABELS.get(label, {CRACK: 1.0, OK: 0.0}.get(kind or ""))
            if vote is None:
                raise DataError(f"{path}:{line}: label {row['label']!r} is neither crack nor ok")
            rows.append((row["image"].strip(), row["annotator"].strip(), vote))
    return rows


def consensus_targets(votes: Iterable[tuple[str, str, float]], method: str = "share") -> dict[str, float]:
    """Soft crack target per image: the share of annotators saying crack, or Dawid-Skene posteriors.

    Dawid-Skene (crowd-kit) weighs each annotator by their estimated confusion matrix, which helps when some
    annotators are careless; the plain share treats everyone alike.
    """
    votes = list(votes)
    if method == "share":
        tally: dict[str, list[float]] = defaultdict(list)
        for image, _, vote in votes:
            tally[image].append(vote)
        return {image: float(np.mean(v)) for image, v in tally.items()}
    if method == "dawid-skene":
        try:
            import pandas as pd
            from crowdkit.aggregation import DawidSkene
        except ImportError as error:
            raise DataError("consensus 'dawid-skene' needs crowd-kit: pip install 'crackscope[votes]'") from error
        frame = pd.DataFrame(
            [(image, annotator, int(vote)) for image, annotator, vote in votes], columns=["task", "worker", "label"]
        )
        probabilities = DawidSkene(n_iter=100).fit_predict_proba(frame)
        column = 1 if 1 in probabilities.columns else None
        return {str(task): float(row[column]) if column is not None else 0.0 for task, row in probabilities.iterrows()}
    raise DataError(f"unknown consensus method {method!r}; choose 'share' or 'dawid-skene'")


def apply_votes(samples: list[Sample], root: Path, targets: dict[str, float]) -> list[Sample]:
    """Give voted images their soft target; images with split votes become ambiguous.

    A vote's ``image`` is matched against the path relative to the data root, then the bare file name.
    """
    by_relative = {str(s.path.relative_to(root)).replace(os.sep, "/"): s for s in samples if s.box is None}
    by_name: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_name[s.path.name].append(s)
    updated: dict[str, Sample] = {}
    for image, target in targets.items():
        sample = by_relative.get(image.replace("\\", "/"))
        matches = [sample] if sample else by_name.get(Path(image).name, [])
        if not matches:
            log.warning("votes name %s, which is not in %s", image, root)
        for match in matches:
            clarity = Clarity.CLEAR if target in (0.0, 1.0) else Clarity.AMBIGUOUS
            updated[match.key] = replace(match, target=target, clarity=clarity)
    return [updated.get(s.key, s) for s in samples]


# --- entry point ----------------------------------------------------------------------------------------------------


def load_samples(root: str | os.PathLike, config: DataConfig | None = None) -> Dataset:
    """Read a dataset folder into samples, or raise :class:`DataError` before any training starts."""
    config = config or DataConfig()
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data path does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: data path is not a folder")
    mode = detect_mode(root, config.class_map) if config.mode == "auto" else config.mode
    skipped: list[str] = []
    if mode == "folder":
        samples = _folder_samples(root, config)
        if config.verify_images:
            samples = _drop_unreadable(samples, skipped)
    elif mode == "mask":
        pairs = _mask_pairs(root)
        if not pairs:
            raise DataError(f"{root}: no image has a same-stem mask (x.jpg + x.png, or images/ + masks/)")
        samples = _mask_samples(pairs, root, config, skipped)
    else:
        raise DataError(f"unknown data mode {mode!r}; choose auto, folder or mask")
    votes_path = Path(config.votes) if config.votes else root / "votes.csv"
    if config.votes and not votes_path.is_file():
        raise DataError(f"{votes_path}: votes file does not exist")
    if votes_path.is_file():
        samples = apply_votes(
            samples, root, consensus_targets(read_votes(votes_path, config.class_map), config.consensus)
        )
    dataset = Dataset(root, tuple(samples), tuple(skipped))
    _check_classes(dataset)
    return dataset


def _check_classes(dataset: Dataset) -> None:
    counts = dataset.counts()
    empty = [name for name in (CRACK, OK) if counts[name] == 0]
    if empty:
        raise DataError(f"{dataset.root}: no readable {' or '.join(empty)} images; counts: {counts}")


def training_view(samples: Iterable[Sample], config: DataConfig) -> list[Sample]:
    """The samples to train on: ambiguous items kept (soft target) or left out, per ``config.ambiguous``."""
    if config.ambiguous == "exclude":
        return [s for s in samples if s.clarity is Clarity.CLEAR]
    if config.ambiguous != "soft":
        raise DataError(f"unknown ambiguous policy {config.ambiguous!r}; choose 'soft' or 'exclude'")
    return list(samples)


def split_by_group(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded, stratified, group-aware train/validation split.

    Whole groups (source images) move together. Groups are stratified by whether they hold any clear crack, so
    both splits see both classes even when cracks are rare.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample)
    strata: dict[int, list[str]] = defaultdict(list)
    for name, members in sorted(groups.items()):
        strata[int(any(s.label == 1 and s.clarity is Clarity.CLEAR for s in members))].append(name)
    rng = np.random.default_rng(seed)
    val_groups: set[str] = set()
    for names in strata.values():
        order = rng.permutation(len(names))
        n_val = max(1, round(val_fraction * len(names))) if len(names) > 1 else 0
        val_groups.update(names[i] for i in order[:n_val])
    train = [s for s in samples if s.group not in val_groups]
    val = [s for s in samples if s.group in val_groups]
    return train, val


def read_patch(sample: Sample) -> np.ndarray:
    """The sample's pixels, uint8 BGR (the whole image, or its patch box)."""
    image = read_image(sample.path)
    if sample.box is None:
        return image
    x, y, w, h = sample.box
    return image[y : y + h, x : x + w]


def describe(dataset: Dataset, emit: Callable[[str], None] = print) -> None:
    summary = dataset.summary()
    emit(
        f"{summary['root']}: {summary['items']} items from {summary['groups']} images "
        f"(crack {summary['crack']}, ok {summary['ok']}, ambiguous {summary['ambiguous']}); "
        f"{summary['skipped_unreadable']} unreadable skipped"
    )
