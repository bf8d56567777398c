"""``crackscope demo``: the whole job on a fresh machine with no data.

Generates a synthetic crack / no-crack patch set (with a few ambiguous items and one corrupt file, so the
robustness paths are exercised too), fine-tunes the pretrained default backbone for a minute or two on CPU,
evaluates on a held-out synthetic set, exports fp32 and int8 ONNX models (each verified against the trained model
before it is written), inspects a folder of generated large frames (one of them corrupt) with the int8 model, and
prints where everything is: the results store, the report page and the verdict counts.

Example:
    $ crackscope demo --out demo-out
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from crackscope.labelled import DataConfig

if TYPE_CHECKING:
    from crackscope.deploy.export import ExportResult
    from crackscope.inspect.batch import BatchSummary
    from crackscope.training.evaluate import Evaluation


@dataclass(frozen=True)
class DemoConfig:
    out: str = "demo-out"
    seed: int = 0
    patch_size: int = 96
    train_per_class: int = 500
    train_ambiguous: int = 40
    test_per_class: int = 150
    test_ambiguous: int = 40
    calib_per_class: int = 150  # 2% escape at 90% confidence needs >= 114 cracks (1% would need 230)
    epochs: int = 6
    frames: int = 9
    frame_height: int = 768
    frame_width: int = 1024
    workers: int = 1
    progress: bool = True


def run_demo(config: DemoConfig) -> Evaluation:
    """Generate data, train, evaluate; returns the evaluation on the held-out set."""
    from crackscope.calibration.calibrate import calibrate_step
    from crackscope.deploy.export import ExportConfig, export
    from crackscope.training import synthetic
    from crackscope.training.evaluate import evaluate_checkpoint
    from crackscope.training.train import TrainConfig, train

    started = time.perf_counter()
    out = Path(config.out)
    train_dir = synthetic.write_patch_dataset(
        out / "data" / "train",
        n_crack=config.train_per_class,
        n_ok=config.train_per_class,
        n_ambiguous=config.train_ambiguous,
        size=config.patch_size,
        seed=config.seed,
        corrupt=1,
    )
    test_dir = synthetic.write_patch_dataset(
        out / "data" / "test",
        n_crack=config.test_per_class,
        n_ok=config.test_per_class,
        n_ambiguous=config.test_ambiguous,
        size=config.patch_size,
        seed=config.seed + 1000,
    )
    print(f"[1/6] synthetic data: {train_dir} (train, incl. 1 corrupt file), {test_dir} (held-out test)")
    train_config = TrainConfig(
        data=str(train_dir),
        out=str(out / "run"),
        input_size=config.patch_size,
        epochs=config.epochs,
        head_epochs=1,
        batch_size=32,
        lr=2e-3,
        seed=config.seed,
        workers=config.workers,
        progress=config.progress,
        patience=2,
        data_config=DataConfig(ambiguous="soft"),
    )
    print(f"[2/6] fine-tuning {train_config.backbone} (ImageNet weights, bundled) for {config.epochs} epochs")
    result = train(train_config)
    print("[3/6] evaluating on the held-out set")
    evaluation = evaluate_checkpoint(result.checkpoint, test_dir, out / "eval", workers=config.workers)
    print("[4/6] exporting ONNX (fp32 + int8 calibrated on training tiles), each checked against PyTorch first")
    exported = export(
        ExportConfig(
            checkpoint=str(result.checkpoint),
            out=str(out / "model.onnx"),
            int8=True,
            calib_data=str(train_dir),
            calib_tiles=128,
            seed=config.seed,
        )
    )
    deployed = _deployable(exported)
    calib_dir = synthetic.write_patch_dataset(
        out / "data" / "calib",
        n_crack=config.calib_per_class,
        n_ok=config.calib_per_class,
        n_ambiguous=config.test_ambiguous,
        size=config.patch_size,
        seed=config.seed + 3000,
    )
    print(f"[5/6] calibrating {deployed.name} on a held-out synthetic split, ambiguous items included ({calib_dir})")
    calibrate_step(deployed, calib_dir, out / "calibration", progress=config.progress)
    print(
        f"[6/6] inspecting {config.frames} generated {config.frame_height}x{config.frame_width} frames (and one "
        f"corrupt file) with {deployed.name}"
    )
    inspection = _inspect_frames(out, deployed, config)
    _print_summary(evaluation, result.run_dir, out, time.perf_counter() - started)
    print("  exported models (parity measured before writing):")
    for line in exported.describe().splitlines():
        print(f"    {line}")
    counts = ", ".join(f"{verdict} {n}" for verdict, n in inspection.counts.items())
    print(f"  inspection      {counts}")
    print(f"  report          {inspection.report}")
    print(f"  results         {inspection.out / 'results.sqlite'} (and results.jsonl)")
    print(f"  calibration     {out / 'calibration' / 'calibration.html'}")
    print(f"  QA review       crackscope review --results {inspection.out}   (then open http://127.0.0.1:8765)")
    return evaluation


def _deployable(exported: ExportResult) -> Path:
    """The int8 model when its gate passed (the edge deployable), else the verified fp32 one."""
    by_precision = {m.precision: m.path for m in exported.models}
    return by_precision.get("int8", by_precision["fp32"])


def _inspect_frames(out: Path, model: Path, config: DemoConfig) -> BatchSummary:
    from crackscope.inspect.batch import BatchConfig, run_batch
    from crackscope.training import synthetic

    frames = out / "data" / "frames"
    results = out / "inspect"
    shutil.rmtree(frames, ignore_errors=True)  # the demo regenerates everything: no results of an earlier model
    shutil.rmtree(results, ignore_errors=True)
    frames.mkdir(parents=True)
    rng = np.random.default_rng(config.seed + 2000)
    for index in range(config.frames):
        cracks = 0 if index % 3 == 0 else int(rng.integers(1, 3))
        image, _ = synthetic.make_frame(config.frame_height, config.frame_width, rng, n_cracks=cracks)
        cv2.imwrite(str(frames / f"frame_{index:03d}.jpg"), image)
    (frames / "frame_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return run_batch(BatchConfig(inputs=(str(frames),), model=str(model), out=str(results), progress=config.progress))


def _print_summary(evaluation: Evaluation, run_dir: Path, out: Path, seconds: float) -> None:
    clear, ambiguous = evaluation.metrics.clear, evaluation.metrics.ambiguous
    print()
    print(f"crackscope demo finished in {seconds:.0f}s")
    print(
        f"  test (clear items, n={clear.n}): accuracy {clear.accuracy:.4f}  f1 {clear.f1:.4f}  "
        f"ROC-AUC {clear.roc_auc:.4f}  confusion [[tn, fp], [fn, tp]] = {[list(row) for row in clear.confusion_matrix]}"
    )
    if ambiguous.n:
        print(
            f"  ambiguous items (n={ambiguous.n}): mean crack probability {ambiguous.mean_probability:.2f}, "
            f"{ambiguous.share_between_0_2_and_0_8:.0%} scored between 0.2 and 0.8"
        )
    print(f"  checkpoint      {run_dir / 'model.pt'}")
    print(f"  run config      {run_dir / 'config.yaml'}")
    print(f"  train metrics   {run_dir / 'metrics.json'}")
    print(f"  test metrics    {out / 'eval' / 'metrics.json'}")
    for curve in evaluation.curves:
        print(f"  curve           {curve}")
