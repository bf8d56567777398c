"""The QA review's view of a results folder: read the inspection records, store the reviewers' decisions.

The review reads ``results.sqlite`` while a batch run or the daemon may still be writing it, so it never uses
:class:`~crackscope.inspect.sinks.ResultStore` (which also appends to ``results.jsonl``): it opens the database
itself, reads the ``results`` table and writes only its own tables, which leave the records untouched:

* ``review_decisions``: the current decision of each reviewer on each record (``ok``, ``defect`` or
  ``ambiguous``, with the time). A reviewer who changes their mind replaces their own row; several reviewers each
  keep theirs, and an item whose reviewers disagree counts as ambiguous (:func:`consensus`).
* ``review_log``: every decision ever made, append-only, so a changed decision stays auditable.
* ``review_marks``: boxes a reviewer drew round a defect (one the model missed, or where it is), in pixels of the
  original frame (they become crack training tiles). Only the reviewer who drew a mark may remove it; a removed
  mark keeps its row, flagged ``removed``, and ``review_mark_log`` keeps every mark drawn and removed,
  append-only, with the time.

Every query runs against the live database, so records a daemon adds appear on the next page load.

The store is a results folder's ``results.sqlite`` or a plant's PostgreSQL database, named by its URL
(``postgresql://qa@db.plant/crackscope``, see :mod:`crackscope.inspect.database`): the same tables and the same
queries, the SQL that differs between the two taken from the connection's
:class:`~crackscope.inspect.schema.Dialect`. A plant store holds the records of many lines: the queue filters by
line (:attr:`QueueFilter.line`).

The review queue puts what a person must look at first: REVIEW items, then DEFECT items by score (highest first),
then a sample of OK items: the records with the lowest ids. Ids are random (uuid4), so the sample is uniform, not
the most or least suspicious OK items, and a sampled item stays in it until enough new records with lower ids
arrive. Reviewing that sample is what lets the stats page estimate the escape rate.

Example:
    >>> with ReviewStore("runs/line3") as store:                     # doctest: +SKIP
    ...     row = store.queue(QueueFilter())[0]
    >>> with ReviewStore("postgresql://qa@db.plant/crackscope") as store:   # doctest: +SKIP
    ...     row = store.queue(QueueFilter(line="3"))[0]
    ...     store.decide(row.id, "alice", Label.DEFECT)
    ...     store.decisions(row.id)
    ...     store.add_mark(row.id, "alice", (120, 40, 64, 32))   # x, y, w, h of the original frame
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from crackscope.inspect.card import Calibration, ModelCard
from crackscope.inspect.database import DatabaseError, connect, first_line, is_database_url, redact
from crackscope.inspect.decision import Verdict
from crackscope.inspect.results import InspectionResult, utc_now
from crackscope.inspect.schema import (
    SCHEMA_VERSION,
    Conditions,
    Dialect,
    RecordFilter,
    SchemaError,
    decode,
    open_schema,
    queue_key,
    record_conditions,
    review_ddl,
    select_sql,
)
from crackscope.inspect.sinks import DB_NAME

# The queue's verdicts in turn: REVIEW by uncertainty (closest to 0.5 first: what labellers would split on), then
# DEFECT and OK by score, then ERROR; within each, the order of schema.queue_key (ties in the order stored).
VERDICT_ORDER = (Verdict.REVIEW, Verdict.DEFECT, Verdict.OK, Verdict.ERROR)
QUEUE_KEY = queue_key("r")


VERDICT_CHOICES = ("queue", "REVIEW", "DEFECT", "OK", "ERROR", "all")
STATUS_CHOICES = ("any", "unreviewed", "reviewed", "disputed")
MAX_REVIEWER_LENGTH = 60
MIN_MARK_SIDE = 4  # px of the original frame: a smaller box is a slip of the mouse, not a region


class ReviewError(ValueError):
    """A results folder the review cannot use, or a request it cannot carry out (unknown item, bad reviewer)."""


class Label(str, Enum):
    """What a person says about an item."""

    OK = "ok"
    DEFECT = "defect"
    AMBIGUOUS = "ambiguous"  # cannot tell, even looking closely


@dataclass(frozen=True)
class Decision:
    """One reviewer's current decision on one record."""

    result_id: str
    reviewer: str
    label: Label
    time: str


