"""The runtime model: one exported ONNX file in ONNX Runtime sessions, no PyTorch needed.

:class:`OnnxModel` loads the file, reads and validates its model card (input size, calibration, ...), picks
execution providers, and turns uint8 BGR tiles into crack logits and class activation maps. Nothing about the
model is hard-coded here: everything comes from the card in the file.

How the model uses the CPU is its :class:`Layout`: one session with N intra-op threads, or several sessions with
fewer threads each, fed from one queue of tile batches (:class:`SessionPool`). Which is faster depends on the
machine and on what else runs on it, so it is measured (``crackscope bench``), not assumed.

:class:`DenseModel` holds the dense whole-frame graph beside it (``model.dense.onnx``): one pass over a frame gives
the CAM on the frame's 32 px grid (:mod:`crackscope.inspect.dense`). :func:`open_model` opens the one a run's mode
needs, and refuses dense mode where the dense graph is missing or its recorded agreement with tiled inference is
below the gate (99% of tile decisions) unless forced.

On a GPU (CUDA or TensorRT first among the session's providers) the fp16 variant that ``crackscope export --fp16``
wrote beside the fp32 file is loaded instead, and tiles reach the session through I/O binding from a reused pinned
host buffer (:class:`BoundRun`); on the CPU the plain ``session.run`` path is used.

Example:
    >>> from crackscope.inspect.model import OnnxModel
    >>> with OnnxModel("model.onnx", workers=2, intra_op_threads=1) as model:    # doctest: +SKIP
    ...     output = model.predict(tiles)                                        # uint8 [N, S, S, 3], BGR
    ...     print(model.model_id[:12], model.layout.describe(), output.logits, output.cams.shape)
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from crackscope.inspect.card import DENSE_OUTPUT_NAMES, INPUT_NAME, OUTPUT_NAMES, ModelCard, ModelCardError, read_card
from crackscope.inspect.dense import STRIDE

log = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
VARIANT_PRECISIONS = ("int8", "fp16")  # ``model.<precision>.onnx`` beside ``model.onnx`` (see deploy/export.py)


class ModelLoadError(ValueError):
    """A model file that cannot be used: missing, not ONNX, or not a crackscope model."""


@dataclass(frozen=True)
class ModelOutput:
    """Raw model outputs for a batch of tiles."""

    logits: np.ndarray  # float32 [N], before temperature
    cams: np.ndarray  # float32 [N, h, w], unnormalised class activation maps of the crack logit


@dataclass(frozen=True)
class Layout:
    """How a model spreads over the CPU: ``workers`` sessions with ``threads`` intra-op threads each.

    ``threads`` unset leaves the count to ONNX Runtime (one per physical core). ``Layout(2, 1)`` is two
    single-threaded sessions, ``Layout(1, 2)`` one two-threaded session.
    """

    workers: int = 1
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"session_workers: must be an integer of at least 1, got {self.workers!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads: must be an integer of at least 1, or unset, got {self.threads!r}")

    @classmethod
    def parse(cls, text: str) -> Layout:
        """``"2x1"`` -> ``Layout(2, 1)``; ``"1xdefault"`` leaves the threads to ONNX Runtime."""
        workers, sep, threads = text.strip().lower().partition("x")
        try:
            if not sep:
                raise ValueError
            return cls(int(workers), None if threads == "default" else int(threads))
        except ValueError:
            raise ValueError(f"layout {text!r}: expected SESSIONSxTHREADS, e.g. 2x1 or 1x4") from None

    @property
    def label(self) -> str:
        return f"{self.workers}x{self.threads or 'default'}"

    def describe(self) -> str:
        """``2 sessions x 1 thread``; ``1 session x ONNX Runtime's default threads``."""
        sessions = "1 session" if self.workers == 1 else f"{self.workers} sessions"
        if self.threads is None:
            return f"{sessions} x ONNX Runtime's default threads"
        return f"{sessions} x {self.threads} thread{'' if self.threads == 1 else 's'}"


