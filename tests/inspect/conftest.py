"""A small model that has really learned synthetic cracks, exported fp32 + int8, shared by the runtime tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class LineModel:
    fp32: Path
    int8: Path
    data: Path
    input_size: int


@pytest.fixture(scope="session")
def line_model(tmp_path_factory) -> LineModel:
    """A 96-px Lite0 trained for 5 epochs on 300 + 300 synthetic patches (about 45 s on 2 cores), then exported."""
    from crackscope.deploy.export import ExportConfig, export
    from crackscope.training import synthetic
    from crackscope.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("line-model")
    data = synthetic.write_patch_dataset(root / "data", n_crack=300, n_ok=300, n_ambiguous=0, size=96, seed=3)
    run = train(
        TrainConfig(
            data=str(data),
            out=str(root / "run"),
            input_size=96,
            epochs=5,
            head_epochs=1,
            batch_size=32,
            lr=2e-3,
            workers=0,
            augment="heavy",
            progress=False,
            seed=1,
        )
    )
    result = export(
        ExportConfig(
            checkpoint=str(run.checkpoint),
            out=str(root / "model.onnx"),
            int8=True,
            calib_data=str(data),
            calib_tiles=128,
            verify_tiles=16,
            # A 5-epoch model has more tiles near the decision boundary than a real one: allow 2 flips in 128.
            int8_min_agreement=0.98,
        )
    )
    assert not result.refused, result.describe()
    return LineModel(root / "model.onnx", root / "model.int8.onnx", data, 96)
