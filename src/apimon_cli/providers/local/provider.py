"""The local target: a gateway state in SQLite on disk, with the same concepts as the cloud gateways.

Products with limits, subscribers with generated keys, an owner marker (rows apimon did not write are
unmanaged and never touched), usage counters written by `apimon gateway serve`. Apply commits in batches
of whole changes (``BATCH_CHANGES`` changes or ``BATCH_SECONDS``, whichever comes first), each change in
its own savepoint, one revision bump per batch: a killed apply leaves whole changes only and a re-run
converges, and a running gateway reloads once per batch, not once per change. Applies take an exclusive
lock file from their read on: a second concurrent apply waits, then plans afresh.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import NamedTuple

from ...model import ClientSecret, DesiredState, LiveState, Subscriber, Unmanaged, UsageRow
from ...planfile.writer import product_from_plan, product_to_plan
from ...reconcile.changes import Change, FieldChange
from ...reconcile.fields import key_fingerprint
from ...security.secrets import hash_secret
from ...sqlitetx import rollback_quietly
from ..base import Provider, ProviderError, not_owned
from ..lock import exclusive, lock_wait_seconds
from .keys import REVOKED_PREFIX, LocalKeys
from .state import APPLY_LOCK_KEY, OWNER, connect_state, database_identity, database_of, state_dir_of

BILLING_FIELDS = ("currency", "period", "metric")
BATCH_CHANGES = 500  # changes per commit during apply
BATCH_SECONDS = 0.1  # ... or the age of the open batch, whichever comes first


class UsageTuple(NamedTuple):
    """A usage row as a tuple (built in C from a cursor row), with the fields of ``model.UsageRow``."""

    subscriber: str
    product: str
    day: str
    metric: str
    count: int


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class LocalProvider(LocalKeys, Provider):
    name = "local"

    def __init__(self, desired: DesiredState):
        super().__init__(desired)
        self.state_dir = state_dir_of(desired)
        self.database = database_of(desired)  # PostgreSQL instead of state_dir/state.db (team setups)
        self._conn: sqlite3.Connection | None = None
        self._batching = False  # inside applying(): changes join the open batch
        self._batch_size = 0  # changes in the open transaction (0: none open)
        self._batch_started = 0.0
        self._products_present: set[str] = set()  # products seen in the state during this apply

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

    def recorded_billing(self) -> dict | None:
        """The billing block (currency, period, metric) the last apply recorded; None before any."""
        if not self.exists:
            return None
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'billing'").fetchone()
        try:
            data = json.loads(row[0]) if row else None
        except ValueError:
            return None
        return {k: data[k] for k in BILLING_FIELDS if isinstance(data.get(k), str)} if isinstance(data, dict) else None

    def _billing_block(self) -> dict:
        b = self.desired.billing
        return {"currency": b.currency, "period": b.period, "metric": b.metric}

    def extra_changes(self, desired: DesiredState, live: LiveState) -> list[Change]:
        """A billing block other than the one recorded is a change of every product's terms (their prices
        are in that currency, per that period), so apply records it even when nothing else changed."""
        have = self.recorded_billing()
        if not have:  # a state from before apimon recorded it: recorded by the next apply, not a change
            return []
        want = self._billing_block()
        fields = tuple(FieldChange(f"billing.{k}", have.get(k), want[k]) for k in BILLING_FIELDS
                       if have.get(k) != want[k])
        if not fields:
            return []
        return [Change("update", "product", pid, fields, desired.products[pid], product)
                for pid, product in live.products.items() if pid in desired.products]

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
            "SELECT s.id, s.owner, s.product, s.email, s.enabled, s.api_key, s.metadata, c.client_secret, "
            "c.client_cert_sha256 FROM subscribers s LEFT JOIN subscriber_credentials c ON c.subscriber = s.id "
            "ORDER BY s.id")
        loads = json.loads
        shared: dict = {}  # one object per distinct product and metadata text (most subscribers share them)
        for sid, owner, product, email, enabled, api_key, metadata, secret_hash, cert in rows:
            meta = shared.get(metadata)
            if meta is None:
                try:
                    parsed = loads(metadata or "{}")
                    if not isinstance(parsed, dict):
                        raise ValueError("not a JSON object")
                    meta = tuple(sorted(parsed.items()))
                except (ValueError, TypeError):  # a row written by hand that is not a valid subscriber (metadata
                    # not a JSON object): shown and left alone, as unreadable product rows are
                    live.unmanaged.append(Unmanaged("subscriber", sid, "unreadable subscriber row (metadata is "
                                                    "not a JSON object)"))
                    continue
                if len(shared) < 4096:  # bounded: metadata unique per subscriber is not kept twice
                    shared[metadata] = meta
            sub = Subscriber(sid, shared.setdefault(product, product), email, bool(enabled), None, meta)
            if secret_hash or cert:
                sub = dataclasses.replace(sub, client_secret=ClientSecret(hashed=secret_hash) if secret_hash else None,
                                          client_cert_sha256=cert or None)
            if owner == OWNER:
                live.subscribers[sid] = sub
                live.key_fingerprints[sid] = key_fingerprint(api_key)
            else:
                live.unmanaged.append(Unmanaged("subscriber", sid, f"owner {owner or 'unknown'}", sub))
        return live

    # ---------------------------------------------------------------- apply: batches of whole changes
    lock_covers_gateway = True

    @contextmanager
    def applying(self) -> Iterator[None]:
        """An exclusive lock over the whole apply (from its read on): a second apply waits for it
        (``APIMON_LOCK_TIMEOUT``), then plans against what the first one left — a lock file in the state
        directory, or with ``target.local.database`` a PostgreSQL advisory lock that serialises applies from
        every host. Changes made under it are committed in batches; the last batch when it is released."""
        lock = (self._applying_database() if self.database
                else exclusive(self.state_dir / "apply.lock", what=str(self.state_dir)))
        with lock:
            # the plan's billing block, so `import` gives it back (a re-invoiced EUR plan stays EUR)
            self._record_billing()
            self._batching = True
            try:
                yield
            finally:
                self._batching = False
                self._commit_batch()  # the changes done so far are whole: keep them, also on Ctrl-C

    @contextmanager
    def _applying_database(self) -> Iterator[None]:
        # PostgreSQL: a session advisory lock, so applies from every host are serialised; the server
        # drops it when this connection ends, however the process ends. Gateways see it in pg_locks.
        conn = self.conn
        wait = lock_wait_seconds()  # APIMON_LOCK_TIMEOUT, default 60, as for the lock file of a SQLite state
        deadline = time.monotonic() + wait
        try:
            while not conn.execute("SELECT pg_try_advisory_lock(?, ?)", APPLY_LOCK_KEY).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"another apimon apply holds the lock on {database_identity(self.database)} "
                        f"(waited {wait:g} s, APIMON_LOCK_TIMEOUT); try again when it has finished")
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

    def _record_billing(self) -> None:
        try:
            self.conn.execute("INSERT INTO meta (key, value) VALUES ('billing', ?) ON CONFLICT(key) DO UPDATE "
                              "SET value = excluded.value", (json.dumps(self._billing_block(), sort_keys=True),))
        except sqlite3.DatabaseError as exc:
            raise ProviderError(f"local state: {exc}") from None

    def _transaction(self, write: Callable[[sqlite3.Connection], str]) -> str:
        """One change in its own savepoint inside the open batch (a failed change rolls back alone); the
        batch commits, bumping the revision the gateway polls once, every ``BATCH_CHANGES`` changes or
        ``BATCH_SECONDS``. Outside an apply each change commits at once."""
        conn = self.conn
        try:
            if not self._batch_size:
                conn.execute("BEGIN IMMEDIATE")
                self._batch_started = time.monotonic()
            conn.execute("SAVEPOINT change")
            try:
                msg = write(conn)
            except BaseException:
                # quietly: SQLite may have rolled the whole transaction back already (a full disk), and a
                # failing ROLLBACK would hide the real error
                try:
                    conn.execute("ROLLBACK TO change")
                    conn.execute("RELEASE change")
                except sqlite3.Error:
                    pass
                if not self._batch_size:  # nothing else in this transaction
                    rollback_quietly(conn)
                raise
            conn.execute("RELEASE change")
            self._batch_size += 1
            if (not self._batching or self._batch_size >= BATCH_CHANGES
                    or time.monotonic() - self._batch_started >= BATCH_SECONDS):
                self._commit_batch()
        except sqlite3.DatabaseError as exc:
            self._rollback_batch()
            raise ProviderError(f"local state: {exc}") from None
        return msg

    def _commit_batch(self) -> None:
        if not self._batch_size:
            return
        conn = self.conn
        try:
            conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._rollback_batch()
            raise ProviderError(f"local state: {exc}") from None
        self._batch_size = 0

    def _rollback_batch(self) -> None:
        self._batch_size = 0
        if self._conn is not None:
            rollback_quietly(self._conn)

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
            self._products_present.discard(change.id)
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
        if sub.product not in self._products_present:
            if self._owner_of(conn, "products", sub.product) is False:
                raise ProviderError(f"product {sub.product} does not exist on the local gateway")
            self._products_present.add(sub.product)
        metadata = json.dumps(dict(sub.metadata), sort_keys=True)
        now = _now()
        cert = sub.client_cert_sha256
        if owner is False:
            key = sub.key_value or secrets.token_urlsafe(30)
            # the client secret: the plan's, scrypt-hashed (the state keeps only hashes); without one the
            # subscriber gets no tokens (invalid_client)
            given = sub.client_secret.value if sub.client_secret else None
            secret_hash = hash_secret(given) if given else None
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
            conn.execute("DELETE FROM subscriber_credentials WHERE subscriber = ?", (sub.id,))
            if secret_hash or cert:
                conn.execute("INSERT INTO subscriber_credentials (subscriber, client_secret, client_cert_sha256) "
                             "VALUES (?, ?, ?)", (sub.id, secret_hash, cert))
            return "created (key imported)" if sub.key_value else "created (key generated)"
        conn.execute("UPDATE subscribers SET owner = ?, product = ?, email = ?, enabled = ?, metadata = ?, "
                     "updated_at = ? WHERE id = ?",
                     (OWNER, sub.product, sub.email, int(sub.enabled), metadata, now, sub.id))
        if change.changed("client_cert_sha256"):
            self.set_credentials(conn, sub.id, cert=cert or "")
        if sub.client_secret is not None and sub.client_secret.value is not None and change.changed("client_secret"):
            self.set_credentials(conn, sub.id, secret_hash=hash_secret(sub.client_secret.value))
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

    @staticmethod
    def set_credentials(conn: sqlite3.Connection, sid: str, *, secret_hash: str | None = None,
                        cert: str | None = None) -> None:
        """Set a subscriber's client secret hash and/or certificate fingerprint ("" clears it)."""
        conn.execute("INSERT INTO subscriber_credentials (subscriber) VALUES (?) ON CONFLICT (subscriber) DO NOTHING",
                     (sid,))
        if secret_hash is not None:
            conn.execute("UPDATE subscriber_credentials SET client_secret = ? WHERE subscriber = ?",
                         (secret_hash or None, sid))
        if cert is not None:
            conn.execute("UPDATE subscriber_credentials SET client_cert_sha256 = ? WHERE subscriber = ?",
                         (cert or None, sid))

    def delete_subscriber(self, change: Change, live: LiveState) -> str:
        def delete(conn: sqlite3.Connection) -> str:
            owner = self._owner_of(conn, "subscribers", change.id)
            if owner is False:
                return "already gone"
            if owner != OWNER:
                raise ProviderError(f"subscriber {change.id} is not managed by apimon; left alone")
            conn.execute("DELETE FROM subscribers WHERE id = ?", (change.id,))
            conn.execute("DELETE FROM subscriber_keys WHERE subscriber = ?", (change.id,))
            conn.execute("DELETE FROM subscriber_credentials WHERE subscriber = ?", (change.id,))
            return "deleted (key revoked)"

        return self._transaction(delete)

    # ---------------------------------------------------------------- keys, usage, import
    def reveal_key(self, subscriber_id: str) -> str | None:
        if not self.exists:
            return None
        row = self.conn.execute("SELECT api_key, owner FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
        if row is not None and row[1] != OWNER:
            raise not_owned(subscriber_id)
        return row[0] if row and not row[0].startswith(REVOKED_PREFIX) else None

    def pull_usage(self, start: date, end: date) -> Iterable[UsageRow]:
        """The window's rows in the order of the day-first index ``usage_by_day`` (which covers the query:
        no sort, no table lookups, O(window) whatever the history), as tuples with UsageRow's fields."""
        if not self.exists:
            raise ProviderError(f"no local gateway state at {self.state_dir}; run `apimon apply` first")
        hint = "" if getattr(self.conn, "dialect", "sqlite") == "postgresql" else " INDEXED BY usage_by_day"
        rows = self.conn.execute(
            f"SELECT subscriber, product, day, metric, count FROM usage{hint} "
            "WHERE day BETWEEN ? AND ? ORDER BY day, subscriber, product, metric",
            (start.isoformat(), end.isoformat()))
        return map(UsageTuple._make, rows)

    def usage_history(self, before: date) -> Iterable[tuple[str, str, str]]:
        """The state keeps every day the gateway metered: each (subscriber, product)'s first day with calls."""
        if not self.exists:
            return []
        return self.conn.execute(
            "SELECT subscriber, product, min(day) FROM usage WHERE count > 0 GROUP BY subscriber, product").fetchall()

    def export_plan(self, *, include_unmanaged: bool = True) -> dict:
        if not self.exists:
            raise ProviderError(f"no local gateway state at {self.state_dir / 'state.db'}; give --state-dir the "
                                "state directory of an applied plan (target.local.state_dir)")
        live = self.read_live_state()
        products = list(live.products.values())
        subscribers = list(live.subscribers.values())
        if include_unmanaged:
            products += [u.resource for u in live.unmanaged if u.kind == "product" and u.resource]
            subscribers += [u.resource for u in live.unmanaged if u.kind == "subscriber" and u.resource]
        local = {"database": database_identity(self.database)} if self.database else {"state_dir": str(self.state_dir)}
        out = {"target": {"provider": "local", "local": local},
               "products": products, "subscribers": subscribers}
        billing = self.recorded_billing()
        if billing:
            out["billing"] = billing
        return out
