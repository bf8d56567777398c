"""QA review: the queue, decisions beside the records, stats, the dataset export, and the server's security."""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import math
import os
import re
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackscope.calibration.stats import clopper_pearson_upper
from crackscope.cli import main
from crackscope.inspect.card import Calibration, ModelCard
from crackscope.inspect.decision import Verdict
from crackscope.inspect.frames import Region
from crackscope.inspect.overlay import colour_heatmap
from crackscope.inspect.results import InspectionResult, new_id
from crackscope.inspect.review.app import ReviewConfig, ReviewServer, check_config, is_loopback, transparent_heatmap
from crackscope.inspect.review.export import export_dataset
from crackscope.inspect.review.stats import review_stats
from crackscope.inspect.review.store import (
    STATUS_CHOICES,
    VERDICT_CHOICES,
    Decision,
    Label,
    Mark,
    Neighbours,
    QueueFilter,
    ReviewError,
    ReviewStore,
    consensus,
)
from crackscope.inspect.sinks import ResultStore, artefact_stem

MODEL, OTHER_MODEL = "a" * 64, "b" * 64
CALIBRATION = Calibration(
    ok_below=0.2, defect_at_or_above=0.8, method="test band", targets={"escape_rate": 0.01, "false_reject_rate": 0.05}
)
# name, verdict, score, time, model, saved images (frame, overlay, heatmap)
ROWS = [
    ("review_lo", "REVIEW", 0.40, "2025-11-29T08:00:00.000+00:00", MODEL, True),
    ("review_hi", "REVIEW", 0.70, "2025-11-29T08:05:00.000+00:00", MODEL, True),
    ("defect_lo", "DEFECT", 0.85, "2025-11-29T09:00:00.000+00:00", MODEL, True),
    ("defect_hi", "DEFECT", 0.99, "2025-11-29T09:05:00.000+00:00", MODEL, True),
    ("ok_1", "OK", 0.05, "2025-11-29T10:00:00.000+00:00", MODEL, False),
    ("ok_2", "OK", 0.10, "2025-11-29T10:01:00.000+00:00", MODEL, False),
    ("ok_3", "OK", 0.15, "2025-11-29T10:02:00.000+00:00", MODEL, False),
    ("ok_4", "OK", 0.01, "2025-11-29T10:03:00.000+00:00", MODEL, True),
    ("cam_ok", "OK", 0.02, "2025-11-30T10:00:00.000+00:00", OTHER_MODEL, False),
]


def _frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(60, 200, (48, 64, 3), dtype=np.uint8)


def _record(
    folder: Path, inputs: Path, index: int, name: str, verdict: str, score: float, time: str, model: str, saved: bool
) -> InspectionResult:
    frame = _frame(index)
    source = inputs / f"{name}.png"
    cv2.imwrite(str(source), frame)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    paths = {}
    if saved:
        stem = artefact_stem(str(source), sha)
        heat = np.zeros((48, 64), np.float32)
        heat[10:30, 20:40] = 1.0
        (folder / "review").mkdir(parents=True, exist_ok=True)
        for key, suffix, image in (
            ("image", ".jpg", frame),
            ("overlay", ".overlay.jpg", frame),
            ("heatmap", ".heatmap.png", colour_heatmap(heat)),
        ):
            cv2.imwrite(str(folder / "review" / f"{stem}{suffix}"), image)
            paths[key] = f"review/{stem}{suffix}"
    regions = (Region((20, 10, 20, 20), score, 1.0, Verdict(verdict)),) if verdict != "OK" else ()
    return InspectionResult(
        id=new_id(),
        source=str(source),
        sha256=sha,
        time=time,
        verdict=Verdict(verdict),
        score=score,
        model_id=model,
        width=64,
        height=48,
        regions=regions,
        tiles=((0, 0, 48, 48, score), (16, 0, 48, 48, score / 2)),
        image_path=paths.get("image"),
        overlay_path=paths.get("overlay"),
        heatmap_path=paths.get("heatmap"),
    )


@pytest.fixture
def results(tmp_path) -> Path:
    """A results folder with every verdict, two models, an ERROR record, and saved images for some records."""
    folder, inputs = tmp_path / "results", tmp_path / "inputs"
    inputs.mkdir()
    records = [_record(folder, inputs, i, *row) for i, row in enumerate(ROWS)]
    error = InspectionResult(
        new_id(),
        str(inputs / "broken.jpg"),
        "0" * 64,
        "2025-11-29T11:00:00.000+00:00",
        Verdict.ERROR,
        None,
        MODEL,
        error="file is empty",
    )
    with ResultStore(folder) as store:
        store.add([*records, error])
        card = ModelCard(backbone="tf_efficientnet_lite0", input_size=96, feature_size=3, calibration=CALIBRATION)
        store.set_meta(model_id=MODEL, model_path="model.onnx", card=card.to_metadata())
    return folder


def _ids(store: ReviewStore) -> dict[str, str]:
    return {Path(r.source).stem: r.id for r in store.records(store.queue_ids(QueueFilter(verdict="all")))}


def _names(store: ReviewStore, selection: QueueFilter) -> list[str]:
    return [Path(row.source).stem for row in store.queue(selection)]


# --- the queue ------------------------------------------------------------------------------------------------------


def test_the_queue_lists_review_by_uncertainty_then_defect_by_score_then_a_sample_of_ok(results):
    with ReviewStore(results) as store:
        names = _names(store, QueueFilter(ok_sample=3))
        assert names[:4] == ["review_lo", "review_hi", "defect_hi", "defect_lo"]  # 0.40 is nearer 0.5 than 0.70
        assert len(names) == 7 and set(names[4:]) <= {"ok_1", "ok_2", "ok_3", "ok_4", "cam_ok"}
        scores = [row.score for row in store.queue(QueueFilter(ok_sample=3))][4:]
        assert scores == sorted(scores, reverse=True)
        assert "broken" not in names
        assert store.queue_size(QueueFilter(ok_sample=0)) == 4


def test_the_ok_sample_is_a_fixed_uniform_draw_not_the_most_or_least_suspicious(results):
    with ReviewStore(results) as store:
        ok_ids = sorted(r.id for r in store.records(store.queue_ids(QueueFilter(verdict="OK"))))
        sampled = {row.id for row in store.queue(QueueFilter(ok_sample=2)) if row.verdict is Verdict.OK}
        assert sampled == set(ok_ids[:2])  # the lowest ids: random uuids, so a uniform sample
        assert sampled == {row.id for row in store.queue(QueueFilter(ok_sample=2)) if row.verdict is Verdict.OK}


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (QueueFilter(verdict="REVIEW"), {"review_hi", "review_lo"}),
        (QueueFilter(verdict="OK"), {"ok_1", "ok_2", "ok_3", "ok_4", "cam_ok"}),
        (QueueFilter(verdict="ERROR"), {"broken"}),
        (
            QueueFilter(verdict="all", since="2025-11-29T09:00", until="2025-11-29T10:01"),
            {"defect_lo", "defect_hi", "ok_1"},
        ),
        (QueueFilter(verdict="all", since="2025-11-30"), {"cam_ok"}),
        (QueueFilter(verdict="all", source="defect_"), {"defect_lo", "defect_hi"}),
        (QueueFilter(verdict="all", model_id=OTHER_MODEL[:8]), {"cam_ok"}),
        (QueueFilter(verdict="queue", model_id=OTHER_MODEL), {"cam_ok"}),
    ],
)
def test_the_queue_filters_by_verdict_time_source_and_model(results, selection, expected):
    with ReviewStore(results) as store:
        assert set(_names(store, selection)) == expected
        assert store.queue_size(selection) == len(expected)


