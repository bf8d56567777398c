"""Where frames come from: cameras, video streams and files (OpenCV), and hot folders of image files.

A source is a context manager that yields batches of :class:`Frame` (pixels, a source string that names the input,
an index, capture times and the sha256 that, with the source string, is the results store's resume key):

* :class:`CaptureSource` wraps ``cv2.VideoCapture`` (a camera index, a video file, an RTSP/HTTP URL). A reader
  thread keeps reading: with the ``latest`` policy (live streams) a frame that has not been taken when the next one
  arrives is dropped and counted, so the line is always judged on a fresh picture; with ``every`` (triggered
  cameras, video files) the reader waits for the inspector, so every frame gets a record. A camera that is absent
  at start or drops out is reopened with exponential backoff; the attempts are counted. A video file that stops
  short of the frame count in its header may end inside its last frame, which FFmpeg decodes half grey without an
  error: that frame becomes an ERROR frame (not inspected) unless the reopened file turns out to go on.
* :class:`HotFolderSource` watches a folder: an image is read once its size and modification time have stayed the
  same for ``settle_s`` (and names that writers use while writing, ``.x.jpg``, ``x.jpg.part``, are never
  candidates), then moved to ``processed/`` (or left in place) once its record is stored. A file that looks cut
  short (empty, truncated) is read again while it changes and gets its ERROR frame only once it has stayed the same
  for ``incomplete_s``, so a writer that pauses mid-file does not lose the finished file. Files whose
  ``(path, sha256)`` is already in the store are not inspected again, so a restarted daemon resumes. Entries with
  an image's name that are not files (a folder, a broken link) are logged once.

Example:
    >>> import threading
    >>> stop = threading.Event()
    >>> with open_source("line.avi", SourceOptions()) as source:      # doctest: +SKIP
    ...     for batch in source.batches(stop, max_frames=4):
    ...         for frame in batch:
    ...             print(frame.source, frame.image.shape)             # line.avi#000000 (480, 640, 3)
    ...             source.ack(frame)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from crackscope.inspect.images import DEFAULT_MAX_PIXELS, ImageReadError, file_digest, is_image_file, load_frame

log = logging.getLogger(__name__)

STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})


class SourceError(ValueError):
    """A source that cannot be used at all (as opposed to one that is absent for now and retried)."""


class Policy(str, Enum):
    """What the reader does when the inspector is busy."""

    LATEST = "latest"  # keep only the newest frame, drop (and count) the stale ones: live cameras and streams
    EVERY = "every"  # wait for the inspector, so every frame is inspected: triggered cameras and video files


class SourceState(str, Enum):
    CONNECTING = "connecting"  # first attempt to open, or waiting for a source absent at start
    OPEN = "open"
    RECONNECTING = "reconnecting"  # dropped out; reopening with backoff
    ENDED = "ended"  # a video file read to its end
    FAILED = "failed"  # gave up after the configured number of attempts
    CLOSED = "closed"


@dataclass(frozen=True)
class Frame:
    """One input to inspect.

    Attributes:
        image: uint8 BGR pixels, or None when the input could not be decoded (then ``error`` says why).
        source: ``<video or stream>#<index>`` (six digits) for captured frames, the file's path for hot-folder files.
        index: position in the video file, frames read since start for live sources, files seen for hot folders.
        time: when the reader handed it on (Unix seconds): when it was read, or for a video file's frame, which
            waits for the next one to be read, when it was released; for records and health.
        monotonic: the same moment on ``time.monotonic()``, for latency.
        sha256: of the raw pixels (captured frames) or of the file's bytes (hot-folder files).
        error: why ``image`` is None.
    """

    image: np.ndarray | None = field(repr=False)
    source: str
    index: int
    time: float
    monotonic: float
    sha256: str
    error: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """The results store's resume key."""
        return (self.source, self.sha256)


