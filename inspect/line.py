"""Line outputs: each verdict of the daemon goes to the line (MQTT, OPC UA), in time or as a fail-safe.

The results store is where verdicts are kept; the line is where they are acted on, by a PLC that ejects a part or a
dashboard that counts them. :class:`LineOutputs` sits between the daemon's inspection loop and the outputs:

* **MQTT** (:class:`~crackscope.inspect.mqtt_output.MqttOutput`, paho-mqtt, QoS 1): one JSON message per record on
  ``TOPIC/verdict``; a retained ``TOPIC/status`` (``online``, and ``offline`` as the connection's last will when the
  daemon dies); every message waits in a bounded on-disk outbox (:mod:`~crackscope.inspect.outbox`) until the broker
  acknowledges it, so a broker that is down or a daemon killed with ``kill -9`` loses nothing. The contract is **at
  least once**: a message may arrive twice, and consumers dedupe by ``record_id``.
* **OPC UA** (:class:`~crackscope.inspect.opcua_output.OpcUaOutput`, asyncua, optional): the fields of each verdict
  written to the nodes of a PLC or OPC UA server in one write request.
* **A deadline** (:class:`DeadlineWatch`): a frame whose verdict is not ready ``deadline_ms`` after it was read gets
  the configured fail-safe verdict (DEFECT: eject, or REVIEW) on the line at the deadline; its real verdict is stored
  with the fail-safe beside it (the record's ``fail_safe`` field) and published on ``TOPIC/correction``.

A record's id is derived from its input, model and source (:func:`record_id_for`), so the fail-safe sent before the
record exists, the correction and the stored record share it, and a frame inspected again after a crash keeps it.

A message on ``TOPIC/verdict`` (keys sorted; ``latency_ms`` is from the frame being read to this copy being sent)::

    {"deadline_ms": 150.0, "error": null, "fail_safe": false, "latency_ms": 23.4, "model_id": "9f2c...",
     "part_id": "/data/line.avi#000041", "read_time": "2025-01-06T10:00:00.123+00:00", "record_id": "5be1...",
     "regions": [{"box": [40, 8, 64, 64], "peak": 1.9, "score": 0.97, "verdict": "DEFECT"}], "score": 0.97,
     "time": "2025-01-06T10:00:00.141+00:00", "verdict": "DEFECT"}

Example:
    >>> mqtt = MqttConfig(host="127.0.0.1", topic="crackscope/line1/station3")
    >>> mqtt.topics()["verdict"]
    'crackscope/line1/station3/verdict'
    >>> with LineOutputs(out=Path("results"), model_id=model.model_id, mqtt=mqtt) as line:   # doctest: +SKIP
    ...     records = line.deliver(frames, records)     # before the records are stored
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from crackscope.inspect.decision import Verdict
from crackscope.inspect.results import InspectionResult, utc_now
from crackscope.inspect.sources import Frame

log = logging.getLogger(__name__)

# Fields of a verdict message that can be written to an OPC UA node.
NODE_FIELDS = ("verdict", "score", "part_id", "record_id", "model_id", "latency_ms", "time", "fail_safe", "regions")
# A verdict written to an integer node: a PLC compares numbers more readily than strings.
VERDICT_CODES = {Verdict.OK: 0, Verdict.DEFECT: 1, Verdict.REVIEW: 2, Verdict.ERROR: 3}
_RECORD_NAMESPACE = uuid.UUID("6f0c7c1e-3d57-4c1b-9a53-1c2f1a0e7d42")


class LineOutputError(RuntimeError):
    """A line output that cannot start: its package is missing, or a credential it names is not set."""


# --- configuration --------------------------------------------------------------------------------------------------


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class MqttConfig:
    """Where verdicts are published (MQTT 3.1.1, QoS 1); ``host`` unset: no MQTT. The daemon's ``mqtt:`` keys.

    Attributes:
        host, port: the broker.
        topic: the station's topic: verdicts go to ``TOPIC/verdict``, the real verdicts of frames that missed their
            deadline to ``TOPIC/correction``, the retained status to ``TOPIC/status``. Unset (in the daemon):
            ``crackscope/<line>/<station>`` of the daemon's ``line`` and ``station`` (``default`` and the host name
            when unset).
        client_id: the MQTT client id (unset: ``crackscope-`` and the topic, ``/`` as ``-``).
        username: user name for the broker (unset: anonymous).
        password_env: the environment variable that holds the password (never the password itself: daemon.yaml is
            saved in the results folder).
        tls_ca: a CA certificate file: connect with TLS (unset: plain TCP).
        keepalive_s: MQTT keep-alive; a daemon that dies silently is declared offline (its last will) by the broker
            after 1.5 times this.
        reconnect_min_s, reconnect_max_s: wait between connection attempts, doubling from min to max.
        status_interval_s: the retained status (counts) is refreshed this often, on every connect and at stop.
        outbox_max_messages, outbox_max_mb: bounds of the outbox ``OUT/line-outbox-<topic>.sqlite``; when full,
            the oldest waiting messages are dropped (logged), inspection never waits.
        inflight: messages sent and not yet acknowledged at a time.
        ack_timeout_s: a message not acknowledged this long while connected is sent again.
        drain_s: at stop, the longest wait for the broker to acknowledge what is waiting; the rest is sent by the next
            start.
    """

    host: str | None = None
    port: int = 1883
    topic: str | None = None
    client_id: str | None = None
    username: str | None = None
    password_env: str | None = None
    tls_ca: str | None = None
    keepalive_s: int = 10
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    status_interval_s: float = 10.0
    outbox_max_messages: int = 100_000
    outbox_max_mb: float = 64.0
    inflight: int = 100
    ack_timeout_s: float = 30.0
    drain_s: float = 3.0

    def __post_init__(self) -> None:
        _check(1 <= self.port <= 65535, f"mqtt.port must be in 1..65535, got {self.port}")
        if self.topic is not None:
            _check(
                bool(self.topic.strip("/")) and not re.search(r"[+#\x00]", self.topic),
                f"mqtt.topic must be a topic name without wildcards (+ #), got {self.topic!r}",
            )
        _check(self.keepalive_s >= 1, f"mqtt.keepalive_s must be at least 1, got {self.keepalive_s}")
        _check(
            0 < self.reconnect_min_s <= self.reconnect_max_s,
            f"mqtt needs 0 < reconnect_min_s <= reconnect_max_s, got {self.reconnect_min_s}, {self.reconnect_max_s}",
        )
        _check(self.status_interval_s > 0, f"mqtt.status_interval_s must be above 0, got {self.status_interval_s}")
        _check(
            self.outbox_max_messages >= 1,
            f"mqtt.outbox_max_messages must be at least 1, got {self.outbox_max_messages}",
        )
        _check(self.outbox_max_mb > 0, f"mqtt.outbox_max_mb must be above 0, got {self.outbox_max_mb}")
        _check(1 <= self.inflight <= 1000, f"mqtt.inflight must be in 1..1000, got {self.inflight}")
        _check(self.ack_timeout_s > 0, f"mqtt.ack_timeout_s must be above 0, got {self.ack_timeout_s}")
        _check(self.drain_s >= 0, f"mqtt.drain_s must be at least 0, got {self.drain_s}")

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    @property
    def base_topic(self) -> str:
        """The topic the others are under (as :meth:`for_station` would make it, when unset)."""
        return self.topic.strip("/") if self.topic else str(self.for_station(None, None).topic)

    def topics(self) -> dict[str, str]:
        """The topic of each message kind and of the status."""
        return {name: f"{self.base_topic}/{name}" for name in ("verdict", "correction", "status")}

    def for_station(self, line: str | None, station: str | None) -> MqttConfig:
        """This config with its topic, when unset, made ``crackscope/<line>/<station>`` (the daemon's ``line`` and
        ``station``; ``default`` and the host name when those are unset)."""
        if self.topic:
            return self
        levels = (_topic_level(line or "default"), _topic_level(station or socket.gethostname()))
        return dataclasses.replace(self, topic="crackscope/" + "/".join(levels))


def _topic_level(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "unnamed"


@dataclass(frozen=True)
class OpcUaConfig:
    """Where verdicts are written over OPC UA (asyncua); ``url`` unset: no OPC UA. The daemon's ``opcua:`` keys.

    Each verdict (the fail-safe of a frame that missed its deadline included; corrections are not written: the PLC
    has acted on the fail-safe) is written to the nodes in one write request, each value in the node's own data type
    (a verdict written to an integer node is OK 0, DEFECT 1, REVIEW 2, ERROR 3). A node holds one value, so while the
    server is unreachable only the newest ``queue`` verdicts are kept, in memory; at a stop, those still waiting get up
    to ``timeout_s`` to be written.

    Attributes:
        url: the server, ``opc.tcp://host:4840/path``.
        nodes: message field -> node id, e.g. ``{verdict: "ns=2;s=Station3.Verdict", score: "ns=2;s=Station3.Score"}``
            (fields: verdict, score, part_id, record_id, model_id, latency_ms, time, fail_safe, regions as JSON).
        username, password_env: credentials (the password read from the environment variable named).
        timeout_s: per request.
        reconnect_min_s, reconnect_max_s: wait between connection attempts, doubling from min to max.
        queue: verdicts kept while the server is unreachable (the oldest dropped first).
    """

    url: str | None = None
    nodes: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    password_env: str | None = None
    timeout_s: float = 4.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    queue: int = 1000

    def __post_init__(self) -> None:
        if self.url:
            _check(self.url.startswith("opc.tcp://"), f"opcua.url must start with opc.tcp://, got {self.url!r}")
            _check(bool(self.nodes), "opcua.nodes: name at least one node to write, e.g. {verdict: 'ns=2;s=Verdict'}")
        unknown = sorted(set(self.nodes) - set(NODE_FIELDS))
        _check(not unknown, f"opcua.nodes: unknown field(s) {', '.join(unknown)}; known: {', '.join(NODE_FIELDS)}")
        _check(self.timeout_s > 0, f"opcua.timeout_s must be above 0, got {self.timeout_s}")
        _check(
            0 < self.reconnect_min_s <= self.reconnect_max_s,
            f"opcua needs 0 < reconnect_min_s <= reconnect_max_s, got {self.reconnect_min_s}, {self.reconnect_max_s}",
        )
        _check(self.queue >= 1, f"opcua.queue must be at least 1, got {self.queue}")

    @property
    def enabled(self) -> bool:
        return bool(self.url)


# --- messages -------------------------------------------------------------------------------------------------------


class MessageKind(str, Enum):
    """What a line message says: the verdict the line acts on, or the real verdict after a fail-safe."""

    VERDICT = "verdict"
    CORRECTION = "correction"


@dataclass(frozen=True)
class LineMessage:
    """One message for the line: its kind, the record it is about, its JSON body and when its frame was read.

    ``latency_ms`` is not in the body: it is added to each copy as it is sent (:meth:`fields`), so a message that
    waited in the outbox while the broker was down says how late it really was.
    """

    kind: MessageKind
    record_id: str
    body: str
    read_time: float  # Unix seconds

    def fields(self, now: float | None = None) -> dict:
        data = json.loads(self.body)
        data["latency_ms"] = round(((time.time() if now is None else now) - self.read_time) * 1000.0, 3)
        return data

    def payload(self, now: float | None = None) -> bytes:
        return json.dumps(self.fields(now), sort_keys=True).encode()


def record_id_for(source: str, sha256: str, model_id: str) -> str:
    """The id of the record of an input, known before it is inspected: the fail-safe sent at a deadline, the
    correction and the stored record share it, and re-inspecting the input (after a crash) gives the same id."""
    return uuid.uuid5(_RECORD_NAMESPACE, f"{model_id}\n{source}\n{sha256}").hex


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


def _message(kind: MessageKind, record_id: str, read_time: float, **fields: object) -> LineMessage:
    body = {"record_id": record_id, "read_time": _iso(read_time), **fields}
    return LineMessage(kind, record_id, json.dumps(body, sort_keys=True), read_time)


def verdict_message(record: InspectionResult, read_time: float, deadline_ms: float | None = None) -> LineMessage:
    """The line message of a record whose verdict was ready in time."""
    return _message(
        MessageKind.VERDICT, record.id, read_time, **_record_fields(record), fail_safe=False, deadline_ms=deadline_ms
    )


def fail_safe_message(
    record_id: str, part_id: str, model_id: str, verdict: Verdict, read_time: float, deadline_ms: float
) -> LineMessage:
    """The message sent at the deadline of a frame whose verdict is not ready: the fail-safe verdict, no score."""
    return _message(
        MessageKind.VERDICT,
        record_id,
        read_time,
        part_id=part_id,
        verdict=verdict.value,
        score=None,
        regions=[],
        model_id=model_id,
        time=utc_now(),
        error=None,
        fail_safe=True,
        deadline_ms=deadline_ms,
    )


def correction_message(
    record: InspectionResult, read_time: float, line_verdict: Verdict, deadline_ms: float
) -> LineMessage:
    """The real verdict of a frame that missed its deadline; ``line_verdict`` is the fail-safe the line got."""
    return _message(
        MessageKind.CORRECTION,
        record.id,
        read_time,
        **_record_fields(record),
        fail_safe=True,
        line_verdict=line_verdict.value,
        deadline_ms=deadline_ms,
    )


def _record_fields(record: InspectionResult) -> dict[str, object]:
    return {
        "part_id": record.source,
        "verdict": record.verdict.value,
        "score": record.score,
        "regions": [region.to_json() for region in record.regions],
        "model_id": record.model_id,
        "time": record.time,
        "error": record.error,
    }


# --- the deadline ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A frame the line waits for a verdict on."""

    record_id: str
    part_id: str
    read_time: float  # Unix seconds
    due: float  # time.monotonic() of its deadline


