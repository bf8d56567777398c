"""Inference speed of the crack classifier on this machine: PyTorch eager vs ONNX Runtime fp32 and int8, and what
the heatmap costs.

Builds the default model (EfficientNet-Lite0, bundled ImageNet backbone weights, a randomly initialised but seeded
head: speed does not depend on training), exports it to ONNX the way ``crackscope export`` does (uint8 tiles in,
``logit`` and ``cam`` out), quantises an int8 copy calibrated on synthetic crack/ok tiles, and then measures, in one
run, images per second at each batch size for:

1. PyTorch eager (``torch.inference_mode()``, logit only, torch's default threads);
2. ONNX Runtime fp32 (logit + cam), ``ORT_ENABLE_ALL``, ONNX Runtime's default threads;
3. ONNX Runtime int8 (logit + cam);
4. int8 and fp32 as two single-threaded sessions run concurrently from two Python threads, each on its own batch
   (aggregate images/s, i.e. two streams of the given batch size);
5. a plain export of the same network (float NCHW input already preprocessed, static padding, logit only, no
   CAM): what the network alone costs in ONNX Runtime, the yardstick for our graph's preprocessing and CAM;
6. the 16 px heatmap's cost: the graph against the same model exported without its stride-16 term (32 px cells);
7. the heatmap's cost, two ways: the fp32 graph with its ``cam`` output vs the same model exported without it, and
   pytorch-grad-cam ``GradCAM`` vs plain PyTorch inference. Both of the latter take the *preprocessed* float NCHW
   tensor, made once outside the timed region (GradCAM needs float NCHW input), so the ratio compares like with like.

All methods are measured in paired, interleaved rounds (a method timed alone, minutes after another, measures the
background load as much as the method; on a shared 2-core machine the ORT/eager ratio came out 1.12x and 1.69x in
two such runs): every session is opened first and warmed up ``--warmup`` times, then each of ``--rounds`` rounds times
``--runs`` runs of every method at every batch size, in a shuffled order, with a short pause between methods so that
spinning worker threads of the previous one have stopped. A method's images/s uses the median over rounds of its
per-round median run time; a ratio is the median over rounds of the per-round ratio (both methods measured within
seconds of each other). The load average is printed per round. Before timing, a few parity checks
make sure that the graphs being timed compute what they should (ONNX vs PyTorch, int8 vs fp32, in-graph CAM vs
GradCAM). Goals are printed next to the measured ratios and only reported, never asserted. Nothing is downloaded.

Run:
    .venv/bin/python benchmarks/speed.py                        # batch 1/8/32, a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/speed.py --quick                # smoke run: tiny counts, numbers not meaningful
    .venv/bin/python benchmarks/speed.py --sizes 1 8 --input-size 224 --rounds 9 --json speed.json
    .venv/bin/python benchmarks/speed.py --providers cpu cuda   # also ONNX Runtime on CUDA when available
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from crackscope.deploy.export import to_onnx_bytes
from crackscope.deploy.graph import fold_pads_into_convs, staticise_same_padding
from crackscope.deploy.quantize import quantize_int8
from crackscope.inspect.card import INPUT_NAME
from crackscope.inspect.model import make_session
from crackscope.training import synthetic
from crackscope.training.backbones import CrackNet, build_model, without_stride16_term

BACKBONE = "tf_efficientnet_lite0"
OPSET = 17
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
CHECK_TILES = 8  # synthetic tiles for the parity checks (others than the calibration tiles)

Step = Callable[[], object]  # one timed run: processes one batch per stream
StepFactory = Callable[[np.ndarray], Step]  # uint8 batch -> step
Builder = Callable[[contextlib.ExitStack], StepFactory]  # opens sessions etc.; closes them through the stack


# --- settings ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How long measuring runs: ``warmup`` untimed runs per method and batch size, then ``rounds`` x ``runs``."""

    warmup: int
    rounds: int
    runs: int  # timed runs per method, batch size and round
    pause_s: float = 0.1  # between methods: lets the previous method's spinning threads go idle


