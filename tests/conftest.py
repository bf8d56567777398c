"""Shared fixtures: small synthetic datasets and one tiny trained run, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("CRACKSCOPE_DATA", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set CRACKSCOPE_DATA)")
    return root


@pytest.fixture(scope="session")
def patch_data(tmp_path_factory) -> Path:
    """60 crack, 60 ok, 10 ambiguous 64-px synthetic patches and one corrupt file."""
    from crackscope.training import synthetic

    root = tmp_path_factory.mktemp("patches")
    return synthetic.write_patch_dataset(root, n_crack=60, n_ok=60, n_ambiguous=10, size=64, seed=3, corrupt=1)


@pytest.fixture(scope="session")
def tiny_run(patch_data, tmp_path_factory):
    """A real two-stage training run (1 head epoch + 2 fine-tune epochs) at 64 px on the synthetic patches."""
    from crackscope.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        data=str(patch_data),
        out=str(out),
        input_size=64,
        epochs=3,
        head_epochs=1,
        batch_size=16,
        lr=3e-3,
        workers=0,
        augment="light",
        progress=False,
        seed=1,
    )
    return train(config)


@pytest.fixture(scope="session")
def exported(tiny_run, patch_data, tmp_path_factory):
    """The tiny run exported to fp32, int8 and fp16 ONNX, all through their parity gates.

    The tiny model is barely trained (logits near 0), so int8 flips more decisions than a real model would: its
    agreement gate is lowered here to 80%; a test below checks that the default gate does refuse such a model.
    """
    from crackscope.deploy.export import ExportConfig, export

    out = tmp_path_factory.mktemp("export") / "model.onnx"
    config = ExportConfig(
        checkpoint=str(tiny_run.checkpoint),
        out=str(out),
        int8=True,
        fp16=True,
        calib_data=str(patch_data),
        calib_tiles=64,
        verify_tiles=16,
        int8_min_agreement=0.8,
    )
    return export(config)
