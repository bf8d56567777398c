"""The repo root is the package root; the standard library must stay reachable from it; imports point downwards."""

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_standard_inspect_module_is_not_shadowed_from_the_repo_root():
    code = "import dataclasses, inspect; inspect.signature; print(inspect.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not Path(result.stdout.strip()).resolve().is_relative_to(REPO_ROOT)
    assert not (REPO_ROOT / "inspect" / "__init__.py").exists()


def test_pytest_collects_from_the_repo_root_without_importing_it_as_a_package():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/test_layout.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_inspect_subpackage_imports_as_part_of_crackscope():
    from crackscope.inspect import images

    assert images.__name__ == "crackscope.inspect.images"


def test_no_top_level_module_shadows_the_standard_library():
    top_level = {p.stem for p in REPO_ROOT.glob("*.py")} | {p.name for p in REPO_ROOT.iterdir() if p.is_dir()}
    assert not (top_level & set(sys.stdlib_module_names) - {"inspect"})


def test_the_runtime_imports_neither_training_nor_deploy_nor_pytorch():
    # The factory-line install has no PyTorch, and the runtime must not depend on the packages that need it.
    modules = sorted(
        ".".join(("crackscope", "inspect", *p.relative_to(REPO_ROOT / "inspect").with_suffix("").parts))
        for p in (REPO_ROOT / "inspect").rglob("*.py")
    )
    modules = [m.removesuffix(".__init__") for m in modules]
    code = (
        "import importlib, importlib.abc, sys\n"
        "BLOCKED = ('torch', 'torchvision', 'timm', 'albumentations', 'pytorch_grad_cam', "
        "'crackscope.training', 'crackscope.deploy')\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith(BLOCKED):\n"
        "            raise ImportError(name + ' imported by the runtime')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        "print(len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert len(modules) >= 10


def _modules_loaded_by_importing(modules: list[str]) -> set[str]:
    """Every name in ``sys.modules`` after a fresh interpreter, started in the repo root, imports ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def _training_or_torch(loaded: set[str]) -> list[str]:
    return sorted(m for m in loaded if m == "torch" or m.startswith(("torch.", "crackscope.training")))


def test_calibration_imports_nothing_from_training_and_no_pytorch():
    # Calibration runs the exported model on a runtime install (no PyTorch) and reads data with crackscope.labelled.
    modules = sorted(f"crackscope.calibration.{p.stem}" for p in (REPO_ROOT / "calibration").glob("*.py"))
    modules = [m.removesuffix(".__init__") for m in modules]
    loaded = _modules_loaded_by_importing(modules)
    assert set(modules) <= loaded
    assert len(modules) >= 8
    assert _training_or_torch(loaded) == []


def test_the_stores_and_the_review_app_import_neither_the_pipeline_nor_onnx_runtime():
    # QA reviews on a PC with no model: records, stores and review pages read rows, never run inference.
    modules = [
        "crackscope.inspect.frames",
        "crackscope.inspect.results",
        "crackscope.inspect.schema",
        "crackscope.inspect.sinks",
        "crackscope.inspect.report",
        *sorted(f"crackscope.inspect.review.{p.stem}" for p in (REPO_ROOT / "inspect" / "review").glob("*.py")),
    ]
    modules = [m.removesuffix(".__init__") for m in modules]
    loaded = _modules_loaded_by_importing(modules)
    assert set(modules) <= loaded
    assert {"crackscope.inspect.review.app", "crackscope.inspect.review.store"} <= loaded
    inference = ("onnxruntime", "onnx", "crackscope.inspect.pipeline", "crackscope.inspect.model")
    assert sorted(m for m in loaded if m in inference or m.startswith(tuple(f"{i}." for i in inference))) == []
    assert _training_or_torch(loaded) == []


def test_the_labelled_data_reader_imports_nothing_from_training_and_no_pytorch():
    loaded = _modules_loaded_by_importing(["crackscope.labelled"])
    assert "crackscope.labelled" in loaded
    assert _training_or_torch(loaded) == []