@dataclass(frozen=True)
class SourceStatus:
    """A snapshot of a source for ``/healthz`` and ``/metrics``."""

    name: str
    kind: str  # camera | stream | video | folder
    state: SourceState
    frames_read: int = 0  # including dropped ones
    dropped: int = 0
    reconnects: int = 0  # open attempts after a failed attempt or a drop-out
    queue_depth: int = 0  # frames read and not yet taken (files seen and not yet inspected, for folders)
    resumed: int = 0  # inputs found already in the results store, so not read again (hot folders)
    last_frame_time: float | None = None
    last_error: str | None = None

    @property
    def up(self) -> bool:
        return self.state in (SourceState.OPEN, SourceState.ENDED)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between attempts to (re)open a source.

    Attributes:
        initial_s: wait after the first failed attempt.
        max_s: the longest wait.
        factor: growth per failed attempt.
        attempts: give up after this many failed attempts in a row (None: never, the right thing on a line).
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.factor < 1:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s and factor >= 1, got {self}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"backoff attempts must be at least 1 (or unset), got {self.attempts}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` (>= 1) failed attempts in a row."""
        return min(self.max_s, self.initial_s * self.factor ** max(0, failures - 1))


@dataclass(frozen=True)
class HotFolderConfig:
    """How a hot folder is watched.

    Attributes:
        settle_s: a file is read once its size and modification time have not changed for this long.
        incomplete_s: a file that reads as cut short (empty, truncated) is read again while it changes; it gets its
            ERROR frame once it has not changed for this long (a writer may pause mid-file).
        poll_s: how often the folder is listed.
        after: ``move`` inspected files to ``processed`` (the default), or ``keep`` them in place.
        processed: folder for inspected files; a relative name is inside the hot folder.
        max_pixels: larger images get an ERROR record instead of being decoded (as in batch runs).
    """

    settle_s: float = 1.0
    incomplete_s: float = 10.0
    poll_s: float = 0.5
    after: Literal["move", "keep"] = "move"
    processed: str = "processed"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.settle_s < 0 or self.incomplete_s < 0 or self.poll_s <= 0 or self.max_pixels < 1:
            raise ValueError(
                f"hot folder needs settle_s >= 0, incomplete_s >= 0, poll_s > 0 and max_pixels >= 1, got {self}"
            )


@dataclass(frozen=True)
class SourceOptions:
    """Everything :func:`open_source` needs besides the source itself."""

    policy: Policy | None = None  # None: EVERY for files and folders, LATEST for cameras and streams
    queue_size: int = 8  # frames the reader may hold ahead of the inspector (EVERY)
    realtime: bool = False  # video files: deliver frames at the file's frame rate, as a camera would
    backoff: Backoff = field(default_factory=Backoff)
    hot_folder: HotFolderConfig = field(default_factory=HotFolderConfig)
    # Called (in the reader thread) with each captured frame as it is handed on, before it waits for room in the
    # queue: the daemon starts a frame's deadline clock here. Hot-folder frames are read in the consumer's thread.
    on_read: Callable[[Frame], None] | None = None


class FrameSource(Protocol):
    """What the daemon needs from a source."""

    name: str

    def __enter__(self) -> FrameSource: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def batches(self, stop: threading.Event, max_frames: int = 1) -> Iterator[list[Frame]]:
        """Frames as they come, up to ``max_frames`` of those already waiting at a time, until the source ends or
        ``stop`` is set."""
        ...

    def ack(self, frame: Frame) -> None:
        """The frame's record is stored (or it was deliberately skipped): the source may let go of it."""
        ...

    def status(self) -> SourceStatus: ...


def pixels_sha256(image: np.ndarray) -> str:
    return file_digest(np.ascontiguousarray(image))


def _sha256_of(path: Path) -> str | None:
    try:
        return file_digest(path.read_bytes())
    except OSError:
        return None


