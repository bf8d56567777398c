"""Batch runs: inspect files, folders and globs into a results folder, resumably, with a report.

Decoding runs in a thread pool a few files ahead of the model (OpenCV releases the GIL while it decodes), so the
model never waits for JPEG decoding; tiles of small images share model batches. Every input gets exactly one
record: an unreadable, truncated, empty or oversized file, or one the pipeline cannot take, gets an ERROR record with
the reason and the run goes on (float and signed-integer TIFFs are converted, see :mod:`.images`). Folder entries
that are not inputs (broken or looping symbolic links, links to folders, which are not followed, a folder named like
an image, the results folder itself when it lies inside an input folder) are counted, logged and listed in the
summary, never skipped in silence.

The results folder is locked for the run (:class:`~crackscope.inspect.runs.OutputLock`), so a second run or daemon
on it is refused with one line. SIGINT (Ctrl-C) and SIGTERM finish the batch in flight, store it, write the report
and return; the exit code is then 128 + the signal's number (130 for Ctrl-C), and the same command resumes.

A run can be repeated or resumed after a crash or ``kill -9``: inputs whose (path, sha256) is already in
``results.sqlite`` are skipped, so nothing is inspected twice and nothing is lost (see :mod:`.sinks`).

``--out`` may also be a PostgreSQL URL, a plant store that many batch workers and daemons write at once, with
``--artefacts DIR`` for the saved images and ``--line`` naming the line (:func:`~crackscope.inspect.runs.check_output`).
Resuming works the same there. ``--shard I/N`` splits a large input list over N machines: each inspects the inputs
whose path hashes to its share (:class:`Shard`), so the N runs together inspect every input exactly once. The
machines must see the inputs at the same paths (a path is also the resume key); a shard that gets no input completes
with nothing inspected.

Given neither ``session_workers`` nor ``threads``, the model runs the session layout that ``crackscope bench`` saved
beside it for this machine, when that result is for this very model file (one line on stderr says so, or says why
the saved result was not used); see :func:`~crackscope.inspect.bench.choose_layout`.

Example:
    $ crackscope inspect photos/ --model model.int8.onnx --out runs/line3 --fail-on defect
    $ crackscope inspect /mnt/batch/ --model model.onnx --out postgresql://qa@db/plant --artefacts /data/artefacts \
        --line 3 --shard 0/4
"""

from __future__ import annotations

import errno
import glob
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from crackscope.config import write_yaml
from crackscope.inspect.bench import choose_layout
from crackscope.inspect.decision import Verdict, describe_calibration, is_identity
from crackscope.inspect.images import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    LoadedFrame,
    file_digest,
    is_image_file,
    load_frame,
)
from crackscope.inspect.model import Layout, RuntimeModel, open_model
from crackscope.inspect.pipeline import InspectConfig, describe_mode
from crackscope.inspect.records import Input, frames_to_records
from crackscope.inspect.report import write_report
from crackscope.inspect.results import InspectionResult
from crackscope.inspect.runs import Output, OutputLock, check_label, check_output, stop_on_signals
from crackscope.inspect.schema import RecordFilter
from crackscope.inspect.sinks import REVIEW_DIR, ResultStore, SavePolicy, remove_partials
from crackscope.inspect.tiling import stride_for

log = logging.getLogger(__name__)

FAIL_ON = {"defect": (Verdict.DEFECT,), "review": (Verdict.DEFECT, Verdict.REVIEW), "error": (Verdict.ERROR,)}
EXIT_FAILED_GATE = 3
SKIPPED_LISTED = 10  # skipped entries named in the summary (the log names them all)


class InputError(ValueError):
    """An input argument that names nothing to inspect."""


@dataclass(frozen=True)
class Shard:
    """Share ``index`` of ``count`` (``--shard I/N``, ``0 <= I < N``): the inputs whose path hashes to ``index``.

    The hash is the first 8 bytes of the path's SHA-256, modulo ``count``: the same on every machine and Python
    (not :func:`hash`, which is salted per process), so N runs given the same inputs split them into N disjoint
    shares that together hold every input, about equally large.

    Example:
        >>> Shard.parse("1/4")
        Shard(index=1, count=4)
        >>> [Shard(i, 3).holds("/data/a.png") for i in range(3)].count(True)
        1
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard I/N needs 0 <= I < N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` as a Shard; a ValueError of one line for anything else."""
        index, slash, count = str(text).strip().partition("/")
        if not (slash and index.isdigit() and count.isdigit()):
            raise ValueError(f"--shard takes I/N (this machine's share I of N, 0 <= I < N), got {text!r}")
        return cls(int(index), int(count))

    def holds(self, path: str | os.PathLike) -> bool:
        digest = hashlib.sha256(os.fsencode(path)).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def describe(self) -> str:
        return f"shard {self.index}/{self.count}"


