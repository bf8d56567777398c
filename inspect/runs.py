"""What batch runs and the daemon share around inspecting: their results folder, and how they stop.

* :func:`check_output_folder` refuses an ``--out`` that cannot be a folder (a regular file, or a path under one) with
  one line, before a model is loaded.
* :class:`OutputLock` (a context manager) creates the folder and holds ``OUT/crackscope.lock`` for the whole run, so
  a second writer (batch run or daemon) is refused with one line naming the process that holds it. The lock is an
  advisory ``flock`` on that file, which the kernel releases when its process ends however it ends (``kill -9``
  too): a lock file left behind by a dead process is taken over, with a warning naming it. The file is removed on
  a clean exit.
* :func:`stop_on_signals` turns SIGTERM and SIGINT into a stop event, so what is in flight is finished and committed
  instead of being cut short by ``KeyboardInterrupt``.
* :func:`check_output` reads ``--out``, ``--artefacts``, ``--line`` and ``--station`` as an :class:`Output`: a
  results folder (SQLite + JSONL, its saved images in its ``review/``), or a PostgreSQL URL (a plant store) with a
  local folder for the saved images, the resolved config and the report (``--artefacts DIR``) and the line the
  records come from (``--line``), both required there; the station is the host name unless given.

A plant store is written by many batch workers and daemons at once: the database keeps each input's record once
(unique key, one transaction per batch), so nothing is locked there. Their ``--artefacts`` folder may be shared
too (a network folder the review also reads): saved images have names unique to their input and are written under
a temporary name, then renamed; what each writer writes once per run is named with its line and station
(``inspect-config.<line>-<station>.yaml``, ``report.<line>-<station>.html``; the host name stands in for a station not
given); and a ``*.partial`` file is taken for the leftover of a killed writer only once it is an hour old. So
:class:`OutputLock` takes no lock on an artefacts folder (``shared``): it only creates it.

Example:
    >>> check_output_folder("runs/line3")                     # doctest: +SKIP
    >>> with OutputLock("runs/line3"):                        # doctest: +SKIP
    ...     ...                                               # only this process writes runs/line3 now
    >>> output = check_output("postgresql://qa@db/plant", "/data/artefacts", line="3", station="cam1")
    >>> output.shared, output.file("report.html").name
    (True, 'report.3-cam1.html')
    >>> check_output("runs/line3", line="3", station=None).store   # doctest: +SKIP
    'runs/line3'
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import socket
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crackscope.inspect.database import is_database_url, redact

log = logging.getLogger(__name__)

LOCK_NAME = "crackscope.lock"
MAX_LABEL = 64  # characters of a line or station name
STALE_PARTIAL_S = 3600.0  # a .partial file in a shared folder this old is a killed writer's leftover


class OutputError(ValueError):
    """A results folder that cannot be used: not a folder, cannot be created, or in use by another run."""


def check_output_folder(out: str | os.PathLike, *, flag: str = "--out", locked: bool = True) -> Path:
    """``out`` as a Path, or an :class:`OutputError` if it, or the nearest existing folder above it, is not a folder,
    or if another run holds its lock (checked early, so the refusal comes before a model is loaded; not for a folder
    many writers share, ``locked=False``). ``flag`` names the option in the message."""
    out = Path(out)
    for folder in (out, *out.parents):
        if not (folder.exists() or folder.is_symlink()):
            continue
        if folder.is_dir():
            if locked:
                _check_not_in_use(out)
            return out
        if folder == out:
            raise OutputError(f"{flag} {out} exists and is not a folder")
        raise OutputError(f"{flag} {out}: {folder} is a file, so no folder can be made under it")
    return out


@dataclass(frozen=True)
class Output:
    """Where a run writes.

    Attributes:
        store: the results store: a results folder, or a PostgreSQL URL.
        folder: where saved images, the resolved config and the report go: the results folder itself, or the
            ``--artefacts`` folder of a PostgreSQL store (record paths are relative to it).
        shared: whether many writers share the store and the folder (a PostgreSQL store): no lock, files named
            with :attr:`tag`.
        line, station: what the run's records are tagged with (None: not told).
    """

    store: str
    folder: Path
    shared: bool = False
    line: str | None = None
    station: str | None = None

    @property
    def tag(self) -> str:
        """``<line>-<station>``, file-name safe: what a shared folder's per-writer files carry."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.line or 'any'}-{self.station or 'any'}")[:100]

    @property
    def name(self) -> str:
        """The store for messages: the folder, or the URL without its password."""
        return redact(self.store) if self.shared else str(self.folder)

    def file(self, name: str) -> Path:
        """Where the run's file ``name`` (``report.html``, ``daemon.yaml``) goes: in a shared folder with the tag
        before its suffix, so writers that share the folder do not overwrite each other's."""
        if not self.shared:
            return self.folder / name
        stem, dot, suffix = name.rpartition(".")
        return self.folder / (f"{stem}.{self.tag}.{suffix}" if dot else f"{name}.{self.tag}")

    @property
    def stale_partial_s(self) -> float:
        """Age from which a ``*.partial`` file is a killed writer's leftover (any age in a folder locked to us)."""
        return STALE_PARTIAL_S if self.shared else 0.0


