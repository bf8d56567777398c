"""Which session layout runs a model fastest on this machine: measured, not assumed.

One session with N intra-op threads, or several sessions with fewer threads fed from one queue (see
:class:`~crackscope.inspect.model.SessionPool`): which wins depends on the machine and on what else runs on it
(two single-threaded sessions beat one two-threaded session on a loaded 2-core machine, but not reliably on a quiet
one). :func:`run_bench` opens the model once per candidate layout (every way to split the cores into sessions x
threads with none left over), and times each on the tiles of one frame of the given size, batched as
``crackscope inspect`` batches them, in paired interleaved rounds: every layout once per round, in a shuffled
order, so that a change in the machine's load hits all layouts alike. A round during which other processes took
more than a set share of the CPU is measured again (a few times at most and while the measuring time lasts, then
kept and counted as busy). A layout's speed is the median over rounds; its ratio to the best is the median of the
per-round ratios.

Times are of the model calls only (``OnnxModel.predict_batches``): tiling, decisions, heatmaps and overlays add
5-15% to a frame (``benchmarks/frames.py`` measures the whole pipeline).

Example:
    $ crackscope bench --model model.int8.onnx --frame 2448x2048 --seconds 60 --out bench.json
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crackscope.config import replacing
from crackscope.inspect.model import Layout, OnnxModel
from crackscope.inspect.pipeline import InspectConfig, batch_bounds
from crackscope.inspect.tiling import tile_grid

PAUSE_S = 0.1  # between layouts: lets the previous layout's spinning threads go idle
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What ``crackscope bench`` measures.

    Attributes:
        model: the ONNX model written by ``crackscope export``.
        frame: ``(width, height)`` of the frames the line inspects; one frame's tiles are one timed run.
        overlap: tile overlap, as ``inspect`` would use it (sets the tiles per frame).
        max_batch: most tiles per model call, as ``inspect`` would use it.
        seconds: measuring time; rounds start, and busy rounds are measured again, until it has passed (at least
            one round runs).
        cores: cores to split into sessions x threads (default: the cores this process may use).
        providers: ONNX Runtime providers, as for ``inspect``.
        busy_share: a round during which other processes used more than this share of the machine's CPU is
            measured again.
        max_redos: how often one round is measured again before it is kept anyway.
        seed: seeds the tiles and the order of layouts within rounds.
        out: also write the result as JSON to this file.
    """

    model: str = ""
    frame: tuple[int, int] = (2448, 2048)
    overlap: float = InspectConfig().overlap
    max_batch: int = InspectConfig().max_batch
    seconds: float = 30.0
    cores: int | None = None
    providers: str = "auto"
    busy_share: float = 0.25
    max_redos: int = 3
    seed: int = 0
    out: str | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("no model: pass --model MODEL.onnx")
        if min(self.frame) < 1:
            raise ValueError(f"frame: width and height must be at least 1, got {self.frame[0]}x{self.frame[1]}")
        InspectConfig(overlap=self.overlap, max_batch=self.max_batch)  # the same ranges as inspect
        if self.seconds < 0:
            raise ValueError(f"seconds: must be 0 or more, got {self.seconds}")
        if self.cores is not None and self.cores < 1:
            raise ValueError(f"cores: must be at least 1, got {self.cores}")
        if not 0.0 <= self.busy_share <= 1.0:
            raise ValueError(f"busy_share: must be in [0, 1], got {self.busy_share}")
        if self.max_redos < 0:
            raise ValueError(f"max_redos: must be 0 or more, got {self.max_redos}")


def parse_frame(text: str) -> tuple[int, int]:
    """``"2448x2048"`` -> ``(2448, 2048)`` (width, height)."""
    width, sep, height = text.strip().lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) < 1:
        raise ValueError(f"frame {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 2448x2048")
    return size


