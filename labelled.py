"""The labelled-data reader: crack / no-crack patches, with ambiguous items as first-class data.

It sits below training, calibration and deploy, which all read labelled data, and is torch-free (numpy, OpenCV
and tqdm), so calibration can read data without training's dependencies. :func:`load_samples` reads one folder
into a :class:`LabelledSet`; :func:`load_sources` reads several into one :class:`LabelledSources`.

Three layouts are read:

* **class folders**: ``crack/`` (or ``defect/``, ``Positive/``), ``ok/`` (or ``Negative/``, ``MT_Free/``) and an
  optional ``ambiguous/``; other folder names map through :attr:`DataConfig.class_map` (glob patterns, e.g.
  ``MT_*`` -> crack). A mask lying beside its image (``x.jpg`` + ``x.png``) is never a training image.
* **masks**: image + same-stem mask, side by side or in ``images/`` + ``masks/``. Images are cut into tiles as the
  runtime cuts frames (:meth:`MaskLabelling.for_tile`) and each tile is labelled from its mask
  (:func:`label_from_mask`): crack when enough mask pixels lie in the tile centre, ok when none lie in the tile,
  ambiguous otherwise. Each tile keeps its mask file (:attr:`Sample.mask`, read with :func:`read_mask_patch`) so
  training can supervise the heatmap with it.
* **class folders cut into tiles** (``mode: tiles``): images labelled as a whole, larger than a tile (a photo of
  a part marked good or bad). Each image is cut into tiles as the runtime cuts frames; the tiles of a good image are
  clear ok, those of a defective image are :attr:`Clarity.WEAK`: at least one of them shows the defect, nobody said
  which. Training learns which from the tiles themselves (multiple-instance learning, see
  :mod:`crackscope.training.head` and the trainer), and evaluation scores such an image as a part.

An optional ``votes.csv`` (``image,annotator,label``) turns annotator disagreement into soft targets. Every sample
remembers its source image (``group``) so splits never put one photo in both train and validation; in class
folders that is the file itself, unless an optional ``groups.csv`` (``image,group``) names the photo it was cut
from (as ``crackscope review export`` does for its tiles).

Several folders can be read into one run (:func:`load_sources`), each a :class:`DataSource` with its own name and,
if it needs them, its own layout and labelling settings. Each sample remembers its source, groups are prefixed with
the source's name, and :func:`split_by_source` splits each source apart, so per-source numbers stay comparable.

Example:
    >>> from crackscope.labelled import DataConfig, DataSource, load_samples, load_sources
    >>> labelled = load_samples("../shared/datasets/ozgenel-concrete", DataConfig())  # doctest: +SKIP
    >>> labelled.summary()                                                             # doctest: +SKIP
    >>> both = load_sources(                                                           # doctest: +SKIP
    ...     ["../shared/datasets/ozgenel-concrete",
    ...      DataSource("../shared/datasets/deepcrack-train", "deepcrack", DataConfig(mode="mask"))]
    ... )
    >>> both.summary()["sources"]["deepcrack"]                                         # doctest: +SKIP
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from crackscope.config import from_dict, merge
from crackscope.inspect.images import ImageReadError, is_image_file, read_image
from crackscope.inspect.tiling import patch_boxes, stride_for

log = logging.getLogger(__name__)

CRACK, OK, AMBIGUOUS, IGNORE = "crack", "ok", "ambiguous", "ignore"
WEAK = "weak"  # the count of weak tiles (Clarity.WEAK)
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
    "frames": IGNORE,  # review exports: the whole reviewed frames beside their tiles (train them with mode tiles)
}
MASK_FOLDER_NAMES = frozenset({"masks", "mask", "labels", "groundtruth", "ground_truth", "gt"})
IMAGE_FOLDER_NAMES = frozenset({"images", "image", "imgs"})
GROUPS_FILE = "groups.csv"  # image,group: the source photo of items cut from one (see _with_groups)
VOTE_LABELS = {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}


class DataError(ValueError):
    """A dataset that cannot be used: missing path, empty class, unknown folder, bad votes file."""


class Clarity(str, Enum):
    """Whether experts agree on an item's label."""

    CLEAR = "clear"
    AMBIGUOUS = "ambiguous"
    WEAK = "weak"  # a tile of an image labelled as a whole: its image's label holds for some tile, not each one