def test_counts_give_records_and_reviewed_records_per_verdict_within_the_filters(results):
    with ReviewStore(results) as store:
        ids = _ids(store)
        store.decide(ids["defect_hi"], "alice", "defect")
        store.decide(ids["defect_hi"], "bob", "ok")
        counts = store.counts(QueueFilter(model_id=MODEL))
        assert counts == {
            "OK": {"records": 4, "reviewed": 0},
            "REVIEW": {"records": 2, "reviewed": 0},
            "DEFECT": {"records": 2, "reviewed": 1},
            "ERROR": {"records": 1, "reviewed": 0},
        }


def _tied_records() -> list[InspectionResult]:
    """Every verdict, with ties in the queue's order: REVIEW 0.4 and 0.6 are as uncertain, two DEFECT and two OK
    records share a score, and ERROR records have none."""
    scored = [("REVIEW", 0.4), ("REVIEW", 0.6), ("REVIEW", 0.45), ("DEFECT", 0.9), ("DEFECT", 0.9), ("DEFECT", 0.95)]
    scored += [("OK", 0.1), ("OK", 0.1), ("OK", 0.2), ("OK", 0.05), ("OK", 0.15), ("ERROR", None), ("ERROR", None)]
    time = "2025-11-29T08:00:00.000+00:00"
    return [
        InspectionResult(new_id(), f"in/{i:02d}.png", f"{i:064x}", time, Verdict(v), score, MODEL, 8, 8)
        for i, (v, score) in enumerate(scored)
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_pages_neighbours_and_positions_follow_the_queue_order_in_every_view(backend, tmp_path, request):
    target = str(tmp_path / "run") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    with ResultStore(target) as writer:
        writer.add(_tied_records())
        stored = {record.id: (index, record) for index, record in enumerate(writer.records())}  # the order stored
    rank = {"REVIEW": 0, "DEFECT": 1, "OK": 2, "ERROR": 3}

    def order(result_id: str) -> tuple:
        index, record = stored[result_id]
        score = record.score
        key = 2 if score is None else abs(score - 0.5) if record.verdict is Verdict.REVIEW else -score
        return rank[record.verdict.value], key, index

    with ReviewStore(target) as store:
        by_score = sorted(stored, key=order)
        store.decide(by_score[0], "alice", "defect")  # reviewed
        store.decide(by_score[4], "alice", "ok")  # disputed
        store.decide(by_score[4], "bob", "defect")
        for view in VERDICT_CHOICES:
            for status in STATUS_CHOICES:
                selection = QueueFilter(verdict=view, status=status, ok_sample=3)
                ids = store.queue_ids(selection)
                assert ids == sorted(ids, key=order), (view, status)
                pages = [row.id for offset in range(0, len(ids) + 2, 2) for row in store.queue(selection, offset, 2)]
                assert pages == ids, (view, status)
                assert store.queue_size(selection) == store.queue_size(selection, store.counts(selection)) == len(ids)
                for index, result_id in enumerate(ids):
                    previous, following = ids[index - 1] if index else None, ids[index + 1 : index + 2] or [None]
                    assert store.neighbours(selection, result_id) == Neighbours(
                        previous, following[0], index + 1, len(ids)
                    ), (view, status, index)
                for outside in set(stored) - set(ids):
                    assert store.neighbours(selection, outside) == Neighbours(
                        None, next(iter(ids), None), None, len(ids)
                    )
        assert len(store.queue_ids(QueueFilter(verdict="all", status="any"))) == len(stored)


def test_a_bad_filter_value_is_a_clear_error():
    with pytest.raises(ReviewError, match="not a time"):
        QueueFilter(since="yesterday")
    with pytest.raises(ReviewError, match="verdict must be one of"):
        QueueFilter(verdict="MAYBE")


# --- decisions ------------------------------------------------------------------------------------------------------


def _dump(folder: Path) -> list[tuple]:
    with sqlite3.connect(folder / "results.sqlite") as db:
        return db.execute("SELECT * FROM results ORDER BY rowid").fetchall()


def test_a_decision_is_stored_beside_the_records_which_stay_unchanged(results):
    before, jsonl = _dump(results), (results / "results.jsonl").read_bytes()
    with ReviewStore(results) as store:
        decision = store.decide(_ids(store)["review_hi"], "  alice  ", Label.DEFECT)
        assert decision.reviewer == "alice" and decision.label is Label.DEFECT
    assert _dump(results) == before and (results / "results.jsonl").read_bytes() == jsonl
    with ResultStore(results) as store:  # the runtime's store still opens the folder and sees its records
        assert store.integrity() == "ok" and len(list(store.records())) == len(before)


def test_a_reviewer_who_changes_their_mind_replaces_their_decision_and_the_history_keeps_both(results):
    with ReviewStore(results) as store:
        item = _ids(store)["review_lo"]
        store.decide(item, "alice", "defect")
        store.decide(item, "alice", "ok")
        assert [(d.reviewer, d.label) for d in store.decisions(item)] == [("alice", Label.OK)]
        assert [d.label for d in store.history(item)] == [Label.DEFECT, Label.OK]


def test_several_reviewers_keep_their_own_decisions_and_disagreement_makes_the_item_ambiguous(results):
    with ReviewStore(results) as store:
        ids = _ids(store)
        store.decide(ids["review_lo"], "alice", "defect")
        store.decide(ids["review_lo"], "bob", "ok")
        store.decide(ids["defect_hi"], "alice", "defect")
        store.decide(ids["defect_hi"], "bob", "defect")
        assert {d.reviewer: d.label for d in store.decisions(ids["review_lo"])} == {
            "alice": Label.DEFECT,
            "bob": Label.OK,
        }
        rows = {Path(r.source).stem: r for r in store.queue(QueueFilter())}
        assert rows["review_lo"].consensus is Label.AMBIGUOUS and rows["defect_hi"].consensus is Label.DEFECT
        assert _names(store, QueueFilter(status="disputed")) == ["review_lo"]
        assert _names(store, QueueFilter(status="reviewed")) == ["review_lo", "defect_hi"]
        assert "review_lo" not in _names(store, QueueFilter(status="unreviewed"))


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ((), None),
        ((Label.OK,), Label.OK),
        ((Label.DEFECT, Label.DEFECT), Label.DEFECT),
        ((Label.DEFECT, Label.OK), Label.AMBIGUOUS),
        ((Label.AMBIGUOUS, Label.AMBIGUOUS), Label.AMBIGUOUS),
    ],
)
def test_consensus_is_the_shared_label_or_ambiguous(labels, expected):
    assert consensus(labels) is expected


