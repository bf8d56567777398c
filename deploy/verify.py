"""The parity gate: an exported model must give the trained model's answers before it is written.

fp32 is compared with PyTorch (logits and CAM, element-wise, at two batch sizes, so batch-dependent bugs such as
a constant-folded batch dimension cannot hide). Its tolerance scales with each tile's logit: float arithmetic in
another order errs in proportion to the size of what it adds up, so a tile's logit may differ by ``atol + rtol *
scale`` where ``scale = |bias| + sum |cam cells|`` (the terms the logit is the sum of; never below ``|logit|``), and
each CAM cell by ``atol + rtol * max |cam|`` of its tile. A model with large logits therefore passes where an
absolute tolerance refused it, while a wrong graph (a changed weight, a dropped normalisation) moves logits by
percents, not the ``rtol`` of 1e-4, and is still refused. Decisions are compared exactly: no tile may change sides
of logit 0 unless its reference logit is within its tolerance of 0.

The dense whole-frame graph is compared with PyTorch on frames of two sizes (its CAM element-wise, and the whole-
frame logit ``bias + sum of the CAM``), so a size baked into the graph, or padding that holds for one size only,
cannot hide either. Its int8 variant is compared with it tile by tile: the verification tiles are laid out as
mosaics (:func:`~crackscope.inspect.dense.mosaics`), and each tile's CAM cells and logit are cut from the mosaic's
CAM (:func:`dense_onnx_parity`), so the int8 gates mean for the dense graph what they mean for the tile model.

int8 and fp16 are compared with the verified fp32 ONNX model on the same tiles with their own, looser tolerances:
what must not change is the decision, nor (for int8) the shape of the heatmap, measured by
:func:`heatmap_correlations`.

Example:
    >>> report = torch_parity(model, "model.onnx", tiles, batch_sizes=(1, 8), atol=1e-3)   # doctest: +SKIP
    >>> report.raise_if_failed("model.onnx")                                                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch

from crackscope.inspect.dense import MOSAIC_COLUMNS, MOSAIC_ROWS, mosaic_boxes, mosaics
from crackscope.inspect.model import make_session
from crackscope.training.backbones import CrackNet

FP32_ATOL = 1e-3  # the absolute floor of the fp32 tolerance (logit and CAM units)
FP32_RTOL = 1e-4  # its part relative to each tile's logit scale (module docstring)


class ParityError(RuntimeError):
    """An exported model that differs from its reference beyond tolerance; nothing was written."""


@dataclass(frozen=True)
class ParityReport:
    """What a parity check measured, and whether it passed."""

    reference: str  # "pytorch" or "onnx-fp32"
    candidate: str  # "onnx-fp32", "onnx-int8", "onnx-fp16"
    tiles: int
    batch_sizes: tuple[int, ...]
    max_abs_logit_diff: float
    max_abs_cam_diff: float
    decision_agreement: float  # share of tiles with the same side of logit 0
    logit_tolerance: float  # absolute part: |diff| <= logit_tolerance + logit_rtol * scale (module docstring)
    min_agreement: float
    cam_tolerance: float = float("inf")  # absolute part: |cam diff| <= cam_tolerance + logit_rtol * max |cam|
    logit_rtol: float = 0.0
    tolerance_used: float = 0.0  # max over tiles of |diff| / (atol + rtol * scale); <= 1 passes
    cam_tolerance_used: float = 0.0  # the same for the CAM cells; <= 1 passes
    decision_flips: int = 0  # tiles whose decision changed although their reference logit is outside the tolerance
    exact_decisions: bool = False  # gate: no such flip (fp32); otherwise min_agreement gates the share
    cam_correlation: float = 1.0  # mean over tiles of heatmap_correlations (1 = same shape of heat everywhere)
    cam_correlation_p5: float = 1.0  # its 5th percentile: the worst tiles but one in twenty
    cam_correlation_ci: tuple[float, float] = (1.0, 1.0)  # 95% confidence interval of the mean (mean_interval)
    min_cam_correlation: float | None = None  # gate on the interval's lower end; None: reported, not gated
    reference_accuracy: float | None = None  # against labels, when the tiles have them
    candidate_accuracy: float | None = None
    unit: str = "tiles"  # what was compared: tiles, or whole frames (the dense graph)

    @property
    def passed(self) -> bool:
        return not self.failures()

    def failures(self) -> tuple[str, ...]:
        """What is out of tolerance, one phrase per failed check (empty when the report passed)."""
        checks = [
            (self.tolerance_used <= 1.0, f"logit diff at {self.tolerance_used:.0%} of tolerance"),
            (self.cam_tolerance_used <= 1.0, f"cam diff at {self.cam_tolerance_used:.0%} of tolerance"),
            (
                not self.exact_decisions or self.decision_flips == 0,
                f"{self.decision_flips} decision(s) changed beyond the tolerance",
            ),
            (
                self.decision_agreement >= self.min_agreement,
                f"decisions agree {self.decision_agreement:.2%} < {self.min_agreement:.0%}",
            ),
            (
                self.min_cam_correlation is None or self.cam_correlation_ci[0] >= self.min_cam_correlation,
                f"heatmap correlation {self.cam_correlation:.3f} (95% CI {self.cam_correlation_ci[0]:.3f}-"
                f"{self.cam_correlation_ci[1]:.3f}) not certainly >= {self.min_cam_correlation}",
            ),
        ]
        return tuple(failure for ok, failure in checks if not ok)

    @property
    def accuracy_drop(self) -> float | None:
        if self.reference_accuracy is None or self.candidate_accuracy is None:
            return None
        return self.reference_accuracy - self.candidate_accuracy

    def summary(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed, "accuracy_drop": self.accuracy_drop}

    def describe(self) -> str:
        tolerance = (
            "not gated"
            if self.logit_tolerance == float("inf")
            else f"{self.tolerance_used:.0%} of tolerance {self.logit_tolerance:.0e} + {self.logit_rtol:.0e}*scale"
        )
        cam = "" if self.cam_tolerance == float("inf") else f"{self.cam_tolerance_used:.0%} of tolerance, "
        decisions = "every one outside the tolerance" if self.exact_decisions else f"minimum {self.min_agreement:.0%}"
        low, high = self.cam_correlation_ci
        correlation = (
            f"heatmap correlation mean {self.cam_correlation:.3f} (95% CI {low:.3f}-{high:.3f}), 5th percentile "
            f"{self.cam_correlation_p5:.3f}"
        )
        if self.min_cam_correlation is not None:
            correlation += f" (gate: the interval's lower end >= {self.min_cam_correlation:.2f})"
        batches = f"batch sizes {list(self.batch_sizes)}" if self.unit == "tiles" else "one at a time"
        text = (
            f"{self.candidate} vs {self.reference} on {self.tiles} {self.unit}, {batches}: "
            f"max |logit diff| {self.max_abs_logit_diff:.2e} ({tolerance}), "
            f"max |cam diff| {self.max_abs_cam_diff:.2e} ({cam}{correlation}), "
            f"decisions agree {self.decision_agreement:.2%} ({decisions})"
        )
        if self.accuracy_drop is not None:
            text += (
                f", accuracy {self.reference_accuracy:.4f} -> {self.candidate_accuracy:.4f} "
                f"(drop {self.accuracy_drop:+.4f})"
            )
        return text

    def raise_if_failed(self, what: str) -> None:
        if not self.passed:
            failed = "; ".join(self.failures())
            raise ParityError(f"{what} failed the parity gate ({failed}), so it was not written: {self.describe()}")


def _batched(tiles: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]


def run_session(session: ort.InferenceSession, tiles: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    outputs = [session.run(["logit", "cam"], {"image": batch}) for batch in _batched(tiles, batch_size)]
    return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])


@torch.inference_mode()
def run_torch(model: CrackNet, tiles: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    outputs = [model.forward_with_cam(torch.from_numpy(batch)) for batch in _batched(tiles, batch_size)]
    return torch.cat([o[0] for o in outputs]).numpy(), torch.cat([o[1] for o in outputs]).numpy()


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float(((logits >= 0) == (labels >= 0.5)).mean())


def logit_scale(logits: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """Per tile, the size of what its logit adds up: ``|bias| + sum |cam cells|`` (``[N]``, at least ``|logit|``).

    The logit is ``bias + sum(cam)``, so the bias is ``logit - sum(cam)``; rounding in a different order of
    additions errs in proportion to this, not to the (possibly cancelled) logit itself.
    """
    flat = cams.reshape(len(cams), -1).astype(np.float64)
    bias = logits.astype(np.float64) - flat.sum(axis=1)
    return np.abs(bias) + np.abs(flat).sum(axis=1)


def _compare(
    reference: Sequence[tuple[np.ndarray, np.ndarray]],
    candidate: Sequence[tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray | None,
    atol: float,
    rtol: float,
    cam_atol: float = float("inf"),
    groups: Sequence[str] | None = None,
) -> dict[str, object]:
    """The comparison's measurements; with several batch sizes, the worst of them. ``groups`` names each tile's
    source item (views of one item share it) for the correlation's confidence interval."""
    pairs = list(zip(reference, candidate, strict=True))
    logit_used, cam_used, flips = 0.0, 0.0, 0
    for r, c in pairs:
        allowed = atol + rtol * logit_scale(*r)
        diff = np.abs(r[0] - c[0])
        logit_used = max(logit_used, float((diff / allowed).max(initial=0.0)))
        flipped = (r[0] >= 0) != (c[0] >= 0)
        flips = max(flips, int((flipped & (np.abs(r[0]) > allowed)).sum()))
        cam_scale = np.abs(r[1]).reshape(len(r[1]), -1).max(axis=1, initial=0.0)
        cam_diff = np.abs(r[1] - c[1]).reshape(len(r[1]), -1).max(axis=1, initial=0.0)
        cam_used = max(cam_used, float((cam_diff / (cam_atol + rtol * cam_scale)).max(initial=0.0)))
    correlations = [heatmap_correlations(r[1], c[1]) for r, c in pairs]
    worst = min(correlations, key=lambda values: values.mean())
    return {
        "cam_correlation": float(worst.mean()),
        "cam_correlation_ci": mean_interval(worst, groups),
        "cam_correlation_p5": min(float(np.percentile(values, 5)) for values in correlations),
        "max_abs_logit_diff": max(float(np.abs(r[0] - c[0]).max()) for r, c in pairs),
        "tolerance_used": logit_used,
        "cam_tolerance_used": cam_used,
        "max_abs_cam_diff": max(float(np.abs(r[1] - c[1]).max()) for r, c in pairs),
        "decision_agreement": min(float(((r[0] >= 0) == (c[0] >= 0)).mean()) for r, c in pairs),
        "decision_flips": flips,
        "reference_accuracy": _accuracy(reference[0][0], labels),
        "candidate_accuracy": _accuracy(candidate[0][0], labels),
    }


