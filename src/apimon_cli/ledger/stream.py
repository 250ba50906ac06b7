"""Counts fed from the event stream (``apimon events consume``), exactly once.

Schema 4 adds two tables:

* ``stream_offsets(topic, partition, next_offset)``: the next Kafka offset to read per partition. It is
  written in the same transaction as the counts, so a consumer that crashes, or reads the topic again from
  the start, never counts a message twice: messages below the stored offset are skipped in that
  transaction.
* ``stream_event_ids(day, id)``: the ids of the request events counted, so an event a producer sent twice
  (a retry after a lost acknowledgement, a gateway restarted before the broker acknowledged) is counted once.
  Ids are kept for ``DEDUP_DAYS`` days of event time (the newest event day minus 7); a duplicate arriving
  later than that would be counted again.

The counts themselves are ordinary ``usage`` rows with provider ``local`` and target ``stream:<topic>``
(see ``stream_target``): a target of their own, so ``usage pull``'s window replace never removes or
overwrites them, and a pull of the same gateway never adds to them.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter

from ..sqlitetx import rollback_quietly

DEDUP_DAYS = 7
STREAM_PROVIDER = "local"

_TABLES = (
    """CREATE TABLE IF NOT EXISTS stream_offsets (
    topic       TEXT    NOT NULL,
    "partition" INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL,
    PRIMARY KEY (topic, "partition")
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS stream_event_ids (
    day TEXT NOT NULL,  -- the event's UTC day (from its time): the retention key
    id  TEXT NOT NULL,
    PRIMARY KEY (day, id)
) WITHOUT ROWID""",
)


def stream_target(topic: str) -> str:
    return f"stream:{topic}"


def migrate_to_stream(conn: sqlite3.Connection) -> None:
    """Schema migration: add the stream tables (nothing else changes)."""
    for ddl in _TABLES:
        conn.execute(ddl)


def offsets(conn: sqlite3.Connection, topic: str) -> dict[int, int]:
    return dict(conn.execute('SELECT "partition", next_offset FROM stream_offsets WHERE topic = ?', (topic,)))


# (partition, offset, event id or None for an event that is not counted, day, subscriber, product, metric)
StreamItem = tuple[int, int, str | None, str, str, str, str]


_DAY_ID = itemgetter(3, 2)
_ROW_METRIC = itemgetter(3, 4, 5, 6)
_ROW = itemgetter(3, 4, 5)


def ingest(
    conn: sqlite3.Connection,
    topic: str,
    items: Sequence[StreamItem],
    next_offsets: dict[int, int],
    first_offsets: dict[int, int] | None = None,
) -> tuple[int, int, int]:
    """Add a batch of consumed messages in one transaction: counts, event ids and offsets together.

    ``items`` are request events (id set) or other messages of the topic (id None: only their offset
    moves). ``next_offsets`` is partition -> the offset after the last message of the batch;
    ``first_offsets`` (optional) partition -> its first offset in the batch, which spares checking each item
    against the stored offsets when none is below. Returns (counted, duplicates by id, already consumed by
    offset)."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    target = stream_target(topic)
    conn.execute("BEGIN IMMEDIATE")
    try:
        stored = offsets(conn, topic)
        if first_offsets is not None and all(o >= stored.get(p, 0) for p, o in first_offsets.items()):
            fresh = items  # the usual case: nothing below the stored offsets, no per-item check
        else:
            fresh = [it for it in items if it[1] >= stored.get(it[0], 0)]
        replayed = len(items) - len(fresh)
        counted_items = [it for it in fresh if it[2] is not None]
        # keyed by (day, id); a duplicate inside the batch is the same event, so which copy is kept is moot
        by_id: dict[tuple[str, str], StreamItem] = dict(zip(map(_DAY_ID, counted_items), counted_items,
                                                            strict=True))
        # the common case has no duplicate: insert every id and check that each was new; only when some
        # were not, undo that and find which (a savepoint inside the transaction)
        conn.execute("SAVEPOINT ids")
        before = conn.total_changes
        conn.executemany("INSERT INTO stream_event_ids (day, id) VALUES (?, ?) ON CONFLICT DO NOTHING", by_id)
        if conn.total_changes - before == len(by_id):
            conn.execute("RELEASE ids")
            new = list(by_id.values())
        else:
            conn.execute("ROLLBACK TO ids")
            conn.execute("RELEASE ids")
            seen = _known_ids(conn, list(by_id))
            new = [it for key, it in by_id.items() if key not in seen]
            conn.executemany("INSERT INTO stream_event_ids (day, id) VALUES (?, ?)", ((it[3], it[2]) for it in new))
        duplicates = len(counted_items) - len(new)
        counts = Counter(map(_ROW_METRIC, new))  # C-level counting
        for (d, sub, prod), n in Counter(map(_ROW, new)).items():
            counts[(d, sub, prod, "total")] = n
        conn.executemany(
            "INSERT INTO usage (day, provider, target, subscriber, product, metric, count, pulled_at)"
            f" VALUES (?, '{STREAM_PROVIDER}', ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (day, provider, target, subscriber, product, metric)"
            " DO UPDATE SET count = usage.count + excluded.count, pulled_at = excluded.pulled_at",
            ((d, target, s, p, m, n, now) for (d, s, p, m), n in counts.items()),
        )
        firsts: dict[tuple[str, str], str] = {}
        for (d, sub, prod, _m), n in counts.items():
            if n > 0 and (firsts.get((sub, prod)) or "9999") > d:
                firsts[(sub, prod)] = d
        conn.executemany(  # the first-seen record (schema 5): only ever earlier
            "INSERT INTO first_seen (provider, target, subscriber, product, first_day, source, recorded_at)"
            f" VALUES ('{STREAM_PROVIDER}', ?, ?, ?, ?, 'ledger', ?)"
            " ON CONFLICT (provider, target, subscriber, product) DO UPDATE SET first_day = excluded.first_day,"
            " recorded_at = excluded.recorded_at WHERE excluded.first_day < first_seen.first_day",
            ((target, sub, prod, d, now) for (sub, prod), d in firsts.items()),
        )
        conn.executemany(
            'INSERT INTO stream_offsets (topic, "partition", next_offset, updated_at) VALUES (?, ?, ?, ?)'
            ' ON CONFLICT (topic, "partition") DO UPDATE SET'
            " next_offset = max(stream_offsets.next_offset, excluded.next_offset), updated_at = excluded.updated_at",
            ((topic, p, o, now) for p, o in next_offsets.items()),
        )
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    return len(new), duplicates, replayed


def _known_ids(conn: sqlite3.Connection, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    by_day: dict[str, list[str]] = {}
    for day, eid in keys:
        by_day.setdefault(day, []).append(eid)
    for day, ids in by_day.items():
        for i in range(0, len(ids), 900):
            chunk = ids[i:i + 900]
            marks = ",".join("?" * len(chunk))
            found.update((day, eid) for (eid,) in conn.execute(
                f"SELECT id FROM stream_event_ids WHERE day = ? AND id IN ({marks})", [day, *chunk]))
    return found


def prune_ids(conn: sqlite3.Connection, keep_days: int = DEDUP_DAYS) -> int:
    """Forget event ids older than ``keep_days`` before the newest event day stored."""
    row = conn.execute("SELECT max(day) FROM stream_event_ids").fetchone()
    if not row or row[0] is None:
        return 0
    cutoff = (date.fromisoformat(row[0]) - timedelta(days=keep_days)).isoformat()
    return conn.execute("DELETE FROM stream_event_ids WHERE day < ?", (cutoff,)).rowcount


def tables() -> Iterable[str]:
    return ("stream_offsets", "stream_event_ids")