def redact_url(url: str) -> str:
    """The URL without its password, for logs and records (``rtsp://user:***@host/path``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# --- choosing a source ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """What a ``--source`` value means: a camera index, a stream URL, a video file or a hot folder."""

    kind: Literal["camera", "stream", "video", "folder"]
    target: int | str  # what cv2.VideoCapture is given, or the folder
    name: str  # how records and logs name it (absolute paths, no passwords)


def parse_source(value: str | int) -> SourceSpec:
    """Classify a source: digits are a camera index, ``scheme://`` a stream, a folder a hot folder, else a file.

    A video file that does not exist yet is accepted (it is waited for, like a camera absent at start); a path
    without an extension that does not exist is refused, because it is most likely a mistyped hot folder.
    """
    text = str(value).strip()
    if not text:
        raise SourceError("empty source: pass a camera index, a video file, a stream URL or a hot folder")
    if text.isdigit():
        return SourceSpec("camera", int(text), f"camera{int(text)}")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in STREAM_SCHEMES:
            raise SourceError(
                f"{redact_url(text)}: unsupported stream scheme {scheme!r} ({', '.join(sorted(STREAM_SCHEMES))})"
            )
        return SourceSpec("stream", text, redact_url(text))
    path = Path(text).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path.resolve()), str(path.resolve()))
    if path.exists() and not path.is_file():
        raise SourceError(f"{path}: neither a video file nor a folder")
    if not path.exists() and not path.suffix:
        raise SourceError(
            f"{path}: does not exist (a hot folder must exist before the daemon starts; a camera is a number, "
            "a stream a URL)"
        )
    return SourceSpec("video", str(path.resolve()), str(path.resolve()))


def open_source(value: str | int, options: SourceOptions, done: Collection[tuple[str, str]] = ()) -> FrameSource:
    """The source for a ``--source`` value (not started: use it in a ``with`` block).

    Args:
        value: camera index, video file, stream URL or hot folder.
        options: policy, queue, backoff and hot-folder settings.
        done: resume keys already in the results store; hot-folder files among them are not inspected again.

    Raises:
        SourceError: the value cannot be a source, or names an existing file OpenCV cannot read as video.
    """
    spec = parse_source(value)
    if spec.kind == "folder":
        return HotFolderSource(spec.target, options.hot_folder, done=done, backoff=options.backoff)
    if spec.kind == "video" and Path(spec.target).is_file():
        probe = cv2.VideoCapture(spec.target)
        try:
            if not probe.isOpened():
                raise SourceError(f"{spec.name}: not a video OpenCV can read")
        finally:
            probe.release()
    live = spec.kind in ("camera", "stream")
    policy = options.policy or (Policy.LATEST if live else Policy.EVERY)
    return CaptureSource(
        spec,
        policy=policy,
        queue_size=options.queue_size,
        backoff=options.backoff,
        realtime=options.realtime,
        on_read=options.on_read,
    )


# --- cameras, streams, video files ----------------------------------------------------------------------------------


class CaptureSource:
    """``cv2.VideoCapture`` read by a thread, with a latest/every policy and reconnection (a context manager).

    A video file ends when it has been read to the end. A file that stops short of the frame count in its header
    (cut, or still being written) is reopened like a dropped camera and read on from where it stopped; when the
    reopened file has no more frames the source ends, with a warning naming how far it got.

    The newest frame of a video file is held back until the next one has been read: a file cut inside a frame ends
    with a half-decoded picture that OpenCV returns as a good frame. A held frame is stamped when it is handed on,
    and a real-time replay reads each frame one frame early, so a held frame is handed on when it is due and its
    latency counts from then, as a camera frame's does. When the file stops short of its header's
    frame count, that last frame is read again after the reopen (whole, if the writer has finished it); if nothing
    follows it, it is delivered as an ERROR frame. A file whose header gives no frame count cannot be judged so: its
    last frame is delivered as read.
    """

    def __init__(
        self,
        spec: SourceSpec,
        *,
        policy: Policy = Policy.EVERY,
        queue_size: int = 8,
        backoff: Backoff | None = None,
        realtime: bool = False,
        on_read: Callable[[Frame], None] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.spec = spec
        self.name = spec.name
        # A live camera's frame numbers restart with the daemon: the start time keeps record names unique, so a
        # covered lens (identical pixels) at the same frame number after a restart is still a new record.
        live = spec.kind in ("camera", "stream")
        self._frame_prefix = f"{spec.name}@{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}" if live else spec.name
        self.policy = Policy(policy)
        self.queue_size = 1 if self.policy is Policy.LATEST else queue_size
        self.backoff = backoff or Backoff()
        self.realtime = realtime and spec.kind == "video"
        self._on_read = on_read
        self._cond = threading.Condition()
        self._queue: deque[Frame] = deque()
        self._closing = threading.Event()
        self._finished = False
        self._thread: threading.Thread | None = None
        self._state = SourceState.CONNECTING
        self._read = 0  # frames read in total; for a video file, the position to resume from after a reopen
        self._dropped = 0
        self._reconnects = 0
        self._last_time: float | None = None
        self._last_error: str | None = None
        self._suspect: Frame | None = None  # a video's last frame before it stopped short: perhaps cut mid-frame

    # --- lifetime -------------------------------------------------------------------------------------------------

    def __enter__(self) -> CaptureSource:
        self._thread = threading.Thread(target=self._run, name=f"capture {self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            # A stalled network read can block inside OpenCV; the thread is a daemon thread, so do not wait forever.
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.warning("%s: reader still blocked in OpenCV after 5 s; leaving it", self.name)
        with self._cond:
            if self._state not in (SourceState.ENDED, SourceState.FAILED):
                self._state = SourceState.CLOSED

    # --- the consumer side ----------------------------------------------------------------------------------------

    def batches(self, stop: threading.Event, max_frames: int = 1) -> Iterator[list[Frame]]:
        while not stop.is_set():
            with self._cond:
                if not self._queue:
                    if self._finished:
                        return
                    self._cond.wait(0.2)
                    continue
                batch = [self._queue.popleft() for _ in range(min(max_frames, len(self._queue)))]
                self._cond.notify_all()
            yield batch

    def ack(self, frame: Frame) -> None:
        """Nothing to release: captured frames live only in memory."""

    def status(self) -> SourceStatus:
        with self._cond:
            return SourceStatus(
                name=self.name,
                kind=self.spec.kind,
                state=self._state,
                frames_read=self._read,
                dropped=self._dropped,
                reconnects=self._reconnects,
                queue_depth=len(self._queue),
                last_frame_time=self._last_time,
                last_error=self._last_error,
            )

    # --- the reader thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._read_with_reconnects()
        except Exception as error:  # the reader must not die silently: health and the log say what happened
            log.exception("%s: reader stopped", self.name)
            self._set_state(SourceState.FAILED, f"reader stopped: {error}")
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _read_with_reconnects(self) -> None:
        failures = 0
        while not self._closing.is_set():
            capture = self._open()
            if capture is None:
                failures += 1
                reason = "does not exist yet" if self.spec.kind == "video" else "cannot be opened"
                if not self._wait_to_retry(failures, f"{self.name} {reason}"):
                    return
                continue
            try:
                advertised = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
                got = self._read_frames(capture, advertised)
            finally:
                capture.release()
            if self._closing.is_set():
                return
            if got:
                failures = 0
            if self._video_ended(got, advertised):
                return
            failures += 1
            if not self._wait_to_retry(failures, f"{self.name} stopped delivering frames after frame {self._read}"):
                return

    def _open(self) -> cv2.VideoCapture | None:
        if self.spec.kind == "video" and not Path(self.spec.target).is_file():
            return None
        if self.spec.kind == "stream" and hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
            # Without timeouts FFmpeg can block for minutes on a dead stream, and shutdown would wait for it.
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10_000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10_000]
            capture = cv2.VideoCapture(self.spec.target, cv2.CAP_ANY, params)
        else:
            capture = cv2.VideoCapture(self.spec.target)
        if not capture.isOpened():
            capture.release()
            return None
        self._set_state(SourceState.OPEN)
        return capture

    def _read_frames(self, capture: cv2.VideoCapture, advertised: int) -> int:
        """Read until the source fails or the source is closed; returns how many new frames were delivered."""
        if self.spec.kind == "video":
            # Reopened file: skip what was already read, so frame indices (and resume keys) stay positions.
            for _ in range(self._read):
                if not capture.grab():
                    return 0
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) if self.realtime else 0.0
        start = time.monotonic() - self._read / fps if fps > 0 else 0.0
        got, held = 0, None
        while not self._closing.is_set():
            # Replaying in real time, the frame handed on next is due first: a held video frame, handed on once the
            # frame after it has been read (so that read comes one frame early), else the frame about to be read.
            due = held.index if held is not None else self._read
            if fps > 0 and self._closing.wait(max(0.0, start + due / fps - time.monotonic())):
                break
            ok, image = capture.read()
            if not ok or image is None:
                break
            now, clock = time.time(), time.monotonic()
            frame = Frame(image, f"{self._frame_prefix}#{self._read:06d}", self._read, now, clock, pixels_sha256(image))
            with self._cond:
                self._read += 1
                self._last_time = now
            if self.spec.kind != "video":
                self._publish(frame)
                got += 1
                continue
            if held is not None:  # handed on now: its time is now, as a camera's frame is stamped when it arrives
                self._publish(dataclasses.replace(held, time=time.time(), monotonic=time.monotonic()))
                got += 1
            held = frame
        if held is not None and not self._closing.is_set():
            got += self._last_frame(held, advertised)
        return got

    def _last_frame(self, frame: Frame, advertised: int) -> int:
        """Deliver a video file's last frame read if the file ended where its header says, else keep it as the
        suspect, to be read again after the reopen; returns 1 for progress, 0 for the same suspect read again."""
        if advertised <= 0 or self._read >= advertised:
            self._publish(dataclasses.replace(frame, time=time.time(), monotonic=time.monotonic()))
            return 1
        again = self._suspect is not None and self._suspect.index == frame.index
        with self._cond:
            self._read -= 1  # the reopened file reads this frame again: whole if the writer has finished it
        self._suspect = frame
        return 0 if again else 1

    def _publish(self, frame: Frame) -> None:
        if self._suspect is not None and frame.index == self._suspect.index:
            self._suspect = None  # read again, and the file went on after it: the whole frame
        if self._on_read is not None:
            self._on_read(frame)
        with self._cond:
            if self.policy is Policy.LATEST:
                while self._queue:
                    self._queue.popleft()
                    self._dropped += 1
            else:
                while len(self._queue) >= self.queue_size and not self._closing.is_set():
                    self._cond.wait(0.2)
                if self._closing.is_set():
                    return
            self._queue.append(frame)
            self._cond.notify_all()

    def _video_ended(self, got: int, advertised: int) -> bool:
        """Whether a video file has been read to its end (else it stopped short and is worth reopening)."""
        if self.spec.kind != "video":
            return False
        if advertised <= 0 or self._read >= advertised:
            self._set_state(SourceState.ENDED)
            log.info("%s: end of video after %d frames", self.name, self._read)
            return True
        if got == 0:  # reopened, and nothing after the frames already read: the file was cut short for good
            self._deliver_suspect(advertised)
            self._set_state(SourceState.ENDED, f"file ends after frame {self._read} of {advertised} (cut short)")
            log.warning(
                "%s: video ends after %d of the %d frames in its header (cut short)", self.name, self._read, advertised
            )
            return True
        return False

    def _deliver_suspect(self, advertised: int) -> None:
        """The last frame before the cut, as an ERROR frame: it may be half decoded, so it is not inspected."""
        suspect, self._suspect = self._suspect, None
        if suspect is None:
            return
        reason = (
            f"last frame before the video stops short of the {advertised} frames in its header: "
            "it may be cut mid-frame (half decoded), so it is not inspected"
        )
        log.warning("%s: %s", suspect.source, reason)
        with self._cond:
            self._read += 1
        self._publish(dataclasses.replace(suspect, image=None, error=reason))

    def _wait_to_retry(self, failures: int, reason: str) -> bool:
        """Log, wait the backoff delay and count the coming attempt; False when giving up or closing."""
        if self.backoff.attempts is not None and failures >= self.backoff.attempts:
            log.error("%s; giving up after %d attempts", reason, failures)
            self._set_state(SourceState.FAILED, f"{reason}; gave up after {failures} attempts")
            return False
        delay = self.backoff.delay(failures)
        with self._cond:
            state = SourceState.CONNECTING if self._read == 0 else SourceState.RECONNECTING
        self._set_state(state, reason)
        # The first failure is worth a warning; later ones only when the delay grows, so a long outage stays readable.
        level = logging.WARNING if failures == 1 or delay < self.backoff.max_s else logging.DEBUG
        log.log(level, "%s; retrying in %.1f s (attempt %d)", reason, delay, failures + 1)
        if self._closing.wait(delay):
            return False
        with self._cond:
            self._reconnects += 1
        return True

    def _set_state(self, state: SourceState, error: str | None = None) -> None:
        with self._cond:
            self._state = state
            if error is not None:
                self._last_error = error


# --- hot folders ----------------------------------------------------------------------------------------------------

_WRITING = re.compile(r"\.(part|partial|tmp|temp|crdownload|download|filepart)$", re.IGNORECASE)


def is_candidate(path: Path) -> bool:
    """An image file that is not named the way writers name files still being written (``.name``, ``name.part``)."""
    return not path.name.startswith(".") and not _WRITING.search(path.name) and is_image_file(path)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time this (size, mtime) was first seen
    incomplete: bool = False  # read at this (size, mtime) and found cut short: wait incomplete_s, not settle_s


def _not_a_file(path: Path) -> str:
    """Why an entry with an image's name cannot be read as a file."""
    if path.is_symlink() and not path.exists():
        return "a broken symbolic link (its target is missing, or a loop)"
    return "a folder with an image's name" if path.is_dir() else "not a regular file (a pipe, socket or device)"


