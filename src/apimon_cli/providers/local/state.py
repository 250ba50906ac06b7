"""The local target's state: a SQLite database under ``target.local.state_dir``, shared by the local provider
(plan/apply, keys, usage pull) and the local gateway (``apimon gateway serve``, which reads products and keys
and writes usage and quota counters). Readable by its owner only."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ...model import DesiredState
from ..base import ProviderError

OWNER = "apimon"
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    id TEXT PRIMARY KEY, owner TEXT, spec TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subscribers (
    id TEXT PRIMARY KEY, owner TEXT, product TEXT NOT NULL, email TEXT, enabled INTEGER NOT NULL,
    api_key TEXT NOT NULL UNIQUE, metadata TEXT NOT NULL DEFAULT '{}', updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    subscriber TEXT NOT NULL, product TEXT NOT NULL, day TEXT NOT NULL, metric TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (subscriber, product, day, metric));
-- keys besides subscribers.api_key (the current one): a rotated-out key keeps working until expires_at
-- (apimon keys rotate); created_at is also kept for the current key (keys list, key.max_age)
CREATE TABLE IF NOT EXISTS subscriber_keys (
    api_key TEXT PRIMARY KEY, subscriber TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT);
CREATE INDEX IF NOT EXISTS subscriber_keys_by_subscriber ON subscriber_keys (subscriber);
CREATE TABLE IF NOT EXISTS quota_counters (
    subscriber TEXT NOT NULL, window TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (subscriber, window));
"""

# version -> statements that bring a state file of the previous version to it, run in one transaction when
# the state is opened (new files start at 1 and take them all)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # usage pull reads a window of days: a day-first covering index makes it O(window), not O(history)
    2: ("CREATE INDEX IF NOT EXISTS usage_by_day ON usage (day, subscriber, product, metric, count)",),
}


def state_dir_from(settings: dict, base_dir: str) -> Path:
    raw = settings.get("state_dir") or ".apimon"
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else Path(base_dir) / path


def state_dir_of(desired: DesiredState) -> Path:
    return state_dir_from(desired.target.settings, desired.target.base_dir)


def connect_state(state_dir: Path, *, create: bool = True) -> sqlite3.Connection:
    """Open (and create) the local gateway state; readable by its owner only."""
    db = state_dir / "state.db"
    if not create and not db.exists():
        raise ProviderError(f"no local gateway state at {db}; run `apimon apply` first")
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not db.exists():
            old = os.umask(0o077)
            try:
                db.touch(mode=0o600)
            finally:
                os.umask(old)
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', '1')")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('revision', '0')")
        elif int(row[0]) > SCHEMA_VERSION:
            raise ProviderError(f"{db} was written by a newer apimon (schema {row[0]}); upgrade apimon")
        if row is None or int(row[0]) < SCHEMA_VERSION:
            _migrate(conn)
        return conn
    except sqlite3.DatabaseError as exc:
        raise ProviderError(f"cannot open local gateway state {db}: {exc}") from None
    except OSError as exc:
        raise ProviderError(f"cannot create local gateway state in {state_dir}: {exc.strerror}") from None


def _migrate(conn: sqlite3.Connection) -> None:
    """Run the migrations the file lacks, each in one transaction with its version bump (a second process
    opening the file at the same time waits, then finds nothing left to do)."""
    for version in sorted(MIGRATIONS):
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = int(conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
            if current < version:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
