"""One schema for both stores: columns, portable DDL, version checks, records as rows, typed record filters."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import fields

import pytest

from crackscope.inspect.decision import Verdict
from crackscope.inspect.frames import Region
from crackscope.inspect.results import InspectionResult, new_id
from crackscope.inspect.review.store import ReviewError, ReviewStore
from crackscope.inspect.schema import (
    META_DDL,
    POSTGRESQL,
    RESULT_COLUMN_NAMES,
    RESULTS_DDL,
    SCHEMA_VERSION,
    SQLITE,
    RecordFilter,
    decode,
    encode,
    insert_sql,
    record_conditions,
    review_ddl,
    select_sql,
)
from crackscope.inspect.sinks import DB_NAME, ResultStore, StoreError

MODEL = "ab" * 32
# regions as every crackscope so far has written them into results.sqlite (json.dumps, keys in this order)
OLD_REGIONS = '[{"box": [20, 10, 40, 30], "score": 0.9712345678901234, "peak": 1.234567, "verdict": "DEFECT"}]'


def _record(source: str, verdict: Verdict, time: str, model_id: str = MODEL, regions=()) -> InspectionResult:
    return InspectionResult(new_id(), source, "cd" * 32, time, verdict, 0.5, model_id, 64, 48, regions=regions)


def test_the_results_columns_are_the_fields_of_a_record():
    assert tuple(f.name for f in fields(InspectionResult)) == RESULT_COLUMN_NAMES


@pytest.mark.parametrize("dialect", [SQLITE, POSTGRESQL], ids=lambda d: d.name)
def test_the_shared_ddl_uses_no_sqlite_only_syntax(dialect):
    for statement in (META_DDL, *RESULTS_DDL, *review_ddl(dialect)):
        assert "IF NOT EXISTS" in statement
        for sqlite_only in ("rowid", "OR IGNORE", "OR REPLACE", "AUTOINCREMENT", "PRAGMA", "?", " REAL"):
            assert sqlite_only not in statement, (sqlite_only, statement)
    assert "?" not in insert_sql(POSTGRESQL) and "%s" in insert_sql(POSTGRESQL)


def test_regions_are_typed_and_stored_byte_for_byte_as_before(tmp_path):
    with ResultStore(tmp_path / "run"):
        pass
    db = sqlite3.connect(tmp_path / "run" / DB_NAME)
    with db:
        db.execute(
            "INSERT INTO results (id, source, sha256, time, verdict, score, model_id, width, height, regions, tiles,"
            " tiles_skipped, timings) VALUES ('old', 'a.png', ?, '2026-01-01T00:00:00.000+00:00', 'DEFECT', 0.97, ?,"
            " 64, 48, ?, '[[0, 0, 48, 48, 0.97]]', 0, '{}')",
            ("cd" * 32, MODEL, OLD_REGIONS),
        )
    row = db.execute(select_sql() + " WHERE id = 'old'").fetchone()
    record = decode(row)
    assert record.regions == (Region((20, 10, 40, 30), 0.9712345678901234, 1.234567, Verdict.DEFECT),)
    assert encode(record) == row
    assert encode(record)[RESULT_COLUMN_NAMES.index("regions")] == OLD_REGIONS
    assert InspectionResult.from_json(json.loads(record.dumps())) == record
    with ReviewStore(tmp_path / "run") as review:
        assert review.record("old") == record


def test_both_stores_refuse_a_schema_version_they_do_not_know(tmp_path):
    with ResultStore(tmp_path / "run"):
        pass
    db = sqlite3.connect(tmp_path / "run" / DB_NAME)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.close()
    newer = f"schema version {SCHEMA_VERSION + 1}, this crackscope"
    with pytest.raises(StoreError, match=f"{newer} writes {SCHEMA_VERSION}"):
        ResultStore(tmp_path / "run")
    with pytest.raises(ReviewError, match=f"{newer} reads {SCHEMA_VERSION}"):
        ReviewStore(tmp_path / "run")


def test_the_review_store_refuses_a_database_without_a_schema_version(tmp_path):
    (tmp_path / "run").mkdir()
    db = sqlite3.connect(tmp_path / "run" / DB_NAME)
    with db:
        db.execute(META_DDL)
        for statement in RESULTS_DDL:
            db.execute(statement)
    db.close()
    with pytest.raises(ReviewError, match="schema version missing"):
        ReviewStore(tmp_path / "run")


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (RecordFilter(), ["a.png", "b.png", "line2/c.png", "d.png"]),
        (RecordFilter(verdicts=(Verdict.DEFECT, Verdict.REVIEW)), ["a.png", "line2/c.png"]),
        (RecordFilter(source="line2/"), ["line2/c.png"]),
        (RecordFilter(model_id="ef"), ["d.png"]),
        (RecordFilter(since="2026-01-02T00:00:00.000+00:00"), ["b.png", "line2/c.png", "d.png"]),
        (RecordFilter(until="2026-01-02T00:00:00.000+00:00"), ["a.png"]),
        (RecordFilter(verdicts=(Verdict.OK,), model_id=MODEL[:8]), ["b.png"]),
        (RecordFilter(source="%"), []),  # no pattern characters: the text itself is looked for
    ],
)
def test_records_are_picked_by_typed_filters(tmp_path, selection, expected):
    with ResultStore(tmp_path / "run") as store:
        store.add(
            [
                _record("a.png", Verdict.DEFECT, "2026-01-01T00:00:00.000+00:00"),
                _record("b.png", Verdict.OK, "2026-01-02T00:00:00.000+00:00"),
                _record("line2/c.png", Verdict.REVIEW, "2026-01-03T00:00:00.000+00:00"),
                _record("d.png", Verdict.OK, "2026-01-04T00:00:00.000+00:00", model_id="ef" * 32),
            ]
        )
        assert [r.source for r in store.records(selection)] == expected


@pytest.mark.parametrize(
    ("selection", "table", "dialect", "sql", "params"),
    [
        (RecordFilter(), "", SQLITE, "1 = 1", ()),
        (RecordFilter(ids=("x", "y")), "", SQLITE, "id IN (?, ?)", ("x", "y")),
        (RecordFilter(verdicts=(Verdict.OK,), source="cam"), "r", SQLITE, "r.verdict IN (?) AND instr(r.source, ?) > 0",
         ("OK", "cam")),
        (RecordFilter(source="cam", model_id="ab"), "o", POSTGRESQL,
         "strpos(o.source, %s) > 0 AND substr(o.model_id, 1, %s) = %s", ("cam", 2, "ab")),
    ],
)  # fmt: skip
def test_record_conditions_are_sql_with_parameters_never_with_values(selection, table, dialect, sql, params):
    conditions = record_conditions(selection, table, dialect)
    assert (conditions.sql, conditions.params) == (sql, params)