@dataclass(frozen=True)
class Mark:
    """A defect region a reviewer marked (one the model missed, or where it is among its regions): ``box`` is
    ``(x, y, w, h)`` in pixels of the original frame."""

    id: int
    result_id: str
    reviewer: str
    box: tuple[int, int, int, int]
    time: str


@dataclass(frozen=True)
class QueueFilter:
    """Which records the queue shows.

    Attributes:
        verdict: ``queue`` (REVIEW, DEFECT, then a sample of OK), one verdict (all of its records), or ``all``.
        since, until: ISO 8601 times (UTC unless they say otherwise); ``since`` inclusive, ``until`` exclusive.
        source: text that the record's source must contain.
        model_id: the model's sha256, or its first characters.
        status: ``any``, ``unreviewed`` (nobody decided yet), ``reviewed``, ``disputed`` (reviewers disagree).
        ok_sample: how many OK records the ``queue`` view samples.
        line: the line that wrote the records (a plant store holds many); empty: every line.
    """

    verdict: str = "queue"
    since: str = ""
    until: str = ""
    source: str = ""
    model_id: str = ""
    status: str = "any"
    ok_sample: int = 50
    line: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICT_CHOICES:
            raise ReviewError(f"verdict must be one of {', '.join(VERDICT_CHOICES)}, got {self.verdict!r}")
        if self.status not in STATUS_CHOICES:
            raise ReviewError(f"status must be one of {', '.join(STATUS_CHOICES)}, got {self.status!r}")
        if self.ok_sample < 0:
            raise ReviewError(f"ok_sample must be at least 0, got {self.ok_sample}")
        for value in (self.since, self.until):
            if value:
                utc_bound(value)

    def scope(self) -> RecordFilter:
        """The records of the time, source, model and line filters (the scope the queue and the counts share)."""
        return RecordFilter(
            since=utc_bound(self.since) if self.since else "",
            until=utc_bound(self.until) if self.until else "",
            source=self.source,
            model_id=self.model_id,
            line=self.line,
        )


@dataclass(frozen=True)
class QueueRow:
    """What the queue shows of one record (no tiles: a queue page stays small)."""

    id: str
    source: str
    time: str
    verdict: Verdict
    score: float | None
    model_id: str
    regions: int
    image_path: str | None
    overlay_path: str | None
    error: str | None
    labels: tuple[Label, ...] = ()  # the reviewers' current decisions
    line: str | None = None

    @property
    def thumbnail(self) -> str | None:
        return self.overlay_path or self.image_path

    @property
    def consensus(self) -> Label | None:
        return consensus(self.labels)


@dataclass(frozen=True)
class Neighbours:
    """Where a record stands in the queue: the ids before and after it, its 1-based ``position`` and the queue's
    ``size``. ``position`` is None when the record is not in the queue; ``following`` is then the queue's first."""

    previous: str | None
    following: str | None
    position: int | None
    size: int


def consensus(labels: Iterable[Label]) -> Label | None:
    """The item's label: what every reviewer said, AMBIGUOUS when they disagree, None when nobody decided."""
    distinct = set(labels)
    if not distinct:
        return None
    return distinct.pop() if len(distinct) == 1 else Label.AMBIGUOUS


def utc_bound(value: str) -> str:
    """An ISO 8601 time (a date, or a date and time; UTC unless it names a zone) in the records' format."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ReviewError(f"{value!r} is not a time; use ISO 8601, e.g. 2025-11-29T14:30") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def clip_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` clipped to a ``width`` x ``height`` frame, its edges rounded to whole pixels.

    A negative ``w`` or ``h`` (a box dragged leftwards or upwards) spans back from ``x`` or ``y``. Raises
    :class:`ReviewError` when the box is not four finite numbers or is under :data:`MIN_MARK_SIDE` px a side once
    clipped.
    """
    try:
        x, y, w, h = (float(value) for value in box)
    except (TypeError, ValueError):
        raise ReviewError(f"a box is four numbers x, y, w, h (pixels of the frame), got {box!r}") from None
    if not all(math.isfinite(value) for value in (x, y, w, h)):
        raise ReviewError(f"a box is four finite numbers x, y, w, h (pixels of the frame), got {box!r}")
    left, right = sorted((x, x + w))
    top, bottom = sorted((y, y + h))
    left, top = round(max(left, 0.0)), round(max(top, 0.0))
    right, bottom = round(min(right, float(width))), round(min(bottom, float(height)))
    if right - left < MIN_MARK_SIDE or bottom - top < MIN_MARK_SIDE:
        raise ReviewError(
            f"a marked region must be at least {MIN_MARK_SIDE} x {MIN_MARK_SIDE} px inside the {width} x {height} "
            f"frame; box {tuple(box)!r} is {max(right - left, 0)} x {max(bottom - top, 0)} px there"
        )
    return left, top, right - left, bottom - top


