"""``review export`` cuts reviewed frames into tiles at the model's input size, labelled with the reviewers' votes.

A results folder of 320 x 240 frames inspected with 96 px tiles is written by hand (records, card, saved originals),
reviewed through the store, exported, and read back as training reads it.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from crackscope.inspect.card import Calibration, ModelCard
from crackscope.inspect.decision import Verdict
from crackscope.inspect.frames import Region
from crackscope.inspect.results import InspectionResult, new_id, utc_now
from crackscope.inspect.review.export import MAX_DRIVING, choose_tiles, export_dataset
from crackscope.inspect.review.store import Label, ReviewStore
from crackscope.inspect.sinks import ResultStore
from crackscope.labelled import Clarity, DataConfig, load_samples, load_sources, split_by_source

MODEL = "c" * 64
SIZE = 96
CALIBRATION = Calibration(ok_below=0.3, defect_at_or_above=0.8, method="test band")
GRID = [(x, y) for y in (0, 72, 144) for x in (0, 72, 144, 224)]  # 96 px tiles of 320 x 240 at 25% overlap
# Tiles of a frame called defect and marked that are clear of every box: ok, up to 8 with the flagged ones, the
# highest first (the rest all score 0.01, so in grid order).
UNMARKED = {  # box (20, 20, 30, 30) touches (0, 0) only; two tiles are flagged
    "found": [(72, 0), (144, 0), (224, 0), (0, 72), (72, 72), (144, 72)],
    # box (250, 20, 40, 40) touches (224, 0) only; nothing flagged
    "missed": [(0, 0), (72, 0), (144, 0), (0, 72), (72, 72), (144, 72), (224, 72), (0, 144)],
}


def _tiles(hot: dict[tuple[int, int], float]) -> tuple:
    return tuple((x, y, SIZE, SIZE, hot.get((x, y), 0.01)) for x, y in GRID)


def _record(inputs: Path, name: str, seed: int, verdict: str, hot: dict, regions=()) -> InspectionResult:
    frame = np.random.default_rng(seed).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    source = inputs / f"{name}.png"
    cv2.imwrite(str(source), frame)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    tiles = _tiles(hot)
    return InspectionResult(
        new_id(),
        str(source),
        sha,
        utc_now(),
        Verdict(verdict),
        max(t[4] for t in tiles),
        MODEL,
        320,
        240,
        regions=tuple(regions),
        tiles=tiles,
    )


@pytest.fixture
def line(tmp_path) -> tuple[Path, dict[str, str]]:
    """Four inspected frames: a false alarm, a missed crack, a confirmed crack and an uncertain one."""
    inputs, results = tmp_path / "inputs", tmp_path / "results"
    inputs.mkdir()
    records = {
        # DEFECT on two tiles, one region; both reviewers say OK: hard negatives
        "false_alarm": _record(
            inputs,
            "false_alarm",
            1,
            "DEFECT",
            {(72, 72): 0.95, (144, 72): 0.5},
            [Region((100, 90, 40, 30), 0.95, 1.0, Verdict.DEFECT)],
        ),
        # OK, but a crack at (250, 20)-(290, 60): a reviewer says DEFECT and marks it
        "missed": _record(inputs, "missed", 2, "OK", {}),
        # OK, a reviewer says DEFECT without marking where
        "missed_unmarked": _record(inputs, "missed_unmarked", 3, "OK", {}),
        # REVIEW; reviewers split
        "split": _record(inputs, "split", 4, "REVIEW", {(0, 144): 0.6}),
        # DEFECT on a crack and on clean surface; the reviewer says DEFECT and boxes the crack only
        "found": _record(inputs, "found", 5, "DEFECT", {(0, 0): 0.97, (224, 144): 0.9}),
    }
    with ResultStore(results) as store:
        store.add(records.values())
        card = ModelCard(backbone="tf_efficientnet_lite0", input_size=SIZE, feature_size=3, calibration=CALIBRATION)
        store.set_meta(model_id=MODEL, model_path="model.onnx", card=card.to_metadata())
    ids = {name: r.id for name, r in records.items()}
    with ReviewStore(results) as review:
        review.decide(ids["false_alarm"], "alice", "ok")
        review.decide(ids["false_alarm"], "bob", "ok")
        review.decide(ids["missed"], "alice", "defect")
        review.add_mark(ids["missed"], "alice", (250, 20, 40, 40))
        review.decide(ids["missed_unmarked"], "bob", "defect")
        review.decide(ids["split"], "alice", "defect")
        review.decide(ids["split"], "bob", "ok")
        review.decide(ids["found"], "carol", "defect")
        review.add_mark(ids["found"], "carol", (20, 20, 30, 30))
    return results, ids


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_tiles_are_cut_where_the_review_was_about_and_labelled_with_the_votes(line, tmp_path):
    results, ids = line
    summary = export_dataset(results, tmp_path / "export")
    data = tmp_path / "export"
    rows = [r for r in _rows(data / "review-export.csv") if r["kind"] != "frame"]
    tiles = {(r["result_id"], r["kind"], r["box"], r["label"]) for r in rows}
    assert tiles == {
        (ids["false_alarm"], "driving", "72 72 96 96", "ok"),  # flagged DEFECT, reviewers say OK: hard negatives
        (ids["false_alarm"], "driving", "144 72 96 96", "ok"),  # in the band (0.5 >= 0.3)
        (ids["missed"], "mark", "222 0 96 96", "crack"),  # centred on the mark, moved inside the frame
        (ids["split"], "driving", "0 144 96 96", "ambiguous"),  # split votes: ambiguous, with the votes
        (ids["found"], "mark", "0 0 96 96", "crack"),  # the boxed crack; the driving tile under it is left to it
        (ids["found"], "driving", "224 144 96 96", "ok"),  # flagged outside every box of a marked defect frame
        *((ids[name], "unmarked", f"{x} {y} 96 96", "ok") for name, tiles in UNMARKED.items() for x, y in tiles),
    }  # the region (100, 90, 40, 30) lies in the first driving tile: no tile of its own
    assert summary.tiles == {"crack": 2, "ok": 3 + 6 + 8, "ambiguous": 1}
    assert summary.unmarked_escapes == 1 and "mark the missed region" in summary.describe()
    for row in rows:  # each tile is the frame's pixels under its box
        x, y, w, h = map(int, row["box"].split())
        frame = cv2.imread(row["source"])
        assert np.array_equal(cv2.imread(str(data / row["image"])), frame[y : y + h, x : x + w])
    votes = _rows(data / "votes.csv")
    voted = sorted((Path(v["image"]).name.split("-")[0], v["annotator"], v["label"]) for v in votes)
    assert voted == [  # each tile of an item several reviewers decided carries their votes; a mark carries none
        ("false_alarm", "alice", "ok"),
        ("false_alarm", "alice", "ok"),
        ("false_alarm", "bob", "ok"),
        ("false_alarm", "bob", "ok"),
        ("split", "alice", "crack"),
        ("split", "bob", "ok"),
    ]


def test_the_export_trains_beside_a_base_dataset_with_a_frames_tiles_kept_together(line, tmp_path):
    results, _ = line
    export_dataset(results, tmp_path / "export")
    exported = load_samples(tmp_path / "export", DataConfig())
    targets: dict[str, set] = {}
    for sample in exported.samples:
        targets.setdefault(sample.path.name.split("-")[0], set()).add((sample.target, sample.clarity))
    assert targets["split"] == {(0.5, Clarity.AMBIGUOUS)}  # 1 of 2 votes crack
    assert targets["missed"] == {(1.0, Clarity.CLEAR), (0.0, Clarity.CLEAR)}  # the marked crack, the rest good
    assert targets["false_alarm"] == {(0.0, Clarity.CLEAR)}
    assert len({s.group for s in exported.samples if s.path.name.startswith("false_alarm")}) == 1  # one frame
    base = tmp_path / "base"
    for name, value in (("crack", 200), ("ok", 40)):
        (base / name).mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(base / name / f"{i}.png"), np.full((SIZE, SIZE, 3), value, np.uint8))
    both = load_sources([str(base), str(tmp_path / "export")], DataConfig())
    assert set(both.summary()["sources"]) == {"base", "export"}
    for seed in range(5):
        train, val = split_by_source(both.samples, 0.5, seed)
        split_groups = {s.group for s in train} & {s.group for s in val}
        assert not split_groups  # no frame has tiles on both sides


def test_choose_tiles_caps_driving_tiles_and_covers_a_large_mark_with_a_grid():
    hot = {(x, y): 0.9 for x, y in GRID}
    record = InspectionResult(
        new_id(), "a.png", "0" * 64, utc_now(), Verdict.DEFECT, 0.9, MODEL, 320, 240, tiles=_tiles(hot)
    )
    chosen = choose_tiles(record, Label.DEFECT, [], SIZE, CALIBRATION)
    assert len(chosen) == MAX_DRIVING and {t.label for t in chosen} == {"crack"}

    class _Mark:
        box = (0, 0, 300, 100)

    marked = choose_tiles(record, Label.DEFECT, [_Mark()], SIZE, CALIBRATION)
    marks = [t.box for t in marked if t.kind == "mark"]
    assert len(marks) == 4 * 2  # 300 x 100 px: four tiles across, two down
    covered = np.zeros((240, 320), bool)
    for x, y, w, h in marks:
        assert 0 <= x <= 320 - w and 0 <= y <= 240 - h and w == h == SIZE
        covered[y : y + h, x : x + w] = True
    assert covered[0:100, 0:300].all()
    assert all(t.kind == "mark" or t.box[1] >= 100 for t in marked)  # driving tiles under the mark left to it
