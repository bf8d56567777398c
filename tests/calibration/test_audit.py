"""``crackscope audit``: planted label errors rank at the top; annotators get reliabilities and kappas."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from crackscope.calibration.annotators import cohen_kappa, dawid_skene, pairwise_kappa
from crackscope.calibration.audit import (
    AuditConfig,
    annotator_doubt,
    audit,
    other_class_probability,
    reliability_weight,
    weighted_share,
)
from crackscope.cli import main


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_planted_flipped_labels_rank_at_the_top_of_the_audit(line_model, tmp_path):
    from crackscope.training import synthetic

    data = synthetic.write_patch_dataset(tmp_path / "set", n_crack=40, n_ok=40, size=96, seed=11)
    flipped = set()
    for i in range(0, 36, 6):  # six cracks filed as ok, six good items filed as crack
        (data / "crack" / f"crack_{i:05d}.png").rename(data / "ok" / f"was_crack_{i:05d}.png")
        (data / "ok" / f"ok_{i:05d}.png").rename(data / "crack" / f"was_ok_{i:05d}.png")
        flipped |= {f"ok/was_crack_{i:05d}.png", f"crack/was_ok_{i:05d}.png"}
    out = tmp_path / "audit"
    code = main(["audit", "--model", str(line_model.fp32), "--data", str(data), "--out", str(out), "--no-progress"])
    assert code == 0
    rows = _read_csv(out / "audit.csv")
    assert len(rows) == 80 and [int(r["rank"]) for r in rows] == list(range(1, 81))
    top = {r["item"] for r in rows[:16]}
    assert len(flipped & top) >= 10, [r["item"] for r in rows[:16]]
    page = (out / "audit.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 2 * 80  # each item: the tile and its heatmap
    assert page.index("was_") < page.index("crack/crack_")  # the sheet is in rank order


@pytest.fixture
def voted(tmp_path, grey_dataset) -> Path:
    """40 + 40 grey items, three annotators: ann is always right, bob wrong on 4 items, cat right 60% of the time."""
    data = grey_dataset(tmp_path / "voted", {"crack": 40, "ok": 40}, seed=4)
    rng = np.random.default_rng(5)
    rows = []
    for folder in ("crack", "ok"):
        for i, path in enumerate(sorted((data / folder).glob("*.png"))):
            truth = folder
            other = "ok" if truth == "crack" else "crack"
            rows += [
                (f"{folder}/{path.name}", "ann", truth),
                (f"{folder}/{path.name}", "bob", other if i < 2 else truth),
                (f"{folder}/{path.name}", "cat", truth if rng.random() < 0.6 else other),
            ]
    with (data / "votes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "annotator", "label"])
        writer.writerows(rows)
    return data


def test_annotator_reliability_ranks_the_careless_annotator_last_and_kappa_matches_sklearn(voted, brightness_model):
    from sklearn.metrics import cohen_kappa_score

    from crackscope.labelled import read_votes

    votes = read_votes(voted / "votes.csv", {})
    _, reliability = dawid_skene(votes)
    accuracy = {r.annotator: r.accuracy for r in reliability}
    assert accuracy["cat"] < min(accuracy["bob"], accuracy["ann"]) - 0.2
    by = {a: {i: v for i, who, v in votes if who == a} for a in ("ann", "bob", "cat")}
    for kappa in pairwise_kappa(votes):
        items = sorted(by[kappa.first])
        expected = cohen_kappa_score([by[kappa.first][i] for i in items], [by[kappa.second][i] for i in items])
        assert kappa.kappa == pytest.approx(expected) and kappa.items == 80


def test_a_reliable_annotators_dissent_casts_more_doubt_than_a_careless_ones(voted, brightness_model, tmp_path):
    result = audit(AuditConfig(model=str(brightness_model), data=str(voted), out=str(tmp_path / "a"), progress=False))
    rows = {r["item"]: r for r in _read_csv(result.csv_path)}
    bob_wrong = [f"{f}/{f}_{i:04d}.png" for f in ("crack", "ok") for i in (0, 1)]
    cat_alone = [
        item
        for item in rows
        if item not in bob_wrong and rows[item]["vote_share_crack"] not in ("0", "1") and rows[item]["votes"] == "3"
    ]
    assert cat_alone, "the seed should give items where only the careless annotator dissents"
    # A reliable annotator's dissent casts more doubt than the careless one's.
    assert min(float(rows[i]["annotator_doubt"]) for i in bob_wrong) > max(
        float(rows[i]["annotator_doubt"]) for i in cat_alone
    )
    assert all("annotators disagree" in rows[i]["reasons"] for i in bob_wrong + cat_alone)
    page = result.html_path.read_text()
    assert "Cohen's kappa" in page and "Dawid-Skene" in page and page.count("<tr><th>ann</th>") == 3


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [([1, 0, 1, 0], [1, 0, 1, 0], 1.0), ([1, 0, 1, 0], [0, 1, 0, 1], -1.0), ([1, 1, 1], [1, 1, 1], None)],
)
def test_cohen_kappa_is_one_for_agreement_minus_one_for_opposition_and_undefined_without_variation(
    first, second, expected
):
    assert cohen_kappa(first, second) == expected


def test_suspicion_signals_read_the_label_and_the_votes_the_right_way_round():
    assert other_class_probability("crack", 0.1) == pytest.approx(0.9)
    assert other_class_probability("ok", 0.1) == pytest.approx(0.1)
    assert other_class_probability("ambiguous", 0.1) is None
    assert [annotator_doubt(q) for q in (None, 0.0, 1.0, 0.5, 0.75)] == [0.0, 0.0, 0.0, 1.0, 0.5]
    assert reliability_weight(0.5) == 0.0 == reliability_weight(0.3) and reliability_weight(1.0) == pytest.approx(
        np.log(99)
    )
    votes = [("a", "good", 1.0), ("a", "careless", 0.0)]
    assert weighted_share(votes, {"good": 3.0, "careless": 1.0}) == 0.75
    assert weighted_share(votes, {"good": 0.0, "careless": 0.0}) == 0.5


def test_audit_into_a_file_fails_with_one_line(brightness_model, voted, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = main(["audit", "--model", str(brightness_model), "--data", str(voted), "--out", str(tmp_path / "afile")])
    assert code == 2 and "exists and is not a folder" in capsys.readouterr().err