def mean_interval(values: np.ndarray, groups: Sequence[str] | None = None, z: float = 1.96) -> tuple[float, float]:
    """The normal-approximation 95% confidence interval of the mean of ``values``.

    Each tile is one observation, unless ``groups`` names the item each tile came from: tiles of one item (views of
    a small validation split, :func:`crackscope.deploy.export.read_tiles_with_views`) are not independent, so the
    variance is the cluster-robust one (CR1: the squared sums of each group's residuals, scaled by G / (G - 1)),
    and the interval is as wide as the number of items, not of tiles, allows. The int8 gate asks the lower end to
    clear the threshold, so a pass means the same on every run: with 256 independent tiles spread as int8 spreads
    them (standard deviation about 0.05) the interval is about +-0.006 wide; ten items stretched to 256 views pass
    only with a clear margin.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        value = float(values.mean()) if len(values) else 1.0
        return value, value
    mean = float(values.mean())
    if groups is None:
        half = z * float(values.std(ddof=1)) / np.sqrt(len(values))
        return mean - half, mean + half
    names, index = np.unique(np.asarray(groups), return_inverse=True)
    if len(names) < 2:
        return -1.0, 1.0  # one item: nothing is known about others
    sums = np.bincount(index, weights=values - mean, minlength=len(names))
    variance = float((sums**2).sum()) / len(values) ** 2 * len(names) / (len(names) - 1)
    half = z * np.sqrt(variance)
    return mean - half, mean + half


def heatmap_correlations(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per tile, the Pearson correlation of the candidate's CAM cells with the reference's: ``[N]`` in [-1, 1].

    Defect regions are cut from the heatmap relative to its peak, so what a reduced-precision model must keep is
    where the heat is, not its absolute level: 1 means the same picture, 0 an unrelated one. Each tile's ``h*w``
    cells are one sample (the raw, signed CAM); the export reports the mean over tiles (gated for int8) and the
    5th percentile. A tile whose two maps are both flat counts 1 (the same picture); one where only one is, 0.

    Args:
        reference: CAMs ``[N, h, w]`` of the reference model (fp32).
        candidate: CAMs ``[N, h, w]`` of the model being checked, for the same tiles.
    """
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = candidate.reshape(len(candidate), -1).astype(np.float64)
    flat_a, flat_b = np.ptp(a, axis=1) == 0, np.ptp(b, axis=1) == 0
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pearson = np.clip((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1)), -1.0, 1.0)
    return np.where(flat_a | flat_b, (flat_a & flat_b).astype(np.float64), pearson)


