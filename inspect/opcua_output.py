"""Verdicts written to OPC UA nodes (asyncua), for a PLC or an OPC UA server on the line; optional.

:class:`OpcUaOutput` runs an asyncio loop in its own thread: it connects to ``opcua.url``, reads the data type of
each configured node once, then writes the fields of each verdict to their nodes in one write request (so a PLC sees
verdict, score and part id change together). A lost connection is retried with a backoff doubling from
``reconnect_min_s`` to ``reconnect_max_s``; meanwhile the newest ``queue`` verdicts wait in memory, and the one being
written when the connection dropped is written again first. At a stop, the verdicts still waiting get up to
``timeout_s`` to be written. Needs ``pip install 'crackscope[opcua]'``.

Example:
    >>> config = OpcUaConfig(url="opc.tcp://plc:4840", nodes={"verdict": "ns=2;s=Station3.Verdict"})
    >>> with OpcUaOutput(config) as opcua:                               # doctest: +SKIP
    ...     opcua.send([verdict_message(record, frame.time)])
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from crackscope.inspect.decision import Verdict
from crackscope.inspect.line import VERDICT_CODES, LineMessage, LineOutputError, MessageKind, OpcUaConfig

log = logging.getLogger(__name__)

_INTEGER_TYPES = ("SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64")


def node_value(field: str, value: Any, variant_type: str) -> Any:
    """A message field's value in the data type of its node (``variant_type`` is asyncua's VariantType name)."""
    if variant_type == "String":
        return value if isinstance(value, str) else ("" if value is None else json.dumps(value, sort_keys=True))
    if variant_type == "Boolean":
        return bool(value)
    if variant_type in ("Double", "Float"):
        return float("nan") if value is None else float(value)
    if variant_type in _INTEGER_TYPES:
        if field == "verdict":
            return VERDICT_CODES[Verdict(value)]
        return 0 if value is None else round(float(value))
    if variant_type == "DateTime" and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


class OpcUaOutput:
    """The OPC UA line output (a context manager; see the module docstring)."""

    name = "opcua"

    def __init__(self, config: OpcUaConfig) -> None:
        self.config = config
        self._pending: deque[LineMessage] = deque()
        self._lock = threading.Lock()
        self._written = 0
        self._dropped = 0
        self._connected = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name="opcua writer", daemon=True)

    def __enter__(self) -> OpcUaOutput:
        try:
            import asyncua  # noqa: F401 (the check that it is there; used in the writer thread)
        except ImportError as error:
            raise LineOutputError(
                "opcua.url is set but asyncua is not installed: pip install 'crackscope[opcua]'"
            ) from error
        if self.config.password_env and self.config.password_env not in os.environ:
            raise LineOutputError(f"opcua.password_env: the environment variable {self.config.password_env} is not set")
        self._thread.start()
        self._ready.wait(timeout=10.0)
        log.info("writing verdicts to %s (%s)", self.config.url, ", ".join(sorted(self.config.nodes)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        deadline = time.monotonic() + self.config.timeout_s  # the verdicts still queued get a last chance
        while self._thread.is_alive() and self.stats()["waiting"] and time.monotonic() < deadline:
            time.sleep(0.01)
        self._closing = True
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=self.config.timeout_s + 5.0)
        with self._lock:
            left = len(self._pending)
        if left:
            log.warning("%d verdicts were not written to %s before the stop", left, self.config.url)

    def send(self, messages: Sequence[LineMessage]) -> None:
        """Queue the verdicts (not corrections) to be written; the oldest go when the queue is full."""
        verdicts = [m for m in messages if m.kind is MessageKind.VERDICT]
        if not verdicts:
            return
        with self._lock:
            for message in verdicts:
                if len(self._pending) >= self.config.queue:
                    self._pending.popleft()
                    self._dropped += 1
                self._pending.append(message)
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake.set)

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "connected": self._connected,
                "written": self._written,
                "waiting": len(self._pending),
                "dropped": self._dropped,
            }

    # --- the writer thread ----------------------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("OPC UA writer stopped")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        self._ready.set()
        failures = 0
        while not self._closing:
            try:
                await self._connected_session()
                failures = 0
            except Exception as error:
                if self._closing:
                    break
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "OPC UA %s: %s (attempt %d; retrying)", self.config.url, error or type(error).__name__, failures
                    )
            finally:
                self._connected = False
            delay = min(self.config.reconnect_max_s, self.config.reconnect_min_s * 2 ** max(0, failures - 1))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _connected_session(self) -> None:
        from asyncua import Client, ua

        client = Client(self.config.url, timeout=self.config.timeout_s)
        if self.config.username:
            client.set_user(self.config.username)
            client.set_password(os.environ.get(self.config.password_env or "", ""))
        async with client:
            fields = list(self.config.nodes)
            nodes = [client.get_node(self.config.nodes[name]) for name in fields]
            types = [await node.read_data_type_as_variant_type() for node in nodes]
            self._connected = True
            log.info("OPC UA connected to %s", self.config.url)
            while not self._closing:
                message = self._next()
                if message is None:
                    await self._wait_for_work()
                    continue
                data = message.fields()
                values = [
                    ua.Variant(node_value(name, data.get(name), vtype.name), vtype)
                    for name, vtype in zip(fields, types, strict=True)
                ]
                try:
                    await client.write_values(nodes, values)
                except Exception:
                    with self._lock:
                        self._pending.appendleft(message)  # written first after the reconnection
                    raise
                with self._lock:
                    self._written += 1

    def _next(self) -> LineMessage | None:
        with self._lock:
            return self._pending.popleft() if self._pending else None

    async def _wait_for_work(self) -> None:
        assert self._wake is not None and self._stop is not None
        self._wake.clear()
        with self._lock:
            if self._pending:
                return
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stop.wait())]
        _, unfinished = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in unfinished:
            task.cancel()