@dataclass(frozen=True)
class Sample:
    """One training item: an image file, or a patch of one, with a soft crack target in ``[0, 1]``."""

    path: Path
    target: float
    clarity: Clarity
    group: str
    box: tuple[int, int, int, int] | None = None  # x, y, width, height of the patch in the source image
    source: str = ""  # name of the DataSource it came from; "" when read alone with load_samples
    # The pixel mask of the source image (mask layout only), for training the heatmap against it. Not part of
    # ``key`` or the data fingerprint: the mask adds supervision, it does not make the item another item.
    mask: Path | None = None

    @property
    def label(self) -> int:
        """Hard label (1 = crack) for stratification and metrics; a 0.5 target counts as crack (be safe)."""
        return int(self.target >= 0.5)

    @property
    def key(self) -> str:
        return str(self.path) if self.box is None else f"{self.path}@{','.join(map(str, self.box))}"


DEFAULT_TILE = 224  # the default backbone's input size: the tile side when no model says otherwise
RUNTIME_OVERLAP = 0.25  # crackscope inspect's default tile overlap (InspectConfig.overlap; a test keeps them equal)


@dataclass(frozen=True)
class MaskLabelling:
    """How mask images are cut into tiles, and the thresholds that turn a mask tile into crack / ok / ambiguous.

    By default tiles are cut the way the runtime cuts frames: at the model's input size (training fills it in
    from the backbone or ``--input-size``), at the image's own resolution, with the runtime's 25% overlap, so
    training, evaluation and inspection all see the same pixels at the same scale.
    """

    patch_size: int | None = None  # tile side in image pixels; None: the model's input size (224 without a model)
    stride: int | None = None  # None: 75% of the tile side (the runtime's default 25% overlap)
    center_fraction: float = 0.5  # side of the centre square, as a share of the patch side
    crack_min_center_fraction: float = 0.004  # share of centre pixels that must be crack for a clear crack
    ok_max_pixels: int = 0  # at most this many mask pixels anywhere in the patch for a clear ok

    def for_tile(self, size: int) -> MaskLabelling:
        """These rules with an unset tile side taken as ``size`` and an unset stride from the runtime's overlap."""
        patch = self.patch_size or size
        return replace(self, patch_size=patch, stride=self.stride or stride_for(patch, RUNTIME_OVERLAP))


@dataclass(frozen=True)
class DataConfig:
    """How a dataset folder is read and labelled."""

    mode: str = "auto"  # auto | folder | mask | tiles (class folders cut into tiles, image labels; see the module)
    class_map: dict[str, str] = field(default_factory=dict)  # extra folder-name patterns -> crack|ok|ambiguous|ignore
    masks: MaskLabelling = field(default_factory=MaskLabelling)
    ambiguous: str = "soft"  # soft: train on ambiguous_target; exclude: leave them out of training
    ambiguous_target: float = 0.5
    votes: str | None = None  # votes.csv path; default: <data>/votes.csv when present
    consensus: str = "share"  # share | dawid-skene
    verify_images: bool = True  # decode each image once up front and drop unreadable ones


@dataclass(frozen=True)
class DataSource:
    """One dataset folder of a run: where it is, what to call it, and how to read it.

    ``name`` defaults to the folder's name; it prefixes the source's groups and keys its per-source counts and
    metrics. ``data_config`` None means the run's :class:`DataConfig`; one given here replaces it for this folder
    (in a YAML config, a source's ``data_config`` keys are merged over the run's, see :func:`inherit_data_config`).
    """

    path: str
    name: str = ""
    data_config: DataConfig | None = None

    @property
    def label(self) -> str:
        """The name given, or the folder's name (``../data/ok-parts`` -> ``ok-parts``)."""
        return self.name or Path(os.path.abspath(self.path)).name


def class_counts(samples: Iterable[Sample]) -> dict[str, int]:
    """Items per class: clear crack, clear ok, ambiguous (whatever their soft target), and, only when there are
    any, weak tiles (tiles of images labelled as a whole, :attr:`Clarity.WEAK`)."""
    counter = Counter(
        s.clarity.value if s.clarity in (Clarity.AMBIGUOUS, Clarity.WEAK) else CLASS_NAMES[s.label] for s in samples
    )
    counts = {name: counter.get(name, 0) for name in (CRACK, OK, AMBIGUOUS)}
    return counts | ({WEAK: counter[WEAK]} if counter.get(WEAK) else {})