@dataclass(frozen=True)
class BatchConfig:
    """What ``crackscope inspect`` does (YAML ``--config`` < flags)."""

    inputs: tuple[str, ...] = ()
    model: str = ""
    out: str = "inspect-out"
    save_overlays: str = "defect"  # defect (DEFECT and REVIEW) | all | none
    fail_on: str | None = None  # defect | review | error, or several joined by commas: exit 3 when any input has one
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_workers: int = 2
    prefetch: int = 8  # files decoded ahead of the model
    providers: str = "auto"
    # ONNX Runtime sessions fed from one queue of tile batches, and intra-op threads per session. Neither given: the
    # layout crackscope bench saved beside the model for this machine, else 1 session x one thread per core.
    session_workers: int | None = None
    threads: int | None = None
    progress: bool = True
    report: bool = True
    inspect: InspectConfig = field(default_factory=InspectConfig)
    artefacts: str | None = None  # with a PostgreSQL --out: the folder for saved images, this config and the report
    line: str | None = None  # the production line the records come from (required with a PostgreSQL --out)
    station: str | None = None  # the station (camera, machine); with a PostgreSQL --out, the host name by default
    shard: str | None = None  # "I/N": inspect only share I of N of the inputs (Shard)

    def __post_init__(self) -> None:
        SavePolicy(self.save_overlays)  # raises with the allowed values
        check_label("line", self.line)
        check_label("station", self.station)
        self.shard_spec  # noqa: B018  (parses "I/N", raising one line for anything else)
        if self.fail_on is not None and not set(self.fail_on.split(",")) <= set(FAIL_ON):
            raise ValueError(f"fail_on must be {', '.join(FAIL_ON)} or several joined by commas, got {self.fail_on!r}")
        if self.decode_workers < 1 or self.prefetch < 1 or self.max_pixels < 1:
            raise ValueError("decode_workers, prefetch and max_pixels must be at least 1")
        self.layout  # noqa: B018  (builds the Layout, which raises naming the key for a value below 1)

    @property
    def gate(self) -> frozenset[Verdict]:
        """The verdicts that fail the run (``fail_on``)."""
        names = self.fail_on.split(",") if self.fail_on else []
        return frozenset(verdict for name in names for verdict in FAIL_ON[name])

    @property
    def shard_spec(self) -> Shard | None:
        """``shard`` parsed (None: every input)."""
        return Shard.parse(self.shard) if self.shard else None

    @property
    def layout(self) -> Layout:
        """Sessions x threads as given (``session_workers`` unset: 1); :func:`run_batch` first fills in a saved one
        when neither is given."""
        return Layout(1 if self.session_workers is None else self.session_workers, self.threads)


@dataclass(frozen=True)
class SkippedEntry:
    """A folder entry or pattern match that is not an input, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class FoundInputs:
    """The files to inspect, in order, and the entries passed over on the way."""

    files: tuple[Path, ...]
    skipped: tuple[SkippedEntry, ...] = ()


@dataclass(frozen=True)
class BatchSummary:
    """What a batch run did."""

    out: Path
    counts: dict[str, int]  # verdict -> records in the store (this run and earlier ones)
    inspected: int  # inputs inspected in this run
    skipped: int  # inputs already recorded (resume)
    seconds: float
    report: Path | None
    failed_gate: bool
    skipped_entries: tuple[SkippedEntry, ...] = ()  # folder entries and pattern matches that are not inputs
    stopped_by: signal.Signals | None = None  # the signal that ended the run after the batch in flight
    store: str = ""  # a plant store's URL (password left out), with the line and station; empty: out's SQLite
    shard: str = ""  # which share of the inputs this run took, and how many that was

    @property
    def exit_code(self) -> int:
        """128 + the signal's number when a signal stopped the run, else 3 for a failed gate, else 0."""
        if self.stopped_by is not None:
            return 128 + int(self.stopped_by)
        return EXIT_FAILED_GATE if self.failed_gate else 0

    def describe(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        rate = self.inspected / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"inspected {self.inspected} input(s) in {self.seconds:.1f}s ({rate:.1f}/s), "
            f"{self.skipped} already recorded",
            f"results: {counts}",
            f"store:   {self.store or str(self.out / 'results.sqlite') + ' and results.jsonl'}",
        ]
        if self.shard:
            lines.insert(1, self.shard)
        if self.report:
            lines.append(f"report:  {self.report}")
        if self.skipped_entries:
            lines.append(f"skipped {len(self.skipped_entries)} entr(ies) that are not inputs:")
            lines += [f"  {entry.path}: {entry.reason}" for entry in self.skipped_entries[:SKIPPED_LISTED]]
            if len(self.skipped_entries) > SKIPPED_LISTED:
                lines.append(f"  ... and {len(self.skipped_entries) - SKIPPED_LISTED} more (all are in the log)")
        if self.stopped_by is not None:
            lines.append(f"stopped by {self.stopped_by.name} after the batch in flight; the same command resumes")
        return "\n".join(lines)


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """The files of :func:`find_inputs`, as a list."""
    return list(find_inputs(inputs).files)


