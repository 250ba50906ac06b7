"""The gateway's access to the local target's state database (``providers.local``).

All calls are blocking and run on one dedicated worker thread (an apply holding the write lock may make a
write wait, never the event loop); the connection is opened on that thread.

``StateLock``: the lock file ``gateway.lock`` in the state directory, held for a gateway's life when its
limits back end keeps counters in memory (``LimitsBackend.exclusive_state``): a second gateway on the same
SQLite state would count quotas and rate limits on its own, so it is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..planfile.writer import product_from_plan
from ..providers.local import connect_state
from ..sqlitetx import rollback_quietly
from .config import GatewayError
from .limits import ProductLimits

APPLY_LOCK = "apply.lock"  # the lock file `apimon apply` holds on the local state (providers.local)


@dataclass
class Snapshot:
    revision: str
    products: dict[str, ProductLimits]
    subscribers: list[tuple[str, str, bool, str]]  # subscriber, product, enabled, api_key
    unreadable: list[str] = field(default_factory=list)  # product ids whose spec could not be read
    removed: list[str] | None = None  # incremental: the keys that are gone (``subscribers``: changed rows)
    expiring: dict[str, float] = field(default_factory=dict)  # rotated-out key -> when it stops (epoch s)
    secrets: dict[str, str] = field(default_factory=dict)  # subscriber -> client secret hash
    certs: dict[str, str] = field(default_factory=dict)  # client certificate sha256 -> subscriber
    signing: list = field(default_factory=list)  # tokens.SigningKey, newest first


# Every key the gateway accepts: each subscriber's current key, and the keys rotating out (``apimon keys
# rotate``: rows of subscriber_keys with an end, for the same subscriber, product and enabled flag). A
# rotated-out key is refused from its end on (``Snapshot.expiring``) even before ``keys finish`` removes it.
_ALL_KEYS_SELECT = (
    "SELECT id, product, enabled, api_key FROM main.subscribers UNION ALL "
    "SELECT s.id, s.product, s.enabled, k.api_key FROM main.subscriber_keys k JOIN main.subscribers s "
    "ON s.id = k.subscriber WHERE k.expires_at IS NOT NULL AND k.api_key <> s.api_key"
)
_ALL_KEYS = "CREATE TEMP VIEW IF NOT EXISTS all_keys AS " + _ALL_KEYS_SELECT
_EXPIRING = (
    "SELECT k.api_key, k.expires_at FROM main.subscriber_keys k JOIN main.subscribers s ON s.id = k.subscriber "
    "WHERE k.expires_at IS NOT NULL AND k.api_key <> s.api_key"
)

# The keys as of the last snapshot, in this connection's TEMP database: an incremental snapshot asks
# SQLite (in C, without the GIL) for the rows that differ from it, instead of reading every row.
_SEEN = (
    "CREATE TEMP TABLE IF NOT EXISTS seen (api_key TEXT PRIMARY KEY, id TEXT, product TEXT, enabled INTEGER)"
    " WITHOUT ROWID"
)
_CHANGED = (
    "SELECT s.id, s.product, s.enabled, s.api_key FROM temp.all_keys s LEFT JOIN temp.seen t "
    "ON t.api_key = s.api_key WHERE t.api_key IS NULL OR t.id IS NOT s.id OR t.product IS NOT s.product "
    "OR t.enabled IS NOT s.enabled"
)
_GONE = "SELECT api_key FROM temp.seen WHERE api_key NOT IN (SELECT api_key FROM temp.all_keys)"


def _epoch(text: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0  # unreadable: already over


class StateStore:
    def __init__(self, state_dir: Path, database: str | None = None):
        self.state_dir = state_dir
        self.database = database  # target.local.database: the state in PostgreSQL
        self._conn: sqlite3.Connection | None = None
        self._seen = False  # temp.seen holds the subscribers of the last snapshot
        self._products: dict[str, tuple[str, ProductLimits]] = {}  # id -> (spec text, limits): unchanged
        # specs keep their ProductLimits object, so a reload can tell unchanged keys by identity

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_state(self.state_dir, create=False, database=self.database)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def revision(self) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return row[0] if row else "0"

    def apply_running(self) -> bool:
        """True while an `apimon apply` holds the state's apply lock (``providers.local``): its changes are
        committed one by one, so a snapshot now could catch a half-applied plan."""
        if self.database:  # the apply's advisory lock, held by any host's apimon apply
            from ..providers.local.state import APPLY_LOCK_KEY

            return bool(self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = ?"
                " AND objid = ? AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
                APPLY_LOCK_KEY).fetchone()[0])
        try:
            fd = os.open(self.state_dir / APPLY_LOCK, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # drops the shared lock at once: an apply waiting for it goes ahead
        return False

    def snapshot(self, incremental: bool = False) -> Snapshot:
        """Products and subscribers as of one revision (one transaction). ``incremental``: only the
        subscriber rows that changed since the last snapshot, and the keys removed (``Snapshot.removed``)."""
        conn = self.conn
        postgresql = getattr(conn, "dialect", "sqlite") == "postgresql"
        # PostgreSQL reads every key each time (the incremental diff uses SQLite's TEMP schema), in one
        # REPEATABLE READ snapshot
        incremental = incremental and self._seen and not postgresql
        if not postgresql:
            conn.execute(_ALL_KEYS)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if postgresql else "BEGIN")
        try:
            revision = self.revision()
            product_rows = conn.execute("SELECT id, spec FROM products").fetchall()
            if incremental:
                sub_rows = conn.execute(_CHANGED).fetchall()
                removed = [r[0] for r in conn.execute(_GONE)]
                if removed:
                    conn.execute("DELETE FROM temp.seen WHERE api_key NOT IN (SELECT api_key FROM temp.all_keys)")
                if sub_rows:
                    conn.execute("INSERT OR REPLACE INTO temp.seen (api_key, id, product, enabled) "
                                 "SELECT s.api_key, s.id, s.product, s.enabled FROM (" + _CHANGED + ") s")
            else:
                sub_rows = conn.execute(
                    _ALL_KEYS_SELECT if postgresql else "SELECT id, product, enabled, api_key FROM temp.all_keys"
                ).fetchall()
                removed = None
                if not postgresql:
                    conn.execute(_SEEN)
                    conn.execute("DELETE FROM temp.seen")
                    conn.execute("INSERT INTO temp.seen (api_key, id, product, enabled) "
                                 "SELECT api_key, id, product, enabled FROM temp.all_keys")
            expiring = {key: _epoch(ends) for key, ends in conn.execute(_EXPIRING)}
            credentials = conn.execute(
                "SELECT c.subscriber, c.client_secret, c.client_cert_sha256 FROM subscriber_credentials c "
                "JOIN subscribers s ON s.id = c.subscriber").fetchall()
            signing = load_signing_keys(conn)
            conn.execute("COMMIT")
        except BaseException:
            self._seen = False
            rollback_quietly(conn)
            raise
        self._seen = True
        products: dict[str, ProductLimits] = {}
        unreadable: list[str] = []
        cache: dict[str, tuple[str, ProductLimits]] = {}
        for pid, spec in product_rows:
            known = self._products.get(pid)
            if known is not None and known[0] == spec:
                limits = known[1]
                if not limits.usable:
                    unreadable.append(pid)
            else:
                try:
                    limits = ProductLimits.of(product_from_plan(pid, json.loads(spec)))
                except Exception:  # a hand-written row that is not a valid product: its keys get 403
                    limits = ProductLimits.unusable(pid)
                    unreadable.append(pid)
            products[pid] = limits
            cache[pid] = (spec, limits)
        self._products = cache
        subscribers = [(sid, pid, bool(enabled), key) for sid, pid, enabled, key in sub_rows]
        secrets = {sid: secret for sid, secret, _cert in credentials if secret}
        certs = {cert: sid for sid, _secret, cert in credentials if cert}
        return Snapshot(revision, products, subscribers, sorted(unreadable), removed, expiring, secrets, certs,
                        signing)

    def ensure_signing_key(self, alg: str) -> None:
        """A token signing key in the state (the first gateway to start makes it; others wait and find it)."""
        conn = self.conn
        if any(k.retired_at is None for k in load_signing_keys(conn)):
            return
        conn.execute("BEGIN IMMEDIATE" if getattr(conn, "dialect", "sqlite") != "postgresql" else "BEGIN")
        try:
            if getattr(conn, "dialect", "sqlite") == "postgresql":
                conn.execute("LOCK TABLE signing_keys IN EXCLUSIVE MODE")
            if not any(k.retired_at is None for k in load_signing_keys(conn)):
                _insert_key(conn, alg)
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise

    def forget(self) -> None:
        """The last snapshot was not installed: the next one reads every row."""
        self._seen = False

    def quota_counts(self, windows: Iterable[str]) -> dict[tuple[str, str], int]:
        wins = list(windows)
        marks = ",".join("?" * len(wins))
        rows = self.conn.execute(
            f'SELECT subscriber, "window", count FROM quota_counters WHERE "window" IN ({marks})', wins
        )
        return {(sid, win): count for sid, win, count in rows}

    def add(
        self,
        usage: list[tuple[str, str, str, str, int]],
        quota: list[tuple[str, str, int]],
        keep_windows: Iterable[str] | None = None,
    ) -> None:
        """Add deltas to usage and quota counters in one transaction; optionally drop ended windows."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO usage (subscriber, product, day, metric, count) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (subscriber, product, day, metric) DO UPDATE SET count = usage.count + excluded.count",
                usage,
            )
            conn.executemany(
                'INSERT INTO quota_counters (subscriber, "window", count) VALUES (?, ?, ?) '
                'ON CONFLICT (subscriber, "window") DO UPDATE SET count = quota_counters.count + excluded.count',
                quota,
            )
            if keep_windows is not None:
                wins = list(keep_windows)
                conn.execute(f'DELETE FROM quota_counters WHERE "window" NOT IN ({",".join("?" * len(wins))})', wins)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk): a ROLLBACK then fails and would hide the
            # real error, so only roll back a transaction that is still open
            rollback_quietly(conn)
            raise


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def load_signing_keys(conn) -> list:
    """The token signing keys in the state, newest first (tokens.SigningKey)."""
    from .tokens import SigningKey

    rows = conn.execute("SELECT kid, alg, private_pem, public_jwk, created_at, retired_at, expires_at "
                        "FROM signing_keys ORDER BY created_at DESC, kid").fetchall()
    return [SigningKey(kid, alg, pem, json.loads(jwk), _epoch(created), _epoch(retired) if retired else None,
                       _epoch(expires) if expires else None) for kid, alg, pem, jwk, created, retired, expires in rows]


