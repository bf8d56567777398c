"""Where results go: the results store (SQLite + JSONL, or a plant's PostgreSQL) and the saved images of flagged frames.

A results folder holds:

* ``results.sqlite``: the ``results`` table, one row per input (WAL mode, one transaction per batch, schema
  version in ``meta``). It is the source of truth: a run that is killed and started again asks it which inputs
  are done (same source and sha256) and skips them, and a unique index makes a duplicate record impossible.
* ``results.jsonl``: the same records, one JSON object per line, for streaming tools. It is appended after each
  SQLite commit; when a run was killed between the two, opening the store appends what the JSONL missed and drops a
  half-written last line, so both always hold the same records.
* ``review/``: for saved items, the frame (``<name>.jpg``), its overlay (``<name>.overlay.jpg``) and colour
  heatmap (``<name>.heatmap.png``), written atomically (temporary name, then rename).

A plant store is a PostgreSQL database named by its URL instead of a folder (:mod:`.database`): the same tables,
the same resume rule and the same one transaction per batch, with many batch workers and daemons writing at once
(the unique key on source + sha256 and ``ON CONFLICT DO NOTHING`` keep each input's record once, whoever writes it).
It has no JSONL (the database is the stream), each writer tags its records with its line and station, and the
saved images go to a local folder of the writer's (``--artefacts``), their paths in the records relative to it.
A writer that loses its connection (the server restarts) connects again and repeats the batch, which stores only
what the server had not committed.

Example:
    >>> with ResultStore("out") as store:                      # doctest: +SKIP
    ...     store.add([record])
    ...     store.done_keys()
    >>> with ResultStore("postgresql://qa@db/plant", line="3", station="cam1") as store:   # doctest: +SKIP
    ...     store.add([record])                                # stored with line "3", station "cam1"
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from enum import Enum
from pathlib import Path

import cv2
import numpy as np

from crackscope.inspect.card import ModelCard
from crackscope.inspect.database import (
    DatabaseError,
    DatabaseUnreachable,
    connect,
    first_line,
    is_database_url,
    redact,
)
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
KEYS_PER_QUERY = 500  # sources asked for in one statement (SQLite allows 32766 parameters, PostgreSQL 65535)


class StoreError(RuntimeError):
    """A results store that cannot be used (foreign or newer schema, unwritable, unreachable)."""


class StoreUnavailable(StoreError):
    """A plant store whose server did not answer when opened: it may answer later (a server restarting, or not up
    yet when a line's PC boots first)."""


class ResultStore:
    """The results of one folder (SQLite, the source of truth, and JSONL, kept in step) or of a plant's PostgreSQL
    database (``target`` is then its URL), a context manager.

    Records are stored tagged with ``line`` and ``station`` (those a record carries itself win).
    """

    def __init__(
        self,
        target: str | os.PathLike,
        *,
        line: str | None = None,
        station: str | None = None,
        check_same_thread: bool = True,
    ) -> None:
        self.line, self.station = line or None, station or None
        self.shared = is_database_url(target)  # many writers at once: a plant store
        self.folder: Path | None = None if self.shared else Path(target)
        self.db_path: Path | None = None
        self.jsonl_path: Path | None = None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.db_path, self.jsonl_path = self.folder / DB_NAME, self.folder / JSONL_NAME
        self.name = str(self.db_path) if self.db_path else redact(str(target))
        try:
            self._db = connect(self.db_path or str(target), check_same_thread=check_same_thread)
        except DatabaseUnreachable as error:
            raise StoreUnavailable(str(error)) from None
        except DatabaseError as error:
            raise StoreError(str(error)) from None
        if not self._db.is_postgresql:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._create_schema()
        if self.jsonl_path is not None:
            self._sync_jsonl()

    # --- schema ---------------------------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        try:
            with self._db.transaction():
                open_schema(self._db, create=True, dialect=self._db.dialect)
        except SchemaError as error:
            self.close()
            advice = "use another database" if self.shared else "use a new --out folder"
            raise StoreError(
                f"{self.name}: results schema version {error.found}, this crackscope writes {SCHEMA_VERSION}; {advice}"
            ) from None
        except self._db.errors as error:
            self.close()
            raise StoreError(f"{self.name}: not usable as a results store ({first_line(error)})") from None

    def set_meta(self, **values: object) -> None:
        """Store run information (model id, calibration in force, ...) as JSON under ``meta``."""
        self._put_meta(values)

    def _put_meta(self, values: dict[str, object]) -> None:
        rows = [(key, json.dumps(value, sort_keys=True)) for key, value in values.items()]
        with self._db.transaction():
            self._db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rows,
            )

    def claim(self, model_id: str, model_path: str, card: ModelCard) -> None:
        """Record which model decides here; a folder holding another model's results is refused (never mixed).

        Batch runs and the daemon both call this before their first record, so resuming a run, or pointing a daemon
        at an old folder, with a different model stops with a clear error instead of mixing two models' decisions.
        A plant store holds the records of many lines, whose models differ and change over the years: there each
        model's card is kept (``card:<model id>``, which the review reads for the calibration in force) and none
        is refused; every record says which model decided it.
        """
        cards = {f"card:{model_id}": card.to_metadata()}
        if self.shared:
            self._put_meta(cards)
            return
        meta = self.meta()
        earlier = meta.get("model_id")
        if earlier and earlier != model_id:
            raise StoreError(
                f"{self.folder} holds results of another model ({str(earlier)[:12]}..., {meta.get('model_path')}); "
                f"{model_path} is {model_id[:12]}...: use a new output folder, or the same model to resume"
            )
        self._put_meta({"model_id": model_id, "model_path": model_path, "card": card.to_metadata(), **cards})

    def meta(self) -> dict[str, object]:
        rows = self._db.execute("SELECT key, value FROM meta WHERE key != 'schema_version'").fetchall()
        return {key: json.loads(value) for key, value in rows}

    # --- writing --------------------------------------------------------------------------------------------------

    def add(self, records: Iterable[InspectionResult]) -> int:
        """Store records in one transaction, then append them to the JSONL; returns how many were new.

        A record whose (source, sha256) is already stored is ignored, so a resumed run cannot duplicate one.
        """
        records = [self._tagged(record) for record in records]
        if not records:
            return 0

        # Writers of a plant store insert in one order (by resume key), so two transactions that meet on the same
        # inputs wait for each other in turn instead of in a circle (a deadlock).
        ordered = sorted(records, key=lambda r: (r.source, r.sha256)) if self.shared else records

        def insert(db) -> list[InspectionResult]:  # run again in full after a lost connection: safe to repeat
            return [record for record in ordered if db.execute(insert_sql(), encode(record)).rowcount]

        new = self._db.transact(insert)
        self._append_jsonl(new)
        return len(new)

    def _tagged(self, record: InspectionResult) -> InspectionResult:
        """``record`` with this store's line and station where it has none of its own."""
        line = record.line if record.line is not None else self.line
        station = record.station if record.station is not None else self.station
        if (line, station) == (record.line, record.station):
            return record
        return replace(record, line=line, station=station)

    def _append_jsonl(self, records: list[InspectionResult]) -> None:
        if not records or self.jsonl_path is None:
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

    def done_keys(self, sources: Iterable[str] | None = None, prefix: str = "") -> set[tuple[str, str]]:
        """``(source, sha256)`` of the stored records (the resume rule): of every record, of those whose source is
        one of ``sources``, or of those whose source starts with ``prefix`` (a plant store holds millions: a run asks
        only for its own)."""
        query = "SELECT source, sha256 FROM results"
        if sources is not None:
            names, keys = list(dict.fromkeys(sources)), set()
            for start in range(0, len(names), KEYS_PER_QUERY):
                chunk = names[start : start + KEYS_PER_QUERY]
                marks = ", ".join("?" for _ in chunk)
                keys.update(tuple(row) for row in self._db.execute(f"{query} WHERE source IN ({marks})", chunk))
            return keys
        if prefix:
            rows = self._db.execute(f"{query} WHERE substr(source, 1, ?) = ?", (len(prefix), prefix))
        else:
            rows = self._db.execute(query)
        return {tuple(row) for row in rows}

    def records(self, selection: RecordFilter | None = None) -> Iterator[InspectionResult]:
        """The stored records (those ``selection`` picks, when given), in the order they were stored."""
        conditions = record_conditions(selection or RecordFilter(), dialect=self._db.dialect)
        query = f"{select_sql(conditions)} ORDER BY {self._db.dialect.row_order}"
        for row in self._db.execute(query, conditions.params):
            yield decode(row)

    def counts(self, selection: RecordFilter | None = None) -> dict[str, int]:
        """Records per verdict (those ``selection`` picks, when given)."""
        conditions = record_conditions(selection or RecordFilter(), dialect=self._db.dialect)
        query = f"SELECT verdict, COUNT(*) FROM results WHERE {conditions.sql} GROUP BY verdict"
        found = Counter(dict(tuple(row) for row in self._db.execute(query, conditions.params).fetchall()))
        return {v.value: int(found.get(v.value, 0)) for v in Verdict}

    def integrity(self) -> str:
        """SQLite's ``integrity_check`` (``ok`` when sound); a PostgreSQL server checks its own pages, so there this
        is ``ok`` once the server answers."""
        if self._db.is_postgresql:
            self._db.execute("SELECT 1").fetchone()
            return "ok"
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


def remove_partials(folder: Path, older_than_s: float = 0.0) -> None:
    """Delete ``*.partial`` files a killed run left behind (only those older than ``older_than_s``: in a folder that
    other writers share, theirs may be in the middle of being written)."""
    cutoff = time.time() - older_than_s
    for partial in folder.glob("**/*.partial"):
        try:
            if older_than_s <= 0 or partial.stat().st_mtime < cutoff:
                partial.unlink(missing_ok=True)
        except OSError:
            continue  # renamed or removed by its writer meanwhile


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
