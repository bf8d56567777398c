"""The torch-free runtime model: loads a verified export, validates input, falls back to CPU cleanly."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from crackscope.inspect.card import ModelCardError
from crackscope.inspect.model import (
    BoundRun,
    Layout,
    ModelLoadError,
    OnnxModel,
    SessionPool,
    file_for_provider,
    make_session,
    plain_run,
    resolve_providers,
    uses_io_binding,
)

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
    assert result.stdout.strip() == "ok (2,) (2, 4, 4)"  # 16 px heatmap cells on 64 px tiles


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


# --- session layouts: several sessions fed from one queue ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "layout", "described"),
    [
        ("1x2", Layout(1, 2), "1 session x 2 threads"),
        ("2x1", Layout(2, 1), "2 sessions x 1 thread"),
        (" 4X4 ", Layout(4, 4), "4 sessions x 4 threads"),
        ("1xdefault", Layout(1, None), "1 session x ONNX Runtime's default threads"),
    ],
)
def test_a_layout_reads_sessions_x_threads_and_says_it_in_words(text, layout, described):
    assert Layout.parse(text) == layout
    assert layout.describe() == described
    assert Layout.parse(layout.label) == layout


@pytest.mark.parametrize(
    ("workers", "threads", "message"),
    [
        (0, None, "session_workers: must be an integer of at least 1, got 0"),
        (True, None, "session_workers: must be an integer of at least 1, got True"),
        (1, 0, "threads: must be an integer of at least 1, or unset, got 0"),
        (2, -1, "threads: must be an integer of at least 1, or unset, got -1"),
    ],
)
def test_a_layout_below_one_session_or_one_thread_is_refused_naming_the_key(workers, threads, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Layout(workers, threads)


@pytest.mark.parametrize("text", ["2", "x1", "twoxone", "2x", "0x1"])
def test_a_layout_that_is_not_sessions_x_threads_is_a_clear_error(text):
    with pytest.raises(ValueError, match="expected SESSIONSxTHREADS"):
        Layout.parse(text)


def _grey_batches(levels, size=32):
    """One batch of two tiles per grey level: the brightness model's logit is (level - 128) / 8."""
    return [np.full((2, size, size, 3), level, np.uint8) for level in levels]


def test_two_sessions_return_every_batch_in_order(brightness_model):
    levels = [0, 40, 80, 120, 160, 200, 240, 255, 10, 130]
    with OnnxModel(brightness_model, providers="cpu", workers=2, intra_op_threads=1) as model:
        assert model.layout == Layout(2, 1)
        outputs = model.predict_batches(_grey_batches(levels))
    assert [o.logits.tolist() for o in outputs] == [[(v - 128) / 8] * 2 for v in levels]


def test_two_sessions_run_batches_at_the_same_time(brightness_model):
    # Each run waits at a two-party barrier: only two batches running at once get past it.
    session = make_session(brightness_model, providers="cpu", intra_op_threads=1)
    barrier = threading.Barrier(2, timeout=20)
    threads_seen = set()

    def run(images):
        threads_seen.add(threading.current_thread().name)
        barrier.wait()
        return plain_run(session)(images)

    with SessionPool([run, run], name="pair") as pool:
        outputs = pool.map(_grey_batches([0, 255]))
    assert [o.logits[0] for o in outputs] == [-16.0, 15.875]
    assert threads_seen == {"pair-0", "pair-1"}


def test_an_error_in_one_session_reaches_the_caller_and_the_pool_keeps_working(brightness_model):
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    runs = [plain_run(make_session(brightness_model, providers="cpu", intra_op_threads=1)) for _ in range(2)]
    wrong_size = np.zeros((2, 16, 16, 3), np.uint8)  # the pool does not check shapes; the session refuses it
    with SessionPool(runs, name="failing") as pool:
        with pytest.raises(InvalidArgument, match="image"):
            pool.map([*_grey_batches([0, 64]), wrong_size, *_grey_batches([128])])
        assert [o.logits[0] for o in pool.map(_grey_batches([64]))] == [-8.0]


