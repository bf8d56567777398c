"""What a running daemon tells the outside: Prometheus ``/metrics`` and a JSON ``/healthz``, over local HTTP.

:class:`Telemetry` is written by the inspection loop and read by the HTTP thread: counters in a private
``CollectorRegistry`` (two daemons in one process, or the tests, never share numbers), the source's own counters
(frames read, dropped, reconnects, queue depth) collected from its status at scrape time, and a window of recent
end-to-end latencies for the health page and the run summary. :class:`HealthServer` serves both pages from a
``ThreadingHTTPServer`` on 127.0.0.1 by default; port 0 picks a free port (logged, and in ``server.port``).

Example:
    >>> telemetry = Telemetry(source.status, model)                     # doctest: +SKIP
    >>> with HealthServer(telemetry, port=0) as server:                  # doctest: +SKIP
    ...     print(f"http://127.0.0.1:{server.port}/metrics")
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from crackscope.inspect.decision import Verdict, is_identity
from crackscope.inspect.model import OnnxModel
from crackscope.inspect.sources import SourceStatus

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SKIP_REASONS = ("motion", "interval", "done")
LATENCY_WINDOW = 1000  # frames kept for the health page's percentiles


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RunSummary:
    """What a daemon run did, returned when it stops (and printed by the CLI)."""

    source: SourceStatus
    inspected: dict[str, int]  # by verdict
    skipped: dict[str, int]  # by reason: motion, interval, done (already in the store)
    seconds: float
    latencies: tuple[float, ...]  # end-to-end seconds of the most recent frames (read from the source to stored)
    processing: tuple[float, ...]  # of those, the seconds from the loop taking the frame to its record stored
    line: dict = field(default_factory=dict)  # what the line outputs did (LineOutputs.counts); empty without them

    @property
    def frames(self) -> int:
        return sum(self.inspected.values())

    def describe(self) -> dict:
        p50, p99 = percentiles(self.latencies)
        work50, work99 = percentiles(self.processing)
        return {
            "source": self.source.name,
            "state": self.source.state.value,
            "inspected": self.frames,
            "verdicts": self.inspected,
            "skipped": self.skipped,
            "dropped": self.source.dropped,
            "reconnects": self.source.reconnects,
            "seconds": round(self.seconds, 3),
            "latency_p50_s": p50,
            "latency_p99_s": p99,
            "processing_p50_s": work50,
            "processing_p99_s": work99,
            **({"deadline_missed": self.line.get("deadline_missed", 0), "line": self.line} if self.line else {}),
        }


def percentiles(latencies: tuple[float, ...] | list[float]) -> tuple[float | None, float | None]:
    """p50 and p99 in seconds (None for no frames)."""
    if not latencies:
        return None, None
    p50, p99 = np.percentile(np.asarray(latencies, dtype=np.float64), [50, 99])
    return round(float(p50), 6), round(float(p99), 6)


class _LiveCollector(Collector):
    """The source's own counters, read from its status when Prometheus scrapes (they change in its reader thread),
    and the skipped frames (the loop's skips plus the files a hot folder found already stored)."""

    def __init__(self, status: Callable[[], SourceStatus], skipped: Callable[[SourceStatus], dict[str, int]]) -> None:
        self._status = status
        self._skipped = skipped

    def collect(self) -> Iterator:
        status = self._status()
        skipped = CounterMetricFamily("crackscope_frames_skipped", "Frames not inspected, by reason", labels=["reason"])
        for reason, count in self._skipped(status).items():
            skipped.add_metric([reason], count)
        yield skipped
        yield CounterMetricFamily(
            "crackscope_frames_read", "Frames read from the source, including dropped ones", value=status.frames_read
        )
        yield CounterMetricFamily(
            "crackscope_frames_dropped", "Stale frames dropped by the latest policy", value=status.dropped
        )
        yield CounterMetricFamily(
            "crackscope_source_reconnects", "Attempts to (re)open the source after a failure", value=status.reconnects
        )
        yield GaugeMetricFamily("crackscope_queue_depth", "Frames read and not yet inspected", value=status.queue_depth)
        yield GaugeMetricFamily("crackscope_source_up", "1 while the source delivers frames", value=int(status.up))
        if status.last_frame_time is not None:
            yield GaugeMetricFamily(
                "crackscope_last_frame_timestamp_seconds", "When the last frame was read", value=status.last_frame_time
            )


class Telemetry:
    """Counters and health of one daemon run (written by the inspection loop, read by the HTTP thread)."""

    def __init__(self, source_status: Callable[[], SourceStatus], model: OnnxModel) -> None:
        self.source_status = source_status
        self.model_id = model.model_id
        self.model_path = str(model.path)
        self.calibrated = not is_identity(model.card.calibration)
        self.started = time.time()
        self._lock = threading.Lock()
        self._counts: Tally[str] = Tally()
        self._skips: Tally[str] = Tally()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._processing_window: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._last_inspected: float | None = None
        self.line: Callable[[], dict] | None = None  # the line outputs' counts, for /healthz and the summary
        self.registry = CollectorRegistry(auto_describe=True)
        self._inspected = Counter(
            "crackscope_frames_inspected", "Frames inspected, by verdict", ["verdict"], registry=self.registry
        )
        self._latency = Histogram(
            "crackscope_frame_latency_seconds",
            "End-to-end latency per frame: read from the source to record stored",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._processing = Histogram(
            "crackscope_frame_processing_seconds",
            "Per frame: the loop taking it to its record stored (latency minus the wait in the queue)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        info = Gauge(
            "crackscope_model_info",
            "The model in use (value 1)",
            ["model_id", "backbone", "precision", "calibrated"],
            registry=self.registry,
        )
        info.labels(self.model_id, model.card.backbone, model.card.precision, str(self.calibrated).lower()).set(1)
        for verdict in Verdict:  # every series exists from the start, so rate() works from the first scrape
            self._inspected.labels(verdict.value)
        self.registry.register(_LiveCollector(source_status, self._skip_counts))

    # --- written by the loop ----------------------------------------------------------------------------------------

    def inspected(self, verdict: Verdict, latency_s: float, processing_s: float) -> None:
        self._inspected.labels(verdict.value).inc()
        self._latency.observe(latency_s)
        self._processing.observe(processing_s)
        with self._lock:
            self._counts[verdict.value] += 1
            self._latencies.append(latency_s)
            self._processing_window.append(processing_s)
            self._last_inspected = time.time()

    def skipped(self, reason: str) -> None:
        with self._lock:
            self._skips[reason] += 1

    def _skip_counts(self, status: SourceStatus) -> dict[str, int]:
        with self._lock:
            counts = {reason: self._skips[reason] for reason in SKIP_REASONS}
        counts["done"] += status.resumed
        return counts

    # --- read by the HTTP thread and at the end ---------------------------------------------------------------------

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> tuple[int, dict]:
        """HTTP status (200 while the source delivers or has ended normally, else 503) and the JSON body."""
        status = self.source_status()
        with self._lock:
            counts = {v.value: self._counts[v.value] for v in Verdict}
            latencies = list(self._latencies)
            last_inspected = self._last_inspected
        p50, p99 = percentiles(latencies)
        body = {
            "status": "ok" if status.up else "degraded",
            "source": {
                "name": status.name,
                "kind": status.kind,
                "state": status.state.value,
                "frames_read": status.frames_read,
                "dropped": status.dropped,
                "reconnects": status.reconnects,
                "queue_depth": status.queue_depth,
                "last_error": status.last_error,
            },
            "last_frame_time": _iso(status.last_frame_time),
            "last_inspected_time": _iso(last_inspected),
            "model_id": self.model_id,
            "model": self.model_path,
            "calibrated": self.calibrated,
            "inspected": counts,
            "latency_p50_s": p50,
            "latency_p99_s": p99,
            "uptime_s": round(time.time() - self.started, 3),
            **({"line": self.line()} if self.line is not None else {}),
        }
        return (HTTPStatus.OK if status.up else HTTPStatus.SERVICE_UNAVAILABLE), body

    def summary(self) -> RunSummary:
        status = self.source_status()
        skipped = self._skip_counts(status)
        with self._lock:
            return RunSummary(
                source=status,
                inspected={v.value: self._counts[v.value] for v in Verdict},
                skipped=skipped,
                seconds=time.time() - self.started,
                latencies=tuple(self._latencies),
                processing=tuple(self._processing_window),
                line=self.line() if self.line is not None else {},
            )


# --- HTTP -----------------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    telemetry: Telemetry


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, self.server.telemetry.metrics())
        elif path == "/healthz":
            code, body = self.server.telemetry.health()
            self._send(code, "application/json", json.dumps(body, sort_keys=True).encode())
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found: try /healthz or /metrics\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's parameter name)
        log.debug("%s %s", self.address_string(), format % args)


class HealthServer:
    """``/healthz`` and ``/metrics`` served from a thread (a context manager); ``port=0`` picks a free port."""

    def __init__(self, telemetry: Telemetry, host: str = "127.0.0.1", port: int = 0) -> None:
        self.telemetry = telemetry
        self.host = host
        self.requested_port = port
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HealthServer:
        try:
            self._server = _Server((self.host, self.requested_port), _Handler)
        except OSError as error:
            raise RuntimeError(
                f"cannot serve /metrics on {self.host}:{self.requested_port} ({error.strerror or error})"
            ) from error
        self._server.telemetry = self.telemetry
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="health http", daemon=True)
        self._thread.start()
        log.info("serving http://%s:%d/healthz and /metrics", self.host, self.port)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