def test_an_error_record_an_unknown_id_and_a_blank_reviewer_cannot_be_decided(results):
    with ReviewStore(results) as store:
        with pytest.raises(ReviewError, match="no inspected record"):
            store.decide(_ids(store)["broken"], "alice", "ok")
        with pytest.raises(ReviewError, match="no inspected record"):
            store.decide("nope", "alice", "ok")
        with pytest.raises(ReviewError, match="reviewer name"):
            store.decide(_ids(store)["ok_1"], "   ", "ok")
        with pytest.raises(ValueError):
            store.decide(_ids(store)["ok_1"], "alice", "maybe")


def test_a_folder_without_a_results_store_is_a_clear_error(tmp_path):
    with pytest.raises(ReviewError, match=r"no results\.sqlite here"):
        ReviewStore(tmp_path)
    (tmp_path / "results.sqlite").write_bytes(b"not a database at all, just text" * 20)
    with pytest.raises(ReviewError, match="not a crackscope results store"):
        ReviewStore(tmp_path)


def test_the_calibration_in_force_is_known_only_for_the_stores_model(results):
    with ReviewStore(results) as store:
        assert store.calibration_for(MODEL) == CALIBRATION
        assert store.calibration_for(OTHER_MODEL) is None


# --- marks of missed regions ---------------------------------------------------------------------------------------


def _mark_log(folder: Path) -> list[tuple]:
    with sqlite3.connect(folder / "results.sqlite") as db:
        return db.execute("SELECT mark_id, reviewer, action FROM review_mark_log ORDER BY rowid").fetchall()


def test_a_mark_is_stored_in_whole_pixels_of_the_frame_beside_the_records_which_stay_unchanged(results):
    before = _dump(results)
    with ReviewStore(results) as store:
        item = _ids(store)["ok_1"]
        mark = store.add_mark(item, "  alice  ", (10.4, 5.6, 20.0, 12.0))
        assert isinstance(mark, Mark) and (mark.result_id, mark.reviewer, mark.box) == (item, "alice", (10, 6, 20, 12))
        assert mark.time.endswith("+00:00")
        assert store.marks(item) == [mark] and store.all_marks() == {item: [mark]}
        assert store.marks(_ids(store)["ok_2"]) == []
    assert _dump(results) == before


@pytest.mark.parametrize(
    ("box", "clipped"),
    [
        ((-10, -5, 30, 20), (0, 0, 20, 15)),  # off the top left
        ((50, 40, 100, 100), (50, 40, 14, 8)),  # off the bottom right of the 64 x 48 frame
        ((30, 20, -10, -10), (20, 10, 10, 10)),  # dragged up and to the left
        ((0, 0, 64, 48), (0, 0, 64, 48)),
    ],
)
def test_a_mark_is_clipped_to_the_frame(results, box, clipped):
    with ReviewStore(results) as store:
        assert store.add_mark(_ids(store)["review_hi"], "alice", box).box == clipped


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((61, 0, 10, 10), "at least 4 x 4 px"),  # 3 px wide once clipped
        ((100, 100, 10, 10), "at least 4 x 4 px"),  # outside the frame
        ((0, 0, 3.4, 10), "at least 4 x 4 px"),
        ((0, 0, math.nan, 10), "four finite numbers"),
        ((0, 0, math.inf, 10), "four finite numbers"),
        (("a", 0, 10, 10), "four numbers"),
        ((0, 0, 10), "four numbers"),
    ],
)
def test_a_sliver_or_a_box_that_is_not_four_numbers_is_refused(results, box, message):
    with ReviewStore(results) as store:
        item = _ids(store)["review_hi"]
        with pytest.raises(ReviewError, match=message):
            store.add_mark(item, "alice", box)
        assert store.marks(item) == []


def test_the_same_box_by_the_same_reviewer_is_stored_and_logged_once(results):
    with ReviewStore(results) as store:
        item = _ids(store)["defect_lo"]
        first = store.add_mark(item, "alice", (4, 4, 16, 16))
        assert store.add_mark(item, "alice", (4.2, 3.9, 16, 16)) == first  # the same once rounded
        other = store.add_mark(item, "bob", (4, 4, 16, 16))
        assert other.id != first.id and [m.reviewer for m in store.marks(item)] == ["alice", "bob"]
    assert _mark_log(results) == [(first.id, "alice", "add"), (other.id, "bob", "add")]


def test_only_the_reviewer_who_drew_a_mark_can_remove_it_and_the_log_keeps_both(results):
    with ReviewStore(results) as store:
        ids = _ids(store)
        mark = store.add_mark(ids["ok_4"], "alice", (4, 4, 16, 16))
        kept = store.add_mark(ids["ok_3"], "alice", (8, 8, 8, 8))
        with pytest.raises(ReviewError, match="drawn by alice: only they can remove it"):
            store.remove_mark(mark.id, "bob")
        with pytest.raises(ReviewError, match="no mark 999"):
            store.remove_mark(999, "alice")
        store.remove_mark(mark.id, "alice")
        store.remove_mark(mark.id, "alice")  # again: nothing changes
        assert store.marks(ids["ok_4"]) == [] and store.all_marks() == {ids["ok_3"]: [kept]}
        again = store.add_mark(ids["ok_4"], "alice", (4, 4, 16, 16))  # drawn again after removing: a new mark
        assert again.id not in (mark.id, kept.id)
    assert _mark_log(results) == [
        (mark.id, "alice", "add"),
        (kept.id, "alice", "add"),
        (mark.id, "alice", "remove"),
        (again.id, "alice", "add"),
    ]


def test_an_error_record_an_unknown_id_and_a_blank_reviewer_cannot_be_marked(results):
    with ReviewStore(results) as store:
        with pytest.raises(ReviewError, match="no inspected frame"):
            store.add_mark(_ids(store)["broken"], "alice", (0, 0, 10, 10))
        with pytest.raises(ReviewError, match="no inspected frame"):
            store.add_mark("nope", "alice", (0, 0, 10, 10))
        with pytest.raises(ReviewError, match="reviewer name"):
            store.add_mark(_ids(store)["ok_1"], "  ", (0, 0, 10, 10))
        assert store.all_marks() == {}


# --- stats ----------------------------------------------------------------------------------------------------------


def _reviewed(table: dict[Verdict, list[tuple[str, ...]]]) -> list[tuple[str, Verdict, list[Decision]]]:
    """Reviewed items from ``{verdict: [(label of reviewer 1, label of reviewer 2, ...), ...]}``."""
    items = []
    for verdict, rows in table.items():
        for i, labels in enumerate(rows):
            decisions = [Decision(f"{verdict.value}{i}", f"r{j}", Label(x), "t") for j, x in enumerate(labels)]
            items.append((f"{verdict.value}{i}", verdict, decisions))
    return items


