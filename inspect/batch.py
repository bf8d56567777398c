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

Given neither ``session_workers`` nor ``threads``, the model runs the session layout that ``crackscope bench`` saved
beside it for this machine, when that result is for this very model file (one line on stderr says so, or says why
the saved result was not used); see :func:`~crackscope.inspect.bench.choose_layout`.

Example:
    $ crackscope inspect photos/ --model model.int8.onnx --out runs/line3 --fail-on defect
"""

from __future__ import annotations

import errno
import glob
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

import cv2
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
from crackscope.inspect.pipeline import FrameInspection, InspectConfig, describe_mode, inspect_frames
from crackscope.inspect.report import write_report
from crackscope.inspect.results import InspectionResult, error_result
from crackscope.inspect.runs import OutputLock, check_output_folder, stop_on_signals
from crackscope.inspect.sinks import REVIEW_DIR, ResultStore, SavePolicy, record_inspection, remove_partials
from crackscope.inspect.tiling import stride_for

log = logging.getLogger(__name__)

FAIL_ON = {"defect": (Verdict.DEFECT,), "review": (Verdict.DEFECT, Verdict.REVIEW), "error": (Verdict.ERROR,)}
EXIT_FAILED_GATE = 3
SKIPPED_LISTED = 10  # skipped entries named in the summary (the log names them all)


class InputError(ValueError):
    """An input argument that names nothing to inspect."""


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

    def __post_init__(self) -> None:
        SavePolicy(self.save_overlays)  # raises with the allowed values
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
            f"store:   {self.out / 'results.sqlite'} and results.jsonl",
        ]
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
    out = check_output_folder(config.out)
    found = find_inputs(config.inputs, exclude=out)
    for entry in found.skipped:
        log.warning("%s: not inspected: %s", entry.path, entry.reason)
    if not found.files:
        raise InputError(f"nothing to inspect in {', '.join(config.inputs)} (no image files found)")
    started = time.perf_counter()
    config = _settle_layout(config)
    with stop_on_signals(stop, "the batch in flight") as received, _open(config) as model:
        _announce(model, len(found.files), config.inspect)
        with OutputLock(out), ResultStore(out) as store:
            store.claim(model.model_id, str(model.path), model.card)
            remove_partials(out)
            write_yaml(config, out / "inspect-config.yaml")  # the resolved config, to repeat the run exactly
            inspected, skipped = _inspect_all(model, found.files, store, config, stop)
            counts = store.counts()
            report = write_report(store, out) if config.report else None
    failed = any(counts[v.value] for v in config.gate)
    seconds = time.perf_counter() - started
    stopped_by = received[0] if received else None
    return BatchSummary(out, counts, inspected, skipped, seconds, report, failed, found.skipped, stopped_by)


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
    model: RuntimeModel, files: Sequence[Path], store: ResultStore, config: BatchConfig, stop: threading.Event
) -> tuple[int, int]:
    done = store.done_keys()
    policy = SavePolicy(config.save_overlays)
    verdicts: Counter[str] = Counter()
    inspected = skipped = 0
    bar = tqdm(total=len(files), unit="img", disable=not config.progress, desc="inspect", dynamic_ncols=True)
    with bar:
        for batch, n_skipped in _batches(_loaded_in_order(files, done, config), model.input_size, config.inspect):
            if stop.is_set():
                break
            skipped += n_skipped
            records = _inspect_batch(model, batch, store.folder, policy, config.inspect)
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


def _with_inspections(
    model: RuntimeModel, batch: list[_Loaded], config: InspectConfig
) -> list[tuple[_Loaded, FrameInspection | None]]:
    """Inspect the decoded inputs together; if that fails, one by one, so one bad frame costs only its own record."""
    good = [item for item in batch if item.frame is not None]
    try:
        inspections = iter(inspect_frames(model, [item.frame.image for item in good], config) if good else [])
        return [(item, next(inspections) if item.frame is not None else None) for item in batch]
    except (ValueError, cv2.error, MemoryError) as error:  # a frame the pipeline cannot take: its own ERROR record
        if len(batch) == 1:
            return [(replace(batch[0], frame=None, error=f"cannot inspect this image ({error})"), None)]
    return [pair for item in batch for pair in _with_inspections(model, [item], config)]


def _tiles_along(length: int, size: int, stride: int) -> int:
    return 1 if length <= size else -(-(length - size) // stride) + 1


def _inspect_batch(
    model: RuntimeModel, batch: list[_Loaded], folder: Path, policy: SavePolicy, config: InspectConfig
) -> list[InspectionResult]:
    batch = _with_inspections(model, batch, config)
    records = []
    for item, inspection in batch:
        if inspection is None:
            records.append(error_result(str(item.path), item.sha256, model.model_id, item.error or "unreadable"))
            continue
        records.append(
            record_inspection(
                folder,
                item.frame.image,
                inspection,
                source=str(item.path),
                sha256=item.sha256,
                model_id=model.model_id,
                policy=policy,
                timings={"read": item.seconds},
            )
        )
    return records
