"""Frames per second of the whole inspection pipeline on a 5 MP frame, against what the model alone allows.

A synthetic 2448x2048 frame (:func:`crackscope.training.synthetic.make_frame`, seeded) goes through the deployed
path: :func:`~crackscope.inspect.pipeline.inspect_frames` (tiling, model batches, calibrated verdicts, stitched
heatmap, regions) and then :func:`~crackscope.inspect.overlay.render_overlay`, since a line saves the overlay of every
flagged frame (here every frame is rendered: the worst case). For each model (fp32, int8), overlap (0%, 25%) and
session layout (1 session x 2 threads and 2 sessions x 1 thread by default, ``--layouts``) it runs interleaved
rounds of two kinds:

- **pipeline**: one frame through ``inspect_frames`` + ``render_overlay``. The time spent inside
  ``OnnxModel.predict`` (``session.run`` plus an input check) is summed during the same round, which gives the share
  of frame time spent outside the model: tiling, batching, decisions, CAM upsampling, stitching, regions, overlay;
- **model only**: the very tile batches the pipeline sent (recorded in the warm-up round) through
  ``OnnxModel.predict_batches`` and nothing else: the frames/s that the model alone allows.

For one model and overlap, every layout's two kinds run in each round, in a shuffled order, so that changes in the
machine's load hit layouts and kinds alike; every figure is the median over rounds, the ratio of two layouts is the
median of their per-round ratios, and the 1-minute load average is printed next to each row. The goals of issues
6 and 10 are judged from the measured values and printed as met / not met:

- time outside ``session.run`` <= 15% of frame time (every row);
- int8 at 0% overlap: pipeline frames/s >= 80% of model-only frames/s;
- int8 at 0% overlap: >= 4 frames/s with the best layout (on 2 cores).

Models: by default the ones ``benchmarks/accuracy.py`` trained and exported (``benchmarks/results/models/<job>.onnx``
and ``<job>.int8.onnx``); ``--model`` / ``--int8`` take any exported crackscope model instead. No PyTorch needed.

``--dense`` adds the dense whole-frame mode against tiled inference at 25% overlap (issue 10's goal: dense >= 1.5x
the tiled frames/s with >= 99% tile-decision agreement):

- **speed**: the same 5 MP frame through ``inspect_frames`` + overlay, tiled (the fp32 model at 25% overlap) and
  dense (``<model>.dense.onnx``, one pass, tiles on the 32 px grid at >= 25% overlap), in paired rounds: each round
  times both, in a shuffled order with a short pause between, and the ratio is the median of the per-round ratios;
- **agreement** on real frames (DeepCrack photos and magnetic-tile images from the shared datasets, evenly spread):
  :func:`crackscope.inspect.agreement.measure_agreement`, i.e. tile decisions (logit >= 0) of the dense graph against
  the tile model on the very same tiles, and the correlation of the two frame heatmaps.

A missing dense graph is added from the job's checkpoint (``benchmarks/results/accuracy/<job>/model.pt``, or
``--checkpoint``) with :func:`crackscope.deploy.export.add_dense` (this step needs PyTorch; the tile model is left as it
is); without a checkpoint the benchmark says which command makes it.

Run:
    python benchmarks/frames.py                          # magnetic-tile models (224 px), 7 rounds per row
    python benchmarks/frames.py --job ozgenel-concrete   # the concrete models (160 px)
    python benchmarks/frames.py --model m.onnx --int8 m.int8.onnx --rounds 9 --json frames.json
    python benchmarks/frames.py --layouts 1x4 2x2 4x1     # the layouts to compare (SESSIONSxTHREADS)
    python benchmarks/frames.py --quick                  # smoke run: 2 rounds per row, numbers not meaningful
    python benchmarks/frames.py --dense-only --rounds 9  # dense vs tiled (25% overlap) on the magnetic-tile model
    python benchmarks/frames.py --dense --quick          # smoke run of everything
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
from saved_models import DATA_DIR, MODELS_DIR, checkpoint_path, require_model

from crackscope.inspect.agreement import DenseAgreement, measure_agreement
from crackscope.inspect.dense import dense_grid
from crackscope.inspect.model import DENSE_MIN_AGREEMENT, DenseModel, Layout, OnnxModel, dense_path
from crackscope.inspect.overlay import render_overlay
from crackscope.inspect.pipeline import FrameInspection, InspectConfig, inspect_frames
from crackscope.training.synthetic import TEXTURES, make_frame

DEFAULT_JOB = "magnetic-tile"
OVERHEAD_GOAL = 0.15  # time outside session.run, share of frame time, at most
MODEL_SHARE_GOAL = 0.80  # int8, 0% overlap: pipeline frames/s over model-only frames/s, at least
FRAMES_GOAL = 4.0  # int8, 0% overlap, best layout: frames/s on 2 cores, at least
DEFAULT_LAYOUTS = ("1x2", "2x1")
DENSE_SPEED_GOAL = 1.5  # dense frames/s over tiled frames/s at 25% overlap, at least
DENSE_OVERLAP = 0.25
REAL_FRAMES = {  # name -> folder of whole frames (searched recursively)
    "DeepCrack photos": DATA_DIR / "deepcrack-train" / "images",
    "magnetic-tile images": DATA_DIR / "magnetic-tile",
}
STAGES = ("tiling", "predict", "batching", "decide", "overlay", "other")
STAGE_LABELS = {
    "tiling": "tiling (grid, cut tiles)",
    "predict": "model (in predict)",
    "batching": "batching (around predict)",
    "decide": "decide (verdicts, CAM upsampling, stitching, regions)",
    "overlay": "overlay",
    "other": "other",
}


# --- settings ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Everything the command line decides."""

    models: tuple[Path, ...]
    overlaps: tuple[float, ...]
    height: int
    width: int
    rounds: int
    warmup: int
    max_batch: int
    layouts: tuple[Layout, ...]
    kind: str
    cracks: int
    seed: int
    json_path: Path | None
    quick: bool
    dense: bool = False
    tiled_rows: bool = True
    checkpoint: Path | None = None
    agreement_frames: int = 24


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Command-line options; a missing default model is a FileNotFoundError that says which command makes it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="fp32 model (default: the accuracy benchmark's <job>.onnx)")
    parser.add_argument("--int8", type=Path, help="int8 model (default: <job>.int8.onnx beside the fp32 default)")
    parser.add_argument("--job", default=DEFAULT_JOB, help="accuracy-benchmark job whose models to use (%(default)s)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where those models are (%(default)s)")
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.0, 0.25], help="tile overlaps (0 0.25)")
    parser.add_argument("--width", type=int, default=2448)
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--rounds", type=int, help="rounds of each kind per row (default 7; quick: 2)")
    parser.add_argument("--warmup", type=int, help="untimed pipeline + model rounds per row (default 1; quick: 1)")
    parser.add_argument("--max-batch", type=int, default=InspectConfig().max_batch, help="tiles per model call")
    parser.add_argument(
        "--layouts",
        type=Layout.parse,
        nargs="+",
        default=[Layout.parse(text) for text in DEFAULT_LAYOUTS],
        help="session layouts SESSIONSxTHREADS to compare (default: 1x2 2x1; 1xdefault: ONNX Runtime's threads)",
    )
    parser.add_argument("--kind", choices=TEXTURES, default="concrete", help="synthetic surface (%(default)s)")
    parser.add_argument("--cracks", type=int, default=3, help="cracks drawn in the frame (%(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds per row (numbers not meaningful)")
    parser.add_argument("--dense", action="store_true", help="also compare dense and tiled (25%% overlap) inference")
    parser.add_argument("--dense-only", action="store_true", help="only the dense vs tiled comparison")
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint to add a missing dense graph from (default: the job's model.pt)"
    )
    parser.add_argument(
        "--agreement-frames", type=int, help="real frames per dataset for the dense agreement (default 24; quick: 4)"
    )
    args = parser.parse_args(argv)
    models = model_files(args.model, args.int8, args.job, args.models_dir)
    return Settings(
        models=models,
        overlaps=tuple(args.overlaps),
        height=args.height,
        width=args.width,
        rounds=args.rounds or (2 if args.quick else 7),
        warmup=args.warmup if args.warmup is not None else 1,
        max_batch=args.max_batch,
        layouts=tuple(args.layouts),
        kind=args.kind,
        cracks=args.cracks,
        seed=args.seed,
        json_path=args.json,
        quick=args.quick,
        dense=args.dense or args.dense_only,
        tiled_rows=not args.dense_only,
        checkpoint=args.checkpoint or (None if args.model else checkpoint_path(args.job)),
        agreement_frames=args.agreement_frames or (4 if args.quick else 24),
    )