def candidate_layouts(cores: int) -> tuple[Layout, ...]:
    """Every split of ``cores`` into sessions x threads with no core left over: 1xN, ..., Nx1 (N = 4: 1x4, 2x2, 4x1)."""
    return tuple(Layout(workers, cores // workers) for workers in range(1, cores + 1) if cores % workers == 0)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load averages, where the OS reports them."""
    return tuple(round(v, 2) for v in os.getloadavg()) if hasattr(os, "getloadavg") else None  # type: ignore[return-value]


# --- how much CPU other processes took ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time counters at one instant, in seconds: the whole machine's busy time and this process's own."""

    machine_busy: float | None  # all CPUs, all processes; None where /proc/stat is absent
    own: float  # this process, all its threads (ONNX Runtime's included)


def cpu_snapshot(stat: Path = Path("/proc/stat")) -> CpuSnapshot:
    """The counters now (Linux: the ``cpu`` line of ``/proc/stat``; elsewhere the machine's busy time is None)."""
    times = os.times()
    own = times.user + times.system
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return CpuSnapshot(None, own)
    return CpuSnapshot(busy_seconds(fields), own)


def busy_seconds(cpu_line: Sequence[str]) -> float | None:
    """Busy seconds of all CPUs from the fields of ``/proc/stat``'s first line (``cpu user nice system idle ...``).

    Busy is user + nice + system + irq + softirq + steal; idle and iowait are not. The counters are in clock ticks
    (``SC_CLK_TCK``, usually 100 per second).
    """
    if len(cpu_line) < 9 or cpu_line[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in cpu_line[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def others_share(busy: float | None, own: float, wall: float, cpus: int) -> float | None:
    """Share of the machine's CPU capacity (``wall`` seconds x ``cpus``) that other processes used.

    ``busy`` is the machine's busy CPU seconds over the interval and ``own`` this process's; what is left is
    everyone else's. None where the machine's busy time is unknown.
    """
    if busy is None or wall <= 0 or cpus < 1:
        return None
    return min(1.0, max(0.0, (busy - own) / (wall * cpus)))


# --- measuring ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One paired round: seconds per layout (label -> one frame's tiles), as kept."""

    seconds: dict[str, float]
    others_share: float | None  # share of the CPU other processes took while the layouts were timed
    redone: int  # times this round was measured again because other processes took more than busy_share


@dataclass(frozen=True)
class LayoutResult:
    layout: Layout
    tiles_per_s: float  # tiles per frame / median over rounds of the seconds per frame
    frames_per_s: float
    vs_best: float  # median over rounds of (this layout's speed / the best layout's speed in the same round)


@dataclass(frozen=True)
class BenchResult:
    """What :func:`run_bench` measured, with what it needs to say how."""

    model: str
    precision: str
    provider: str
    feed: str
    input_size: int
    frame: tuple[int, int]
    overlap: float
    max_batch: int
    tiles_per_frame: int
    cores: int
    layouts: tuple[LayoutResult, ...]  # in candidate order (1xN first)
    rounds: tuple[Round, ...]
    busy_share: float
    seconds: float
    load_before: tuple[float, float, float] | None
    load_after: tuple[float, float, float] | None

    @property
    def best(self) -> LayoutResult:
        return max(self.layouts, key=lambda r: r.tiles_per_s)

    def config_lines(self) -> str:
        """The best layout as the keys of an ``inspect`` or ``daemon`` ``--config`` file."""
        return f"session_workers: {self.best.layout.workers}\nthreads: {self.best.layout.threads}"

    def describe(self) -> str:
        best = self.best.layout
        redone = sum(r.redone for r in self.rounds)
        kept_busy = sum(1 for r in self.rounds if r.others_share is not None and r.others_share > self.busy_share)
        width, height = self.frame
        lines = [
            f"model {self.model} ({self.precision}, {self.input_size} px) on {self.provider}, {self.feed}",
            f"frame {width}x{height} at {self.overlap:.0%} overlap: {self.tiles_per_frame} tiles, "
            f"calls of at most {self.max_batch} tiles; {self.cores} cores",
            f"{len(self.rounds)} round(s) in {self.seconds:.1f}s, each layout once per round in a shuffled order; "
            f"{redone} re-run(s) of a round because other processes took > {self.busy_share:.0%} of the CPU, "
            f"{kept_busy} round(s) kept although still that busy",
            "",
            "| layout | sessions x threads | tiles/s | frames/s | vs best |",
            "|---|---|---:|---:|---:|",
        ]
        for result in self.layouts:
            mark = " (best)" if result.layout == best else ""
            lines.append(
                f"| {result.layout.label} | {result.layout.describe()} | {result.tiles_per_s:.1f} "
                f"| {result.frames_per_s:.2f} | {result.vs_best:.2f}x{mark} |"
            )
        lines += [
            "",
            f"load average (1, 5, 15 min): {_load(self.load_before)} before, {_load(self.load_after)} after",
            f"best here: {best.describe()}. For crackscope inspect or daemon, put in the --config file "
            f"(or pass --session-workers {best.workers} --threads {best.threads}):",
            self.config_lines(),
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "precision": self.precision,
            "provider": self.provider,
            "feed": self.feed,
            "input_size": self.input_size,
            "frame": list(self.frame),
            "overlap": self.overlap,
            "max_batch": self.max_batch,
            "tiles_per_frame": self.tiles_per_frame,
            "cores": self.cores,
            "layouts": [
                {
                    "layout": r.layout.label,
                    "session_workers": r.layout.workers,
                    "threads": r.layout.threads,
                    "tiles_per_s": r.tiles_per_s,
                    "frames_per_s": r.frames_per_s,
                    "vs_best": r.vs_best,
                }
                for r in self.layouts
            ],
            "best": {"session_workers": self.best.layout.workers, "threads": self.best.layout.threads},
            "rounds": [{"seconds": r.seconds, "others_share": r.others_share, "redone": r.redone} for r in self.rounds],
            "busy_share": self.busy_share,
            "seconds": self.seconds,
            "load_before": self.load_before,
            "load_after": self.load_after,
        }


def _load(value: tuple[float, float, float] | None) -> str:
    return "n/a" if value is None else ", ".join(f"{v:.2f}" for v in value)


def run_bench(config: BenchConfig, progress: Progress | None = None) -> BenchResult:
    """Measure every candidate layout on this machine (see the module docstring); write JSON when ``config.out``."""
    say = progress or (lambda _line: None)
    cores = config.cores or usable_cores()
    layouts = candidate_layouts(cores)
    load_before = load_average()
    with contextlib.ExitStack() as stack:
        models = {layout.label: stack.enter_context(_open(config, layout)) for layout in layouts}
        first = next(iter(models.values()))
        tiles = frame_tiles(first.input_size, config)
        runs = {label: _timed_frame(model, tiles, config.max_batch) for label, model in models.items()}
        for label, run in runs.items():
            say(f"warm-up {label}: {run():.3f}s per frame")
        started = time.perf_counter()
        rounds = measure_rounds(runs, config, say)
        elapsed = time.perf_counter() - started
        result = BenchResult(
            model=str(first.path),
            precision=first.card.precision,
            provider=first.providers[0],
            feed=first.feed,
            input_size=first.input_size,
            frame=config.frame,
            overlap=config.overlap,
            max_batch=config.max_batch,
            tiles_per_frame=len(tiles),
            cores=cores,
            layouts=summarise(layouts, rounds, len(tiles)),
            rounds=tuple(rounds),
            busy_share=config.busy_share,
            seconds=elapsed,
            load_before=load_before,
            load_after=load_average(),
        )
    if config.out:
        with replacing(config.out) as partial:
            partial.write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _open(config: BenchConfig, layout: Layout) -> OnnxModel:
    return OnnxModel(config.model, providers=config.providers, workers=layout.workers, intra_op_threads=layout.threads)


def frame_tiles(size: int, config: BenchConfig) -> np.ndarray:
    """Random uint8 tiles, as many as one frame of ``config.frame`` has at ``config.overlap`` (speed does not
    depend on what the tiles show)."""
    width, height = config.frame
    count = len(tile_grid(height, width, size, config.overlap).boxes)
    return np.random.default_rng(config.seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def _timed_frame(model: OnnxModel, tiles: np.ndarray, max_batch: int) -> Callable[[], float]:
    """A run of one frame's tiles through ``model``, batched as ``inspect`` batches them; returns its seconds."""
    batches = [tiles[start:stop] for start, stop in batch_bounds(len(tiles), max_batch, model.layout.workers)]

    def run() -> float:
        tick = time.perf_counter()
        model.predict_batches(batches)
        return time.perf_counter() - tick

    return run


def measure_rounds(runs: Mapping[str, Callable[[], float]], config: BenchConfig, say: Progress) -> list[Round]:
    """Paired rounds until ``config.seconds`` have passed (at least one).

    A round during which other processes took more than ``config.busy_share`` of the CPU is measured again, at
    most ``config.max_redos`` times and only while time is left: on a machine that stays busy the rounds are kept
    and counted as busy, rather than the run outlasting its budget.
    """
    order = random.Random(config.seed)
    cpus = os.cpu_count() or 1
    deadline = time.perf_counter() + config.seconds
    rounds: list[Round] = []
    while not rounds or time.perf_counter() < deadline:
        for redone in range(config.max_redos + 1):
            seconds, share = _one_round(runs, order, cpus)
            quiet = share is None or share <= config.busy_share
            if quiet or redone == config.max_redos or time.perf_counter() >= deadline:
                break
            say(f"round {len(rounds) + 1}: other processes took {share:.0%} of the CPU; measuring it again")
        rounds.append(Round(seconds, share, redone))
        times = ", ".join(f"{label} {s:.3f}s" for label, s in seconds.items())
        say(f"round {len(rounds)}: {times} (load {_load(load_average())})")
    return rounds


def _one_round(
    runs: Mapping[str, Callable[[], float]], order: random.Random, cpus: int
) -> tuple[dict[str, float], float | None]:
    """Every layout once, in a shuffled order, and the share of the CPU other processes took during the round.

    The share is taken over the whole round, pauses included: a single run can be shorter than the clock tick
    that CPU counters advance by.
    """
    seconds: dict[str, float] = {}
    before, started = cpu_snapshot(), time.perf_counter()
    for label in order.sample(list(runs), len(runs)):
        time.sleep(PAUSE_S)
        seconds[label] = runs[label]()
    after, wall = cpu_snapshot(), time.perf_counter() - started
    busy = None
    if before.machine_busy is not None and after.machine_busy is not None:
        busy = after.machine_busy - before.machine_busy
    return dict(sorted(seconds.items())), others_share(busy, after.own - before.own, wall, cpus)


def summarise(layouts: Sequence[Layout], rounds: Sequence[Round], tiles_per_frame: int) -> tuple[LayoutResult, ...]:
    """Medians over rounds, and each layout's per-round speed relative to the fastest layout's."""
    medians = {layout.label: statistics.median(r.seconds[layout.label] for r in rounds) for layout in layouts}
    best = min(medians, key=medians.__getitem__)
    results = []
    for layout in layouts:
        seconds = medians[layout.label]
        ratio = statistics.median(r.seconds[best] / r.seconds[layout.label] for r in rounds)
        results.append(LayoutResult(layout, tiles_per_frame / seconds, 1.0 / seconds, ratio))
    return tuple(results)