def find_inputs(inputs: Sequence[str], exclude: str | os.PathLike | None = None) -> FoundInputs:
    """Files named, folders (recursively: image files only) and globs, in order, without duplicates.

    A file named explicitly is taken whatever its extension (a non-image gets an ERROR record, not silence); a
    path or pattern that matches nothing is an :class:`InputError` before anything is written. Symbolic links to
    files are followed, links to folders are not (a link to a parent would loop). ``exclude`` is the results
    folder: when it lies inside an input folder it is not searched, and when an input folder lies inside it, its
    ``review/`` images (written by the run) are not.
    """
    excluded = _excluded(inputs, exclude)
    found: dict[Path, None] = {}
    skipped: dict[Path, str] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = _walk(path, excluded, skipped)
        elif path.is_file():
            matches = [path]
        else:
            matches = _matching(item, excluded, skipped)
            if not matches:
                raise InputError(f"{item}: no such file or folder, and no file matches it as a pattern")
        found.update(dict.fromkeys(p.resolve() for p in matches))
    return FoundInputs(tuple(found), tuple(SkippedEntry(path, reason) for path, reason in skipped.items()))


def _excluded(inputs: Sequence[str], out: str | os.PathLike | None) -> dict[Path, str]:
    """Folders never searched for inputs, with the reason: the results folder, or only its review/ images when an
    input folder lies inside the results folder (``inspect out/ --out out/``)."""
    if out is None:
        return {}
    out = Path(out).resolve()
    folders = [Path(item).resolve() for item in inputs if Path(item).is_dir()]
    if any(folder == out or out in folder.parents for folder in folders):
        return {out / REVIEW_DIR: "images this run writes (--out's review/) are not inputs"}
    return {out: "the results folder (--out) is not an input"}


def _walk(root: Path, excluded: dict[Path, str], skipped: dict[Path, str]) -> list[Path]:
    """Image files under ``root``, sorted; what is passed over on the way goes into ``skipped`` with the reason."""
    files, folders = [], [root]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            skipped[folder] = f"folder cannot be listed ({error.strerror or error})"
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if path.resolve() in excluded:
                    skipped[path] = excluded[path.resolve()]
                    continue
                if is_image_file(path):
                    skipped[path] = "a folder with an image's name (its contents are searched)"
                folders.append(path)
            elif entry.is_symlink():
                target, reason = _link_target(path)
                if reason is not None:
                    skipped[path] = reason
                elif target.is_dir():
                    skipped[path] = "symbolic link to a folder (not followed)"
                elif is_image_file(path):
                    files.append(path)
            elif is_image_file(path):
                if entry.is_file(follow_symlinks=False):
                    files.append(path)
                else:
                    skipped[path] = "not a regular file (a pipe, socket or device)"
    return sorted(files)


def _link_target(path: Path) -> tuple[Path, str | None]:
    """Where a symbolic link leads, or why it leads nowhere."""
    try:
        return path.resolve(strict=True), None
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return path, "symbolic link loop"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return path, "symbolic link loop"
        if error.errno == errno.ENOENT:
            return path, "dangling symbolic link (its target does not exist)"
        return path, f"symbolic link that cannot be followed ({error.strerror or error})"


def _matching(pattern: str, excluded: dict[Path, str], skipped: dict[Path, str]) -> list[Path]:
    """Files a glob pattern matches, sorted; other matches go into ``skipped`` with the reason."""
    files = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        inside = next((folder for folder in excluded if folder in path.resolve().parents), None)
        if inside is not None:
            skipped[inside] = excluded[inside]
        elif path.is_file():
            files.append(path)
        elif path.is_dir():
            skipped[path] = "a folder matched by a pattern (name the folder itself to search it)"
        elif path.is_symlink():
            skipped[path] = _link_target(path)[1] or "symbolic link that cannot be followed"
        else:
            skipped[path] = "not a regular file (a pipe, socket or device)"
    return files


