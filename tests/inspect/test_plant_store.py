"""The plant store: a real PostgreSQL (a throw-away cluster, :func:`postgres_server`) written by many writers at once,
read by the review with a line filter, and batch runs sharded over machines."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackscope.cli import main
from crackscope.inspect.batch import BatchConfig, Shard, run_batch
from crackscope.inspect.card import Calibration, ModelCard
from crackscope.inspect.daemon import DaemonConfig, run_daemon
from crackscope.inspect.decision import Verdict
from crackscope.inspect.results import InspectionResult, new_id
from crackscope.inspect.review.app import ReviewConfig, ReviewServer
from crackscope.inspect.review.store import Label, QueueFilter, ReviewError, ReviewStore
from crackscope.inspect.runs import OutputError, check_output
from crackscope.inspect.schema import SCHEMA_VERSION
from crackscope.inspect.sinks import ResultStore, StoreError
from crackscope.training.synthetic import write_video

MODEL = "ab" * 32


def _record(source: str, verdict: Verdict = Verdict.OK, score: float = 0.1, **fields) -> InspectionResult:
    sha = hashlib.sha256(source.encode()).hexdigest()
    return InspectionResult(
        new_id(), source, sha, "2026-01-01T00:00:00.000+00:00", verdict, score, MODEL, 64, 48, **fields
    )


def record_key(record: InspectionResult) -> tuple[str, str]:
    return record.source, record.sha256


def _psql(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        cursor = db.execute(sql)
        return cursor.fetchall() if cursor.description else []


def _grey_images(folder: Path, count: int, level: int = 60) -> list[Path]:
    """``count`` distinct 32 px PNGs (the brightness model calls a level under 128 OK)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = np.full((32, 32, 3), level, np.uint8)
        image[0, 0] = (i % 256, i // 256, 0)  # distinct bytes: distinct sha256
        path = folder / f"item_{i:04d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


# --- writers --------------------------------------------------------------------------------------------------------


def test_records_of_two_concurrent_writers_are_stored_once_each(postgres_url):
    """Two writers, each with its own connection, start together on a new store (both create the tables) and write
    overlapping inputs in batches: every input ends up stored once, tagged by the writer that stored it."""
    shared = [f"/plant/in/{i:03d}.png" for i in range(100, 200)]
    inputs = {
        "1": [f"/plant/in/{i:03d}.png" for i in range(100)] + shared,
        "2": shared + [f"/plant/in/{i:03d}.png" for i in range(200, 300)],
    }
    start, stored, errors = threading.Barrier(2), {}, []

    def write(line: str) -> None:
        try:
            start.wait()
            with ResultStore(postgres_url, line=line, station=f"cam{line}") as store:
                sources = inputs[line] if line == "1" else inputs[line][::-1]  # the overlap met from both ends
                stored[line] = sum(store.add(_record(s) for s in sources[i : i + 10]) for i in range(0, 200, 10))
        except Exception as error:  # reported by the test thread
            errors.append(error)

    writers = [threading.Thread(target=write, args=(line,)) for line in inputs]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
    assert not errors, errors
    assert stored["1"] + stored["2"] == 300
    rows = _psql(postgres_url, "SELECT source, line, station FROM results")
    assert len(rows) == 300 and len({row[0] for row in rows}) == 300
    by_source = {source: (line, station) for source, line, station in rows}
    assert {by_source[f"/plant/in/{i:03d}.png"] for i in range(100)} == {("1", "cam1")}
    assert {by_source[f"/plant/in/{i:03d}.png"] for i in range(200, 300)} == {("2", "cam2")}
    assert _psql(postgres_url, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]


def test_a_batch_that_fails_mid_transaction_stores_nothing_and_the_resume_stores_each_record_once(postgres_url):
    first = [_record(f"/in/{i}.png") for i in range(5)]
    broken = [_record(f"/in/{i}.png") for i in range(5, 10)]
    broken[2] = _record("/in/7.png", timings={"read": object()})  # cannot be encoded: the batch fails half-way
    with ResultStore(postgres_url, line="1") as store:
        assert store.add(first) == 5
        with pytest.raises(TypeError):
            store.add(broken)
        assert len(store.done_keys()) == 5  # the records before the failing one were rolled back with it
    with ResultStore(postgres_url, line="1") as store:  # the resumed run
        done = store.done_keys(sources=[f"/in/{i}.png" for i in range(10)])
        todo = [record for record in (_record(f"/in/{i}.png") for i in range(10)) if record_key(record) not in done]
        assert len(todo) == 5
        assert store.add(first + todo) == 5  # what was stored already is not stored again
        assert sorted(r.source for r in store.records()) == sorted(f"/in/{i}.png" for i in range(10))


def test_a_writer_reconnects_after_the_server_restarts_and_stores_each_record_once(postgres_server):
    url = postgres_server.new_database()
    with ResultStore(url, line="1") as store:
        assert store.add([_record("/in/a.png")]) == 1
        postgres_server.restart()  # the connection is gone
        assert store.add([_record("/in/b.png"), _record("/in/a.png")]) == 1
        assert sorted(r.source for r in store.records()) == ["/in/a.png", "/in/b.png"]


def test_a_batch_run_killed_mid_run_resumes_with_one_record_per_input(postgres_url, brightness_model, tmp_path):
    _grey_images(tmp_path / "in", 300)
    command = [sys.executable, "-m", "crackscope.cli", "inspect", str(tmp_path / "in")]
    command += [
        "--model",
        str(brightness_model),
        "--out",
        postgres_url,
        "--artefacts",
        str(tmp_path / "art"),
        "--line",
        "7",
        "--no-progress",
    ]
    command += ["--batch-size", "1", "--threads", "1", "--save-overlays", "all"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    count = 0
    while time.monotonic() < deadline and process.poll() is None and count < 20:
        time.sleep(0.05)
        try:
            count = _psql(postgres_url, "SELECT COUNT(*) FROM results")[0][0]
        except Exception:  # the tables are not made yet
            count = 0
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored_before = _psql(postgres_url, "SELECT COUNT(*) FROM results")[0][0]
    assert 20 <= stored_before < 300, "the kill should land mid-run"
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = _psql(postgres_url, "SELECT source, line, overlay_path FROM results")
    assert len(rows) == 300 and len({row[0] for row in rows}) == 300 and {row[1] for row in rows} == {"7"}
    assert all((tmp_path / "art" / row[2]).is_file() for row in rows)
    assert "store:   postgresql://crackscope@127.0.0.1" in result.stdout and "line 7" in result.stdout
    assert not list((tmp_path / "art").glob("crackscope.lock"))


# --- the schema -----------------------------------------------------------------------------------------------------


def test_both_stores_refuse_a_plant_store_of_a_schema_version_they_do_not_know(postgres_url):
    with ResultStore(postgres_url, line="1") as store:
        store.add([_record("/in/a.png")])
    _psql(postgres_url, f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    newer = f"schema version {SCHEMA_VERSION + 1}, this crackscope"
    with pytest.raises(StoreError, match=f"{newer} writes {SCHEMA_VERSION}; use another database"):
        ResultStore(postgres_url, line="1")
    with pytest.raises(ReviewError, match=f"{newer} reads {SCHEMA_VERSION}"):
        ReviewStore(postgres_url)
    with pytest.raises(StoreError) as refused:
        ResultStore(postgres_url.replace("//crackscope@", "//crackscope:pw@"), line="1")
    assert "crackscope:***@" in str(refused.value) and ":pw@" not in str(refused.value)


def test_a_version_4_plant_store_gains_the_review_indexes_when_the_review_opens_it(postgres_url):
    with ResultStore(postgres_url, line="1") as store:
        store.add([_record("a.png", Verdict.REVIEW, 0.4), _record("b.png")])
    for name in ("results_verdict", "results_line", "results_model", "results_sample", "results_queue"):
        _psql(postgres_url, f"DROP INDEX {name}")
    _psql(postgres_url, "CREATE INDEX results_verdict ON results (verdict, score)")  # as version 4 made them
    _psql(postgres_url, "CREATE INDEX results_line ON results (line, station)")
    _psql(postgres_url, "UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    with ReviewStore(postgres_url) as review:
        assert [row.source for row in review.queue(QueueFilter(verdict="all"))] == ["a.png", "b.png"]
    indexes = dict(_psql(postgres_url, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'results'"))
    assert indexes["results_line"].endswith("(line, station, verdict)")
    assert indexes["results_verdict"].endswith("(verdict)")
    assert "INCLUDE (id, score)" in indexes["results_queue"] and "results_model" in indexes
    assert _psql(postgres_url, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]


def test_the_review_refuses_an_empty_database_and_a_server_it_cannot_reach(postgres_url, postgres_server):
    with pytest.raises(ReviewError, match="not a crackscope results store"):
        ReviewStore(postgres_url)
    with pytest.raises(ReviewError, match="cannot connect"):
        ReviewStore(postgres_server.database_url("no_such_database"))


# --- the review -----------------------------------------------------------------------------------------------------


CALIBRATION = Calibration(ok_below=0.2, defect_at_or_above=0.8, method="test band")


@pytest.fixture
def plant(postgres_url) -> str:
    """A plant store with two lines: line 1 one REVIEW, one DEFECT, two OK; line 2 one REVIEW and one OK."""
    rows = {
        "1": [("l1_review", Verdict.REVIEW, 0.55), ("l1_defect", Verdict.DEFECT, 0.9)]
        + [(f"l1_ok{i}", Verdict.OK, 0.1) for i in range(2)],
        "2": [("l2_review", Verdict.REVIEW, 0.45), ("l2_ok", Verdict.OK, 0.05)],
    }
    for line, records in rows.items():
        with ResultStore(postgres_url, line=line, station="cam") as store:
            store.add(_record(f"/line{line}/{name}.png", verdict, score) for name, verdict, score in records)
            store.claim(MODEL, "model.onnx", ModelCard("test", 64, 2, calibration=CALIBRATION))
    return postgres_url


def _names(store: ReviewStore, selection: QueueFilter) -> list[str]:
    return [Path(row.source).stem for row in store.queue(selection)]


def test_the_review_queue_of_a_plant_store_filters_by_line(plant):
    with ReviewStore(plant) as store:
        assert store.lines() == ["1", "2"]
        assert _names(store, QueueFilter()) == ["l2_review", "l1_review", "l1_defect", "l1_ok0", "l1_ok1", "l2_ok"]
        assert _names(store, QueueFilter(line="1")) == ["l1_review", "l1_defect", "l1_ok0", "l1_ok1"]
        assert _names(store, QueueFilter(line="2", verdict="OK")) == ["l2_ok"]
        assert store.queue_size(QueueFilter(line="2")) == 2
        assert store.counts(QueueFilter(line="1"))["OK"] == {"records": 2, "reviewed": 0}
        assert {row.line for row in store.queue(QueueFilter(line="2"))} == {"2"}
        assert store.last_rowid() >= 6
        assert store.calibration_for(MODEL) == CALIBRATION


def test_decisions_and_marks_are_stored_in_the_plant_store(plant):
    with ReviewStore(plant) as store:
        ids = {Path(r.source).stem: r.id for r in store.records(store.queue_ids(QueueFilter(verdict="all")))}
        store.decide(ids["l1_review"], "alice", Label.OK)
        store.decide(ids["l1_review"], "alice", Label.DEFECT)  # changes her mind: replaces her decision
        store.decide(ids["l1_review"], "bob", Label.OK)
        assert [(d.reviewer, d.label) for d in store.decisions(ids["l1_review"])] == [
            ("alice", Label.DEFECT),
            ("bob", Label.OK),
        ]
        assert [d.label for d in store.history(ids["l1_review"])] == [Label.OK, Label.DEFECT, Label.OK]
        assert _names(store, QueueFilter(line="1", status="disputed")) == ["l1_review"]
        assert store.counts(QueueFilter(line="1"))["REVIEW"] == {"records": 1, "reviewed": 1}
        mark = store.add_mark(ids["l1_defect"], "alice", (10, 10, 20, 20))
        second = store.add_mark(ids["l1_defect"], "alice", (30, 20, 8, 8))
        assert second.id > mark.id
        store.remove_mark(mark.id, "alice")
        assert [m.id for m in store.marks(ids["l1_defect"])] == [second.id]
        assert list(store.all_marks()) == [ids["l1_defect"]]
        assert [row[0] for row in store.reviewed()] == [ids["l1_review"]]


def test_review_export_of_a_plant_store_takes_saved_frames_from_the_artefacts_folder(postgres_url, tmp_path):
    from crackscope.inspect.review.export import export_dataset

    artefacts = tmp_path / "art"
    (artefacts / "review").mkdir(parents=True)
    cv2.imwrite(str(artefacts / "review" / "gone.jpg"), np.full((48, 64, 3), 90, np.uint8))
    record = _record("/no/longer/here/gone.png", Verdict.DEFECT, 0.9, image_path="review/gone.jpg")
    with ResultStore(postgres_url, line="1") as store:
        store.add([record])
    with ReviewStore(postgres_url) as review:
        review.decide(record.id, "alice", Label.DEFECT)
    summary = export_dataset(postgres_url, tmp_path / "dataset", artefacts)
    assert summary.counts["crack"] == 1 and not summary.skipped
    without = export_dataset(postgres_url, tmp_path / "dataset")
    assert without.counts["crack"] == 0 and "give --artefacts" in without.skipped[0]


def _get(server: ReviewServer, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", path, headers={"Host": f"127.0.0.1:{server.port}"})
    response = connection.getresponse()
    page = response.read().decode("utf-8", "replace")
    connection.close()
    return response.status, page


def test_the_review_app_serves_the_whole_plant_with_a_line_filter(plant):
    pytest.importorskip("flask", reason="pip install 'crackscope[review]'")
    with ReviewServer(ReviewConfig(results=plant, port=0)) as server:
        status, page = _get(server, "/")
        assert status == 200 and "l1_review.png" in page and "l2_review.png" in page
        assert '<select name="line">' in page and '<option value="2" ' in page
        status, page = _get(server, "/?line=2")
        assert status == 200 and "l2_review.png" in page and "l1_review.png" not in page
        assert '<option value="2" selected' in page
        with ReviewStore(plant) as store:
            item = store.queue(QueueFilter(line="2"))[0].id
        status, page = _get(server, f"/item/{item}?line=2")
        assert status == 200 and "line / station" in page
        assert _get(server, "/stats")[0] == 200


# --- runs -----------------------------------------------------------------------------------------------------------


def test_a_plant_store_needs_artefacts_and_a_line_and_a_folder_takes_no_artefacts(tmp_path):
    url = "postgresql://qa:secret@db.example/plant"
    with pytest.raises(OutputError, match="give --artefacts DIR") as refused:
        check_output(url, None, line="1")
    assert "secret" not in str(refused.value)
    with pytest.raises(OutputError, match="give --line NAME"):
        check_output(url, tmp_path / "art")
    with pytest.raises(OutputError, match="--artefacts is for a PostgreSQL --out"):
        check_output(tmp_path / "out", tmp_path / "art")
    with pytest.raises(OutputError, match="--line must be 1 to 64 printable characters"):
        check_output(tmp_path / "out", line="x" * 65)
    output = check_output(url, tmp_path / "art", line="line 3")
    assert output.shared and output.station  # the host name
    assert output.file("report.html").name == f"report.line_3-{output.station}.html"


def test_the_command_line_refuses_a_plant_store_without_artefacts_in_one_line(brightness_model, tmp_path, capsys):
    _grey_images(tmp_path / "in", 1)
    command = ["inspect", str(tmp_path / "in"), "--model", str(brightness_model), "--out", "postgresql://db/plant"]
    assert main([*command, "--line", "1"]) == 2
    assert main([*command, "--artefacts", str(tmp_path / "art")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--artefacts DIR" in errors[0] and "--line NAME" in errors[1]


@pytest.mark.parametrize("count", [1, 3, 7])
def test_the_shards_of_an_input_list_hold_every_input_exactly_once(count):
    paths = [f"/data/lot42/img_{i:05d}.png" for i in range(2000)]
    shares = [[p for p in paths if Shard(index, count).holds(p)] for index in range(count)]
    assert sorted(p for share in shares for p in share) == sorted(paths)
    assert all(len(share) > 2000 / count * 0.8 for share in shares)  # about equal shares


def test_a_shard_is_the_same_on_every_machine():
    # the first 8 bytes of the path's SHA-256 (never Python's salted hash()): a fixed answer for a fixed path
    digest = hashlib.sha256(b"/data/lot42/img_00001.png").digest()
    expected = int.from_bytes(digest[:8], "big") % 4
    assert [Shard(i, 4).holds("/data/lot42/img_00001.png") for i in range(4)].index(True) == expected
    code = (
        "from crackscope.inspect.batch import Shard; "
        "print([Shard(i, 4).holds('/data/lot42/img_00001.png') for i in range(4)].index(True))"
    )
    environment = {**os.environ, "PYTHONHASHSEED": "7"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    assert other.stdout.strip() == str(expected)


@pytest.mark.parametrize("shard", ["3/3", "-1/3", "1/0", "x", "1/2/3", "1"])
def test_a_shard_outside_0_to_n_is_one_line_and_exit_2(shard, brightness_model, tmp_path, capsys):
    _grey_images(tmp_path / "in", 1)
    command = ["inspect", str(tmp_path / "in"), "--model", str(brightness_model), "--out", str(tmp_path / "out")]
    assert main([*command, f"--shard={shard}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--shard" in error and "0 <= I < N" in error
    assert not (tmp_path / "out").exists()


def test_sharded_batch_runs_into_one_plant_store_inspect_every_input_once(postgres_url, brightness_model, tmp_path):
    inputs = _grey_images(tmp_path / "in", 40)
    inspected = []
    for index in range(3):
        config = BatchConfig(
            inputs=(str(tmp_path / "in"),),
            model=str(brightness_model),
            out=postgres_url,
            artefacts=str(tmp_path / "art"),
            line="4",
            station=f"worker{index}",
            shard=f"{index}/3",
            progress=False,
        )
        summary = run_batch(config)
        inspected.append(summary.inspected)
        assert summary.shard.startswith(f"shard {index}/3: {summary.inspected} of 40")
        assert (tmp_path / "art" / f"report.4-worker{index}.html").is_file()
        saved = (tmp_path / "art" / f"inspect-config.4-worker{index}.yaml").read_text()
        assert f"shard: {index}/3" in saved
    assert sum(inspected) == 40 and all(inspected)
    rows = _psql(postgres_url, "SELECT source, station FROM results")
    assert sorted(row[0] for row in rows) == sorted(str(p.resolve()) for p in inputs)
    again = run_batch(config)  # a shard run again resumes: nothing new
    assert (again.inspected, again.skipped) == (0, inspected[2])


def test_a_daemon_writes_to_the_plant_store_tagged_with_its_line_and_station(postgres_url, brightness_model, tmp_path):
    frames = [np.full((32, 32, 3), level, np.uint8) for level in (40, 220, 40, 220)]
    video = write_video(tmp_path / "line.avi", frames)
    url = postgres_url.replace("crackscope@", "crackscope:hunter2@")  # trust ignores it; it must not be written down
    config = DaemonConfig(
        source=str(video),
        model=str(brightness_model),
        out=url,
        artefacts=str(tmp_path / "art"),
        line="5",
        station="cam2",
        save="all",
        providers="cpu",
    )
    summary = run_daemon(config)
    assert summary.frames == 4
    rows = _psql(postgres_url, "SELECT line, station, overlay_path FROM results")
    assert len(rows) == 4 and {(line, station) for line, station, _ in rows} == {("5", "cam2")}
    assert all((tmp_path / "art" / path).is_file() for _, _, path in rows)
    saved = (tmp_path / "art" / "daemon.5-cam2.yaml").read_text()
    assert "hunter2" not in saved and "crackscope:***@" in saved
    assert run_daemon(config).frames == 0  # restarted on the same video: every frame is stored already


def test_a_daemon_started_before_the_server_waits_for_it_then_stores_every_frame(
    postgres_server, brightness_model, tmp_path, caplog
):
    from crackscope.inspect.sources import Backoff

    url = postgres_server.new_database()
    frames = [np.full((32, 32, 3), level, np.uint8) for level in (40, 220, 40)]
    config = DaemonConfig(
        source=str(write_video(tmp_path / "line.avi", frames)),
        model=str(brightness_model),
        out=url,
        artefacts=str(tmp_path / "art"),
        line="7",
        providers="cpu",
        reconnect=Backoff(initial_s=0.2, max_s=0.5),
    )
    postgres_server.pg_ctl("-m", "fast", "-w", "stop")  # the line's PC booted first
    try:
        done: list = []
        daemon = threading.Thread(target=lambda: done.append(run_daemon(config)))
        daemon.start()
        time.sleep(1.5)
        assert daemon.is_alive() and not done  # waiting for its store, not gone with exit 2
    finally:
        postgres_server.start()
    daemon.join(timeout=60)
    assert done and done[0].frames == 3
    assert len(_psql(url, "SELECT id FROM results")) == 3
    assert "cannot connect" in caplog.text and "trying again in" in caplog.text


def test_a_daemon_stopped_while_it_waits_for_its_store_says_so_in_one_line(brightness_model, tmp_path):
    pytest.importorskip("psycopg", reason="the plant store needs psycopg: pip install 'crackscope[plant]'")
    from crackscope.inspect.sinks import StoreUnavailable
    from crackscope.inspect.sources import Backoff

    config = DaemonConfig(
        source=str(write_video(tmp_path / "line.avi", [np.zeros((32, 32, 3), np.uint8)])),
        model=str(brightness_model),
        out="postgresql://crackscope@127.0.0.1:1/nowhere",  # nothing listens on port 1
        artefacts=str(tmp_path / "art"),
        line="7",
        providers="cpu",
        reconnect=Backoff(initial_s=0.1, max_s=0.2, attempts=3),
    )
    with pytest.raises(StoreUnavailable, match="cannot connect"):  # attempts ran out: the error, as before
        run_daemon(config)
    stop = threading.Event()
    stop.set()
    with pytest.raises(StoreUnavailable, match="stopped while waiting for it"):
        run_daemon(dataclasses.replace(config, reconnect=Backoff(initial_s=5, max_s=5)), stop=stop)
