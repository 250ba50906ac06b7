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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime

from ...model import DesiredState, LiveState, Subscriber, Unmanaged, UsageRow
from ...planfile.writer import product_from_plan, product_to_plan
from ...reconcile.changes import Change
from ...reconcile.fields import key_fingerprint
from ..base import Provider, ProviderError
from .keys import REVOKED_PREFIX, LocalKeys
from .state import APPLY_LOCK_KEY, OWNER, connect_state, database_identity, database_of, state_dir_of

LOCK_WAIT_SECONDS = 10.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class LocalProvider(LocalKeys, Provider):
    name = "local"

    def __init__(self, desired: DesiredState):
        super().__init__(desired)
        self.state_dir = state_dir_of(desired)
        self.database = database_of(desired)  # PostgreSQL instead of state_dir/state.db (team setups)
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_state(self.state_dir, database=self.database)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---------------------------------------------------------------- read
    @property
    def exists(self) -> bool:
        if self.database:
            if self._conn is None:
                try:
                    self._conn = connect_state(self.state_dir, create=False, database=self.database)
                except ProviderError as exc:
                    if "no local gateway state" in str(exc):
                        return False
                    raise
            return True
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

    # ---------------------------------------------------------------- apply: one transaction per change
    @contextmanager
    def applying(self) -> Iterator[None]:
        """An exclusive lock over the whole apply: a second apply waits for it, then fails clearly."""
        if self.database:
            with self._applying_database():
                yield
            return
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

    @contextmanager
    def _applying_database(self) -> Iterator[None]:
        # PostgreSQL: a session advisory lock, so applies from every host are serialised; the server
        # drops it when this connection ends, however the process ends. Gateways see it in pg_locks.
        conn = self.conn
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        try:
            while not conn.execute("SELECT pg_try_advisory_lock(?, ?)", APPLY_LOCK_KEY).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"another apimon apply holds the lock on {database_identity(self.database)} "
                        f"(waited {LOCK_WAIT_SECONDS:.0f} s); try again when it has finished")
                time.sleep(0.1)
        except sqlite3.DatabaseError as exc:
            raise ProviderError(f"local state: {exc}") from None
        try:
            yield
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock(?, ?)", APPLY_LOCK_KEY)
            except sqlite3.DatabaseError:
                pass  # the connection is gone: so is its lock

    def _transaction(self, write: Callable[[sqlite3.Connection], str]) -> str:
        """One change, one transaction (a killed apply leaves whole changes); each bumps the revision the
        gateway polls to reload."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                msg = write(conn)
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise ProviderError(f"local state: {exc}") from None
        return msg

    @staticmethod
    def _owner_of(conn: sqlite3.Connection, table: str, rid: str) -> str | None | bool:
        row = conn.execute(f"SELECT owner FROM {table} WHERE id = ?", (rid,)).fetchone()
        return False if row is None else row[0]

    def create_product(self, change: Change, live: LiveState) -> str:
        return self._transaction(lambda conn: self._put_product(conn, change))

    update_product = create_product

    def _put_product(self, conn: sqlite3.Connection, change: Change) -> str:
        owner = self._owner_of(conn, "products", change.id)
        if owner not in (False, OWNER) and not change.adopt:
            raise ProviderError(f"product {change.id} exists and is not managed by apimon; left alone")
        spec = json.dumps(product_to_plan(change.desired), sort_keys=True)
        conn.execute("INSERT INTO products (id, owner, spec, updated_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT(id) DO UPDATE SET owner = excluded.owner, spec = excluded.spec, "
                     "updated_at = excluded.updated_at", (change.id, OWNER, spec, _now()))
        return "adopted" if change.adopt else ("created" if owner is False else "updated")

    def delete_product(self, change: Change, live: LiveState) -> str:
        def delete(conn: sqlite3.Connection) -> str:
            owner = self._owner_of(conn, "products", change.id)
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

        return self._transaction(delete)

    def create_subscriber(self, change: Change, live: LiveState) -> str:
        return self._transaction(lambda conn: self._put_subscriber(conn, change))

    update_subscriber = create_subscriber

    def _put_subscriber(self, conn: sqlite3.Connection, change: Change) -> str:
        sub = change.desired
        assert isinstance(sub, Subscriber)
        owner = self._owner_of(conn, "subscribers", change.id)
        if owner not in (False, OWNER) and not change.adopt:
            raise ProviderError(f"subscriber {change.id} exists and is not managed by apimon; left alone")
        if self._owner_of(conn, "products", sub.product) is False:
            raise ProviderError(f"product {sub.product} does not exist on the local gateway")
        metadata = json.dumps(dict(sub.metadata), sort_keys=True)
        now = _now()
        if owner is False:
            key = sub.key_value or secrets.token_urlsafe(30)
            try:
                conn.execute("INSERT INTO subscribers (id, owner, product, email, enabled, api_key, metadata, "
                             "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (sub.id, OWNER, sub.product, sub.email, int(sub.enabled), key, metadata, now))
            except sqlite3.IntegrityError:
                raise ProviderError(f"subscriber {sub.id}: the imported key value is already used by another "
                                    "subscriber") from None
            conn.execute("INSERT INTO subscriber_keys (api_key, subscriber, created_at, expires_at) "
                         "VALUES (?, ?, ?, NULL) ON CONFLICT (api_key) DO UPDATE SET subscriber = excluded.subscriber,"
                         " created_at = excluded.created_at, expires_at = NULL", (key, sub.id, now))
            return "created (key imported)" if sub.key_value else "created (key generated)"
        conn.execute("UPDATE subscribers SET owner = ?, product = ?, email = ?, enabled = ?, metadata = ?, "
                     "updated_at = ? WHERE id = ?",
                     (OWNER, sub.product, sub.email, int(sub.enabled), metadata, now, sub.id))
        if sub.key_value is not None and change.changed("key"):
            # a new value in key.from_env is a rotation: the old value keeps working for key.overlap
            old = conn.execute("SELECT api_key FROM subscribers WHERE id = ?", (sub.id,)).fetchone()[0]
            try:
                conn.execute("UPDATE subscribers SET api_key = ? WHERE id = ?", (sub.key_value, sub.id))
            except sqlite3.IntegrityError:
                raise ProviderError(f"subscriber {sub.id}: the imported key value is already used by another "
                                    "key") from None
            ends = (datetime.now(UTC) + sub.key_overlap).isoformat(timespec="seconds")
            conn.execute("DELETE FROM subscriber_keys WHERE api_key = ?", (sub.key_value,))
            conn.execute("INSERT INTO subscriber_keys (api_key, subscriber, created_at, expires_at) "
                         "VALUES (?, ?, ?, NULL)", (sub.key_value, sub.id, now))
            if not old.startswith(REVOKED_PREFIX) and sub.key_overlap.total_seconds() > 0:
                conn.execute("INSERT INTO subscriber_keys (api_key, subscriber, created_at, expires_at) "
                             "VALUES (?, ?, ?, ?) ON CONFLICT(api_key) DO UPDATE SET expires_at = excluded.expires_at",
                             (old, sub.id, now, ends))
            else:
                conn.execute("DELETE FROM subscriber_keys WHERE api_key = ?", (old,))
            return ("adopted" if change.adopt else "updated") + "; key rotated (the old value works until " + ends + ")"
        return "adopted" if change.adopt else "updated"

    def delete_subscriber(self, change: Change, live: LiveState) -> str:
        def delete(conn: sqlite3.Connection) -> str:
            owner = self._owner_of(conn, "subscribers", change.id)
            if owner is False:
                return "already gone"
            if owner != OWNER:
                raise ProviderError(f"subscriber {change.id} is not managed by apimon; left alone")
            conn.execute("DELETE FROM subscribers WHERE id = ?", (change.id,))
            conn.execute("DELETE FROM subscriber_keys WHERE subscriber = ?", (change.id,))
            return "deleted (key revoked)"

        return self._transaction(delete)

    # ---------------------------------------------------------------- keys, usage, import
    def reveal_key(self, subscriber_id: str) -> str | None:
        if not self.exists:
            return None
        row = self.conn.execute("SELECT api_key FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
        return row[0] if row and not row[0].startswith(REVOKED_PREFIX) else None

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
        local = {"database": database_identity(self.database)} if self.database else {"state_dir": str(self.state_dir)}
        return {"target": {"provider": "local", "local": local},
                "products": products, "subscribers": subscribers}
