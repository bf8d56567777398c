"""The results store's schema: REVIEW reasons are stored, and a version-1 store is brought up to date when opened."""

from __future__ import annotations

import sqlite3

from crackscope.inspect.decision import Verdict
from crackscope.inspect.results import InspectionResult, new_id, utc_now
from crackscope.inspect.review.store import QueueFilter, ReviewStore
from crackscope.inspect.schema import SCHEMA_VERSION
from crackscope.inspect.sinks import DB_NAME, ResultStore

V1_COLUMNS = (
    "id TEXT PRIMARY KEY, source TEXT NOT NULL, sha256 TEXT NOT NULL, time TEXT NOT NULL, verdict TEXT NOT NULL, "
    "score REAL, model_id TEXT NOT NULL, width INTEGER, height INTEGER, regions TEXT, tiles TEXT, "
    "tiles_skipped INTEGER, image_path TEXT, overlay_path TEXT, heatmap_path TEXT, timings TEXT, error TEXT"
)


def _record(source: str, verdict: Verdict, reason: str | None = None) -> InspectionResult:
    return InspectionResult(
        new_id(), source, "ab" * 32, utc_now(), verdict, 0.5, "m" * 64, 8, 8, timings={}, reason=reason
    )


def _version_1_store(folder) -> None:
    """A results folder as crackscope wrote it before reasons were stored: one REVIEW record."""
    folder.mkdir()
    db = sqlite3.connect(folder / DB_NAME)
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute(f"CREATE TABLE results ({V1_COLUMNS})")
        db.execute(
            "INSERT INTO results VALUES ('old1', 'a.png', ?, '2026-01-01T00:00:00Z', 'REVIEW', 0.5, ?, 8, 8, "
            "'[]', '[]', 0, NULL, NULL, NULL, '{}', NULL)",
            ("cd" * 32, "m" * 64),
        )
    db.close()


def test_a_review_reason_is_stored_and_read_back(tmp_path):
    with ResultStore(tmp_path / "run") as store:
        store.add(
            [_record("a.png", Verdict.REVIEW, "tiles disagree: 1 tile(s) score DEFECT"), _record("b.png", Verdict.OK)]
        )
        by_source = {r.source: r for r in store.records()}
    assert by_source["a.png"].reason == "tiles disagree: 1 tile(s) score DEFECT"
    assert by_source["b.png"].reason is None
    line = (tmp_path / "run" / "results.jsonl").read_text().splitlines()[0]
    assert '"reason": "tiles disagree' in line


def test_a_version_1_store_gains_the_reason_column_and_keeps_its_records(tmp_path):
    _version_1_store(tmp_path / "old")
    with ResultStore(tmp_path / "old") as store:
        old = list(store.records())
        store.add([_record("new.png", Verdict.REVIEW, "in the ambiguity band: 2 uncertain tile(s)")])
        records = {r.source: r for r in store.records()}
    assert [r.id for r in old] == ["old1"] and old[0].reason is None and old[0].verdict is Verdict.REVIEW
    assert records["new.png"].reason.startswith("in the ambiguity band")
    db = sqlite3.connect(tmp_path / "old" / DB_NAME)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_the_review_store_opens_a_version_1_store_too(tmp_path):
    _version_1_store(tmp_path / "old")
    with ReviewStore(tmp_path / "old") as store:
        assert store.record("old1").reason is None


def _version_2_store(folder) -> None:
    """A results folder as crackscope wrote it before records said which line and station wrote them."""
    _version_1_store(folder)
    db = sqlite3.connect(folder / DB_NAME)
    with db:
        db.execute("ALTER TABLE results ADD COLUMN reason TEXT")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()


def test_a_version_2_store_gains_the_line_and_station_columns_and_keeps_its_records(tmp_path):
    _version_2_store(tmp_path / "old")
    with ResultStore(tmp_path / "old", line="3", station="cam1") as store:
        store.add([_record("new.png", Verdict.OK)])
        records = {r.source: r for r in store.records()}
    assert (records["a.png"].line, records["a.png"].station) == (None, None)
    assert (records["new.png"].line, records["new.png"].station) == ("3", "cam1")
    db = sqlite3.connect(tmp_path / "old" / DB_NAME)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'results_line'").fetchone() == ("results_line",)
    with ReviewStore(tmp_path / "old") as review:
        assert review.lines() == ["3"]


def test_the_review_store_brings_a_version_2_store_up_to_date_too(tmp_path):
    _version_2_store(tmp_path / "old")
    with ReviewStore(tmp_path / "old") as store:
        assert store.record("old1").line is None


def test_an_older_store_gains_the_review_indexes_when_the_review_alone_opens_it(tmp_path):
    _version_2_store(tmp_path / "old")
    with ReviewStore(tmp_path / "old") as store:
        assert store.record("old1").verdict is Verdict.REVIEW
        assert store.queue_ids(QueueFilter()) == ["old1"]
    db = sqlite3.connect(tmp_path / "old" / DB_NAME)
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"results_verdict", "results_line", "results_model", "results_sample", "results_queue"} <= indexes
    assert [row[2] for row in db.execute("PRAGMA index_info(results_line)")] == ["line", "station", "verdict"]
    assert [row[2] for row in db.execute("PRAGMA index_info(results_verdict)")] == ["verdict"]
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
