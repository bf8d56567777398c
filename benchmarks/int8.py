"""Which int8 recipe to ship: decision agreement, heatmap correlation and speed of candidate recipes on a real model.

For one trained checkpoint of the accuracy benchmark, this exports the fp32 graph the way ``crackscope export`` does,
draws int8 calibration tiles from the images the model was trained on and verification tiles from its held-out
test images (the split record in ``benchmarks/results/models/<job>.split.json``), and for each candidate
:class:`~crackscope.deploy.quantize.Int8Recipe`:

1. quantises the fp32 graph (candidates with the same calibration settings share one calibration run);
2. measures, against fp32 on the verification tiles, the decision agreement (logit >= 0 on both sides) and the
   heatmap correlation (:func:`~crackscope.deploy.verify.heatmap_correlations`: mean, 5th percentile, and the mean
   over the tiles fp32 calls defect, whose heatmaps are the ones a person looks at);
3. times every candidate and the fp32 graph at batch 1 and 8 in paired, interleaved rounds (``benchmarks/speed.py``'s
   method: all sessions open at once, each round runs every method in a shuffled order, a ratio is the median over
   rounds of the per-round ratio), and prints the load average per round.

Agreement and correlation do not depend on the machine's load, the timings and speed-ups do: choose candidates
by accuracy on a busy machine and time the few best on a quiet one. Both depend on the CPU (int8 kernels differ
with and without VNNI, see :mod:`crackscope.deploy.quantize`), so measure on the CPU you deploy to. A candidate
passes when it meets export's default gates (agreement >= 99%, mean correlation >= 0.95). Candidates are named
modifications of the recipe main shipped before this comparison (``main``); ``a+b`` combines modifications,
``tiles-N`` calibrates on N tiles, and ``default`` is the recipe export uses now.

Run:
    python benchmarks/int8.py --job ozgenel-concrete --rounds 0                  # accuracy of all candidates
    python benchmarks/int8.py --job magnetic-tile --candidates main default pair-safe+tail-4 --rounds 9
    python benchmarks/int8.py --checkpoint run/model.pt --split split.json --data DIR --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import speed  # benchmarks/speed.py: the paired-round timing
from saved_models import DATA_DIR, REPO, read_held_out_file, split_path

from crackscope.deploy.export import ExportConfig, Tiles, balanced, read_tiles, to_onnx_bytes
from crackscope.deploy.quantize import Int8Recipe, quantize_int8
from crackscope.deploy.verify import heatmap_correlations, run_session
from crackscope.inspect.model import make_session
from crackscope.labelled import Clarity, load_samples
from crackscope.training.checkpoint import load_checkpoint

MIN_AGREEMENT = ExportConfig().int8_min_agreement  # export's default gates
MIN_CORRELATION = ExportConfig().int8_min_cam_correlation

# The recipe main shipped before this comparison; every candidate is a modification of it.
MAIN = Int8Recipe(
    op_types=("Conv", "Clip", "Add"),
    float_stem=True,
    pixel_stem=False,
    float_tail_convs=1,
    calibration="MinMax",
    percentile=99.999,
    moving_average=False,
    per_channel=True,
    reduce_range=False,
    weight_type="QInt8",
    pair_safe_weights=False,
    symmetric_activations=False,
    quant_format="QDQ",
)
MODIFICATIONS: dict[str, dict[str, object]] = {
    "main": {},
    "reduce-range": {"reduce_range": True},
    "u8u8": {"weight_type": "QUInt8"},
    "pair-safe": {"pair_safe_weights": True},
    "per-tensor": {"per_channel": False},
    "symmetric-act": {"symmetric_activations": True},
    "moving-average": {"moving_average": True},
    "entropy": {"calibration": "Entropy"},
    "percentile-99.99": {"calibration": "Percentile", "percentile": 99.99},
    "percentile-99.999": {"calibration": "Percentile", "percentile": 99.999},
    "tail-0": {"float_tail_convs": 0},
    "tail-4": {"float_tail_convs": 4},
    "tail-7": {"float_tail_convs": 7},
    "tail-10": {"float_tail_convs": 10},
    "int8-stem": {"float_stem": False},  # quantised on the preprocessed image
    "pixel-stem": {"float_stem": False, "pixel_stem": True},  # quantised, reading the uint8 pixels
    "conv-only": {"op_types": ("Conv",)},
    "qoperator": {"quant_format": "QOperator"},
}
TILE_PREFIX = "tiles-"  # "tiles-1024": calibrate on that many tiles instead of --calib-tiles
DEFAULT_CANDIDATES = (
    "main",
    "default",
    "reduce-range",
    "u8u8",
    "per-tensor",
    "symmetric-act",
    "moving-average",
    "entropy",
    "percentile-99.99",
    "percentile-99.999",
    "tail-4",
    "tail-7",
    "tail-10",
    "conv-only",
    "qoperator",
    "tiles-1024",
    "pair-safe",
    "pair-safe+entropy",
    "pair-safe+percentile-99.99",
    "pair-safe+percentile-99.999",
    "pair-safe+moving-average",
    "pair-safe+tail-4",
    "pair-safe+tail-7",
    "pair-safe+tiles-1024",
    "pair-safe+qoperator",
    "pair-safe+percentile-99.99+pixel-stem",
)


@dataclass(frozen=True)
class Candidate:
    name: str
    recipe: Int8Recipe
    calib_tiles: int


def candidate(name: str, calib_tiles: int) -> Candidate:
    """``main``, ``default``, a modification of ``main`` (``MODIFICATIONS``, ``tiles-N``), or ``a+b+...`` of them."""
    if name == "default":
        return Candidate(name, Int8Recipe(), calib_tiles)
    changes: dict[str, object] = {}
    for part in name.split("+"):
        if part.startswith(TILE_PREFIX) and part[len(TILE_PREFIX) :].isdigit():
            calib_tiles = int(part[len(TILE_PREFIX) :])
        elif part in MODIFICATIONS:
            changes |= MODIFICATIONS[part]
        else:
            known = ", ".join([*MODIFICATIONS, "default", f"{TILE_PREFIX}N"])
            raise SystemExit(f"unknown candidate {part!r} in {name!r}; known: {known} (combine with +)")
    try:
        return Candidate(name, replace(MAIN, **changes), calib_tiles)
    except ValueError as error:  # a combination the recipe refuses, e.g. pair-safe+per-tensor
        raise SystemExit(f"candidate {name!r}: {error}") from None


@dataclass(frozen=True)
class Settings:
    checkpoint: Path
    split: Path
    data_root: Path
    candidates: tuple[Candidate, ...]
    calib_tiles: int
    verify_tiles: int | None
    sizes: tuple[int, ...]
    budget: speed.Budget
    seed: int
    json_path: Path | None


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="ozgenel-concrete", help="accuracy-benchmark job (default ozgenel-concrete)")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results", help="benchmark results dir")
    parser.add_argument("--checkpoint", type=Path, help="default: <results>/accuracy/<job>/model.pt")
    parser.add_argument("--split", type=Path, help="held-out record; default: <results>/models/<job>.split.json")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help=f"datasets root (default {DATA_DIR})")
    parser.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES), help="candidate names")
    parser.add_argument("--calib-tiles", type=int, default=256, help="calibration tiles (default 256, export's)")
    parser.add_argument("--verify-tiles", type=int, help="cap on held-out verification tiles (default: all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8], help="batch sizes timed (default 1 8)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds; 0 skips timing (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per candidate, batch size and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per candidate and batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    return Settings(
        checkpoint=args.checkpoint or args.results / "accuracy" / args.job / "model.pt",
        split=args.split or split_path(args.job, args.results / "models"),
        data_root=args.data,
        candidates=tuple(candidate(name, args.calib_tiles) for name in dict.fromkeys(args.candidates)),
        calib_tiles=args.calib_tiles,
        verify_tiles=args.verify_tiles,
        sizes=tuple(args.sizes),
        budget=speed.Budget(args.warmup, args.rounds, args.runs),
        seed=args.seed,
        json_path=args.json,
    )


# --- tiles --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileSets:
    calibration: dict[int, Tiles]  # by count: from the images the model was trained or validated on
    verification: Tiles  # the held-out test images


def tile_sets(settings: Settings, size: int, data_config) -> TileSets:
    """Calibration tiles from the trained-on images, verification tiles from the held-out test images."""
    held_out = read_held_out_file(settings.split)
    root = settings.data_root / held_out.dataset
    dataset = load_samples(root, data_config)
    test = set(held_out.test)
    clear = [s for s in dataset.samples if s.clarity is Clarity.CLEAR]
    unseen = [s for s in clear if str(s.path.relative_to(root)) in test]
    trained_on = [s for s in clear if str(s.path.relative_to(root)) not in test]
    if settings.verify_tiles is not None:
        unseen = balanced(unseen, settings.verify_tiles, settings.seed)
    verification = read_tiles(unseen, size, f"{len(unseen)} held-out test images of {held_out.job}")
    counts = sorted({c.calib_tiles for c in settings.candidates})
    calibration = {
        n: read_tiles(chosen, size, f"{len(chosen)} trained-on images of {held_out.job}")
        for n in counts
        for chosen in [balanced(trained_on, n, settings.seed + 1)]
    }
    return TileSets(calibration, verification)


# --- accuracy -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accuracy:
    agreement: float
    correlation_mean: float
    correlation_p5: float
    correlation_defect: float  # mean over the tiles fp32 calls defect
    accuracy_drop: float  # fp32 accuracy - int8 accuracy on the held-out labels
    calibration_tiles: int  # as many as asked for, or all the trained-on images of the rarer class allow
    quantise_s: float

    @property
    def passes(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and self.correlation_mean >= MIN_CORRELATION


def measure_accuracy(
    fp32: tuple[np.ndarray, np.ndarray], int8_path: Path, tiles: Tiles, calibration_tiles: int, quantise_s: float
) -> Accuracy:
    """The candidate's outputs against fp32's on the verification tiles (batch 8)."""
    logits, cams = run_session(make_session(int8_path, providers="cpu"), tiles.images, 8)
    correlations = heatmap_correlations(fp32[1], cams)
    defect = fp32[0] >= 0
    truth = tiles.labels >= 0.5
    return Accuracy(
        agreement=float(((logits >= 0) == defect).mean()),
        correlation_mean=float(correlations.mean()),
        correlation_p5=float(np.percentile(correlations, 5)),
        correlation_defect=float(correlations[defect].mean()) if defect.any() else float("nan"),
        accuracy_drop=float((defect == truth).mean() - ((logits >= 0) == truth).mean()),
        calibration_tiles=calibration_tiles,
        quantise_s=quantise_s,
    )


def quantise_all(
    fp32_path: Path, tile_sets: TileSets, candidates: Sequence[Candidate], folder: Path
) -> dict[str, tuple[Path, float]]:
    """Each candidate's int8 file and the seconds it took; candidates with equal calibration share the ranges."""
    files = {}
    for number, cand in enumerate(candidates):
        path = folder / f"candidate-{number}.onnx"
        cache = folder / f"ranges-{cand.calib_tiles}-{cand.recipe.calibration_key()}.json"
        started = time.perf_counter()
        quantize_int8(
            fp32_path, path, tile_sets.calibration[cand.calib_tiles].images, cand.recipe, calibration_cache=cache
        )
        files[cand.name] = (path, time.perf_counter() - started)
        print(f"  quantised {cand.name} in {files[cand.name][1]:.0f}s", flush=True)
    return files