def check_output(
    out: str | os.PathLike,
    artefacts: str | os.PathLike | None = None,
    *,
    line: str | None = None,
    station: str | None = None,
) -> Output:
    """``--out``, ``--artefacts``, ``--line`` and ``--station`` read and checked (see the module docstring), before a
    model is loaded.

    Raises:
        OutputError: an unusable folder, one in use by another run, a PostgreSQL ``--out`` without ``--artefacts``
            or ``--line``, a results folder with ``--artefacts``, a line or station name that is not 1 to 64
            printable characters.
    """
    try:
        line, station = check_label("--line", line), check_label("--station", station)
    except ValueError as error:
        raise OutputError(str(error)) from None
    if is_database_url(out):
        name = redact(str(out))
        if not artefacts:
            raise OutputError(
                f"--out {name} is a PostgreSQL store: give --artefacts DIR, the local folder for the saved images, the "
                "resolved config and the report"
            )
        if line is None:
            raise OutputError(
                f"--out {name} is a PostgreSQL store of many lines: give --line NAME, the line these records come from"
            )
        folder = check_output_folder(artefacts, flag="--artefacts", locked=False)
        return Output(str(out), folder, shared=True, line=line, station=station or socket.gethostname())
    if artefacts:
        raise OutputError(
            f"--artefacts is for a PostgreSQL --out; the results folder {out} keeps its saved images in its review/"
        )
    return Output(str(out), check_output_folder(out), line=line, station=station)


def check_label(name: str, value: str | None) -> str | None:
    """A line or station name as stored: None when not given, else trimmed, 1 to 64 printable characters.

    Raises:
        ValueError: naming ``name`` and the rule.
    """
    if value is None or value == "":
        return None
    cleaned = " ".join(str(value).split())
    if not cleaned or len(cleaned) > MAX_LABEL or not cleaned.isprintable():
        raise ValueError(f"{name} must be 1 to {MAX_LABEL} printable characters, got {value!r}")
    return cleaned


def _check_not_in_use(folder: Path) -> None:
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputError(_in_use(folder, _holder(fd))) from None
    except OSError:
        pass  # a file system without locks: OutputLock says so
    finally:
        os.close(fd)


def _in_use(folder: Path, holder: str) -> str:
    return (
        f"--out {folder} is in use by another crackscope run ({holder or 'another process'}); "
        "wait for it to end or use another --out folder"
    )


class OutputLock:
    """The results folder, created and locked against a second writer for as long as the ``with`` block runs.

    A ``shared`` folder (the ``--artefacts`` folder of a PostgreSQL store, which many writers may share) is only
    created, not locked: see the module docstring.
    """

    def __init__(self, folder: str | os.PathLike, *, shared: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.shared = shared
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        flag = "--artefacts" if self.shared else "--out"
        check_output_folder(self.folder, flag=flag, locked=not self.shared)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"{flag} {self.folder}: cannot create the folder ({error.strerror or error})") from error
        if not self.shared:
            self._fd = self._acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # still holding the lock: a process that opened the old file sees it is gone
        os.close(self._fd)
        self._fd = None

    def _acquire(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise OutputError(f"--out {self.folder}: cannot write there ({error.strerror or error})") from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise OutputError(_in_use(self.folder, holder)) from None
            except OSError as error:  # a file system without locks: run, but say that nothing guards the folder
                log.warning("%s: cannot be locked (%s); a second run would not be refused", self.path, error)
                break
            if _same_file(fd, self.path):  # not removed by a holder that finished between our open and lock
                break
            os.close(fd)
        earlier = _holder(fd)
        if earlier:
            log.warning("%s: taking over the lock left by %s, which is no longer running", self.path, earlier)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        return fd


def _holder(fd: int) -> str:
    """Who holds (or held) the lock, as its holder wrote it."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return os.pread(fd, 200, 0).decode().strip()
    return ""


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except OSError:
        return False


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, in_flight: str = "the frames in flight") -> Iterator[list[signal.Signals]]:
    """SIGTERM and SIGINT set ``stop`` (``in_flight`` is finished first); yields the signals received, in order.

    Only the main thread can install handlers: elsewhere nothing is installed and the caller sets ``stop`` itself.
    """
    received: list[signal.Signals] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(number: int, _frame: types.FrameType | None) -> None:
        name = signal.Signals(number).name
        if stop.is_set():
            log.warning("%s again: already stopping", name)
        else:
            log.warning("%s: finishing %s, then stopping", name, in_flight)
        received.append(signal.Signals(number))
        stop.set()

    previous = {number: signal.signal(number, handler) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