def test_stats_count_agreement_with_the_model_per_verdict():
    reviewed = _reviewed(
        {
            Verdict.OK: [("ok",), ("ok",), ("ok",), ("defect",)],
            Verdict.DEFECT: [("defect",), ("defect", "defect"), ("ok", "defect")],
            Verdict.REVIEW: [("ambiguous",), ("defect",)],
        }
    )
    stats = review_stats(MODEL, {"OK": 100, "REVIEW": 10, "DEFECT": 20}, reviewed, CALIBRATION)
    by_verdict = {v.verdict: v for v in stats.verdicts}
    assert by_verdict[Verdict.OK].agreement == 0.75 and by_verdict[Verdict.OK].records == 100
    assert by_verdict[Verdict.DEFECT].agreement == pytest.approx(2 / 3) and by_verdict[Verdict.DEFECT].ambiguous == 1
    assert by_verdict[Verdict.REVIEW].agreement is None and by_verdict[Verdict.REVIEW].defect == 1
    assert stats.reviewed == 9 and stats.multi_reviewed == 2 and stats.disputed == 1
    assert stats.reviewers == {"r0": 9, "r1": 2} and stats.decisions == 11


def test_implied_rates_are_the_stratified_estimates_and_are_compared_with_the_targets():
    # OK: 1 defect in 20 clear -> 5% of 1000 = 50 escapes; REVIEW: 5 of 10 -> 50 of 100; DEFECT: 9 of 10 -> 90 of 100
    reviewed = _reviewed(
        {
            Verdict.OK: [("defect",)] + [("ok",)] * 19,
            Verdict.REVIEW: [("defect",)] * 5 + [("ok",)] * 5,
            Verdict.DEFECT: [("defect",)] * 9 + [("ok",)],
        }
    )
    stats = review_stats(MODEL, {"OK": 1000, "REVIEW": 100, "DEFECT": 100}, reviewed, CALIBRATION)
    assert stats.escape.value == pytest.approx(50 / (50 + 50 + 90))
    assert stats.false_reject.value == pytest.approx(10 / (950 + 50 + 10))
    assert stats.escape.status == "above target" and stats.false_reject.status == "within target"
    assert (stats.escape.found, stats.escape.among) == (1, 20)
    assert stats.escape.share_upper == pytest.approx(clopper_pearson_upper(1, 20, 0.9))


def test_a_verdict_with_records_but_no_clear_review_leaves_the_rates_unknown():
    reviewed = _reviewed(
        {Verdict.OK: [("ok",)] * 5, Verdict.DEFECT: [("defect",)] * 5, Verdict.REVIEW: [("ambiguous",)]}
    )
    stats = review_stats(MODEL, {"OK": 50, "REVIEW": 5, "DEFECT": 5}, reviewed, None)
    assert stats.escape.value is None and stats.escape.status == "unknown"
    assert stats.escape.missing == (Verdict.REVIEW,)
    assert stats.escape.target is None


def test_a_share_with_no_clearly_labelled_item_has_no_bound_to_show():
    stats = review_stats(MODEL, {"OK": 50, "REVIEW": 5, "DEFECT": 5}, _reviewed({Verdict.OK: [("ambiguous",)]}), None)
    assert (stats.escape.found, stats.escape.among, stats.escape.share_upper) == (0, 0, None)
    assert (stats.false_reject.among, stats.false_reject.share_upper) == (0, None)


# --- export ---------------------------------------------------------------------------------------------------------


def _decide_for_export(results: Path) -> dict[str, str]:
    with ReviewStore(results) as store:
        ids = _ids(store)
        store.decide(ids["defect_hi"], "alice", "defect")
        store.decide(ids["defect_hi"], "bob", "defect")  # agree: crack, with votes
        store.decide(ids["review_lo"], "alice", "defect")
        store.decide(ids["review_lo"], "bob", "ok")  # disagree: ambiguous, with votes
        store.decide(ids["review_hi"], "alice", "ambiguous")
        store.decide(ids["review_hi"], "bob", "defect")  # one ambiguous vote: ambiguous, no votes
        store.decide(ids["ok_1"], "alice", "ok")
        store.decide(ids["ok_4"], "alice", "ok")
    return ids


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_export_writes_tiles_and_frames_in_class_folders_votes_groups_and_a_manifest(results, tmp_path):
    ids = _decide_for_export(results)
    summary = export_dataset(results, tmp_path / "dataset")
    data = tmp_path / "dataset"
    assert summary.counts == {"crack": 1, "ok": 2, "ambiguous": 2} and not summary.skipped
    assert summary.tiles == {"crack": 1, "ok": 2, "ambiguous": 2} and summary.tile_size == 96  # the card's input
    frames = {p.parent.name + "/" + p.name.split("-")[0] for p in (data / "frames").rglob("*.*")}
    assert frames == {"crack/defect_hi", "ok/ok_1", "ok/ok_4", "ambiguous/review_lo", "ambiguous/review_hi"}
    tiles = {p.relative_to(data).parent.as_posix() + "/" + p.name.split("-")[0] for p in data.glob("*/*.png")}
    assert tiles == {"crack/defect_hi", "ok/ok_1", "ok/ok_4", "ambiguous/review_lo", "ambiguous/review_hi"}
    assert {cv2.imread(str(p)).shape for p in data.glob("*/*.png")} == {(96, 96, 3)}  # 64 x 48 frames, padded
    votes = _rows(data / "votes.csv")
    assert {(Path(v["image"]).name.split("-")[0], v["annotator"], v["label"]) for v in votes} == {
        ("defect_hi", "alice", "crack"),
        ("defect_hi", "bob", "crack"),
        ("review_lo", "alice", "crack"),
        ("review_lo", "bob", "ok"),
    }
    assert all((data / v["image"]).is_file() and not v["image"].startswith("frames/") for v in votes)
    groups = _rows(data / "groups.csv")
    assert len(groups) == 5 and all(Path(g["image"]).name.startswith(g["group"]) for g in groups)
    manifest = [row for row in _rows(data / "review-export.csv")]
    by_kind = {(row["result_id"], row["kind"]): row for row in manifest}
    assert by_kind[(ids["review_lo"], "frame")]["by"] == "alice=defect;bob=ok"
    assert by_kind[(ids["defect_hi"], "driving")]["model_verdict"] == "DEFECT"
    assert by_kind[(ids["defect_hi"], "driving")]["box"] == "0 0 96 96"
    assert by_kind[(ids["ok_1"], "closest")]["label"] == "ok"  # nothing flagged it: its closest call, confirmed OK


def test_the_exported_dataset_loads_for_training_with_votes_as_soft_targets(results, tmp_path):
    from crackscope.labelled import Clarity, DataConfig, load_samples

    _decide_for_export(results)
    export_dataset(results, tmp_path / "dataset")
    dataset = load_samples(tmp_path / "dataset", DataConfig())
    targets = {s.path.name.split("-")[0]: (s.target, s.clarity) for s in dataset.samples}
    assert targets["defect_hi"] == (1.0, Clarity.CLEAR)
    assert targets["review_lo"] == (0.5, Clarity.AMBIGUOUS)  # the votes split
    assert targets["review_hi"] == (0.5, Clarity.AMBIGUOUS)  # the folder's default ambiguous target
    assert targets["ok_1"] == (0.0, Clarity.CLEAR)


