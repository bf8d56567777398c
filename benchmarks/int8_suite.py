"""Does ``crackscope export --int8`` with its defaults work for every model a user trains? A suite of default runs.

For each member of the suite this trains a model the way a new user would (``crackscope train --data DIR --out
RUN``, no other flag), exports it the way a new user would (``crackscope export --checkpoint RUN/model.pt --out
model.onnx --int8``, no other flag: int8 calibrates on the checkpoint's own training split and is gated on its
validation split) and then judges the written int8 model against the fp32 one on **held-out** tiles that neither
training, nor validation, nor the export saw:

- decisions (logit >= 0) kept, goal >= 99%;
- mean heatmap correlation (:func:`~crackscope.deploy.verify.heatmap_correlations`) with its 95% confidence
  interval, goal >= 0.95;
- int8 / fp32 speed at batch 8 (and 1), measured side by side in paired, shuffled rounds (``benchmarks/speed.py``'s
  method), with the load average; the suite's median is the figure the goals name (>= 1.5x on AVX2 without VNNI,
  >= 1.7x with VNNI);
- whether the export kept blocks float (the accuracy-aware search of :mod:`crackscope.deploy.mixed`) and which.

Members (data used in place; the training views are folders of symbolic links under ``--work``):

- ``ozgenel-50``, ``ozgenel-200``: 25 + 25 and 100 + 100 Özgenel concrete patches; held out: 128 + 128 others;
- ``ozgenel-3744``: all Özgenel patches but the 128 + 128 held out;
- ``magnetic-tile``: the magnetic-tile images (every ``MT_*`` defect class against ``MT_Free``, masks beside
  them), 20% of each class held out;
- ``multi-source``: ``ozgenel-200``'s patches and ``magnetic-tile``'s images as two ``--data`` sources, held out:
  both members' held-out tiles;
- ``demo``: ``crackscope demo``'s model (its held-out synthetic test set).

Training runs one after another (``--skip-training`` reuses the runs under ``--work``); exports are always redone,
so the figures are those of the current code. Expect about 5 minutes per member on 2 cores.

``--bias-ablation`` instead quantises each member's fp32 model with the plain recipe twice, without and with the
bias correction (:mod:`crackscope.deploy.bias`), calibrated on the tiles export would use (the checkpoint's
training split), and judges both on the held-out tiles: no search, no timing.

Run:
    python benchmarks/int8_suite.py                                  # the whole suite
    python benchmarks/int8_suite.py --skip-training --bias-ablation  # what the bias correction does
    python benchmarks/int8_suite.py --members ozgenel-50 demo         # some of it
    python benchmarks/int8_suite.py --skip-training --rounds 9 --json results/int8-suite.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import speed  # benchmarks/speed.py: the paired-round timing
from saved_models import DATA_DIR, REPO, data_missing

from crackscope.deploy.bias import correct_biases
from crackscope.deploy.export import Tiles, balanced, checkpoint_tiles, read_tiles
from crackscope.deploy.quantize import Int8Recipe, quantize_int8
from crackscope.deploy.verify import heatmap_correlations, mean_interval, run_session
from crackscope.inspect.card import read_card
from crackscope.inspect.model import make_session
from crackscope.labelled import Clarity, Sample, load_samples
from crackscope.training.checkpoint import load_checkpoint

HELD_OUT_PER_CLASS = 128
MIN_AGREEMENT = 0.99
MIN_CORRELATION = 0.95
CLI = [sys.executable, "-m", "crackscope.cli"]


# --- data views ---------------------------------------------------------------------------------------------------


@dataclass
class View:
    """What one member trains on (folders of links) and the held-out samples it is judged on."""

    sources: list[Path]
    held_out: list[Sample]
    checkpoint: Path | None = None  # set for members that bring their own training (the demo)


def _link_view(samples: Sequence[Sample], root: Path, folder: Path) -> Path:
    """A folder of symbolic links to ``samples`` (and their masks), laid out as under ``root``."""
    if folder.exists():
        shutil.rmtree(folder)
    for sample in samples:
        for path in (sample.path, sample.mask):
            if path is None:
                continue
            target = folder / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(path.resolve())
    return folder


def _split(samples: Sequence[Sample], train_per_class: int | None, held_per_class: int | None, seed: int):
    """Per class: ``held_per_class`` held out (or 20% when None) and ``train_per_class`` of the rest (or all)."""
    rng = random.Random(seed)
    train, held = [], []
    for label in (0, 1):
        members = sorted((s for s in samples if s.label == label and s.clarity is Clarity.CLEAR), key=lambda s: s.key)
        rng.shuffle(members)
        count = held_per_class if held_per_class is not None else max(1, len(members) // 5)
        held += members[:count]
        rest = members[count:]
        train += rest if train_per_class is None else rest[:train_per_class]
    return train, held


def ozgenel_view(work: Path, per_class: int | None, name: str) -> View:
    root = DATA_DIR / "ozgenel-concrete"
    train, held = _split(load_samples(root).samples, per_class, HELD_OUT_PER_CLASS, seed=0)
    return View([_link_view(train, root, work / "data" / name)], held)


def magnetic_view(work: Path) -> View:
    root = DATA_DIR / "magnetic-tile"
    train, held = _split(load_samples(root).samples, None, None, seed=0)
    return View([_link_view(train, root, work / "data" / "magnetic-tile")], held)


def multi_view(work: Path) -> View:
    concrete, tiles = ozgenel_view(work, 100, "ozgenel-200"), magnetic_view(work)
    return View(concrete.sources + tiles.sources, concrete.held_out + tiles.held_out)


def demo_view(work: Path) -> View:
    out = work / "demo"
    if not (out / "run" / "model.pt").is_file():
        _run([*CLI, "demo", "--out", str(out)], work / "logs" / "demo-train.log")
    return View([], load_samples(out / "data" / "test").samples, checkpoint=out / "run" / "model.pt")


MEMBERS: dict[str, Callable[[Path], View]] = {
    "ozgenel-50": lambda work: ozgenel_view(work, 25, "ozgenel-50"),
    "ozgenel-200": lambda work: ozgenel_view(work, 100, "ozgenel-200"),
    "ozgenel-3744": lambda work: ozgenel_view(work, None, "ozgenel-3744"),
    "magnetic-tile": magnetic_view,
    "multi-source": multi_view,
    "demo": demo_view,
}


# --- the user's two commands --------------------------------------------------------------------------------------


def _run(command: Sequence[str], log: Path) -> tuple[int, float]:
    """Run one crackscope command, its output into ``log``; returns the exit code and the wall time."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        code = subprocess.call(list(command), stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    return code, time.perf_counter() - started