@dataclass(frozen=True)
class Miss:
    """A frame that missed its deadline: the fail-safe verdict the line got, and whether it is still to be sent (the
    verdict came before the watch thread noticed the deadline had passed)."""

    verdict: Verdict
    to_send: bool


class DeadlineWatch:
    """Sends the fail-safe of every tracked frame whose verdict is not settled by its deadline (a thread).

    Frames are tracked when they are read (the source's ``on_read``) or, at the latest, when the inspection loop
    takes them; :meth:`settle` is called when the verdict is ready and says whether the frame missed its deadline.
    A frame settled after its deadline always counts as a miss, even if the thread had not woken yet, so every frame
    is either on time or fail-safe, never both and never neither.
    """

    def __init__(
        self,
        deadline_ms: float,
        fail_safe: Verdict,
        model_id: str,
        on_miss: Callable[[Part], None],
        ignore: Callable[[Frame], bool] = lambda frame: False,
    ) -> None:
        self.deadline_s = deadline_ms / 1000.0
        self.fail_safe = fail_safe
        self.model_id = model_id
        self._on_miss = on_miss
        self._ignore = ignore
        self._cond = threading.Condition()
        self._pending: dict[tuple[str, str], Part] = {}
        self._missed: set[tuple[str, str]] = set()
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._order = itertools.count()
        self._closing = False
        self.misses = 0
        self._thread = threading.Thread(target=self._run, name="line deadline", daemon=True)

    def track(self, frame: Frame) -> None:
        """Start the frame's deadline clock (at its read time); a frame tracked or settled already is left alone."""
        if self._ignore(frame):
            return
        with self._cond:
            if frame.key in self._pending or frame.key in self._missed:
                return
            part = self._part(frame)
            self._pending[frame.key] = part
            heapq.heappush(self._heap, (part.due, next(self._order), frame.key))
            self._cond.notify()

    def forget(self, frame: Frame) -> None:
        """Stop watching a frame that will get no verdict (skipped, already stored)."""
        with self._cond:
            self._pending.pop(frame.key, None)
            self._missed.discard(frame.key)

    def settle(self, frame: Frame) -> Miss | None:
        """The frame's verdict is ready: None when in time, else the fail-safe it got (or is still to get)."""
        with self._cond:
            part = self._pending.pop(frame.key, None) or self._part(frame)
            if frame.key in self._missed:
                self._missed.discard(frame.key)
                return Miss(self.fail_safe, to_send=False)
            if time.monotonic() < part.due:
                return None
            self.misses += 1
            return Miss(self.fail_safe, to_send=True)

    def _part(self, frame: Frame) -> Part:
        record_id = record_id_for(frame.source, frame.sha256, self.model_id)
        return Part(record_id, frame.source, frame.time, frame.monotonic + self.deadline_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                due = self._due_parts()
                while not due and not self._closing:
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                    due = self._due_parts()
                if self._closing:
                    return
            for part in due:
                try:
                    self._on_miss(part)
                except Exception:  # the watch must outlive one failed send: the next deadline matters as much
                    log.exception("sending the fail-safe of %s failed", part.part_id)

    def _due_parts(self) -> list[Part]:
        """Pop the parts whose deadline has passed and mark them missed (under the lock)."""
        due, now = [], time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, key = heapq.heappop(self._heap)
            part = self._pending.pop(key, None)
            if part is not None:  # else settled in time, or forgotten
                self._missed.add(key)
                self.misses += 1
                due.append(part)
        return due

    def __enter__(self) -> DeadlineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            waiting = len(self._pending)
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        if waiting:
            log.info("%d frames read but not inspected at stop got no line verdict", waiting)


# --- the outputs together -------------------------------------------------------------------------------------------


class Output(Protocol):
    """A line output: takes messages without blocking, says how it is doing, and is a context manager."""

    name: str

    def __enter__(self) -> Output: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def send(self, messages: Sequence[LineMessage]) -> None: ...

    def stats(self) -> dict[str, object]: ...


class LineOutputs:
    """The daemon's line: MQTT and OPC UA outputs and the deadline watch, as configured (a context manager).

    Args:
        out: the results folder (the MQTT outbox lives there).
        model_id: the model's sha256, in every message and the status.
        mqtt, opcua: the outputs (each off while its host or url is unset).
        deadline_ms: frames whose verdict is not ready this long after being read get ``fail_safe`` (None: no
            deadline).
        fail_safe: DEFECT (eject) or REVIEW.
        ignore: frames that need no line verdict (already stored by an earlier run).
    """

    def __init__(
        self,
        *,
        out: Path,
        model_id: str,
        mqtt: MqttConfig | None = None,
        opcua: OpcUaConfig | None = None,
        deadline_ms: float | None = None,
        fail_safe: Verdict = Verdict.DEFECT,
        ignore: Callable[[Frame], bool] = lambda frame: False,
    ) -> None:
        self.out = Path(out)
        self.model_id = model_id
        self.mqtt = mqtt or MqttConfig()
        self.opcua = opcua or OpcUaConfig()
        self.deadline_ms = deadline_ms
        self.fail_safe = Verdict(fail_safe)
        self._ignore = ignore
        self._lock = threading.Lock()
        self._verdicts: Counter[str] = Counter()
        self._outputs: list[Output] = []
        self._watch: DeadlineWatch | None = None
        self._open = False

    @property
    def enabled(self) -> bool:
        return self.mqtt.enabled or self.opcua.enabled or self.deadline_ms is not None

    def __enter__(self) -> LineOutputs:
        self._open = True
        try:
            if self.mqtt.enabled:
                from crackscope.inspect.mqtt_output import MqttOutput

                self._outputs.append(MqttOutput(self.mqtt, self.out, self.model_id, self._status).__enter__())
            if self.opcua.enabled:
                from crackscope.inspect.opcua_output import OpcUaOutput

                self._outputs.append(OpcUaOutput(self.opcua).__enter__())
            if self.deadline_ms is not None:
                self._watch = DeadlineWatch(
                    self.deadline_ms, self.fail_safe, self.model_id, self._send_fail_safe, self._ignore
                ).__enter__()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._open:
            return
        self._open = False
        self.stop_deadlines()
        for output in reversed(self._outputs):  # kept: their numbers stay readable for the run summary
            output.__exit__()

    def stop_deadlines(self) -> None:
        """Stop sending fail-safes (the inspection loop has ended: frames still queued get no line verdict)."""
        if self._watch is not None:
            self._watch.__exit__()

    # --- called by the daemon -------------------------------------------------------------------------------------

    def track(self, frame: Frame) -> None:
        """A frame was read: its deadline clock runs (the source's ``on_read``; safe from any thread)."""
        if self._watch is not None:
            self._watch.track(frame)

    def forget(self, frame: Frame) -> None:
        """A frame will not be inspected (skipped): it needs no line verdict."""
        if self._watch is not None:
            self._watch.forget(frame)

    def deliver(self, frames: Sequence[Frame], records: Sequence[InspectionResult]) -> list[InspectionResult]:
        """Send the verdicts of ``records`` (of ``frames``, in order) to the line; returns the records to store, a
        frame that missed its deadline with the fail-safe it got in ``fail_safe``."""
        if not self.enabled:
            return list(records)
        messages, stored = [], []
        for frame, record in zip(frames, records, strict=True):
            miss = self._watch.settle(frame) if self._watch is not None else None
            if miss is None:
                messages.append(verdict_message(record, frame.time, self.deadline_ms))
            else:
                assert self.deadline_ms is not None
                if miss.to_send:
                    messages.append(
                        fail_safe_message(
                            record.id, record.source, self.model_id, miss.verdict, frame.time, self.deadline_ms
                        )
                    )
                record = dataclasses.replace(record, fail_safe=miss.verdict)
                messages.append(correction_message(record, frame.time, miss.verdict, self.deadline_ms))
            stored.append(record)
        with self._lock:
            self._verdicts.update(record.verdict.value for record in stored)
        self._send(messages)
        return stored

    def _send_fail_safe(self, part: Part) -> None:
        assert self.deadline_ms is not None
        message = fail_safe_message(
            part.record_id, part.part_id, self.model_id, self.fail_safe, part.read_time, self.deadline_ms
        )
        self._send([message])

    def _send(self, messages: Sequence[LineMessage]) -> None:
        for output in self._outputs:
            output.send(messages)

    # --- what it did ----------------------------------------------------------------------------------------------

    @property
    def deadline_missed(self) -> int:
        return self._watch.misses if self._watch is not None else 0

    def _status(self) -> dict[str, object]:
        """The counts in the retained MQTT status."""
        with self._lock:
            verdicts = {v.value: self._verdicts[v.value] for v in Verdict}
        return {
            "verdicts": verdicts,
            "deadline_ms": self.deadline_ms,
            "fail_safe": self.fail_safe.value,
            "deadline_missed": self.deadline_missed,
        }

    def counts(self) -> dict[str, object]:
        """What the line got: verdicts, deadline misses, and each output's own numbers (for the run summary)."""
        return {**self._status(), **{output.name: output.stats() for output in self._outputs}}

    def collector(self) -> LineCollector:
        """Prometheus metrics of the line (register on the daemon's registry)."""
        return LineCollector(self)


class LineCollector(Collector):
    """``crackscope_deadline_missed`` and each output's counters, read at scrape time."""

    def __init__(self, line: LineOutputs) -> None:
        self._line = line

    def collect(self) -> Iterator:
        yield CounterMetricFamily(
            "crackscope_deadline_missed",
            "Frames whose verdict was not ready by the deadline (the line got the fail-safe)",
            value=self._line.deadline_missed,
        )
        for output in self._line._outputs:
            stats = output.stats()
            yield GaugeMetricFamily(
                f"crackscope_line_{output.name}_connected",
                f"1 while the {output.name} output is connected",
                value=int(bool(stats.get("connected"))),
            )
            for key in ("acknowledged", "written", "dropped"):
                if key in stats:
                    yield CounterMetricFamily(
                        f"crackscope_line_{output.name}_{key}",
                        f"Line messages {key} ({output.name})",
                        value=float(stats[key]),  # type: ignore[arg-type]
                    )
            if "outbox" in stats:
                yield GaugeMetricFamily(
                    "crackscope_line_outbox_depth",
                    "Line messages waiting for the broker's acknowledgement",
                    value=float(stats["outbox"]),  # type: ignore[arg-type]
                )