def _insert_key(conn, alg: str, now: float | None = None):
    from .tokens import new_signing_key

    key = new_signing_key(alg, now=now)
    conn.execute("INSERT INTO signing_keys (kid, alg, private_pem, public_jwk, created_at) VALUES (?, ?, ?, ?, ?)",
                 (key.kid, key.alg, key.private_pem, json.dumps(key.public_jwk, sort_keys=True), _iso(key.created_at)))
    return key


def rotate_signing_key(conn, alg: str, keep_seconds: float, now: float | None = None) -> tuple[object, list, list]:
    """`apimon gateway rotate-signing-key`: a new signing key; the current ones retire and keep validating for
    ``keep_seconds`` (the longest token lifetime plus the leeway); keys whose end has passed are removed.
    Returns (new key, retired keys, removed kids). One transaction, one revision bump."""
    import time as _time

    now = _time.time() if now is None else now
    postgresql = getattr(conn, "dialect", "sqlite") == "postgresql"
    conn.execute("BEGIN" if postgresql else "BEGIN IMMEDIATE")
    try:
        if postgresql:
            conn.execute("LOCK TABLE signing_keys IN EXCLUSIVE MODE")
        keys = load_signing_keys(conn)
        removed = [k.kid for k in keys if k.expires_at is not None and k.expires_at <= now]
        for kid in removed:
            conn.execute("DELETE FROM signing_keys WHERE kid = ?", (kid,))
        retired = [k for k in keys if k.retired_at is None]
        for k in retired:
            conn.execute("UPDATE signing_keys SET retired_at = ?, expires_at = ? WHERE kid = ?",
                         (_iso(now), _iso(now + keep_seconds), k.kid))
        # the new key is created a second after the newest existing one: "newest first" stays exact
        created = max([now] + [k.created_at + 1 for k in keys])
        key = _insert_key(conn, alg, now=created)
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    return key, retired, removed


