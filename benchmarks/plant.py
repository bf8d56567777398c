"""The plant's numbers (issue 18): hostile inputs in a large batch.

``hostile``: a batch of ``--inputs`` image files (default 10,000) of which ``--hostile-share`` (1%) are hostile, in
every kind a line has sent us, cycled: float32 TIFFs in [0, 1], float64 TIFFs in another range, int16 TIFFs with
negative pixels (converted by the documented rule), zero-byte files, JPEGs cut in half, JPEGs with 70 bytes after
their end marker (valid: inspected), PNGs whose header claims 50,000 x 50,000 px (refused before decoding) and
random bytes named ``.png``. Beside them lie entries that are not inputs: a dangling link, a link loop and a folder
named ``x.jpg``. The good files are 64 x 64 PNGs (one padded tile each). ``crackscope inspect`` runs over the
folder in-process (:func:`~crackscope.inspect.batch.run_batch`) and the benchmark checks what the issue asks: the
run completes, there is exactly one record per file, each hostile file has the verdict its kind should get (an
ERROR with a reason, or an inspected verdict for the converted and valid ones), and the entries that are not
inputs are listed as skipped. It prints the counts, the seconds and the load.

Run:
    .venv/bin/python benchmarks/plant.py hostile --model model.onnx            # 10,000 inputs, about 2 minutes
    .venv/bin/python benchmarks/plant.py hostile --model model.onnx --inputs 2000
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from crackscope.inspect.batch import BatchConfig, run_batch
from crackscope.inspect.decision import Verdict
from crackscope.inspect.sinks import ResultStore


def _float01(path: Path, rng: np.random.Generator) -> bool:
    return cv2.imwrite(str(path.with_suffix(".tif")), rng.random((48, 48), dtype=np.float32))


def _float_wide(path: Path, rng: np.random.Generator) -> bool:
    return cv2.imwrite(str(path.with_suffix(".tif")), rng.normal(1000, 300, (48, 48)))


def _int16(path: Path, rng: np.random.Generator) -> bool:
    return cv2.imwrite(str(path.with_suffix(".tif")), rng.integers(-2000, 30000, (48, 48)).astype(np.int16))


def _empty(path: Path, rng: np.random.Generator) -> bool:
    path.with_suffix(".jpg").write_bytes(b"")
    return True


def _cut_jpeg(path: Path, rng: np.random.Generator) -> bool:
    data = _jpeg(rng)
    path.with_suffix(".jpg").write_bytes(data[: len(data) // 2])
    return True


def _trailing_jpeg(path: Path, rng: np.random.Generator) -> bool:
    path.with_suffix(".jpg").write_bytes(_jpeg(rng) + bytes(rng.integers(0, 256, 70, dtype=np.uint8)))
    return True


def _huge_png(path: Path, rng: np.random.Generator) -> bool:
    """A small valid-looking PNG whose header claims 50,000 x 50,000 px."""
    ok, encoded = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    data = bytearray(encoded.tobytes())
    data[16:24] = struct.pack(">II", 50_000, 50_000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the IHDR chunk's CRC
    path.with_suffix(".png").write_bytes(bytes(data))
    return ok


def _noise(path: Path, rng: np.random.Generator) -> bool:
    path.with_suffix(".png").write_bytes(bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    return True


def _jpeg(rng: np.random.Generator) -> bytes:
    return cv2.imencode(".jpg", rng.integers(60, 200, (48, 48, 3), dtype=np.uint8))[1].tobytes()


# kind -> (writer, the suffix it writes, whether its record is an ERROR)
HOSTILE: dict[str, tuple[Callable[[Path, np.random.Generator], bool], str, bool]] = {
    "float32 TIFF in [0, 1]": (_float01, ".tif", False),
    "float64 TIFF, other range": (_float_wide, ".tif", False),
    "int16 TIFF, negative pixels": (_int16, ".tif", False),
    "zero-byte file": (_empty, ".jpg", True),
    "JPEG cut in half": (_cut_jpeg, ".jpg", True),
    "JPEG with 70 trailing bytes": (_trailing_jpeg, ".jpg", False),
    "PNG claiming 50,000 px square": (_huge_png, ".png", True),
    "random bytes named .png": (_noise, ".png", True),
}


def write_inputs(folder: Path, inputs: int, hostile_share: float, seed: int) -> dict[str, str]:
    """The batch's files (name -> kind: a hostile kind or ``good``) and three entries that are not inputs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    hostile = round(inputs * hostile_share)
    spread = list(range(inputs // max(hostile, 1) - 1, inputs, inputs // max(hostile, 1)))[:hostile]
    kind_of = {index: list(HOSTILE)[n % len(HOSTILE)] for n, index in enumerate(spread)}  # every kind in turn
    written: dict[str, str] = {}
    for i in range(inputs):
        stem = folder / f"{i:05d}"
        if i in kind_of:
            kind = kind_of[i]
            writer, suffix, _ = HOSTILE[kind]
            if not writer(stem, rng):
                raise SystemExit(f"could not write a {kind} file at {stem}")
        else:
            kind, suffix = "good", ".png"
            cv2.imwrite(str(stem.with_suffix(suffix)), np.full((64, 64, 3), int(rng.integers(40, 220)), np.uint8))
        written[stem.with_suffix(suffix).name] = kind
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "x.jpg").mkdir()
    return written


def hostile(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="plant-hostile-") as work:
        return _hostile(args, Path(work))


def _hostile(args: argparse.Namespace, work: Path) -> int:
    inputs, out = work / "inputs", work / "out"
    kinds = write_inputs(inputs, args.inputs, args.hostile_share, args.seed)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    summary = run_batch(BatchConfig(inputs=(str(inputs),), model=args.model, out=str(out), progress=False))
    seconds = time.perf_counter() - started
    with ResultStore(out) as store:
        records = list(store.records())
    by_name = Counter(Path(r.source).name for r in records)
    verdicts = {Path(r.source).name: r for r in records}
    wrong = []
    for name, kind in kinds.items():
        record = verdicts.get(name)
        if record is None:
            wrong.append(f"{name} ({kind}): no record")
            continue
        error_expected = kind != "good" and HOSTILE[kind][2]
        if (record.verdict is Verdict.ERROR) != error_expected:
            wrong.append(f"{name} ({kind}): {record.verdict.value} {record.error or ''}".strip())
    skipped = {Path(entry.path).name: entry.reason for entry in summary.skipped_entries}
    report = {
        "inputs": len(kinds),
        "hostile": sum(k != "good" for k in kinds.values()),
        "records": len(records),
        "duplicated": sum(n > 1 for n in by_name.values()),
        "verdicts": dict(Counter(r.verdict.value for r in records)),
        "errors_by_kind": dict(
            Counter(
                kinds[Path(r.source).name]
                for r in records
                if r.verdict is Verdict.ERROR and Path(r.source).name in kinds
            )
        ),
        "wrong": wrong[:20],
        "skipped_entries": skipped,
        "seconds": round(seconds, 1),
        "inputs_per_second": round(len(kinds) / seconds, 1),
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    ok = (
        report["records"] == report["inputs"]
        and not report["duplicated"]
        and not wrong
        and {"dangling.jpg", "loop.jpg", "x.jpg"} <= set(skipped)
    )
    report["goal_met"] = ok
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("hostile", help="a large batch with hostile files: one record per input")
    p.add_argument("--model", required=True, help="exported ONNX model (crackscope export)")
    p.add_argument("--inputs", type=int, default=10_000)
    p.add_argument("--hostile-share", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures here")
    p.set_defaults(handler=hostile)
    args = parser.parse_args(argv)
    if not Path(args.model).is_file():
        print(f"benchmarks/plant.py: error: {args.model}: model file does not exist", file=sys.stderr)
        return 2
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