def torch_parity(
    model: CrackNet,
    onnx_model: str | bytes,
    tiles: np.ndarray,
    *,
    batch_sizes: tuple[int, ...] = (1, 8),
    atol: float = FP32_ATOL,
    rtol: float = FP32_RTOL,
    labels: np.ndarray | None = None,
) -> ParityReport:
    """ONNX Runtime (CPU) against PyTorch eager on the same uint8 tiles, at each batch size."""
    session = make_session(onnx_model, providers="cpu")
    reference = [run_torch(model, tiles, b) for b in batch_sizes]
    candidate = [run_session(session, tiles, b) for b in batch_sizes]
    measured = _compare(reference, candidate, labels, atol, rtol, cam_atol=atol)
    # Gated element-wise on logits and CAM, scaled by each tile's logit, and on exact decisions (module docstring).
    return ParityReport(
        "pytorch",
        "onnx-fp32",
        len(tiles),
        batch_sizes,
        logit_tolerance=atol,
        logit_rtol=rtol,
        min_agreement=0.0,
        cam_tolerance=atol,
        exact_decisions=True,
        **measured,
    )


def onnx_parity(
    reference_model: str | bytes,
    candidate_model: str | bytes,
    tiles: np.ndarray,
    *,
    candidate: str,
    batch_sizes: tuple[int, ...] = (1, 8),
    atol: float,
    rtol: float = 0.0,
    min_agreement: float,
    min_cam_correlation: float | None = None,
    labels: np.ndarray | None = None,
    groups: Sequence[str] | None = None,
) -> ParityReport:
    """A reduced-precision ONNX model against the verified fp32 one (both on the CPU); ``groups``: each tile's
    source item, for the correlation's confidence interval (:func:`mean_interval`)."""
    reference_session = make_session(reference_model, providers="cpu")
    candidate_session = make_session(candidate_model, providers="cpu")
    reference = [run_session(reference_session, tiles, b) for b in batch_sizes]
    candidates = [run_session(candidate_session, tiles, b) for b in batch_sizes]
    measured = _compare(reference, candidates, labels, atol, rtol, groups=groups)
    return ParityReport(
        "onnx-fp32",
        candidate,
        len(tiles),
        batch_sizes,
        logit_tolerance=atol,
        logit_rtol=rtol,
        min_agreement=min_agreement,
        min_cam_correlation=min_cam_correlation,
        **measured,
    )