def test_export_takes_the_unchanged_original_else_the_saved_frame_else_skips_and_names_the_item(results, tmp_path):
    ids = _decide_for_export(results)
    with ReviewStore(results) as store:
        sources = {name: Path(store.record(i).source) for name, i in ids.items()}
    sources["defect_hi"].write_bytes(b"changed since")  # saved frame used instead
    sources["ok_4"].unlink()  # saved frame used instead
    sources["ok_1"].unlink()  # nothing saved: skipped
    summary = export_dataset(results, tmp_path / "dataset")
    assert summary.counts == {"crack": 1, "ok": 1, "ambiguous": 2}
    assert summary.skipped == (
        f"{sources['ok_1']}: no image was saved for it and the original file is gone or changed",
    )
    frames = tmp_path / "dataset" / "frames"
    assert [p.suffix for p in (frames / "crack").iterdir()] == [".jpg"]  # the saved review/ frame
    assert [p.suffix for p in (frames / "ambiguous").iterdir()] == [".png", ".png"]  # originals
    assert "skipped" in summary.describe()


def test_exporting_again_replaces_the_earlier_export_and_other_folders_are_refused(results, tmp_path):
    _decide_for_export(results)
    data = tmp_path / "dataset"
    export_dataset(results, data)
    (data / "crack" / "stale.jpg").write_bytes(b"x")
    export_dataset(results, data)
    assert not (data / "crack" / "stale.jpg").exists() and (data / "votes.csv").is_file()
    assert not list(tmp_path.glob(".dataset*"))
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ReviewError, match="holds something else"):
        export_dataset(results, other)
    with pytest.raises(ReviewError, match="would replace the results folder"):
        export_dataset(results, results)
    assert (other / "holiday.jpg").is_file()


def test_review_export_on_the_command_line_prints_what_it_wrote(results, tmp_path, capsys):
    _decide_for_export(results)
    assert main(["review", "export", "--results", str(results), "--out", str(tmp_path / "dataset")]) == 0
    out = capsys.readouterr().out
    assert "exported 5 tile(s) of 96 px" in out and "5 reviewed frame(s) whole" in out
    assert "crack 1, ok 2, ambiguous 2" in out and "4 vote(s)" in out


# --- the server -----------------------------------------------------------------------------------------------------