@dataclass(frozen=True)
class LabelledSet:
    """Samples plus what was skipped while reading them."""

    root: Path
    samples: tuple[Sample, ...]
    skipped: tuple[str, ...] = ()  # "path: reason" for each unreadable file

    def counts(self) -> dict[str, int]:
        return class_counts(self.samples)

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
    rules = config.masks.for_tile(DEFAULT_TILE)

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
                target, clarity = config.ambiguous_target, Clarity.AMBIGUOUS
            else:
                target, clarity = 1.0 if kind == CRACK else 0.0, Clarity.CLEAR
            out.append(Sample(image_path, target, clarity, group, box, mask=mask_path))
        return out

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(tqdm(pool.map(one, pairs), total=len(pairs), desc=f"labelling {root.name}", leave=False))
    return [sample for patch_samples in results for sample in patch_samples]


def _tile_samples(images: list[Sample], config: DataConfig, skipped: list[str]) -> list[Sample]:
    """Each whole-image sample cut into the runtime's tiles: clear ok tiles of a good image, weak ones otherwise.

    A weak tile keeps its image's target (1 for a defective image, the soft target of an ambiguous one); which
    tiles of the image the target is true for is left to training. Every image is decoded once here, for its size;
    an unreadable one is skipped and listed, as in the other layouts.
    """
    rules = config.masks.for_tile(DEFAULT_TILE)

    def one(image: Sample) -> list[Sample]:
        try:
            height, width = read_image(image.path).shape[:2]
        except ImageReadError as error:
            log.warning("skipping unreadable image: %s", error)
            skipped.append(str(error))
            return []
        clarity = Clarity.CLEAR if image.target == 0.0 and image.clarity is Clarity.CLEAR else Clarity.WEAK
        return [
            replace(image, clarity=clarity, box=box)
            for box in patch_boxes(height, width, rules.patch_size, rules.stride)
        ]

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(tqdm(pool.map(one, images), total=len(images), desc="cutting images into tiles", leave=False))
    return [tile for tiles in results for tile in tiles]


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


def load_samples(root: str | os.PathLike, config: DataConfig | None = None) -> LabelledSet:
    """Read a dataset folder into samples, or raise :class:`DataError` before any training starts."""
    dataset = _read_folder(Path(root), config or DataConfig())
    _check_classes(dataset)
    return dataset


def _read_folder(root: Path, config: DataConfig) -> LabelledSet:
    """Samples of one folder, which may hold only one class (a folder of good parts, say)."""
    if not root.exists():
        raise DataError(f"{root}: data path does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: data path is not a folder")
    mode = detect_mode(root, config.class_map) if config.mode == "auto" else config.mode
    skipped: list[str] = []
    if mode == "folder":
        samples = _with_groups(_folder_samples(root, config), root)
        if config.verify_images:
            samples = _drop_unreadable(samples, skipped)
    elif mode == "tiles":
        samples = _tile_samples(_with_votes(_folder_samples(root, config), root, config), config, skipped)
    elif mode == "mask":
        pairs = _mask_pairs(root)
        if not pairs:
            raise DataError(f"{root}: no image has a same-stem mask (x.jpg + x.png, or images/ + masks/)")
        samples = _mask_samples(pairs, root, config, skipped)
    else:
        raise DataError(f"unknown data mode {mode!r}; choose auto, folder, mask or tiles")
    if mode != "tiles":  # tiles take their image's votes before they are cut
        samples = _with_votes(samples, root, config)
    return LabelledSet(root, tuple(samples), tuple(skipped))