def model_files(fp32: Path | None, int8: Path | None, job: str, folder: Path) -> tuple[Path, ...]:
    """The models to measure: the ones given, else the job's saved fp32 model and its int8 variant when present."""
    if fp32 or int8:
        return tuple(path for path in (fp32, int8) if path)
    saved = require_model(job, "fp32", folder)
    try:
        return (saved, require_model(job, "int8", folder))
    except FileNotFoundError as missing:
        print(f"note: no int8 row: {missing}\n", file=sys.stderr)
        return (saved,)


# --- measuring --------------------------------------------------------------------------------------------------


@dataclass
class Meter:
    """Seconds spent in ``OnnxModel.predict_batches`` while metered, and (when recording) the batches it was given."""

    seconds: float = 0.0
    batches: list[np.ndarray] = field(default_factory=list)


@contextmanager
def metered(model: OnnxModel, record: bool = False) -> Iterator[Meter]:
    """Time every ``model.predict_batches`` call the pipeline makes, without touching the runtime's code.

    The bound method is shadowed by an instance attribute for the duration and restored afterwards.
    """
    meter = Meter()
    predict_batches = model.predict_batches

    def timed(batches: Sequence[np.ndarray]):
        tick = time.perf_counter()
        outputs = predict_batches(batches)
        meter.seconds += time.perf_counter() - tick
        if record:
            meter.batches.extend(batches)
        return outputs

    model.predict_batches = timed  # type: ignore[method-assign]
    try:
        yield meter
    finally:
        del model.predict_batches