def test_closing_a_pool_stops_its_threads_and_refuses_more_work(brightness_model):
    runs = [plain_run(make_session(brightness_model, providers="cpu", intra_op_threads=1)) for _ in range(3)]
    pool = SessionPool(runs, name="closing")
    assert sum(t.name.startswith("closing-") for t in threading.enumerate()) == 3
    pool.map(_grey_batches([1, 2, 3]))
    pool.close()
    pool.close()  # twice is harmless
    assert not any(t.name.startswith("closing-") for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        pool.map(_grey_batches([1]))


def test_one_session_runs_in_the_callers_thread(brightness_model):
    before = threading.active_count()
    with OnnxModel(brightness_model, providers="cpu") as model:
        assert threading.active_count() == before
        assert model.predict(_grey_batches([136])[0]).logits.tolist() == [1.0, 1.0]


def test_a_closed_model_with_several_sessions_says_so(brightness_model):
    model = OnnxModel(brightness_model, providers="cpu", workers=2, intra_op_threads=1)
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        model.predict_batches(_grey_batches([0]))


# --- the GPU path: fp16 variant and I/O binding on CUDA/TensorRT, plain session.run on the CPU --------------------


@pytest.mark.parametrize(
    ("given", "present", "provider", "loaded"),
    [
        ("model.onnx", ["model.fp16.onnx"], "CUDAExecutionProvider", "model.fp16.onnx"),
        ("model.onnx", ["model.fp16.onnx"], "TensorrtExecutionProvider", "model.fp16.onnx"),
        ("model.onnx", ["model.fp16.onnx"], "CPUExecutionProvider", "model.onnx"),
        ("model.onnx", [], "CUDAExecutionProvider", "model.onnx"),
        ("model.int8.onnx", ["model.int8.fp16.onnx", "model.fp16.onnx"], "CUDAExecutionProvider", "model.int8.onnx"),
        ("model.fp16.onnx", [], "CUDAExecutionProvider", "model.fp16.onnx"),
        ("line.v2.onnx", ["line.v2.fp16.onnx"], "CUDAExecutionProvider", "line.v2.fp16.onnx"),
    ],
)
def test_the_fp16_variant_is_chosen_on_a_gpu_only_beside_an_fp32_file(given, present, provider, loaded, tmp_path):
    for name in [given, *present]:
        (tmp_path / name).write_bytes(b"")
    assert file_for_provider(tmp_path / given, provider) == tmp_path / loaded


@pytest.mark.parametrize(
    ("providers", "bound"),
    [
        (["CUDAExecutionProvider", CPU], True),
        (["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU], True),
        ([CPU], False),
        (["OpenVINOExecutionProvider", CPU], False),
        ([], False),
    ],
)
def test_only_a_session_started_on_a_gpu_is_fed_through_io_binding(providers, bound):
    assert uses_io_binding(providers) is bound


def test_on_the_cpu_the_fp32_file_is_loaded_and_fed_by_session_run(tmp_path, write_brightness_model):
    fp32 = write_brightness_model(tmp_path / "brightness.onnx")
    write_brightness_model(tmp_path / "brightness.fp16.onnx", precision="fp16")
    with OnnxModel(fp32, providers="cpu") as model:
        assert model.path == fp32 and model.card.precision == "fp32"
        assert model.feed == "session.run on numpy tiles"
        assert not any(isinstance(run, BoundRun) for run in model._runs)


def test_asking_for_cuda_without_it_warns_once_loads_the_fp32_file_and_binds_nothing(
    tmp_path, monkeypatch, write_brightness_model
):
    import onnxruntime

    fp32 = write_brightness_model(tmp_path / "brightness.onnx")
    write_brightness_model(tmp_path / "brightness.fp16.onnx", precision="fp16")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider not available") as record:
        model = OnnxModel(fp32, providers="cuda", workers=2, intra_op_threads=1)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    with model:
        assert model.path == fp32 and model.providers == (CPU,)
        assert model.feed == "session.run on numpy tiles"
        assert model.predict(_grey_batches([144])[0]).logits.tolist() == [2.0, 2.0]


def test_when_cuda_is_listed_but_does_not_start_the_fp32_file_is_loaded_on_the_cpu(
    tmp_path, monkeypatch, write_brightness_model
):
    # onnxruntime-gpu on a machine without a driver lists CUDA but cannot start it: the session runs on the CPU,
    # where the fp16 variant would be slow, so the fp32 file is loaded instead.
    import onnxruntime

    fp32 = write_brightness_model(tmp_path / "brightness.onnx")
    write_brightness_model(tmp_path / "brightness.fp16.onnx", precision="fp16")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", CPU])
    with pytest.warns(RuntimeWarning, match="could not start"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # onnxruntime's own note about the provider
        model = OnnxModel(fp32, providers="auto")
    with model:
        assert model.path == fp32 and model.card.precision == "fp32" and model.providers == (CPU,)
        assert model.feed == "session.run on numpy tiles"


@pytest.mark.gpu
def test_on_a_gpu_tiles_go_through_io_binding_and_score_as_on_the_cpu(brightness_model):
    batches = [np.random.default_rng(i).integers(0, 256, (n, 32, 32, 3), np.uint8) for i, n in enumerate([5, 5, 3])]
    with OnnxModel(brightness_model, providers="cpu") as cpu:
        expected = cpu.predict_batches(batches)
    with OnnxModel(brightness_model, providers="cuda", workers=2) as gpu:
        assert gpu.providers[0] == "CUDAExecutionProvider" and gpu.feed.startswith("I/O binding")
        for _ in range(2):  # the second pass reuses the pinned buffers of each batch shape
            outputs = gpu.predict_batches(batches)
            for got, want in zip(outputs, expected, strict=True):
                np.testing.assert_allclose(got.logits, want.logits, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(got.cams, want.cams, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_on_a_gpu_the_fp16_variant_beside_the_model_is_loaded(tmp_path, write_brightness_model):
    fp32 = write_brightness_model(tmp_path / "brightness.onnx")
    fp16 = write_brightness_model(tmp_path / "brightness.fp16.onnx", precision="fp16")
    with OnnxModel(fp32, providers="cuda") as model:
        assert model.path == fp16 and model.card.precision == "fp16"
        assert model.model_id == hashlib.sha256(fp16.read_bytes()).hexdigest()
    with OnnxModel(fp32, providers="cuda", gpu_fp16=False) as model:
        assert model.path == fp32