def resolve_providers(requested: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """Provider names to ask ONNX Runtime for, best first, always ending with the CPU.

    ``"auto"`` takes TensorRT > CUDA > CPU among the available ones. Explicit names (aliases such as ``"cuda"``
    or full names) that are not available are dropped with one warning; the CPU is always the last resort.
    """
    auto = requested == "auto"
    if isinstance(requested, str):
        requested = list(AUTO_ORDER) if auto else [p.strip() for p in requested.split(",")]
    names = [PROVIDER_ALIASES.get(p.lower(), p) for p in requested]
    chosen = [p for p in names if p in available]
    missing = [p for p in names if p not in available]
    if missing and not auto:
        warnings.warn(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
            f"(available: {', '.join(available)}); falling back to {', '.join(chosen) or 'CPUExecutionProvider'}",
            RuntimeWarning,
            stacklevel=3,
        )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def make_session(
    model: str | os.PathLike | bytes,
    *,
    providers: str | Sequence[str] = "auto",
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session built the one way crackscope runs a model, everywhere (runtime, parity gate, benchmarks).

    All graph optimisations are on (``ORT_ENABLE_ALL``) and providers are chosen by :func:`resolve_providers`; a
    provider that is available but fails to start (missing CUDA libraries, say) warns once and leaves the CPU.

    Args:
        model: an ``.onnx`` path, or the serialised model itself.
        providers: ``"auto"`` (TensorRT > CUDA > CPU among those available), a comma-separated string, or a list.
        intra_op_threads: threads per operator (default: ONNX Runtime's choice, one per physical core).
        inter_op_threads: threads across independent operators (default: ONNX Runtime's choice).

    Raises:
        Whatever ONNX Runtime raises for a file it cannot load; :class:`OnnxModel` turns that into
        :class:`ModelLoadError`.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads:
        options.inter_op_num_threads = inter_op_threads
    chosen = resolve_providers(providers, ort.get_available_providers())
    source = model if isinstance(model, bytes) else os.fspath(model)
    session = ort.InferenceSession(source, options, providers=chosen)
    started = session.get_providers()
    if chosen[0] not in started:
        warnings.warn(
            f"{chosen[0]} could not start (missing libraries?); running on {started[0]}", RuntimeWarning, stacklevel=2
        )
    return session


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def uses_io_binding(providers: Sequence[str]) -> bool:
    """Whether a session with these providers (as started, best first) is fed through I/O binding: on a GPU only.

    On the CPU, ``session.run`` reads the numpy tiles where they are; binding would only add work.
    """
    return bool(providers) and providers[0] in GPU_PROVIDERS


def file_for_provider(path: Path, provider: str) -> Path:
    """The file to load for ``path`` when ``provider`` comes first: on a GPU, the fp16 variant beside an fp32 file.

    ``crackscope export --fp16`` writes ``model.fp16.onnx`` beside ``model.onnx``; a GPU runs it faster and with
    half the weight memory, and it passed its own parity gate. A file named as a variant (``model.int8.onnx``,
    ``model.fp16.onnx``) is the user's choice and is kept, as is every file on the CPU, where fp16 is slow.
    """
    if provider not in GPU_PROVIDERS or path.suffix != ".onnx":
        return path
    stem = path.name[: -len(".onnx")]
    if stem.rpartition(".")[2] in VARIANT_PRECISIONS:
        return path
    candidate = path.with_name(f"{stem}.fp16.onnx")
    return candidate if candidate.is_file() else path


# --- running a session ----------------------------------------------------------------------------------------------


Run = Callable[[np.ndarray], ModelOutput]


def plain_run(session: ort.InferenceSession) -> Run:
    """``session.run`` on numpy tiles: the CPU path."""

    def run(images: np.ndarray) -> ModelOutput:
        logits, cams = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return ModelOutput(logits=logits, cams=cams)

    return run


def pinned_memory_info(provider: str = "CUDAExecutionProvider") -> ort.OrtMemoryInfo | None:
    """Where ONNX Runtime allocates page-locked host memory for ``provider``'s device, if this build can say.

    Found through the execution-provider device API (``onnxruntime.get_ep_devices``, ONNX Runtime 1.22 and later);
    None on a CPU-only build, an older one, or one whose CUDA device offers no host-accessible memory.
    """
    get_devices = getattr(ort, "get_ep_devices", None)
    kind = getattr(getattr(ort, "OrtDeviceMemoryType", None), "HOST_ACCESSIBLE", None)
    if get_devices is None or kind is None:
        return None
    try:
        for device in get_devices():
            if device.ep_name in (provider, "CUDAExecutionProvider"):
                info = device.memory_info(kind)
                if info is not None:
                    return info
    except Exception as error:  # an API this build only half has: the pageable path still works
        log.debug("no pinned host memory for %s: %s", provider, error)
    return None


class BoundRun:
    """A GPU session fed through I/O binding, with tiles staged in reused pinned (page-locked) host buffers.

    A numpy array handed to ``session.run`` lives in pageable memory, which the CUDA driver copies into a pinned
    staging buffer before the device can read it. Here the tiles are copied once into a pinned buffer of their
    batch shape (kept for the next batch of that shape; a frame needs one or two shapes), which ONNX Runtime
    copies straight to the device. Where this ONNX Runtime cannot allocate pinned memory, the tiles are copied to
    the device with ``OrtValue.ortvalue_from_numpy`` instead. Outputs are bound to host memory, so ONNX Runtime
    writes the (small) logits and CAMs there directly.

    Input and outputs keep the types of the exported graph (uint8 tiles in, float32 out, also for the fp16
    variant, which casts inside the graph): uint8 tiles are half the bytes fp16 ones would be.

    One binding is not safe to share between threads, so runs through one ``BoundRun`` take turns. This path is
    tested only where a GPU exists (tests marked ``gpu``); its speed has not been measured.
    """

    SHAPES_KEPT = 4

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._binding = session.io_binding()
        self._lock = threading.Lock()
        provider = session.get_providers()[0]
        options = session.get_provider_options().get(provider, {})
        self.device_id = int(options.get("device_id", 0))
        self._pinned_info = pinned_memory_info(provider)
        self._buffers: OrderedDict[tuple[int, ...], ort.OrtValue] = OrderedDict()

    @property
    def pinned(self) -> bool:
        return self._pinned_info is not None

    def describe(self) -> str:
        staging = "pinned host buffers" if self.pinned else "pageable host memory (no pinned allocator here)"
        return f"I/O binding on device {self.device_id}, tiles staged in {staging}"

    def __call__(self, images: np.ndarray) -> ModelOutput:
        with self._lock:
            self._binding.bind_ortvalue_input(INPUT_NAME, self._input(images))
            for name in OUTPUT_NAMES:
                self._binding.bind_output(name, "cpu")
            self._session.run_with_iobinding(self._binding)
            logits, cams = self._binding.copy_outputs_to_cpu()
            self._binding.clear_binding_inputs()
        return ModelOutput(logits=logits, cams=cams)

    def _input(self, images: np.ndarray) -> ort.OrtValue:
        if self._pinned_info is not None:
            try:
                return self._pinned(images)
            except Exception as error:  # an allocator this build lists but cannot use: stage in pageable memory
                log.warning("pinned host buffers unavailable (%s); copying tiles from pageable memory", error)
                self._pinned_info, self._buffers = None, OrderedDict()
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(images), "cuda", self.device_id)

    def _pinned(self, images: np.ndarray) -> ort.OrtValue:
        """``images`` copied into the pinned buffer of their shape (made on first use, the least recent dropped)."""
        shape = tuple(images.shape)
        buffer = self._buffers.pop(shape, None)
        if buffer is None:
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.uint8, memory_info=self._pinned_info)
        self._buffers[shape] = buffer
        while len(self._buffers) > self.SHAPES_KEPT:
            self._buffers.popitem(last=False)
        buffer.update_inplace(images)
        return buffer


def session_run(session: ort.InferenceSession) -> Run:
    """How batches reach ``session``: I/O binding on a GPU, ``session.run`` on the CPU."""
    return BoundRun(session) if uses_io_binding(session.get_providers()) else plain_run(session)


class SessionPool:
    """Sessions of one model, each run by its own thread, fed from one queue of tile batches.

    :meth:`map` puts every batch on the queue and returns the outputs in the order of the batches, whichever
    session ran them; the first failing batch (in that order) raises its own exception in the caller, and batches
    not started by then are dropped. ONNX Runtime releases the GIL inside ``run``, so the sessions really run at
    the same time. With one session there is no thread: batches run in the caller's thread.

    A context manager: :meth:`close` lets the threads finish the batches already queued, then stops them.
    """

    def __init__(self, runs: Sequence[Run], name: str = "session") -> None:
        if not runs:
            raise ValueError("a session pool needs at least one session")
        self._runs = list(runs)
        self._queue: queue.SimpleQueue[tuple[np.ndarray, Future] | None] = queue.SimpleQueue()
        self._closed = False
        threaded = len(self._runs) > 1  # one session runs in the caller's thread
        self._threads = [
            threading.Thread(target=self._work, args=(run,), name=f"{name}-{index}", daemon=True)
            for index, run in enumerate(self._runs if threaded else ())
        ]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return len(self._runs)

    def map(self, batches: Sequence[np.ndarray]) -> list[ModelOutput]:
        """Outputs for ``batches``, in their order."""
        if self._closed:
            raise RuntimeError("the session pool is closed")
        if len(self._runs) == 1:
            return [self._runs[0](batch) for batch in batches]
        futures: list[Future] = []
        for batch in batches:
            future: Future = Future()
            self._queue.put((batch, future))
            futures.append(future)
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()  # after a failure: batches not started yet are not run; no effect otherwise

    @staticmethod
    def _work_one(run: Run, batch: np.ndarray, future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(run(batch))
        except BaseException as error:  # handed to the caller, who re-raises it
            future.set_exception(error)

    def _work(self, run: Run) -> None:
        while (task := self._queue.get()) is not None:
            self._work_one(run, *task)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the model ------------------------------------------------------------------------------------------------------


def check_signature(
    path: Path, card: ModelCard, session: ort.InferenceSession, graph: str, expected: Sequence[str], hint: str
) -> None:
    """A :class:`ModelCardError` unless the file holds the ``graph`` it is opened as, with its input and outputs."""
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if card.graph != graph or INPUT_NAME not in inputs or not set(expected) <= outputs:
        raise ModelCardError(
            f"{path}: expected a {graph} graph with input '{INPUT_NAME}' and outputs {list(expected)}, found "
            f"a {card.graph} graph {sorted(inputs)} -> {sorted(outputs)}" + (hint if card.graph != graph else "")
        )


class OnnxModel:
    """An exported crackscope model, ready to score uint8 BGR tiles (a context manager).

    Args:
        path: the ``.onnx`` file written by ``crackscope export``. On a GPU, its fp16 variant is loaded when there
            is one (see :func:`file_for_provider`); :attr:`path` is the file actually loaded.
        providers: ``"auto"`` (TensorRT > CUDA > CPU among those available), a comma-separated string, or a list.
        intra_op_threads: threads per operator in each session (default: ONNX Runtime's choice, one per physical
            core).
        inter_op_threads: threads across independent operators (default: ONNX Runtime's choice).
        workers: sessions fed from one queue (see :class:`SessionPool`); with ``intra_op_threads`` the
            :class:`Layout`.
        gpu_fp16: load the fp16 variant on a GPU when there is one (default); False keeps ``path``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        workers: int = 1,
        gpu_fp16: bool = True,
    ) -> None:
        self.layout = Layout(workers, intra_op_threads)
        self.requested_path = Path(path)
        if not self.requested_path.is_file():
            raise ModelLoadError(f"{self.requested_path}: model file does not exist")
        chosen = resolve_providers(providers, ort.get_available_providers())  # warns once for a missing one
        self.path = file_for_provider(self.requested_path, chosen[0]) if gpu_fp16 else self.requested_path
        sessions = self._open(self.path, chosen, inter_op_threads)
        if self.path != self.requested_path and not uses_io_binding(sessions[0].get_providers()):
            log.info("%s did not start; loading %s instead of its fp16 variant", chosen[0], self.requested_path)
            self.path = self.requested_path
            sessions = self._open(self.path, sessions[0].get_providers(), inter_op_threads)
        self._sessions: list[ort.InferenceSession] | None = sessions
        self.card = ModelCard.from_metadata(sessions[0].get_modelmeta().custom_metadata_map, str(self.path))
        self._check_signature()
        self.providers = tuple(sessions[0].get_providers())
        self._runs = [session_run(session) for session in sessions]
        self._pool = SessionPool(self._runs, name=f"session-{self.path.stem}")
        self.model_id = file_sha256(self.path)
        log.info(
            "loaded %s (%s, %s) on %s as %s, %s",
            self.path,
            self.card.backbone,
            self.card.precision,
            self.providers,
            self.layout.describe(),
            self.feed,
        )

    def _open(self, path: Path, providers: Sequence[str], inter_op_threads: int | None) -> list[ort.InferenceSession]:
        """``layout.workers`` sessions of ``path``; the later ones on the providers the first one really started."""

        def one(names: Sequence[str]) -> ort.InferenceSession:
            return make_session(
                path, providers=list(names), intra_op_threads=self.layout.threads, inter_op_threads=inter_op_threads
            )

        try:
            first = one(providers)
            return [first] + [one(first.get_providers()) for _ in range(self.layout.workers - 1)]
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(f"{path}: not a loadable ONNX model ({error})") from error

    def _check_signature(self) -> None:
        check_signature(
            self.path, self.card, self.session, "tiles", OUTPUT_NAMES, " (a dense graph runs with --mode dense)"
        )

    @property
    def session(self) -> ort.InferenceSession:
        """The first session (all sessions of a model are alike)."""
        if self._sessions is None:
            raise RuntimeError(f"{self.path}: model is closed")
        return self._sessions[0]

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def feed(self) -> str:
        """How tiles reach the sessions: ``session.run`` (CPU) or I/O binding (GPU), in words."""
        run = self._runs[0] if self._sessions is not None else None
        return run.describe() if isinstance(run, BoundRun) else "session.run on numpy tiles"

    def predict(self, images: np.ndarray) -> ModelOutput:
        """Logits and CAMs for uint8 BGR tiles ``[N, S, S, 3]`` at the model's input size ``S``."""
        return self.predict_batches([images])[0]

    def predict_batches(self, batches: Sequence[np.ndarray]) -> list[ModelOutput]:
        """:meth:`predict` of each batch, spread over the model's sessions; outputs in the order of ``batches``."""
        if self._sessions is None:
            raise RuntimeError(f"{self.path}: model is closed")
        for images in batches:
            self._check_input(images)
        return self._pool.map(batches)

    def _check_input(self, images: np.ndarray) -> None:
        size = self.card.input_size
        if not isinstance(images, np.ndarray):
            raise TypeError(f"expected a numpy array of uint8 tiles, got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise TypeError(
                f"expected uint8 tiles (BGR as OpenCV reads them), got {images.dtype}; the model normalises "
                "in its own graph, so pass raw pixels"
            )
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.shape[0] == 0:
            raise ValueError(f"expected tiles of shape [N>=1, {size}, {size}, 3], got {list(images.shape)}")

    def close(self) -> None:
        if self._sessions is None:
            return
        self._pool.close()
        self._sessions = None

    def __enter__(self) -> OnnxModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"OnnxModel({str(self.path)!r}, backbone={self.card.backbone}, precision={self.card.precision}, "
            f"providers={list(self.providers)}, layout={self.layout.label})"
        )


# --- the dense whole-frame graph ------------------------------------------------------------------------------------

DENSE_MIN_AGREEMENT = 0.99  # the gate: share of tile decisions dense inference must share with tiled inference


@dataclass(frozen=True)
class DenseOutput:
    """The dense graph's answer for one frame."""

    cam: np.ndarray  # float32 [h, w]: the CAM on the frame's cell grid, each cell scaled as in a tile's CAM
    bias: float  # the head's bias: a tile's logit is bias + the sum of the cells under it


class DenseModel:
    """``model.dense.onnx``: whole uint8 BGR frames in, the CAM on the frame's stride grid out (a context manager).

    The card is the tile model's (input size = the tile side the logits refer to, same calibration and part
    scoring), with ``graph: dense`` and, in ``verification``, the parity against PyTorch and the agreement with
    tiled inference measured at export (see :func:`check_dense_agreement`). One session: a frame is one call.

    Args:
        path: the ``model.dense.onnx`` written by ``crackscope export --dense``.
        providers: as for :class:`OnnxModel`.
        intra_op_threads: threads per operator (default: ONNX Runtime's choice, one per physical core).
        inter_op_threads: threads across independent operators (default: ONNX Runtime's choice).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.layout = Layout(1, intra_op_threads)
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: model file does not exist")
        try:
            self._session: ort.InferenceSession | None = make_session(
                self.path, providers=providers, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads
            )
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(f"{self.path}: not a loadable ONNX model ({error})") from error
        self.card = ModelCard.from_metadata(self._session.get_modelmeta().custom_metadata_map, str(self.path))
        check_signature(
            self.path, self.card, self._session, "dense", DENSE_OUTPUT_NAMES, " (a tile graph runs with --mode tiled)"
        )
        if self.card.input_size % self.card.feature_size:
            raise ModelCardError(
                f"{self.path}: tile side {self.card.input_size} is not a whole number of CAM cells "
                f"({self.card.feature_size} a side)"
            )
        self.providers = tuple(self._session.get_providers())
        self.model_id = file_sha256(self.path)
        log.info("loaded %s (%s, dense, %s) on %s", self.path, self.card.backbone, self.card.precision, self.providers)

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError(f"{self.path}: model is closed")
        return self._session

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def cell(self) -> int:
        """Pixels per CAM cell side: the heatmap's stride (16, or 32 for models without the stride-16 term)."""
        return self.card.input_size // self.card.feature_size

    @property
    def stride(self) -> int:
        """Frames and tile origins align to this many pixels: the backbone's stride (32)."""
        return STRIDE

    @property
    def agreement(self) -> dict[str, object]:
        """The agreement with tiled inference recorded at export (empty when none was measured)."""
        recorded = self.card.verification.get("agreement")
        return recorded if isinstance(recorded, dict) else {}

    def predict(self, frame: np.ndarray) -> DenseOutput:
        """The CAM of one uint8 BGR frame ``[H, W, 3]`` whose sides are multiples of :attr:`stride`."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise TypeError(f"expected a uint8 BGR frame, got {getattr(frame, 'dtype', type(frame).__name__)}")
        stride = self.stride
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] % stride or frame.shape[1] % stride:
            raise ValueError(
                f"expected a frame [H, W, 3] with H and W multiples of {stride} (pad it first), got {list(frame.shape)}"
            )
        cam, bias = self.session.run(list(DENSE_OUTPUT_NAMES), {INPUT_NAME: frame[np.newaxis]})
        return DenseOutput(cam=cam[0], bias=float(bias.reshape(-1)[0]))

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> DenseModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DenseModel({str(self.path)!r}, backbone={self.card.backbone}, precision={self.card.precision}, "
            f"providers={list(self.providers)})"
        )


RuntimeModel = OnnxModel | DenseModel  # what a run inspects with, in tiled or dense mode


class DenseModeRefused(ModelLoadError):
    """Dense mode asked for a model whose dense graph did not pass (or never took) the agreement gate."""


def dense_path(path: str | os.PathLike) -> Path:
    """The dense graph beside a tile model: ``model.onnx`` -> ``model.dense.onnx`` (a dense path is kept)."""
    path = Path(path)
    if path.name.endswith(".dense.onnx"):
        return path
    return path.with_name(f"{path.stem}.dense{path.suffix or '.onnx'}")


def tile_path(path: str | os.PathLike) -> Path:
    """The tile model a dense graph belongs to: ``model.dense.onnx`` -> ``model.onnx`` (a tile path is kept)."""
    path = Path(path)
    if not path.name.endswith(".dense.onnx"):
        return path
    return path.with_name(path.name[: -len(".dense.onnx")] + ".onnx")


def check_dense_agreement(model: DenseModel, *, force: bool = False) -> None:
    """Refuse a dense graph whose recorded tile-decision agreement with tiled inference is below the gate.

    The gate (:data:`DENSE_MIN_AGREEMENT`, 99% of tile decisions) is the runtime's own: what the export recorded is
    compared with it here, so a dense graph written below the gate, or with no measurement at all, runs only when
    forced (``--force-dense``).
    """
    if force:
        return
    agreement = model.agreement.get("decision_agreement")
    how = "run tiled (--mode tiled), or pass --force-dense to run it anyway"
    if not isinstance(agreement, (int, float)):
        raise DenseModeRefused(
            f"{model.path}: dense mode refused: its card records no agreement with tiled inference (export it with "
            f"'crackscope export --dense' to measure one); {how}"
        )
    if agreement < DENSE_MIN_AGREEMENT:
        tiles = model.agreement.get("tiles", "?")
        raise DenseModeRefused(
            f"{model.path}: dense mode refused: its tile decisions agreed with tiled inference on {agreement:.2%} of "
            f"{tiles} tiles at export, below the {DENSE_MIN_AGREEMENT:.0%} gate; {how}"
        )


def check_same_calibration(model: DenseModel) -> None:
    """A dense graph must decide with its tile model's calibration and part scoring (``calibrate`` writes both)."""
    tiles = tile_path(model.path)
    if not tiles.is_file():
        return
    card = read_card(tiles)
    if (card.calibration, card.part_scoring) != (model.card.calibration, model.card.part_scoring):
        raise ModelLoadError(
            f"{model.path}: its calibration or part scoring differs from {tiles.name}'s (calibrated after the dense "
            f"graph was written?); run 'crackscope calibrate --model {tiles}' again, which rewrites both"
        )


def open_model(
    path: str | os.PathLike,
    mode: str = "tiled",
    *,
    force_dense: bool = False,
    providers: str | Sequence[str] = "auto",
    workers: int = 1,
    intra_op_threads: int | None = None,
) -> RuntimeModel:
    """The model a run in ``mode`` needs: the tile model at ``path``, or (``dense``) the dense graph beside it.

    Dense mode on a model without a dense graph, or one below the agreement gate (unless ``force_dense``), is a
    :class:`ModelLoadError` naming the file. Dense mode runs one session (a frame is one call), so ``workers`` is
    the tile model's only.
    """
    if mode == "tiled":
        return OnnxModel(path, providers=providers, workers=workers, intra_op_threads=intra_op_threads)
    if mode != "dense":
        raise ValueError(f"mode must be tiled or dense, got {mode!r}")
    dense = dense_path(path)
    if not dense.is_file():
        flags = "--dense --int8" if dense.name.endswith(".int8.dense.onnx") else "--dense"
        raise ModelLoadError(
            f"{dense}: no dense graph beside {Path(path).name}, so dense mode cannot run; 'crackscope export "
            f"{flags}' (or --add-dense) writes it, or run tiled"
        )
    model = DenseModel(dense, providers=providers, intra_op_threads=intra_op_threads)
    try:
        check_dense_agreement(model, force=force_dense)
        check_same_calibration(model)
    except Exception:
        model.close()
        raise
    return model