class StateLock:
    """``gateway.lock`` in the state directory, held (flock) while a gateway serves that state. The kernel
    drops it when the process ends, however it ends. With the state in PostgreSQL it is a session advisory
    lock on a connection of its own (any host's gateway sees it; the server drops it with the session)."""

    def __init__(self, state_dir: Path, database: str | None = None):
        self.path = state_dir / "gateway.lock"
        self.database = database
        self._fd: int | None = None
        self._pg = None

    def acquire(self) -> None:
        if self.database:
            from ..providers.local.state import GATEWAY_LOCK_KEY, connect_database

            try:
                conn = connect_database(self.database, create=False)
            except Exception as exc:
                raise GatewayError(str(exc)) from None
            if not conn.execute("SELECT pg_try_advisory_lock(?, ?)", GATEWAY_LOCK_KEY).fetchone()[0]:
                conn.close()
                raise GatewayError(
                    "another `apimon gateway serve` with in-memory limits already serves this PostgreSQL state; "
                    "a second one would count quotas and rate limits on its own. Use target.local.limits.backend "
                    "redis to run several gateways on one state"
                )
            self._pg = conn
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" ({holder})" if holder else ""
            raise GatewayError(
                f"another `apimon gateway serve` already serves the state in {self.path.parent}{who}. Quota "
                "counters and rate limits are kept in the gateway's memory with the SQLite state, so a second "
                "gateway would count on its own and let subscribers past their limits; stop the other one, or "
                "run several gateways only with shared back ends (state in PostgreSQL, limits in Redis)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._pg is not None:
            self._pg.close()  # the session ends: its advisory lock with it
            self._pg = None
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
