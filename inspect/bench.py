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

The result is saved beside the model, whatever ``--out`` says (``model.int8.onnx`` -> ``model.int8.bench.json``,
:func:`bench_path`): one entry per machine (host name, CPU model and usable cores: :func:`machine_key`), with the
model file's sha256, the best layout, frame size, time and load average, so a model folder shared by several
machines keeps each machine's answer; a new run replaces this machine's entry only. ``crackscope inspect`` and
``crackscope daemon`` given neither ``session_workers`` nor ``threads`` (flag or ``--config`` key) run the saved best
layout when the entry is this machine's, for this very model file, on the same first provider, and say so in one
line; otherwise they run 1 session x ONNX Runtime's default threads and say in one line why the saved result was not
used (:func:`choose_layout`). A run in which more than half the rounds were kept although other processes took the
CPU is saved marked as not trusted, and not used. Bench measures tile models only (a dense graph is refused), so
``--mode dense``, which runs one session of the dense graph, never takes a saved layout. A folder that cannot be
written costs one line on stderr, not the run.

Example:
    $ crackscope bench --model model.int8.onnx --frame 2448x2048 --seconds 60 --out bench.json
    $ crackscope inspect photos/ --model model.int8.onnx --out runs/line3     # runs the layout saved above
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import random
import socket
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from crackscope.config import check_value, replacing
from crackscope.inspect.model import Layout, OnnxModel, file_sha256, resolve_providers
from crackscope.inspect.pipeline import InspectConfig, batch_bounds
from crackscope.inspect.tiling import tile_grid

PAUSE_S = 0.1  # between layouts: lets the previous layout's spinning threads go idle
MOST_BUSY_ROUNDS = 0.5  # a run with a larger share of rounds kept although busy is saved as not trusted
SAVED_FORMAT = 1  # "crackscope_bench" in the file beside the model
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
        out: also write the result as JSON to this file (it is saved beside the model in any case:
            :func:`save_for_machine`).
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
    saved: Path | None = None  # the file beside the model this result was saved in (None: it could not be)

    @property
    def best(self) -> LayoutResult:
        return max(self.layouts, key=lambda r: r.tiles_per_s)

    @property
    def busy_rounds(self) -> int:
        """Rounds kept although other processes still took more than ``busy_share`` of the CPU."""
        return sum(1 for r in self.rounds if r.others_share is not None and r.others_share > self.busy_share)

    @property
    def trusted(self) -> bool:
        """Whether at most half the rounds were kept busy: otherwise the machine, not the layout, set the times."""
        return self.busy_rounds <= MOST_BUSY_ROUNDS * len(self.rounds)

    def config_lines(self) -> str:
        """The best layout as the keys of an ``inspect`` or ``daemon`` ``--config`` file."""
        return f"session_workers: {self.best.layout.workers}\nthreads: {self.best.layout.threads}"

    def describe(self) -> str:
        best = self.best.layout
        redone = sum(r.redone for r in self.rounds)
        width, height = self.frame
        lines = [
            f"model {self.model} ({self.precision}, {self.input_size} px) on {self.provider}, {self.feed}",
            f"frame {width}x{height} at {self.overlap:.0%} overlap: {self.tiles_per_frame} tiles, "
            f"calls of at most {self.max_batch} tiles; {self.cores} cores",
            f"{len(self.rounds)} round(s) in {self.seconds:.1f}s, each layout once per round in a shuffled order; "
            f"{redone} re-run(s) of a round because other processes took > {self.busy_share:.0%} of the CPU, "
            f"{self.busy_rounds} round(s) kept although still that busy",
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
            *self._saved_lines(),
            f"best here: {best.describe()}. For crackscope inspect or daemon, put in the --config file "
            f"(or pass --session-workers {best.workers} --threads {best.threads}):",
            self.config_lines(),
        ]
        return "\n".join(lines)

    def _saved_lines(self) -> list[str]:
        if self.saved is None:
            return []
        if not self.trusted:
            return [
                f"saved in {self.saved} marked as not trusted ({self.busy_rounds} of {len(self.rounds)} rounds "
                "busy): inspect and daemon keep their default layout; run crackscope bench again when the machine "
                "is quieter"
            ]
        return [
            f"saved for this machine in {self.saved}: inspect and daemon run this model file with this layout unless "
            "given --session-workers or --threads"
        ]

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
    try:
        saved = save_for_machine(result, config.model, first_provider(config.providers))
    except OSError as error:  # a read-only model folder: the measurement still stands, printed and in --out
        print(
            f"note: the result is not saved beside the model, so inspect and daemon will not use it by default: "
            f"{error}",
            file=sys.stderr,
        )
        return result
    return dataclasses.replace(result, saved=saved)


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


