"""The torch-free runtime model: loads a verified export, validates input, falls back to CPU cleanly."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from crackscope.inspect.card import ModelCardError
from crackscope.inspect.model import ModelLoadError, OnnxModel, make_session, resolve_providers

CPU = "CPUExecutionProvider"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_path(exported) -> Path:
    return next(m.path for m in exported.models if m.precision == "fp32")


@pytest.fixture
def tiles() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


@pytest.mark.slow
def test_predict_returns_a_logit_and_a_cam_per_tile(model_path, tiles):
    with OnnxModel(model_path, providers="cpu") as model:
        output = model.predict(tiles)
        assert output.logits.shape == (3,) and output.logits.dtype == np.float32
        assert output.cams.shape == (3, model.card.feature_size, model.card.feature_size)
        assert model.input_size == 64 and model.providers == (CPU,)


@pytest.mark.slow
def test_model_id_is_the_sha256_of_the_file(model_path):
    with OnnxModel(model_path) as model:
        assert model.model_id == hashlib.sha256(model_path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (np.zeros((2, 64, 64, 3), np.float32), TypeError, "expected uint8 tiles"),
        (np.zeros((2, 64, 64), np.uint8), ValueError, r"\[N>=1, 64, 64, 3\]"),
        (np.zeros((2, 32, 32, 3), np.uint8), ValueError, r"got \[2, 32, 32, 3\]"),
        (np.zeros((0, 64, 64, 3), np.uint8), ValueError, "N>=1"),
        ([[0]], TypeError, "numpy array"),
    ],
)
def test_wrong_input_is_a_clear_error(model_path, images, error, message):
    with OnnxModel(model_path) as model, pytest.raises(error, match=message):
        model.predict(images)


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"missing\.onnx: model file does not exist"):
        OnnxModel(tmp_path / "missing.onnx")


def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"definitely not protobuf")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        OnnxModel(bogus)


def _identity_model() -> onnx.ModelProto:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_foreign_onnx_model_is_refused_by_name(tmp_path):
    path = tmp_path / "foreign.onnx"
    onnx.save(_identity_model(), str(path))
    with pytest.raises(ModelCardError, match=r"foreign\.onnx: not a crackscope model"):
        OnnxModel(path)


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        ("auto", [CPU], [CPU]),
        ("auto", ["CUDAExecutionProvider", CPU], ["CUDAExecutionProvider", CPU]),
        (
            "auto",
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU],
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU],
        ),
        ("cpu", ["CUDAExecutionProvider", CPU], [CPU]),
        (["cuda", "cpu"], ["CUDAExecutionProvider", CPU], ["CUDAExecutionProvider", CPU]),
    ],
)
def test_provider_choice_prefers_tensorrt_then_cuda_then_cpu(requested, available, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_providers(requested, available) == expected


@pytest.mark.slow
def test_asking_for_cuda_where_it_is_absent_warns_once_and_runs_on_cpu(model_path, tiles, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider not available") as record:
        model = OnnxModel(model_path, providers="cuda")
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warnings on use
        assert model.providers == (CPU,) and model.predict(tiles).logits.shape == (3,)


@pytest.mark.slow
def test_closed_model_says_so(model_path, tiles):
    model = OnnxModel(model_path)
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        model.predict(tiles)


@pytest.mark.slow
def test_runtime_and_calibration_work_with_pytorch_unimportable(model_path):
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"torch", "torchvision", "timm", "albumentations", "pytorch_grad_cam"}}:
                    raise ImportError(f"{{name}} is blocked: the runtime must not need it")

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        import crackscope.calibration, crackscope.inspect.card, crackscope.inspect.images
        from crackscope.inspect.model import OnnxModel

        with OnnxModel({str(model_path)!r}) as model:
            out = model.predict(np.zeros((2, model.input_size, model.input_size, 3), np.uint8))
        assert "torch" not in sys.modules
        print("ok", out.logits.shape, out.cams.shape)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok (2,) (2, 2, 2)"


# --- make_session: the one way a session is built ------------------------------------------------------------------


def test_make_session_turns_on_every_graph_optimisation_and_sets_the_thread_counts(tmp_path):
    import onnxruntime

    path = tmp_path / "identity.onnx"
    onnx.save(_identity_model(), str(path))
    session = make_session(path, providers="cpu", intra_op_threads=1, inter_op_threads=2)
    options = session.get_session_options()
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 2)
    assert session.get_providers() == [CPU]


@pytest.mark.parametrize("form", ["path", "str", "bytes"])
def test_make_session_takes_a_path_a_string_or_the_serialised_model(form, tmp_path):
    path = tmp_path / "identity.onnx"
    onnx.save(_identity_model(), str(path))
    model = {"path": path, "str": str(path), "bytes": path.read_bytes()}[form]
    (y,) = make_session(model, providers="cpu").run(None, {"x": np.array([3.5], np.float32)})
    assert y.tolist() == [3.5]


def test_make_session_falls_back_to_the_cpu_with_one_warning_for_an_absent_provider(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider not available") as record:
        session = make_session(_identity_model().SerializeToString(), providers=["cuda"])
    assert len(record) == 1 and session.get_providers() == [CPU]


def test_only_inspect_model_builds_onnx_runtime_sessions():
    # Runtime, parity gate and benchmarks must run a model the same way: through make_session.
    builders = [
        path.relative_to(REPO_ROOT).as_posix()
        for path in REPO_ROOT.rglob("*.py")
        if not {"tests", ".venv", "build", ".git"} & set(path.relative_to(REPO_ROOT).parts)
        and "InferenceSession(" in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert builders == ["inspect/model.py"]
