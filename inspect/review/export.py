"""``crackscope review export``: what reviewers saw, as training tiles at the model's input size.

Training shrinks a whole frame to one model input, so a thin crack a reviewer confirmed on a 4000 x 3000 frame would
be lost if the frame were the training item. The export therefore cuts, from each reviewed frame, tiles of the
model's input size (the tiles the runtime inspected) around what the review was about, and labels each with the
reviewers' votes. The folder is a dataset ``crackscope train`` reads as it is (:mod:`crackscope.labelled`), beside
the data the model was trained on::

    $ crackscope review export --results runs/line3 --out datasets/line3-reviewed
    $ crackscope review export --results postgresql://qa@db/plant --artefacts /mnt/plant-artefacts --out reviewed
    $ crackscope train --data datasets/base --data datasets/line3-reviewed --out runs/line3-retrained

Layout:

* ``crack/``, ``ok/``, ``ambiguous/``: the tiles (PNG, ``<frame>.x<X>y<Y>.png``), in the folder of their label;
* ``votes.csv`` (``image,annotator,label``): the crack / ok votes of each tile of an item that several reviewers
  decided, none of them "ambiguous"; training turns them into a soft target (the share saying crack);
* ``groups.csv`` (``image,group``): the frame each tile was cut from, so training's splits keep a frame's tiles
  together;
* ``frames/crack``, ``frames/ok``, ``frames/ambiguous``: each reviewed frame whole, for people and for training
  with ``--data-mode tiles`` (defective frames as weak labels); ``crackscope train`` skips ``frames/`` otherwise;
* ``review-export.csv``: one row per file written (frame or tile): its record, source, sha256, box in the frame,
  the model's verdict and score (the tile's probability for a tile), the label and who said it.

Which tiles, with the reviewers' label of the item (their consensus: all say defect -> crack, all ok -> ok,
otherwise ambiguous):

* **the tiles that drove the verdict**: the inspected tiles at or above the calibrated OK threshold (probability
  0.5 without a calibration), the :data:`MAX_DRIVING` highest; a DEFECT the reviewers call OK thus becomes hard
  negative tiles;
* **around each region** the model reported, a tile centred on it (when no driving tile already covers it);
* **the closest calls of a confirmed OK frame**: the :data:`OK_TILES` highest tiles of a frame nothing flagged,
  labelled ok when the reviewers say OK;
* **marked regions**: every box a reviewer drew round a defect on the item page (one the model missed, or where
  the defect is among its regions) is a crack tile centred on it (tiles on a grid, when it is larger than one),
  whatever the item's label; driving and region tiles overlapping a mark are left to the mark. On a frame the
  reviewers call defect and marked, the boxes say where the defects are, so the tiles outside every box are
  labelled ok: the flagged ones (the model's false alarms on a defective frame) and, up to :data:`MAX_DRIVING` in
  all, the highest of the others (kind ``unmarked``); unmarked, flagged tiles take the frame's label. A defect the
  model passed has no tile unless a reviewer marked where it is; the summary counts such items (their frames are
  still in ``frames/crack``).

The image is the original file when it is still where it was inspected and unchanged (same sha256: the exact
pixels the model saw), otherwise the frame saved in the results folder (``review/<name>.jpg``). An item with
neither (an OK item of a run that saved only flagged frames, whose file has since moved) is skipped and named.
Exporting again to the same folder replaces the earlier export in one step; any other non-empty folder is refused.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from crackscope.inspect.card import Calibration, ModelCard
from crackscope.inspect.database import is_database_url
from crackscope.inspect.images import ImageReadError, file_digest, read_image
from crackscope.inspect.results import InspectionResult
from crackscope.inspect.review.store import Decision, Label, Mark, ReviewError, ReviewStore, consensus
from crackscope.inspect.sinks import artefact_stem

FOLDERS = {Label.DEFECT: "crack", Label.OK: "ok", Label.AMBIGUOUS: "ambiguous"}
CLASSES = ("crack", "ok", "ambiguous")
VOTES = {Label.DEFECT: "crack", Label.OK: "ok"}
MANIFEST = "review-export.csv"
VOTES_FILE = "votes.csv"
GROUPS_FILE = "groups.csv"
FRAMES = "frames"
MAX_DRIVING = 8  # driving tiles per frame, the highest first
OK_TILES = 2  # tiles of a confirmed OK frame that nothing flagged: its closest calls
MAX_MARK_TILES = 16  # tiles per marked region, when it is larger than one tile
DEFAULT_TILE = 224  # tile side when the results folder names no model card and holds no tile


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    out: Path
    counts: dict[str, int]  # crack / ok / ambiguous -> frames
    votes: int  # rows in votes.csv (0: no file)
    skipped: tuple[str, ...]  # "source: reason" of reviewed items without an image
    tiles: dict[str, int] = field(default_factory=dict)  # crack / ok / ambiguous -> tiles
    tile_size: int = 0
    unmarked_escapes: int = 0  # items called defect with no tile to show where (passed by the model, no mark)

    def describe(self) -> str:
        lines = [
            f"exported {sum(self.tiles.values())} tile(s) of {self.tile_size} px to {self.out}: "
            + ", ".join(f"{k} {v}" for k, v in self.tiles.items()),
            f"and {sum(self.counts.values())} reviewed frame(s) whole to {self.out / FRAMES}: "
            + ", ".join(f"{k} {v}" for k, v in self.counts.items()),
            f"votes.csv: {self.votes} vote(s) of tiles of items with several reviewers"
            if self.votes
            else "votes.csv: none",
        ]
        if self.unmarked_escapes:
            lines.append(
                f"note: {self.unmarked_escapes} item(s) called defect show no tile where the defect is (the model "
                "flagged nothing there); mark the missed region on the item page to train on it"
            )
        lines += [f"skipped {item}" for item in self.skipped]
        empty = [name for name in ("crack", "ok") if not self.tiles.get(name)]
        if empty:
            lines.append(f"note: no {' or '.join(empty)} tile yet; train with --data of the base dataset too")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Tile:
    box: tuple[int, int, int, int]  # x, y, side, side in frame pixels
    kind: str  # driving | region | closest | mark
    probability: float | None  # the model's, for inspected tiles
    label: str  # crack | ok | ambiguous
    votes: bool  # whether the item's votes give it a soft target


def export_dataset(
    results: str | os.PathLike, out: str | os.PathLike, artefacts: str | os.PathLike | None = None
) -> ExportSummary:
    """Write the reviewed items of ``results`` as a dataset in ``out`` (see the module docstring).

    ``results`` is a results folder, or the URL of a plant's PostgreSQL store whose writers saved their images in
    ``artefacts`` (without it, only items whose original file is still in place are exported).
    """
    if artefacts and not is_database_url(results):
        raise ReviewError("--artefacts is for a PostgreSQL --results; a results folder holds its own images")
    images = Path(artefacts) if artefacts else None if is_database_url(results) else Path(results)
    out = Path(out)
    if images is not None:
        _check_target(out, images)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with ReviewStore(results) as store:
            summary = _Writer(store, images, staging).write()
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportSummary(
        out, summary.counts, summary.votes, summary.skipped, summary.tiles, summary.tile_size, summary.unmarked_escapes
    )


def _check_target(out: Path, results: Path) -> None:
    if out.resolve() == results.resolve() or results.resolve().is_relative_to(out.resolve()):
        raise ReviewError(f"--out {out} would replace the results folder {results}")
    if out.exists() and not out.is_dir():
        raise ReviewError(f"--out {out} is a file; give a folder for the dataset")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ReviewError(f"--out {out} is a folder that holds something else; give a new or empty folder")


class _Writer:
    """One export into a staging folder."""

    def __init__(self, store: ReviewStore, results: Path | None, staging: Path) -> None:
        self.store, self.results, self.staging = store, results, staging
        self.tile_size = _tile_size(store)
        self.frames: Counter[str] = Counter()
        self.tiles: Counter[str] = Counter()
        self.votes: list[tuple[str, str, str]] = []
        self.groups: list[tuple[str, str]] = []
        self.manifest: list[tuple] = []
        self.skipped: list[str] = []
        self.unmarked_escapes = 0

    def write(self) -> ExportSummary:
        marks = self.store.all_marks()
        decided = {result_id: decisions for result_id, _, decisions in self.store.reviewed()}
        for result_id in list(decided) + [i for i in marks if i not in decided]:
            record = self.store.record(result_id)
            if record is not None:
                self._item(record, decided.get(result_id, []), marks.get(result_id, []))
        if self.votes:
            _write_csv(self.staging / VOTES_FILE, ("image", "annotator", "label"), self.votes)
        _write_csv(self.staging / GROUPS_FILE, ("image", "group"), self.groups)
        _write_csv(self.staging / MANIFEST, MANIFEST_COLUMNS, self.manifest)
        return ExportSummary(
            self.staging,
            {name: self.frames.get(name, 0) for name in CLASSES},
            len(self.votes),
            tuple(self.skipped),
            {name: self.tiles.get(name, 0) for name in CLASSES},
            self.tile_size,
            self.unmarked_escapes,
        )

    def _item(self, record: InspectionResult, decisions: list[Decision], marks: list[Mark]) -> None:
        image_path, reason = _image_of(record, self.results)
        if image_path is None:
            self.skipped.append(f"{record.source}: {reason}")
            return
        try:
            frame = read_image(image_path)
        except ImageReadError as error:
            self.skipped.append(f"{record.source}: {error}")
            return
        stem = artefact_stem(record.source, record.sha256)
        label = consensus(d.label for d in decisions)
        if label is not None:
            relative = f"{FRAMES}/{FOLDERS[label]}/{stem}{image_path.suffix.lower()}"
            (self.staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image_path, self.staging / relative)
            self.frames[FOLDERS[label]] += 1
            self._row(relative, "frame", None, record, record.score, FOLDERS[label], decisions)
        scale = _scale(frame, record)
        calibration = self.store.calibration_for(record.model_id)
        chosen = choose_tiles(record, label, marks, self.tile_size, calibration, scale)
        if label is Label.DEFECT and not any(t.label == "crack" for t in chosen):
            self.unmarked_escapes += 1
        for tile in chosen:
            relative = f"{tile.label}/{stem}.x{tile.box[0]}y{tile.box[1]}.png"
            path = self.staging / relative
            path.parent.mkdir(exist_ok=True)
            if not cv2.imwrite(str(path), crop(frame, tile.box)):
                raise ReviewError(f"could not write {path}")
            self.tiles[tile.label] += 1
            self.groups.append((relative, stem))
            if tile.votes:
                self.votes += _votes(relative, decisions)
            reviewers = decisions if tile.kind != "mark" else [m for m in marks if _overlaps(m.box, tile.box)]
            self._row(relative, tile.kind, tile.box, record, tile.probability, tile.label, reviewers)

    def _row(self, relative, kind, box, record, score, label, by) -> None:
        who = ";".join(
            f"{d.reviewer}={d.label.value}" if isinstance(d, Decision) else f"{d.reviewer}=marked" for d in by
        )
        self.manifest.append(
            (
                relative,
                kind,
                "" if box is None else " ".join(map(str, box)),
                record.id,
                record.source,
                record.sha256,
                record.verdict.value,
                "" if score is None else score,
                label,
                who,
            )
        )


MANIFEST_COLUMNS = ("image", "kind", "box", "result_id", "source", "sha256", "model_verdict", "score", "label", "by")


def choose_tiles(
    record: InspectionResult,
    label: Label | None,
    marks: list[Mark],
    size: int,
    calibration: Calibration | None,
    scale: tuple[float, float] = (1.0, 1.0),
) -> list[_Tile]:
    """The tiles of one reviewed item, in frame pixels of the image read (``scale``: image / record size).

    See the module docstring for which tiles and labels. Boxes are ``size`` x ``size`` and lie inside the image
    when it is at least that large (a smaller image is padded when cut, as the runtime pads it).
    """
    sx, sy = scale
    width, height = round(record.width * sx), round(record.height * sy)
    mark_boxes = [_scaled(m.box, sx, sy) for m in marks]
    tiles: list[_Tile] = []
    taken: set[tuple[int, int, int, int]] = set()  # boxes already cut: a tile is written once
    for box in mark_boxes:
        for tile in _covering(box, size, width, height):
            if tile not in taken:
                taken.add(tile)
                tiles.append(_Tile(tile, "mark", None, "crack", False))
    if label is None:
        return tiles
    item_label = FOLDERS[label]
    flag_at = calibration.ok_below if calibration is not None else 0.5
    inspected = sorted(record.tiles, key=lambda t: -t[4])
    driving = [t for t in inspected if t[4] >= flag_at][:MAX_DRIVING]
    kind = "driving"
    if not driving and label is Label.OK:
        driving, kind = inspected[:OK_TILES], "closest"
    candidates = [(_placed(_scaled(t[:4], sx, sy), size, width, height), kind, float(t[4])) for t in driving]
    for region in record.regions:
        box = _placed(_scaled(region.box, sx, sy), size, width, height)
        if not any(_iou(box, c[0]) > 0.5 for c in candidates):
            candidates.append((box, "region", region.score))
    # Reviewers who call a frame defect and box its defects say where they are: the tiles outside every box are
    # good surface, the flagged ones the model's false alarms on it, the others (the highest first) more of it.
    outside = "ok" if label is Label.DEFECT and mark_boxes else item_label
    if outside != item_label:
        rest = [(_placed(_scaled(t[:4], sx, sy), size, width, height), float(t[4])) for t in inspected[len(driving) :]]
        rest = [(box, p) for box, p in rest if not any(_overlaps(box, m) for m in mark_boxes)]
        candidates += [(box, "unmarked", p) for box, p in rest[: max(0, MAX_DRIVING - len(driving))]]
    for box, kind_of, probability in candidates:
        if any(_overlaps(box, m) for m in mark_boxes) or box in taken:
            continue
        taken.add(box)
        tiles.append(_Tile(box, kind_of, probability, outside, outside == item_label))
    return tiles


def crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The ``box`` of ``frame``, reflect-padded where it runs past the frame (as the runtime pads small frames)."""
    x, y, w, h = box
    height, width = frame.shape[:2]
    pad_bottom, pad_right = max(0, y + h - height), max(0, x + w - width)
    if pad_bottom or pad_right:
        border = cv2.BORDER_REFLECT_101 if min(height, width) > 1 else cv2.BORDER_CONSTANT
        frame = cv2.copyMakeBorder(frame, 0, pad_bottom, 0, pad_right, border)
    return np.ascontiguousarray(frame[y : y + h, x : x + w])