# --- speed --------------------------------------------------------------------------------------------------------


def measure_speed(
    fp32_path: Path, files: dict[str, tuple[Path, float]], tiles: Tiles, settings: Settings
) -> dict[str, dict[int, float]]:
    """ms/tile of fp32 and every candidate, and each candidate's paired speed-up over fp32, per batch size."""
    methods = [speed.Method("fp32", "fp32", "ORT default", speed.ort_builder(fp32_path))]
    methods += [speed.Method(name, name, "ORT default", speed.ort_builder(path)) for name, (path, _) in files.items()]
    timing_settings = speed.Settings(settings.sizes, 0, settings.budget, 0, ("cpu",), settings.seed, None, quick=False)
    results = speed.measure_all(methods, tiles.images, timing_settings)
    table: dict[str, dict[int, float]] = {}
    for method in methods:
        for size, timing in results[method.key].items():
            table.setdefault(f"{method.key} ms/tile", {})[size] = 1000.0 / timing.images_per_s
        if method.key != "fp32":
            ratio = speed.Ratio(method.key, method.key, "fp32")
            table[f"{method.key} speed-up"] = speed.ratio_values(ratio, results)
    return table


# --- report -------------------------------------------------------------------------------------------------------


def describe(recipe: Int8Recipe) -> str:
    """The fields in which ``recipe`` differs from main's."""
    changed = {k: v for k, v in asdict(recipe).items() if asdict(MAIN)[k] != v}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "(main's recipe)"


