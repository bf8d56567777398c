"""The runtime model: one exported ONNX file in an ONNX Runtime session, no PyTorch needed.

:class:`OnnxModel` loads the file, reads and validates its model card (input size, calibration, ...), picks
execution providers, and turns uint8 BGR tiles into crack logits and class activation maps. Nothing about the
model is hard-coded here: everything comes from the card in the file.

Example:
    >>> from crackscope.inspect.model import OnnxModel
    >>> with OnnxModel("model.onnx") as model:                       # doctest: +SKIP
    ...     output = model.predict(tiles)                            # uint8 [N, S, S, 3], BGR
    ...     print(model.model_id[:12], output.logits, output.cams.shape)
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from crackscope.inspect.card import INPUT_NAME, OUTPUT_NAMES, ModelCard, ModelCardError

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


class ModelLoadError(ValueError):
    """A model file that cannot be used: missing, not ONNX, or not a crackscope model."""


@dataclass(frozen=True)
class ModelOutput:
    """Raw model outputs for a batch of tiles."""

    logits: np.ndarray  # float32 [N], before temperature
    cams: np.ndarray  # float32 [N, h, w], unnormalised class activation maps of the crack logit


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


class OnnxModel:
    """An exported crackscope model, ready to score uint8 BGR tiles (a context manager).

    Args:
        path: the ``.onnx`` file written by ``crackscope export``.
        providers: ``"auto"`` (TensorRT > CUDA > CPU among those available), a comma-separated string, or a list.
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
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: model file does not exist")
        try:
            self._session: ort.InferenceSession | None = make_session(
                self.path, providers=providers, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads
            )
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(f"{self.path}: not a loadable ONNX model ({error})") from error
        self.card = ModelCard.from_metadata(self._session.get_modelmeta().custom_metadata_map, str(self.path))
        self._check_signature()
        self.providers = tuple(self._session.get_providers())
        self.model_id = file_sha256(self.path)
        log.info("loaded %s (%s, %s) on %s", self.path, self.card.backbone, self.card.precision, self.providers)

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or not set(OUTPUT_NAMES) <= outputs:
            raise ModelCardError(
                f"{self.path}: expected input '{INPUT_NAME}' and outputs {list(OUTPUT_NAMES)}, found "
                f"{list(inputs)} -> {sorted(outputs)}"
            )

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError(f"{self.path}: model is closed")
        return self._session

    @property
    def input_size(self) -> int:
        return self.card.input_size

    def predict(self, images: np.ndarray) -> ModelOutput:
        """Logits and CAMs for uint8 BGR tiles ``[N, S, S, 3]`` at the model's input size ``S``."""
        self._check_input(images)
        logits, cams = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return ModelOutput(logits=logits, cams=cams)

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
        self._session = None

    def __enter__(self) -> OnnxModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"OnnxModel({str(self.path)!r}, backbone={self.card.backbone}, precision={self.card.precision}, "
            f"providers={list(self.providers)})"
        )