@torch.inference_mode()
def _torch_dense(model: CrackNet, frame: np.ndarray, feature_side: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's CAM of a whole frame, each cell scaled as in a tile's CAM, and the whole-frame logit."""
    model.eval()
    maps = model.feature_maps(torch.from_numpy(np.ascontiguousarray(frame[np.newaxis])))
    cam = model.cam_of(maps, feature_side * feature_side)
    return (cam.sum(dim=(1, 2)) + model.fc.bias[0]).numpy(), cam.numpy()


def dense_parity(
    model: CrackNet,
    dense_model: str | bytes,
    frames: Sequence[np.ndarray],
    *,
    feature_side: int,
    atol: float = FP32_ATOL,
    rtol: float = FP32_RTOL,
) -> ParityReport:
    """The dense graph (ONNX Runtime, CPU) against PyTorch eager on whole uint8 frames of different sizes.

    PyTorch runs the training model itself (TF-"same" padding computed per input), so the gate also proves that
    the static pads folded into the dense graph hold at these sizes. ``feature_side`` is the tile model's CAM side:
    each cell is scaled by it, as in a tile's CAM.
    """
    session = make_session(dense_model, providers="cpu")
    reference = [_torch_dense(model, frame, feature_side) for frame in frames]
    candidate = []
    for frame in frames:
        cam, bias = session.run(["cam", "bias"], {"image": np.ascontiguousarray(frame[np.newaxis])})
        candidate.append((cam.sum(axis=(1, 2)) + bias, cam))
    measured = _compare(reference, candidate, None, atol, rtol, cam_atol=atol)
    return ParityReport(
        "pytorch",
        "onnx-fp32-dense",
        len(frames),
        (1,),
        logit_tolerance=atol,
        logit_rtol=rtol,
        min_agreement=0.0,
        cam_tolerance=atol,
        exact_decisions=True,
        unit=f"frames ({', '.join(f'{f.shape[1]}x{f.shape[0]}' for f in frames)})",
        **measured,
    )


def mosaic_outputs(
    session: ort.InferenceSession, frames: np.ndarray, rows: int = MOSAIC_ROWS, columns: int = MOSAIC_COLUMNS
) -> tuple[np.ndarray, np.ndarray]:
    """Each tile's logit ``[N]`` and CAM ``[N, f, f]`` as the dense graph sees it inside :func:`mosaics` frames
    ``[M, rows * S, columns * S, 3]`` (neighbouring tiles as context), ``N = M * rows * columns``, row by row: the
    frame CAM's cells under the tile, and the bias plus their sum."""
    size = frames.shape[1] // rows
    boxes = mosaic_boxes(size, rows, columns)
    logits, cams = [], []
    for frame in frames:
        cam, bias = session.run(["cam", "bias"], {"image": frame[np.newaxis]})
        cell = frame.shape[0] // cam.shape[1]
        for x, y, w, h in boxes // cell:
            block = cam[0, y : y + h, x : x + w]
            cams.append(block)
            logits.append(float(bias[0]) + float(block.sum(dtype=np.float64)))
    return np.array(logits, np.float32), np.stack(cams)


def dense_tile_outputs(
    session: ort.InferenceSession, tiles: np.ndarray, rows: int = MOSAIC_ROWS, columns: int = MOSAIC_COLUMNS
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mosaic_outputs` of ``tiles`` laid out as mosaics, one per tile in their order."""
    logits, cams = mosaic_outputs(session, mosaics(tiles, rows, columns), rows, columns)
    return logits[: len(tiles)], cams[: len(tiles)]


def dense_onnx_parity(
    reference_model: str | bytes,
    candidate_model: str | bytes,
    tiles: np.ndarray,
    *,
    candidate: str,
    min_agreement: float,
    min_cam_correlation: float | None = None,
    labels: np.ndarray | None = None,
    groups: Sequence[str] | None = None,
    rows: int = MOSAIC_ROWS,
    columns: int = MOSAIC_COLUMNS,
) -> ParityReport:
    """A reduced-precision dense graph against the verified fp32 one (both on the CPU), tile by tile on mosaics of
    ``tiles`` (:func:`dense_tile_outputs`), gated as :func:`onnx_parity` gates the tile model."""
    reference = dense_tile_outputs(make_session(reference_model, providers="cpu"), tiles, rows, columns)
    measured = dense_tile_outputs(make_session(candidate_model, providers="cpu"), tiles, rows, columns)
    compared = _compare([reference], [measured], labels, float("inf"), 0.0, groups=groups)
    return ParityReport(
        "onnx-fp32-dense",
        candidate,
        len(tiles),
        (1,),
        logit_tolerance=float("inf"),
        min_agreement=min_agreement,
        min_cam_correlation=min_cam_correlation,
        unit=f"tiles (in {-(-len(tiles) // (rows * columns))} mosaics of {rows} x {columns})",
        **compared,
    )
