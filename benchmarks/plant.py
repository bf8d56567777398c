"""The plant's numbers (issue 18): hostile inputs in a large batch; daemons killed under one store; the review
app over a million records.

``hostile``: a batch of ``--inputs`` image files (default 10,000) of which ``--hostile-share`` (1%) are hostile, in
every kind a line has sent us, cycled: float32 TIFFs in [0, 1], float64 TIFFs in another range, int16 TIFFs with
negative pixels (converted by the documented rule), zero-byte files, JPEGs cut in half, JPEGs with 70 bytes after
their end marker (valid: inspected), PNGs whose header claims 50,000 x 50,000 px (refused before decoding) and
random bytes named ``.png``. Beside them lie entries that are not inputs: a dangling link, a link loop and a folder
named ``x.jpg``. The good files are 64 x 64 PNGs (one padded tile each). ``crackscope inspect`` runs over the
folder in-process (:func:`~crackscope.inspect.batch.run_batch`) and the benchmark checks what the issue asks: the
run completes, there is exactly one record per file, each hostile file has the verdict its kind should get (an
ERROR with a reason, or an inspected verdict for the converted and valid ones), and the entries that are not
inputs are listed as skipped. It prints the counts, the seconds and the load.

``daemons``: ``--daemons`` (8) ``crackscope daemon`` processes, one per generated 640 x 480 video of ``--frames``
(40) frames, each tagged with its own line and station, all writing to one PostgreSQL store (a throw-away cluster
made by :mod:`pgcluster`, or ``--url``) and publishing to one MQTT broker (Mosquitto on a free port, or
``--broker``), where a QoS 1 subscriber on ``crackscope/#`` collects every message. Mid-run, ``--kills`` daemons
(drawn from ``--seed``, each once a drawn share of its frames is stored) are killed with ``kill -9`` and started
again with the same command, and the server is stopped (``pg_ctl stop -m fast``), left down ``--pg-down-s`` and
started again. At the end it checks the goal: every frame of every video has exactly one record (0 lost, 0
duplicated, each with its line and station), the verdict messages deduped by record id are exactly the records,
and with ``--deadline-ms`` every stored miss has its fail-safe verdict and its correction on the broker and a
daemon never killed counted exactly its misses. It prints the counts, kills, restarts, seconds and the load, and
exits 1 when a check fails.

``review``: a plant store of ``--records`` records (default 1,000,000) as a month of 10 lines of 3 stations writes
them (90% OK, 5% DEFECT, 4% REVIEW, 1% ERROR; three models; 640 x 480 frames of nine tiles, regions and saved-image
paths on DEFECT and REVIEW records), loaded with COPY into a throw-away PostgreSQL cluster (:mod:`pgcluster`), or
into ``--url`` when that database holds no records yet, with ``--decisions`` (2,000) review decisions; then the
review app (:class:`~crackscope.inspect.review.app.ReviewServer`, real HTTP on a free port) is asked ``--repeats``
(20) times for each page: the queue as it opens, filtered by line, by verdict (DEFECT, and all OK records), by
source text, page 1,000 of the OK records, an item of the queue and one deep in the OK records, and the stats page.
It prints p50 and p99 per page with the load, checks that every page answers 200 and the queue shows the counts
the tables hold, and exits 1 otherwise. ``--store sqlite`` (or ``both``) does the same in a results folder.

Run:
    .venv/bin/python benchmarks/plant.py hostile --model model.onnx            # 10,000 inputs, about 2 minutes
    .venv/bin/python benchmarks/plant.py hostile --model model.onnx --inputs 2000
    .venv/bin/python benchmarks/plant.py daemons --model model.onnx                # 8 daemons, 320 frames
    .venv/bin/python benchmarks/plant.py daemons --model model.onnx --deadline-ms 150 --fps 2
    .venv/bin/python benchmarks/plant.py review --store both      # 1,000,000 records each, about 6 minutes
    .venv/bin/python benchmarks/plant.py review --url postgresql://qa@db.plant/bench --records 2000
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import itertools
import json
import os
import random
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pgcluster  # benchmarks/pgcluster.py: a throw-away PostgreSQL cluster
from daemon import uptime  # benchmarks/daemon.py: the machine's load, printed beside every figure
from line import mosquitto  # benchmarks/line.py: a throw-away Mosquitto broker

from crackscope.inspect.batch import BatchConfig, run_batch
from crackscope.inspect.card import Calibration, ModelCard
from crackscope.inspect.database import is_database_url
from crackscope.inspect.decision import Verdict
from crackscope.inspect.line import MqttConfig
from crackscope.inspect.review.app import ReviewConfig, ReviewServer
from crackscope.inspect.review.store import QueueFilter, ReviewError, ReviewStore
from crackscope.inspect.schema import RESULT_COLUMN_NAMES, insert_sql
from crackscope.inspect.sinks import DB_NAME, ResultStore
from crackscope.inspect.sources import parse_source
from crackscope.training.synthetic import make_frame, write_video


def _float01(path: Path, rng: np.random.Generator) -> bool:
    return cv2.imwrite(str(path.with_suffix(".tif")), rng.random((48, 48), dtype=np.float32))


def _float_wide(path: Path, rng: np.random.Generator) -> bool:
    return cv2.imwrite(str(path.with_suffix(".tif")), rng.normal(1000, 300, (48, 48)))


def _int16(path: Path, rng: np.random.Generator) -> bool:
    return cv2.imwrite(str(path.with_suffix(".tif")), rng.integers(-2000, 30000, (48, 48)).astype(np.int16))


def _empty(path: Path, rng: np.random.Generator) -> bool:
    path.with_suffix(".jpg").write_bytes(b"")
    return True


def _cut_jpeg(path: Path, rng: np.random.Generator) -> bool:
    data = _jpeg(rng)
    path.with_suffix(".jpg").write_bytes(data[: len(data) // 2])
    return True


def _trailing_jpeg(path: Path, rng: np.random.Generator) -> bool:
    path.with_suffix(".jpg").write_bytes(_jpeg(rng) + bytes(rng.integers(0, 256, 70, dtype=np.uint8)))
    return True


def _huge_png(path: Path, rng: np.random.Generator) -> bool:
    """A small valid-looking PNG whose header claims 50,000 x 50,000 px."""
    ok, encoded = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    data = bytearray(encoded.tobytes())
    data[16:24] = struct.pack(">II", 50_000, 50_000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the IHDR chunk's CRC
    path.with_suffix(".png").write_bytes(bytes(data))
    return ok


def _noise(path: Path, rng: np.random.Generator) -> bool:
    path.with_suffix(".png").write_bytes(bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    return True


def _jpeg(rng: np.random.Generator) -> bytes:
    return cv2.imencode(".jpg", rng.integers(60, 200, (48, 48, 3), dtype=np.uint8))[1].tobytes()


# kind -> (writer, the suffix it writes, whether its record is an ERROR)
HOSTILE: dict[str, tuple[Callable[[Path, np.random.Generator], bool], str, bool]] = {
    "float32 TIFF in [0, 1]": (_float01, ".tif", False),
    "float64 TIFF, other range": (_float_wide, ".tif", False),
    "int16 TIFF, negative pixels": (_int16, ".tif", False),
    "zero-byte file": (_empty, ".jpg", True),
    "JPEG cut in half": (_cut_jpeg, ".jpg", True),
    "JPEG with 70 trailing bytes": (_trailing_jpeg, ".jpg", False),
    "PNG claiming 50,000 px square": (_huge_png, ".png", True),
    "random bytes named .png": (_noise, ".png", True),
}


def write_inputs(folder: Path, inputs: int, hostile_share: float, seed: int) -> dict[str, str]:
    """The batch's files (name -> kind: a hostile kind or ``good``) and three entries that are not inputs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    hostile = round(inputs * hostile_share)
    spread = list(range(inputs // max(hostile, 1) - 1, inputs, inputs // max(hostile, 1)))[:hostile]
    kind_of = {index: list(HOSTILE)[n % len(HOSTILE)] for n, index in enumerate(spread)}  # every kind in turn
    written: dict[str, str] = {}
    for i in range(inputs):
        stem = folder / f"{i:05d}"
        if i in kind_of:
            kind = kind_of[i]
            writer, suffix, _ = HOSTILE[kind]
            if not writer(stem, rng):
                raise SystemExit(f"could not write a {kind} file at {stem}")
        else:
            kind, suffix = "good", ".png"
            cv2.imwrite(str(stem.with_suffix(suffix)), np.full((64, 64, 3), int(rng.integers(40, 220)), np.uint8))
        written[stem.with_suffix(suffix).name] = kind
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "x.jpg").mkdir()
    return written


def hostile(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="plant-hostile-") as work:
        return _hostile(args, Path(work))


def _hostile(args: argparse.Namespace, work: Path) -> int:
    inputs, out = work / "inputs", work / "out"
    kinds = write_inputs(inputs, args.inputs, args.hostile_share, args.seed)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    summary = run_batch(BatchConfig(inputs=(str(inputs),), model=args.model, out=str(out), progress=False))
    seconds = time.perf_counter() - started
    with ResultStore(out) as store:
        records = list(store.records())
    by_name = Counter(Path(r.source).name for r in records)
    verdicts = {Path(r.source).name: r for r in records}
    wrong = []
    for name, kind in kinds.items():
        record = verdicts.get(name)
        if record is None:
            wrong.append(f"{name} ({kind}): no record")
            continue
        error_expected = kind != "good" and HOSTILE[kind][2]
        if (record.verdict is Verdict.ERROR) != error_expected:
            wrong.append(f"{name} ({kind}): {record.verdict.value} {record.error or ''}".strip())
    skipped = {Path(entry.path).name: entry.reason for entry in summary.skipped_entries}
    report = {
        "inputs": len(kinds),
        "hostile": sum(k != "good" for k in kinds.values()),
        "records": len(records),
        "duplicated": sum(n > 1 for n in by_name.values()),
        "verdicts": dict(Counter(r.verdict.value for r in records)),
        "errors_by_kind": dict(
            Counter(
                kinds[Path(r.source).name]
                for r in records
                if r.verdict is Verdict.ERROR and Path(r.source).name in kinds
            )
        ),
        "wrong": wrong[:20],
        "skipped_entries": skipped,
        "seconds": round(seconds, 1),
        "inputs_per_second": round(len(kinds) / seconds, 1),
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    ok = (
        report["records"] == report["inputs"]
        and not report["duplicated"]
        and not wrong
        and {"dangling.jpg", "loop.jpg", "x.jpg"} <= set(skipped)
    )
    report["goal_met"] = ok
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


# --- review: the review app over a plant store of many records ---------------------------------------------------

VERDICT_MIX = {Verdict.OK: 0.90, Verdict.REVIEW: 0.04, Verdict.DEFECT: 0.05, Verdict.ERROR: 0.01}
PLANT_LINES, PLANT_STATIONS = 10, 3
PLANT_MODELS = tuple(hashlib.sha256(f"plant model {i}".encode()).hexdigest() for i in range(3))
PLANT_CALIBRATION = Calibration(
    temperature=1.3,
    ok_below=0.3,
    defect_at_or_above=0.8,
    method="temperature scaling (benchmark)",
    targets={"escape_rate": 0.001, "false_reject_rate": 0.02},
)
PLANT_ERRORS = (
    "truncated JPEG: no end-of-image marker",
    "file is empty",
    "50000 x 50000 px is over --max-pixels (100 MP)",
    "cannot decode image",
)
PLANT_START = datetime(2025, 11, 1, tzinfo=timezone.utc)
PLANT_DAYS = 30
REVIEWERS = ("alice", "bob", "carol")
TILE_GRID = tuple((x, y) for y in (0, 128, 256) for x in (0, 208, 416))  # 224 px tiles of a 640 x 480 frame


def plant_model(line: int, index: int, records: int) -> str:
    """Lines 1-5 ran model 0, then model 1 for the last third of the month; the other lines model 2."""
    if line > PLANT_LINES // 2:
        return PLANT_MODELS[2]
    return PLANT_MODELS[1] if index >= 2 * records // 3 else PLANT_MODELS[0]


def plant_rows(records: int, seed: int) -> Iterator[tuple]:
    """``records`` rows of ``results`` (values in :data:`RESULT_COLUMN_NAMES` order) as a month of a plant's lines
    writes them: :data:`VERDICT_MIX`, 10 lines of 3 stations, three models, 640 x 480 frames of nine tiles, regions
    on DEFECT and some REVIEW frames, saved images for those, an error for ERROR records, in time order."""
    rng = random.Random(seed)
    kinds, weights = list(VERDICT_MIX), list(VERDICT_MIX.values())
    step = PLANT_DAYS * 86400 / records
    for index in range(records):
        verdict = rng.choices(kinds, weights)[0]
        line, station = rng.randrange(PLANT_LINES) + 1, f"cam{rng.randrange(PLANT_STATIONS) + 1}"
        moment = PLANT_START + timedelta(seconds=index * step)
        record_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        source = f"/mnt/plant/line{line:02d}/{station}/{moment:%Y-%m-%d}/{index:08d}.png"
        score = _plant_score(verdict, rng)
        inspected = verdict is not Verdict.ERROR
        saved = verdict in (Verdict.REVIEW, Verdict.DEFECT)
        yield (
            record_id,
            source,
            f"{rng.getrandbits(256):064x}",
            moment.isoformat(timespec="milliseconds"),
            verdict.value,
            score,
            plant_model(line, index, records),
            640 if inspected else 0,
            480 if inspected else 0,
            _plant_regions(verdict, rng),
            _plant_tiles(score, rng) if inspected else "[]",
            0,
            f"frames/{record_id}.jpg" if saved else None,
            f"overlays/{record_id}.jpg" if saved else None,
            f"heatmaps/{record_id}.png" if saved else None,
            json.dumps({k: round(rng.uniform(0.5, 1.5) * s, 6) for k, s in (("read", 0.004), ("model", 0.03))}),
            rng.choice(PLANT_ERRORS) if not inspected else None,
            "in the ambiguity band: 1 uncertain tile(s)" if verdict is Verdict.REVIEW else None,
            str(line),
            station,
            "DEFECT" if inspected and rng.random() < 0.002 else None,  # missed the daemon's deadline
        )


def _plant_score(verdict: Verdict, rng: random.Random) -> float | None:
    if verdict is Verdict.OK:
        return 0.3 * rng.random() ** 3
    if verdict is Verdict.REVIEW:
        return rng.uniform(0.3, 0.8)
    if verdict is Verdict.DEFECT:
        return 1.0 - 0.2 * rng.random() ** 2
    return None


def _plant_tiles(score: float, rng: random.Random) -> str:
    """Nine tiles, the worst scoring the frame's score (``max`` part scoring)."""
    worst = rng.randrange(len(TILE_GRID))
    probs = [score if i == worst else score * rng.random() for i in range(len(TILE_GRID))]
    return json.dumps([[x, y, 224, 224, round(p, 6)] for (x, y), p in zip(TILE_GRID, probs, strict=True)])


def _plant_regions(verdict: Verdict, rng: random.Random) -> str:
    count = {Verdict.DEFECT: rng.randint(1, 3), Verdict.REVIEW: rng.randint(0, 1)}.get(verdict, 0)
    regions = []
    for _ in range(count):
        w, h = rng.randint(16, 200), rng.randint(16, 160)
        box = [rng.randrange(640 - w), rng.randrange(480 - h), w, h]
        regions.append({"box": box, "score": round(rng.uniform(0.5, 1.0), 6), "peak": 0.9, "verdict": verdict.value})
    return json.dumps(regions)


def load_plant_store(target: str, records: int, decisions: int, seed: int) -> float:
    """Fill an empty store (a PostgreSQL URL or a results folder) with :func:`plant_rows`, the three models' cards
    and ``decisions`` review decisions; returns the seconds it took.

    Rows go in with COPY (PostgreSQL) or one ``executemany`` per 20,000 (SQLite), into the tables and indexes the
    writers make, so the store is what a month of writers would leave: in PostgreSQL vacuumed and analysed, as
    autovacuum would have done by then (nothing analyses a results folder's SQLite).
    """
    started = time.perf_counter()
    card = ModelCard("efficientnet_lite0", 224, 7, calibration=PLANT_CALIBRATION, crackscope_version="benchmark")
    with ResultStore(target) as store:  # the writers' schema
        store.set_meta(**{f"card:{model}": card.to_metadata() for model in PLANT_MODELS})
    with ReviewStore(target):  # the review's tables
        pass
    rows = plant_rows(records, seed)
    reviewable: list[tuple[str, str, str]] = []  # (id, verdict, time) of REVIEW and DEFECT records
    lowest_ok: list[str] = []  # the OK sample: the lowest ids
    loaded = 0
    with _raw_connection(target) as db:
        for chunk in iter(lambda: list(itertools.islice(rows, 20_000)), []):
            _insert_results(db, chunk)
            reviewable += [(row[0], row[4], row[3]) for row in chunk if row[4] in ("REVIEW", "DEFECT")]
            lowest_ok = heapq.nsmallest(ReviewConfig.ok_sample, lowest_ok + [row[0] for row in chunk if row[4] == "OK"])
            loaded += len(chunk)
            if loaded % 100_000 == 0:
                print(f"plant.py review: {loaded:,} records stored", file=sys.stderr, flush=True)
        _insert_decisions(db, _plant_decisions(reviewable, lowest_ok, decisions, seed))
        if not isinstance(db, sqlite3.Connection):  # what autovacuum does to a store written for a month
            db.autocommit = True
            db.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def _raw_connection(target: str):
    """The driver's own connection (COPY needs psycopg's), not in autocommit."""
    if is_database_url(target):
        import psycopg

        return psycopg.connect(target)
    return contextlib.closing(sqlite3.connect(Path(target) / DB_NAME))


def _insert_results(db, rows: list[tuple]) -> None:
    if isinstance(db, sqlite3.Connection):
        db.executemany(insert_sql(), rows)
        db.commit()
        return
    with db.cursor() as cursor, cursor.copy(f"COPY results ({', '.join(RESULT_COLUMN_NAMES)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    db.commit()


def _plant_decisions(
    reviewable: list[tuple[str, str, str]], lowest_ok: list[str], count: int, seed: int
) -> list[tuple[str, str, str, str]]:
    """``(result_id, reviewer, label, time)``: most of the OK sample and REVIEW and DEFECT records drawn at random,
    one reviewer each, a tenth of them a second one (who disagrees a third of the time)."""
    rng = random.Random(seed + 1)
    items = [(i, "OK", "2025-12-01T00:00:00.000+00:00") for i in lowest_ok[: len(lowest_ok) * 3 // 5]]
    items += rng.sample(reviewable, min(max(count - len(items), 0), len(reviewable)))
    likely = {"OK": "ok", "REVIEW": "ambiguous", "DEFECT": "defect"}
    found = []
    for result_id, verdict, time_ in items[:count]:
        when = (datetime.fromisoformat(time_) + timedelta(hours=rng.uniform(1, 48))).isoformat(timespec="milliseconds")
        first, second = rng.sample(REVIEWERS, 2)
        label = likely[verdict] if rng.random() < 0.85 else rng.choice(("ok", "defect", "ambiguous"))
        found.append((result_id, first, label, when))
        if rng.random() < 0.1:
            other = label if rng.random() < 2 / 3 else rng.choice([x for x in ("ok", "defect") if x != label])
            found.append((result_id, second, other, when))
    return found


def _insert_decisions(db, decisions: list[tuple[str, str, str, str]]) -> None:
    mark = "?" if isinstance(db, sqlite3.Connection) else "%s"
    for table in ("review_decisions", "review_log"):
        statement = f"INSERT INTO {table} (result_id, reviewer, label, time) VALUES ({', '.join([mark] * 4)})"
        if isinstance(db, sqlite3.Connection):
            db.executemany(statement, decisions)
        else:
            with db.cursor() as cursor:
                cursor.executemany(statement, decisions)
    db.commit()


@dataclass(frozen=True)
class PageTiming:
    """Seconds per request of one page over HTTP (after one untimed request)."""

    page: str
    path: str
    status: int
    seconds: tuple[float, ...]

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.seconds, 50)) * 1000

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.seconds, 99)) * 1000


def review_pages(store: ReviewStore) -> dict[str, str]:
    """The pages to time (name -> path): the queue as a reviewer opens it and filters it, a page deep into the
    OK records, two item pages (one in the queue, one in the OK list) and the stats page."""
    first = store.queue(QueueFilter(status="unreviewed"), 0, 1)
    ok_size = store.queue_size(QueueFilter(verdict="OK", status="unreviewed"))
    deep = max(1, min(1000, ok_size // ReviewConfig.page_size))
    ok_item = store.queue(QueueFilter(verdict="OK", status="unreviewed"), (deep - 1) * ReviewConfig.page_size, 1)
    day = (PLANT_START + timedelta(days=6)).strftime("%Y-%m-%d")
    pages = {
        "queue": "/",
        "queue, line 3": "/?line=3",
        "queue, DEFECT": "/?verdict=DEFECT",
        "queue, all OK": "/?verdict=OK",
        f"queue, source contains {day}": f"/?source={day}",
        f"queue, OK page {deep}": f"/?verdict=OK&page={deep}",
    }
    if first:
        pages["item (queue)"] = f"/item/{first[0].id}"
    if ok_item:
        pages[f"item (OK page {deep})"] = f"/item/{ok_item[0].id}?verdict=OK"
    pages["stats"] = "/stats"
    return pages


def time_pages(server_url: str, pages: dict[str, str], repeats: int) -> list[PageTiming]:
    """Each page requested ``repeats`` times over HTTP, after one request that is not timed."""
    timings = []
    for page, path in pages.items():
        status, _ = _get(server_url + path.lstrip("/"))
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            status, _ = _get(server_url + path.lstrip("/"))
            seconds.append(time.perf_counter() - started)
        timings.append(PageTiming(page, path, status, tuple(seconds)))
    return timings


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def shown_counts(server_url: str) -> dict[str, tuple[int, int]]:
    """Records and reviewed records per verdict as the queue page shows them."""
    _, page = _get(server_url)
    pattern = r"<b>(\d+)</b> (OK|REVIEW|DEFECT|ERROR)<small>(\d+) reviewed</small>"
    return {verdict: (int(records), int(reviewed)) for records, verdict, reviewed in re.findall(pattern, page)}


def stored_counts(target: str) -> dict[str, tuple[int, int]]:
    """Records and reviewed records per verdict counted straight from the tables, to check the pages by."""
    reviewed = (
        "SELECT r.verdict, COUNT(DISTINCT r.id) FROM results r JOIN review_decisions d ON d.result_id = r.id"
        " GROUP BY r.verdict"
    )
    with _raw_connection(target) as db:
        records = dict(db.execute("SELECT verdict, COUNT(*) FROM results GROUP BY verdict").fetchall())
        decided = dict(db.execute(reviewed).fetchall())
    return {v.value: (int(records.get(v.value, 0)), int(decided.get(v.value, 0))) for v in Verdict}


def measure_review(
    target: str, records: int, decisions: int, repeats: int, seed: int, max_load: float | None = None
) -> dict:
    """Load ``target`` when it holds no records, then time the review app's pages over it (once the 1-minute load
    is under ``max_load``, when given); the figures as a dict."""
    try:
        with ReviewStore(target) as store:
            held = store.last_rowid()
    except ReviewError:  # a new folder or database: no results store yet
        held = 0
    loaded = round(load_plant_store(target, records, decisions, seed), 1) if not held else None
    stored = stored_counts(target)
    settled = settle_load(max_load) if max_load else None
    with ReviewServer(ReviewConfig(results=target, port=0)) as server, ReviewStore(target) as store:
        pages = review_pages(store)
        load_before = os.getloadavg()[0]
        timings = time_pages(server.url, pages, repeats)
        load_after = os.getloadavg()[0]
        shown = shown_counts(server.url)
    return {
        "store": "postgresql" if is_database_url(target) else "sqlite",
        "records": sum(n for n, _ in stored.values()),
        "load_seconds": loaded,
        "counts": {v: {"records": n, "reviewed": r} for v, (n, r) in stored.items()},
        "counts_shown_right": shown == stored,
        "repeats": repeats,
        "pages": [
            {"page": t.page, "path": t.path, "status": t.status, "p50_ms": t.p50_ms, "p99_ms": t.p99_ms}
            for t in timings
        ],
        "load": [round(load_before, 2), round(load_after, 2)],
        "load_settled": settled,
    }


def settle_load(below: float, timeout_s: float = 900.0) -> bool:
    """Wait until the 1-minute load average is under ``below`` (other jobs share the machine, and the load just
    made by loading the store takes a minute or two to fade); False when ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while os.getloadavg()[0] >= below:
        if time.monotonic() > deadline:
            return False
        print(f"plant.py review: waiting for the load to fall below {below} ({uptime()})", file=sys.stderr, flush=True)
        time.sleep(15)
    return True


def review_table(figures: dict) -> str:
    """The figures of :func:`measure_review` as a table."""
    head = (
        f"{figures['store']}, {figures['records']:,} records, p50 / p99 of {figures['repeats']} requests "
        f"(load {figures['load'][0]:.2f} -> {figures['load'][1]:.2f})"
    )
    lines = [head, f"{'page':40} {'status':>6} {'p50 ms':>8} {'p99 ms':>8}"]
    for page in figures["pages"]:
        lines.append(f"{page['page']:40} {page['status']:>6} {page['p50_ms']:8.1f} {page['p99_ms']:8.1f}")
    return "\n".join(lines)


def review(args: argparse.Namespace) -> int:
    figures = []
    with contextlib.ExitStack() as stack:
        if args.store in ("postgresql", "both"):
            try:
                url = args.url or stack.enter_context(pgcluster.start_cluster()).url
            except pgcluster.ClusterUnavailable as error:
                print(f"benchmarks/plant.py: error: {error}", file=sys.stderr)
                return 2
            figures.append(measure_review(url, args.records, args.decisions, args.repeats, args.seed, args.max_load))
        if args.store in ("sqlite", "both"):
            folder = args.folder or stack.enter_context(tempfile.TemporaryDirectory(prefix="plant-review-"))
            figures.append(
                measure_review(str(folder), args.records, args.decisions, args.repeats, args.seed, args.max_load)
            )
    for figure in figures:
        print(review_table(figure), end="\n\n")
    ok = all(f["counts_shown_right"] and all(p["status"] == 200 for p in f["pages"]) for f in figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if ok else 1


# --- daemons: a plant of daemons on one PostgreSQL store, killed and restarted under way --------------------------

POLL_S = 0.2  # how often the stored records are counted (when to kill) and the load is sampled


@dataclass(frozen=True)
class Station:
    """One daemon of the plant: its video and the frames in it, the line and station it tags, and its command."""

    index: int
    video: Path
    frames: int
    line: str
    station: str
    command: tuple[str, ...]

    @property
    def prefix(self) -> str:
        """What the sources of its records start with (frames are named ``<video>#000123``)."""
        return parse_source(str(self.video)).name + "#"

    @property
    def key(self) -> tuple[str, str]:
        return self.line, self.station

    @property
    def topic(self) -> str:
        """Its MQTT topic: the daemon's default, ``crackscope/<line>/<station>``."""
        return MqttConfig().for_station(self.line, self.station).base_topic


@dataclass(frozen=True)
class FaultPlan:
    """When to strike: each daemon killed once its share of frames is stored, and each server restart once that
    share of all frames is stored (drawn from the seed, so a failing run can be repeated)."""

    kills: tuple[tuple[int, float], ...]  # (daemon index, share of its frames stored)
    restarts: tuple[float, ...]  # share of all frames stored


def plan_faults(daemons: int, kills: int, restarts: int, seed: int) -> FaultPlan:
    rng = np.random.default_rng(seed)
    victims = rng.choice(daemons, size=min(kills, daemons), replace=False)
    return FaultPlan(
        kills=tuple((int(index), float(rng.uniform(0.2, 0.7))) for index in victims),
        restarts=tuple(sorted(float(share) for share in rng.uniform(0.3, 0.6, restarts))),
    )


def write_videos(folder: Path, args: argparse.Namespace) -> list[tuple[Path, int]]:
    """One video per daemon, ``args.frames`` generated frames each (a third with a crack), every frame its own."""
    videos = []
    for v in range(args.daemons):
        frames = [
            make_frame(args.height, args.width, args.seed * 100_003 + v * 1009 + i, n_cracks=int(i % 3 == 0))[0]
            for i in range(args.frames)
        ]
        videos.append((write_video(folder / f"line-{v}.avi", frames, fps=args.fps or 10.0), len(frames)))
    return videos


def daemon_command(
    args: argparse.Namespace, video: Path, url: str, broker: tuple[str, int], artefacts: Path, line: str, station: str
) -> tuple[str, ...]:
    """The ``crackscope daemon`` command of one station: the plant store, the broker, and the run options."""
    host, port = broker
    command = [sys.executable, "-m", "crackscope.cli", "daemon", "--source", str(video), "--model", args.model]
    command += ["--out", url, "--artefacts", str(artefacts), "--line", line, "--station", station]
    command += ["--policy", "every", "--providers", args.providers, "--threads", str(args.threads)]
    command += ["--mqtt-host", host, "--mqtt-port", str(port)]
    if args.fps:
        command.append("--realtime")
    if args.deadline_ms:
        command += ["--deadline-ms", str(args.deadline_ms), "--fail-safe", "DEFECT"]
    return tuple(command)


class Daemon:
    """The ``crackscope daemon`` process of a station; after a kill it is started again with the same command."""

    def __init__(self, station: Station, logs: Path) -> None:
        self.station = station
        self.logs = logs
        self.runs = 0
        self.started = 0.0  # time.time() of the latest start
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.runs += 1
        with self._log(".out").open("wb") as out, self._log(".err").open("wb") as err:
            self.process = subprocess.Popen(self.station.command, stdout=out, stderr=err)
        self.started = time.time()

    def kill(self) -> None:
        """``kill -9``: no chance to finish the frames in flight, flush or say goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def summary(self) -> dict:
        """The JSON summary the latest run printed last ({} when it printed none)."""
        lines = self._log(".out").read_text(errors="replace").splitlines()
        with contextlib.suppress(IndexError, json.JSONDecodeError):
            return json.loads(lines[-1])
        return {}

    def stderr_tail(self) -> str:
        return self._log(".err").read_text(errors="replace")[-1500:]

    def store_reconnects(self) -> int:
        """Times its runs found the store's connection lost and connected again (logged by the store)."""
        logs = self.logs.glob(f"daemon-{self.station.index}-run-*.err")
        return sum(log.read_text(errors="replace").count("; connecting again") for log in logs)

    def _log(self, suffix: str) -> Path:
        return self.logs / f"daemon-{self.station.index}-run-{self.runs}{suffix}"


class Subscriber:
    """A QoS 1 subscriber to ``crackscope/#`` keeping every message and when it arrived (a context manager)."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.address = (host, port)
        self._lock = threading.Lock()
        self._messages: list[tuple[float, str, dict]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda client, *_: client.subscribe("crackscope/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def __enter__(self) -> Subscriber:
        self.client.connect(*self.address)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise SystemExit(f"benchmarks/plant.py: error: no subscription acknowledged by {self.address}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, userdata, message) -> None:
        with contextlib.suppress(ValueError):
            body = json.loads(message.payload)
            with self._lock:
                self._messages.append((time.time(), message.topic, body))

    def bodies(self, kind: str, prefixes: tuple[str, ...]) -> list[dict]:
        """Messages on ``.../<kind>`` about the frames of these sources."""
        with self._lock:
            return [
                body
                for _, topic, body in self._messages
                if topic.endswith("/" + kind) and str(body.get("part_id", "")).startswith(prefixes)
            ]

    def online_since(self, topic: str, since: float) -> bool:
        """Whether the daemon on ``topic`` said ``online`` after ``since`` (it has opened the store by then)."""
        with self._lock:
            return any(
                t == f"{topic}/status" and body.get("state") == "online" and at >= since
                for at, t, body in self._messages
            )


def videos_prefix(stations: list[Station]) -> str:
    """What the sources of every record of the run start with: the videos' folder."""
    return str(Path(stations[0].prefix).parent) + os.sep


class StoredCounts:
    """Records stored so far per (line, station), from the plant store; None while the server cannot answer."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self._db = None

    def __call__(self) -> dict[tuple[str, str], int] | None:
        import psycopg

        try:
            if self._db is None or self._db.broken or self._db.closed:
                self._db = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
            rows = self._db.execute(
                "SELECT line, station, COUNT(*) FROM results WHERE substr(source, 1, %s) = %s GROUP BY line, station",
                (len(self.prefix), self.prefix),
            ).fetchall()
        except psycopg.Error:  # not created yet, or the server is restarting
            self.close()
            return None
        return {(line, station): count for line, station, count in rows}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class FaultDriver:
    """Runs the plant's daemons to the end of their videos, striking as planned: a daemon is killed with ``kill -9``
    once its share of frames is stored and started again at once with the same command, as a supervisor would; the
    server is restarted once its share of all frames is stored. A server restart waits until every running daemon
    has said ``online`` since its start: a daemon that starts while the server is down exits 2 (it opens its store
    before it inspects), and a supervisor would start it again."""

    def __init__(self, daemons: list[Daemon], plan: FaultPlan, subscriber: Subscriber, restart_server) -> None:
        self.daemons, self.subscriber, self.restart_server = daemons, subscriber, restart_server
        self.pending_kills, self.pending_restarts = dict(plan.kills), list(plan.restarts)
        self.total = sum(d.station.frames for d in daemons)
        self.kills: list[dict] = []
        self.restarts: list[dict] = []
        self.loads: list[float] = []
        self.started = 0.0

    def run(self, stored: StoredCounts, timeout_s: float) -> None:
        self.started = time.monotonic()
        for daemon in self.daemons:
            daemon.start()
        while any(d.running for d in self.daemons):
            if time.monotonic() - self.started > timeout_s:
                raise TimeoutError(f"the daemons did not finish within {timeout_s} s")
            self.loads.append(os.getloadavg()[0])
            counts = stored()
            if counts is not None:
                self._kill_due(counts)
                self._restart_if_due(counts)
            time.sleep(POLL_S)

    def _kill_due(self, counts: dict[tuple[str, str], int]) -> None:
        for index, share in list(self.pending_kills.items()):
            daemon = self.daemons[index]
            done = counts.get(daemon.station.key, 0)
            if daemon.running and done >= share * daemon.station.frames:
                daemon.kill()
                daemon.start()
                at = round(time.monotonic() - self.started, 2)
                self.kills.append({"daemon": index, "at_s": at, "stored_before": done, "of": daemon.station.frames})
                del self.pending_kills[index]

    def _restart_if_due(self, counts: dict[tuple[str, str], int]) -> None:
        done = sum(counts.values())
        if not self.pending_restarts or done < self.pending_restarts[0] * self.total:
            return
        if not all(self.subscriber.online_since(d.station.topic, d.started) for d in self.daemons if d.running):
            return
        at = time.monotonic()
        self.restart_server()
        down_s = round(time.monotonic() - at, 2)
        self.restarts.append({"at_s": round(at - self.started, 2), "stored_before": done, "down_s": down_s})
        self.pending_restarts.pop(0)


def server_restarter(args: argparse.Namespace, server: pgcluster.PostgresServer | None) -> Callable[[], None]:
    """How the server is restarted: ``pg_ctl stop -m MODE``, a pause, and start (the cluster made here), or the
    ``--restart-command`` (a server given by ``--url``)."""

    def restart_cluster() -> None:
        assert server is not None
        server.pg_ctl("-m", args.pg_stop, "-w", "stop")
        time.sleep(args.pg_down_s)
        server.start()

    def restart_command() -> None:
        subprocess.run(args.restart_command, shell=True, check=True, timeout=300)

    return restart_cluster if server is not None else restart_command


def plant_records(url: str, prefix: str) -> list[tuple]:
    """(id, source, sha256, line, station, verdict, fail_safe) of every record of the run's videos."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        return db.execute(
            "SELECT id, source, sha256, line, station, verdict, fail_safe FROM results "
            "WHERE substr(source, 1, %s) = %s",
            (len(prefix), prefix),
        ).fetchall()


def check_plant(daemons: list[Daemon], url: str, subscriber: Subscriber, deadline_ms: float | None) -> dict:
    """The goal's figures: records lost and duplicated against the frames written, MQTT verdicts after dedup by
    record id against the records, and with a deadline the misses against their fail-safe messages."""
    stations = [d.station for d in daemons]
    prefixes = tuple(s.prefix for s in stations)
    rows = plant_records(url, videos_prefix(stations))
    ids = {row[0] for row in rows}
    wait_until = time.monotonic() + 30  # what a daemon handed the broker just before it stopped is still on its way
    while not ids <= {b["record_id"] for b in subscriber.bodies("verdict", prefixes)} and time.monotonic() < wait_until:
        time.sleep(0.1)
    expected = {f"{s.prefix}{k:06d}": s for s in stations for k in range(s.frames)}
    by_source = Counter(row[1] for row in rows)
    verdicts = subscriber.bodies("verdict", prefixes)
    received = {body["record_id"] for body in verdicts}
    figures = {
        "frames": len(expected),
        "records": len(rows),
        "lost": len(set(expected) - set(by_source)),
        "duplicated": sum(n - 1 for n in by_source.values()),  # (source, sha256) is unique: a source stored twice
        "unexpected": len(set(by_source) - set(expected)),
        "mislabelled": sum(r[1] in expected and (r[3], r[4]) != expected[r[1]].key for r in rows),
        "verdicts": dict(Counter(row[5] for row in rows)),
        "mqtt": {
            "verdict_messages": len(verdicts),
            "unique_record_ids": len(received),
            "records_not_received": len(ids - received),
            "received_without_record": len(received - ids),
        },
    }
    if deadline_ms:
        figures["deadline"] = deadline_figures(daemons, rows, subscriber, prefixes, deadline_ms)
    return figures


def deadline_figures(daemons: list[Daemon], rows: list[tuple], subscriber: Subscriber, prefixes, deadline_ms) -> dict:
    """Misses stored (records with ``fail_safe``) against the fail-safe verdicts and corrections on the broker, and
    against what each daemon counted (a daemon never killed counted exactly its station's stored misses)."""
    misses = {row[0] for row in rows if row[6]}
    fail_safes = {body["record_id"] for body in subscriber.bodies("verdict", prefixes) if body.get("fail_safe")}
    corrections = {body["record_id"] for body in subscriber.bodies("correction", prefixes)}
    stored_by_station = Counter((row[3], row[4]) for row in rows if row[6])
    counted = {d.station.index: d.summary().get("deadline_missed") for d in daemons}
    unkilled = [d for d in daemons if d.runs == 1]
    return {
        "deadline_ms": deadline_ms,
        "misses_stored": len(misses),
        "misses_counted_by_last_runs": sum(n or 0 for n in counted.values()),
        "misses_counted_as_stored_by_daemons_never_killed": all(
            counted[d.station.index] == stored_by_station[d.station.key] for d in unkilled
        ),
        "fail_safe_messages": len(fail_safes),
        "misses_without_fail_safe": len(misses - fail_safes),
        "misses_without_correction": len(misses - corrections),
        "fail_safe_then_in_time_after_a_kill": len(fail_safes - misses),
    }


def daemons(args: argparse.Namespace) -> int:
    if args.url and args.pg_restarts and not args.restart_command:
        print("benchmarks/plant.py: error: --url needs --restart-command (or --pg-restarts 0)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="plant-daemons-") as work, contextlib.ExitStack() as stack:
        work_path = Path(work)
        server = None
        if not args.url:
            try:
                server = stack.enter_context(pgcluster.start_cluster())
            except pgcluster.ClusterUnavailable as error:
                print(f"benchmarks/plant.py: error: {error}", file=sys.stderr)
                return 2
        url = args.url or server.url
        if args.broker:
            host, port = args.broker.rsplit(":", 1)
            broker = (host, int(port))
        else:
            broker = stack.enter_context(mosquitto(work_path))
        subscriber = stack.enter_context(Subscriber(*broker))
        stations = make_stations(args, work_path, url, broker)
        return _daemons(args, stations, work_path / "logs", url, server_restarter(args, server), subscriber)


def _daemons(args, stations: list[Station], logs: Path, url: str, restart_server, subscriber: Subscriber) -> int:
    logs.mkdir()
    plant = [Daemon(station, logs) for station in stations]
    plan = plan_faults(args.daemons, args.kills, args.pg_restarts, args.seed)
    stored = StoredCounts(url, videos_prefix(stations))
    load_before = uptime()
    started = time.perf_counter()
    driver = FaultDriver(plant, plan, subscriber, restart_server)
    try:
        driver.run(stored, args.timeout_s)
    finally:
        stored.close()
        for daemon in plant:
            if daemon.running:
                daemon.kill()
    seconds = time.perf_counter() - started
    figures = check_plant(plant, url, subscriber, args.deadline_ms)
    report = {
        "model": args.model,
        "daemons": args.daemons,
        "frames_per_video": args.frames,
        "size": f"{args.width}x{args.height}",
        "replay_fps": args.fps,
        **figures,
        "kills": driver.kills,
        "pg_restarts": driver.restarts,
        "daemon_starts": sum(d.runs for d in plant),
        "store_reconnects": sum(d.store_reconnects() for d in plant),
        "exit_codes": [d.exit_code for d in plant],
        "seconds": round(seconds, 1),
        "frames_per_second": round(figures["frames"] / seconds, 2),
        "load": {"before": load_before, "after": uptime(), "peak_1min": round(max(driver.loads, default=0.0), 2)},
        "cpus": os.cpu_count(),
    }
    report["checks"] = plant_checks(report, plan)
    report["goal_met"] = all(report["checks"].values())
    print(json.dumps(report, indent=2))
    for daemon in plant:
        if daemon.exit_code != 0:
            print(f"daemon {daemon.station.index} exited {daemon.exit_code}:\n{daemon.stderr_tail()}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["goal_met"] else 1


def make_stations(args: argparse.Namespace, work: Path, url: str, broker: tuple[str, int]) -> list[Station]:
    """The videos and the daemons' commands: two stations (cam1, cam2) per line, all on one store and one broker."""
    stations = []
    for index, (video, frames) in enumerate(write_videos(work / "videos", args)):
        line, station = str(index // 2 + 1), f"cam{index % 2 + 1}"
        command = daemon_command(args, video, url, broker, work / "artefacts", line, station)
        stations.append(Station(index, video, frames, line, station, command))
    return stations


def plant_checks(report: dict, plan: FaultPlan) -> dict[str, bool]:
    checks = {
        "every daemon ended its video (exit 0)": all(code == 0 for code in report["exit_codes"]),
        "every planned kill and server restart happened": (
            len(report["kills"]) == len(plan.kills) and len(report["pg_restarts"]) == len(plan.restarts)
        ),
        "0 records lost": report["lost"] == 0,
        "0 records duplicated": report["duplicated"] == 0 and report["unexpected"] == 0,
        "every record tagged with its line and station": report["mislabelled"] == 0,
        "MQTT verdicts after dedup by record id == records": (
            report["mqtt"]["records_not_received"] == 0 and report["mqtt"]["received_without_record"] == 0
        ),
    }
    deadline = report.get("deadline")
    if deadline:
        checks["every deadline miss has its fail-safe and its correction"] = (
            deadline["misses_without_fail_safe"] == 0 and deadline["misses_without_correction"] == 0
        )
        checks["deadline misses counted"] = deadline["misses_counted_as_stored_by_daemons_never_killed"]
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("hostile", help="a large batch with hostile files: one record per input")
    p.add_argument("--model", required=True, help="exported ONNX model (crackscope export)")
    p.add_argument("--inputs", type=int, default=10_000)
    p.add_argument("--hostile-share", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures here")
    p.set_defaults(handler=hostile)
    p = commands.add_parser("review", help="the review app over a plant store of many records: page times")
    p.add_argument("--records", type=int, default=1_000_000, help="records to load into an empty store")
    p.add_argument("--decisions", type=int, default=2000, help="items given review decisions")
    p.add_argument("--repeats", type=int, default=20, help="timed requests of each page")
    p.add_argument("--store", choices=("postgresql", "sqlite", "both"), default="postgresql", help="stores to time")
    p.add_argument("--url", help="a PostgreSQL database to use (loaded when empty) instead of a throw-away cluster")
    p.add_argument("--folder", help="the results folder to use for SQLite (loaded when empty) instead of a new one")
    p.add_argument("--max-load", type=float, help="time the pages once the 1-minute load is under this (wait)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures here")
    p.set_defaults(handler=review)
    p = commands.add_parser(
        "daemons", help="daemons on videos into one PostgreSQL and one broker, killed and the server restarted"
    )
    p.add_argument("--model", required=True, help="exported ONNX model (crackscope export)")
    p.add_argument("--daemons", type=int, default=8, help="daemons, one video each (default 8)")
    p.add_argument("--frames", type=int, default=40, help="frames per video (default 40)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, help="replay each video in real time at this rate (default: as fast as read)")
    p.add_argument("--kills", type=int, default=3, help="daemons killed with kill -9 once each, and restarted")
    p.add_argument("--pg-restarts", type=int, default=1, help="PostgreSQL restarts mid-run (default 1)")
    p.add_argument("--pg-stop", choices=("fast", "immediate"), default="fast", help="pg_ctl stop mode (default fast)")
    p.add_argument("--pg-down-s", type=float, default=3.0, help="seconds the server stays down (default 3)")
    p.add_argument("--deadline-ms", type=float, help="the daemons' --deadline-ms: misses counted, each a fail-safe")
    p.add_argument("--url", help="a PostgreSQL database to use instead of a throw-away cluster")
    p.add_argument("--restart-command", help="with --url: the shell command that restarts its server")
    p.add_argument("--broker", help="HOST:PORT of a running MQTT broker (default: mosquitto on a free port)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per daemon (default 1)")
    p.add_argument("--providers", default="cpu")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="give up (and fail) after this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures here")
    p.set_defaults(handler=daemons)
    args = parser.parse_args(argv)
    if getattr(args, "model", None) and not Path(args.model).is_file():
        print(f"benchmarks/plant.py: error: {args.model}: model file does not exist", file=sys.stderr)
        return 2
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