class HotFolderSource:
    """A folder watched for new images (a context manager; the listing happens in the consumer's thread).

    Each image is yielded once: when its size and modification time have stayed the same for ``settle_s``. After
    its record is stored (:meth:`ack`), it is moved into ``processed`` or, with ``after="keep"``, remembered for
    the rest of the run. Files whose ``(path, sha256)`` is in ``done`` were inspected by an earlier run: they are
    not inspected again (just moved, in move mode).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        config: HotFolderConfig | None = None,
        *,
        done: Collection[tuple[str, str]] = (),
        backoff: Backoff | None = None,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.name = str(self.folder)
        self.config = config or HotFolderConfig()
        processed = Path(self.config.processed).expanduser()
        self.processed = processed if processed.is_absolute() else self.folder / processed
        self.backoff = backoff or Backoff()
        self._done = done
        self._seen: dict[Path, _Seen] = {}
        self._handled: dict[Path, tuple[int, int]] = {}  # yielded or resumed; (size, mtime_ns) when it was
        self._ignored: set[Path] = set()  # entries with an image's name that are not files, logged once
        self._lock = threading.Lock()
        self._state = SourceState.CONNECTING
        self._read = 0
        self._resumed = 0
        self._reconnects = 0
        self._failures = 0
        self._last_time: float | None = None
        self._last_error: str | None = None

    def __enter__(self) -> HotFolderSource:
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: hot folder does not exist")
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            if self._state is not SourceState.FAILED:
                self._state = SourceState.CLOSED

    # --- watching -------------------------------------------------------------------------------------------------

    def poll(self) -> list[Path]:
        """List the folder once; the files that are ready to read now (stable for ``settle_s``), oldest first."""
        if self._failures:
            with self._lock:
                self._reconnects += 1
        try:
            entries = list(os.scandir(self.folder))
        except OSError as error:
            self._folder_unavailable(error)
            return []
        self._folder_available()
        now = time.monotonic()
        present, ready = set(), []
        for entry in entries:
            path = Path(entry.path)
            if not is_candidate(path):
                continue
            try:
                if not entry.is_file():
                    self._ignore(path)
                    continue
                stat = entry.stat()
            except OSError:
                continue  # removed or renamed between the listing and the stat
            present.add(path)
            if self._handled.get(path) == (stat.st_size, stat.st_mtime_ns):
                continue
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                self._seen[path] = _Seen(stat.st_size, stat.st_mtime_ns, now)  # new, or still being written
                continue
            if now - seen.since >= (self.config.incomplete_s if seen.incomplete else self.config.settle_s):
                ready.append((stat.st_mtime_ns, path.name, path))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        for gone in set(self._handled) - present:
            del self._handled[gone]
        self._ignored &= {Path(entry.path) for entry in entries}
        return [path for _, _, path in sorted(ready)]

    def _ignore(self, path: Path) -> None:
        if path not in self._ignored:
            self._ignored.add(path)
            log.warning("%s: not inspected: %s", path, _not_a_file(path))

    def load(self, path: Path) -> Frame | None:
        """Read a ready file into a frame (ERROR frame if it cannot be decoded); None if an earlier run did it."""
        seen = self._seen.pop(path, None)
        stat = (seen.size, seen.mtime_ns) if seen else (-1, -1)
        try:
            data = path.read_bytes()
        except OSError as error:
            log.warning("%s: cannot read (%s); it will be tried again if it changes", path, error.strerror or error)
            self._handled[path] = stat
            return None
        sha256 = file_digest(data)
        source = str(path)
        if (source, sha256) in self._done:  # hashed before decoding: a restart does not decode what is done
            self._resumed += 1
            self._handled[path] = stat
            self._let_go(path, sha256)
            return None
        image, error = None, None
        try:
            loaded = load_frame(path, max_pixels=self.config.max_pixels)
            image, sha256 = loaded.image, loaded.sha256
        except ImageReadError as failure:
            if self._changed_since(path, stat):  # a writer that paused longer than settle_s: not finished yet
                return None
            if failure.incomplete and seen is not None and time.monotonic() - seen.since < self.config.incomplete_s:
                log.debug("%s: %s; read again until unchanged for incomplete_s", path, failure.reason)
                self._seen[path] = _Seen(seen.size, seen.mtime_ns, seen.since, incomplete=True)
                return None
            error = failure.reason
        now = time.time()
        with self._lock:
            index = self._read
            self._read += 1
            self._last_time = now
        self._handled[path] = stat
        return Frame(image, source, index, now, time.monotonic(), sha256, error)

    def _changed_since(self, path: Path, stat: tuple[int, int]) -> bool:
        try:
            now = path.stat()
        except OSError:
            return True
        return (now.st_size, now.st_mtime_ns) != stat

    def batches(self, stop: threading.Event, max_frames: int = 1) -> Iterator[list[Frame]]:
        while not stop.is_set():
            ready = self.poll()
            if self.status().state is SourceState.FAILED:
                return
            for start in range(0, len(ready), max_frames):
                frames = [f for f in (self.load(p) for p in ready[start : start + max_frames]) if f is not None]
                if frames:
                    yield frames
                if stop.is_set():
                    return
            stop.wait(self._wait_s())

    def ack(self, frame: Frame) -> None:
        """The frame's record is stored: move the file to ``processed`` (move mode)."""
        self._let_go(Path(frame.source), frame.sha256)

    def status(self) -> SourceStatus:
        with self._lock:
            return SourceStatus(
                name=self.name,
                kind="folder",
                state=self._state,
                frames_read=self._read,
                reconnects=self._reconnects,
                queue_depth=len(self._seen),
                resumed=self._resumed,
                last_frame_time=self._last_time,
                last_error=self._last_error,
            )

    # --- helpers --------------------------------------------------------------------------------------------------

    def _let_go(self, path: Path, sha256: str) -> None:
        if self.config.after == "keep":
            return
        self.processed.mkdir(parents=True, exist_ok=True)
        target = self.processed / path.name
        if target.exists() and _sha256_of(target) != sha256:  # keep both: a different earlier file of that name
            target = target.with_name(f"{path.stem}-{sha256[:10]}{path.suffix}")
        try:
            os.replace(path, target)
        except OSError as error:
            log.warning(
                "%s: inspected but could not be moved to %s (%s)", path, self.processed, error.strerror or error
            )
            return
        self._handled.pop(path, None)

    def _wait_s(self) -> float:
        return self.backoff.delay(self._failures) if self._failures else self.config.poll_s

    def _folder_unavailable(self, error: OSError) -> None:
        self._failures += 1
        gave_up = self.backoff.attempts is not None and self._failures >= self.backoff.attempts
        with self._lock:
            self._state = SourceState.RECONNECTING if self._read else SourceState.CONNECTING
            self._last_error = f"cannot list {self.folder}: {error.strerror or error}"
            if gave_up:
                self._state = SourceState.FAILED
        if gave_up:
            log.error("%s; giving up after %d attempts", self._last_error, self._failures)
        elif self._failures == 1:
            log.warning("%s; retrying with backoff", self._last_error)

    def _folder_available(self) -> None:
        if self._failures:
            log.info("%s: hot folder is back", self.folder)
        self._failures = 0
        with self._lock:
            self._state = SourceState.OPEN