def run_batch(config: BatchConfig, *, stop: threading.Event | None = None) -> BatchSummary:
    """Inspect every input into ``config.out``; see the module docstring.

    ``stop`` (set by SIGINT or SIGTERM when called from the main thread) ends the run after the batch in flight.

    Raises:
        InputError, OutputError, ModelLoadError, StoreError: before anything is inspected.
    """
    stop = stop or threading.Event()
    output = check_output(config.out, config.artefacts, line=config.line, station=config.station)
    found = find_inputs(config.inputs, exclude=output.folder)
    for entry in found.skipped:
        log.warning("%s: not inspected: %s", entry.path, entry.reason)
    if not found.files:
        raise InputError(f"nothing to inspect in {', '.join(config.inputs)} (no image files found)")
    files, shard_note = _shard(found.files, config.shard_spec)
    started = time.perf_counter()
    config = _settle_layout(config)
    with stop_on_signals(stop, "the batch in flight") as received, _open(config) as model:
        _announce(model, len(files), config.inspect)
        with OutputLock(output.folder, shared=output.shared), _store(output) as store:
            store.claim(model.model_id, str(model.path), model.card)
            remove_partials(output.folder, output.stale_partial_s)
            # the resolved config, to repeat the run exactly (a store's password is not written down)
            write_yaml(replace(config, out=output.name if output.shared else config.out), output.file(_CONFIG_NAME))
            inspected, skipped = _inspect_all(model, files, store, output.folder, config, stop)
            scope = RecordFilter(line=output.line or "", station=output.station or "") if output.shared else None
            counts = store.counts(scope)
            report = _report(store, output, model, scope) if config.report else None
    failed = any(counts[v.value] for v in config.gate)
    seconds = time.perf_counter() - started
    stopped_by = received[0] if received else None
    store_name = f"{output.name} (line {output.line}, station {output.station})" if output.shared else ""
    return BatchSummary(
        output.folder,
        counts,
        inspected,
        skipped,
        seconds,
        report,
        failed,
        found.skipped,
        stopped_by,
        store=store_name,
        shard=shard_note,
    )


_CONFIG_NAME = "inspect-config.yaml"


def _shard(files: tuple[Path, ...], shard: Shard | None) -> tuple[tuple[Path, ...], str]:
    """The inputs of this run's share (all without a shard), and a line saying how many that is."""
    if shard is None:
        return files, ""
    mine = tuple(path for path in files if shard.holds(path))
    note = f"{shard.describe()}: {len(mine)} of {len(files)} input(s)"
    print(note, file=sys.stderr)
    return mine, note


def _store(output: Output) -> ResultStore:
    return ResultStore(output.store, line=output.line, station=output.station)


def _report(store: ResultStore, output: Output, model: RuntimeModel, scope: RecordFilter | None) -> Path:
    """``report.html`` of the results folder; of a plant store, the records of this line and station."""
    if not output.shared:
        return write_report(store, output.folder)
    meta = {"model_id": model.model_id, "model_path": str(model.path), "card": model.card.to_metadata()}
    return write_report(store, output.folder, path=output.file("report.html"), selection=scope, meta=meta)


def _settle_layout(config: BatchConfig) -> BatchConfig:
    """``config`` with the layout the run uses written in (as given, or a saved bench result's), said on stderr."""
    layout, saved = choose_layout(
        config.model, config.session_workers, config.threads, mode=config.inspect.mode, providers=config.providers
    )
    if saved is not None:
        print(saved.note, file=sys.stderr)
    return replace(config, session_workers=layout.workers, threads=layout.threads)


def _open(config: BatchConfig) -> RuntimeModel:
    inspect, layout = config.inspect, config.layout
    return open_model(
        config.model,
        inspect.mode,
        force_dense=inspect.force_dense,
        providers=config.providers,
        workers=layout.workers,
        intra_op_threads=layout.threads,
    )


def _announce(model: RuntimeModel, count: int, inspect_config: InspectConfig) -> None:
    calibration = model.card.calibration
    prefix = "note: " if is_identity(calibration) else ""
    print(f"{prefix}{model.path} is {describe_calibration(calibration)}", file=sys.stderr)
    print(
        f"inspecting {count} input(s) with {model.path.name} ({model.card.precision}, {model.providers[0]}, "
        f"{model.layout.describe()}), OK below {calibration.ok_below:.3f}, "
        f"DEFECT at or above {calibration.defect_at_or_above:.3f}; "
        f"{inspect_config.describe_scoring(model.card.part_scoring)}; {describe_mode(model, inspect_config)}",
        file=sys.stderr,
    )


