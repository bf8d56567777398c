"""The camera daemon's numbers: end-to-end latency per frame (p50/p99) and frames/s sustained on a 640x480 video.

Generates synthetic 640x480 frames (a third of them with a crack) and runs the daemon path in-process over them as
an MJPG video with the given model: OpenCV reader thread -> inspection -> saved review images for flagged frames ->
results store (SQLite + JSONL), exactly as ``crackscope daemon --source video.avi`` does, ending at the end of the
file. Nothing is trained here: pass an exported model. Two short runs, each into a fresh results folder:

1. **throughput**: the video read as fast as the reader can, ``every`` policy (no frame dropped). Frames/s
   sustained is the frames between the first and the last stored record divided by the time between them (model
   loading and start-up excluded); "processing" is the time from the loop taking a frame to its record committed.
2. **latency**: the same frames replayed in real time (``realtime``, as a camera delivers them) at ``--load`` (default
   80%) of the measured throughput, so no backlog builds up; latency is from the reader taking the frame off the
   video to its record committed (queue wait, inspection, saving, commit), p50 and p99.

The machine's load (``uptime``) is printed before and after, since the numbers mean little on a busy machine.

Run:
    .venv/bin/python benchmarks/daemon.py --model model.onnx                      # 2 x 30 frames, 640x480
    .venv/bin/python benchmarks/daemon.py --model model.int8.onnx --frames 200 --threads 2 --json daemon.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from crackscope.inspect.daemon import DaemonConfig, run_daemon
from crackscope.inspect.sinks import ResultStore
from crackscope.inspect.telemetry import RunSummary, percentiles
from crackscope.training.synthetic import make_frame, write_video


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="exported ONNX model (crackscope export); nothing is trained")
    parser.add_argument("--frames", type=int, default=30, help="frames in each run (default 30)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument(
        "--load",
        type=float,
        default=0.8,
        help="replay rate of the latency run, as a share of the measured throughput (default 0.8)",
    )
    parser.add_argument("--batch-frames", type=int, default=1, help="frames inspected together (default 1)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own choice)")
    parser.add_argument("--providers", default="auto")
    parser.add_argument("--save", default="defect", choices=["defect", "all", "none"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def record_times(out: Path) -> list[float]:
    with ResultStore(out) as store:
        return sorted(datetime.fromisoformat(r.time).timestamp() for r in store.records())


def sustained_fps(times: list[float]) -> float | None:
    """Frames per second between the first and the last stored record (start-up excluded)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def run(args: argparse.Namespace, video: Path, out: Path, *, realtime: bool) -> tuple[RunSummary, float, list[float]]:
    config = DaemonConfig(
        source=str(video),
        model=args.model,
        out=str(out),
        policy="every",
        queue_size=1,  # read one frame ahead: decoding overlaps inspection, no deeper backlog
        realtime=realtime,
        batch_frames=args.batch_frames,
        save=args.save,
        providers=args.providers,
        threads=args.threads,
    )
    started = time.perf_counter()
    summary = run_daemon(config)
    return summary, time.perf_counter() - started, record_times(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.model).is_file():
        print(f"benchmarks/daemon.py: error: {args.model}: model file does not exist", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    frames = [
        make_frame(args.height, args.width, args.seed + i, n_cracks=1 if i % 3 == 0 else 0)[0]
        for i in range(args.frames)
    ]
    print(f"generated {args.frames} frames {args.width}x{args.height} in {time.perf_counter() - started:.1f} s")
    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="crackscope-daemon-bench-") as scratch:
        root = Path(scratch)
        video = write_video(root / "fast.avi", frames)
        fast, fast_seconds, fast_times = run(args, video, root / "throughput", realtime=False)
        fps = sustained_fps(fast_times)
        replay_fps = args.load * (fps or fast.frames / fast_seconds)
        paced = write_video(root / "paced.avi", frames, fps=replay_fps)
        slow, _, _ = run(args, paced, root / "latency", realtime=True)
    load_after = uptime()
    work50, work99 = percentiles(fast.processing)
    p50, p99 = percentiles(slow.latencies)
    results = {
        "model": args.model,
        "frames": args.frames,
        "size": f"{args.width}x{args.height}",
        "batch_frames": args.batch_frames,
        "threads": args.threads,
        "verdicts": fast.inspected,
        "fps_sustained": round(fps, 3) if fps else None,
        "fps_overall": round(fast.frames / fast_seconds, 3),
        "processing_p50_s": work50,
        "processing_p99_s": work99,
        "replay_fps": round(replay_fps, 3),
        "latency_p50_s": p50,
        "latency_p99_s": p99,
        "load_before": load_before,
        "load_after": load_after,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(
        f"\n{args.frames} frames {results['size']}, batch {args.batch_frames}, verdicts {fast.inspected}\n"
        f"  throughput: {results['fps_sustained']} frames/s sustained ({results['fps_overall']} with start-up); "
        f"processing p50 {_ms(work50)}, p99 {_ms(work99)}\n"
        f"  latency at {results['replay_fps']} frames/s replayed (read -> stored): p50 {_ms(p50)}, p99 {_ms(p99)}\n"
        f"  before: {load_before}\n  after:  {load_after}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


if __name__ == "__main__":
    sys.exit(main())
