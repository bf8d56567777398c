"""The command line: every command documents itself with an example; errors are one clear line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crackscope.cli import build_parser, main
from crackscope.inspect.bench import BenchConfig, bench_path, machine_key, run_bench


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_top_level_help_lists_commands_and_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out
    for name in ("train", "evaluate", "demo"):
        assert name in out


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_command_has_help_text_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"crackscope {name}" in out


def test_train_on_a_missing_folder_fails_with_one_clear_line(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing: data path does not exist" in err and "Traceback" not in err


def test_train_without_data_says_how_to_give_it(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run")]) == 2
    assert "--data" in capsys.readouterr().err


def test_train_reads_a_yaml_config_and_flags_override_it(tmp_path, patch_data):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"data: {patch_data}\nepochs: 5\ninput_size: 64\nworkers: 0\nprogress: false\naugment: none\n"
        "data_config:\n  ambiguous: exclude\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--epochs", "1", "--out", str(out), "--batch-size", "32"]) == 0
    saved = (out / "config.yaml").read_text()
    assert "epochs: 1" in saved and "ambiguous: exclude" in saved and "batch_size: 32" in saved


def test_repeated_data_flags_make_several_sources_and_a_single_one_stays_a_plain_folder():
    from crackscope.cli import train_config

    parse = build_parser().parse_args
    several = train_config(parse(["train", "--data", "a", "--data", "b", "--val-data", "c", "--val-data", "d"]))
    assert several.data == ("a", "b") and several.val_data == ("c", "d")
    one = train_config(parse(["train", "--data", "a", "--val-data", "c"]))
    assert one.data == "a" and one.val_data == "c"
    assert parse(["evaluate", "--checkpoint", "m.pt", "--data", "a", "--data", "b"]).data == ["a", "b"]


def test_sources_in_a_config_file_inherit_the_runs_flags_and_data_flags_replace_them(tmp_path):
    from crackscope.cli import train_config
    from crackscope.labelled import DataConfig, DataSource, MaskLabelling

    config = tmp_path / "train.yaml"
    config.write_text("data:\n  - ../a\n  - {path: ../b, name: cracks, data_config: {masks: {stride: 32}}}\n")
    parse = build_parser().parse_args
    read = train_config(parse(["train", "--config", str(config), "--data-mode", "mask", "--patch-size", "64"]))
    expected = DataConfig(mode="mask", masks=MaskLabelling(patch_size=64, stride=32))  # stride: the source's own
    assert read.data == ("../a", DataSource("../b", "cracks", expected))
    assert train_config(parse(["train", "--config", str(config), "--data", "x"])).data == "x"


def test_train_with_a_missing_second_source_fails_with_one_line_naming_it(tmp_path, patch_data, capsys):
    code = main(["train", "--data", str(patch_data), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    last_line = err.splitlines()[-1]  # after the progress bar of the first source, which was read
    assert last_line.startswith("crackscope train: error: source 'missing': ") and err.count("\n") == 1
    assert last_line.endswith("missing: data path does not exist") and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_evaluate_writes_metrics_for_clear_and_ambiguous_items_and_curves(tiny_run, patch_data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--checkpoint", str(tiny_run.checkpoint), "--data", str(patch_data), "--out", str(out)]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "confusion_matrix"):
        assert key in metrics and key in metrics["clear"]
    assert metrics["ambiguous"]["n"] == 10 and metrics["n"] == 120
    assert sum(map(sum, metrics["confusion_matrix"])) == 120
    assert (out / "pr_curve.png").stat().st_size > 1000 and (out / "roc_curve.png").stat().st_size > 1000
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["accuracy"] == metrics["accuracy"]


def test_evaluate_rejects_a_file_that_is_not_a_checkpoint(tmp_path, patch_data, capsys):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(bogus), "--data", str(patch_data)]) == 2
    assert "model.pt" in capsys.readouterr().err


@pytest.mark.slow
def test_export_writes_a_verified_model_and_prints_its_parity(tiny_run, patch_data, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code = main(["export", "--checkpoint", str(tiny_run.checkpoint), "--out", str(out), "--verify-tiles", "8"])
    assert code == 0 and out.is_file()
    printed = capsys.readouterr().out
    assert "fp32" in printed and "onnx-fp32 vs pytorch on 8 tiles" in printed


def test_export_int8_whose_training_data_is_gone_fails_with_one_clear_line(tiny_run, tmp_path, capsys):
    from crackscope.training.checkpoint import load_checkpoint, save_checkpoint

    model, header = load_checkpoint(tiny_run.checkpoint)
    header.config["data"] = str(tmp_path / "moved-away")
    moved = save_checkpoint(model, header, tmp_path / "moved.pt")
    code = main(["export", "--checkpoint", str(moved), "--out", str(tmp_path / "m.onnx"), "--int8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert re.search(r"moved-away is gone; pass --calib-data DIR", err) and not (tmp_path / "m.onnx").exists()


def _leftovers(folder: Path) -> list[Path]:
    return [p for pattern in ("*.partial", "*.staged") for p in folder.rglob(pattern)]


@pytest.mark.parametrize(
    ("out", "flags", "message"),
    [
        ("models", [], r"models is a directory; --out takes the model file's path, e\.g\. .*models/model\.onnx"),
        ("models/m.onnx", ["--fp16"], r"m\.fp16\.onnx is a directory"),
        ("afile/model.onnx", [], r"model\.onnx cannot be written: .*afile is a file, not a folder"),
    ],
)
def test_export_to_an_output_it_cannot_write_fails_first_with_one_clear_line(out, flags, message, tmp_path, capsys):
    (tmp_path / "models" / "m.fp16.onnx").mkdir(parents=True)
    (tmp_path / "afile").write_text("a file, not a folder")
    checkpoint = tmp_path / "no-such-model.pt"  # the output is checked before the checkpoint is read
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / out), *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(f"^crackscope export: error: .*{message}", err) and err.count("\n") == 1
    assert "no-such-model" not in err and not _leftovers(tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_export_into_a_folder_without_write_permission_fails_first_with_one_clear_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(["export", "--checkpoint", str(tmp_path / "x.pt"), "--out", str(locked / "model.onnx")]) == 2
    finally:
        locked.chmod(0o700)
    assert "no permission to write in" in capsys.readouterr().err


@pytest.mark.slow
def test_export_of_a_real_checkpoint_to_a_directory_stops_before_any_work(tiny_run, tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    assert main(["export", "--checkpoint", str(tiny_run.checkpoint), "--out", str(folder), "--fp16"]) == 2
    assert "models is a directory" in capsys.readouterr().err
    assert list(tmp_path.rglob("*")) == [folder]


@pytest.mark.parametrize(
    ("command", "module"),
    [
        (["evaluate", "--checkpoint", "model.pt", "--data", "data"], "torch"),
        (["train", "--data", "data", "--out", "run"], "torch"),
        (["train", "--data", "data", "--out", "run"], "albumentations"),
        (["export", "--checkpoint", "model.pt", "--out", "model.onnx"], "onnx"),
        (["demo", "--out", "demo"], "torch"),
    ],
)
def test_a_training_command_on_a_runtime_only_install_says_to_install_the_training_extras(command, module, tmp_path):
    # A real failing import: the module is made unimportable in a fresh interpreter, as on a runtime-only install.
    script = (
        f"import sys\nsys.modules[{module!r}] = None\nfrom crackscope.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *command], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"crackscope {command[0]}: error: this command needs the training extras: "
        f"pip install 'crackscope[train]' (missing module {module!r})\n"
    )
    assert not list(tmp_path.iterdir())  # nothing was started


def test_rare_defect_and_schedule_flags_reach_the_train_config():
    from crackscope.cli import train_config

    parse = build_parser().parse_args
    flags = ["--sampler", "balanced", "--positive-share", "0.3", "--hard-negatives", "0.25", "--max-minutes", "2.5"]
    config = train_config(parse(["train", "--data", "a", *flags, "--target-steps", "400", "--head-fit", "sgd"]))
    assert (config.sampler, config.positive_share, config.hard_negatives, config.max_minutes) == (
        "balanced",
        0.3,
        0.25,
        2.5,
    )
    assert (config.target_steps, config.head_fit, config.epochs, config.batch_size) == (400, "sgd", None, None)


# --- session layouts and crackscope bench ---------------------------------------------------------------------------


def test_bench_prints_every_layout_and_the_best_as_config_lines(brightness_model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(brightness_model), "--frame", "320x256", "--seconds", "0.2", "--cores", "2"]
    assert main([*args, "--providers", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "| 1x2 | 1 session x 2 threads |" in printed.out and "| 2x1 | 2 sessions x 1 thread |" in printed.out
    assert re.search(r"session_workers: [12]\nthreads: [12]\n", printed.out)
    assert "round 1:" in printed.err  # progress goes to stderr, the table to stdout
    assert json.loads(out.read_text())["tiles_per_frame"] == 143


@pytest.mark.parametrize("frame", ["big", "2448", "0x2048"])
def test_bench_with_a_frame_size_that_is_not_width_x_height_fails_with_one_line(frame, brightness_model, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", str(brightness_model), "--frame", frame])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --frame: frame" in err and "expected WIDTHxHEIGHT" in err


def test_bench_asked_for_cuda_without_it_warns_and_measures_on_the_cpu(brightness_model, monkeypatch, capsys):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    args = ["bench", "--model", str(brightness_model), "--frame", "64x64", "--seconds", "0", "--cores", "1"]
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider not available"):
        assert main([*args, "--providers", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "on CPUExecutionProvider, session.run on numpy tiles" in out and "session_workers: 1\nthreads: 1" in out


def test_inspect_runs_and_announces_the_session_layout_it_was_given(brightness_model, grey_dataset, tmp_path, capsys):
    images = grey_dataset(tmp_path / "grey", {"crack": 3, "ok": 3})
    out = tmp_path / "out"
    args = ["inspect", str(images), "--model", str(brightness_model), "--out", str(out), "--no-progress"]
    assert main([*args, "--providers", "cpu", "--session-workers", "2", "--threads", "1"]) == 0
    assert "(fp32, CPUExecutionProvider, 2 sessions x 1 thread)" in capsys.readouterr().err
    saved = (out / "inspect-config.yaml").read_text()
    assert "session_workers: 2" in saved and "threads: 1" in saved


@pytest.mark.parametrize(
    ("flags", "config", "message"),
    [
        (["--session-workers", "0"], "", "session_workers: must be an integer of at least 1, got 0"),
        (["--threads", "0"], "", "threads: must be an integer of at least 1, or unset, got 0"),
        ([], "session_workers: two\n", "config.session_workers: expected int or None, got str 'two'"),
    ],
)
def test_inspect_with_a_bad_session_layout_fails_with_one_line(
    flags, config, message, brightness_model, tmp_path, capsys
):
    (tmp_path / "a.png").write_bytes(b"")
    settings = tmp_path / "inspect.yaml"
    settings.write_text(config or "{}\n")
    args = ["inspect", str(tmp_path / "a.png"), "--model", str(brightness_model), "--out", str(tmp_path / "out")]
    assert main([*args, "--config", str(settings), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --- the layout crackscope bench saved beside the model ---------------------------------------------------------------

DEFAULT_LAYOUT = "1 session x ONNX Runtime's default threads"


def _bench(model):
    """A real bench of a few milliseconds, saved beside ``model``. busy_share 1: trusted even on a loaded machine."""
    config = BenchConfig(model=str(model), frame=(64, 64), seconds=0.0, cores=2, providers="cpu", busy_share=1.0)
    return run_bench(config)


def _inspect(model, images, out, *extra):
    return main(["inspect", str(images), "--model", str(model), "--out", str(out), "--no-progress", *extra])


def test_inspect_given_no_layout_runs_the_one_bench_saved_for_this_machine_and_says_so(
    brightness_model, grey_dataset, tmp_path, capsys
):
    best = _bench(brightness_model).best.layout
    images = grey_dataset(tmp_path / "grey", {"crack": 2, "ok": 2})
    assert _inspect(brightness_model, images, tmp_path / "out", "--providers", "cpu") == 0
    err = capsys.readouterr().err
    found = [line for line in err.splitlines() if "crackscope bench" in line]
    assert len(found) == 1
    assert found[0].startswith(
        f"session layout {best.describe()} from crackscope bench of {bench_path(brightness_model)} ("
    )
    assert re.search(r"\(\d{4}-\d\d-\d\d \d\d:\d\d UTC, [\d.]+ frames/s at 64x64\)$", found[0])
    assert f"(fp32, CPUExecutionProvider, {best.describe()})" in err  # the layout the opened model really has
    saved = (tmp_path / "out" / "inspect-config.yaml").read_text()
    assert f"session_workers: {best.workers}\nthreads: {best.threads}\n" in saved  # the run can be repeated exactly


@pytest.mark.parametrize(
    ("flags", "config", "layout"),
    [
        (["--session-workers", "1"], "", DEFAULT_LAYOUT),
        (["--threads", "1"], "", "1 session x 1 thread"),
        ([], "session_workers: 1\n", DEFAULT_LAYOUT),
        ([], "threads: 1\n", "1 session x 1 thread"),
    ],
    ids=["session-workers flag", "threads flag", "session_workers key", "threads key"],
)
def test_inspect_given_a_layout_by_flag_or_config_key_runs_it_not_the_saved_one(
    flags, config, layout, brightness_model, grey_dataset, tmp_path, capsys
):
    _bench(brightness_model)
    images = grey_dataset(tmp_path / "grey", {"crack": 1, "ok": 1})
    settings = tmp_path / "inspect.yaml"
    settings.write_text(config or "{}\n")
    assert (
        _inspect(brightness_model, images, tmp_path / "out", "--providers", "cpu", "--config", str(settings), *flags)
        == 0
    )
    err = capsys.readouterr().err
    assert "crackscope bench" not in err and f"(fp32, CPUExecutionProvider, {layout})" in err


def _edit_entry(path, **changes):
    saved = json.loads(path.read_text())
    saved["machines"][machine_key()].update(changes)
    path.write_text(json.dumps(saved))


def _move_to_another_machine(path):
    saved = json.loads(path.read_text())
    saved["machines"] = {"line2 | Other CPU | 64 cores": saved["machines"][machine_key()]}
    path.write_text(json.dumps(saved))


# What is done to the model or its bench file, and what the one line then says (after "the default): ").
NOT_APPLYING = {
    "the model file changed": (
        lambda model, path, write_model: write_model(model, precision="int8"),
        "the crackscope bench result in {path} was measured for another version of the model (sha256 ",
    ),
    "measured on another machine": (
        lambda model, path, write_model: _move_to_another_machine(path),
        "{path} was measured on line2 | Other CPU | 64 cores, not this machine ({key}); run crackscope bench here",
    ),
    "measured on another provider": (
        lambda model, path, write_model: _edit_entry(path, provider="CUDAExecutionProvider"),
        "the crackscope bench result in {path} was measured on CUDAExecutionProvider, and this run asks for "
        "CPUExecutionProvider",
    ),
    "measured on a busy machine": (
        lambda model, path, write_model: _edit_entry(path, trusted=False, busy_rounds=3, rounds=4),
        "the crackscope bench result in {path} is marked as not trusted (other processes took the CPU in 3 of 4 "
        "rounds); run crackscope bench again when the machine is quieter",
    ),
    "not JSON": (
        lambda model, path, write_model: path.write_text("{oops"),
        "{path} is not a readable crackscope bench result (Expecting property name",
    ),
    "not a bench file": (
        lambda model, path, write_model: path.write_text("[1, 2]"),
        "{path} is not a readable crackscope bench result (no 'machines' mapping at the top level)",
    ),
    "a value of the wrong type": (
        lambda model, path, write_model: _edit_entry(path, best={"session_workers": "two", "threads": 1}),
        "{path} is not a readable crackscope bench result (machines[{key!r}].best.session_workers: expected int "
        "or None, got str 'two'); run crackscope bench",
    ),
}


@pytest.mark.parametrize("case", list(NOT_APPLYING))
def test_inspect_runs_the_default_layout_and_says_why_in_one_line_when_the_saved_bench_does_not_apply(
    case, brightness_model, write_brightness_model, grey_dataset, tmp_path, capsys
):
    _bench(brightness_model)
    change, message = NOT_APPLYING[case]
    path = bench_path(brightness_model)
    change(brightness_model, path, write_brightness_model)
    images = grey_dataset(tmp_path / "grey", {"crack": 1, "ok": 1})
    assert _inspect(brightness_model, images, tmp_path / "out", "--providers", "cpu") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    found = [line for line in err.splitlines() if "crackscope bench" in line]
    assert len(found) == 1
    assert found[0].startswith(f"session layout {DEFAULT_LAYOUT} (the default): ")
    assert message.format(path=path, key=machine_key()) in found[0]
    assert f"CPUExecutionProvider, {DEFAULT_LAYOUT})" in err
    assert "session_workers: 1\nthreads: null\n" in (tmp_path / "out" / "inspect-config.yaml").read_text()