@dataclass(frozen=True)
class Settings:
    """Everything the command line decides."""

    sizes: tuple[int, ...]
    input_size: int
    budget: Budget
    calib_tiles: int
    providers: tuple[str, ...]
    seed: int
    json_path: Path | None
    quick: bool


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Command-line options; ``--quick`` changes the defaults of the counts to a few-second smoke run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", help="batch sizes (default 1 8; quick: 1 2)")
    parser.add_argument("--input-size", type=int, default=224, help="tile side in pixels (default 224)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds over all methods (default 7; quick: 2)")
    parser.add_argument(
        "--runs", type=int, help="timed runs per method and batch size in a round (default 3; quick: 1)"
    )
    parser.add_argument("--warmup", type=int, help="untimed runs per method before the rounds (default 2; quick: 1)")
    parser.add_argument("--calib-tiles", type=int, help="synthetic int8 calibration tiles (default 64; quick: 8)")
    parser.add_argument("--providers", nargs="+", choices=("cpu", "cuda"), default=["cpu"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny counts (numbers not meaningful)")
    args = parser.parse_args(argv)

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if args.quick else full)

    budget = Budget(pick(args.warmup, 2, 1), pick(args.rounds, 7, 2), pick(args.runs, 3, 1))
    return Settings(
        sizes=tuple(pick(args.sizes, [1, 8], [1, 2])),
        input_size=args.input_size,
        budget=budget,
        calib_tiles=pick(args.calib_tiles, 64, 8),
        providers=tuple(args.providers),
        seed=args.seed,
        json_path=args.json,
        quick=args.quick,
    )


# --- environment ------------------------------------------------------------------------------------------------


def cpu_info() -> tuple[str, int | None]:
    """CPU model name and number of physical cores, from ``/proc/cpuinfo`` when there is one."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return platform.processor() or platform.machine(), None
    model, physical, cores = None, None, set()
    for line in path.read_text().splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and model is None:
            model = value
        elif key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
    return model or platform.machine(), len(cores) or None


def environment() -> dict[str, object]:
    """Versions, cores, threads and providers that the numbers depend on."""
    model, physical_cores = cpu_info()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "physical_cores": physical_cores,
        "torch_threads": torch.get_num_threads(),
        "ort_threads": "default (one per physical core)",
        "ort_providers": ort.get_available_providers(),
        "load_average_1m": load_average(),
    }


def load_average() -> float | None:
    """The 1-minute load average (other work on the machine skews every number), when the OS reports one."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def print_environment(env: dict[str, object]) -> None:
    print("## Environment\n")
    for key, value in env.items():
        print(f"- {key}: {value}")
    print(flush=True)


# --- model, tiles and ONNX files --------------------------------------------------------------------------------


def benchmark_model(input_size: int, seed: int) -> CrackNet:
    """Lite0 with its bundled ImageNet weights and a seeded random head (both terms), in eval mode."""
    torch.manual_seed(seed)
    model = build_model(BACKBONE, pretrained=True, input_size=input_size).eval()
    model.fine.reset_parameters()  # a trained model's stride-16 term is not zero
    return model


def synthetic_tiles(size: int, count: int, seed: int) -> np.ndarray:
    """``count`` uint8 BGR tiles ``[count, size, size, 3]``, alternately ok and crack."""
    rng = np.random.default_rng(seed)
    return np.stack([synthetic.make_patch(size, "crack" if i % 2 else "ok", rng) for i in range(count)])


def batch_of(tiles: np.ndarray, size: int) -> np.ndarray:
    """A contiguous batch of ``size`` tiles, repeating ``tiles`` when there are fewer."""
    return np.ascontiguousarray(tiles[np.arange(size) % len(tiles)])


@dataclass(frozen=True)
class ModelFiles:
    fp32: Path  # logit + cam, as crackscope export writes it
    fp32_stride32: Path  # logit + cam of the same model without the stride-16 term (the 32 px heatmap graph)
    fp32_logit_only: Path
    int8: Path  # static QDQ, per-channel, calibrated on synthetic tiles
    plain: Path  # the network alone: preprocessed float NCHW in, logit out, static pads


def export_models(model: CrackNet, calibration: np.ndarray, folder: Path) -> ModelFiles:
    """Write the fp32, logit-only fp32, int8 and plain graphs to ``folder``."""
    files = ModelFiles(
        folder / "model.onnx",
        folder / "model.stride32.onnx",
        folder / "model.logit-only.onnx",
        folder / "model.int8.onnx",
        folder / "plain.onnx",
    )
    files.fp32.write_bytes(to_onnx_bytes(model, OPSET))
    files.fp32_stride32.write_bytes(to_onnx_bytes(without_stride16_term(model), OPSET))
    files.fp32_logit_only.write_bytes(to_onnx_bytes(model, OPSET, with_cam=False))
    quantize_int8(files.fp32, files.int8, calibration)
    files.plain.write_bytes(plain_onnx_bytes(model))
    return files


PLAIN_INPUT = "input"


def plain_onnx_bytes(model: CrackNet) -> bytes:
    """The network as a generic exporter would write it: ``PooledHead`` on preprocessed float NCHW input (no
    preprocessing, no CAM), TF-"same" padding made static for the tile size and folded into the convolutions."""
    net = copy.deepcopy(model).eval()
    size = model.spec.input_size
    example = preprocessed(net, np.zeros((2, size, size, 3), dtype=np.uint8))
    with torch.no_grad():
        staticise_same_padding(net.features, example[:1])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            PooledHead(net).eval(),
            (example,),
            buffer,
            input_names=[PLAIN_INPUT],
            output_names=["logit"],
            dynamic_axes={PLAIN_INPUT: {0: "batch"}, "logit": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return fold_pads_into_convs(onnx.load_from_string(buffer.getvalue())).SerializeToString()


# --- GradCAM ------------------------------------------------------------------------------------------------------


class PooledHead(nn.Module):
    """``features -> mean over H, W -> fc`` on preprocessed float NCHW input; output ``[N, 1]``.

    GradCAM hands each sample's output row to its target; ``ClassifierOutputTarget(0)`` indexes that row, so the
    output must keep its class dimension (a ``[N]`` output would give it 0-d scalars).
    """

    def __init__(self, model: CrackNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logit_of(self.model.maps_of(x)).unsqueeze(1)


def preprocessed(model: CrackNet, batch: np.ndarray) -> torch.Tensor:
    """The float NCHW input of the backbone (made under ``no_grad``: inference tensors cannot enter autograd)."""
    with torch.no_grad():
        return model.preprocess(torch.from_numpy(batch))


def open_gradcam(model: CrackNet, stack: contextlib.ExitStack):
    """A ``GradCAM`` on the last feature map; its hooks are removed when ``stack`` closes.

    Not entered as a context manager: ``BaseCAM.__exit__`` swallows ``IndexError``, which would hide a broken target.
    """
    from pytorch_grad_cam import GradCAM

    cam = GradCAM(model=PooledHead(model).eval(), target_layers=[model.features])
    stack.callback(cam.activations_and_grads.release)
    return cam


def gradcam_maps(cam, model: CrackNet, batch: np.ndarray) -> np.ndarray:
    """GradCAM heatmaps ``[N, S, S]`` in [0, 1] for the crack logit."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return cam(input_tensor=preprocessed(model, batch), targets=[ClassifierOutputTarget(0)] * len(batch))


# --- parity checks ----------------------------------------------------------------------------------------------


def sanity_checks(model: CrackNet, files: ModelFiles, seed: int) -> dict[str, float]:
    """Differences between what is timed and what it should compute, on a few tiles not used for calibration."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    batch = synthetic_tiles(model.spec.input_size, CHECK_TILES, seed)
    feed = {INPUT_NAME: batch}
    with torch.inference_mode():
        logit, cam = (t.numpy() for t in model.forward_with_cam(torch.from_numpy(batch)))
    fp32_logit, fp32_cam = make_session(files.fp32, providers="cpu").run(None, feed)
    coarse = without_stride16_term(model)
    with torch.inference_mode():
        coarse_logit, coarse_cam = (t.numpy() for t in coarse.forward_with_cam(torch.from_numpy(batch)))
    s32_logit, s32_cam = make_session(files.fp32_stride32, providers="cpu").run(None, feed)
    (plain_logit,) = make_session(files.fp32_logit_only, providers="cpu").run(None, feed)
    (network_logit,) = make_session(files.plain, providers="cpu").run(
        None, {PLAIN_INPUT: preprocessed(model, batch).numpy()}
    )
    int8_logit, int8_cam = make_session(files.int8, providers="cpu").run(None, feed)
    with contextlib.ExitStack() as stack:
        grad = gradcam_maps(open_gradcam(model, stack), model, batch)
    size = model.spec.input_size
    expected = scale_cam_image(scale_cam_image(np.maximum(coarse_cam, 0), (size, size)))  # GradCAM: the last map
    return {
        "fp32 logit std over the check tiles (scale for the rest)": float(np.std(logit)),
        "ORT fp32 vs PyTorch: logit max |diff|": float(np.abs(fp32_logit - logit).max()),
        "ORT fp32 vs PyTorch: cam max |diff|": float(np.abs(fp32_cam - cam).max()),
        "32 px heatmap graph vs its PyTorch model: logit max |diff|": float(np.abs(s32_logit - coarse_logit).max()),
        "32 px heatmap graph vs its PyTorch model: cam max |diff|": float(np.abs(s32_cam - coarse_cam).max()),
        "logit-only graph vs cam graph: logit max |diff|": float(np.abs(plain_logit - fp32_logit).max()),
        "plain export vs cam graph: logit max |diff|": float(np.abs(network_logit.reshape(-1) - fp32_logit).max()),
        "ORT int8 vs fp32: logit max |diff|": float(np.abs(int8_logit - fp32_logit).max()),
        "ORT int8 vs fp32: cam correlation": float(np.corrcoef(int8_cam.ravel(), fp32_cam.ravel())[0, 1]),
        "GradCAM vs in-graph CAM at the last map (ReLU, resized, scaled): max |diff|": float(
            np.abs(grad - expected).max()
        ),
    }


def print_checks(checks: dict[str, float]) -> None:
    print("## Parity checks (on the timed graphs)\n")
    for name, value in checks.items():
        print(f"- {name}: {value:.3g}")
    print(flush=True)


# --- methods ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One row of the throughput table."""

    key: str
    label: str
    threads: str
    build: Builder
    streams: int = 1  # batches processed per timed run


def ort_builder(path: Path, provider: str = CPU) -> Builder:
    def build(stack: contextlib.ExitStack) -> StepFactory:
        session = make_session(path, providers=[provider])

        def factory(batch: np.ndarray) -> Step:
            feed = {INPUT_NAME: batch}
            return lambda: session.run(None, feed)

        return factory

    return build


def pair_builder(path: Path) -> Builder:
    """Two single-threaded sessions, run at the same time from two Python threads, each on its own batch."""

    def build(stack: contextlib.ExitStack) -> StepFactory:
        sessions = [make_session(path, providers="cpu", intra_op_threads=1, inter_op_threads=1) for _ in range(2)]
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=2))

        def factory(batch: np.ndarray) -> Step:
            feed = {INPUT_NAME: batch}

            def step() -> list:
                futures = [pool.submit(session.run, None, feed) for session in sessions]
                return [future.result() for future in futures]

            return step

        return factory

    return build


def plain_builder(model: CrackNet, path: Path) -> Builder:
    """The plain export on the preprocessed float input (made once, outside the timed region)."""

    def build(stack: contextlib.ExitStack) -> StepFactory:
        session = make_session(path, providers="cpu")

        def factory(batch: np.ndarray) -> Step:
            feed = {PLAIN_INPUT: preprocessed(model, batch).numpy()}
            return lambda: session.run(None, feed)

        return factory

    return build


def torch_builder(model: CrackNet) -> Builder:
    def build(stack: contextlib.ExitStack) -> StepFactory:
        def factory(batch: np.ndarray) -> Step:
            images = torch.from_numpy(batch)

            def step() -> torch.Tensor:
                with torch.inference_mode():
                    return model(images)

            return step

        return factory

    return build


def float_head_builder(model: CrackNet) -> Builder:
    """Plain inference of GradCAM's module on the same preprocessed input: the reference for GradCAM's cost."""

    def build(stack: contextlib.ExitStack) -> StepFactory:
        head = PooledHead(model).eval()

        def factory(batch: np.ndarray) -> Step:
            inputs = preprocessed(model, batch)

            def step() -> torch.Tensor:
                with torch.inference_mode():
                    return head(inputs)

            return step

        return factory

    return build


def gradcam_builder(model: CrackNet) -> Builder:
    def build(stack: contextlib.ExitStack) -> StepFactory:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = open_gradcam(model, stack)

        def factory(batch: np.ndarray) -> Step:
            inputs = preprocessed(model, batch)
            targets = [ClassifierOutputTarget(0)] * len(batch)
            return lambda: cam(input_tensor=inputs, targets=targets)

        return factory

    return build


def ort_methods(files: ModelFiles, model: CrackNet) -> list[Method]:
    default = "ORT default"
    return [
        Method(
            "ort_plain",
            "ONNX Runtime fp32, plain export (float NCHW in, logit only)",
            default,
            plain_builder(model, files.plain),
        ),
        Method("ort_fp32", "ONNX Runtime fp32 (logit + cam)", default, ort_builder(files.fp32)),
        Method("ort_fp32_logit", "ONNX Runtime fp32, graph without cam", default, ort_builder(files.fp32_logit_only)),
        Method(
            "ort_fp32_s32",
            "ONNX Runtime fp32, 32 px heatmap (no stride-16 term)",
            default,
            ort_builder(files.fp32_stride32),
        ),
        Method("ort_int8", "ONNX Runtime int8 (logit + cam)", default, ort_builder(files.int8)),
        Method("pair_int8", "ONNX Runtime int8, 2 concurrent sessions", "2 x 1", pair_builder(files.int8), streams=2),
        Method("pair_fp32", "ONNX Runtime fp32, 2 concurrent sessions", "2 x 1", pair_builder(files.fp32), streams=2),
    ]


def cuda_methods(files: ModelFiles, providers: Sequence[str]) -> list[Method]:
    """ONNX Runtime on CUDA when asked for and it really starts; an explanation and no rows otherwise."""
    if "cuda" not in providers:
        return []
    if CUDA not in ort.get_available_providers():
        print(f"CUDA skipped: this onnxruntime has no {CUDA} (available: {ort.get_available_providers()})\n")
        return []
    started = make_session(files.fp32, providers=[CUDA]).get_providers()
    if started[0] != CUDA:
        print(f"CUDA skipped: {CUDA} did not start (missing libraries or device?); session ran on {started}\n")
        return []
    return [
        Method("cuda_fp32", "ONNX Runtime fp32 on CUDA (logit + cam)", "CUDA", ort_builder(files.fp32, CUDA)),
        Method("cuda_int8", "ONNX Runtime int8 on CUDA (logit + cam)", "CUDA", ort_builder(files.int8, CUDA)),
    ]


def torch_methods(model: CrackNet) -> list[Method]:
    threads = f"torch default ({torch.get_num_threads()})"
    return [
        Method("torch", "PyTorch eager (logit)", threads, torch_builder(model)),
        Method("torch_float", "PyTorch eager, preprocessed float input", threads, float_head_builder(model)),
        Method("gradcam", "pytorch-grad-cam GradCAM, same input", threads, gradcam_builder(model)),
    ]


# --- measuring --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    images_per_s: float  # images per timed run / median over rounds of the round's median run time
    images: int  # per timed run
    rounds_s: tuple[float, ...]  # each round's median run time, in round order (pairs with other methods' rounds)
    runs: int


@dataclass(frozen=True)
class Cell:
    """One method at one batch size, ready to run."""

    key: str
    label: str
    size: int
    images: int
    step: Step


def open_cells(methods: Sequence[Method], tiles: np.ndarray, settings: Settings, stack: contextlib.ExitStack):
    """Every method at every batch size, opened (sessions, hooks) and warmed up."""
    cells = []
    for method in methods:
        factory = method.build(stack)
        for size in settings.sizes:
            cell = Cell(method.key, method.label, size, size * method.streams, factory(batch_of(tiles, size)))
            for _ in range(settings.budget.warmup):
                cell.step()
            cells.append(cell)
    return cells


def time_cell(cell: Cell, budget: Budget) -> float:
    """One untimed run (caches after the previous method), then the median of ``budget.runs`` timed runs."""
    time.sleep(budget.pause_s)
    cell.step()
    times = []
    for _ in range(budget.runs):
        tick = time.perf_counter()
        cell.step()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def measure_all(methods: Sequence[Method], tiles: np.ndarray, settings: Settings) -> dict[str, dict[int, Timing]]:
    """All methods in paired, interleaved rounds, each round in its own shuffled order."""
    rounds: dict[tuple[str, int], list[float]] = {}
    with contextlib.ExitStack() as stack:
        cells = open_cells(methods, tiles, settings, stack)
        order = random.Random(settings.seed)
        for number in range(settings.budget.rounds):
            for cell in order.sample(cells, len(cells)):
                rounds.setdefault((cell.key, cell.size), []).append(time_cell(cell, settings.budget))
            print(f"  round {number + 1}/{settings.budget.rounds} done, load (1 min) {load_average()}", flush=True)
    results: dict[str, dict[int, Timing]] = {}
    for cell in cells:
        times = tuple(rounds[cell.key, cell.size])
        timing = Timing(cell.images / statistics.median(times), cell.images, times, len(times) * settings.budget.runs)
        results.setdefault(cell.key, {})[cell.size] = timing
    return results


# --- reporting --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    text: str
    test: Callable[[float], bool]
    batch: int | None = None  # judged at this batch size only; None: at every batch size


@dataclass(frozen=True)
class Ratio:
    """``images/s of numerator / images/s of denominator`` (for costs: time of denominator / time of numerator)."""

    label: str
    numerator: str
    denominator: str
    goal: Goal | None = None


GRADCAM_CLAIM = 11.0
RATIOS = (
    Ratio("ORT fp32 / PyTorch eager", "ort_fp32", "torch", Goal(">= 3x at batch 8", lambda r: r >= 3.0, batch=8)),
    Ratio(
        "plain export / ORT fp32 (cost of our graph)", "ort_plain", "ort_fp32", Goal("<= 1.15x", lambda r: r <= 1.15)
    ),
    Ratio("ORT int8 / ORT fp32", "ort_int8", "ort_fp32", Goal(">= 1.6x", lambda r: r >= 1.6)),
    Ratio("2x1-thread int8 / ORT fp32", "pair_int8", "ort_fp32"),
    Ratio("2x1-thread fp32 / ORT fp32", "pair_fp32", "ort_fp32"),
    Ratio("ORT fp32 CUDA / ORT fp32 CPU", "cuda_fp32", "ort_fp32"),
    Ratio("CAM output cost (time with / without)", "ort_fp32_logit", "ort_fp32", Goal("<= 1.05x", lambda r: r <= 1.05)),
    Ratio(
        "16 px heatmap cost (time with / 32 px graph)",
        "ort_fp32_s32",
        "ort_fp32",
        Goal("<= 1.10x at batch 8", lambda r: r <= 1.10, batch=8),
    ),
    Ratio(
        "pytorch-grad-cam cost (GradCAM / eager time)",
        "torch_float",
        "gradcam",
        Goal(f"about {GRADCAM_CLAIM:g}x (within ±25%)", lambda r: 0.75 * GRADCAM_CLAIM <= r <= 1.25 * GRADCAM_CLAIM),
    ),
)


def ratio_values(ratio: Ratio, results: dict[str, dict[int, Timing]]) -> dict[int, float]:
    """Median over rounds of the per-round speed ratio (the two methods ran within seconds of each other)."""
    top, bottom = results.get(ratio.numerator, {}), results.get(ratio.denominator, {})
    return {size: _paired_ratio(top[size], bottom[size]) for size in top if size in bottom}


def _paired_ratio(top: Timing, bottom: Timing) -> float:
    per_round = [(top.images / t) / (bottom.images / b) for t, b in zip(top.rounds_s, bottom.rounds_s, strict=True)]
    return statistics.median(per_round)


def verdict(goal: Goal | None, values: dict[int, float]) -> str:
    """``yes``/``no``, or which batch sizes meet the goal when only some do."""
    if goal is None:
        return ""
    judged = {size: goal.test(value) for size, value in values.items() if goal.batch in (None, size)}
    if not judged:
        return f"n/a (batch {goal.batch} not measured)"
    if all(judged.values()) or not any(judged.values()):
        return "yes" if all(judged.values()) else "no"
    met = ", ".join(str(size) for size, ok in judged.items() if ok)
    missed = ", ".join(str(size) for size, ok in judged.items() if not ok)
    return f"yes at batch {met}; no at {missed}"


def throughput_table(methods: Sequence[Method], results: dict[str, dict[int, Timing]], sizes: Sequence[int]) -> str:
    lines = [
        "| method | threads | " + " | ".join(f"batch {size} img/s" for size in sizes) + " |",
        "|---|---|" + "---:|" * len(sizes),
    ]
    for method in methods:
        cells = [f"{results[method.key][size].images_per_s:.1f}" for size in sizes]
        lines.append(f"| {method.label} | {method.threads} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(results: dict[str, dict[int, Timing]], sizes: Sequence[int]) -> tuple[str, list[dict]]:
    """The markdown table of ratios with goals and verdicts, and the same as JSON-ready rows."""
    lines = [
        "| ratio | " + " | ".join(f"batch {size}" for size in sizes) + " | goal | met |",
        "|---|" + "---:|" * len(sizes) + "---|---|",
    ]
    rows = []
    for ratio in RATIOS:
        values = ratio_values(ratio, results)
        if not values:
            continue
        goal_text, met = (ratio.goal.text if ratio.goal else ""), verdict(ratio.goal, values)
        cells = [f"{values[size]:.2f}x" if size in values else "" for size in sizes]
        lines.append(f"| {ratio.label} | " + " | ".join(cells) + f" | {goal_text} | {met} |")
        rows.append({"ratio": ratio.label, "values": values, "goal": goal_text, "met": met})
    return "\n".join(lines), rows


def save_json(path: Path, env: dict, settings: Settings, checks: dict, results: dict, ratios: list[dict]) -> None:
    payload = {
        "environment": env,
        "settings": {**asdict(settings), "json_path": str(settings.json_path)},
        "checks": checks,
        "throughput": {key: {size: asdict(t) for size, t in timings.items()} for key, timings in results.items()},
        "ratios": ratios,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"\nresults written to {path}")


# --- main -------------------------------------------------------------------------------------------------------


def prepare(settings: Settings, folder: Path) -> tuple[CrackNet, np.ndarray, ModelFiles]:
    """Model, calibration/input tiles and the three ONNX files, with how long each took."""
    started = time.perf_counter()
    model = benchmark_model(settings.input_size, settings.seed)
    tiles = synthetic_tiles(settings.input_size, max(settings.calib_tiles, 2), settings.seed)
    print(f"model and {len(tiles)} synthetic tiles: {time.perf_counter() - started:.1f}s", flush=True)
    started = time.perf_counter()
    files = export_models(model, tiles, folder)
    print(f"fp32 + logit-only export, int8 quantisation: {time.perf_counter() - started:.1f}s\n", flush=True)
    return model, tiles, files


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if settings.quick:
        print("QUICK SMOKE RUN: tiny counts, the numbers below are not meaningful.\n")
    env = environment()
    print_environment(env)
    with tempfile.TemporaryDirectory(prefix="crackscope-speed-") as scratch:
        model, tiles, files = prepare(settings, Path(scratch))
        checks = sanity_checks(model, files, settings.seed + 1)
        print_checks(checks)
        onnx_rows = ort_methods(files, model) + cuda_methods(files, settings.providers)
        torch_rows = torch_methods(model)
        print("## Measuring (all methods in paired, interleaved rounds)\n", flush=True)
        results = measure_all(onnx_rows + torch_rows, tiles, settings)
    print(f"\n## Throughput (images/s, median)\n\n{throughput_table(torch_rows + onnx_rows, results, settings.sizes)}")
    table, ratios = ratio_table(results, settings.sizes)
    print(f"\n## Ratios\n\n{table}")
    print(f"\nload average (1 min) at start {env['load_average_1m']}, at end {load_average()}")
    if settings.json_path is not None:
        save_json(settings.json_path, env, settings, checks, results, ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
