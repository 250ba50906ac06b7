"""The key audit log (``apimon keys audit``): one row per key action, never a key's value.

Schema 5 adds ``key_audit``: when (ISO 8601 UTC), who (the OS user), what (created, rotated, revoked,
expired, ...), the subscriber, the key's last 4 characters, a detail, and the provider and target the key
lives on (the same target id as usage rows). For Azure, whose subscriptions have nowhere to keep a
rotation's end, the log is also where ``keys finish`` reads it from (``pending_rotations``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import NamedTuple

from ..sqlitetx import rollback_quietly

_TABLE = """CREATE TABLE IF NOT EXISTS key_audit (
    seq        INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    who        TEXT NOT NULL,
    provider   TEXT NOT NULL,
    target     TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    action     TEXT NOT NULL,
    last4      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT ''
)"""


class AuditEntry(NamedTuple):
    at: str
    who: str
    provider: str
    target: str
    subscriber: str
    action: str
    last4: str
    detail: str


# Rotations the gateway cannot record itself (Azure): the end of the overlap and the new key's fingerprint
_ROTATIONS = """CREATE TABLE IF NOT EXISTS key_rotations (
    provider   TEXT NOT NULL,
    target     TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    ends       TEXT NOT NULL,
    new_key    TEXT,          -- sha256 fingerprint of the new key once made (never the value)
    PRIMARY KEY (provider, target, subscriber)
)"""


def migrate_to_audit(conn: sqlite3.Connection) -> None:
    conn.execute(_TABLE)
    conn.execute(_ROTATIONS)
    conn.execute("CREATE INDEX IF NOT EXISTS key_audit_by_target ON key_audit (provider, target, subscriber)")


def append(conn: sqlite3.Connection, entries: Iterable[AuditEntry]) -> None:
    rows = list(entries)
    if not rows:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT INTO key_audit (at, who, provider, target, subscriber, action, last4, detail) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)  # never hides the real error (a full disk, Ctrl-C)
        raise


def entries(conn: sqlite3.Connection, provider: str, target: str, subscriber: str | None = None) -> list[AuditEntry]:
    sql = ("SELECT at, who, provider, target, subscriber, action, last4, detail FROM key_audit "
           "WHERE provider = ? AND target = ?")
    args: list[str] = [provider, target]
    if subscriber:
        sql += " AND subscriber = ?"
        args.append(subscriber)
    return [AuditEntry(*row) for row in conn.execute(sql + " ORDER BY seq", args)]


def rotations(conn: sqlite3.Connection, provider: str, target: str) -> dict[str, tuple[str, str | None]]:
    """subscriber -> (ends, new key fingerprint or None) of the rotations in progress."""
    rows = conn.execute("SELECT subscriber, ends, new_key FROM key_rotations WHERE provider = ? AND target = ?",
                        (provider, target))
    return {sid: (ends, new) for sid, ends, new in rows}


def put_rotation(conn: sqlite3.Connection, provider: str, target: str, sid: str, ends: str, new: str | None) -> None:
    conn.execute("INSERT INTO key_rotations (provider, target, subscriber, ends, new_key) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT (provider, target, subscriber) DO UPDATE SET ends = excluded.ends, "
                 "new_key = excluded.new_key", (provider, target, sid, ends, new))


def drop_rotation(conn: sqlite3.Connection, provider: str, target: str, sid: str) -> None:
    conn.execute("DELETE FROM key_rotations WHERE provider = ? AND target = ? AND subscriber = ?",
                 (provider, target, sid))