@dataclass(frozen=True)
class PipelineRound:
    seconds: float  # inspect_frames + render_overlay
    stages: dict[str, float]  # seconds per stage (see STAGES)
    verdict: str
    score: float
    regions: int
    tiles: int


def pipeline_round(model: OnnxModel, frame: np.ndarray, config: InspectConfig, meter: Meter) -> PipelineRound:
    """One frame through the deployed path; ``meter`` must be metering ``model``."""
    meter.seconds = 0.0
    started = time.perf_counter()
    [inspection] = inspect_frames(model, [frame], config)
    inspected = time.perf_counter()
    render_overlay(frame, inspection)
    done = time.perf_counter()
    timings = inspection.timings
    stages = {
        "tiling": timings["prepare"],
        "predict": meter.seconds,
        "batching": timings["model"] - meter.seconds,
        "decide": timings["decide"],
        "overlay": done - inspected,
    }
    stages["other"] = (done - started) - sum(stages.values())
    verdict, score = inspection.verdict.value, inspection.score
    return PipelineRound(done - started, stages, verdict, score, len(inspection.regions), len(inspection.tiles))


def model_round(model: OnnxModel, batches: Sequence[np.ndarray]) -> float:
    """Seconds for the recorded batches through ``OnnxModel.predict_batches`` alone (spread over its sessions)."""
    started = time.perf_counter()
    model.predict_batches(batches)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Row:
    """One model at one overlap: medians over the rounds (seconds), or the error that stopped it."""

    model: str  # file name
    precision: str
    overlap: float
    layout: str = ""  # SESSIONSxTHREADS
    tiles: int = 0
    batches: int = 0
    frame_s: float = float("nan")
    model_only_s: float = float("nan")
    outside_share: float = float("nan")  # median over pipeline rounds of 1 - predict / frame
    stages_s: dict[str, float] = field(default_factory=dict)
    rounds: int = 0
    verdict: str = ""
    score: float = float("nan")
    regions: int = 0
    load_start: float = float("nan")
    load_end: float = float("nan")
    error: str | None = None
    rounds_s: tuple[float, ...] = ()  # each round's pipeline seconds, in round order (pairs with other layouts)

    @property
    def frames_per_s(self) -> float:
        return 1.0 / self.frame_s

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.frame_s

    @property
    def model_only_frames_per_s(self) -> float:
        return 1.0 / self.model_only_s

    @property
    def model_share(self) -> float:
        """Pipeline frames/s over model-only frames/s."""
        return self.model_only_s / self.frame_s


@dataclass
class _Layout:
    """One layout's model and what its rounds collected."""

    model: OnnxModel
    first: PipelineRound
    batches: list[np.ndarray]
    pipelines: list[PipelineRound] = field(default_factory=list)
    model_only: list[float] = field(default_factory=list)


