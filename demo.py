"""``crackscope demo``: the whole job on a fresh machine with no data.

Generates a synthetic crack / no-crack patch set (with a few ambiguous items and one corrupt file, so the
robustness paths are exercised too), fine-tunes the pretrained default backbone for a minute or two on CPU,
evaluates on a held-out synthetic set, exports fp32 and int8 ONNX models (each verified against the trained model
before it is written) and prints where everything is.

Example:
    $ crackscope demo --out demo-out
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crackscope.training.data import DataConfig

if TYPE_CHECKING:
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
    epochs: int = 6
    workers: int = 1
    progress: bool = True


def run_demo(config: DemoConfig) -> Evaluation:
    """Generate data, train, evaluate; returns the evaluation on the held-out set."""
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
    print(f"[1/4] synthetic data: {train_dir} (train, incl. 1 corrupt file), {test_dir} (held-out test)")
    train_config = TrainConfig(
        data=str(train_dir),
        out=str(out / "run"),
        input_size=config.patch_size,
        epochs=config.epochs,
        head_epochs=1,
        batch_size=32,
        lr=2e-3,
        augment="heavy",
        seed=config.seed,
        workers=config.workers,
        progress=config.progress,
        patience=2,
        data_config=DataConfig(ambiguous="soft"),
    )
    print(f"[2/4] fine-tuning {train_config.backbone} (ImageNet weights, bundled) for {config.epochs} epochs")
    result = train(train_config)
    print("[3/4] evaluating on the held-out set")
    evaluation = evaluate_checkpoint(result.checkpoint, test_dir, out / "eval", workers=config.workers)
    print("[4/4] exporting ONNX (fp32 + int8 calibrated on training tiles), each checked against PyTorch first")
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
    _print_summary(evaluation, result.run_dir, out, time.perf_counter() - started)
    print("  exported models (parity measured before writing):")
    for line in exported.describe().splitlines():
        print(f"    {line}")
    return evaluation


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
