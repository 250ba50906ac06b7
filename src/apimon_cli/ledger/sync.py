"""The push sync table: what each billing platform acknowledged, per ledger row (``apimon billing push``).

One row per (vendor, sink, provider, target, day, subscriber, product, metric) holds the count the vendor
has for that ledger row (``acked_count``), how many events made it up (``revision``), the last event's
idempotency key and value (Stripe cancels that event to correct it) and when it was acknowledged.

Write-ahead: before an event is sent, its key, value and resulting count are stored as ``pending_*`` in a
committed transaction, claimed only if nobody else holds the row (``revision`` unchanged, no pending
event). After a crash the pending event is sent again exactly as recorded; the vendor's deduplication
by that key makes the resend harmless. An acknowledgement moves ``pending_*`` into the acknowledged
columns only if the pending key is still the one acknowledged, so a late or duplicate acknowledgement is a
no-op.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import NamedTuple

from ..sqlitetx import rollback_quietly
from .store import Ledger, LedgerError, _operational_error

RowKey = tuple[str, str, str, str, str, str]  # provider, target, day, subscriber, product, metric


class SyncRow(NamedTuple):
    key: RowKey
    destination: str | None
    acked_count: int
    revision: int
    last_key: str | None
    last_value: int
    acked_at: str | None
    pending_key: str | None
    pending_value: int | None
    pending_count: int | None
    pending_cancel: str | None
    pending_at: str | None
    pending_destination: str | None


@dataclass(frozen=True)
class Claim:
    """An event about to be sent for one ledger row (the write-ahead record)."""

    key: RowKey
    revision: int  # the row's acknowledged revision the claim builds on
    event_key: str  # idempotency key of the event (revision + 1)
    value: int
    count: int  # what the vendor holds for the row once acknowledged
    cancel: str | None
    destination: str


_COLS = (
    "provider, target, day, subscriber, product, metric, destination, acked_count, revision, last_key, last_value,"
    " acked_at, pending_key, pending_value, pending_count, pending_cancel, pending_at, pending_destination"
)
_PK = "vendor = ? AND sink = ? AND provider = ? AND target = ? AND day = ? AND subscriber = ? AND product = ?" \
      " AND metric = ?"


class PushSync:
    """The push sync table of one ledger, for one vendor sink."""

    def __init__(self, ledger: Ledger, vendor: str, sink: str) -> None:
        self._conn: sqlite3.Connection = ledger._conn
        self.path = ledger.path
        self.vendor, self.sink = vendor, sink

    def rows(self, start: date | None, end: date | None, provider: str, target: str) -> Iterator[SyncRow]:
        sql = f"SELECT {_COLS} FROM push_sync WHERE vendor = ? AND sink = ? AND provider = ? AND target = ?"
        params: list = [self.vendor, self.sink, provider, target]
        if start is not None:
            sql += " AND day >= ?"
            params.append(start.isoformat())
        if end is not None:
            sql += " AND day <= ?"
            params.append(end.isoformat())
        for r in self._conn.execute(sql, params):
            yield SyncRow(tuple(r[:6]), *r[6:])  # type: ignore[arg-type]

    def destinations(self, provider: str, target: str) -> dict[str, str]:
        """subscriber -> the destination its counts were last pushed to (for subscribers no longer in the plan)."""
        sql = ("SELECT subscriber, destination FROM push_sync WHERE vendor = ? AND sink = ? AND provider = ?"
               " AND target = ? AND destination IS NOT NULL ORDER BY day")
        return dict(self._conn.execute(sql, (self.vendor, self.sink, provider, target)).fetchall())

    def claim(self, claims: Iterable[Claim], at: str) -> list[Claim]:
        """Record ``claims`` as pending, in one transaction; returns those this process now owns (a row another
        push claimed or advanced meanwhile is left to it)."""
        owned: list[Claim] = []
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for c in claims:
                pk = (self.vendor, self.sink, *c.key)
                if c.revision == 0:
                    conn.execute(
                        "INSERT INTO push_sync (vendor, sink, provider, target, day, subscriber, product, metric)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", pk)
                cur = conn.execute(
                    "UPDATE push_sync SET pending_key = ?, pending_value = ?, pending_count = ?, pending_cancel = ?,"
                    f" pending_at = ?, pending_destination = ? WHERE {_PK} AND revision = ? AND pending_key IS NULL",
                    (c.event_key, c.value, c.count, c.cancel, at, c.destination, *pk, c.revision))
                if cur.rowcount == 1:
                    owned.append(c)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            rollback_quietly(conn)
            raise _operational_error(exc, self.path) from None
        except BaseException:
            rollback_quietly(conn)
            raise
        return owned

    def acknowledge(self, acks: Iterable[tuple[RowKey, str, int, int, str]]) -> None:
        """(row, pending key, count the vendor now holds, value of the event under that key, acknowledged at)
        -> acknowledged, in one transaction."""
        self._write(
            "UPDATE push_sync SET acked_count = ?, revision = revision + 1, last_key = pending_key,"
            " last_value = ?, acked_at = ?, destination = pending_destination, pending_key = NULL,"
            " pending_value = NULL, pending_count = NULL, pending_cancel = NULL, pending_at = NULL,"
            f" pending_destination = NULL WHERE {_PK} AND pending_key = ?",
            [(count, value, at, self.vendor, self.sink, *row, key) for row, key, count, value, at in acks])

    def release(self, rows: Iterable[tuple[RowKey, str]]) -> None:
        """Drop pending events the vendor rejected for good (nothing of them was counted)."""
        self._write(
            "UPDATE push_sync SET pending_key = NULL, pending_value = NULL, pending_count = NULL,"
            f" pending_cancel = NULL, pending_at = NULL, pending_destination = NULL WHERE {_PK} AND pending_key = ?",
            [(self.vendor, self.sink, *row, key) for row, key in rows])

    def _write(self, sql: str, params: list) -> None:
        if not params:
            return
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, params)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            rollback_quietly(conn)
            raise _operational_error(exc, self.path) from None
        except BaseException:
            rollback_quietly(conn)
            raise


def billable_rows(ledger: Ledger, start: date, end: date, metric: str, provider: str, target: str
                  ) -> Iterator[tuple[str, str, str, int]]:
    """(day, subscriber, product, billable count) for every ledger row of the window, whether or not the
    subscriber is still in the plan (issue 11: removed subscribers' usage is billed too).

    ``metric`` is the plan's ``billing.metric``: ``success`` is billed as is; ``total`` is billed as total
    minus blocked (blocked calls are never billed), as ``cli.billing.invoices_for`` does.
    """
    params = (start.isoformat(), end.isoformat(), provider, target)
    where = "day BETWEEN ? AND ? AND provider = ? AND target = ?"
    try:
        if metric == "success":
            yield from ledger._conn.execute(
                f"SELECT day, subscriber, product, count FROM usage WHERE {where} AND metric = 'success'", params)
        elif metric == "total":
            yield from ledger._conn.execute(
                "SELECT day, subscriber, product, max(0, sum(CASE metric WHEN 'total' THEN count ELSE 0 END)"
                " - sum(CASE metric WHEN 'blocked' THEN count ELSE 0 END)) FROM usage"
                f" WHERE {where} AND metric IN ('total', 'blocked') GROUP BY day, subscriber, product"
                " HAVING sum(CASE WHEN metric = 'total' THEN 1 ELSE 0 END) > 0", params)
        else:
            raise ValueError(f"unknown billing metric {metric!r}")
    except sqlite3.OperationalError as exc:
        raise LedgerError(f"cannot read ledger {ledger.path}: {exc}") from None
