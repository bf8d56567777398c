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

Example:
    >>> check_output_folder("runs/line3")                     # doctest: +SKIP
    >>> with OutputLock("runs/line3"):                        # doctest: +SKIP
    ...     ...                                               # only this process writes runs/line3 now
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = "crackscope.lock"


class OutputError(ValueError):
    """A results folder that cannot be used: not a folder, cannot be created, or in use by another run."""


def check_output_folder(out: str | os.PathLike) -> Path:
    """``out`` as a Path, or an :class:`OutputError` if it, or the nearest existing folder above it, is not a folder,
    or if another run holds its lock (checked early, so the refusal comes before a model is loaded)."""
    out = Path(out)
    for folder in (out, *out.parents):
        if not (folder.exists() or folder.is_symlink()):
            continue
        if folder.is_dir():
            _check_not_in_use(out)
            return out
        if folder == out:
            raise OutputError(f"--out {out} exists and is not a folder")
        raise OutputError(f"--out {out}: {folder} is a file, so no folder can be made under it")
    return out


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
    """The results folder, created and locked against a second writer for as long as the ``with`` block runs."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        check_output_folder(self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"--out {self.folder}: cannot create the folder ({error.strerror or error})") from error
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