def _placed(box, size: int, width: int, height: int) -> tuple[int, int, int, int]:
    """A ``size`` square centred on ``box``, moved inside the frame (at 0 when the frame is smaller)."""
    x, y, w, h = (float(v) for v in box[:4])
    cx, cy = x + w / 2, y + h / 2
    left = round(min(max(cx - size / 2, 0), max(width - size, 0)))
    top = round(min(max(cy - size / 2, 0), max(height - size, 0)))
    return left, top, size, size


def _covering(box, size: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Tiles of ``size`` that cover ``box``: one centred on it, or a grid when it is larger than a tile."""
    x, y, w, h = box
    across, down = max(1, -(-w // size)), max(1, -(-h // size))
    tiles = []
    for row in range(down):
        for column in range(across):
            cell_w, cell_h = w / across, h / down
            cell = (x + column * cell_w, y + row * cell_h, cell_w, cell_h)
            tiles.append(_placed(cell, size, width, height))
    return list(dict.fromkeys(tiles))[:MAX_MARK_TILES]


def _scaled(box, sx: float, sy: float) -> tuple[int, int, int, int]:
    x, y, w, h = box[:4]
    return round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy))


def _overlaps(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


def _scale(frame: np.ndarray, record: InspectionResult) -> tuple[float, float]:
    """Image pixels per record pixel (1, 1 unless the image read is not the size the model saw)."""
    height, width = frame.shape[:2]
    if not record.width or not record.height:
        return 1.0, 1.0
    return width / record.width, height / record.height


def _tile_size(store: ReviewStore) -> int:
    """The model's input size: from the card of the results folder (a plant store's first model card), else its
    records' tiles, else the default."""
    meta = store.meta()
    card = meta.get("card") or next((value for key, value in sorted(meta.items()) if key.startswith("card:")), None)
    if isinstance(card, dict):
        try:
            return int(ModelCard.from_metadata(card).input_size)
        except (ValueError, TypeError, KeyError):
            pass
    for record in store.records(result_id for result_id, _, _ in store.reviewed()):
        if record.tiles:
            return int(record.tiles[0][2])
    return DEFAULT_TILE


def _image_of(record: InspectionResult, results: Path | None) -> tuple[Path | None, str]:
    """The original file when unchanged, else the saved frame; or None and why."""
    original = Path(record.source)
    try:
        if original.is_file() and file_digest(original.read_bytes()) == record.sha256:
            return original, ""
    except (OSError, ValueError):
        pass
    if record.image_path and results is None:
        return None, f"its saved image {record.image_path} is in the writers' artefacts folder: give --artefacts"
    if record.image_path:
        saved = (results / record.image_path).resolve()
        if saved.is_relative_to(results.resolve()) and saved.is_file():
            return saved, ""
        return None, f"its saved image {record.image_path} is missing"
    return None, "no image was saved for it and the original file is gone or changed"


def _votes(relative: str, decisions: list[Decision]) -> list[tuple[str, str, str]]:
    """Crack / ok votes of an item with several reviewers, none of whom said ambiguous."""
    if len(decisions) < 2 or any(d.label not in VOTES for d in decisions):
        return []
    return [(relative, d.reviewer, VOTES[d.label]) for d in decisions]


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _replace(staging: Path, out: Path) -> None:
    """Put the staged dataset at ``out``; an earlier export there is removed only once the new one is in place."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