def measure_rows(models: dict[str, OnnxModel], frame: np.ndarray, overlap: float, settings: Settings) -> list[Row]:
    """Warm up each layout (recording the pipeline's batches), then rounds in which every layout runs a pipeline
    and a model-only round, all in a shuffled order; one row per layout."""
    config = InspectConfig(overlap=overlap, max_batch=settings.max_batch)
    load_start = load_average()
    states: dict[str, _Layout] = {}
    rows: dict[str, Row] = {}
    for label, model in models.items():
        try:
            with metered(model, record=True) as recorder:
                first = pipeline_round(model, frame, config, recorder)
        except Exception as error:  # the runtime failed on this frame: report it in the table and go on
            rows[label] = Row(model.path.name, model.card.precision, overlap, label, error=describe(error))
            continue
        states[label] = _Layout(model, first, recorder.batches)
        for _ in range(settings.warmup - 1):
            with metered(model) as meter:
                pipeline_round(model, frame, config, meter)
        for _ in range(settings.warmup):
            model_round(model, recorder.batches)

    def run_pipeline(state: _Layout) -> None:
        with metered(state.model) as meter:
            state.pipelines.append(pipeline_round(state.model, frame, config, meter))

    def run_model(state: _Layout) -> None:
        state.model_only.append(model_round(state.model, state.batches))

    steps = [(step, state) for state in states.values() for step in (run_pipeline, run_model)]
    order = random.Random(settings.seed)
    for _ in range(settings.rounds):
        for step, state in order.sample(steps, len(steps)):
            step(state)
    load_end = load_average()
    for label, state in states.items():
        rows[label] = layout_row(label, state, overlap, settings.rounds, load_start, load_end)
    return [rows[label] for label in models]


def layout_row(label: str, state: _Layout, overlap: float, rounds: int, load_start: float, load_end: float) -> Row:
    pipelines = state.pipelines
    return Row(
        model=state.model.path.name,
        precision=state.model.card.precision,
        overlap=overlap,
        layout=label,
        tiles=state.first.tiles,
        batches=len(state.batches),
        frame_s=statistics.median(r.seconds for r in pipelines),
        model_only_s=statistics.median(state.model_only),
        outside_share=statistics.median(1.0 - r.stages["predict"] / r.seconds for r in pipelines),
        stages_s={stage: statistics.median(r.stages[stage] for r in pipelines) for stage in STAGES},
        rounds=rounds,
        verdict=state.first.verdict,
        score=state.first.score,
        regions=state.first.regions,
        load_start=load_start,
        load_end=load_end,
        rounds_s=tuple(r.seconds for r in pipelines),
    )


def describe(error: Exception) -> str:
    """``Type: first line of the message (in function, file:line)``, naming the innermost frame that raised."""
    last = traceback.extract_tb(error.__traceback__)[-1]
    message = str(error).strip().splitlines()[-1] if str(error).strip() else ""
    kind = (
        type(error).__name__
        if type(error).__module__ == "builtins"
        else f"{type(error).__module__}.{type(error).__name__}"
    )
    return f"{kind}: {message} (in {last.name}, {Path(last.filename).name}:{last.lineno})"


def measure_all(settings: Settings, frame: np.ndarray) -> list[Row]:
    rows = []
    for path in settings.models:
        with contextlib.ExitStack() as stack:
            models = {
                layout.label: stack.enter_context(
                    OnnxModel(path, providers="cpu", workers=layout.workers, intra_op_threads=layout.threads)
                )
                for layout in settings.layouts
            }
            for overlap in settings.overlaps:
                for row in measure_rows(models, frame, overlap, settings):
                    print(progress_line(row), flush=True)
                    rows.append(row)
    return rows


# --- dense whole-frame mode vs tiled -------------------------------------------------------------------------------


def dense_model_file(fp32: Path, checkpoint: Path | None) -> Path:
    """``<fp32>.dense.onnx``, added from ``checkpoint`` when missing (PyTorch needed for that step only)."""
    dense = dense_path(fp32)
    if dense.is_file():
        return dense
    frames = REAL_FRAMES["DeepCrack photos"]
    how = f"crackscope export --checkpoint {checkpoint or 'MODEL.pt'} --out {fp32} --add-dense --dense-frames {frames}"
    if checkpoint is None or not checkpoint.is_file():
        raise FileNotFoundError(f"{dense} not found and no checkpoint to add it from; make it with: {how}")
    from crackscope.deploy.export import ExportConfig, add_dense

    print(f"{dense} not found: adding it from {checkpoint} (as '{how}' would)", flush=True)
    config = ExportConfig(
        checkpoint=str(checkpoint),
        out=str(fp32),
        dense=True,
        dense_frames=str(frames) if frames.is_dir() else None,
        dense_frame_count=24,
    )
    result = add_dense(config)
    print(result.describe() + "\n", flush=True)
    if result.refused:
        raise RuntimeError(f"the dense graph could not be added: {result.refused[0]}")
    return dense


