"""Re-exporting never loses a calibration silently, and leaves no report of a model that is gone."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from crackscope.deploy.export import ExportConfig, ExportError, export
from crackscope.inspect.card import Calibration, calibration_folder, read_card, write_calibration
from crackscope.inspect.decision import is_identity
from crackscope.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow

CALIBRATION = Calibration(temperature=1.7, ok_below=0.2, defect_at_or_above=0.8, method="test")


def _calibrated_export(checkpoint, out):
    """An export at ``out`` calibrated as ``crackscope calibrate`` leaves it: card and report folder."""
    export(ExportConfig(checkpoint=str(checkpoint), out=str(out), verify_tiles=8))
    write_calibration(out, CALIBRATION)
    folder = calibration_folder(out)
    folder.mkdir()
    (folder / "calibration.json").write_text(json.dumps({"sha256_after": "old"}))
    (folder / "calibration.html").write_text("<html></html>")
    return folder


@pytest.fixture
def other_checkpoint(tiny_run, tmp_path):
    """The tiny run's checkpoint with another head bias: a different model of the same shape."""
    model, header = load_checkpoint(tiny_run.checkpoint)
    with torch.no_grad():
        model.fc.bias += 1.0
    return save_checkpoint(model, replace(header, epoch=99), tmp_path / "other.pt")


def test_the_same_checkpoint_keeps_its_calibration_and_report(tiny_run, tmp_path):
    out = tmp_path / "model.onnx"
    folder = _calibrated_export(tiny_run.checkpoint, out)
    result = export(ExportConfig(checkpoint=str(tiny_run.checkpoint), out=str(out), verify_tiles=8))
    assert read_card(out).calibration == CALIBRATION
    assert result.kept_calibration == (out,) and f"KEPT     the calibration of {out}" in result.describe()
    report = json.loads((folder / "calibration.json").read_text())
    assert report["sha256_after"] == "old" and report["re_exported"]["model_sha256"] == result.models[0].sha256


def test_another_checkpoint_over_a_calibrated_model_is_refused_naming_what_would_be_lost(
    tiny_run, other_checkpoint, tmp_path
):
    out = tmp_path / "model.onnx"
    folder = _calibrated_export(tiny_run.checkpoint, out)
    before = out.read_bytes()
    with pytest.raises(ExportError, match=r"another checkpoint and is calibrated.*OK below 0\.2000.*--force"):
        export(ExportConfig(checkpoint=str(other_checkpoint), out=str(out), verify_tiles=8))
    assert out.read_bytes() == before and (folder / "calibration.json").is_file()


def test_force_replaces_it_and_removes_the_report(tiny_run, other_checkpoint, tmp_path):
    out = tmp_path / "model.onnx"
    folder = _calibrated_export(tiny_run.checkpoint, out)
    result = export(ExportConfig(checkpoint=str(other_checkpoint), out=str(out), verify_tiles=8, force=True))
    assert is_identity(read_card(out).calibration)
    assert result.removed_reports == (folder,) and not folder.exists()
    assert f"REMOVED  {folder}: it described a model that was replaced" in result.describe()


def test_an_uncalibrated_model_leaves_no_stale_report_and_keeps_other_files(other_checkpoint, tmp_path):
    out = tmp_path / "model.onnx"
    folder = calibration_folder(out)
    folder.mkdir()
    (folder / "calibration.json").write_text("{}")
    (folder / "notes.txt").write_text("the user's own file")
    result = export(ExportConfig(checkpoint=str(other_checkpoint), out=str(out), verify_tiles=8))
    assert result.removed_reports == (folder,)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]  # only what calibrate writes is deleted
