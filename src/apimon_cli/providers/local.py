"""The local target: a gateway state in SQLite on disk, with the same concepts as the cloud gateways.

Products with limits, subscribers with generated keys, an owner marker (rows apimon did not write are
unmanaged and never touched), usage counters written by `apimon gateway serve`. Each change is one
transaction, so a killed apply leaves whole changes only and a re-run converges. Applies take an
exclusive lock file: a second concurrent apply waits briefly, then fails with a clear message.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

from ..diff import Change, key_fingerprint
from ..model import DesiredState, LiveState, Subscriber, Unmanaged, UsageRow
from ..planfile.writer import product_from_plan, product_to_plan
from .base import ApplyReport, Progress, Provider, ProviderError

OWNER = "apimon"
SCHEMA_VERSION = 1
LOCK_WAIT_SECONDS = 10.0

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
CREATE TABLE IF NOT EXISTS quota_counters (
    subscriber TEXT NOT NULL, window TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (subscriber, window));
"""


def state_dir_of(desired: DesiredState) -> Path:
    raw = desired.target.settings.get("state_dir") or ".apimon"
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else Path(desired.target.base_dir) / path


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
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('revision', '0')")
        elif int(row[0]) > SCHEMA_VERSION:
            raise ProviderError(f"{db} was written by a newer apimon (schema {row[0]}); upgrade apimon")
        return conn
    except sqlite3.DatabaseError as exc:
        raise ProviderError(f"cannot open local gateway state {db}: {exc}") from None
    except OSError as exc:
        raise ProviderError(f"cannot create local gateway state in {state_dir}: {exc.strerror}") from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class LocalProvider(Provider):
    name = "local"

    def __init__(self, desired: DesiredState):
        super().__init__(desired)
        self.state_dir = state_dir_of(desired)
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_state(self.state_dir)
        return self._conn

    @property
    def target_id(self) -> str:
        return str(self.state_dir.resolve())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---------------------------------------------------------------- read
    @property
    def exists(self) -> bool:
        return (self.state_dir / "state.db").exists()

    def read_live_state(self) -> LiveState:
        live = LiveState()
        if not self.exists:  # nothing applied yet: plan reads, it never creates the state
            return live
        for pid, owner, spec in self.conn.execute("SELECT id, owner, spec FROM products ORDER BY id"):
            try:
                product = product_from_plan(pid, json.loads(spec))
            except Exception:  # a row written by hand that is not a valid product: leave it alone
                live.unmanaged.append(Unmanaged("product", pid, "unreadable product row"))
                continue
            if owner == OWNER:
                live.products[pid] = product
            else:
                live.unmanaged.append(Unmanaged("product", pid, f"owner {owner or 'unknown'}", product))
        rows = self.conn.execute(
            "SELECT id, owner, product, email, enabled, api_key, metadata FROM subscribers ORDER BY id")
        for sid, owner, product, email, enabled, api_key, metadata in rows:
            sub = Subscriber(id=sid, product=product, email=email, enabled=bool(enabled),
                             metadata=tuple(sorted(json.loads(metadata or "{}").items())))
            if owner == OWNER:
                live.subscribers[sid] = sub
                live.key_fingerprints[sid] = key_fingerprint(api_key)
            else:
                live.unmanaged.append(Unmanaged("subscriber", sid, f"owner {owner or 'unknown'}", sub))
        return live

    # ---------------------------------------------------------------- apply
    @contextmanager
    def _apply_lock(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / "apply.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ProviderError(
                            f"another apimon apply holds the lock on {self.state_dir} "
                            f"(waited {LOCK_WAIT_SECONDS:.0f} s); try again when it has finished") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def apply(self, changes: list[Change], live: LiveState, progress: Progress | None = None) -> ApplyReport:
        with self._apply_lock():
            return super().apply(changes, live, progress)

    def apply_change(self, change: Change, live: LiveState) -> str:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                msg = self._apply(conn, change)
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise ProviderError(f"local state: {exc}") from None
        return msg

    def _owner_of(self, conn: sqlite3.Connection, table: str, rid: str) -> str | None | bool:
        row = conn.execute(f"SELECT owner FROM {table} WHERE id = ?", (rid,)).fetchone()
        return False if row is None else row[0]

    def _apply(self, conn: sqlite3.Connection, change: Change) -> str:
        now = _now()
        if change.kind == "product":
            owner = self._owner_of(conn, "products", change.id)
            if change.action == "delete":
                if owner is False:
                    return "already gone"
                if owner != OWNER:
                    raise ProviderError(f"product {change.id} is not managed by apimon; left alone")
                others = [r[0] for r in conn.execute(
                    "SELECT id FROM subscribers WHERE product = ? ORDER BY id", (change.id,))]
                if others:
                    raise ProviderError(f"product {change.id} still has subscribers: {', '.join(others)}; "
                                        "refusing to delete it")
                conn.execute("DELETE FROM products WHERE id = ?", (change.id,))
                return "deleted"
            assert change.desired is not None
            if owner not in (False, OWNER) and not change.adopt:
                raise ProviderError(f"product {change.id} exists and is not managed by apimon; left alone")
            spec = json.dumps(product_to_plan(change.desired), sort_keys=True)
            conn.execute("INSERT INTO products (id, owner, spec, updated_at) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(id) DO UPDATE SET owner = excluded.owner, spec = excluded.spec, "
                         "updated_at = excluded.updated_at", (change.id, OWNER, spec, now))
            return "adopted" if change.adopt else ("created" if owner is False else "updated")

        owner = self._owner_of(conn, "subscribers", change.id)
        if change.action == "delete":
            if owner is False:
                return "already gone"
            if owner != OWNER:
                raise ProviderError(f"subscriber {change.id} is not managed by apimon; left alone")
            conn.execute("DELETE FROM subscribers WHERE id = ?", (change.id,))
            return "deleted (key revoked)"
        sub = change.desired
        assert isinstance(sub, Subscriber)
        if owner not in (False, OWNER) and not change.adopt:
            raise ProviderError(f"subscriber {change.id} exists and is not managed by apimon; left alone")
        if self._owner_of(conn, "products", sub.product) is False:
            raise ProviderError(f"product {sub.product} does not exist on the local gateway")
        metadata = json.dumps(dict(sub.metadata), sort_keys=True)
        if owner is False:
            key = sub.key_value or secrets.token_urlsafe(30)
            try:
                conn.execute("INSERT INTO subscribers (id, owner, product, email, enabled, api_key, metadata, "
                             "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (sub.id, OWNER, sub.product, sub.email, int(sub.enabled), key, metadata, now))
            except sqlite3.IntegrityError:
                raise ProviderError(f"subscriber {sub.id}: the imported key value is already used by another "
                                    "subscriber") from None
            return "created (key imported)" if sub.key_value else "created (key generated)"
        conn.execute("UPDATE subscribers SET owner = ?, product = ?, email = ?, enabled = ?, metadata = ?, "
                     "updated_at = ? WHERE id = ?",
                     (OWNER, sub.product, sub.email, int(sub.enabled), metadata, now, sub.id))
        if sub.key_value is not None and change.changed("key"):
            conn.execute("UPDATE subscribers SET api_key = ? WHERE id = ?", (sub.key_value, sub.id))
        return "adopted" if change.adopt else "updated"

    # ---------------------------------------------------------------- keys, usage, import
    def reveal_key(self, subscriber_id: str) -> str | None:
        if not self.exists:
            return None
        row = self.conn.execute("SELECT api_key FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
        return row[0] if row else None

    def pull_usage(self, start: date, end: date) -> Iterable[UsageRow]:
        if not self.exists:
            raise ProviderError(f"no local gateway state at {self.state_dir}; run `apimon apply` first")
        rows = self.conn.execute(
            "SELECT subscriber, product, day, metric, count FROM usage WHERE day BETWEEN ? AND ? "
            "ORDER BY day, subscriber, product, metric", (start.isoformat(), end.isoformat()))
        for subscriber, product, day, metric, count in rows:
            yield UsageRow(subscriber, product, day, metric, count)

    def export_plan(self, *, include_unmanaged: bool = True) -> dict:
        live = self.read_live_state()
        products = list(live.products.values())
        subscribers = list(live.subscribers.values())
        if include_unmanaged:
            products += [u.resource for u in live.unmanaged if u.kind == "product" and u.resource]
            subscribers += [u.resource for u in live.unmanaged if u.kind == "subscriber" and u.resource]
        return {"target": {"provider": "local", "local": {"state_dir": str(self.state_dir)}},
                "products": products, "subscribers": subscribers}