@dataclass(frozen=True)
class _Loaded:
    path: Path
    frame: LoadedFrame | None
    error: str | None
    sha256: str
    seconds: float


def _load(path: Path, done: set[tuple[str, str]], max_pixels: int) -> _Loaded | None:
    """Decode one input (in a worker thread); None when it is already recorded."""
    started = time.perf_counter()
    try:
        frame = load_frame(path, max_pixels=max_pixels)
    except ImageReadError as error:
        sha = _sha_or_empty(path)
        return None if (str(path), sha) in done else _Loaded(path, None, error.reason, sha, 0.0)
    except Exception as error:  # no input may stop the run: an unforeseen failure is that input's ERROR record
        log.exception("%s: reading failed", path)
        sha = _sha_or_empty(path)
        return None if (str(path), sha) in done else _Loaded(path, None, f"cannot be read ({error})", sha, 0.0)
    if (str(path), frame.sha256) in done:
        return None
    return _Loaded(path, frame, None, frame.sha256, time.perf_counter() - started)


def _sha_or_empty(path: Path) -> str:
    try:
        return file_digest(path.read_bytes())
    except OSError:
        return ""


def _loaded_in_order(files: Sequence[Path], done: set, config: BatchConfig) -> Iterator[_Loaded | None]:
    """Decoded inputs in input order, ``prefetch`` files ahead of the consumer (a bounded queue)."""
    with ThreadPoolExecutor(config.decode_workers, thread_name_prefix="decode") as pool:
        pending: deque[Future] = deque()
        remaining = iter(files)
        for path in remaining:
            pending.append(pool.submit(_load, path, done, config.max_pixels))
            if len(pending) >= config.prefetch:
                break
        try:
            while pending:
                yield pending.popleft().result()
                following = next(remaining, None)
                if following is not None:
                    pending.append(pool.submit(_load, following, done, config.max_pixels))
        finally:
            for future in pending:  # a stopped run does not wait for files it will not inspect
                future.cancel()


def _inspect_all(
    model: RuntimeModel,
    files: Sequence[Path],
    store: ResultStore,
    folder: Path,
    config: BatchConfig,
    stop: threading.Event,
) -> tuple[int, int]:
    done = store.done_keys(sources=[str(path) for path in files])  # only this run's: a plant store holds millions
    policy = SavePolicy(config.save_overlays)
    verdicts: Counter[str] = Counter()
    inspected = skipped = 0
    bar = tqdm(total=len(files), unit="img", disable=not config.progress, desc="inspect", dynamic_ncols=True)
    with bar:
        for batch, n_skipped in _batches(_loaded_in_order(files, done, config), model.input_size, config.inspect):
            if stop.is_set():
                break
            skipped += n_skipped
            records = _inspect_batch(model, batch, folder, policy, config.inspect)
            store.add(records)
            inspected += len(records)
            verdicts.update(r.verdict.value for r in records)
            bar.update(len(records) + n_skipped)
            bar.set_postfix({k: verdicts[k] for k in ("DEFECT", "REVIEW", "ERROR") if verdicts[k]}, refresh=False)
    return inspected, skipped


def _batches(loaded: Iterable[_Loaded | None], size: int, config: InspectConfig) -> Iterator[tuple[list[_Loaded], int]]:
    """Group decoded inputs so each model call gets about ``max_batch`` tiles; count skipped ones with them."""
    batch: list[_Loaded] = []
    tiles = skipped = 0
    stride = stride_for(size, config.overlap)
    for item in loaded:
        if item is None:
            skipped += 1
            continue
        batch.append(item)
        if item.frame is not None:
            height, width = item.frame.image.shape[:2]
            tiles += _tiles_along(height, size, stride) * _tiles_along(width, size, stride)
        if tiles >= config.max_batch:
            yield batch, skipped
            batch, tiles, skipped = [], 0, 0
    if batch or skipped:
        yield batch, skipped


def _tiles_along(length: int, size: int, stride: int) -> int:
    return 1 if length <= size else -(-(length - size) // stride) + 1


def _inspect_batch(
    model: RuntimeModel, batch: list[_Loaded], folder: Path, policy: SavePolicy, config: InspectConfig
) -> list[InspectionResult]:
    inputs = [
        Input(
            str(item.path),
            item.sha256,
            None if item.frame is None else item.frame.image,
            item.error,
            {"read": item.seconds},
        )
        for item in batch
    ]
    return frames_to_records(model, inputs, config, folder=folder, policy=policy)