def table(
    candidates: Sequence[Candidate], accuracy: dict[str, Accuracy], timing: dict[str, dict[int, float]], sizes
) -> str:
    """One markdown row per candidate (and fp32's timing), speed columns only for the batch sizes timed."""
    heads = ["candidate", "differs from main", "calib tiles", "agreement", "corr mean", "corr p5"]
    heads += ["corr defect tiles", "acc drop", "gates"]
    heads += [f"ms/tile b{s}" for s in sizes] + [f"x fp32 b{s}" for s in sizes]
    rows = [heads, ["---", "---"] + ["---:"] * 6 + ["---"] + ["---:"] * (2 * len(sizes))]
    rows.append(["fp32"] + [""] * 8 + [_ms(timing.get("fp32 ms/tile", {}).get(s)) for s in sizes] + [""] * len(sizes))
    default = ExportConfig()
    for cand in candidates:
        a = accuracy[cand.name]
        is_default = cand.recipe == default.int8_recipe  # the recipe export uses, whatever the tile count
        rows.append(
            [cand.name + (" (default)" if is_default else ""), describe(cand.recipe), str(a.calibration_tiles)]
            + [f"{a.agreement:.2%}", f"{a.correlation_mean:.3f}", f"{a.correlation_p5:.3f}"]
            + [f"{a.correlation_defect:.3f}", f"{a.accuracy_drop:+.4f}", "pass" if a.passes else "FAIL"]
            + [_ms(timing.get(f"{cand.name} ms/tile", {}).get(s)) for s in sizes]
            + [_ratio(timing.get(f"{cand.name} speed-up", {}).get(s)) for s in sizes]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    print(f"load average (1 min) at start: {speed.load_average()}\n", flush=True)
    model, header = load_checkpoint(settings.checkpoint)
    size = model.spec.input_size
    tiles = tile_sets(settings, size, header.data_config())
    print(f"verification: {tiles.verification.source}; calibration: {[t.source for t in tiles.calibration.values()]}")
    accuracy: dict[str, Accuracy] = {}
    with tempfile.TemporaryDirectory(prefix="crackscope-int8-") as scratch:
        fp32_path = Path(scratch) / "model.onnx"
        fp32_path.write_bytes(to_onnx_bytes(model))
        fp32 = run_session(make_session(fp32_path, providers="cpu"), tiles.verification.images, 8)
        files = quantise_all(fp32_path, tiles, settings.candidates, Path(scratch))
        for cand in settings.candidates:
            path, seconds = files[cand.name]
            calibrated = len(tiles.calibration[cand.calib_tiles])
            accuracy[cand.name] = measure_accuracy(fp32, path, tiles.verification, calibrated, seconds)
        print(f"\n## Accuracy against fp32 ({settings.checkpoint})\n")
        print(table(settings.candidates, accuracy, {}, ()), flush=True)
        timing = {}
        if settings.budget.rounds:
            print("\n## Timing (paired, interleaved rounds)\n", flush=True)
            timing = measure_speed(fp32_path, files, tiles.verification, settings)
    print(f"\n## Results ({header.config.get('backbone')}, {size} px, {len(tiles.verification)} verification tiles)\n")
    print(table(settings.candidates, accuracy, timing, settings.sizes if timing else ()))
    print(f"\nload average (1 min) at end: {speed.load_average()}")
    if settings.json_path is not None:
        payload = {
            "checkpoint": str(settings.checkpoint),
            "verification": tiles.verification.source,
            "candidates": {
                c.name: {"recipe": asdict(c.recipe), "calib_tiles": c.calib_tiles} for c in settings.candidates
            },
            "accuracy": {name: asdict(a) for name, a in accuracy.items()},
            "timing": timing,
            "load_average_end": speed.load_average(),
        }
        settings.json_path.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
