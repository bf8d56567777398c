"""The runtime model: one exported ONNX file in an ONNX Runtime session, no PyTorch needed.

:class:`OnnxModel` loads the file, reads and validates its model card (input size, calibration, ...), picks
execution providers, and turns uint8 BGR tiles into crack logits and class activation maps. Nothing about the
model is hard-coded here: everything comes from the card in the file.

:class:`DenseModel` holds the dense whole-frame graph beside it (``model.dense.onnx``): one pass over a frame gives
the CAM on the frame's 32 px grid (:mod:`crackscope.inspect.dense`). :func:`open_model` opens the one a run's mode
needs, and refuses dense mode where the dense graph is missing or its recorded agreement with tiled inference is
below the gate (99% of tile decisions) unless forced.

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

from crackscope.inspect.card import DENSE_OUTPUT_NAMES, INPUT_NAME, OUTPUT_NAMES, ModelCard, ModelCardError, read_card

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


class _SessionModel:
    """An exported crackscope file in an ONNX Runtime session, its card validated (a context manager)."""

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
        raise NotImplementedError

    def _check_outputs(self, graph: str, expected: Sequence[str], hint: str) -> None:
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if self.card.graph != graph or INPUT_NAME not in inputs or not set(expected) <= outputs:
            raise ModelCardError(
                f"{self.path}: expected a {graph} graph with input '{INPUT_NAME}' and outputs {list(expected)}, found "
                f"a {self.card.graph} graph {sorted(inputs)} -> {sorted(outputs)}"
                + (hint if self.card.graph != graph else "")
            )

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError(f"{self.path}: model is closed")
        return self._session

    @property
    def input_size(self) -> int:
        return self.card.input_size

    def close(self) -> None:
        self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, backbone={self.card.backbone}, "
            f"precision={self.card.precision}, providers={list(self.providers)})"
        )


class OnnxModel(_SessionModel):
    """An exported crackscope model, ready to score uint8 BGR tiles (a context manager).

    Args:
        path: the ``.onnx`` file written by ``crackscope export``.
        providers: ``"auto"`` (TensorRT > CUDA > CPU among those available), a comma-separated string, or a list.
        intra_op_threads: threads per operator (default: ONNX Runtime's choice, one per physical core).
        inter_op_threads: threads across independent operators (default: ONNX Runtime's choice).
    """

    def _check_signature(self) -> None:
        self._check_outputs("tiles", OUTPUT_NAMES, " (a dense graph runs with --mode dense)")

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


# --- the dense whole-frame graph ------------------------------------------------------------------------------------

DENSE_MIN_AGREEMENT = 0.99  # the gate: share of tile decisions dense inference must share with tiled inference


@dataclass(frozen=True)
class DenseOutput:
    """The dense graph's answer for one frame."""

    cam: np.ndarray  # float32 [h, w]: the CAM on the frame's cell grid, each cell scaled as in a tile's CAM
    bias: float  # the head's bias: a tile's logit is bias + the sum of the cells under it


class DenseModel(_SessionModel):
    """``model.dense.onnx``: whole uint8 BGR frames in, the CAM on the frame's stride grid out (a context manager).

    The card is the tile model's (input size = the tile side the logits refer to, same calibration and part
    scoring), with ``graph: dense`` and, in ``verification``, the parity against PyTorch and the agreement with
    tiled inference measured at export (see :func:`check_dense_agreement`).
    """

    def _check_signature(self) -> None:
        self._check_outputs("dense", DENSE_OUTPUT_NAMES, " (a tile graph runs with --mode tiled)")
        if self.card.input_size % self.card.feature_size:
            raise ModelCardError(
                f"{self.path}: tile side {self.card.input_size} is not a whole number of CAM cells "
                f"({self.card.feature_size} a side)"
            )

    @property
    def cell(self) -> int:
        """Pixels per CAM cell side: the backbone's stride (32)."""
        return self.card.input_size // self.card.feature_size

    @property
    def agreement(self) -> dict[str, object]:
        """The agreement with tiled inference recorded at export (empty when none was measured)."""
        recorded = self.card.verification.get("agreement")
        return recorded if isinstance(recorded, dict) else {}

    def predict(self, frame: np.ndarray) -> DenseOutput:
        """The CAM of one uint8 BGR frame ``[H, W, 3]`` whose sides are multiples of :attr:`cell`."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise TypeError(f"expected a uint8 BGR frame, got {getattr(frame, 'dtype', type(frame).__name__)}")
        cell = self.cell
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] % cell or frame.shape[1] % cell:
            raise ValueError(
                f"expected a frame [H, W, 3] with H and W multiples of {cell} (pad it first), got {list(frame.shape)}"
            )
        cam, bias = self.session.run(list(DENSE_OUTPUT_NAMES), {INPUT_NAME: frame[np.newaxis]})
        return DenseOutput(cam=cam[0], bias=float(bias.reshape(-1)[0]))


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
    intra_op_threads: int | None = None,
) -> RuntimeModel:
    """The model a run in ``mode`` needs: the tile model at ``path``, or (``dense``) the dense graph beside it.

    Dense mode on a model without a dense graph, or one below the agreement gate (unless ``force_dense``), is a
    :class:`ModelLoadError` naming the file.
    """
    if mode == "tiled":
        return OnnxModel(path, providers=providers, intra_op_threads=intra_op_threads)
    if mode != "dense":
        raise ValueError(f"mode must be tiled or dense, got {mode!r}")
    dense = dense_path(path)
    if not dense.is_file():
        raise ModelLoadError(
            f"{dense}: no dense graph beside {Path(path).name}, so dense mode cannot run; 'crackscope export "
            f"--dense' (or --add-dense) writes one beside the fp32 model, or run tiled"
        )
    model = DenseModel(dense, providers=providers, intra_op_threads=intra_op_threads)
    try:
        check_dense_agreement(model, force=force_dense)
        check_same_calibration(model)
    except Exception:
        model.close()
        raise
    return model