def _request(server: ReviewServer, method: str, path: str, *, headers: dict | None = None, body: str | None = None):
    """A raw HTTP request (the path is sent exactly as given; redirects are not followed)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Host": f"127.0.0.1:{server.port}", **(headers or {})}
    if body is not None:
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def _text(server, path, **kwargs) -> tuple[int, str]:
    status, _, data = _request(server, "GET", path, **kwargs)
    return status, data.decode("utf-8", "replace")


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


@pytest.fixture
def server(results):
    with ReviewServer(ReviewConfig(results=str(results), port=0, ok_sample=3)) as running:
        yield running


def test_the_pages_render_over_the_live_store_and_new_records_appear_without_a_restart(server, results):
    status, page = _text(server, "/")
    assert status == 200 and "review_hi.png" in page and "newcomer.png" not in page
    with ReviewStore(results) as store:
        ids = _ids(store)
    for name in ("review_hi", "ok_1", "broken"):  # saved images, no saved image, not inspected
        status, page = _text(server, f"/item/{ids[name]}")
        assert status == 200, page
    assert "could not be inspected: file is empty" in page
    status, page = _text(server, "/stats")
    assert status == 200 and "escape rate" in page
    summary = json.loads(_text(server, "/api/summary")[1])
    newcomer = InspectionResult(
        new_id(),
        "/line/newcomer.png",
        "1" * 64,
        "2025-12-01T00:00:00.000+00:00",
        Verdict.DEFECT,
        0.97,
        MODEL,
        width=64,
        height=48,
    )
    with ResultStore(results) as store:  # a daemon adding a record while the server runs
        store.add([newcomer])
    assert "newcomer.png" in _text(server, "/")[1]
    assert json.loads(_text(server, "/api/summary")[1])["last_rowid"] > summary["last_rowid"]


def test_an_item_without_a_saved_image_says_so_and_still_shows_its_scores(server, results):
    with ReviewStore(results) as store:
        item = _ids(store)["ok_1"]
    page = _text(server, f"/item/{item}")[1]
    assert "No image was saved for this item" in page and "--save-overlays all" in page
    assert '"tiles-data">[[0, 0, 48, 48, 0.05], [16, 0, 48, 48, 0.025]]</script>' in page


@pytest.mark.parametrize(
    "path",
    [
        "/files/../results.sqlite",
        "/files/..%2f..%2fetc%2fpasswd",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/review/..%2F..%2Finputs%2Fok_1.png",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        "/files/%5C..%5C..%5Cinputs%5Cok_1.png",
        "/files/review/%00.jpg",
        "/files/results.sqlite",
        "/files/results.jsonl",
        "/files/review/no-such-file.jpg",
        "/files/escape/ok_1.png",
        "/files/review/outside.jpg",
    ],
)
def test_images_are_served_only_from_inside_the_results_folder(server, results, path):
    (results / "escape").symlink_to(results.parent / "inputs", target_is_directory=True)
    (results / "review" / "outside.jpg").symlink_to(results.parent / "inputs" / "ok_1.png")
    status, _, data = _request(server, "GET", path)
    assert status == 404 and b"root:" not in data and b"SQLite" not in data


def test_a_saved_image_and_the_transparent_heatmap_are_served(server, results):
    with ReviewStore(results) as store:
        record = store.record(_ids(store)["review_hi"])
    status, headers, data = _request(server, "GET", "/files/" + record.image_path)
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and data[:2] == b"\xff\xd8"
    status, headers, data = _request(server, "GET", f"/heat/{record.id}.png")
    heat = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert status == 200 and heat.shape == (48, 64, 4)


def test_the_heatmap_layer_is_clear_where_cold_and_opaque_where_hot():
    heat = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (4, 1))
    alpha = transparent_heatmap(colour_heatmap(heat))[:, :, 3].astype(int)
    assert alpha[:, :20].max() == 0 and alpha[:, -20:].min() >= 250
    assert np.all(np.diff(alpha[0, ::16]) >= -8)  # grows with the heat (up to JPEG-free rounding)


def test_nothing_changes_without_a_post_carrying_the_form_token_from_this_site(server, results):
    with ReviewStore(results) as store:
        item = _ids(store)["review_hi"]
    cookie = {"Cookie": "crackscope_reviewer=alice"}
    page = _text(server, f"/item/{item}", headers=cookie)[1]
    token = _csrf(page)
    assert _request(server, "GET", f"/item/{item}/decision?label=defect&csrf={token}", headers=cookie)[0] == 405
    body = f"label=defect&csrf={token}"
    assert _request(server, "POST", f"/item/{item}/decision", headers=cookie, body="label=defect")[0] == 403
    assert _request(server, "POST", f"/item/{item}/decision", headers=cookie, body="label=defect&csrf=forged")[0] == 403
    cross = {**cookie, "Origin": "http://evil.example"}
    assert _request(server, "POST", f"/item/{item}/decision", headers=cross, body=body)[0] == 403
    assert _request(server, "POST", f"/item/{item}/decision", body=body)[0] == 400  # no reviewer name
    with ReviewStore(results) as store:
        assert store.decisions(item) == []
    same = {**cookie, "Origin": f"http://127.0.0.1:{server.port}"}
    status, headers, _ = _request(server, "POST", f"/item/{item}/decision?verdict=queue", headers=same, body=body)
    assert status == 303 and f"saved={item}" in headers["Location"] and "verdict=queue" in headers["Location"]
    with ReviewStore(results) as store:
        assert [(d.reviewer, d.label) for d in store.decisions(item)] == [("alice", Label.DEFECT)]


def test_deciding_moves_to_the_next_item_of_the_queue_and_the_page_shows_what_was_saved(server, results):
    with ReviewStore(results) as store:
        order = store.queue_ids(QueueFilter(ok_sample=3))
    cookie = {"Cookie": "crackscope_reviewer=alice"}
    token = _csrf(_text(server, f"/item/{order[0]}", headers=cookie)[1])
    _, headers, _ = _request(
        server, "POST", f"/item/{order[0]}/decision", headers=cookie, body=f"label=ok&csrf={token}"
    )
    assert headers["Location"].startswith(f"/item/{order[1]}?")
    page = _text(server, headers["Location"], headers=cookie)[1]
    assert "Saved <b>ok</b>" in page
    page = _text(server, f"/item/{order[0]}", headers=cookie)[1]  # decided: no longer in the default queue
    assert re.search(r'class="label ok chosen"', page) and "not in the filtered queue" in page
    assert "1 of" in _text(server, f"/item/{order[0]}?status=any", headers=cookie)[1]


def test_the_reviewer_name_is_kept_in_a_cookie_and_redirects_stay_on_this_site(server):
    token = _csrf(_text(server, "/")[1])
    status, headers, _ = _request(server, "POST", "/reviewer", body=f"name=Jos%C3%A9+B&next=%2Fstats&csrf={token}")
    assert status == 303 and headers["Location"] == "/stats" and "SameSite=Strict" in headers["Set-Cookie"]
    cookie = headers["Set-Cookie"].split(";")[0]
    assert 'value="José B"' in _text(server, "/", headers={"Cookie": cookie})[1]
    _, headers, _ = _request(server, "POST", "/reviewer", body=f"name=x&next=https://evil.example/&csrf={token}")
    assert headers["Location"] == "/"
    _, headers, _ = _request(server, "POST", "/reviewer", body=f"name=x&next=//evil.example/&csrf={token}")
    assert headers["Location"] == "/"


def test_a_request_naming_another_host_is_refused(server):
    status, _, body = _request(server, "GET", "/", headers={"Host": "evil.example"})
    assert status == 400 and b"csrf" not in body
    assert _request(server, "GET", "/", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_pages_forbid_framing_inline_scripts_and_sniffing(server):
    _, headers, _ = _request(server, "GET", "/")
    policy = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self';" in policy
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "reviews.factory.example"])
def test_serving_a_reachable_address_without_a_token_is_refused(results, host):
    assert not is_loopback(host)
    with pytest.raises(ReviewError, match="without an access token"):
        check_config(ReviewConfig(results=str(results), host=host))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_need_no_token(host):
    assert is_loopback(host)


def test_a_token_protected_server_asks_for_the_token_once_and_keeps_it_in_a_cookie(results):
    secret = "s3cret-token-1234"
    with ReviewServer(ReviewConfig(results=str(results), port=0, token=secret)) as server:
        assert _request(server, "GET", "/")[0] == 401
        assert _request(server, "GET", "/files/review/x.jpg")[0] == 401
        assert _request(server, "GET", "/?token=wrong")[0] == 401
        assert _request(server, "GET", "/?token=%C3%A9t%C3%A9")[0] == 401  # non-ASCII: refused, not a crash
        assert b"csrf" not in _request(server, "GET", "/")[2]
        status, headers, _ = _request(server, "GET", f"/stats?model=x&token={secret}")
        assert status == 303 and headers["Location"] == "/stats?model=x" and "HttpOnly" in headers["Set-Cookie"]
        assert _request(server, "GET", "/", headers={"Cookie": f"crackscope_token={secret}"})[0] == 200
        assert _request(server, "GET", "/", headers={"Authorization": f"Bearer {secret}"})[0] == 200
        assert server.login_url.endswith(f"?token={secret}")


def test_review_on_a_reachable_host_without_a_token_fails_with_one_clear_line(results, capsys, monkeypatch):
    monkeypatch.delenv("CRACKSCOPE_REVIEW_TOKEN", raising=False)
    assert main(["review", "--results", str(results), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crackscope review: error: refusing to serve on 0.0.0.0") and err.count("\n") == 1


def test_review_without_a_results_folder_says_how_to_give_one(capsys):
    assert main(["review"]) == 2
    assert "--results DIR" in capsys.readouterr().err


def test_review_export_has_help_text_with_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["review", "export", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "crackscope review export --results" in out


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_the_served_file_check_refuses_a_results_folder_reached_through_a_symlink_escape(tmp_path):
    from crackscope.inspect.review.app import served_file

    root = tmp_path / "root"
    (root / "review").mkdir(parents=True)
    (root / "review" / "a.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "review" / "link.png").symlink_to(tmp_path / "secret.png")
    assert served_file(root.resolve(), "review/a.jpg") == (root / "review" / "a.jpg").resolve()
    for bad in ("review/link.png", "../secret.png", "/etc/passwd", "review//a.jpg", "review/./a.jpg", ""):
        assert served_file(root.resolve(), bad) is None


def test_an_empty_results_folder_serves_an_empty_queue_and_stats_and_bad_requests_get_a_page(tmp_path):
    with ResultStore(tmp_path / "empty"):
        pass
    with ReviewServer(ReviewConfig(results=str(tmp_path / "empty"), port=0)) as server:
        assert "Nothing to review" in _text(server, "/")[1]
        assert _text(server, "/stats")[0] == 200
        status, page = _text(server, "/?since=yesterday")
        assert status == 400 and "is not a time" in page
        status, page = _text(server, "/item/nope")
        assert status == 404 and "No such record" in page


# --- fixes from a browser and curl trial ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example",
        "/\n/evil.example",
        "/ /evil.example",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "/stats\r\nSet-Cookie: a=b",
        "/caf\u00e9",
        "",
        "stats",
    ],
)
def test_a_redirect_target_that_a_browser_would_take_off_site_or_that_breaks_a_header_is_refused(target):
    from crackscope.inspect.review.app import local_target

    assert local_target(target) is None
    assert local_target("/item/abc?verdict=queue&source=line+3") == "/item/abc?verdict=queue&source=line+3"


def test_next_with_a_tab_or_a_newline_redirects_to_the_queue_not_off_site_or_to_an_error(server):
    token = _csrf(_text(server, "/")[1])
    for target in ("%2F%09%2Fevil.example", "%2F%0A%2Fevil.example", "%2Fstats%0D%0ASet-Cookie%3A+a%3Db"):
        status, headers, _ = _request(server, "POST", "/reviewer", body=f"name=x&next={target}&csrf={token}")
        assert (status, headers["Location"]) == (303, "/")


def test_the_token_redirect_stays_on_this_site_whatever_path_it_was_asked_for(results):
    secret = "s3cret-token-1234"
    with ReviewServer(ReviewConfig(results=str(results), port=0, token=secret)) as server:
        status, headers, _ = _request(server, "GET", f"/%09/evil.example?token={secret}")
        assert status == 303 and headers["Location"] == "/"


@pytest.mark.parametrize("port", [65536, -5, 100000, True])
def test_a_port_outside_0_to_65535_is_a_clear_error(results, port):
    with pytest.raises(ReviewError, match=r"--port must be a whole number from 0 .* to 65535"):
        check_config(ReviewConfig(results=str(results), port=port))


def test_review_with_a_bad_port_fails_with_one_line_not_a_traceback(results, capsys):
    assert main(["review", "--results", str(results), "--port", "-5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crackscope review: error: --port must be") and err.count("\n") == 1


def test_the_same_decision_sent_twice_is_stored_and_logged_once(server, results):
    with ReviewStore(results) as store:
        item = _ids(store)["review_hi"]
    cookie = {"Cookie": "crackscope_reviewer=alice"}
    token = _csrf(_text(server, f"/item/{item}", headers=cookie)[1])
    for label in ("defect", "defect", "defect", "ok"):
        status, _, _ = _request(
            server, "POST", f"/item/{item}/decision", headers=cookie, body=f"label={label}&csrf={token}"
        )
        assert status == 303
    with ReviewStore(results) as store:
        assert [d.label for d in store.history(item)] == [Label.DEFECT, Label.OK]
        assert [d.label for d in store.decisions(item)] == [Label.OK]


def test_the_item_page_ignores_a_held_key_and_sends_one_decision_per_press(server):
    status, script = _text(server, "/static/review.js")
    assert status == 200
    assert "event.repeat" in script and re.search(r"if \(sent\) \{ event\.preventDefault\(\)", script)


@pytest.mark.skipif(not hasattr(os, "link"), reason="needs hard links")
def test_a_hard_link_inside_the_results_folder_is_not_served(server, results):
    secret = results.parent / "secret.png"
    cv2.imwrite(str(secret), _frame(99))
    os.link(secret, results / "review" / "hard.png")
    assert _request(server, "GET", "/files/review/hard.png")[0] == 404
    assert _request(server, "GET", "/view/thumb/review/hard.png")[0] == 404


def test_pages_get_downsized_copies_of_large_frames_and_heatmaps_and_link_the_full_size(server, results):
    with ReviewStore(results) as store:
        record = store.record(_ids(store)["review_hi"])
    big = cv2.resize(_frame(5), (4000, 3000), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(results / record.image_path), big)
    heat = np.zeros((3000, 4000), np.float32)
    heat[1000:2000, 1500:2500] = 1.0
    cv2.imwrite(str(results / record.heatmap_path), colour_heatmap(heat))
    full = _request(server, "GET", "/files/" + record.image_path)[2]
    for size, side in (("thumb", 360), ("screen", 1600)):
        status, headers, data = _request(server, "GET", f"/view/{size}/{record.image_path}")
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and max(image.shape[:2]) == side
        assert len(data) < len(full) / 3  # 16% of the pixels at most
    status, _, data = _request(server, "GET", f"/heat/{record.id}.png")
    layer = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert status == 200 and layer.shape == (1200, 1600, 4)
    assert layer[600, 800, 3] > 200 and layer[50, 50, 3] == 0  # still hot in the middle, clear at the edge
    page = _text(server, f"/item/{record.id}")[1]
    assert f'src="/view/screen/{record.image_path}"' in page and f'href="/files/{record.image_path}"' in page
    queue = _text(server, "/?status=any")[1]
    assert "/view/thumb/review/" in queue and 'src="/files/' not in queue
    small = _request(server, "GET", f"/view/thumb/{record.overlay_path}")  # 64 x 48: sent as it is
    assert small[0] == 200 and small[2] == (results / record.overlay_path).read_bytes()
    assert _request(server, "GET", f"/view/huge/{record.image_path}")[0] == 404


def test_the_queue_shows_unreviewed_items_unless_asked_for_all(server, results):
    with ReviewStore(results) as store:
        item = _ids(store)["review_hi"]
        store.decide(item, "alice", Label.DEFECT)
    assert "review_hi.png" not in _text(server, "/")[1]
    assert "review_hi.png" in _text(server, "/?status=any")[1]
    assert re.search(r'<option value="unreviewed" selected', _text(server, "/")[1])


def test_review_export_help_shows_its_own_usage(capsys):
    with pytest.raises(SystemExit):
        main(["review", "export", "--help"])
    usage = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    assert usage == "usage: crackscope review export [-h] --results DIR|URL [--artefacts DIR] --out DATASET"


def test_scores_near_one_or_zero_keep_the_digits_that_order_them():
    from crackscope.inspect.decision import log_odds, readable_probability

    shown = [readable_probability(p) for p in (0.5, 0.9994, 0.99999, 0.9999999, 1.0, 2.3e-5)]
    assert shown == ["0.500", "1 − 6.0e-04", "1 − 1.0e-05", "1 − 1.0e-07", "1 − <1e-16", "2.3e-05"]
    for x in (-30.0, -3.0, 0.0, 3.0, 25.0):  # 1 - p near 1e-11 at 25: float64 still has 5 digits of it
        assert log_odds(1.0 / (1.0 + math.exp(-x))) == pytest.approx(x, abs=1e-3)
    assert math.isfinite(log_odds(0.0)) and math.isfinite(log_odds(1.0)) and log_odds(1.0) > log_odds(1 - 1e-15)


def test_a_record_keeps_the_frame_score_at_full_precision():
    from crackscope.inspect.frames import FrameInspection
    from crackscope.inspect.results import result_from_inspection

    inspection = FrameInspection(Verdict.DEFECT, 1 - 3e-9, (), (), np.zeros((4, 4), np.float32), (4, 4), 1)
    record = result_from_inspection(inspection, source="a.png", sha256="0" * 64, model_id=MODEL)
    assert record.score == 1 - 3e-9 and record.score < 1.0


def test_the_item_page_and_queue_show_readable_scores_and_log_odds(server, results):
    with ReviewStore(results) as store:
        item = _ids(store)["defect_hi"]
    page = _text(server, f"/item/{item}")[1]
    assert "log-odds +4.6" in page and ">0.990<" in page
    assert 'title="log-odds +4.6">0.990</span>' in _text(server, "/")[1]


def test_review_says_whether_the_band_or_disagreeing_tiles_made_a_frame_review():
    from crackscope.inspect.decision import review_reason

    band = Calibration(ok_below=0.2, defect_at_or_above=0.8)
    assert review_reason(0.5, [0.1, 0.5], band).startswith("in the ambiguity band: 1 uncertain tile(s)")
    assert review_reason(0.6, [0.9, 0.3, 0.3], band).startswith("tiles disagree: 1 tile(s) score DEFECT")
    assert review_reason(0.3, [0.1, 0.1, 0.15], band).startswith("tiles add up: every tile is OK")
    assert review_reason(0.9, [0.9], band) is None and review_reason(0.1, [0.1], band) is None


def test_the_item_page_of_a_review_frame_says_why(server, results):
    with ReviewStore(results) as store:
        ids = _ids(store)
    page = _text(server, f"/item/{ids['review_hi']}")[1]  # tiles 0.70 and 0.35, both in the 0.2-0.8 band
    assert 'id="reason">in the ambiguity band: 2 uncertain tile(s)' in page
    assert 'id="reason"' not in _text(server, f"/item/{ids['defect_hi']}")[1]


# --- marks over HTTP ------------------------------------------------------------------------------------------------


def _post_mark(server, item: str, fields: str, reviewer: str | None = "alice", path: str = "mark"):
    headers = {"Cookie": f"crackscope_reviewer={reviewer}"} if reviewer else {}
    token = _csrf(_text(server, f"/item/{item}", headers=headers)[1])
    return _request(server, "POST", f"/item/{item}/{path}", headers=headers, body=f"{fields}&csrf={token}")


def test_a_reviewer_marks_a_missed_region_and_the_item_page_lists_and_draws_it(server, results):
    with ReviewStore(results) as store:
        item = _ids(store)["ok_4"]
    back = f"/item/{item}?verdict=all"
    status, headers, _ = _post_mark(server, item, f"x=10.4&y=5.6&w=20&h=12&next={back.replace('?', '%3F')}")
    assert (status, headers["Location"]) == (303, back)
    with ReviewStore(results) as store:
        [mark] = store.marks(item)
    assert (mark.reviewer, mark.box) == ("alice", (10, 6, 20, 12))
    page = _text(server, f"/item/{item}", headers={"Cookie": "crackscope_reviewer=alice"})[1]
    assert f'class="mark mine" data-mark="{mark.id}"' in page and "defect · alice" in page
    assert "left: 15.625%; top: 12.5%; width: 31.25%; height: 25.0%" in page  # over the 64 x 48 frame
    assert "<td>10, 6, 20, 12</td>" in page and f"/item/{item}/mark/{mark.id}/remove" in page
    page = _text(server, f"/item/{item}", headers={"Cookie": "crackscope_reviewer=bob"})[1]
    assert "defect · alice" in page and f"/mark/{mark.id}/remove" not in page  # bob cannot remove it


def test_a_mark_over_http_is_clipped_stored_once_and_redirects_only_on_this_site(server, results):
    with ReviewStore(results) as store:
        item = _ids(store)["review_hi"]
    for _ in range(2):
        status, headers, _ = _post_mark(server, item, "x=-5&y=40&w=200&h=30&next=%2F%2Fevil.example%2F")
        assert status == 303 and headers["Location"] == f"/item/{item}"
    with ReviewStore(results) as store:
        assert [m.box for m in store.marks(item)] == [(0, 40, 64, 8)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("x=abc&y=0&w=10&h=10", "x must be a number of pixels"),
        ("x=0&y=nan&w=10&h=10", "y must be a number of pixels"),
        ("x=0&y=0&w=inf&h=10", "w must be a number of pixels"),
        ("x=0&y=0&w=10", "h must be a number of pixels"),
        ("x=0&y=0&w=2&h=10", "at least 4 x 4 px"),
        ("x=1e400&y=0&w=10&h=10", "x must be a number of pixels"),
    ],
)
def test_a_mark_with_bad_numbers_is_a_400_with_one_line_not_a_server_error(server, results, fields, message):
    with ReviewStore(results) as store:
        item = _ids(store)["review_hi"]
    status, _, data = _post_mark(server, item, fields)
    assert status == 400 and message in data.decode("utf-8")
    with ReviewStore(results) as store:
        assert store.marks(item) == []


def test_marking_needs_the_form_token_from_this_site_and_a_reviewer_name(server, results):
    with ReviewStore(results) as store:
        item = _ids(store)["review_hi"]
    cookie = {"Cookie": "crackscope_reviewer=alice"}
    box = "x=0&y=0&w=10&h=10"
    assert _request(server, "POST", f"/item/{item}/mark", headers=cookie, body=box)[0] == 403
    assert _request(server, "POST", f"/item/{item}/mark", headers=cookie, body=box + "&csrf=forged")[0] == 403
    status, _, data = _post_mark(server, item, box, reviewer=None)
    assert status == 400 and b"Enter your name" in data
    assert _request(server, "GET", f"/item/{item}/mark?{box}", headers=cookie)[0] == 405
    with ReviewStore(results) as store:
        assert store.all_marks() == {}


def test_a_mark_is_removed_over_http_only_by_the_reviewer_who_drew_it(server, results):
    with ReviewStore(results) as store:
        ids = _ids(store)
        mark = store.add_mark(ids["defect_hi"], "alice", (4, 4, 16, 16))
    remove = f"mark/{mark.id}/remove"
    status, _, data = _post_mark(server, ids["defect_hi"], "", reviewer="bob", path=remove)
    assert status == 400 and b"only they can remove it" in data
    assert _post_mark(server, ids["defect_lo"], "", path=remove)[0] == 404  # not a mark of that item
    cookie = {"Cookie": "crackscope_reviewer=alice"}
    assert _request(server, "POST", f"/item/{ids['defect_hi']}/{remove}", headers=cookie, body="")[0] == 403
    status, headers, _ = _post_mark(server, ids["defect_hi"], "", path=remove)
    assert status == 303 and headers["Location"] == f"/item/{ids['defect_hi']}"
    with ReviewStore(results) as store:
        assert store.marks(ids["defect_hi"]) == []
    assert _post_mark(server, ids["defect_hi"], "", path=remove)[0] == 404  # already removed


def test_an_item_without_a_picture_offers_no_marking_and_the_script_has_a_mark_key(server, results):
    with ReviewStore(results) as store:
        ids = _ids(store)
    cookie = {"Cookie": "crackscope_reviewer=alice"}
    assert 'id="mark-start"' not in _text(server, f"/item/{ids['ok_1']}", headers=cookie)[1]
    page = _text(server, f"/item/{ids['ok_4']}", headers=cookie)[1]
    assert 'id="mark-start"' in page and 'id="mark-form"' in page and 'data-width="64" data-height="48"' in page
    assert re.search(r'id="mark-start" aria-pressed="false"\s+title', page)  # enabled: alice has a name
    assert re.search(r'id="mark-start" aria-pressed="false" disabled', _text(server, f"/item/{ids['ok_4']}")[1])
    script = _text(server, "/static/review.js")[1]
    assert 'key === "m"' in script and "marker.active()" in script
