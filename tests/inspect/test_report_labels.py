"""Batch runs over labelled folders: the report counts labels against verdicts; the calibration in force is told."""

from __future__ import annotations

import re

from crackscope.calibration.calibrate import CalibrateConfig, calibrate
from crackscope.inspect.batch import BatchConfig, run_batch
from crackscope.inspect.report import folder_label


def test_folder_label_is_the_nearest_enclosing_label_folder():
    assert folder_label("/data/line3/Ambiguous/x/y.png") == "ambiguous"
    assert folder_label("/data/ok/crack/y.png") == "crack"
    assert folder_label("/data/line3/y.png") is None
    assert folder_label("/data/crack.png") is None  # a file named like a label is not a folder


def test_the_report_counts_each_folder_label_against_each_verdict(brightness_model, grey_dataset, tmp_path):
    data = grey_dataset(tmp_path / "labelled", {"crack": 60, "ok": 60, "ambiguous": 20}, seed=2)
    calibrate(
        CalibrateConfig(
            model=str(brightness_model),
            data=str(data),
            out=str(tmp_path / "cal"),
            escape_rate=0.05,
            false_reject_rate=0.05,
            ambiguous_review=0.0,  # clear items only: these grey sets have no ambiguous ones
            progress=False,
        )
    )
    summary = run_batch(
        BatchConfig(
            inputs=(str(data),),
            model=str(brightness_model),
            out=str(tmp_path / "run"),
            progress=False,
            save_overlays="none",
        )
    )
    page = summary.report.read_text()
    assert "Labels from folder names" in page
    rows = dict(re.findall(r"<tr><th>(crack|ok|ambiguous)</th>((?:<td>[^<]*</td>)+)</tr>", page))
    cells = {label: re.findall(r"<td>([^<]*)</td>", row) for label, row in rows.items()}
    # columns: OK REVIEW DEFECT ERROR total share-in-REVIEW
    assert int(cells["ambiguous"][4]) == 20 and int(cells["crack"][4]) == 60
    totals = {v: sum(int(cells[label][i]) for label in cells) for i, v in enumerate(("OK", "REVIEW", "DEFECT"))}
    assert totals == {v: summary.counts[v] for v in ("OK", "REVIEW", "DEFECT")}
    assert int(cells["ambiguous"][1]) > 0  # some ambiguous items went to REVIEW, and the table shows it


def test_a_report_of_unlabelled_inputs_has_no_label_table(brightness_model, grey_dataset, tmp_path):
    data = grey_dataset(tmp_path / "line", {"frames": 5}, means={"frames": 128.0})
    summary = run_batch(
        BatchConfig(inputs=(str(data),), model=str(brightness_model), out=str(tmp_path / "run"), progress=False)
    )
    assert "Labels from folder names" not in summary.report.read_text()


def test_an_uncalibrated_model_says_so_once_and_a_calibrated_one_prints_its_thresholds(
    brightness_model, grey_dataset, tmp_path, capsys
):
    data = grey_dataset(tmp_path / "labelled", {"crack": 50, "ok": 50}, seed=3)
    run_batch(BatchConfig(inputs=(str(data),), model=str(brightness_model), out=str(tmp_path / "a"), progress=False))
    err = capsys.readouterr().err
    assert err.count("is not calibrated") == 1 and "OK below 0.500, DEFECT at or above 0.500" in err
    outcome = calibrate(
        CalibrateConfig(
            model=str(brightness_model),
            data=str(data),
            out=str(tmp_path / "cal"),
            escape_rate=0.05,
            false_reject_rate=0.05,
            ambiguous_review=0.0,  # clear items only: these grey sets have no ambiguous ones
            progress=False,
        )
    )
    capsys.readouterr()
    run_batch(BatchConfig(inputs=(str(data),), model=str(brightness_model), out=str(tmp_path / "b"), progress=False))
    err = capsys.readouterr().err
    c = outcome.calibration
    assert "not calibrated" not in err
    assert f"OK below {c.ok_below:.3f}, DEFECT at or above {c.defect_at_or_above:.3f}" in err
