"""The line's on-disk outbox: messages wait here until the broker has acknowledged them (an SQLite queue).

Every line message is written to ``OUT/line-outbox-<topic>.sqlite`` before it is sent, and removed only when the broker
acknowledges it (an MQTT PUBACK). A broker that is down, a network cut and a daemon killed with ``kill -9`` therefore
lose nothing: what was not acknowledged is sent when the broker is back, or by the next start. The price is that a
message may arrive twice (sent, then the daemon died before the acknowledgement was noted): consumers dedupe by
``record_id``.

The outbox is bounded (by messages and by bytes). Inspection never waits for it: when it is full the OLDEST waiting
messages are dropped to make room for new ones, with one warning line when that starts and one when there is room
again. On a line the newest verdicts matter most (older parts have passed the ejector long ago), and no record is
lost with them: every verdict is also in the results store.

Example:
    >>> path = outbox_path("out", "crackscope/line1/station3")
    >>> with Outbox(path, max_messages=1000, max_bytes=1 << 20) as outbox:  # doctest: +SKIP
    ...     outbox.put([message])
    ...     for seq, waiting in outbox.peek(after=0, limit=10):
    ...         outbox.remove([seq])   # once the broker acknowledged it
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from crackscope.inspect.line import LineMessage, MessageKind

log = logging.getLogger(__name__)


def outbox_path(folder: str | os.PathLike, topic: str) -> Path:
    """The outbox of the station publishing to ``topic``: one per station, so daemons that share a folder (the
    ``artefacts`` of a plant store) never share an outbox, and a restarted daemon finds its own."""
    return Path(folder) / f"line-outbox-{re.sub(r'[^A-Za-z0-9._-]+', '-', topic).strip('-')}.sqlite"


_ROOM_AGAIN = 0.9  # a full outbox has room again below this share of its limits


@dataclass(frozen=True)
class OutboxStats:
    """A snapshot of the outbox: messages waiting, their bytes, and messages dropped because it was full."""

    depth: int
    bytes: int
    dropped: int


class Outbox:
    """A bounded FIFO of :class:`LineMessage` in SQLite (WAL), shared by the inspection loop and the sender thread.

    Args:
        path: the database file (created with its folder).
        max_messages: most messages waiting; beyond, the oldest are dropped.
        max_bytes: most payload bytes waiting; beyond, the oldest are dropped.
    """

    def __init__(self, path: str | os.PathLike, *, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError(f"outbox limits must be at least 1, got {max_messages} messages, {max_bytes} bytes")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # One connection for both threads, serialised by the lock. synchronous=NORMAL in WAL mode: a commit survives
        # the process being killed (what the at-least-once contract is about), not a power cut.
        self._db: sqlite3.Connection | None = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,"
                " record_id TEXT NOT NULL, body TEXT NOT NULL, read_time REAL NOT NULL, size INTEGER NOT NULL)"
            )
        depth, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._depth, self._bytes = int(depth), int(size)
        self._dropped = 0
        self._full = False
        if self._depth:
            log.info("%s: %d line messages from an earlier run wait to be sent", self.path, self._depth)

    # --- the inspection loop's side -----------------------------------------------------------------------------------

    def put(self, messages: Sequence[LineMessage]) -> None:
        """Store ``messages`` in one transaction, dropping the oldest waiting ones if the limits need it."""
        if not messages:
            return
        rows = [(m.kind.value, m.record_id, m.body, m.read_time, len(m.body.encode())) for m in messages]
        dropped = 0
        while len(rows) > 1 and (len(rows) > self.max_messages or sum(row[-1] for row in rows) > self.max_bytes):
            rows.pop(0)  # more than fits at all: the oldest of them go first, as the waiting ones would
            dropped += 1
        incoming = sum(row[-1] for row in rows)
        with self._lock, self._checked_db() as db:
            dropped += self._make_room(db, len(rows), incoming)
            db.executemany("INSERT INTO outbox (kind, record_id, body, read_time, size) VALUES (?, ?, ?, ?, ?)", rows)
            self._depth += len(rows)
            self._bytes += incoming
            self._note_fullness(dropped)

    def _make_room(self, db: sqlite3.Connection, count: int, size: int) -> int:
        """Delete the oldest messages until ``count`` more of ``size`` bytes fit; returns how many went."""
        if self._depth + count <= self.max_messages and self._bytes + size <= self.max_bytes:
            return 0
        removed, freed, last = 0, 0, None
        for seq, row_size in db.execute("SELECT seq, size FROM outbox ORDER BY seq"):
            if self._depth - removed + count <= self.max_messages and self._bytes - freed + size <= self.max_bytes:
                break
            removed, freed, last = removed + 1, freed + row_size, seq
        if last is not None:
            db.execute("DELETE FROM outbox WHERE seq <= ?", (last,))
        self._depth -= removed
        self._bytes -= freed
        return removed

    def _note_fullness(self, dropped: int) -> None:
        """Count what was dropped; say once when dropping starts and once when there is room again (under the lock)."""
        if dropped:
            self._dropped += dropped
            if not self._full:
                self._full = True
                log.warning(
                    "line outbox %s is full (%d messages, %.1f MB): dropping the oldest unsent messages so that "
                    "inspection never waits; their records stay in the results store",
                    self.path,
                    self.max_messages,
                    self.max_bytes / 1e6,
                )
        elif self._full and (
            self._depth < _ROOM_AGAIN * self.max_messages and self._bytes < _ROOM_AGAIN * self.max_bytes
        ):
            self._full = False
            log.warning("line outbox %s has room again; %d messages dropped so far", self.path, self._dropped)

    # --- the sender's side ------------------------------------------------------------------------------------------

    def peek(self, after: int, limit: int) -> list[tuple[int, LineMessage]]:
        """Up to ``limit`` waiting messages with a sequence number above ``after``, oldest first."""
        if limit <= 0:
            return []
        with self._lock:
            rows = (
                self._checked_db()
                .execute(
                    "SELECT seq, kind, record_id, body, read_time FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                )
                .fetchall()
            )
        return [(row[0], LineMessage(MessageKind(row[1]), row[2], row[3], row[4])) for row in rows]

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget acknowledged messages (sequence numbers no longer there are ignored)."""
        seqs = list(seqs)
        if not seqs:
            return
        with self._lock, self._checked_db() as db:
            marks = ", ".join("?" for _ in seqs)
            depth, size = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE seq IN ({marks})", seqs
            ).fetchone()
            db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", seqs)
            self._depth -= int(depth)
            self._bytes -= int(size)
            self._note_fullness(0)

    def stats(self) -> OutboxStats:
        with self._lock:
            return OutboxStats(self._depth, self._bytes, self._dropped)

    def __len__(self) -> int:
        return self._depth

    # --- lifetime -------------------------------------------------------------------------------------------------

    def _checked_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"{self.path}: the outbox is closed")
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