@dataclass(frozen=True)
class DenseSpeed:
    """Tiled (25% overlap) and dense inference of one frame: medians over paired rounds (seconds)."""

    tiled_s: float
    dense_s: float
    ratio: float  # median over rounds of tiled_s / dense_s measured in the same round
    tiled_tiles: int
    dense_tiles: int
    dense_overlap: float  # the dense grid's own overlap (its stride rounded down to whole 32 px cells)
    tiled_verdict: str
    dense_verdict: str
    rounds: int
    load_start: float
    load_end: float
    layout: str = ""  # the tiled layout; the dense graph ran one session with as many threads

    @property
    def tiled_fps(self) -> float:
        return 1.0 / self.tiled_s

    @property
    def dense_fps(self) -> float:
        return 1.0 / self.dense_s


def _timed_inspection(model, frame: np.ndarray, config: InspectConfig) -> tuple[float, FrameInspection]:
    started = time.perf_counter()
    [inspection] = inspect_frames(model, [frame], config)
    render_overlay(frame, inspection)
    return time.perf_counter() - started, inspection


def dense_threads(layout: Layout) -> int | None:
    """The dense graph runs one session: with as many threads as the tiled layout has in all."""
    return None if layout.threads is None else layout.workers * layout.threads


def measure_dense_speed(fp32: Path, dense: Path, frame: np.ndarray, settings: Settings) -> DenseSpeed:
    """Paired rounds: each times tiled and dense once, in a shuffled order, with a short pause between the two.

    Tiled inference runs in the first of ``--layouts``; the dense graph in one session with the same threads.
    """
    tiled_config = InspectConfig(overlap=DENSE_OVERLAP, max_batch=settings.max_batch)
    dense_config = InspectConfig(overlap=DENSE_OVERLAP, mode="dense", force_dense=True)  # timed whatever the gate
    load_start = load_average()
    layout = settings.layouts[0]
    with (
        OnnxModel(fp32, providers="cpu", workers=layout.workers, intra_op_threads=layout.threads) as tiles,
        DenseModel(dense, providers="cpu", intra_op_threads=dense_threads(layout)) as whole,
    ):
        runs = {"tiled": (tiles, tiled_config), "dense": (whole, dense_config)}
        first = {name: _timed_inspection(model, frame, config)[1] for name, (model, config) in runs.items()}
        for _ in range(settings.warmup - 1):
            for model, config in runs.values():
                _timed_inspection(model, frame, config)
        seconds: dict[str, list[float]] = {"tiled": [], "dense": []}
        order = random.Random(settings.seed)
        for _ in range(settings.rounds):
            for name in order.sample(list(runs), k=2):
                time.sleep(0.2)  # let the other session's spinning threads stop
                model, config = runs[name]
                seconds[name].append(_timed_inspection(model, frame, config)[0])
    height, width = frame.shape[:2]
    grid = dense_grid(height, width, tiles.input_size, DENSE_OVERLAP, whole.stride)
    return DenseSpeed(
        tiled_s=statistics.median(seconds["tiled"]),
        dense_s=statistics.median(seconds["dense"]),
        ratio=statistics.median(t / d for t, d in zip(seconds["tiled"], seconds["dense"], strict=True)),
        tiled_tiles=len(first["tiled"].tiles),
        dense_tiles=len(first["dense"].tiles),
        dense_overlap=1 - grid.stride / grid.size,
        tiled_verdict=f"{first['tiled'].verdict.value} {first['tiled'].score:.2f}",
        dense_verdict=f"{first['dense'].verdict.value} {first['dense'].score:.2f}",
        rounds=settings.rounds,
        load_start=load_start,
        load_end=load_average(),
        layout=layout.describe(),
    )


