"""The local target's state: a SQLite database under ``target.local.state_dir``, shared by the local provider
(plan/apply, keys, usage pull) and the local gateway (``apimon gateway serve``, which reads products and keys
and writes usage and quota counters). Readable by its owner only."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from ...model import DesiredState
from ...sqlitetx import rollback_quietly
from ..base import ProviderError

OWNER = "apimon"
SCHEMA_VERSION = 3

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
    subscriber TEXT NOT NULL, "window" TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (subscriber, "window"));
"""

# version -> statements that bring a state file of the previous version to it, run in one transaction when
# the state is opened (new files start at 1 and take them all)
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # usage pull reads a window of days: a day-first covering index makes it O(window), not O(history)
    2: ("CREATE INDEX IF NOT EXISTS usage_by_day ON usage (day, subscriber, product, metric, count)",),
    # OAuth 2.0 and mTLS (products.<id>.auth): a client secret's hash (security/secrets.py, never the secret),
    # the client certificate's SHA-256, and the gateway's token signing keys (`apimon gateway
    # rotate-signing-key`): a retired key still validates until expires_at, when its last token has expired
    # (a table of its own: the subscribers table keeps its columns, rows written by other tools stay valid)
    3: ("CREATE TABLE IF NOT EXISTS subscriber_credentials (subscriber TEXT PRIMARY KEY, client_secret TEXT, "
        "client_cert_sha256 TEXT)",
        "CREATE INDEX IF NOT EXISTS subscriber_credentials_by_cert ON subscriber_credentials (client_cert_sha256)",
        "CREATE TABLE IF NOT EXISTS signing_keys (kid TEXT PRIMARY KEY, alg TEXT NOT NULL, private_pem TEXT NOT NULL, "
        "public_jwk TEXT NOT NULL, created_at TEXT NOT NULL, retired_at TEXT, expires_at TEXT)"),
}

# PostgreSQL (target.local.database): the same tables through the ledger's dialect layer (ledger/pg.py)
_PG_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(7002, 0)"
APPLY_LOCK_KEY = (7002, 1)  # session advisory lock: one apply at a time, on every host
GATEWAY_LOCK_KEY = (7002, 2)  # a gateway with in-memory limits: one per state


def state_dir_from(settings: dict, base_dir: str) -> Path:
    raw = settings.get("state_dir") or ".apimon"
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else Path(base_dir) / path


def state_dir_of(desired: DesiredState) -> Path:
    return state_dir_from(desired.target.settings, desired.target.base_dir)


def database_of(desired: DesiredState) -> str | None:
    """``target.local.database`` (a postgresql:// URL), or None: the SQLite file in ``state_dir``."""
    return desired.target.settings.get("database") or None


def database_identity(url: str) -> str:
    """The URL without its password: the target's identity in the ledger, and what an import writes."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "password"])
    identity = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    if not netloc and url.startswith(f"{parts.scheme}://"):  # libpq's postgresql:///db?host=...: keep the //
        identity = f"{parts.scheme}://{identity[len(parts.scheme) + 1:]}"
    return identity


def connect_database(url: str, *, create: bool = True):
    """The local state in PostgreSQL: a ``ledger.pg.PgConnection`` (sqlite3-shaped), schema created once."""
    from ...ledger.pg import PgConnection, mask_url

    name = mask_url(url)
    try:
        conn = PgConnection(url)
    except sqlite3.Error as exc:
        raise ProviderError(f"cannot open local gateway state {name}: {exc}") from None
    try:
        exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
        if not exists and not create:
            raise ProviderError(f"no local gateway state in {name}; run `apimon apply` first")
        if not exists:
            conn.execute("BEGIN")
            try:
                conn.execute(_PG_SCHEMA_LOCK)  # two first applies at once: one creates, one waits
                script = re.sub(r"--[^\n]*", "", _SCHEMA)  # comments may hold a ';'
                for ddl in filter(None, (d.strip() for d in script.split(";"))):
                    conn.execute(ddl)
                for version in sorted(MIGRATIONS):  # a new database is created at the current version
                    for statement in MIGRATIONS[version]:
                        conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                             (str(SCHEMA_VERSION),))
                conn.execute("INSERT INTO meta VALUES ('revision', '0') ON CONFLICT DO NOTHING")
                conn.execute("COMMIT")
            except BaseException:
                rollback_quietly(conn)
                raise
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise ProviderError(f"{name} was written by a newer apimon (schema {row[0]}); upgrade apimon")
        if row is not None and int(row[0]) < SCHEMA_VERSION:
            _migrate_database(conn)
        return conn
    except sqlite3.Error as exc:
        conn.close()
        raise ProviderError(f"cannot open local gateway state {name}: {exc}") from None
    except BaseException:
        conn.close()
        raise


def connect_state(state_dir: Path, *, create: bool = True, database: str | None = None) -> sqlite3.Connection:
    """Open (and create) the local gateway state; readable by its owner only. With ``database`` (a
    postgresql:// URL) the state lives in that database instead of ``state_dir/state.db``."""
    if database:
        return connect_database(database, create=create)  # type: ignore[return-value]
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


def _migrate_database(conn) -> None:
    """PostgreSQL: the migrations the database lacks, in one transaction under the schema lock."""
    conn.execute("BEGIN")
    try:
        conn.execute(_PG_SCHEMA_LOCK)
        current = int(conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        for version in sorted(MIGRATIONS):
            if current < version:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


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
            rollback_quietly(conn)
            raise
