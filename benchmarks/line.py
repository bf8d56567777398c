"""Verdict-to-broker latency of the daemon's MQTT line output (p50/p99) on a 640x480 video, with the machine's load.

Starts a Mosquitto broker on a free port (Debian's ``/usr/sbin/mosquitto``; or ``--broker HOST:PORT`` for one that
runs already), subscribes to the station's topic with QoS 1, and runs the daemon in-process on generated 640x480
frames (a third with a crack) replayed in real time as a camera delivers them, publishing every verdict
(``mqtt.host``), exactly as ``crackscope daemon --source video.avi --mqtt-host ...`` does. The replay rate is
``--load`` (default 80%) of the frames/s a short run without MQTT sustains first, so no backlog builds up. Per
message, from the subscriber's clock (one machine, one clock):

* **verdict -> broker**: the record's decision time to the message arriving through the broker (the line output's
  own cost: outbox commit, sender, MQTT, broker; 1 ms resolution, the record's time is in milliseconds);
* **read -> broker**: the frame handed on by the reader to the message arriving (what the PLC waits for: queue,
  inspection, saved images, outbox, broker). A video file's frame is handed on when the next one has been read (a
  file cut mid-frame ends in a half-decoded frame); a real-time replay reads one frame early, so each frame is
  handed on, and stamped, when it is due, as a camera's is;
* **read -> publish**: the ``latency_ms`` the message itself carries.

Every message is checked against the store (one per record after dedupe by ``record_id``). The load average
(``uptime``) is printed before and after: the numbers mean little on a busy machine.

Run:
    .venv/bin/python benchmarks/line.py --model model.onnx                       # 40 frames, 640x480
    .venv/bin/python benchmarks/line.py --model model.int8.onnx --frames 200 --deadline-ms 150 --json line.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from daemon import uptime  # benchmarks/daemon.py: the machine's load, printed beside every figure

from crackscope.inspect.daemon import daemon_config, run_daemon
from crackscope.inspect.sinks import ResultStore
from crackscope.inspect.telemetry import percentiles
from crackscope.training.synthetic import make_frame, write_video

TOPIC = "crackscope/bench/station1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="exported ONNX model (crackscope export); nothing is trained")
    parser.add_argument("--frames", type=int, default=40, help="frames replayed (default 40)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--load", type=float, default=0.8, help="replay rate as a share of the measured frames/s")
    parser.add_argument("--fps", type=float, help="replay at this rate instead (no throughput run)")
    parser.add_argument("--deadline-ms", type=float, help="also run with this deadline and count the misses")
    parser.add_argument("--broker", help="HOST:PORT of a running broker (default: start mosquitto on a free port)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own choice)")
    parser.add_argument("--providers", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


@contextlib.contextmanager
def mosquitto(folder: Path) -> Iterator[tuple[str, int]]:
    """A throw-away Mosquitto broker on 127.0.0.1 and a free port."""
    executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(executable).is_file():
        raise SystemExit("benchmarks/line.py: error: mosquitto is not installed (apt-get install mosquitto)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = folder / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen([executable, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.01)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(timeout=10)


class Arrivals:
    """A QoS 1 subscriber that notes when each verdict message arrives."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.arrived: list[tuple[float, dict]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda client, *_: client.subscribe(f"{TOPIC}/verdict", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda client, userdata, message: self.arrived.append(
            (time.time(), json.loads(message.payload))
        )
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit(f"benchmarks/line.py: error: no subscription acknowledged by {host}:{port}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(args: argparse.Namespace, video: Path, out: Path, *, realtime: bool, mqtt: dict | None = None, **values):
    config = daemon_config(
        {"policy": "every", "queue_size": 1, "batch_frames": 1, "realtime": realtime, **values},
        {
            "source": str(video),
            "model": args.model,
            "out": str(out),
            "providers": args.providers,
            "threads": args.threads,
            "mqtt": mqtt or {},
        },
    )
    return run_daemon(config)


def measure(args, video: Path, out: Path, broker: tuple[str, int], deadline_ms: float | None = None) -> dict:
    """One replay with MQTT: the three latencies per message, p50 and p99 in ms."""
    arrivals = Arrivals(*broker)
    try:
        mqtt = {"host": broker[0], "port": broker[1], "topic": TOPIC}
        values = {"deadline_ms": deadline_ms} if deadline_ms else {}
        summary = run(args, video, out, realtime=True, mqtt=mqtt, **values)
        deadline = time.monotonic() + 10
        while len({m["record_id"] for _, m in arrivals.arrived}) < summary.frames and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        arrivals.close()
    with ResultStore(out) as store:
        records = {r.id: r for r in store.records()}
    first = {}
    for arrived, message in arrivals.arrived:
        first.setdefault(message["record_id"], (arrived, message))
    verdict_to_broker = [t - _unix(m["time"]) for t, m in first.values() if not m["fail_safe"]]
    read_to_broker = [t - _unix(m["read_time"]) for t, m in first.values()]
    read_to_publish = [m["latency_ms"] / 1000 for _, m in first.values()]
    return {
        "records": len(records),
        "messages": len(arrivals.arrived),
        "unique_messages": len(first),
        "all_delivered": set(first) == set(records),
        "deadline_ms": deadline_ms,
        "deadline_missed": summary.describe().get("deadline_missed", 0),
        "verdict_to_broker_ms": _ms_pair(verdict_to_broker),
        "read_to_broker_ms": _ms_pair(read_to_broker),
        "read_to_publish_ms": _ms_pair(read_to_publish),
    }


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _ms_pair(seconds: list[float]) -> dict:
    p50, p99 = percentiles(seconds)
    return {"p50": None if p50 is None else round(p50 * 1000, 1), "p99": None if p99 is None else round(p99 * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.model).is_file():
        print(f"benchmarks/line.py: error: {args.model}: model file does not exist", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    frames = [
        make_frame(args.height, args.width, args.seed + i, n_cracks=1 if i % 3 == 0 else 0)[0]
        for i in range(args.frames)
    ]
    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="crackscope-line-bench-") as scratch:
        root = Path(scratch)
        fps = args.fps
        if fps is None:  # the rate this machine sustains without MQTT, to replay below it
            probe = run(args, write_video(root / "probe.avi", frames[:10]), root / "probe", realtime=False)
            fps = args.load * probe.frames / max(probe.seconds, 1e-6)
        video = write_video(root / "line.avi", frames, fps=fps)
        with contextlib.ExitStack() as stack:
            if args.broker:
                host, port = args.broker.rsplit(":", 1)
                broker = (host, int(port))
            else:
                broker = stack.enter_context(mosquitto(root))
            runs = [measure(args, video, root / "line", broker)]
            if args.deadline_ms:
                runs.append(measure(args, video, root / "deadline", broker, args.deadline_ms))
    load_after = uptime()
    results = {
        "model": args.model,
        "frames": args.frames,
        "size": f"{args.width}x{args.height}",
        "replay_fps": round(fps, 3),
        "runs": runs,
        "load_before": load_before,
        "load_after": load_after,
        "cpus": os.cpu_count(),
    }
    print(f"{args.frames} frames {results['size']} replayed at {results['replay_fps']} frames/s, {os.cpu_count()} CPUs")
    for result in runs:
        label = f"deadline {result['deadline_ms']} ms" if result["deadline_ms"] else "no deadline"
        print(
            f"  {label}: {result['unique_messages']} of {result['records']} records on the broker "
            f"({result['messages']} messages, all delivered: {result['all_delivered']}); "
            f"deadline misses {result['deadline_missed']}\n"
            f"    verdict -> broker  p50 {result['verdict_to_broker_ms']['p50']} ms, "
            f"p99 {result['verdict_to_broker_ms']['p99']} ms\n"
            f"    read -> broker     p50 {result['read_to_broker_ms']['p50']} ms, "
            f"p99 {result['read_to_broker_ms']['p99']} ms\n"
            f"    read -> publish    p50 {result['read_to_publish_ms']['p50']} ms, "
            f"p99 {result['read_to_publish_ms']['p99']} ms"
        )
    print(f"  before: {load_before}\n  after:  {load_after}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if all(result["all_delivered"] for result in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
