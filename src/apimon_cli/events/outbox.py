"""The on-disk outbox: every event is written here before any sink sees it, and leaves only once every sink
it is meant for has acknowledged it.

One SQLite file in WAL mode, readable by its owner only: ``synchronous=FULL`` for the commands (an event
committed survives a power loss), ``NORMAL`` for the gateway (it commits ten times a second; a committed
event survives a crash or a kill of the process, a power loss may take the last commits, as it may take the
gateway's last usage counts). A row is one event with a bit per sink still to deliver (``pending``: 1 Kafka, 2 webhook);
a sink's acknowledgement clears its bit and a row with no bit left is deleted. Where it lives:

- the gateway: ``<state_dir>/events-gateway.db`` (its own file, locked while the gateway runs, so an
  ``apimon events flush`` never delivers the same rows at the same time); with ``--workers N`` worker i > 0
  has ``events-gateway-<i>.db``;
- ``apply``, ``usage pull`` and ``events flush``: ``.apimon/events-outbox.db`` beside the first plan file
  (where the default ledger and the local target's default state live).

Also here: ``quota_alerts``, the thresholds already announced per subscriber and quota window (so an alert
fires once, also across gateway restarts; every worker claims them in ``events-gateway.db``).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

from ..sqlitetx import rollback_quietly

KAFKA, WEBHOOK = 1, 2
SINK_BITS = {"kafka": KAFKA, "webhook": WEBHOOK}
GATEWAY_OUTBOX = "events-gateway.db"


def gateway_outbox_name(worker: int = 0) -> str:
    """The outbox of `gateway serve`'s worker ``worker`` (``--workers N``): 0 is ``events-gateway.db``."""
    return GATEWAY_OUTBOX if not worker else f"events-gateway-{worker}.db"
CLI_OUTBOX = "events-outbox.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT    NOT NULL,
    type     TEXT    NOT NULL,
    source   TEXT    NOT NULL,
    time     TEXT    NOT NULL,
    subject  TEXT,
    body     BLOB    NOT NULL,
    pending  INTEGER NOT NULL,          -- bits of the sinks still to deliver: 1 kafka, 2 webhook
    attempts INTEGER NOT NULL DEFAULT 0, -- webhook attempts so far
    next_try REAL    NOT NULL DEFAULT 0, -- webhook: not before this POSIX time (backoff)
    created  REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_webhook ON events (next_try) WHERE pending & 2;