# --- the result saved beside the model, and the layout inspect and daemon take from it -----------------------------


def bench_path(model: str | os.PathLike) -> Path:
    """The bench file beside a model: ``model.int8.onnx`` -> ``model.int8.bench.json`` (one per model file)."""
    model = Path(model)
    stem = model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.name
    return model.with_name(f"{stem}.bench.json")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``; elsewhere what :mod:`platform` says)."""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text(errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                return " ".join(value.split())
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_key() -> str:
    """This machine as saved bench results are keyed: ``host | CPU model | N cores`` (cores usable here).

    A layout measured on one machine says little about another, nor about this one given fewer cores.
    """
    return f"{socket.gethostname()} | {cpu_model()} | {usable_cores()} cores"


def first_provider(providers: str | Sequence[str]) -> str:
    """The provider a model opened with ``providers`` asks for first here (the one a layout is measured on)."""
    with warnings.catch_warnings():  # opening the model warns about a missing provider; once is enough
        warnings.simplefilter("ignore")
        return resolve_providers(providers, ort.get_available_providers())[0]


def save_for_machine(result: BenchResult, model: str | os.PathLike, provider: str) -> Path:
    """Save ``result`` as this machine's entry of the bench file beside ``model``; returns that file.

    The entries of other machines are kept and this machine's is replaced; the file is replaced in one step (a
    reader never sees half of it). An existing file that cannot be read is replaced: its entries could not be used.
    ``provider`` is the one the run asked for first (:func:`first_provider`), which a later run must ask for too.

    Raises:
        OSError: the model's folder cannot be written.
    """
    path = bench_path(model)
    try:
        machines = _read_machines(path) if path.exists() else {}
    except (OSError, ValueError):
        machines = {}
    key = machine_key()
    best = result.best
    machines[key] = {
        "machine": key,
        "model_sha256": file_sha256(Path(model)),
        "best": {"session_workers": best.layout.workers, "threads": best.layout.threads},
        "frames_per_s": best.frames_per_s,
        "frame": list(result.frame),
        "provider": provider,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_before": result.load_before,
        "load_after": result.load_after,
        "busy_rounds": result.busy_rounds,
        "rounds": len(result.rounds),
        "trusted": result.trusted,
        "result": result.to_dict(),
    }
    document = {"crackscope_bench": SAVED_FORMAT, "model": Path(model).name, "machines": machines}
    with replacing(path) as partial:
        partial.write_text(json.dumps(document, indent=2))
    return path


def _read_machines(path: Path) -> dict[str, Any]:
    """The entries of a bench file by machine key (a ValueError saying what is wrong with it)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("machines"), dict):
        raise ValueError("no 'machines' mapping at the top level")
    return dict(document["machines"])


@dataclass(frozen=True)
class SavedBench:
    """One machine's entry of a bench file, as far as choosing a layout needs it."""

    model_sha256: str
    layout: Layout
    frames_per_s: float
    frame: tuple[int, int]
    provider: str
    measured_at: datetime
    busy_rounds: int
    rounds: int
    trusted: bool


