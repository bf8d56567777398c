"""Verdicts to an MQTT broker (paho-mqtt, QoS 1), through the on-disk outbox, with a retained status and last will.

:class:`MqttOutput` writes each message to the outbox (:mod:`~crackscope.inspect.outbox`) and wakes its sender
thread, which publishes what waits there, oldest first, with QoS 1 while the broker is connected; a message leaves
the outbox when the broker's PUBACK for it arrives. paho's network thread connects, and reconnects with a backoff
doubling from ``reconnect_min_s`` to ``reconnect_max_s``; messages sent but not acknowledged when the connection
drops are sent again (marked duplicate) on reconnection, and any not acknowledged ``ack_timeout_s`` after that are
taken from the outbox again. Delivery is therefore at least once; consumers dedupe by ``record_id``.

``TOPIC/status`` is retained: ``{"state": "online", ...counts}`` on every connect and each ``status_interval_s``,
``{"state": "offline", "reason": "stopped"}`` at a clean stop, and ``{"state": "offline", "reason": "connection
lost"}`` as the last will, which the broker publishes when the daemon dies or its network goes.

Example:
    >>> config = MqttConfig(host="127.0.0.1", port=1883, topic="crackscope/line1/station3")
    >>> with MqttOutput(config, Path("results"), model_id, status=lambda: {}) as mqtt:   # doctest: +SKIP
    ...     mqtt.send([verdict_message(record, frame.time)])
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from crackscope.inspect.line import LineMessage, LineOutputError, MqttConfig
from crackscope.inspect.outbox import Outbox, outbox_path
from crackscope.inspect.results import utc_now

log = logging.getLogger(__name__)

_IDLE_WAKE_S = 0.5  # the sender looks at the outbox at least this often (status, acknowledgement timeouts)


@dataclass(frozen=True)
class _Sent:
    seq: int  # in the outbox
    at: float  # time.monotonic() when published


class MqttOutput:
    """The MQTT line output (a context manager; see the module docstring).

    Args:
        config: broker, topic, outbox bounds, timings.
        out: the results folder (the local folder of a plant store), where the outbox lives
            (:func:`~crackscope.inspect.outbox.outbox_path`).
        model_id: in the status.
        status: the counts for the retained status (called from the sender thread).
    """

    name = "mqtt"

    def __init__(self, config: MqttConfig, out: Path, model_id: str, status: Callable[[], dict[str, object]]) -> None:
        self.config = config
        self.topics = config.topics()
        self.model_id = model_id
        self._status = status
        self._outbox_path = outbox_path(out, config.base_topic)
        self.outbox: Outbox | None = None
        self._client = None
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._connected = threading.Event()
        self._connected_at = 0.0
        self._status_due = False
        self._acked: deque[int] = deque()  # mids acknowledged, appended by paho's thread, taken by the sender
        self._inflight: dict[int, _Sent] = {}  # mid -> outbox row (sender thread only)
        self._cursor = 0  # highest outbox seq published
        self._acknowledged = 0
        self._connects = 0
        self._thread = threading.Thread(target=self._run, name="mqtt sender", daemon=True)

    # --- lifetime -------------------------------------------------------------------------------------------------

    def __enter__(self) -> MqttOutput:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as error:
            raise LineOutputError(
                "mqtt.host is set but paho-mqtt is not installed: pip install 'crackscope[line]'"
            ) from error
        password = None
        if self.config.password_env:
            password = os.environ.get(self.config.password_env)
            if password is None:
                raise LineOutputError(
                    f"mqtt.password_env: the environment variable {self.config.password_env} is not set"
                )
        self.outbox = Outbox(
            self._outbox_path,
            max_messages=self.config.outbox_max_messages,
            max_bytes=int(self.config.outbox_max_mb * 1e6),
        )
        client_id = self.config.client_id or "crackscope-" + self.topics["status"].rsplit("/", 1)[0].replace("/", "-")
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        client.max_inflight_messages_set(self.config.inflight)
        client.reconnect_delay_set(self.config.reconnect_min_s, self.config.reconnect_max_s)  # type: ignore[arg-type]
        if self.config.username:
            client.username_pw_set(self.config.username, password)
        if self.config.tls_ca:
            client.tls_set(ca_certs=self.config.tls_ca)
        client.will_set(self.topics["status"], self._status_payload("offline", "connection lost"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._err_success, self._err_no_conn = mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN
        client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        client.loop_start()  # paho's thread connects, and reconnects with the backoff, until loop_stop
        self._thread.start()
        log.info("publishing verdicts to mqtt://%s:%d/%s", self.config.host, self.config.port, self.topics["verdict"])
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.config.drain_s + 5.0)
        client, self._client = self._client, None
        if client is not None:
            if self._connected.is_set():
                info = client.publish(self.topics["status"], self._status_payload("offline", "stopped"), 1, True)
                with contextlib.suppress(Exception):
                    info.wait_for_publish(timeout=2.0)
            client.disconnect()
            client.loop_stop()
        if self.outbox is not None:
            left = len(self.outbox)
            if left:
                log.warning(
                    "%d line messages were not acknowledged; they wait in %s for the next start", left, self.outbox.path
                )
            self.outbox.close()

    # --- the inspection side --------------------------------------------------------------------------------------

    def send(self, messages: Sequence[LineMessage]) -> None:
        """Store the messages in the outbox (never waits for the broker) and wake the sender."""
        if self.outbox is None:
            raise RuntimeError("MqttOutput is not started")
        self.outbox.put(messages)
        self._wake.set()

    def stats(self) -> dict[str, object]:
        outbox = self.outbox.stats() if self.outbox is not None else None
        return {
            "connected": self._connected.is_set(),
            "connects": self._connects,
            "acknowledged": self._acknowledged,
            "outbox": outbox.depth if outbox else 0,
            "outbox_bytes": outbox.bytes if outbox else 0,
            "dropped": outbox.dropped if outbox else 0,
            "topic": self.topics["verdict"].rsplit("/", 1)[0],
        }

    # --- paho's thread (callbacks: only flags and a deque, never the outbox) ---------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.config.host, self.config.port, reason_code)
            return
        self._connects += 1
        self._connected_at = time.monotonic()
        self._status_due = True
        self._connected.set()
        log.info("MQTT connected to %s:%d", self.config.host, self.config.port)
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            self._connected.clear()
            if not self._closing.is_set():
                log.warning(
                    "MQTT connection to %s:%d lost (%s): verdicts wait in the outbox and are sent on reconnection",
                    self.config.host,
                    self.config.port,
                    reason_code,
                )
        self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acked.append(mid)
        self._wake.set()

    # --- the sender thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_status, drain_until = 0.0, None
        while True:
            self._wake.wait(_IDLE_WAKE_S)
            self._wake.clear()  # before looking: a message put after this wakes the next round
            try:
                self._take_acknowledgements()
                now = time.monotonic()
                if self._connected.is_set():
                    if self._status_due or now >= next_status:
                        self._status_due = False
                        self._publish_status()
                        next_status = now + self.config.status_interval_s
                    self._resend_overdue(now)
                    self._publish_waiting(now)
            except Exception:  # a sender that dies would stop the line output silently
                log.exception("MQTT sender")
                time.sleep(_IDLE_WAKE_S)
            if self._closing.is_set():
                drain_until = drain_until or time.monotonic() + self.config.drain_s
                assert self.outbox is not None
                if not len(self.outbox) or time.monotonic() >= drain_until:
                    return

    def _take_acknowledgements(self) -> None:
        seqs = []
        while self._acked:
            sent = self._inflight.pop(self._acked.popleft(), None)
            if sent is not None:  # else a status message's
                seqs.append(sent.seq)
        if seqs:
            assert self.outbox is not None
            self.outbox.remove(seqs)
            self._acknowledged += len(seqs)

    def _resend_overdue(self, now: float) -> None:
        """Take back from the outbox what the broker has not acknowledged for ack_timeout_s while connected."""
        since = max(self._connected_at, 0.0)
        overdue = [mid for mid, sent in self._inflight.items() if now - max(sent.at, since) > self.config.ack_timeout_s]
        for mid in overdue:
            self._cursor = min(self._cursor, self._inflight.pop(mid).seq - 1)

    def _publish_waiting(self, now: float) -> None:
        assert self.outbox is not None and self._client is not None
        room = self.config.inflight - len(self._inflight)
        sent = {entry.seq for entry in self._inflight.values()}
        for seq, message in self.outbox.peek(self._cursor, room):
            if seq in sent:  # still awaiting its acknowledgement (the cursor went back for an overdue one)
                self._cursor = seq
                continue
            info = self._client.publish(self.topics[message.kind.value], message.payload(), qos=1)
            if info.rc not in (self._err_success, self._err_no_conn):  # NO_CONN: paho keeps it for the reconnection
                log.warning("MQTT publish failed (%s); retrying", info.rc)
                break
            self._inflight[info.mid] = _Sent(seq, now)
            self._cursor = seq
        self._take_acknowledgements()

    def _publish_status(self) -> None:
        assert self._client is not None
        self._client.publish(self.topics["status"], self._status_payload("online"), qos=1, retain=True)

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        body: dict[str, object] = {"state": state, "model_id": self.model_id, "time": utc_now()}
        if reason:
            body["reason"] = reason
        if state == "online" or reason == "stopped":
            outbox = self.outbox.stats() if self.outbox is not None else None
            body.update(self._status())
            body["published"] = self._acknowledged
            body["outbox"] = outbox.depth if outbox else 0
            body["outbox_dropped"] = outbox.dropped if outbox else 0
        return json.dumps(body, sort_keys=True).encode()
