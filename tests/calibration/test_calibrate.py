"""``crackscope calibrate``: fits through the runtime, writes only metadata, refuses loudly, needs no PyTorch."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from crackscope.calibration.calibrate import CalibrateConfig, calibrate
from crackscope.cli import main
from crackscope.inspect.card import read_card
from crackscope.inspect.decision import is_identity
from crackscope.inspect.images import read_image
from crackscope.inspect.model import OnnxModel
from crackscope.inspect.pipeline import InspectConfig, inspect_frames

LOOSE = ["--escape-rate", "0.05", "--false-reject-rate", "0.05", "--confidence", "0.9"]  # 45 items of each class


@pytest.fixture
def grey_data(tmp_path, grey_dataset) -> Path:
    return grey_dataset(tmp_path / "calib", {"crack": 120, "ok": 120, "ambiguous": 30}, seed=1)


def _graph_bytes(path: Path) -> bytes:
    return onnx.load(str(path)).graph.SerializeToString()


def _calibrate(model: Path, data: Path, out: Path, *, false_reject_rate: float = 0.05, ambiguous_review: float = 0.8):
    """``calibrate`` at the loose targets these small sets can certify (escape 5%, 90% confidence)."""
    return calibrate(
        CalibrateConfig(
            model=str(model),
            data=str(data),
            out=str(out),
            progress=False,
            escape_rate=0.05,
            false_reject_rate=false_reject_rate,
            ambiguous_review=ambiguous_review,
        )
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_calibrate_writes_the_calibration_into_the_model_and_leaves_its_graph_byte_for_byte(
    brightness_model, grey_data, tmp_path, capsys
):
    graph_before = _graph_bytes(brightness_model)
    out = tmp_path / "report"
    code = main(["calibrate", "--model", str(brightness_model), "--data", str(grey_data), "--out", str(out), *LOOSE])
    assert code == 0, capsys.readouterr().err
    assert _graph_bytes(brightness_model) == graph_before
    calibration = read_card(brightness_model).calibration
    assert not is_identity(calibration) and calibration.targets == {
        "escape_rate": 0.05,
        "false_reject_rate": 0.05,
        "confidence": 0.9,
        "ambiguous_review": 0.8,
    }
    assert 0.0 < calibration.ok_below <= calibration.defect_at_or_above < 1.0
    written = json.loads((out / "calibration.json").read_text())
    assert written["calibration"]["ok_below"] == calibration.ok_below
    assert written["calibration"]["temperature"] == calibration.temperature
    assert written["model"]["sha256_after"] == _sha(brightness_model) != written["model"]["sha256_before"]
    page = (out / "calibration.html").read_text()
    assert page.count("<svg") == 2 and "<script" not in page and "src=" not in page  # self-contained
    assert "OK below" in capsys.readouterr().out


def test_the_runtime_gives_the_verdicts_calibrate_reported_for_the_calibration_items(
    brightness_model, grey_data, tmp_path
):
    outcome = _calibrate(brightness_model, grey_data, tmp_path / "o")
    counts: dict[str, dict[str, int]] = {}
    with OnnxModel(brightness_model) as model:
        for label in ("crack", "ok", "ambiguous"):
            frames = [read_image(p) for p in sorted((grey_data / label).glob("*.png"))]
            found = [r.verdict.value for r in inspect_frames(model, frames, InspectConfig())]
            counts[label] = {v: found.count(v) for v in ("OK", "REVIEW", "DEFECT")}
    assert counts["crack"] == outcome.clear.crack and counts["ok"] == outcome.clear.ok
    assert counts["ambiguous"] == outcome.ambiguous


def test_ambiguous_items_land_in_review_more_often_than_clear_ones_and_the_report_says_how_much(
    brightness_model, grey_data, tmp_path
):
    outcome = _calibrate(brightness_model, grey_data, tmp_path / "o")
    saved = json.loads((tmp_path / "o" / "calibration.json").read_text())["calibration_set"]
    assert saved["ambiguous"]["review_share"] == outcome.ambiguous_review_share
    assert saved["ambiguous"]["review_share"] > 3 * saved["clear"]["review_rate"] > 0
    page = (tmp_path / "o" / "calibration.html").read_text()
    assert f"Ambiguous items reach REVIEW {outcome.review_ratio:.1f}x as often as clear items" in page


def test_too_few_defects_exit_1_with_the_count_needed_and_write_nothing(brightness_model, grey_data, tmp_path, capsys):
    before = _sha(brightness_model)
    out = tmp_path / "never"
    code = main(["calibrate", "--model", str(brightness_model), "--data", str(grey_data), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert err.startswith("crackscope calibrate: refused:") and "need at least 230 clear crack items" in err
    assert "have 120" in err and err.endswith("nothing was written")
    assert _sha(brightness_model) == before and not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--escape-rate", "1.5"], "escape-rate must be between 0 and 1"),
        (["--confidence", "0"], "confidence must be between 0 and 1"),
        (["--out", "{tmp}/afile"], "exists and is not a folder"),
        (["--data", "{tmp}/missing"], "data path does not exist"),
        (["--model", "{tmp}/afile"], "not an ONNX model"),
    ],
)
def test_bad_inputs_fail_with_one_line_before_the_model_runs(
    flags, message, brightness_model, grey_data, tmp_path, capsys
):
    (tmp_path / "afile").write_text("not a folder, not a model")
    before = _sha(brightness_model)
    defaults = {
        "--model": str(brightness_model),
        "--data": str(grey_data),
        "--out": str(tmp_path / "out"),
        **dict(zip(LOOSE[::2], LOOSE[1::2], strict=True)),
    }
    given = dict(zip(flags[::2], (f.format(tmp=tmp_path) for f in flags[1::2]), strict=True))
    argv = ["calibrate", *[x for k, v in {**defaults, **given}.items() for x in (k, v)]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("crackscope calibrate: error:")
    assert _sha(brightness_model) == before and not (tmp_path / "out").exists()


def test_calibrate_reads_a_yaml_config_and_flags_override_it(brightness_model, grey_data, tmp_path):
    config = tmp_path / "calibrate.yaml"
    config.write_text(
        f"model: {brightness_model}\ndata: {grey_data}\nout: {tmp_path / 'yaml-out'}\nescape_rate: 0.05\n"
        "false_reject_rate: 0.05\nconfidence: 0.95\nprogress: false\n"
    )
    assert main(["calibrate", "--config", str(config), "--confidence", "0.8"]) == 0
    assert read_card(brightness_model).calibration.targets == {
        "escape_rate": 0.05,
        "false_reject_rate": 0.05,
        "confidence": 0.8,
        "ambiguous_review": 0.8,
    }
    assert (tmp_path / "yaml-out" / "calibration.json").is_file()


def test_calibrate_runs_with_pytorch_unimportable(brightness_model, grey_data, tmp_path):
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "torchvision", "timm", "albumentations", "pytorch_grad_cam"}:
                    raise ImportError(f"{name} is blocked: calibration must not need it")

        sys.meta_path.insert(0, NoTorch())
        from crackscope.cli import main

        code = main(sys.argv[1:])
        assert "torch" not in sys.modules
        sys.exit(code)
        """
    )
    argv = ["calibrate", "--model", str(brightness_model), "--data", str(grey_data), "--out", str(tmp_path / "o")]
    result = subprocess.run(
        [sys.executable, "-c", script, *argv, *LOOSE, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert not is_identity(read_card(brightness_model).calibration)


def test_calibrating_again_replaces_the_calibration_and_records_the_previous_one(brightness_model, grey_data, tmp_path):
    first = _calibrate(brightness_model, grey_data, tmp_path / "a")
    _calibrate(brightness_model, grey_data, tmp_path / "b", false_reject_rate=0.02)
    saved = json.loads((tmp_path / "b" / "calibration.json").read_text())
    assert saved["model"]["previous_calibration"]["defect_at_or_above"] == first.calibration.defect_at_or_above
    assert read_card(brightness_model).calibration.targets["false_reject_rate"] == 0.02


def test_a_model_whose_scores_never_overlap_gets_one_threshold_and_says_nothing_goes_to_review(
    brightness_model, grey_dataset, tmp_path
):
    data = grey_dataset(tmp_path / "apart", {"crack": 60, "ok": 60}, means={"crack": 220.0, "ok": 40.0}, spread=4.0)
    outcome = _calibrate(brightness_model, data, tmp_path / "o", ambiguous_review=0.0)  # no ambiguous items here
    assert not outcome.fit.thresholds.review_band
    assert outcome.calibration.ok_below == outcome.calibration.defect_at_or_above
    assert "no REVIEW band" in outcome.describe()
    assert np.isfinite(outcome.calibration.temperature)


@pytest.mark.slow
def test_the_demo_step_calibrates_an_int8_export_on_a_held_out_synthetic_split(line_model, tmp_path):
    import shutil

    from crackscope.calibration.calibrate import calibrate_step
    from crackscope.training import synthetic

    model = Path(shutil.copy(line_model.int8, tmp_path / "model.int8.onnx"))  # the session's model stays as it is
    graph_before = _graph_bytes(model)
    split = synthetic.write_patch_dataset(tmp_path / "calib", n_crack=60, n_ok=60, n_ambiguous=20, size=96, seed=21)
    printed: list[str] = []
    outcome = calibrate_step(
        model, split, tmp_path / "calibration", escape_rate=0.05, progress=False, emit=printed.append
    )
    assert _graph_bytes(model) == graph_before and read_card(model).precision == "int8"
    assert read_card(model).calibration == outcome.calibration and not is_identity(outcome.calibration)
    assert outcome.clear.n_crack == 60 and sum(outcome.ambiguous.values()) == 20
    assert any("OK below" in line for line in printed) and (tmp_path / "calibration" / "calibration.html").is_file()


def test_images_labelled_only_as_a_whole_are_refused_in_one_line_naming_what_is_needed(
    brightness_model, grey_data, tmp_path, capsys
):
    before = _sha(brightness_model)
    out = tmp_path / "never"
    args = ["calibrate", "--model", str(brightness_model), "--data", str(grey_data), "--out", str(out)]
    code = main([*args, "--data-mode", "tiles", *LOOSE])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        code == 2
        and err.startswith("crackscope calibrate: error:")
        and "labelled only as a whole" in err
        and "calibrate on tiles with their own labels" in err
    )
    assert _sha(brightness_model) == before and not out.exists()


def test_calibrate_without_enough_ambiguous_items_refuses_with_the_number_needed_unless_told_not_to_ask(
    brightness_model, grey_dataset, tmp_path, capsys
):
    data = grey_dataset(tmp_path / "few", {"crack": 120, "ok": 120, "ambiguous": 6}, seed=2)
    before = _sha(brightness_model)
    args = ["calibrate", "--model", str(brightness_model), "--data", str(data), "--out", str(tmp_path / "r"), *LOOSE]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "too few ambiguous items to certify that 80% of them go to REVIEW" in err and "need at least 11" in err
    assert "have 6" in err and _sha(brightness_model) == before and not (tmp_path / "r").exists()
    assert main([*args, "--ambiguous-review", "0"]) == 0
    assert "ambiguous items in REVIEW" not in capsys.readouterr().out
    assert "ambiguous_review" not in read_card(brightness_model).calibration.targets