def _parse_entry(entry: Any, where: str) -> SavedBench:
    """A :class:`SavedBench` from a saved entry, each value's type checked (a ValueError naming the key)."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    try:
        best = check_value(dict[str, int | None], entry["best"], f"{where}.best")
        return SavedBench(
            model_sha256=check_value(str, entry["model_sha256"], f"{where}.model_sha256"),
            layout=Layout(best["session_workers"], best.get("threads")),
            frames_per_s=check_value(float, entry["frames_per_s"], f"{where}.frames_per_s"),
            frame=check_value(tuple[int, int], entry["frame"], f"{where}.frame"),
            provider=check_value(str, entry["provider"], f"{where}.provider"),
            measured_at=datetime.fromisoformat(check_value(str, entry["measured_at"], f"{where}.measured_at")),
            busy_rounds=check_value(int, entry["busy_rounds"], f"{where}.busy_rounds"),
            rounds=check_value(int, entry["rounds"], f"{where}.rounds"),
            trusted=check_value(bool, entry["trusted"], f"{where}.trusted"),
        )
    except KeyError as error:
        raise ValueError(f"{where}: no {error.args[0]!r}") from None


@dataclass(frozen=True)
class SavedLayout:
    """What the bench file beside a model says for a run here: the layout to use, or why its result does not apply.

    ``note`` is the one line a run prints either way: where its layout comes from, or why it runs the default.
    """

    file: Path
    layout: Layout | None  # None: the saved result does not apply here, see note
    note: str


def saved_layout(model: str | os.PathLike, providers: str | Sequence[str] = "auto") -> SavedLayout | None:
    """The best layout saved by ``crackscope bench`` beside ``model`` for this machine, or why it does not apply.

    It applies when the file has an entry for this machine (:func:`machine_key`) whose sha256 is the model file's,
    measured asking for the provider that ``providers`` asks for first here, and trusted (not mostly busy rounds).
    A file that cannot be read is reported the same way, in one line naming it. None when there is no file.
    """
    path = bench_path(model)
    if not path.exists() or not Path(model).is_file():
        return None
    key = machine_key()
    try:
        machines = _read_machines(path)
        entry = _parse_entry(machines[key], f"machines[{key!r}]") if key in machines else None
        sha256 = file_sha256(Path(model))
    except (OSError, ValueError) as error:  # a JSON error is a ValueError too
        return _not_used(path, f"{path} is not a readable crackscope bench result ({error}); run crackscope bench")
    if entry is None:
        others = "; ".join(sorted(machines)) or "no machine"
        return _not_used(path, f"{path} was measured on {others}, not this machine ({key}); run crackscope bench here")
    reason = _why_not(entry, sha256, first_provider(providers))
    if reason:
        return _not_used(path, f"the crackscope bench result in {path} {reason}")
    width, height = entry.frame
    when = entry.measured_at.strftime("%Y-%m-%d %H:%M %Z").strip()
    note = (
        f"session layout {entry.layout.describe()} from crackscope bench of {path} ({when}, "
        f"{entry.frames_per_s:.2f} frames/s at {width}x{height})"
    )
    return SavedLayout(path, entry.layout, note)


def _why_not(entry: SavedBench, sha256: str, provider: str) -> str | None:
    if entry.model_sha256 != sha256:
        return (
            f"was measured for another version of the model (sha256 {entry.model_sha256[:12]}, the file is now "
            f"{sha256[:12]}); run crackscope bench again"
        )
    if entry.provider != provider:
        return f"was measured on {entry.provider}, and this run asks for {provider}; run crackscope bench with it"
    if not entry.trusted:
        return (
            f"is marked as not trusted (other processes took the CPU in {entry.busy_rounds} of {entry.rounds} "
            "rounds); run crackscope bench again when the machine is quieter"
        )
    return None


def _not_used(path: Path, reason: str) -> SavedLayout:
    return SavedLayout(path, None, f"session layout {Layout().describe()} (the default): {reason}")


def choose_layout(
    model: str | os.PathLike,
    session_workers: int | None,
    threads: int | None,
    *,
    mode: str = "tiled",
    providers: str | Sequence[str] = "auto",
) -> tuple[Layout, SavedLayout | None]:
    """The session layout a run of ``inspect`` or ``daemon`` uses, and the saved bench result it consulted.

    Given ``session_workers`` or ``threads`` (flag or config key), that layout, an unset ``session_workers`` being
    1: what is given always wins. Given neither, the saved layout for this machine (:func:`saved_layout`) where it
    applies, else 1 session x ONNX Runtime's default threads; the :class:`SavedLayout`'s note says which and why.
    In dense mode nothing is looked up: bench measures tile models, and a dense graph runs one session.
    """
    if session_workers is not None or threads is not None:
        return Layout(1 if session_workers is None else session_workers, threads), None
    if mode != "tiled":
        return Layout(), None
    saved = saved_layout(model, providers)
    return (saved.layout if saved is not None and saved.layout is not None else Layout()), saved