def train(name: str, view: View, work: Path, skip: bool) -> tuple[Path, float | None]:
    if view.checkpoint is not None:
        return view.checkpoint, None
    run = work / "runs" / name
    if skip and (run / "model.pt").is_file():
        return run / "model.pt", None
    if run.exists():
        shutil.rmtree(run)
    command = [*CLI, "train", *[arg for source in view.sources for arg in ("--data", str(source))], "--out", str(run)]
    code, seconds = _run(command, work / "logs" / f"{name}-train.log")
    if code != 0:
        raise RuntimeError(f"training {name} failed (exit {code}); see {work / 'logs' / f'{name}-train.log'}")
    return run / "model.pt", seconds


# --- judging ------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    member: str
    train_s: float | None
    export_s: float
    fp32_written: bool
    int8_written: bool
    refusal: str = ""
    float_units: list[str] = field(default_factory=list)
    gate_correlation: float | None = None  # on the export's own verification tiles (the validation split)
    held_out_tiles: int = 0
    agreement: float | None = None
    correlation: float | None = None
    correlation_ci: tuple[float, float] | None = None
    correlation_p5: float | None = None
    speedup: dict[int, float] = field(default_factory=dict)
    load: float | None = None

    @property
    def passes(self) -> bool:
        return (
            self.fp32_written
            and self.int8_written
            and (self.agreement or 0.0) >= MIN_AGREEMENT
            and (self.correlation or 0.0) >= MIN_CORRELATION
        )