def real_frames(folder: Path, count: int) -> list[Path]:
    """Up to ``count`` image files of ``folder`` (recursively, sorted), evenly spread: every class of a dataset laid
    out in class folders gets its share."""
    # JPEGs only: the frames of both datasets are; magnetic-tile keeps its masks beside them as PNGs.
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg"))
    if len(files) <= count:
        return files
    return [files[round(i * (len(files) - 1) / (count - 1))] for i in range(count)] if count > 1 else files[:1]


def measure_dense_agreements(fp32: Path, dense: Path, count: int, layout: Layout) -> list[DenseAgreement]:
    results = []
    with (
        OnnxModel(fp32, providers="cpu", workers=layout.workers, intra_op_threads=layout.threads) as tiles,
        DenseModel(dense, providers="cpu", intra_op_threads=dense_threads(layout)) as whole,
    ):
        for name, folder in REAL_FRAMES.items():
            files = real_frames(folder, count) if folder.is_dir() else []
            if not files:
                print(f"note: no {name} at {folder}; its agreement row is left out", file=sys.stderr)
                continue
            frames = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in files]
            agreement = measure_agreement(tiles, whole, frames, overlap=DENSE_OVERLAP, source=f"{len(files)} {name}")
            print(f"  {agreement.describe()}", flush=True)
            results.append(agreement)
    return results