def clean_reviewer(name: str) -> str:
    """A reviewer's name as stored: trimmed, 1-60 printable characters."""
    name = " ".join((name or "").split())
    if not name or len(name) > MAX_REVIEWER_LENGTH or not name.isprintable():
        raise ReviewError(f"a reviewer name is 1 to {MAX_REVIEWER_LENGTH} printable characters")
    return name


class ReviewStore:
    """A results folder or plant database opened for review: records read live, decisions written beside them (a
    context manager)."""

    def __init__(self, results: str | os.PathLike, *, create: bool = True) -> None:
        self.shared = is_database_url(results)
        self.folder: Path | None = None if self.shared else Path(results)
        self.db_path: Path | None = None if self.folder is None else self.folder / DB_NAME
        self.name = redact(str(results)) if self.db_path is None else str(self.db_path)
        if self.db_path is not None and not self.db_path.is_file():
            raise ReviewError(
                f"{self.folder}: no {DB_NAME} here; --results takes the --out folder of 'crackscope inspect' "
                "or 'crackscope daemon', or the postgresql:// URL of a plant store"
            )
        # No check_same_thread: the web app opens one store per request, but the server may close it on another
        # thread than the one that opened it.
        try:
            self._db = connect(self.db_path or str(results), check_same_thread=False)
        except DatabaseError as error:
            raise ReviewError(str(error)) from None
        self._dialect = self._db.dialect
        self._check_schema()
        if create:  # the web app creates the decision tables once at start, not on every page load
            self._create_tables()

    # --- schema -------------------------------------------------------------------------------------------------

    def _check_schema(self) -> None:
        """Refuse a database that is not a results store of this version; bring a version-1 store up to date."""
        try:
            with self._db.transaction():
                open_schema(self._db, create=False, dialect=self._dialect)
        except self._db.errors as error:
            self.close()
            raise ReviewError(f"{self.name}: not a crackscope results store ({first_line(error)})") from error
        except SchemaError as error:
            self.close()
            raise ReviewError(
                f"{self.name}: results schema version {error.found or 'missing'}, "
                f"this crackscope reads {SCHEMA_VERSION}"
            ) from None

    def _create_tables(self) -> None:
        with self._db.transaction():
            if self._dialect.schema_lock:
                self._db.execute(self._dialect.schema_lock)
            for statement in review_ddl(self._dialect):
                self._db.execute(statement)

    # --- decisions ----------------------------------------------------------------------------------------------

    def decide(self, result_id: str, reviewer: str, label: Label | str) -> Decision:
        """Record (or replace) ``reviewer``'s decision on a record; the record itself is not touched.

        The same decision sent again (a double click, a form sent twice) changes nothing and is not logged again:
        the reviewer's standing decision is returned.
        """
        label = Label(label)
        reviewer = clean_reviewer(reviewer)
        if self.verdict_of(result_id) in (None, Verdict.ERROR):
            raise ReviewError(f"no inspected record {result_id!r} to decide on")
        standing = next((d for d in self.decisions(result_id) if d.reviewer == reviewer), None)
        if standing is not None and standing.label is label:
            return standing
        decision = Decision(result_id, reviewer, label, utc_now())
        row = (decision.result_id, decision.reviewer, decision.label.value, decision.time)
        with self._db.transaction():
            self._db.execute(
                "INSERT INTO review_decisions (result_id, reviewer, label, time) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (result_id, reviewer) DO UPDATE SET label = excluded.label, time = excluded.time",
                row,
            )
            self._db.execute("INSERT INTO review_log (result_id, reviewer, label, time) VALUES (?, ?, ?, ?)", row)
        return decision

    def decisions(self, result_id: str) -> list[Decision]:
        rows = self._db.execute(
            "SELECT result_id, reviewer, label, time FROM review_decisions WHERE result_id = ? ORDER BY time",
            (result_id,),
        )
        return [Decision(r[0], r[1], Label(r[2]), r[3]) for r in rows]

    def all_decisions(self) -> dict[str, list[Decision]]:
        """Every current decision, by record id."""
        found: dict[str, list[Decision]] = defaultdict(list)
        for row in self._db.execute("SELECT result_id, reviewer, label, time FROM review_decisions ORDER BY time"):
            found[row[0]].append(Decision(row[0], row[1], Label(row[2]), row[3]))
        return dict(found)

    def history(self, result_id: str) -> list[Decision]:
        """Every decision ever made on a record, oldest first (changed ones included)."""
        query = "SELECT result_id, reviewer, label, time FROM review_log WHERE result_id = ?"
        rows = self._db.execute(f"{query} ORDER BY {self._dialect.row_order}", (result_id,))
        return [Decision(r[0], r[1], Label(r[2]), r[3]) for r in rows]

    # --- marked defect regions ----------------------------------------------------------------------------------

    def add_mark(self, result_id: str, reviewer: str, box: Sequence[float]) -> Mark:
        """Record that ``reviewer`` sees a defect here (one the model missed, or where it is): ``box`` is
        ``(x, y, w, h)`` in pixels of the original frame (``record.width`` x ``record.height``), clipped to it
        (:func:`clip_box`).

        The same box sent again by the same reviewer (a double click, a form sent twice) is stored once: their
        standing mark is returned.
        """
        reviewer = clean_reviewer(reviewer)
        record = self.record(result_id)
        if record is None or record.verdict is Verdict.ERROR or not (record.width and record.height):
            raise ReviewError(f"no inspected frame {result_id!r} to mark a region on")
        clipped = clip_box(box, record.width, record.height)
        standing = next((m for m in self.marks(result_id) if m.reviewer == reviewer and m.box == clipped), None)
        if standing is not None:
            return standing
        time = utc_now()
        insert = "INSERT INTO review_marks (result_id, reviewer, x, y, w, h, time) VALUES (?, ?, ?, ?, ?, ?, ?)"
        values = (result_id, reviewer, *clipped, time)
        with self._db.transaction():
            if self._db.is_postgresql:  # psycopg has no lastrowid
                mark_id = self._db.execute(insert + " RETURNING id", values).fetchone()[0]
            else:
                mark_id = self._db.execute(insert, values).lastrowid
            mark = Mark(int(mark_id), result_id, reviewer, clipped, time)
            self._db.execute(
                "INSERT INTO review_mark_log VALUES (?, ?, ?, 'add', ?)", (mark.id, result_id, reviewer, time)
            )
        return mark

    def marks(self, result_id: str) -> list[Mark]:
        """The marks standing on a record (removed ones left out), oldest first."""
        rows = self._db.execute(
            "SELECT id, result_id, reviewer, x, y, w, h, time FROM review_marks"
            " WHERE result_id = ? AND removed = 0 ORDER BY id",
            (result_id,),
        )
        return [_mark(row) for row in rows]

    def all_marks(self) -> dict[str, list[Mark]]:
        """Every standing mark, by record id."""
        found: dict[str, list[Mark]] = defaultdict(list)
        rows = self._db.execute(
            "SELECT id, result_id, reviewer, x, y, w, h, time FROM review_marks WHERE removed = 0 ORDER BY id"
        )
        for row in rows:
            found[row[1]].append(_mark(row))
        return dict(found)

    def remove_mark(self, mark_id: int, reviewer: str) -> None:
        """Take back a mark; only the reviewer who drew it may. Removing it again changes nothing."""
        reviewer = clean_reviewer(reviewer)
        row = self._db.execute(
            "SELECT result_id, reviewer, removed FROM review_marks WHERE id = ?", (mark_id,)
        ).fetchone()
        if row is None:
            raise ReviewError(f"no mark {mark_id!r} to remove")
        result_id, drawn_by, removed = row
        if drawn_by != reviewer:
            raise ReviewError(f"mark {mark_id} was drawn by {drawn_by}: only they can remove it")
        if removed:
            return
        with self._db.transaction():
            self._db.execute("UPDATE review_marks SET removed = 1 WHERE id = ?", (mark_id,))
            self._db.execute(
                "INSERT INTO review_mark_log VALUES (?, ?, ?, 'remove', ?)", (mark_id, result_id, reviewer, utc_now())
            )

    # --- records ------------------------------------------------------------------------------------------------

    def record(self, result_id: str) -> InspectionResult | None:
        conditions = record_conditions(RecordFilter(ids=(result_id,)), dialect=self._dialect)
        row = self._db.execute(select_sql(conditions), conditions.params).fetchone()
        return None if row is None else decode(row)

    def records(self, ids: Iterable[str]) -> Iterator[InspectionResult]:
        """The records with these ids, in the order given (unknown ids are left out)."""
        for result_id in ids:
            record = self.record(result_id)
            if record is not None:
                yield record

    def verdict_of(self, result_id: str) -> Verdict | None:
        row = self._db.execute("SELECT verdict FROM results WHERE id = ?", (result_id,)).fetchone()
        return None if row is None else Verdict(row[0])

    def last_rowid(self) -> int:
        """Grows when a record is added: the page polls it to offer a reload."""
        query = f"SELECT COALESCE(MAX({self._dialect.row_order}), 0) FROM results"
        return int(self._db.execute(query).fetchone()[0])

    def model_ids(self) -> list[str]:
        """The models that wrote records here, in order."""
        return self._distinct("model_id")

    def lines(self) -> list[str]:
        """The lines that wrote records here (records of no line left out), for the queue's line filter."""
        return self._distinct("line")

    def _distinct(self, column: str) -> list[str]:
        """The values of ``column`` (one that leads an index) in order, NULL left out: the smallest, then the
        smallest above it, and so on, each one step down the index, where ``SELECT DISTINCT`` would read every record
        (a few models and lines among a million records)."""
        query = (
            f"WITH RECURSIVE found (value) AS (SELECT MIN({column}) FROM results UNION ALL"
            f" SELECT (SELECT MIN({column}) FROM results WHERE {column} > found.value) FROM found"
            " WHERE found.value IS NOT NULL) SELECT value FROM found WHERE value IS NOT NULL"
        )
        return [r[0] for r in self._db.execute(query)]

    def meta(self) -> dict[str, object]:
        rows = self._db.execute("SELECT key, value FROM meta WHERE key != 'schema_version'").fetchall()
        found = {}
        for key, value in rows:
            try:
                found[key] = json.loads(value)
            except json.JSONDecodeError:
                found[key] = value
        return found

    def calibration_for(self, model_id: str) -> Calibration | None:
        """The calibration in force for records of ``model_id``, when the store says which it is.

        The store's ``meta`` holds the card of each model that wrote records (``card:<model id>``; in a results folder
        written before that, ``card`` of the one model that decides there: batch runs and the daemon refuse a folder
        of another model), so this is None only for a store written without one.
        """
        meta = self.meta()
        card = meta.get(f"card:{model_id}")
        if card is None and meta.get("model_id") == model_id:
            card = meta.get("card")
        try:
            if isinstance(card, dict):
                return ModelCard.from_metadata(card).calibration
        except (ValueError, TypeError):
            return None
        return None

    # --- the queue ----------------------------------------------------------------------------------------------

    def queue(
        self,
        selection: QueueFilter,
        offset: int = 0,
        limit: int = 100,
        counts: dict[str, dict[str, int]] | None = None,
    ) -> list[QueueRow]:
        """One page of the queue, in review order, with each record's current decisions (``counts``: as for
        :meth:`queue_size`).

        The queue is read a verdict at a time (:class:`_Segment`), each in the order of the ``results_queue`` index,
        so a page costs the rows it shows (and, past the first page, the sizes of the verdicts it passes over), not
        the size of the store.
        """
        regions = self._dialect.json_length.format(column="r.regions")
        columns = (
            f"r.id, r.source, r.time, r.verdict, r.score, r.model_id, COALESCE({regions}, 0),"
            " r.image_path, r.overlay_path, r.error, r.line"
        )
        rows: list[tuple] = []
        for segment in _segments(selection, self._dialect):
            if len(rows) >= limit:
                break
            if offset:  # a later page: pass over the verdicts it starts after
                size = self._sizes(selection, [segment], _tally_of(counts))[0]
                if offset >= size:
                    offset -= size
                    continue
            query = (
                f"SELECT {columns} FROM results r WHERE r.id IN (SELECT r.id FROM results r"
                f" WHERE {segment.conditions.sql} ORDER BY {self._order()} LIMIT ? OFFSET ?) ORDER BY {self._order()}"
            )
            params = (*segment.conditions.params, limit - len(rows), offset)
            rows += self._db.execute(query, params).fetchall()
            offset = 0
        labels = self._labels([row[0] for row in rows])
        return [
            QueueRow(
                *row[:3], Verdict(row[3]), *row[4:6], int(row[6]), *row[7:10], tuple(labels.get(row[0], ())), row[10]
            )
            for row in rows
        ]

    def queue_ids(self, selection: QueueFilter) -> list[str]:
        """Every id of the queue, in review order."""
        ids = []
        for segment in _segments(selection, self._dialect):
            query = f"SELECT r.id FROM results r WHERE {segment.conditions.sql} ORDER BY {self._order()}"
            ids += [r[0] for r in self._db.execute(query, segment.conditions.params)]
        return ids

    def queue_size(self, selection: QueueFilter, counts: dict[str, dict[str, int]] | None = None) -> int:
        """How many records the queue holds; ``counts``: :meth:`counts` of the same selection, when the caller has
        them already (the size of a whole verdict then follows from them without counting again)."""
        return sum(self._sizes(selection, _segments(selection, self._dialect), _tally_of(counts)))

    def neighbours(self, selection: QueueFilter, result_id: str) -> Neighbours:
        """Where a record stands in the queue: the records before and after it, its position and the queue's size.

        Read from the ``results_queue`` index around the record (keyset: its verdict, order key and row order), so
        it costs the same on the first item as on the millionth.
        """
        segments = _segments(selection, self._dialect)
        sizes = self._sizes(selection, segments)
        key = self._db.execute(
            f"SELECT r.verdict, {QUEUE_KEY}, r.{self._dialect.row_order} FROM results r WHERE r.id = ?", (result_id,)
        ).fetchone()
        at = next((i for i, s in enumerate(segments) if key is not None and s.verdict.value == key[0]), None)
        if at is not None:
            member = segments[at].conditions.also("r.id = ?", result_id)
            if self._db.execute(f"SELECT 1 FROM results r WHERE {member.sql}", member.params).fetchone() is None:
                at = None
        if at is None:
            return Neighbours(None, self._end(segments, sizes, last=False), None, sum(sizes))
        order = f"r.{self._dialect.row_order}"
        here = segments[at].conditions
        before = here.also(f"{QUEUE_KEY} <= ? AND ({QUEUE_KEY} < ? OR {order} < ?)", key[1], key[1], key[2])
        after = here.also(f"{QUEUE_KEY} >= ? AND ({QUEUE_KEY} > ? OR {order} > ?)", key[1], key[1], key[2])
        ahead = self._db.execute(f"SELECT COUNT(*) FROM results r WHERE {before.sql}", before.params).fetchone()[0]
        previous = self._edge(before, last=True) or self._end(segments[:at], sizes[:at], last=True)
        following = self._edge(after, last=False) or self._end(segments[at + 1 :], sizes[at + 1 :], last=False)
        return Neighbours(previous, following, sum(sizes[:at]) + int(ahead) + 1, sum(sizes))

    def counts(self, selection: QueueFilter) -> dict[str, dict[str, int]]:
        """Records and reviewed records per verdict, within the selection's time, source, model and line filters."""
        found = self._tally(selection.scope())
        return {v.value: dict(zip(("records", "reviewed"), found.get(v.value, (0, 0)), strict=True)) for v in Verdict}

    def _tally(self, scope: RecordFilter) -> dict[str, tuple[int, int]]:
        """``verdict -> (records, reviewed records)`` of the records ``scope`` picks.

        Two counts rather than one pass that asks of every record whether it was reviewed: the records per verdict
        come from an index alone (``results_verdict``, ``results_line``, ``results_model``), the reviewed ones from
        the few records with decisions. A filter no index holds (source text, times) means reading every record:
        then in the table's own order, summed per verdict, because SQLite would group them by walking an index and
        fetching each record from it (ten times slower).
        """
        where = record_conditions(scope, "r", self._dialect)
        if scope.source or scope.since or scope.until:
            every = record_conditions(replace(scope, verdicts=()), "r", self._dialect)  # not by the verdict's index
            sums = ", ".join(f"SUM(CASE WHEN r.verdict = '{v.value}' THEN 1 ELSE 0 END)" for v in Verdict)
            row = self._db.execute(f"SELECT {sums} FROM results r WHERE {every.sql}", every.params).fetchone()
            totals = {v.value: n or 0 for v, n in zip(Verdict, row, strict=True)}
        else:
            query = f"SELECT r.verdict, COUNT(*) FROM results r WHERE {where.sql} GROUP BY r.verdict"
            totals = dict(self._db.execute(query, where.params).fetchall())
        # from the reviewed ids to their records (CROSS JOIN: SQLite keeps that order, which it might otherwise turn
        # round to walk a verdict's million records)
        decided = (
            "SELECT r.verdict, COUNT(*) FROM (SELECT DISTINCT result_id FROM review_decisions) d CROSS JOIN results r"
            f" WHERE r.id = d.result_id AND {where.sql} GROUP BY r.verdict"
        )
        done = dict(self._db.execute(decided, where.params).fetchall())
        return {verdict: (int(n), int(done.get(verdict, 0))) for verdict, n in totals.items()}

    def _sizes(
        self, selection: QueueFilter, segments: Sequence[_Segment], tally: dict[str, tuple[int, int]] | None = None
    ) -> list[int]:
        """How many records each segment holds: a whole verdict's from the records and reviewed records per verdict
        (``tally``, else counted once for all of them), the OK sample's and disputed records counted."""
        counted = selection.status != "disputed"
        whole = tuple(s.verdict for s in segments if s.whole and counted)
        if whole and tally is None:
            tally = self._tally(replace(selection.scope(), verdicts=whole))
        sizes = []
        for segment in segments:
            if segment.whole and counted:
                records, reviewed = (tally or {}).get(segment.verdict.value, (0, 0))
                sizes.append({"any": records, "reviewed": reviewed, "unreviewed": records - reviewed}[selection.status])
            else:
                query = f"SELECT COUNT(*) FROM results r WHERE {segment.conditions.sql}"
                sizes.append(int(self._db.execute(query, segment.conditions.params).fetchone()[0]))
        return sizes

    def _order(self, descending: bool = False) -> str:
        """The queue's order within a segment (that of the ``results_queue`` index), or its reverse."""
        way = " DESC" if descending else ""
        return f"{QUEUE_KEY}{way}, r.{self._dialect.row_order}{way}"

    def _edge(self, where: Conditions, *, last: bool) -> str | None:
        """The id of the first (or last) record in queue order of those that meet ``where``."""
        query = f"SELECT r.id FROM results r WHERE {where.sql} ORDER BY {self._order(last)} LIMIT 1"
        row = self._db.execute(query, where.params).fetchone()
        return None if row is None else row[0]

    def _end(self, segments: Sequence[_Segment], sizes: Sequence[int], *, last: bool) -> str | None:
        """The id of the first (or last) record of these segments (``sizes``: how many records each holds)."""
        pairs = list(zip(segments, sizes, strict=True))
        segment = next((s for s, n in (pairs[::-1] if last else pairs) if n), None)
        return None if segment is None else self._edge(segment.conditions, last=last)

    def _labels(self, ids: list[str]) -> dict[str, list[Label]]:
        found: dict[str, list[Label]] = defaultdict(list)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for result_id, label in self._db.execute(
                f"SELECT result_id, label FROM review_decisions WHERE result_id IN ({marks}) ORDER BY reviewer", chunk
            ):
                found[result_id].append(Label(label))
        return found

    # --- what the stats page and the export read ----------------------------------------------------------------

    def verdict_totals(self, model_id: str) -> dict[str, int]:
        """Records per verdict of one model."""
        rows = self._db.execute(
            "SELECT verdict, COUNT(*) FROM results WHERE model_id = ? GROUP BY verdict", (model_id,)
        )
        found = Counter(dict(rows.fetchall()))
        return {v.value: int(found.get(v.value, 0)) for v in Verdict}

    def reviewed(self, model_id: str | None = None) -> list[tuple[str, Verdict, list[Decision]]]:
        """``(record id, model verdict, current decisions)`` of every reviewed record (of one model, if given)."""
        decisions = self.all_decisions()
        query = "SELECT id, verdict, model_id FROM results WHERE id IN (SELECT result_id FROM review_decisions)"
        found = []
        for result_id, verdict, record_model in self._db.execute(f"{query} ORDER BY {self._dialect.row_order}"):
            if model_id is None or record_model == model_id:
                found.append((result_id, Verdict(verdict), decisions.get(result_id, [])))
        return found

    # --- lifetime -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _mark(row: tuple) -> Mark:
    """A :class:`Mark` from ``(id, result_id, reviewer, x, y, w, h, time)``."""
    return Mark(int(row[0]), row[1], row[2], (int(row[3]), int(row[4]), int(row[5]), int(row[6])), row[7])