def export_and_judge(name: str, checkpoint: Path, view: View, work: Path, settings: argparse.Namespace) -> Outcome:
    folder = work / "models" / name
    if folder.exists():
        shutil.rmtree(folder)
    out = folder / "model.onnx"
    log = work / "logs" / f"{name}-export.log"
    code, seconds = _run([*CLI, "export", "--checkpoint", str(checkpoint), "--out", str(out), "--int8"], log)
    int8 = out.with_name("model.int8.onnx")
    text = log.read_text(encoding="utf-8")
    outcome = Outcome(name, None, seconds, out.is_file(), int8.is_file())
    if code != 0 or not int8.is_file():
        lines = [line for line in text.splitlines() if "REFUSED" in line or "error" in line]
        outcome.refusal = lines[0] if lines else text[-300:]
        return outcome
    verification = read_card(int8).verification
    outcome.float_units = list((verification.get("mixed_precision") or {}).get("float_units", []))
    outcome.gate_correlation = verification.get("cam_correlation")
    size = read_card(out).input_size
    held = balanced(view.held_out, 2 * HELD_OUT_PER_CLASS, settings.seed)
    tiles = read_tiles(held, size, f"{len(held)} held-out tiles of {name}")
    judged(outcome, out, int8, tiles)
    if settings.rounds:
        outcome.speedup, outcome.load = paired_speed(out, int8, tiles, settings)
    return outcome


def judged(outcome: Outcome, fp32: Path, int8: Path, tiles: Tiles) -> None:
    reference = run_session(make_session(str(fp32), providers="cpu"), tiles.images, 8)
    candidate = run_session(make_session(str(int8), providers="cpu"), tiles.images, 8)
    correlations = heatmap_correlations(reference[1], candidate[1])
    outcome.held_out_tiles = len(tiles.images)
    outcome.agreement = float(((reference[0] >= 0) == (candidate[0] >= 0)).mean())
    outcome.correlation = float(correlations.mean())
    outcome.correlation_ci = mean_interval(correlations)
    outcome.correlation_p5 = float(np.percentile(correlations, 5))


def paired_speed(fp32: Path, int8: Path, tiles: Tiles, settings: argparse.Namespace) -> tuple[dict[int, float], float]:
    methods = [
        speed.Method("fp32", "fp32", "ORT default", speed.ort_builder(fp32)),
        speed.Method("int8", "int8", "ORT default", speed.ort_builder(int8)),
    ]
    budget = speed.Budget(settings.warmup, settings.rounds, settings.runs)
    timing = speed.Settings(tuple(settings.sizes), 0, budget, 0, ("cpu",), settings.seed, None, quick=False)
    results = speed.measure_all(methods, tiles.images, timing)
    return speed.ratio_values(speed.Ratio("int8", "int8", "fp32"), results), speed.load_average()


def bias_ablation(name: str, checkpoint: Path, view: View, work: Path, settings: argparse.Namespace) -> list[str]:
    """Table rows: the plain recipe without and with bias correction, judged on the held-out tiles."""
    folder = work / "bias-ablation" / name
    if folder.exists():
        shutil.rmtree(folder)
    out = folder / "model.onnx"
    code, _ = _run(
        [*CLI, "export", "--checkpoint", str(checkpoint), "--out", str(out)], work / "logs" / f"{name}-fp32.log"
    )
    if code != 0:
        return [f"| {name} | fp32 export failed (exit {code}) | | |"]
    size = read_card(out).input_size
    _verify, calibration = checkpoint_tiles(load_checkpoint(checkpoint)[1], size, 256, 256, settings.seed)
    held = balanced(view.held_out, 2 * HELD_OUT_PER_CLASS, settings.seed)
    tiles = read_tiles(held, size, f"{len(held)} held-out tiles of {name}")
    plain, corrected = folder / "model.int8-plain.onnx", folder / "model.int8-corrected.onnx"
    quantize_int8(out, plain, calibration.images, Int8Recipe(bias_correction=False))
    shutil.copyfile(plain, corrected)  # the same ranges and weights; only the biases differ
    correction = correct_biases(out, corrected, calibration.images)
    rows = []
    for int8, seconds in ((plain, None), (corrected, correction.seconds)):
        outcome = Outcome(name, None, 0.0, True, True)
        judged(outcome, out, int8, tiles)
        changed = round((1 - (outcome.agreement or 0.0)) * outcome.held_out_tiles)
        ci = outcome.correlation_ci or (float("nan"), float("nan"))
        rows.append(
            f"| {name} | {'no' if seconds is None else f'yes ({seconds:.0f} s)'} | {changed} of "
            f"{outcome.held_out_tiles} ({outcome.agreement:.2%}) | {outcome.correlation:.3f} "
            f"({ci[0]:.3f}-{ci[1]:.3f}) |"
        )
    return rows