def _with_groups(samples: list[Sample], root: Path) -> list[Sample]:
    """The samples with the source images named in ``groups.csv`` (``image,group``), when the folder has one.

    Items cut from one photo (the tiles ``crackscope review export`` writes) are correlated; naming their photo as
    their group keeps them on one side of every split. A row naming an image that is not there is a DataError, as
    is a file without both columns; images the file does not name keep their own path as group.
    """
    path = root / GROUPS_FILE
    if not path.is_file():
        return samples
    groups: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "group"} <= set(reader.fieldnames):
            raise DataError(f"{path}: needs the columns image,group (found {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            image, group = (row.get("image") or "").strip(), (row.get("group") or "").strip()
            if not image or not group:
                raise DataError(f"{path}, line {line}: empty image or group")
            groups[Path(image).as_posix()] = group
    present = {Path(s.group).as_posix() for s in samples}
    missing = sorted(set(groups) - present)
    if missing:
        raise DataError(f"{path}: {len(missing)} image(s) named here are not in {root}, e.g. {missing[0]}")
    return [replace(s, group=groups.get(Path(s.group).as_posix(), s.group)) for s in samples]


def _with_votes(samples: list[Sample], root: Path, config: DataConfig) -> list[Sample]:
    """The samples with the soft targets of ``votes.csv`` (or ``config.votes``) applied, when there are votes."""
    votes_path = Path(config.votes) if config.votes else root / "votes.csv"
    if config.votes and not votes_path.is_file():
        raise DataError(f"{votes_path}: votes file does not exist")
    if not votes_path.is_file():
        return samples
    return apply_votes(samples, root, consensus_targets(read_votes(votes_path, config.class_map), config.consensus))


def _check_classes(dataset: LabelledSet) -> None:
    counts = dataset.counts()
    empty = _missing_classes(counts)
    if empty:
        raise DataError(f"{dataset.root}: no readable {' or '.join(empty)} images; counts: {counts}")


def _missing_classes(counts: Mapping[str, int]) -> list[str]:
    """crack and/or ok when no item has that class (weak tiles are tiles of crack images)."""
    have = {CRACK: counts[CRACK] + counts.get(WEAK, 0), OK: counts[OK]}
    return [name for name in (CRACK, OK) if have[name] == 0]


# --- several sources ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledSources:
    """Several sources read as one sample list; each part keeps its own root, settings and skipped files."""

    sources: tuple[DataSource, ...]  # resolved: every name and data_config filled in
    parts: tuple[LabelledSet, ...]  # one per source, in the same order; their samples carry the source's name

    @cached_property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(sample for part in self.parts for sample in part.samples)

    @property
    def skipped(self) -> tuple[str, ...]:
        return tuple(problem for part in self.parts for problem in part.skipped)

    def counts(self) -> dict[str, int]:
        return class_counts(self.samples)

    def summary(self) -> dict[str, object]:
        """Totals over all sources, then each source's own summary (root, items, groups, counts) by name."""
        return {
            "items": len(self.samples),
            "groups": len({s.group for s in self.samples}),
            **self.counts(),
            "skipped_unreadable": len(self.skipped),
            "sources": {source.name: part.summary() for source, part in zip(self.sources, self.parts, strict=True)},
        }

    def training_view(self, samples: Iterable[Sample]) -> list[Sample]:
        """:func:`training_view` with each source's own ambiguous policy; the order of ``samples`` is kept."""
        samples = list(samples)
        configs = {source.name: source.data_config or DataConfig() for source in self.sources}
        kept: set[Sample] = set()
        for name, members in _by_source(samples).items():
            kept.update(training_view(members, configs[name]))
        return [s for s in samples if s in kept]


DataArgument = str | os.PathLike | DataSource | Sequence[str | os.PathLike | DataSource]


def resolve_sources(data: DataArgument, base: DataConfig | None = None) -> tuple[DataSource, ...]:
    """``data`` as sources with their names and settings filled in (``base`` where a source has none).

    ``data`` is what ``TrainConfig.data`` holds: one folder, or a list of folders and :class:`DataSource`. Two
    sources may not share a name (their groups, counts and metrics would mix), nor read the same folder or one
    inside the other (an image read twice could land in train and validation both): each is a DataError.
    """
    base = base or DataConfig()
    entries = [data] if isinstance(data, (str, os.PathLike, DataSource)) else list(data)
    if not entries:
        raise DataError("no data: give at least one dataset folder")
    sources = []
    for entry in entries:
        source = entry if isinstance(entry, DataSource) else DataSource(os.fspath(entry))
        config = base if source.data_config is None else source.data_config
        sources.append(replace(source, name=source.label, data_config=config))
    _check_distinct(sources)
    return tuple(sources)


def _check_distinct(sources: Sequence[DataSource]) -> None:
    for index, later in enumerate(sources):
        for earlier in sources[:index]:
            if later.name == earlier.name:
                raise DataError(
                    f"sources {earlier.path} and {later.path} are both named {later.name!r}; give one a name of its "
                    "own (data: [{path: ..., name: ...}])"
                )
            a, b = Path(earlier.path).resolve(), Path(later.path).resolve()
            if a == b or a.is_relative_to(b) or b.is_relative_to(a):
                raise DataError(
                    f"sources {earlier.path} and {later.path} overlap; each image must come from one source only"
                )


def for_tile(data: DataArgument, base: DataConfig, size: int) -> tuple[DataArgument, DataConfig]:
    """``data`` and ``base`` with every unset mask tile side taken as ``size`` (see :meth:`MaskLabelling.for_tile`),
    so that a run's saved settings name the tiles it trained on."""

    def resolved(config: DataConfig) -> DataConfig:
        return replace(config, masks=config.masks.for_tile(size))

    def entry(item: str | DataSource) -> str | DataSource:
        if isinstance(item, DataSource) and item.data_config is not None:
            return replace(item, data_config=resolved(item.data_config))
        return item

    if isinstance(data, str | os.PathLike | DataSource):
        return entry(data) if isinstance(data, DataSource) else data, resolved(base)
    return tuple(entry(item) for item in data), resolved(base)


def load_sources(data: DataArgument, base: DataConfig | None = None) -> LabelledSources:
    """Read every source with its own settings into one :class:`LabelledSources`, or raise :class:`DataError`.

    Samples are tagged with their source's name and their groups prefixed with it, so a grouped split never
    joins images of two sources. A source may hold a single class (a folder of good parts) as long as the
    sources together hold both; an error in one source names it.
    """
    sources = resolve_sources(data, base)
    parts = tuple(_read_source(source, several=len(sources) > 1) for source in sources)
    dataset = LabelledSources(sources, parts)
    _check_union(dataset)
    return dataset


def _read_source(source: DataSource, *, several: bool) -> LabelledSet:
    try:
        dataset = _read_folder(Path(source.path), source.data_config or DataConfig())
        if not dataset.samples:
            raise DataError(f"{source.path}: no readable images")
    except DataError as error:
        if not several:
            raise
        raise DataError(f"source {source.name!r}: {error}") from error
    tagged = tuple(replace(s, source=source.name, group=f"{source.name}/{s.group}") for s in dataset.samples)
    return replace(dataset, samples=tagged)


def _check_union(dataset: LabelledSources) -> None:
    if len(dataset.parts) == 1:
        _check_classes(dataset.parts[0])  # the same message as for one folder read with load_samples
        return
    empty = _missing_classes(dataset.counts())
    if empty:
        per_source = {source.name: part.counts() for source, part in zip(dataset.sources, dataset.parts, strict=True)}
        raise DataError(f"no source holds readable {' or '.join(empty)} images; counts: {per_source}")


def inherit_data_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """Raw ``TrainConfig`` values (from YAML and flags) with each source's ``data_config`` merged over the run's.

    A source then states only what differs: ``data: [../a, {path: ../b, data_config: {mode: mask}}]`` reads
    ``../b`` as masks with the run's class map and mask thresholds. The run's ``data_config`` is checked first,
    so a mistake in it is reported at its own key rather than at a source that inherited it.
    """
    run = values.get("data_config") or {}
    if not isinstance(run, Mapping):
        return dict(values)  # from_dict reports the bad value at its key
    from_dict(DataConfig, run, "config.data_config")
    merged = dict(values)
    for key in ("data", "val_data"):
        entries = values.get(key)
        if isinstance(entries, (list, tuple)):
            merged[key] = [_inherit(entry, run) for entry in entries]
    return merged


def _inherit(entry: Any, run: Mapping[str, Any]) -> Any:
    if isinstance(entry, Mapping) and isinstance(entry.get("data_config"), Mapping):
        return {**entry, "data_config": merge(run, entry["data_config"])}
    return entry


def _by_source(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Samples by source name, sources in order of first appearance."""
    by_source: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_source[sample.source].append(sample)
    return by_source


def training_view(samples: Iterable[Sample], config: DataConfig) -> list[Sample]:
    """The samples to train on: ambiguous items kept (soft target) or left out, per ``config.ambiguous``."""
    if config.ambiguous == "exclude":
        return [s for s in samples if s.clarity is Clarity.CLEAR]
    if config.ambiguous != "soft":
        raise DataError(f"unknown ambiguous policy {config.ambiguous!r}; choose 'soft' or 'exclude'")
    return list(samples)


def split_by_group(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded, stratified, group-aware train/validation split.

    Whole groups (source images) move together. Groups are stratified by whether they hold any clear crack (or are
    labelled crack as a whole), so both splits see both classes even when cracks are rare.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.group].append(sample)
    strata: dict[int, list[str]] = defaultdict(list)
    for name, members in sorted(groups.items()):
        strata[int(any(s.target == 1.0 and s.clarity in (Clarity.CLEAR, Clarity.WEAK) for s in members))].append(name)
    rng = np.random.default_rng(seed)
    val_groups: set[str] = set()
    for names in strata.values():
        order = rng.permutation(len(names))
        n_val = max(1, round(val_fraction * len(names))) if len(names) > 1 else 0
        val_groups.update(names[i] for i in order[:n_val])
    train = [s for s in samples if s.group not in val_groups]
    val = [s for s in samples if s.group in val_groups]
    return train, val


def split_by_source(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """:func:`split_by_group` within each source, each with the same seed.

    Every source gives about ``val_fraction`` of its images (of each stratum) to validation, so every source
    gets validation metrics of its own, and a source's split does not change when another source is added.
    """
    train: list[Sample] = []
    val: list[Sample] = []
    for members in _by_source(samples).values():
        source_train, source_val = split_by_group(members, val_fraction, seed)
        train += source_train
        val += source_val
    return train, val


def read_patch(sample: Sample) -> np.ndarray:
    """The sample's pixels, uint8 BGR (the whole image, or its patch box)."""
    image = read_image(sample.path)
    if sample.box is None:
        return image
    x, y, w, h = sample.box
    return image[y : y + h, x : x + w]


def read_mask_patch(sample: Sample) -> np.ndarray | None:
    """The sample's mask as uint8 0/255 ``[h, w]``, cut like :func:`read_patch`; None when it has no mask.

    Any non-zero mask pixel is crack (as in :func:`label_from_mask`), so masks stored as 0/1, as 0/255 or as a
    JPEG's near-black and near-white all come out the same.

    Raises:
        ImageReadError: the mask file is missing, empty, or not a decodable image.
    """
    if sample.mask is None:
        return None
    mask = read_image(sample.mask, grayscale=True)
    if sample.box is not None:
        x, y, w, h = sample.box
        mask = mask[y : y + h, x : x + w]
    return np.where(mask > 0, np.uint8(255), np.uint8(0))


def describe(dataset: LabelledSet | LabelledSources, emit: Callable[[str], None] = print) -> None:
    """One line per source (items, source images, class counts, unreadable files), then one of totals."""
    if isinstance(dataset, LabelledSet):
        emit(_summary_line(str(dataset.root), dataset.summary()))
        return
    several = len(dataset.parts) > 1
    for source, part in zip(dataset.sources, dataset.parts, strict=True):
        line = _summary_line(f"{source.name} ({part.root})" if several else str(part.root), part.summary())
        missing = _missing_classes(part.counts())
        if missing:
            line += f"; no {' or '.join(missing)} items here: the other sources supply them"
        emit(line)
    if several:
        emit(_summary_line(f"all {len(dataset.parts)} sources", dataset.summary()))


def _summary_line(where: str, summary: dict[str, object]) -> str:
    return (
        f"{where}: {summary['items']} items from {summary['groups']} images "
        f"(crack {summary['crack']}, ok {summary['ok']}, ambiguous {summary['ambiguous']}"
        + (f", weak {summary['weak']}: tiles of images labelled as a whole" if summary.get("weak") else "")
        + "); "
        f"{summary['skipped_unreadable']} unreadable skipped"
    )
