"""Accuracy-aware int8: when the plain recipe fails a gate, keep the fewest blocks float that make it pass.

The int8 gates (decisions and heatmap correlation against fp32, :mod:`crackscope.deploy.verify`) hold for most
models with the plain recipe (:class:`~crackscope.deploy.quantize.Int8Recipe`), but not for every model a user
trains: a head with large weights, or a block whose activations have a long tail, can bring the heatmap correlation
just under 0.95. Giving up on int8 there throws away most of its speed for a few layers' error, so the export
searches, in the spirit of layer-wise sensitivity analysis for post-training quantisation:

1. **Sensitivity, on the calibration tiles.** For each quantised block (:func:`~crackscope.deploy.quantize.unit_of`:
   an inverted-residual block of EfficientNet-Lite0, a basic block of a ResNet) the model is quantised with only
   that block float, and on a sample of the *calibration* tiles its mean heatmap correlation with fp32 and its mean
   |logit| error are measured. When the plain recipe changed decisions, blocks are ranked by the logit error left
   with them float (decisions flip where the logit moves); when only the heatmap failed, by the correlation. Ranges
   are calibrated once and cached, and these tries skip the bias correction
   (:func:`~crackscope.deploy.bias.correct_biases`, 3-14 s), so each is a re-quantisation of about a second; the
   mixes tried on the verification tiles below are bias-corrected like the written model.
2. **Fewest float blocks, on the verification tiles.** Blocks are kept float one at a time, most sensitive first,
   until the *verification* tiles (other source images) pass the gates, at most ``max_float_units`` of them.
3. **Still worth it.** The result's speed is measured against fp32 at batch 8 in paired rounds; a mix that does not
   run ``min_speedup`` (1.2x) faster than fp32 is refused and nothing is written.

Example:
    >>> choice = mixed_int8("model.onnx", "model.int8.onnx", calibration, gate, speed_tiles)   # doctest: +SKIP
    >>> choice.describe()                                                                     # doctest: +SKIP
    'kept float: blocks.5.3 (1 of 16 blocks, most sensitive first); 1.61x fp32 at batch 8'
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from crackscope.deploy.quantize import Int8Recipe, quantised_units, quantize_int8
from crackscope.deploy.verify import ParityError, ParityReport, heatmap_correlations, run_session
from crackscope.inspect.model import make_session

Outputs = Callable[[ort.InferenceSession, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (logits, CAMs) per tile

MIN_SPEEDUP = 1.2  # a mixed model must beat fp32 by this much at batch 8, or int8 is not worth shipping
MAX_FLOAT_UNITS = 10  # most blocks kept float before the search gives up (EfficientNet-Lite0 has 16); the
# speed gate decides whether so many float blocks still pay (before bias correction, the magnetic-tile suite model
# needed 7, at 1.24x fp32)
PROBE_TILES = 64  # calibration tiles the sensitivity is measured on
SPEED_BATCH = 8
SPEED_ROUNDS = 7


@dataclass(frozen=True)
class Int8Choice:
    """What the int8 export settled on, for the log and the model card."""

    report: ParityReport  # the written model's gate on the verification tiles
    float_units: tuple[str, ...] = ()  # blocks kept float beyond the plain recipe (most sensitive first)
    units: int = 0  # quantised blocks of the plain recipe
    plain: ParityReport | None = None  # the plain recipe's gate, when it failed
    sensitivity: dict[str, dict[str, float]] | None = None  # per block, with it float: correlation, logit error
    speedup: float | None = None  # int8 / fp32 speed at batch 8 (measured for a mixed model)
    seconds: float = 0.0
    speed_basis: str = f"at batch {SPEED_BATCH}"  # what the speed-up was measured on

    @property
    def mixed(self) -> bool:
        return bool(self.float_units)

    def describe(self) -> str:
        if not self.mixed:
            return ""
        names = ", ".join(short_name(unit) for unit in self.float_units)
        return (
            f"the plain recipe failed ({'; '.join(self.plain.failures()) if self.plain else 'gate'}); kept float: "
            f"{names} ({len(self.float_units)} of {self.units} blocks, most sensitive first on the calibration "
            f"tiles); {self.speedup:.2f}x fp32 {self.speed_basis}; searched in {self.seconds:.0f}s"
        )

    def summary(self) -> dict[str, object]:
        return {
            "float_units": list(self.float_units),
            "units": self.units,
            "plain_recipe_failures": list(self.plain.failures()) if self.plain else [],
            "sensitivity": self.sensitivity,
            "speedup_vs_fp32_batch8": self.speedup,
        }


def short_name(unit: str) -> str:
    """``/features/blocks/blocks.5/blocks.5.3`` -> ``blocks.5.3``."""
    return unit.rstrip("/").rsplit("/", 1)[-1]


def mixed_int8(
    fp32_path: str | os.PathLike,
    staged: Path,
    calibration: np.ndarray,
    gate: Callable[[Path], ParityReport],
    speed_tiles: np.ndarray,
    recipe: Int8Recipe | None = None,
    *,
    max_float_units: int = MAX_FLOAT_UNITS,
    min_speedup: float = MIN_SPEEDUP,
    what: str = "int8",
    say: Callable[[str], None] = lambda _line: None,
    outputs: Outputs | None = None,
    tiles_per_input: int = 1,
    speed_batch: int = SPEED_BATCH,
    speed_basis: str = f"at batch {SPEED_BATCH}",
) -> Int8Choice:
    """Quantise ``fp32_path`` into ``staged`` with ``recipe``, or with the fewest blocks kept float on top of its
    own ``float_units`` that pass ``gate``; ``what`` names the model in refusals.

    ``calibration`` and ``speed_tiles`` are what the graph reads: tiles, or for the dense graph mosaics of tiles;
    ``tiles_per_input`` says how many tiles each holds (sensitivity and bias correction measure on as many tiles
    either way), ``outputs`` gives per-tile logits and CAMs from a session on some of them (default: the tile
    graph's own outputs), and ``speed_batch`` of them make one timed call.

    Raises:
        ParityError: no mix of up to ``max_float_units`` float blocks passes, or the one that passes is not
            ``min_speedup`` faster than fp32 (``staged`` is then removed).
    """
    started = time.perf_counter()
    recipe = recipe or Int8Recipe()
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "ranges.json"
        quantize_int8(fp32_path, staged, calibration, recipe, calibration_cache=cache, tiles_per_input=tiles_per_input)
        plain = gate(staged)
        if plain.passed:
            return Int8Choice(plain)
        if max_float_units < 1:
            staged.unlink(missing_ok=True)
            plain.raise_if_failed(what)
        units = quantised_units(fp32_path, recipe)
        say(f"int8: the plain recipe failed ({'; '.join(plain.failures())}); measuring {len(units)} blocks")
        outputs = outputs or (lambda session, tiles: run_session(session, tiles, 16))
        probe = max(1, PROBE_TILES // tiles_per_input)
        sensitivity = _sensitivity(fp32_path, staged, calibration, recipe, cache, units, outputs, probe)
        order = ranked(sensitivity, decisions_failed=plain.decision_agreement < plain.min_agreement)
        chosen: list[str] = []
        report = plain
        for unit in order[:max_float_units]:
            chosen.append(unit)
            mix = replace(recipe, float_units=(*recipe.float_units, *chosen))
            quantize_int8(fp32_path, staged, calibration, mix, calibration_cache=cache, tiles_per_input=tiles_per_input)
            report = gate(staged)
            say(f"int8: {len(chosen)} block(s) float ({short_name(unit)} added): {_gist(report)}")
            if report.passed:
                break
    if not report.passed:
        staged.unlink(missing_ok=True)
        raise ParityError(
            f"{what} failed the parity gate with the plain recipe ({'; '.join(plain.failures())}) and with the "
            f"{len(chosen)} most sensitive of {len(units)} blocks kept float ({'; '.join(report.failures())}), so "
            f"it was not written: {report.describe()}"
        )
    speedup = measure_speedup(fp32_path, staged, speed_tiles, batch_size=speed_batch)
    seconds = time.perf_counter() - started
    choice = Int8Choice(report, tuple(chosen), len(units), plain, sensitivity, speedup, seconds, speed_basis)
    if speedup < min_speedup:
        staged.unlink(missing_ok=True)
        raise ParityError(
            f"{what} passes the parity gate only with {len(chosen)} of {len(units)} blocks float "
            f"({', '.join(map(short_name, chosen))}), and that model runs {speedup:.2f}x fp32 {speed_basis}, "
            f"below the {min_speedup:.1f}x that makes int8 worth shipping, so it was not written; use the fp32 model"
        )
    return choice


def _gist(report: ParityReport) -> str:
    return f"decisions {report.decision_agreement:.2%}, heatmap correlation {report.cam_correlation:.3f}" + (
        " (passes)" if report.passed else ""
    )


def ranked(sensitivity: dict[str, dict[str, float]], *, decisions_failed: bool) -> list[str]:
    """Blocks, most sensitive first: by the logit error left with the block float when decisions failed (lowest
    first), otherwise by the heatmap correlation (highest first); the other measure breaks ties."""
    if decisions_failed:
        return sorted(sensitivity, key=lambda u: (sensitivity[u]["logit_error"], -sensitivity[u]["correlation"]))
    return sorted(sensitivity, key=lambda u: (-sensitivity[u]["correlation"], sensitivity[u]["logit_error"]))


def _sensitivity(
    fp32_path: str | os.PathLike,
    staged: Path,
    calibration: np.ndarray,
    recipe: Int8Recipe,
    cache: Path,
    units: list[str],
    outputs: Outputs,
    probe_items: int = PROBE_TILES,
) -> dict[str, dict[str, float]]:
    """Per block, with it float (on top of the recipe's own float blocks): mean heatmap correlation and mean
    |logit| error against fp32 on a sample of the calibration inputs."""
    probe = calibration[:: max(1, len(calibration) // probe_items)][:probe_items]
    logits, reference = outputs(make_session(str(fp32_path), providers="cpu"), probe)
    measured = {}
    quick = replace(recipe, bias_correction=False)
    for unit in units:
        mix = replace(quick, float_units=(*recipe.float_units, unit))
        quantize_int8(fp32_path, staged, calibration, mix, calibration_cache=cache)
        moved, cams = outputs(make_session(str(staged), providers="cpu"), probe)
        measured[unit] = {
            "correlation": float(heatmap_correlations(reference, cams).mean()),
            "logit_error": float(np.abs(moved - logits).mean()),
        }
    return measured


def measure_speedup(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    tiles: np.ndarray,
    rounds: int = SPEED_ROUNDS,
    batch_size: int = SPEED_BATCH,
) -> float:
    """Median over paired rounds of fp32 time / int8 time for one batch of ``batch_size`` inputs (CPU): tiles, or
    for the dense graph whole frames."""
    batch = np.ascontiguousarray(np.resize(tiles, (batch_size, *tiles.shape[1:])))
    sessions = [make_session(str(path), providers="cpu") for path in (fp32_path, int8_path)]
    for session in sessions:  # warm-up: first runs allocate
        session.run(None, {"image": batch})
    ratios = []
    for _ in range(rounds):
        times = []
        for session in sessions:
            started = time.perf_counter()
            for _repeat in range(3):
                session.run(None, {"image": batch})
            times.append(time.perf_counter() - started)
        ratios.append(times[0] / times[1])
    return statistics.median(ratios)
