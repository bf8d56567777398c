"""Line outputs end to end: the daemon's verdicts through a real Mosquitto broker, its outbox, its last will and its
deadline; OPC UA through a real asyncua server. No broker is mocked.

The broker is Debian's ``mosquitto`` started on a free port with a file of its own (skipped here when it is not
installed, a failure under CI, where ``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from crackscope.cli import main
from crackscope.config import ConfigError
from crackscope.inspect.daemon import daemon_config, run_daemon
from crackscope.inspect.decision import Verdict
from crackscope.inspect.line import (
    DeadlineWatch,
    LineOutputError,
    LineOutputs,
    MessageKind,
    MqttConfig,
    OpcUaConfig,
    record_id_for,
    verdict_message,
)
from crackscope.inspect.outbox import Outbox, outbox_path
from crackscope.inspect.results import InspectionResult, utc_now
from crackscope.inspect.sinks import DB_NAME, ResultStore
from crackscope.inspect.sources import Frame
from crackscope.training.synthetic import write_video

TOPIC = "crackscope/line1/station3"


# --- a real broker --------------------------------------------------------------------------------------------------


def _mosquitto() -> str:
    found = os.environ.get("CRACKSCOPE_MOSQUITTO") or shutil.which("mosquitto")
    if not found and Path("/usr/sbin/mosquitto").is_file():
        found = "/usr/sbin/mosquitto"  # Debian puts it in sbin, often not on a user's PATH
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("mosquitto is not installed: .ci/run installs Debian's mosquitto package before the tests")
    pytest.skip("the line tests need Debian's mosquitto package (apt-get install mosquitto)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Mosquitto:
    """A Mosquitto broker on 127.0.0.1 and a free port, stopped and started again on the same port at will.

    With ``persistence`` it keeps sessions across a restart (a durable subscriber's queue), as a plant broker would.
    """

    def __init__(self, executable: str, folder: Path, *, persistence: bool = False) -> None:
        self.executable = executable
        self.port = _free_port()
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", f"persistence {str(persistence).lower()}"]
        if persistence:
            lines.append(f"persistence_location {folder}/")
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = folder / "mosquitto.log"
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self._process = subprocess.Popen([self.executable, "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self._process.poll() is None, self.log.read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.02)
        raise AssertionError(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()  # SIGTERM: a persistent broker saves its sessions
            self._process.wait(timeout=10)
        self._process = None


@pytest.fixture
def broker(tmp_path):
    server = Mosquitto(_mosquitto(), tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


class Subscriber:
    """A QoS 1 subscriber to everything under ``TOPIC``; ``durable``: a persistent session (messages published while
    it is away are kept for it by the broker)."""

    def __init__(self, port: int, *, durable: bool = False) -> None:
        mqtt = pytest.importorskip("paho.mqtt.client", reason="pip install 'crackscope[line]' for paho-mqtt")
        self.messages: list[tuple[str, dict, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client_id = f"test-subscriber-{port}" if durable else ""
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not durable)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda client, *_: client.subscribe(f"{TOPIC}/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "the subscription was not acknowledged"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload), bool(message.retain)))

    def of(self, kind: str) -> list[dict]:
        with self._lock:
            return [body for topic, body, _ in self.messages if topic == f"{TOPIC}/{kind}"]

    def unique(self, kind: str) -> dict[str, dict]:
        """Messages of ``kind`` deduped by record id (the consumers' half of the at-least-once contract)."""
        return {body["record_id"]: body for body in self.of(kind)}

    def wait_for(self, condition, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; received {len(self.messages)} messages"
            time.sleep(0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def subscribed(port: int, *, durable: bool = False):
    subscriber = Subscriber(port, durable=durable)
    try:
        yield subscriber
    finally:
        subscriber.close()


# --- inputs ---------------------------------------------------------------------------------------------------------


def _grey_video(path: Path, count: int, fps: float = 10.0) -> Path:
    """Frames whose mean grey decides the brightness model's verdict: dark OK, bright DEFECT, alternately."""
    levels = [100 if i % 2 else 170 for i in range(count)]
    frames = [np.full((64, 96, 3), level, np.uint8) for level in levels]
    for index, frame in enumerate(frames):  # distinct pixels, so each frame is its own input (sha256)
        frame[0, index % 96] = (index * 7) % 256
    return write_video(path, frames, fps=fps)


def _config(model: Path, source: Path, out: Path, port: int, **values):
    mqtt_values = {"host": "127.0.0.1", "port": port, "topic": TOPIC, **values.pop("mqtt", {})}
    return daemon_config(
        {"providers": "cpu", "mqtt": mqtt_values, **values},
        {"source": str(source), "model": str(model), "out": str(out)},
    )


def _stored(out: Path) -> dict[str, InspectionResult]:
    with ResultStore(out) as store:
        return {record.id: record for record in store.records()}


def _stopped(subscriber: Subscriber) -> bool:
    status = subscriber.of("status")
    return bool(status) and status[-1]["state"] == "offline"


def _outbox_depth(out: Path) -> int:
    with sqlite3.connect(outbox_path(out, TOPIC)) as db:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


# --- MQTT -----------------------------------------------------------------------------------------------------------


def test_each_record_reaches_the_broker_with_its_verdict_and_the_status_is_retained(broker, brightness_model, tmp_path):
    video, out = _grey_video(tmp_path / "line.avi", 12), tmp_path / "out"
    with subscribed(broker.port) as subscriber:
        summary = run_daemon(_config(brightness_model, video, out, broker.port, deadline_ms=60_000))
        subscriber.wait_for(lambda: len(subscriber.unique("verdict")) == 12 and _stopped(subscriber))
        status = subscriber.of("status")
    records = _stored(out)
    messages = subscriber.unique("verdict")
    assert set(messages) == set(records) and len(subscriber.of("verdict")) == 12  # with a broker up: no duplicate
    assert {r.verdict for r in records.values()} == {Verdict.OK, Verdict.DEFECT}
    for record_id, message in messages.items():
        record = records[record_id]
        assert record_id == record_id_for(record.source, record.sha256, record.model_id)
        assert (message["part_id"], message["verdict"], message["score"]) == (
            record.source,
            record.verdict.value,
            record.score,
        )
        assert message["model_id"] == record.model_id and message["time"] == record.time
        assert message["regions"] == [region.to_json() for region in record.regions]
        assert message["fail_safe"] is False and record.fail_safe is None
        assert 0 < message["latency_ms"] < 10_000
    assert subscriber.of("correction") == []
    assert status[0]["state"] == "online" and status[-1]["state"] == "offline" and status[-1]["reason"] == "stopped"
    assert sum(status[-1]["verdicts"].values()) == 12 and status[-1]["outbox"] == 0
    assert summary.describe()["line"]["mqtt"]["acknowledged"] == 12 and summary.describe()["deadline_missed"] == 0
    assert _outbox_depth(out) == 0
    with subscribed(broker.port) as late:  # a subscriber that comes later still learns the station's state
        late.wait_for(lambda: late.messages)
        assert late.messages[0][0] == f"{TOPIC}/status" and late.messages[0][2] is True
        assert late.messages[0][1]["state"] == "offline"


def test_a_broker_stopped_mid_run_and_started_again_loses_no_verdict(brightness_model, tmp_path):
    server = Mosquitto(_mosquitto(), tmp_path / "mosquitto", persistence=True)
    server.start()
    try:
        video, out = _grey_video(tmp_path / "line.avi", 30, fps=20.0), tmp_path / "out"
        config = _config(
            brightness_model,
            video,
            out,
            server.port,
            realtime=True,
            mqtt={"reconnect_min_s": 0.1, "reconnect_max_s": 0.2, "drain_s": 10.0},
        )
        with subscribed(server.port, durable=True) as subscriber:
            runs = []
            daemon = threading.Thread(target=lambda: runs.append(run_daemon(config)))
            daemon.start()
            subscriber.wait_for(lambda: len(subscriber.of("verdict")) >= 4)
            server.stop()
            down_from = time.time()
            time.sleep(0.5)
            server.start()
            down_until = time.time()
            daemon.join(timeout=30)
            subscriber.wait_for(lambda: len(subscriber.unique("verdict")) == 30)
        records = _stored(out)
        assert set(subscriber.unique("verdict")) == set(records) and len(records) == 30
        made_while_down = [r for r in records.values() if down_from < _unix(r.time) < down_until]
        assert made_while_down, "no verdict was made while the broker was down"
        line = runs[0].describe()["line"]["mqtt"]
        assert line["connects"] >= 2 and line["outbox"] == 0 and _outbox_depth(out) == 0
    finally:
        server.stop()


def _unix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def _daemon_process(model: Path, source: Path, out: Path, port: int, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "crackscope.cli", "daemon", "--source", str(source), "--model", str(model)]
    command += ["--out", str(out), "--providers", "cpu", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port)]
    command += ["--mqtt-topic", TOPIC, *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_killed_daemon_leaves_a_retained_offline_status_by_its_last_will(broker, brightness_model, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with subscribed(broker.port) as subscriber:
        process = _daemon_process(brightness_model, inbox, tmp_path / "out", broker.port)
        try:
            subscriber.wait_for(lambda: [s for s in subscriber.of("status") if s["state"] == "online"], timeout=30)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
        subscriber.wait_for(lambda: subscriber.of("status")[-1]["state"] == "offline")
        assert subscriber.of("status")[-1]["reason"] == "connection lost"
    with subscribed(broker.port) as late:
        late.wait_for(lambda: late.messages)
        topic, body, retained = late.messages[0]
        assert topic == f"{TOPIC}/status" and retained and body["state"] == "offline"


def test_what_the_broker_did_not_acknowledge_before_a_kill_is_sent_by_the_next_start(brightness_model, tmp_path):
    server = Mosquitto(_mosquitto(), tmp_path / "mosquitto")  # not started yet: the broker is down
    video, out = _grey_video(tmp_path / "line.avi", 60, fps=20.0), tmp_path / "out"
    process = _daemon_process(brightness_model, video, out, server.port, "--realtime")
    try:
        deadline = time.monotonic() + 30
        while not (out / "results.jsonl").is_file() or len((out / "results.jsonl").read_text().splitlines()) < 5:
            assert process.poll() is None and time.monotonic() < deadline, "the daemon stored no records"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    before = len(_stored(out))
    assert 5 <= before < 60 and _outbox_depth(out) >= before  # every stored verdict waits, unacknowledged
    server.start()
    try:
        with subscribed(server.port) as subscriber:
            summary = run_daemon(_config(brightness_model, video, out, server.port))
            subscriber.wait_for(lambda: len(subscriber.unique("verdict")) == 60)
        records = _stored(out)
        assert set(subscriber.unique("verdict")) == set(records) and len(records) == 60
        assert summary.skipped["done"] == before and _outbox_depth(out) == 0
    finally:
        server.stop()


@pytest.mark.parametrize("fail_safe", ["DEFECT", "REVIEW"])
def test_with_a_tiny_deadline_every_frame_gets_the_fail_safe_on_the_line_and_its_real_verdict_in_the_store(
    broker, brightness_model, tmp_path, fail_safe
):
    video, out = _grey_video(tmp_path / "line.avi", 10), tmp_path / "out"
    config = _config(brightness_model, video, out, broker.port, deadline_ms=0.001, fail_safe=fail_safe)
    with subscribed(broker.port) as subscriber:
        summary = run_daemon(config)
        subscriber.wait_for(lambda: len(subscriber.unique("correction")) == 10 and _stopped(subscriber))
        status = subscriber.of("status")[-1]
    records = _stored(out)
    line, corrections = subscriber.unique("verdict"), subscriber.unique("correction")
    assert set(line) == set(corrections) == set(records)
    assert {(m["verdict"], m["fail_safe"], m["score"]) for m in line.values()} == {(fail_safe, True, None)}
    for record_id, record in records.items():
        assert record.fail_safe is Verdict(fail_safe)
        assert corrections[record_id]["verdict"] == record.verdict.value
        assert corrections[record_id]["line_verdict"] == fail_safe
        assert corrections[record_id]["score"] == record.score
    assert {r.verdict for r in records.values()} == {Verdict.OK, Verdict.DEFECT}  # the real verdicts, not the line's
    assert summary.describe()["deadline_missed"] == 10 and status["deadline_missed"] == 10


def test_a_frame_the_inspector_does_not_settle_gets_its_fail_safe_at_the_deadline_not_later():
    sent: list[tuple[str, float]] = []
    frames = [Frame(None, f"cam#{i}", i, time.time(), time.monotonic(), f"{i:064x}") for i in range(3)]
    with DeadlineWatch(80.0, Verdict.DEFECT, "m" * 64, lambda part: sent.append((part.part_id, time.monotonic()))) as w:
        for frame in frames:
            w.track(frame)
        assert w.settle(frames[0]) is None  # in time
        time.sleep(0.3)
        miss = w.settle(frames[1])  # after its deadline: the watch has sent its fail-safe already
        w.forget(frames[2])
    assert miss is not None and miss.verdict is Verdict.DEFECT and not miss.to_send
    assert [part for part, _ in sent] == ["cam#1", "cam#2"] and w.misses == 2
    assert all(0.08 <= at - frames[1].monotonic < 0.25 for _, at in sent)


def test_deadline_misses_are_counted_in_metrics_with_the_real_verdict_kept(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    frame = Frame(None, "cam#000001", 1, time.time(), time.monotonic(), "ab" * 32)
    record = InspectionResult("x", frame.source, frame.sha256, utc_now(), Verdict.OK, 0.1, "m" * 64)
    with LineOutputs(out=tmp_path, model_id="m" * 64, deadline_ms=0.001, fail_safe=Verdict.REVIEW) as line:
        time.sleep(0.01)
        (stored,) = line.deliver([frame], [record])
    registry = CollectorRegistry()
    registry.register(line.collector())
    assert "crackscope_deadline_missed_total 1.0" in generate_latest(registry).decode()
    assert stored.verdict is Verdict.OK and stored.fail_safe is Verdict.REVIEW
    assert line.counts()["deadline_missed"] == 1 and line.counts()["verdicts"]["OK"] == 1


def test_the_outbox_is_bounded_drops_the_oldest_with_one_warning_and_keeps_the_rest_across_a_reopen(tmp_path, caplog):
    records = [InspectionResult(f"r{i}", f"{i}.png", "ab" * 32, utc_now(), Verdict.OK, 0.1, "m" * 64) for i in range(8)]
    messages = [verdict_message(record, time.time()) for record in records]
    path = tmp_path / "outbox.sqlite"
    with caplog.at_level(logging.WARNING, logger="crackscope"), Outbox(path, max_messages=5, max_bytes=10**6) as box:
        for message in messages:
            box.put([message])
        assert [m.record_id for _, m in box.peek(0, 10)] == ["r3", "r4", "r5", "r6", "r7"]
        assert box.stats().dropped == 3
        box.remove([seq for seq, _ in box.peek(0, 3)])
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and "dropping the oldest" in full[0].getMessage()
    assert any("has room again" in r.getMessage() for r in caplog.records)
    with Outbox(path, max_messages=5, max_bytes=10**6) as again:
        assert [m.record_id for _, m in again.peek(0, 10)] == ["r6", "r7"]
        assert all(m.kind is MessageKind.VERDICT for _, m in again.peek(0, 10))
    size = len(messages[0].body)
    with Outbox(tmp_path / "small.sqlite", max_messages=100, max_bytes=2 * size + 1) as small:
        small.put(messages[:4])
        assert len(small) == 2 and small.stats().bytes <= 2 * size + 1


# --- configuration --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mqtt": {"port": "1883"}}, "config.mqtt.port: expected int, got str '1883'"),
        ({"mqtt": {"hots": "x"}}, "config.mqtt: unknown key(s) hots"),
        ({"mqtt": {"port": 0}}, "mqtt.port must be in 1..65535"),
        ({"mqtt": {"topic": "a/#"}}, "mqtt.topic must be a topic name without wildcards"),
        ({"mqtt": {"outbox_max_mb": "lots"}}, "config.mqtt.outbox_max_mb: expected float, got str 'lots'"),
        ({"deadline_ms": "soon"}, "config.deadline_ms: expected float or None, got str 'soon'"),
        ({"deadline_ms": 0}, "deadline_ms must be above 0"),
        ({"deadline_ms": 50, "policy": "latest"}, "deadline_ms needs policy every"),
        ({"deadline_ms": 50, "trigger": {"mode": "motion"}}, "deadline_ms needs trigger none"),
        ({"fail_safe": "OK"}, "config.fail_safe: expected 'DEFECT' or 'REVIEW', got str 'OK'"),
        ({"opcua": {"url": "opc.tcp://plc:4840"}}, "opcua.nodes: name at least one node"),
        ({"opcua": {"url": "opc.tcp://plc", "nodes": {"colour": "ns=2;s=C"}}}, "unknown field(s) colour"),
        ({"opcua": {"nodes": ["ns=2;s=V"]}}, "config.opcua.nodes: expected a mapping"),
    ],
)
def test_a_bad_line_setting_is_reported_with_its_key(values, message):
    base = {"source": "line.avi", "model": "m.onnx", "out": "results"}
    with pytest.raises(ConfigError) as error:
        daemon_config({**base, **values}, {})
    assert message in str(error.value)


def test_a_live_camera_with_a_deadline_must_inspect_every_frame():
    base = {"source": "0", "model": "m.onnx", "out": "results", "deadline_ms": 100}
    with pytest.raises(ConfigError, match="policy every"):
        daemon_config(base, {})
    assert daemon_config({**base, "policy": "every"}, {}).deadline_ms == 100.0


def test_the_topic_defaults_to_the_daemons_line_and_station():
    assert MqttConfig(host="b").for_station("3", "cam east").topics() == {
        "verdict": "crackscope/3/cam-east/verdict",
        "correction": "crackscope/3/cam-east/correction",
        "status": "crackscope/3/cam-east/status",
    }
    assert MqttConfig(host="b", topic="plant/a/").for_station("3", "x").base_topic == "plant/a"


def test_the_daemon_flags_reach_the_line_config_and_the_help_describes_them(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["daemon", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--mqtt-host", "--mqtt-port", "--mqtt-topic", "--opcua-url", "--deadline-ms", "--fail-safe"):
        assert flag in text
    assert "consumers dedupe by record_id" in text and "--mqtt-topic crackscope/line1/station3" in text
    args = ["daemon", "--source", "0", "--model", "m.onnx", "--out", str(tmp_path / "o"), "--policy", "every"]
    assert main([*args, "--deadline-ms", "-5"]) == 2
    assert "deadline_ms must be above 0" in capsys.readouterr().err


def test_a_missing_mqtt_or_opcua_package_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)
    with pytest.raises(LineOutputError, match=r"pip install 'crackscope\[line\]'"):
        LineOutputs(out=tmp_path, model_id="m", mqtt=MqttConfig(host="127.0.0.1")).__enter__()
    monkeypatch.setitem(sys.modules, "asyncua", None)
    opcua = OpcUaConfig(url="opc.tcp://127.0.0.1:4840", nodes={"verdict": "ns=2;s=V"})
    with pytest.raises(LineOutputError, match=r"pip install 'crackscope\[opcua\]'"):
        LineOutputs(out=tmp_path, model_id="m", opcua=opcua).__enter__()


def test_a_version_3_store_gains_the_fail_safe_column_and_a_fail_safe_is_stored_and_read_back(tmp_path):
    with ResultStore(tmp_path / "run") as store:
        store.add([InspectionResult("a", "a.png", "ab" * 32, utc_now(), Verdict.OK, 0.2, "m" * 64)])
    with sqlite3.connect(tmp_path / "run" / DB_NAME) as db:  # back to how version 3 left it
        db.execute("ALTER TABLE results DROP COLUMN fail_safe")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    late = InspectionResult("b", "b.png", "cd" * 32, utc_now(), Verdict.OK, 0.1, "m" * 64, fail_safe=Verdict.DEFECT)
    with ResultStore(tmp_path / "run") as store:
        store.add([late])
        stored = {r.id: r for r in store.records()}
    assert stored["a"].fail_safe is None and stored["b"].fail_safe is Verdict.DEFECT
    assert '"fail_safe": "DEFECT"' in (tmp_path / "run" / "results.jsonl").read_text()


# --- OPC UA ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _opcua_server(port: int):
    """A real asyncua server in a thread with three writable nodes: Verdict (Int32), Score (Double), Part (String)."""
    asyncua = pytest.importorskip("asyncua", reason="pip install 'crackscope[opcua]' for asyncua")
    ua = asyncua.ua
    ready, stop, nodes = threading.Event(), threading.Event(), {}

    async def serve() -> None:
        server = asyncua.Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/crackscope/")
        index = await server.register_namespace("urn:crackscope:test")
        station = await server.nodes.objects.add_object(index, "Station3")
        for name, value, kind in (("Verdict", -1, ua.VariantType.Int32), ("Score", 0.0, ua.VariantType.Double)):
            nodes[name] = await station.add_variable(ua.NodeId(f"Station3.{name}", index), name, value, kind)
        nodes["Part"] = await station.add_variable(ua.NodeId("Station3.Part", index), "Part", "")
        for node in nodes.values():
            await node.set_writable()
        async with server:
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            nodes.update({name: await node.read_value() for name, node in nodes.items()})

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(15), "the OPC UA server did not start"
    try:
        yield nodes
    finally:
        stop.set()
        thread.join(timeout=10)


def test_each_verdict_is_written_to_the_opcua_nodes_in_their_own_types(brightness_model, tmp_path):
    port = _free_port()
    video, out = _grey_video(tmp_path / "line.avi", 5), tmp_path / "out"
    with _opcua_server(port) as values:
        nodes = {
            "verdict": "ns=2;s=Station3.Verdict",
            "score": "ns=2;s=Station3.Score",
            "part_id": "ns=2;s=Station3.Part",
        }
        config = daemon_config(
            {"providers": "cpu", "opcua": {"url": f"opc.tcp://127.0.0.1:{port}/crackscope/", "nodes": nodes}},
            {"source": str(video), "model": str(brightness_model), "out": str(out)},
        )
        summary = run_daemon(config)
        opcua = summary.describe()["line"]["opcua"]
    last = list(_stored(out).values())[-1]
    assert opcua["written"] == 5 and opcua["waiting"] == 0
    assert values["Verdict"] == {Verdict.OK: 0, Verdict.DEFECT: 1}[last.verdict]
    assert values["Score"] == pytest.approx(last.score) and values["Part"] == last.source