CREATE TABLE IF NOT EXISTS quota_alerts (
    subscriber TEXT    NOT NULL,
    "window"   TEXT    NOT NULL,
    threshold  INTEGER NOT NULL,
    PRIMARY KEY (subscriber, "window", threshold)
) WITHOUT ROWID;
"""


class OutboxError(Exception):
    """The outbox file cannot be used."""


class Row(NamedTuple):
    seq: int
    id: str
    type: str
    source: str
    time: str
    subject: str | None
    body: bytes
    attempts: int = 0
    created: float = 0.0


_row = partial(tuple.__new__, Row)  # C-level: Row(*r) is a Python call per row


class Outbox:
    """One connection; not for use by two threads at once (open one per thread)."""

    def __init__(self, path: Path, *, timeout: float = 30.0, synchronous: str = "FULL"):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            old = os.umask(0o077)
            try:
                self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            finally:
                os.umask(old)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute(f"PRAGMA synchronous = {'NORMAL' if synchronous == 'NORMAL' else 'FULL'}")
            self.conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open the events outbox {self.path}: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    # ---------------------------------------------------------------- writing
    def add(self, rows: Iterable[tuple[str, str, str, str, str | None, bytes, int]], now: float | None = None) -> int:
        """Append (id, type, source, time, subject, body, pending bits) rows in one transaction."""
        created = time.time() if now is None else now
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.executemany(
                "INSERT INTO events (id, type, source, time, subject, body, pending, created)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, {created!r})",
                (r for r in rows if r[6]),
            )
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
        return cur.rowcount

    def claim_alerts(self, alerts: Sequence[tuple[str, str, int]]) -> set[tuple[str, str, int]]:
        """Record (subscriber, window, threshold) alerts; returns those not recorded before (to announce)."""
        fresh = set()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for a in alerts:
                if conn.execute('INSERT OR IGNORE INTO quota_alerts (subscriber, "window", threshold) VALUES (?, ?, ?)',
                                a).rowcount:
                    fresh.add(a)
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
        return fresh

    def alerts(self, windows: Iterable[str]) -> set[tuple[str, str, int]]:
        wins = list(windows)
        if not wins:
            return set()
        marks = ",".join("?" * len(wins))
        return {tuple(r) for r in self.conn.execute(
            f'SELECT subscriber, "window", threshold FROM quota_alerts WHERE "window" IN ({marks})', wins)}

    def forget_alerts(self, keep_windows: Iterable[str]) -> None:
        wins = list(keep_windows)
        self.conn.execute(f'DELETE FROM quota_alerts WHERE "window" NOT IN ({",".join("?" * len(wins))})', wins)

    # ---------------------------------------------------------------- delivering
    def for_kafka(self, after: int, limit: int) -> list[Row]:
        return [_row(r + (0, 0.0)) for r in self.conn.execute(
            "SELECT seq, id, type, source, time, subject, body FROM events WHERE pending & 1 AND seq > ?"
            " ORDER BY seq LIMIT ?", (after, limit))]

    def for_webhook(self, now: float, limit: int) -> list[Row]:
        return [_row(r) for r in self.conn.execute(
            "SELECT seq, id, type, source, time, subject, body, attempts, created FROM events"
            " WHERE pending & 2 AND next_try <= ? ORDER BY next_try, seq LIMIT ?", (now, limit))]

    def next_webhook_try(self) -> float | None:
        row = self.conn.execute("SELECT min(next_try) FROM events WHERE pending & 2").fetchone()
        return row[0]

    def done(self, bit: int, seqs: Sequence[int]) -> None:
        """The sink ``bit`` delivered these rows: clear its bit, delete rows no sink still needs."""
        if not seqs:
            return
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(seqs), 500):
                chunk = list(seqs[i:i + 500])
                marks = ",".join("?" * len(chunk))
                conn.execute(f"UPDATE events SET pending = pending & ~{bit} WHERE seq IN ({marks})", chunk)
                conn.execute(f"DELETE FROM events WHERE pending = 0 AND seq IN ({marks})", chunk)
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise

    def done_through(self, bit: int, last: int) -> int:
        """The sink ``bit`` delivered every row with ``seq <= last`` still pending for it (two range
        statements on the primary key: far cheaper than row by row). Returns how many rows that was."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = conn.execute(f"DELETE FROM events WHERE seq <= ? AND pending = {bit}", (last,)).rowcount
            n += conn.execute(f"UPDATE events SET pending = pending & ~{bit} WHERE seq <= ? AND pending & {bit}",
                              (last,)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
        return n

    def retry_later(self, seq: int, attempts: int, next_try: float) -> None:
        self.conn.execute("UPDATE events SET attempts = ?, next_try = ? WHERE seq = ?", (attempts, next_try, seq))

    def pending(self, bit: int | None = None) -> int:
        if bit is None:
            return self.conn.execute("SELECT count(*) FROM events").fetchone()[0]
        return self.conn.execute(f"SELECT count(*) FROM events WHERE pending & {bit}").fetchone()[0]

    def drop_sinks(self, bits: int) -> int:
        """Forget deliveries to sinks the plan no longer configures; returns the rows that had one."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = conn.execute(f"UPDATE events SET pending = pending & ~{bits} WHERE pending & {bits}").rowcount
            conn.execute("DELETE FROM events WHERE pending = 0")
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
        return n


class OutboxLock:
    """An exclusive lock beside an outbox file, held by the one process that delivers from it."""

    def __init__(self, path: Path):
        self.path = Path(str(path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def fileno(self) -> int | None:
        """The locked descriptor (a child that inherits it holds the lock with this process)."""
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