# --- report -------------------------------------------------------------------------------------------------------


def table(outcomes: Sequence[Outcome], sizes: Sequence[int]) -> str:
    head = "| model | train | export | fp32 | int8 | kept float | held-out tiles | decisions | heatmap corr. (95% CI) |"
    head += "".join(f" int8/fp32 b{size} |" for size in sizes) + " load |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for o in outcomes:
        ci = f" ({o.correlation_ci[0]:.3f}-{o.correlation_ci[1]:.3f})" if o.correlation_ci else ""
        row = [
            o.member,
            "-" if o.train_s is None else f"{o.train_s / 60:.1f} min",
            f"{o.export_s:.0f} s",
            "written" if o.fp32_written else "REFUSED",
            "written" if o.int8_written else "REFUSED (below)",
            ", ".join(name.rsplit("/", 1)[-1] for name in o.float_units) or "none",
            str(o.held_out_tiles),
            "-" if o.agreement is None else f"{o.agreement:.2%}",
            "-" if o.correlation is None else f"{o.correlation:.3f}{ci}",
            *[f"{o.speedup[size]:.2f}x" if size in o.speedup else "-" for size in sizes],
            "-" if o.load is None else f"{o.load:.2f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [f"\n{o.member}: {o.refusal}" for o in outcomes if o.refusal]
    return "\n".join(lines)


def summary(outcomes: Sequence[Outcome]) -> list[str]:
    written = sum(o.fp32_written and o.int8_written for o in outcomes)
    passing = sum(o.passes for o in outcomes)
    lines = [
        f"int8 written with the defaults: {written}/{len(outcomes)}; fp32 refused: "
        f"{sum(not o.fp32_written for o in outcomes)}",
        f"held-out decisions >= {MIN_AGREEMENT:.0%} and heatmap correlation >= {MIN_CORRELATION}: "
        f"{passing}/{len(outcomes)}",
    ]
    batch8 = [o.speedup[8] for o in outcomes if 8 in o.speedup]
    if batch8:
        lines.append(f"median int8/fp32 speed-up at batch 8: {statistics.median(batch8):.2f}x over {len(batch8)}")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", nargs="+", default=list(MEMBERS), choices=list(MEMBERS), help="default: all")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "int8-suite")
    parser.add_argument("--skip-training", action="store_true", help="reuse runs already under --work")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8], help="batch sizes timed (default 1 8)")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds; 0 skips timing (default 7)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per model, batch size and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the outcomes to this JSON file")
    parser.add_argument(
        "--bias-ablation", action="store_true", help="compare the plain recipe without and with bias correction"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if data_missing():
        return 2
    speed.print_environment(speed.environment())
    work = settings.work
    work.mkdir(parents=True, exist_ok=True)
    outcomes = []
    if settings.bias_ablation:
        print("| model | bias correction (its time) | held-out decisions changed | heatmap corr. (95% CI) |")
        print("|---|---|---|---|")
    for name in settings.members:
        view = MEMBERS[name](work)
        checkpoint, train_s = train(name, view, work, settings.skip_training)
        if settings.bias_ablation:
            print("\n".join(bias_ablation(name, checkpoint, view, work, settings)), flush=True)
            continue
        print(f"{name}: trained ({'-' if train_s is None else f'{train_s / 60:.1f} min'}), exporting", flush=True)
        outcome = export_and_judge(name, checkpoint, view, work, settings)
        outcome.train_s = train_s
        outcomes.append(outcome)
        print("\n".join(table([outcome], settings.sizes).splitlines()[2:]), flush=True)
    if settings.bias_ablation:
        return 0
    print()
    print(table(outcomes, settings.sizes))
    print()
    print("\n".join(summary(outcomes)))
    if settings.json:
        payload = {"environment": speed.environment(), "outcomes": [asdict(o) for o in outcomes]}
        with tempfile.NamedTemporaryFile("w", dir=settings.json.parent, delete=False, suffix=".partial") as handle:
            json.dump(payload, handle, indent=2)
        os.replace(handle.name, settings.json)
    return 0 if all(o.passes for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