@dataclass(frozen=True)
class _Segment:
    """The records of one verdict that a queue view shows (a view is one to four of them, in turn).

    Attributes:
        verdict: the verdict.
        conditions: those (on ``results r``) of the records shown: the filters, the verdict, the status and, for the
            queue's OK, the sample.
        whole: every record of the verdict within the filters is in it before the status filter (it is not the OK
            sample), so its size follows from the counts per verdict.
    """

    verdict: Verdict
    conditions: Conditions
    whole: bool


def _tally_of(counts: dict[str, dict[str, int]] | None) -> dict[str, tuple[int, int]] | None:
    """:meth:`ReviewStore.counts` as ``verdict -> (records, reviewed records)``."""
    return None if counts is None else {v: (c["records"], c["reviewed"]) for v, c in counts.items()}


def _segments(selection: QueueFilter, dialect: Dialect) -> list[_Segment]:
    """The segments of a queue view in review order: ``queue`` is REVIEW, DEFECT and the OK sample; ``all`` every
    verdict; a verdict itself alone."""
    if selection.verdict in ("queue", "all"):
        verdicts = VERDICT_ORDER if selection.verdict == "all" else VERDICT_ORDER[:3]
    else:
        verdicts = (Verdict(selection.verdict),)
    reviewed = "EXISTS (SELECT 1 FROM review_decisions d WHERE d.result_id = r.id)"
    status = {
        "any": None,
        "unreviewed": f"NOT {reviewed}",
        "reviewed": reviewed,
        # the few disputed records first (a semi-join), rather than a count of labels for every record
        "disputed": "r.id IN (SELECT d.result_id FROM review_decisions d GROUP BY d.result_id"
        " HAVING COUNT(DISTINCT d.label) > 1)",
    }[selection.status]
    segments = []
    for verdict in verdicts:
        conditions = record_conditions(replace(selection.scope(), verdicts=(verdict,)), "r", dialect)
        sample = selection.verdict == "queue" and verdict is Verdict.OK
        if sample:
            # The OK sample is drawn within the time, source, model and line filters, before the status filter, so
            # reviewing a sampled item does not pull another one in. Its ids alone pick its records (the filters
            # are the sample's own), so the databases read those few by id.
            drawn = record_conditions(replace(selection.scope(), verdicts=(Verdict.OK,)), "o", dialect)
            conditions = Conditions(
                (f"r.id IN (SELECT o.id FROM results o WHERE {drawn.sql} ORDER BY o.id LIMIT ?)",),
                (*drawn.params, selection.ok_sample),
            )
        if status:
            conditions = conditions.also(status)
        segments.append(_Segment(verdict, conditions, whole=not sample))
    return segments