def dense_tables(speed: DenseSpeed | None, agreements: Sequence[DenseAgreement], error: str | None) -> str:
    if error:
        return f"dense vs tiled: FAILED {error}"
    lines = [
        "| inference | tiles per frame | frames/s | frame verdict |",
        "|---|---:|---:|---|",
        f"| tiled, {DENSE_OVERLAP:.0%} overlap | {speed.tiled_tiles} | {speed.tiled_fps:.2f} | {speed.tiled_verdict} |",
        f"| dense, tiles on the 32 px grid at {speed.dense_overlap:.1%} overlap | {speed.dense_tiles} "
        f"| {speed.dense_fps:.2f} | {speed.dense_verdict} |",
        "",
        f"dense / tiled: {speed.ratio:.2f}x (median of {speed.rounds} paired rounds; tiled on {speed.layout}, dense "
        f"on one session with as many threads; load {speed.load_start} -> {speed.load_end})",
        "",
        "| real frames | tiles | tile decisions agree | heatmap correlation | mean / max abs logit diff "
        "| crack share tiled / dense |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for a in agreements:
        lines.append(
            f"| {a.source} | {a.tiles} | {a.decision_agreement:.2%} | {a.heatmap_correlation:.3f} "
            f"| {a.mean_abs_logit_diff:.2f} / {a.max_abs_logit_diff:.2f} | {a.tiled_positive:.1%} / "
            f"{a.dense_positive:.1%} |"
        )
    goals = [
        f"dense >= {DENSE_SPEED_GOAL}x tiled frames/s at {DENSE_OVERLAP:.0%} overlap: {speed.ratio:.2f}x, "
        + ("met" if speed.ratio >= DENSE_SPEED_GOAL else "not met"),
        *(
            f">= {DENSE_MIN_AGREEMENT:.0%} tile-decision agreement on {a.source}: {a.decision_agreement:.2%}, "
            + ("met" if a.passed else "not met")
            for a in agreements
        ),
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {goal}" for goal in goals)


def dense_section(settings: Settings, frame: np.ndarray) -> dict[str, Any]:
    """Speed and agreement of dense vs tiled inference; an error is reported, not raised."""
    fp32 = settings.models[0]
    print(f"\ndense vs tiled ({fp32.name}, {DENSE_OVERLAP:.0%} overlap, {settings.rounds} paired rounds)", flush=True)
    try:
        dense = dense_model_file(fp32, settings.checkpoint)
        speed = measure_dense_speed(fp32, dense, frame, settings)
        print(f"  dense {speed.dense_fps:.2f} frames/s, tiled {speed.tiled_fps:.2f}: {speed.ratio:.2f}x", flush=True)
        agreements = measure_dense_agreements(fp32, dense, settings.agreement_frames, settings.layouts[0])
    except Exception as error:  # a missing model or a failing runtime is a table row, not a traceback
        print(f"\n## Dense whole-frame mode vs tiled\n\n{dense_tables(None, (), describe(error))}")
        return {"error": describe(error)}
    print(f"\n## Dense whole-frame mode vs tiled\n\n{dense_tables(speed, agreements, None)}")
    return {"model": str(dense), "speed": asdict(speed), "agreement": [a.summary() for a in agreements]}


# --- environment ------------------------------------------------------------------------------------------------


def load_average() -> float:
    """The 1-minute load average (other work on the machine skews every figure); NaN where the OS has none."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def environment(settings: Settings) -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "cpu": platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "session_layouts": ", ".join(f"{layout.label} ({layout.describe()})" for layout in settings.layouts),
        "load_average_1_5_15m": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# --- reporting --------------------------------------------------------------------------------------------------


def row_name(row: Row) -> str:
    return f"{row.precision} ({row.model}) {row.layout}"


def progress_line(row: Row) -> str:
    where = f"  {row_name(row):<40} overlap {row.overlap:.0%}:"
    if row.error:
        return f"{where} FAILED {row.error}"
    return (
        f"{where} {row.frames_per_s:.2f} frames/s, model alone {row.model_only_frames_per_s:.2f}, "
        f"{row.outside_share:.1%} outside session.run (load {row.load_start} -> {row.load_end})"
    )


def throughput_table(rows: Sequence[Row]) -> str:
    lines = [
        "| model | overlap | tiles/frame (batches) | frames/s | tiles/s | model-only frames/s | pipeline / model-only "
        "| outside session.run | frame verdict (regions) | load 1 min (start -> end) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        load = f"{r.load_start} -> {r.load_end}"
        if r.error:
            lines.append(f"| {row_name(r)} | {r.overlap:.0%} | failed: {r.error} | | | | | | | {load} |")
            continue
        lines.append(
            f"| {row_name(r)} | {r.overlap:.0%} | {r.tiles} ({r.batches}) | {r.frames_per_s:.2f} | {r.tiles_per_s:.0f} "
            f"| {r.model_only_frames_per_s:.2f} | {r.model_share:.1%} | {r.outside_share:.1%} "
            f"| {r.verdict} {r.score:.2f} ({r.regions}) | {load} |"
        )
    return "\n".join(lines)


def stages_table(rows: Sequence[Row]) -> str:
    lines = [
        "| model | overlap | " + " | ".join(STAGE_LABELS[s] for s in STAGES) + " | frame |",
        "|---|---:|" + "---:|" * (len(STAGES) + 1),
    ]
    for r in rows:
        if r.error:
            continue
        cells = [f"{1000 * r.stages_s[s]:.0f}" for s in STAGES]
        lines.append(f"| {row_name(r)} | {r.overlap:.0%} | " + " | ".join(cells) + f" | {1000 * r.frame_s:.0f} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Goal:
    text: str
    applies: Callable[[Row], bool]
    value: Callable[[Row], float]
    met: Callable[[float], bool]
    best_layout_only: bool = False  # judged on the fastest layout of each model and overlap only
    shown: Callable[[float], str] = "{:.1%}".format


GOALS = (
    Goal(
        f"time outside session.run <= {OVERHEAD_GOAL:.0%} of frame time",
        lambda r: True,
        lambda r: r.outside_share,
        lambda v: v <= OVERHEAD_GOAL,
    ),
    Goal(
        f"int8 at 0% overlap: pipeline >= {MODEL_SHARE_GOAL:.0%} of model-only frames/s",
        lambda r: r.precision == "int8" and r.overlap == 0.0,
        lambda r: r.model_share,
        lambda v: v >= MODEL_SHARE_GOAL,
    ),
    Goal(
        f"int8 at 0% overlap: >= {FRAMES_GOAL:g} frames/s with the best layout",
        lambda r: r.precision == "int8" and r.overlap == 0.0,
        lambda r: r.frames_per_s,
        lambda v: v >= FRAMES_GOAL,
        best_layout_only=True,
        shown="{:.2f}".format,
    ),
)


def best_layouts(rows: Sequence[Row]) -> list[Row]:
    """The fastest (pipeline frames/s) measured layout of each model and overlap."""
    best: dict[tuple[str, float], Row] = {}
    for row in rows:
        key = (row.model, row.overlap)
        if not row.error and (key not in best or row.frame_s < best[key].frame_s):
            best[key] = row
    return list(best.values())


def paired_ratio(row: Row, reference: Row) -> float:
    """Median over rounds of ``row``'s frames/s over ``reference``'s in the same round."""
    return statistics.median(ref / own for own, ref in zip(row.rounds_s, reference.rounds_s, strict=True))


def layouts_table(rows: Sequence[Row]) -> str:
    """Each layout's frames/s next to the best layout's for the same model and overlap (ratios of paired rounds)."""
    best = {(r.model, r.overlap): r for r in best_layouts(rows)}
    lines = [
        "| model | overlap | layout | frames/s | model-only frames/s | vs best layout (paired rounds) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if r.error:
            continue
        top = best[r.model, r.overlap]
        mark = " (best)" if r is top else ""
        lines.append(
            f"| {r.precision} ({r.model}) | {r.overlap:.0%} | {Layout.parse(r.layout).describe()} "
            f"| {r.frames_per_s:.2f} | {r.model_only_frames_per_s:.2f} | {paired_ratio(r, top):.2f}x{mark} |"
        )
    return "\n".join(lines)


def goals_table(rows: Sequence[Row]) -> tuple[str, list[dict]]:
    """The goal verdicts as a markdown table, and as JSON-ready rows."""
    lines = ["| goal | model | overlap | measured | met |", "|---|---|---:|---:|---|"]
    verdicts = []
    for goal in GOALS:
        judged = [r for r in (best_layouts(rows) if goal.best_layout_only else rows) if goal.applies(r)]
        if not judged:
            lines.append(f"| {goal.text} | (no such row measured) | | | not judged |")
            verdicts.append({"goal": goal.text, "met": None})
        for r in judged:
            value = None if r.error else goal.value(r)
            met = "not measured (the pipeline failed)" if value is None else "met" if goal.met(value) else "not met"
            shown = "" if value is None else goal.shown(value)
            lines.append(f"| {goal.text} | {row_name(r)} | {r.overlap:.0%} | {shown} | {met} |")
            verdicts.append({"goal": goal.text, "model": r.model, "overlap": r.overlap, "value": value, "met": met})
    return "\n".join(lines), verdicts


def report(settings: Settings, env: dict[str, Any], rows: Sequence[Row], frame_note: str) -> list[dict]:
    print(f"\n## Frames per second ({frame_note})\n\n{throughput_table(rows)}")
    print(f"\n## Session layouts (frames/s, median)\n\n{layouts_table(rows)}")
    print(f"\n## Where a frame's time goes (median ms per frame)\n\n{stages_table(rows)}")
    table, verdicts = goals_table(rows)
    print(f"\n## Goals\n\n{table}")
    print(f"\nload average (1, 5, 15 min) at start {env['load_average_1_5_15m']}, at end {os.getloadavg()}")
    if settings.quick:
        print("QUICK SMOKE RUN: 2 rounds per row, the numbers above are not meaningful.")
    return verdicts


def save_json(
    path: Path,
    settings: Settings,
    env: dict[str, Any],
    rows: Sequence[Row],
    verdicts: list[dict],
    dense: dict[str, Any] | None = None,
) -> None:
    payload = {
        "environment": env,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "rows": [asdict(r) for r in rows],
        "goals": verdicts,
        "dense": dense,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"results written to {path}")


# --- main -------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_args(argv)
    except FileNotFoundError as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    if settings.quick:
        print("QUICK SMOKE RUN: 2 rounds per row, numbers not meaningful.\n")
    env = environment(settings)
    print("## Environment\n\n" + "\n".join(f"- {k}: {v}" for k, v in env.items()) + "\n", flush=True)
    started = time.perf_counter()
    frame, mask = make_frame(
        settings.height, settings.width, settings.seed, kind=settings.kind, n_cracks=settings.cracks
    )
    frame_note = (
        f"synthetic {settings.kind} frame {settings.width}x{settings.height}, {settings.cracks} cracks "
        f"({mask.mean() / 255:.2%} crack pixels), seed {settings.seed}; max batch {settings.max_batch}; "
        f"median of {settings.rounds} interleaved rounds; overlay rendered on every frame"
    )
    print(f"frame made in {time.perf_counter() - started:.1f}s; measuring ({settings.rounds} rounds per row)\n")
    rows = measure_all(settings, frame) if settings.tiled_rows else []
    verdicts = report(settings, env, rows, frame_note) if rows else []
    dense = dense_section(settings, frame) if settings.dense else None
    if settings.json_path is not None:
        save_json(settings.json_path, settings, env, rows, verdicts, dense)
    failed = any(r.error for r in rows) or (dense is not None and "error" in dense)
    return 1 if failed else 0  # a row the runtime could not run is a failure, not a footnote


if __name__ == "__main__":
    sys.exit(main())
