"""Where results go: the results store (SQLite + JSONL) and the saved images of flagged frames.

A results folder holds:

* ``results.sqlite``: the ``results`` table, one row per input (WAL mode, one transaction per batch, schema
  version in ``meta``). It is the source of truth: a run that is killed and started again asks it which inputs
  are done (same source and sha256) and skips them, and a unique index makes a duplicate record impossible.
* ``results.jsonl``: the same records, one JSON object per line, for streaming tools. It is appended after each
  SQLite commit; when a run was killed between the two, opening the store appends what the JSONL missed and drops a
  half-written last line, so both always hold the same records.
* ``review/``: for saved items, the frame (``<name>.jpg``), its overlay (``<name>.overlay.jpg``) and colour
  heatmap (``<name>.heatmap.png``), written atomically (temporary name, then rename).

Example:
    >>> with ResultStore("out") as store:                      # doctest: +SKIP
    ...     store.add([record])
    ...     store.done_keys()
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from enum import Enum
from pathlib import Path

import cv2
import numpy as np

from crackscope.inspect.card import ModelCard
from crackscope.inspect.decision import Verdict
from crackscope.inspect.frames import FrameInspection
from crackscope.inspect.overlay import colour_heatmap, render_overlay
from crackscope.inspect.results import InspectionResult, result_from_inspection
from crackscope.inspect.schema import (
    SCHEMA_VERSION,
    RecordFilter,
    SchemaError,
    decode,
    encode,
    insert_sql,
    open_schema,
    record_conditions,
    select_sql,
)
from crackscope.inspect.tiling import to_bgr8

DB_NAME, JSONL_NAME, REVIEW_DIR = "results.sqlite", "results.jsonl", "review"


class StoreError(RuntimeError):
    """A results folder that cannot be used (foreign or newer schema, unwritable)."""


class ResultStore:
    """The results of one folder: SQLite (source of truth) and JSONL, kept in step (a context manager)."""

    def __init__(self, folder: str | os.PathLike, *, check_same_thread: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db_path = self.folder / DB_NAME
        self.jsonl_path = self.folder / JSONL_NAME
        self._db = sqlite3.connect(self.db_path, timeout=30, check_same_thread=check_same_thread)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._create_schema()
        self._sync_jsonl()

    # --- schema ---------------------------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        try:
            with self._db:
                open_schema(self._db, create=True)
        except SchemaError as error:
            raise StoreError(
                f"{self.db_path}: results schema version {error.found}, this crackscope writes {SCHEMA_VERSION}; "
                "use a new --out folder"
            ) from None

    def set_meta(self, **values: object) -> None:
        """Store run information (model id, calibration in force, ...) as JSON under ``meta``."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(key, json.dumps(value, sort_keys=True)) for key, value in values.items()],
            )

    def claim(self, model_id: str, model_path: str, card: ModelCard) -> None:
        """Record which model decides here; a folder holding another model's results is refused (never mixed).

        Batch runs and the daemon both call this before their first record, so resuming a run, or pointing a daemon
        at an old folder, with a different model stops with a clear error instead of mixing two models' decisions.
        """
        meta = self.meta()
        earlier = meta.get("model_id")
        if earlier and earlier != model_id:
            raise StoreError(
                f"{self.folder} holds results of another model ({str(earlier)[:12]}..., {meta.get('model_path')}); "
                f"{model_path} is {model_id[:12]}...: use a new output folder, or the same model to resume"
            )
        self.set_meta(model_id=model_id, model_path=model_path, card=card.to_metadata())

    def meta(self) -> dict[str, object]:
        rows = self._db.execute("SELECT key, value FROM meta WHERE key != 'schema_version'").fetchall()
        return {key: json.loads(value) for key, value in rows}

    # --- writing --------------------------------------------------------------------------------------------------

    def add(self, records: Iterable[InspectionResult]) -> int:
        """Store records in one transaction, then append them to the JSONL; returns how many were new.

        A record whose (source, sha256) is already stored is ignored, so a resumed run cannot duplicate one.
        """
        records = list(records)
        if not records:
            return 0
        new = []
        with self._db:
            for record in records:
                cursor = self._db.execute(insert_sql(), encode(record))
                if cursor.rowcount:
                    new.append(record)
        self._append_jsonl(new)
        return len(new)

    def _append_jsonl(self, records: list[InspectionResult]) -> None:
        if not records:
            return
        with self.jsonl_path.open("a", encoding="utf-8") as handle:
            handle.write("".join(record.dumps() + "\n" for record in records))
            handle.flush()
            os.fsync(handle.fileno())

    def _sync_jsonl(self) -> None:
        """Make the JSONL hold exactly the SQLite records (after a kill between the two writes)."""
        lines = self.jsonl_path.read_text(encoding="utf-8").splitlines() if self.jsonl_path.exists() else []
        kept, ids = [], set()
        stored = {row[0] for row in self._db.execute("SELECT id FROM results")}
        for line in lines:
            try:
                record_id = json.loads(line)["id"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a kill
            if record_id in stored and record_id not in ids:
                kept.append(line)
                ids.add(record_id)
        if len(kept) != len(lines):
            partial = self.jsonl_path.with_name(self.jsonl_path.name + ".partial")
            partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(partial, self.jsonl_path)
        missing = [r for r in self.records() if r.id not in ids]
        self._append_jsonl(missing)

    # --- reading --------------------------------------------------------------------------------------------------

    def done_keys(self) -> set[tuple[str, str]]:
        """``(source, sha256)`` of every stored record (the resume rule)."""
        return set(self._db.execute("SELECT source, sha256 FROM results").fetchall())

    def records(self, selection: RecordFilter | None = None) -> Iterator[InspectionResult]:
        """The stored records (those ``selection`` picks, when given), in the order they were stored."""
        conditions = record_conditions(selection or RecordFilter())
        for row in self._db.execute(f"{select_sql(conditions)} ORDER BY rowid", conditions.params):
            yield decode(row)

    def counts(self) -> dict[str, int]:
        found = Counter(dict(self._db.execute("SELECT verdict, COUNT(*) FROM results GROUP BY verdict").fetchall()))
        return {v.value: int(found.get(v.value, 0)) for v in Verdict}

    def integrity(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # --- lifetime -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- saved images ---------------------------------------------------------------------------------------------------


class SavePolicy(str, Enum):
    """Which inspected frames get their image, overlay and heatmap saved."""

    FLAGGED = "defect"  # DEFECT and REVIEW: what a person will look at
    ALL = "all"
    NONE = "none"

    def wants(self, verdict: Verdict) -> bool:
        if self is SavePolicy.ALL:
            return verdict is not Verdict.ERROR
        return self is SavePolicy.FLAGGED and verdict in (Verdict.DEFECT, Verdict.REVIEW)


def artefact_stem(source: str, sha256: str) -> str:
    """A file-name-safe, unique and repeatable name for an input's saved images."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.split("#")[0]).stem)[:60] or "frame"
    suffix = source.split("#", 1)[1] if "#" in source else ""
    suffix = re.sub(r"[^A-Za-z0-9]+", "", suffix)[:12]
    return f"{base}{'-' + suffix if suffix else ''}-{sha256[:10]}"


def save_artefacts(
    folder: Path, stem: str, frame: np.ndarray, inspection: FrameInspection, *, save_frame: bool = True
) -> dict[str, str]:
    """Write the frame (optional), overlay and colour heatmap under ``folder/review``; paths relative to ``folder``."""
    review = folder / REVIEW_DIR
    review.mkdir(parents=True, exist_ok=True)
    frame = to_bgr8(frame)
    paths = {
        "overlay": (f"{stem}.overlay.jpg", render_overlay(frame, inspection)),
        "heatmap": (f"{stem}.heatmap.png", colour_heatmap(inspection.heatmap)),
    }
    if save_frame:
        paths["image"] = (f"{stem}.jpg", frame)
    written = {}
    for key, (name, image) in paths.items():
        _write_image_atomically(review / name, image)
        written[key] = f"{REVIEW_DIR}/{name}"
    return written


def _write_image_atomically(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(path.suffix, image, [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix == ".jpg" else [])
    if not ok:
        raise OSError(f"{path}: could not encode the image")
    partial = path.with_name(path.name + ".partial")
    try:
        encoded.tofile(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def remove_partials(folder: Path) -> None:
    """Delete ``*.partial`` files a killed run left behind."""
    for partial in folder.glob("**/*.partial"):
        partial.unlink(missing_ok=True)


def record_inspection(
    folder: Path,
    frame: np.ndarray,
    inspection: FrameInspection,
    *,
    source: str,
    sha256: str,
    model_id: str,
    policy: SavePolicy,
    save_frame: bool = True,
    timings: dict[str, float] | None = None,
) -> InspectionResult:
    """Save the images the policy asks for, then build the record that points at them (batch runs and daemon)."""
    paths: dict[str, str] = {}
    if policy.wants(inspection.verdict):
        started = time.perf_counter()
        paths = save_artefacts(folder, artefact_stem(source, sha256), frame, inspection, save_frame=save_frame)
        timings = {**(timings or {}), "save": time.perf_counter() - started}
    return result_from_inspection(
        inspection, source=source, sha256=sha256, model_id=model_id, paths=paths, timings=timings
    )
