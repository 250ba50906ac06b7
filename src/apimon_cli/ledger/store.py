"""The usage ledger: daily gateway counters in one SQLite file (stdlib ``sqlite3`` only).

Durability and concurrency choices:

* ``journal_mode=WAL`` with ``synchronous=FULL``: every pull is one transaction (``BEGIN IMMEDIATE``);
  a process killed half way leaves only uncommitted WAL frames, which SQLite ignores on the next open,
  so the ledger holds either the old window or the new one, never a mix. ``FULL`` fsyncs the WAL at
  each commit so a committed pull also survives a power loss (``NORMAL`` could lose the last commit).
  WAL needs a local filesystem (shared memory index); do not put the ledger on NFS/SMB.
* Readers never block the writer and see a consistent snapshot; two writers serialize on the write lock:
  ``BEGIN IMMEDIATE`` waits up to ``timeout`` seconds (``busy_timeout``) instead of failing.
* Rows are stored ``WITHOUT ROWID`` keyed by (day, provider, target, subscriber, product, metric): a
  window is a contiguous key range, and ``iter_rows`` streams in key order without a sort.
* Ingest streams: the iterable is validated in chunks of 4096 rows and fed through ``executemany`` (one
  prepared statement, 32 rows per INSERT) into a TEMP table (temp_store=FILE: on disk, bounded cache,
  memory constant at any pull size). Filling it takes no lock on the ledger, so a slow gateway does not
  block other writers. Then one write transaction applies it: an empty window takes a fast path (one
  INSERT ... SELECT); otherwise the diff against the stored window is computed in SQL and applied
  (DELETE + UPSERT).
  Measured: benchmarks/billing.py.
* A ``Ledger`` may be handed to another thread (``check_same_thread=False``) but must not be used by two
  threads at once; open one per thread for that.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from itertools import chain, compress, islice
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple, Self

from apimon_cli.ledger import audit, stream
from apimon_cli.model import METRICS, UsageRow
from apimon_cli.sqlitetx import rollback_quietly as _rollback_quietly

#: the schema this code writes; older ledgers are migrated in place on open
SCHEMA_VERSION = 8

_USAGE_V2 = """
CREATE TABLE usage (
    day        TEXT    NOT NULL,
    provider   TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    subscriber TEXT    NOT NULL,
    product    TEXT    NOT NULL,
    metric     TEXT    NOT NULL,  -- one of model.METRICS
    count      INTEGER NOT NULL,  -- >= 0
    pulled_at  TEXT,   -- ISO 8601 UTC; NULL only for rows migrated from schema 1
    PRIMARY KEY (day, provider, target, subscriber, product, metric)
) WITHOUT ROWID
"""

# What each billing platform acknowledged, per ledger row (apimon billing push; see ledger/sync.py).
_PUSH_SYNC_V3 = """
CREATE TABLE push_sync (
    vendor      TEXT    NOT NULL,  -- stripe | lago | openmeter
    sink        TEXT    NOT NULL,  -- the vendor account's meter: "<meter>@<endpoint host>"
    provider    TEXT    NOT NULL,  -- the ledger row: provider, target, day, subscriber, product, metric
    target      TEXT    NOT NULL,
    day         TEXT    NOT NULL,
    subscriber  TEXT    NOT NULL,
    product     TEXT    NOT NULL,
    metric      TEXT    NOT NULL,
    destination TEXT,              -- customer id / subscription id / subject the count lives under
    acked_count INTEGER NOT NULL DEFAULT 0,  -- what the vendor holds for the row
    revision    INTEGER NOT NULL DEFAULT 0,  -- events acknowledged for the row (1 = the first)
    last_key    TEXT,              -- idempotency key (event identifier) of the last acknowledged event
    last_value  INTEGER NOT NULL DEFAULT 0,  -- that event's value
    acked_at    TEXT,              -- when the vendor acknowledged it (ISO 8601 UTC)
    pending_key   TEXT,            -- write-ahead: an event being sent (replayed as-is after a crash)
    pending_value INTEGER,
    pending_count INTEGER,
    pending_cancel TEXT,           -- Stripe: the identifier cancelled before the pending event
    pending_at    TEXT,
    pending_destination TEXT,
    PRIMARY KEY (vendor, sink, provider, target, day, subscriber, product, metric)
) WITHOUT ROWID
"""

# Schema 6: the digest of each window's last answer, so a repeated pull of an unchanged window writes nothing.
_PULL_WINDOWS_V6 = """
CREATE TABLE IF NOT EXISTS pull_windows (
    provider  TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    start     TEXT    NOT NULL,  -- ISO dates, inclusive
    "end"     TEXT    NOT NULL,
    digest    TEXT    NOT NULL,  -- BLAKE2b of the answer's rows, in the order the gateway sent them
    rows      INTEGER NOT NULL,  -- rows in that answer
    pulled_at TEXT    NOT NULL,  -- the last pull that confirmed the window (ISO 8601 UTC)
    PRIMARY KEY (provider, target, start, "end")
) WITHOUT ROWID
"""

# Schema 7: when each subscriber was first seen using each product (the setup fee's "first recorded usage").
# Persisted, so it survives revised or removed rows and carries what the gateway's history knew before the
# ledger's first pulled window (``usage pull``; see ``Ledger.record_first_seen``). Never moves later.
_FIRST_SEEN_V7 = """
CREATE TABLE first_seen (
    provider    TEXT NOT NULL,
    target      TEXT NOT NULL,
    subscriber  TEXT NOT NULL,
    product     TEXT NOT NULL,
    first_day   TEXT NOT NULL,  -- earliest UTC day with usage (a count above zero), ISO date
    source      TEXT NOT NULL,  -- 'ledger' (a stored row) | 'gateway' (the gateway's own history)
    recorded_at TEXT,           -- ISO 8601 UTC; NULL for rows backfilled by the migration
    PRIMARY KEY (provider, target, subscriber, product)
) WITHOUT ROWID
"""

# Schema 8: a provider's offline name for a target (what a plan says: an AWS profile and region) -> the
# target its rows are stored under (what the gateway says: the AWS account id from STS), learnt by `usage pull`.
_TARGET_ALIASES_V8 = """
CREATE TABLE IF NOT EXISTS target_aliases (
    provider   TEXT NOT NULL,
    alias      TEXT NOT NULL,  -- the provider's offline target id (e.g. "profile:prod/us-east-1")
    target     TEXT NOT NULL,  -- the target rows are stored under (e.g. "account:123456789012/us-east-1")
    learnt_at  TEXT NOT NULL,  -- ISO 8601 UTC of the pull that last confirmed it
    PRIMARY KEY (provider, alias)
) WITHOUT ROWID
"""

_SCHEMA_VERSION_TABLE = "CREATE TABLE schema_version (version INTEGER NOT NULL)"

_BUSY_TIMEOUT_S = 30.0
_CACHE_KIB = 16 * 1024  # page cache per connection; bounded, well inside the 200 MB RSS budget
_DETAIL_LIMIT = 10_000
_PAGE_SIZE = 16384


class LedgerError(Exception):
    """The ledger file cannot be used (not SQLite, not a ledger, newer schema, corrupt)."""


class LedgerRow(NamedTuple):
    """One stored row, fields in export order (``export.writers.USAGE_COLUMNS``)."""

    provider: str
    target: str
    day: str  # ISO date, UTC
    subscriber: str
    product: str
    metric: str
    count: int
    pulled_at: str | None  # ISO timestamp; None for rows migrated from schema 1


class UsageChange(NamedTuple):
    """A row added (``new``) or dropped (``removed``, with the count it had) by a pull."""

    subscriber: str
    product: str
    day: str
    metric: str
    count: int


class UsageRevision(NamedTuple):
    """A stored count the gateway now reports differently."""

    subscriber: str
    product: str
    day: str
    metric: str
    old: int
    new: int


@dataclass
class PullReport:
    """What one ``replace_window`` changed.

    ``new_count``/``revised_count``/``removed_count``/``unchanged`` are exact. The detail lists hold at
    most ``detail_limit`` entries each (ordered by day, subscriber, product, metric) so that a pull of
    millions of rows keeps constant memory; ``truncated`` says when a list is shorter than its count.
    """

    provider: str
    target: str
    start: date
    end: date
    pulled_at: str
    new: list[UsageChange] = field(default_factory=list)
    revised: list[UsageRevision] = field(default_factory=list)
    removed: list[UsageChange] = field(default_factory=list)
    unchanged: int = 0
    new_count: int = 0
    revised_count: int = 0
    removed_count: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.new_count or self.revised_count or self.removed_count)

    @property
    def truncated(self) -> bool:
        return (
            len(self.new) < self.new_count
            or len(self.revised) < self.revised_count
            or len(self.removed) < self.removed_count
        )


# --- migrations ------------------------------------------------------------------------------------
# MIGRATIONS[i] upgrades a ledger from schema i+1 to schema i+2, inside the caller's transaction.
# Schema 1 (apimon 0.0.x):
#   usage(provider, target, product, subscriber, day, metric, count,
#         PRIMARY KEY (provider, target, product, subscriber, day, metric))  -- rowid table, no pulled_at


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    # Adds pulled_at and re-keys by day first (windows and exports are day ranges): a rebuild, since
    # SQLite cannot change a primary key in place. Existing counts are kept; their pull time is unknown.
    conn.execute(_USAGE_V2.replace("CREATE TABLE usage", "CREATE TABLE usage_v2", 1))
    conn.execute(
        "INSERT INTO usage_v2 (day, provider, target, subscriber, product, metric, count, pulled_at) "
        "SELECT day, provider, target, subscriber, product, metric, count, NULL FROM usage"
    )
    conn.execute("DROP TABLE usage")
    conn.execute("ALTER TABLE usage_v2 RENAME TO usage")


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    # Adds the push sync table (apimon billing push); usage rows are unchanged.
    conn.execute(_PUSH_SYNC_V3)


def _migrate_5_to_6(conn: sqlite3.Connection) -> None:
    # Adds the window digests (repeated pulls); usage rows are unchanged.
    conn.execute(_PULL_WINDOWS_V6)


def _migrate_6_to_7(conn: sqlite3.Connection) -> None:
    # Adds first_seen, backfilled from every stored row (pulled and stream-fed alike); usage, push_sync, the
    # stream tables and key_audit are unchanged.
    conn.execute(_FIRST_SEEN_V7.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    conn.execute(
        "INSERT INTO first_seen (provider, target, subscriber, product, first_day, source, recorded_at)"
        " SELECT provider, target, subscriber, product, min(day), 'ledger', NULL FROM usage WHERE count > 0"
        " GROUP BY provider, target, subscriber, product"
        " ON CONFLICT (provider, target, subscriber, product) DO UPDATE SET first_day = excluded.first_day"
        " WHERE excluded.first_day < first_seen.first_day"
    )



def _migrate_7_to_8(conn: sqlite3.Connection) -> None:
    # Adds target_aliases. Rows keep the target they were pulled under (for AWS the profile name, which cannot
    # be turned into an account id offline); the first `usage pull` that learns an alias's account moves the
    # alias's rows (and their push_sync rows) to it (Ledger.learn_target).
    conn.execute(_TARGET_ALIASES_V8)



# Schema 4: stream_offsets and stream_event_ids, for `apimon events consume` (ledger/stream.py).
# Schema 5: key_audit, for `apimon keys` (ledger/audit.py).
# Schema 6: pull_windows, the digest of each window's last answer (repeated pulls). Schema 7: first_seen.
# Schema 8: target_aliases (Ledger.learn_target).
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migrate_1_to_2, _migrate_2_to_3, stream.migrate_to_stream, audit.migrate_to_audit, _migrate_5_to_6,
    _migrate_6_to_7, _migrate_7_to_8]
assert len(MIGRATIONS) == SCHEMA_VERSION - 1


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA_VERSION_TABLE)
    conn.execute(_USAGE_V2)
    conn.execute(_PUSH_SYNC_V3)
    stream.migrate_to_stream(conn)
    audit.migrate_to_audit(conn)
    conn.execute(_PULL_WINDOWS_V6)
    conn.execute(_FIRST_SEEN_V7)
    conn.execute(_TARGET_ALIASES_V8)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))


def _bring_to_current(conn: sqlite3.Connection, version: int) -> None:
    """Inside the caller's transaction: create the schema (``version`` 0: an empty database) or run the
    migrations from ``version`` on; both back ends share this one path."""
    if version == 0:
        _create_schema(conn)
    elif version < SCHEMA_VERSION:
        for migrate in MIGRATIONS[version - 1 :]:
            migrate(conn)
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


def _read_version(conn: sqlite3.Connection, path: Path) -> int:
    """0 for an empty database, else the ledger's schema version. Raises LedgerError for foreign files."""
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
            raise LedgerError(f"{path} is not an apimon ledger (not a SQLite database: {exc})") from None
        raise LedgerError(f"cannot read ledger {path}: {exc}") from None
    if not tables:
        return 0
    if "schema_version" not in tables:
        raise LedgerError(f"{path} is a SQLite database but not an apimon ledger (no schema_version table)")
    try:
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} is unreadable: {exc}") from None
    if len(versions) != 1 or not isinstance(versions[0][0], int) or versions[0][0] < 1:
        raise LedgerError(f"ledger {path} has a damaged schema_version table ({versions!r})")
    version = versions[0][0]
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"ledger {path} was written by a newer apimon (schema {version}; "
            f"this apimon knows up to {SCHEMA_VERSION}); upgrade apimon"
        )
    return version


def _as_date(value: date | str, name: str) -> date:
    if isinstance(value, datetime):
        raise TypeError(f"{name} must be a date, not a datetime")
    if isinstance(value, date):
        return value
    return date.fromisoformat(value)


class Ledger:
    """A usage ledger file. Open with ``Ledger.open(path)``; use as a context manager to close it."""

    def __init__(self, conn: sqlite3.Connection, path: Path | str) -> None:
        self._conn = conn
        self.path = path  # a file, or a PostgreSQL URL with its password masked (what messages print)
        self.dialect = getattr(conn, "dialect", "sqlite")

    # --- lifecycle ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, timeout: float = _BUSY_TIMEOUT_S, create: bool = True) -> Self:
        """Open (creating it and its parent directories if needed) and migrate the ledger at ``path``.

        ``path`` may be a ``postgresql://`` URL (or a ``pg.DatabaseURL``): the ledger then lives in that
        database, same schema and migrations (``ledger/pg.py``); ``create=False`` refuses a database that
        holds no ledger yet instead of creating one."""
        from . import pg

        if pg.is_database_url(path):
            return cls._open_postgresql(getattr(path, "url", path), timeout, create)
        path = Path(path)
        if path.is_dir():
            raise LedgerError(f"ledger {path} is a directory, not a file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            old_umask = os.umask(0o077)  # customer usage: the ledger and its WAL are readable by their owner only
            try:
                conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            finally:
                os.umask(old_umask)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from None
        try:
            version = _read_version(conn, path)  # before any PRAGMA that could write to a foreign file
            if version == 0:
                # larger pages: fewer B-tree levels and splits on bulk ingest (only settable before creation)
                conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            _switch_to_wal(conn, timeout)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            # pulls are staged in a temp table: on disk, so a pull of any size keeps memory constant
            conn.execute("PRAGMA temp_store = FILE")
            conn.execute(f"PRAGMA temp.cache_size = -{_CACHE_KIB}")
            # keep the WAL from staying at the size of the largest pull after it is checkpointed
            conn.execute("PRAGMA journal_size_limit = 67108864")
            if version != SCHEMA_VERSION:
                cls._upgrade(conn, path)
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(f"cannot open ledger {path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def _open_postgresql(cls, url: str, timeout: float, create: bool) -> Self:
        from . import pg

        name = pg.mask_url(url)
        try:
            conn = pg.PgConnection(url, timeout=timeout)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {name}: {exc}") from None
        try:
            has_tables, version = pg.read_version(conn)
            if version is None and has_tables:
                raise LedgerError(f"{name} is a PostgreSQL database but not an apimon ledger (no schema_version table)")
            if version is None and not create:
                raise LedgerError(f"no ledger at {name}; run `apimon usage pull` first (or give --ledger)")
            if version is not None and version < 1:
                raise LedgerError(f"ledger {name} has a damaged schema_version table")
            if version is not None and version > SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger {name} was written by a newer apimon (schema {version}; "
                    f"this apimon knows up to {SCHEMA_VERSION}); upgrade apimon"
                )
            if version != SCHEMA_VERSION:
                conn.execute("BEGIN")
                try:
                    conn.execute(pg.UPGRADE_LOCK_SQL)  # two first opens at once: one creates, one waits
                    _, version = pg.read_version(conn)
                    _bring_to_current(conn, version or 0)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback_quietly(conn)
                    raise
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(f"cannot open ledger {name}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, name)

    @staticmethod
    def _upgrade(conn: sqlite3.Connection, path: Path) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            _bring_to_current(conn, _read_version(conn, path))  # read again: another process may have done it
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._conn.execute("SELECT version FROM schema_version").fetchone()[0]

    # --- targets -----------------------------------------------------------------------------------
    def resolve_target(self, provider: str, alias: str) -> str:
        """The target rows of a plan's offline target id are stored under: what a pull learnt, else the id."""
        row = self._conn.execute("SELECT target FROM target_aliases WHERE provider = ? AND alias = ?",
                                 (provider, alias)).fetchone()
        return row[0] if row else alias

    def learn_target(self, provider: str, alias: str, target: str, *, now: datetime | None = None) -> int:
        """Record that ``alias`` (offline) names ``target`` (the gateway's own id) and move rows stored under
        the alias to the target, with their push state, in one transaction. Returns the usage rows moved.
        A row already present under the target is kept (the newer pull) and the alias's copy is left as is."""
        if alias == target:
            return 0
        at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO target_aliases (provider, alias, target, learnt_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (provider, alias) DO UPDATE SET target = excluded.target, learnt_at = excluded.learnt_at",
                (provider, alias, target, at))
            moved = conn.execute("UPDATE OR IGNORE usage SET target = ? WHERE provider = ? AND target = ?",
                                 (target, provider, alias)).rowcount
            conn.execute("UPDATE OR IGNORE push_sync SET target = ? WHERE provider = ? AND target = ?",
                         (target, provider, alias))
            # the first-seen record moves with its rows, keeping the earlier day where both have one
            conn.execute(
                "INSERT INTO first_seen (provider, target, subscriber, product, first_day, source, recorded_at) "
                "SELECT provider, ?, subscriber, product, first_day, source, recorded_at FROM first_seen "
                "WHERE provider = ? AND target = ? AND true ON CONFLICT (provider, target, subscriber, product) "
                "DO UPDATE SET first_day = excluded.first_day WHERE excluded.first_day < first_seen.first_day",
                (target, provider, alias))
            conn.execute("DELETE FROM first_seen WHERE provider = ? AND target = ?", (provider, alias))
            # window digests vouch for rows under the alias: no longer
            conn.execute("DELETE FROM pull_windows WHERE provider = ? AND target = ?", (provider, alias))
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise
        return moved

    # --- writing -----------------------------------------------------------------------------------
    def replace_window(
        self,
        provider: str,
        target: str,
        start: date,
        end: date,
        rows: Iterable[UsageRow],
        pulled_at: datetime | str | None = None,
        *,
        detail_limit: int = _DETAIL_LIMIT,
        history: Iterable[tuple[str, str, date | str]] = (),
    ) -> PullReport:
        """Make the gateway's answer ``rows`` the truth for days [start, end] of provider+target.

        ``rows`` is consumed once, streaming, into a private staging table: while it is read (typically
        from the network) the ledger is not locked and not written. A row outside the window, with an
        unknown metric, or a count that is not an int >= 0 raises ValueError there, before anything is
        written. Then, in one ``BEGIN IMMEDIATE`` transaction: stored rows of the window are upserted with
        the reported counts, stored rows the answer no longer contains are removed, rows outside the
        window are untouched; a row reported twice raises ValueError and nothing is committed.

        A repeated pull of an unchanged window writes no usage row: the answer's digest (BLAKE2b of its
        rows in the order received, computed while staging) equals the one recorded for exactly this
        window by the pull that last wrote it, so every row is reported unchanged and only the window's
        confirmation time is updated (rows keep the ``pulled_at`` of the pull that wrote them). Any pull
        that writes drops the digests of the windows it overlaps, so a digest never vouches for rows
        another pull changed since.
        """
        start = _as_date(start, "start")
        end = _as_date(end, "end")
        if end < start:
            raise ValueError(f"window end {end} is before its start {start}")
        if not (isinstance(provider, str) and isinstance(target, str) and provider and target):
            raise ValueError(f"provider and target must be non-empty strings; got {provider!r}, {target!r}")
        if pulled_at is None:
            pulled_at = datetime.now(UTC).isoformat(timespec="seconds")
        elif isinstance(pulled_at, datetime):
            if pulled_at.tzinfo is None:
                raise ValueError("pulled_at must be timezone-aware")
            pulled_at = pulled_at.astimezone(UTC).isoformat(timespec="seconds")
        report = PullReport(provider, target, start, end, pulled_at)
        window = {
            "p": provider,
            "t": target,
            "s": start.isoformat(),
            "e": end.isoformat(),
            "n": max(detail_limit, 0),
            "at": pulled_at,
        }
        conn = self._conn
        firsts: dict[tuple[str, str], str] = {}  # filled while the rows are staged (_first_days)
        try:
            try:
                if self.dialect == "postgresql":
                    # no digest shortcut on PostgreSQL: rows stream in by COPY (see _replace_postgresql)
                    window["digest"], window["rows"] = None, None
                    self._replace_postgresql(report, window, rows, start, end, firsts)
                else:
                    window["digest"], window["rows"] = self._stage(rows, start, end, firsts)
                    conn.execute("BEGIN IMMEDIATE")
                    if conn.execute(
                        'SELECT 1 FROM pull_windows WHERE provider = :p AND target = :t AND start = :s'
                        ' AND "end" = :e AND digest = :digest AND rows = :rows', window,
                    ).fetchone() is not None:
                        report.unchanged = window["rows"]  # the same answer as the pull that wrote the window
                        conn.execute(
                            'UPDATE pull_windows SET pulled_at = :at WHERE provider = :p AND target = :t'
                            ' AND start = :s AND "end" = :e', window)
                        if history:
                            self._upsert_first_seen(provider, target, history, "gateway", pulled_at)
                        conn.execute("COMMIT")
                        return report
                    if self._occupied(window):
                        self._merge(report, window)
                    else:
                        self._insert_fresh(report, window)
                # the windows this pull overlaps may hold other rows now: their digests no longer vouch
                conn.execute(
                    'DELETE FROM pull_windows WHERE provider = :p AND target = :t AND start <= :e AND "end" >= :s',
                    window)
                if window["digest"] is not None:
                    conn.execute(
                        'INSERT INTO pull_windows (provider, target, start, "end", digest, rows, pulled_at)'
                        " VALUES (:p, :t, :s, :e, :digest, :rows, :at)", window)
                self._note_first_seen(window, firsts)
                if history:
                    self._upsert_first_seen(provider, target, history, "gateway", pulled_at)
                conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                raise _integrity_error(exc) from None
            except sqlite3.OperationalError as exc:
                raise _operational_error(exc, self.path) from None
        except BaseException:
            _rollback_quietly(conn)
            raise
        finally:
            self._clear_staging()
        return report

    def _occupied(self, window: dict) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM usage WHERE day BETWEEN :s AND :e AND provider = :p AND target = :t LIMIT 1", window
        ).fetchone() is not None

    def _replace_postgresql(self, report: PullReport, window: dict, rows: Iterable[UsageRow], start: date,
                            end: date, firsts: dict) -> None:
        # PostgreSQL: one transaction that first takes the (provider, target) advisory lock (ledger/pg.py):
        # two pulls of overlapping windows of one target run one after the other, never interleaved, and
        # cannot deadlock (one lock, always taken first; pulls of other targets and all readers go on).
        # Rows arrive by COPY: straight into ``usage`` when the window is empty (the key rejects a row
        # reported twice), else into a temp table that ``_merge`` diffs against the stored window.
        from . import pg

        conn = self._conn
        conn.execute("BEGIN")
        conn.execute(pg.window_lock_sql(), window)
        checked = _first_days(_validated_chunks(rows, start, end), firsts)
        if not self._occupied(window):
            # the constant columns first: each row is (provider, target, pulled_at) + _ROW_PARAMS(row)
            report.new_count = conn.copy_rows(
                "COPY usage (provider, target, pulled_at, day, subscriber, product, metric, count) FROM STDIN",
                (list(map(_ROW_PARAMS, c)) for c in checked), (window["p"], window["t"], window["at"]),
            )
            self._fresh_details(report, window)
            return
        self._create_staging()
        conn.execute("DELETE FROM temp.staged")
        conn.execute("DELETE FROM temp.incoming")
        conn.copy_rows("COPY pg_temp.staged (day, subscriber, product, metric, count) FROM STDIN",
                       (list(map(_ROW_PARAMS, c)) for c in checked))
        self._merge(report, window)

    def _create_staging(self) -> None:
        conn = self._conn
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS staged (day TEXT NOT NULL, subscriber TEXT NOT NULL,"
            " product TEXT NOT NULL, metric TEXT NOT NULL, count INTEGER NOT NULL)"
        )
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS incoming (day TEXT NOT NULL, subscriber TEXT NOT NULL,"
            " product TEXT NOT NULL, metric TEXT NOT NULL, count INTEGER NOT NULL,"
            " PRIMARY KEY (day, subscriber, product, metric)) WITHOUT ROWID"
        )

    def _stage(self, rows: Iterable[UsageRow], start: date, end: date, firsts: dict) -> tuple[str, int]:
        """Stage ``rows`` (SQLite); returns the answer's digest and its number of rows (``firsts``: see
        ``_first_days``)."""
        # TEMP tables live in the connection's own temp file (temp_store=FILE: constant memory at any
        # size), so filling them takes no lock on the ledger. ``staged`` is a heap: cheapest to fill.
        # The tables are created once per connection and emptied, never dropped: DROP fails while the
        # caller still iterates a cursor of this connection (``iter_rows``).
        conn = self._conn
        self._create_staging()
        self._clear_staging()
        conn.execute("BEGIN")
        tail: list[tuple] = []
        one = "(?, ?, ?, ?, ?)"
        digest = hashlib.blake2b(digest_size=20)
        conn.executemany(
            f"INSERT INTO temp.staged VALUES {', '.join([one] * _BATCH)}",
            _stage_params(_first_days(_validated_chunks(rows, start, end), firsts), tail, digest),
        )
        conn.executemany(f"INSERT INTO temp.staged VALUES {one}", tail)
        digest.update(repr(tail).encode())
        n = conn.execute("SELECT count(*) FROM temp.staged").fetchone()[0]
        conn.execute("COMMIT")
        return digest.hexdigest(), n

    def _clear_staging(self) -> None:
        if self.dialect == "postgresql" and self._conn.in_transaction:
            return  # emptied at the start of the next pull (an aborted transaction refuses statements)
        for table in ("temp.staged", "temp.incoming"):
            try:
                self._conn.execute(f"DELETE FROM {table}")
            except sqlite3.OperationalError:
                pass  # not created yet (or the connection is unusable, which the caller already reports)

    def _note_first_seen(self, window: dict, firsts: dict[tuple[str, str], str]) -> None:
        # the pulled rows' earliest day per subscriber and product, in the pull's transaction; only ever
        # earlier. ``firsts`` was gathered from the answer while it was staged: once written, the answer's
        # rows are exactly the window's stored rows, so this is min(day) ... WHERE count > 0 GROUP BY
        # subscriber, product over the window, without that scan of it (on PostgreSQL, right after a
        # COPY, an index scan and an external sort: as long as a tenth of the COPY itself)
        if not firsts:
            return
        at, p, t = window["at"], window["p"], window["t"]
        upsert = (" ON CONFLICT (provider, target, subscriber, product) DO UPDATE SET first_day = excluded.first_day,"
                  " source = excluded.source, recorded_at = excluded.recorded_at"
                  " WHERE excluded.first_day < first_seen.first_day")
        insert = "INSERT INTO first_seen (provider, target, subscriber, product, first_day, source, recorded_at)"
        if self.dialect == "postgresql" and _STR.issuperset(map(type, chain.from_iterable(firsts))):
            # one statement over three arrays (a statement per entry costs 20 us each, 10,000 are common)
            subs, prods = zip(*firsts, strict=True)
            self._conn.execute(
                f"{insert} SELECT ?, ?, s, f, d, 'ledger', ? FROM unnest(?::text[], ?::text[], ?::text[]) AS x(s, f, d)"
                f"{upsert}", (p, t, at, list(subs), list(prods), list(firsts.values())))
            return
        self._conn.executemany(
            f"{insert} VALUES (?, ?, ?, ?, ?, 'ledger', ?){upsert}",
            [(p, t, sub, prod, day, at) for (sub, prod), day in firsts.items()],
        )

    def record_first_seen(
        self,
        provider: str,
        target: str,
        seen: Iterable[tuple[str, str, date | str]],
        source: str = "gateway",
    ) -> int:
        """Record (subscriber, product, first day) the gateway's history knows (usage older than any pulled
        window), in one transaction; a stored date only ever moves earlier. Returns the entries that did."""
        at = datetime.now(UTC).isoformat(timespec="seconds")
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            changed = self._upsert_first_seen(provider, target, seen, source, at)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            _rollback_quietly(conn)
            raise _operational_error(exc, self.path) from None
        except BaseException:
            _rollback_quietly(conn)
            raise
        return changed

    def _upsert_first_seen(self, provider: str, target: str, seen: Iterable, source: str, at: str) -> int:
        params = [
            (provider, target, sub, prod, _as_date(day, "day").isoformat(), source, at) for sub, prod, day in seen
        ]
        before = self._conn.total_changes
        self._conn.executemany(
            "INSERT INTO first_seen (provider, target, subscriber, product, first_day, source, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (provider, target, subscriber, product) DO UPDATE SET"
            " first_day = excluded.first_day, source = excluded.source, recorded_at = excluded.recorded_at"
            " WHERE excluded.first_day < first_seen.first_day"
            " OR (excluded.first_day = first_seen.first_day AND first_seen.source <> excluded.source)",
            params,
        )
        return self._conn.total_changes - before

    def knows(self, provider: str, target: str) -> bool:
        """Whether the first-seen record holds anything for provider+target (a pull recorded usage there)."""
        return self._conn.execute(
            "SELECT 1 FROM first_seen WHERE provider = ? AND target = ? LIMIT 1", (provider, target)
        ).fetchone() is not None

    def has_history(self, provider: str, target: str) -> bool:
        """Whether a pull recorded the gateway's own usage history (``usage_history``) for provider+target."""
        return self._conn.execute(
            "SELECT 1 FROM first_seen WHERE provider = ? AND target = ? AND source = 'gateway' LIMIT 1",
            (provider, target),
        ).fetchone() is not None

    def first_seen(
        self, provider: str | None = None, target: str | None = None
    ) -> dict[tuple[str, str], tuple[date, str]]:
        """(subscriber, product) -> (first day with usage, source), from the persisted record and every
        stored row (stream-fed rows included), whichever is earlier."""
        where, params = _filters(None, None, provider, target)
        out: dict[tuple[str, str], tuple[date, str]] = {}
        for sub, prod, day, source in self._conn.execute(  # the earliest per (subscriber, product), with its source
            f"SELECT subscriber, product, first_day, source FROM first_seen WHERE {where}", params
        ):
            d = date.fromisoformat(day)
            if (sub, prod) not in out or d < out[(sub, prod)][0]:
                out[(sub, prod)] = (d, source)
        for sub, prod, day in self._conn.execute(
            f"SELECT subscriber, product, min(day) FROM usage WHERE {where} AND count > 0 GROUP BY subscriber, product",
            params,
        ):
            d = date.fromisoformat(day)
            if (sub, prod) not in out or d < out[(sub, prod)][0]:
                out[(sub, prod)] = (d, "ledger")
        return out

    def _insert_fresh(self, report: PullReport, window: dict) -> None:
        # Fast path: nothing stored in the window, so every row is new; one INSERT ... SELECT (the
        # table's key rejects a row reported twice).
        conn = self._conn
        report.new_count = conn.execute(
            "INSERT INTO usage (day, provider, target, subscriber, product, metric, count, pulled_at)"
            " SELECT day, :p, :t, subscriber, product, metric, count, :at FROM temp.staged",
            window,
        ).rowcount
        self._fresh_details(report, window)

    def _fresh_details(self, report: PullReport, window: dict) -> None:
        conn = self._conn
        if report.new_count:
            report.new = _changes(
                conn.execute(
                    "SELECT subscriber, product, day, metric, count FROM usage"
                    " WHERE day BETWEEN :s AND :e AND provider = :p AND target = :t"
                    " ORDER BY day, provider, target, subscriber, product, metric LIMIT :n",
                    window,
                )
            )

    def _merge(self, report: PullReport, window: dict) -> None:
        # Diff the staged answer against the stored window in SQL, then apply: delete what is gone,
        # upsert the rest. Every row the answer holds gets this pull's pulled_at (latest confirmation).
        conn = self._conn
        conn.execute("INSERT INTO temp.incoming SELECT * FROM temp.staged")  # keyed: a row twice fails here
        new, same, revised = conn.execute(
            "SELECT coalesce(sum(CASE WHEN u.count IS NULL THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN u.count = i.count THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN u.count <> i.count THEN 1 ELSE 0 END), 0)"
            f" FROM temp.incoming i LEFT JOIN usage u ON {_JOIN}",
            window,
        ).fetchone()
        report.new_count, report.unchanged, report.revised_count = new, same, revised
        # rows gone from the answer: their details must be read before they are deleted; fewer than
        # the limit means that is all of them, and the common case (none) costs one scan, not three
        report.removed = _changes(
            conn.execute(
                "SELECT subscriber, product, day, metric, count FROM usage"
                f" WHERE {_GONE} ORDER BY day, provider, target, subscriber, product, metric LIMIT :n",
                window,
            )
        )
        if len(report.removed) < window["n"]:
            report.removed_count = len(report.removed)
            if report.removed:
                conn.execute(f"DELETE FROM usage WHERE {_GONE}", window)
        else:
            report.removed_count = conn.execute(f"DELETE FROM usage WHERE {_GONE}", window).rowcount
        if report.revised_count:
            report.revised = [
                UsageRevision(*r)
                for r in conn.execute(
                    "SELECT i.subscriber, i.product, i.day, i.metric, u.count, i.count"
                    f" FROM temp.incoming i JOIN usage u ON {_JOIN}"
                    " WHERE u.count <> i.count ORDER BY i.day, i.subscriber, i.product, i.metric LIMIT :n",
                    window,
                )
            ]
        if report.new_count:
            report.new = _changes(
                conn.execute(
                    "SELECT i.subscriber, i.product, i.day, i.metric, i.count"
                    f" FROM temp.incoming i LEFT JOIN usage u ON {_JOIN}"
                    " WHERE u.count IS NULL ORDER BY i.day, i.subscriber, i.product, i.metric LIMIT :n",
                    window,
                )
            )
        conn.execute(
            "INSERT INTO usage (day, provider, target, subscriber, product, metric, count, pulled_at)"
            " SELECT day, :p, :t, subscriber, product, metric, count, :at FROM temp.incoming WHERE true"
            " ON CONFLICT (day, provider, target, subscriber, product, metric)"
            " DO UPDATE SET count = excluded.count, pulled_at = excluded.pulled_at",
            window,
        )

    def ingest_stream(
        self,
        topic: str,
        items: list[stream.StreamItem],
        next_offsets: dict[int, int],
        first_offsets: dict[int, int] | None = None,
    ) -> tuple[int, int, int]:
        """Consumed messages -> counts, event ids and offsets in one transaction (see ``ledger.stream``)."""
        try:
            return stream.ingest(self._conn, topic, items, next_offsets, first_offsets)
        except sqlite3.OperationalError as exc:
            raise _operational_error(exc, self.path) from None

    def append_audit(self, entries: Iterable[audit.AuditEntry]) -> None:
        audit.append(self._conn, entries)

    def audit(self, provider: str, target: str, subscriber: str | None = None) -> list[audit.AuditEntry]:
        return audit.entries(self._conn, provider, target, subscriber)

    def stream_offsets(self, topic: str) -> dict[int, int]:
        """partition -> the next offset to consume."""
        return stream.offsets(self._conn, topic)

    def prune_stream_ids(self) -> int:
        return stream.prune_ids(self._conn)

    # --- reading -----------------------------------------------------------------------------------
    def totals(
        self,
        start: date,
        end: date,
        metric: str,
        provider: str | None = None,
        target: str | None = None,
    ) -> dict[tuple[str, str], int]:
        """(subscriber, product) -> summed daily counts of ``metric`` over days [start, end]."""
        _check_metric(metric)
        where, params = _filters(start, end, provider, target)
        sql = (
            "SELECT subscriber, product, sum(count) FROM usage"
            f" WHERE {where} AND metric = :metric GROUP BY subscriber, product"
        )
        return {(sub, prod): n for sub, prod, n in self._conn.execute(sql, {**params, "metric": metric})}

    def first_days(self, provider: str | None = None, target: str | None = None) -> dict[str, date]:
        """subscriber -> earliest day with usage recorded (a count above zero, any metric or product), from the
        stored rows and the persisted first-seen record."""
        out: dict[str, date] = {}
        for (sub, _prod), (day, _source) in self.first_seen(provider, target).items():
            if sub not in out or day < out[sub]:
                out[sub] = day
        return out

    def has_usage(
        self,
        start: date | None,
        end: date | None,
        provider: str | None = None,
        target: str | None = None,
        *,
        first_seen: bool = False,
    ) -> bool:
        """Whether any row with a count above zero is stored for days [start, end] (``None``: open); with
        ``first_seen``, also whether the first-seen record knows of usage in that range."""
        where, params = _filters(start, end, provider, target)
        if self._conn.execute(f"SELECT 1 FROM usage WHERE {where} AND count > 0 LIMIT 1", params).fetchone():
            return True
        if not first_seen:
            return False
        where, params = _filters(None, None, provider, target)
        if start is not None:
            where += " AND first_day >= :start"
            params["start"] = _as_date(start, "start").isoformat()
        if end is not None:
            where += " AND first_day <= :end"
            params["end"] = _as_date(end, "end").isoformat()
        return self._conn.execute(f"SELECT 1 FROM first_seen WHERE {where} LIMIT 1", params).fetchone() is not None

    def latest_products(
        self,
        start: date,
        end: date,
        subscribers: Iterable[str],
        provider: str | None = None,
        target: str | None = None,
    ) -> dict[str, str]:
        """subscriber -> the product of its latest usage (a count above zero) in days [start, end], for the
        given subscribers (those no longer in the plan: their usage is priced by the product recorded with it)."""
        wanted = set(subscribers)
        if not wanted:
            return {}
        where, params = _filters(start, end, provider, target)
        sql = (
            f"SELECT subscriber, product, max(day) FROM usage WHERE {where} AND count > 0"
            " GROUP BY subscriber, product"
        )
        best: dict[str, tuple[str, str]] = {}
        for sub, prod, day in self._conn.execute(sql, params):
            if sub in wanted and (sub not in best or (day, prod) > best[sub]):
                best[sub] = (day, prod)
        return {sub: prod for sub, (_day, prod) in best.items()}

    def seen_before(self, day: date, provider: str | None = None, target: str | None = None) -> set[str]:
        """Subscribers with usage recorded (a count above zero) on some day before ``day``. Scans only the
        days before it (the table is keyed by day first), unlike ``first_days``."""
        where, params = _filters(None, _as_date(day, "day") - timedelta(days=1), provider, target)
        sql = f"SELECT DISTINCT subscriber FROM usage WHERE {where} AND count > 0"
        seen = {sub for (sub,) in self._conn.execute(sql, params)}
        # and what the persisted first-seen record knows (usage from before the ledger's rows, e.g. the
        # gateway's history, or rows a later pull removed)
        where, params = _filters(None, None, provider, target)
        params["before"] = _as_date(day, "day").isoformat()
        sql = f"SELECT DISTINCT subscriber FROM first_seen WHERE {where} AND first_day < :before"
        seen.update(sub for (sub,) in self._conn.execute(sql, params))
        return seen

    def iter_rows(
        self,
        start: date | None = None,
        end: date | None = None,
        provider: str | None = None,
        target: str | None = None,
    ) -> Iterator[LedgerRow]:
        """Stream stored rows (constant memory), ordered by day, provider, target, subscriber, product,
        metric. ``None`` bounds are open. The rows come from one read snapshot: pulls by other processes meanwhile
        are not seen (this ledger's own writes during the iteration may be)."""
        where, params = _filters(start, end, provider, target)
        sql = (
            "SELECT provider, target, day, subscriber, product, metric, count, pulled_at FROM usage"
            f" WHERE {where} ORDER BY day, provider, target, subscriber, product, metric"
        )
        make = partial(tuple.__new__, LedgerRow)  # C-level; LedgerRow._make is a Python call per row
        if self.dialect == "postgresql":  # a server-side cursor on its own connection (ledger/pg.py)
            try:
                yield from map(make, self._conn.stream(sql, params))
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot read ledger {self.path}: {exc}") from None
            return
        cur = self._conn.execute(sql, params)
        cur.arraysize = 1024
        try:
            while batch := cur.fetchmany():
                yield from map(make, batch)
        finally:
            try:
                cur.close()
            except sqlite3.ProgrammingError:
                pass  # the ledger was closed first (a reader that stopped early): nothing left to release

    def summary(
        self,
        start: date | None = None,
        end: date | None = None,
        by: str = "subscriber",
        metric: str | None = None,
        provider: str | None = None,
        target: str | None = None,
    ) -> list[tuple[str, dict[str, int]]]:
        """Rows for a table: (key, {metric: summed count}) per subscriber, product or day, sorted by key.

        Every metric of ``METRICS`` is present (0 when none was stored), or only ``metric`` if given.
        """
        if by not in ("subscriber", "product", "day"):
            raise ValueError(f"summary by {by!r}: expected subscriber, product or day")
        metrics = METRICS if metric is None else (_check_metric(metric),)
        where, params = _filters(start, end, provider, target)
        if metric is not None:
            where += " AND metric = :metric"
            params["metric"] = metric
        out: dict[str, dict[str, int]] = {}
        sql = f"SELECT {by}, metric, sum(count) FROM usage WHERE {where} GROUP BY {by}, metric ORDER BY {by}"
        for key, m, n in self._conn.execute(sql, params):
            counts = out.get(key)
            if counts is None:
                counts = out[key] = dict.fromkeys(metrics, 0)
            counts[m] = n
        return list(out.items())


# u = stored row, i = staged row of the pull; :p :t :s :e = provider, target, window start and end
_JOIN = (
    "u.day = i.day AND u.provider = :p AND u.target = :t AND u.subscriber = i.subscriber"
    " AND u.product = i.product AND u.metric = i.metric"
)
_GONE = (  # stored rows of the window the pull no longer reports (unaliased: usable in DELETE)
    "usage.day BETWEEN :s AND :e AND usage.provider = :p AND usage.target = :t AND NOT EXISTS ("
    "SELECT 1 FROM temp.incoming i WHERE i.day = usage.day AND i.subscriber = usage.subscriber"
    " AND i.product = usage.product AND i.metric = usage.metric)"
)

_METRICS = frozenset(METRICS)


def _check_metric(metric: str) -> str:
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    return metric


def _switch_to_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode = WAL`` may answer SQLITE_BUSY at once, without the busy handler, while another
    process creates or switches the same file: retry it until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _filters(start: date | None, end: date | None, provider: str | None, target: str | None) -> tuple[str, dict]:
    clauses, params = ["true"], {}
    if start is not None:
        clauses.append("day >= :start")
        params["start"] = _as_date(start, "start").isoformat()
    if end is not None:
        clauses.append("day <= :end")
        params["end"] = _as_date(end, "end").isoformat()
    if provider is not None:
        clauses.append("provider = :provider")
        params["provider"] = provider
    if target is not None:
        clauses.append("target = :target")
        params["target"] = target
    return " AND ".join(clauses), params


def _changes(cursor: sqlite3.Cursor) -> list[UsageChange]:
    return [UsageChange(*r) for r in cursor]


def _operational_error(exc: sqlite3.OperationalError, path: Path) -> LedgerError:
    if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return LedgerError(f"ledger {path} is busy: another apimon kept it locked too long ({exc}); try again")
    return LedgerError(f"cannot write ledger {path}: {exc}")


def _integrity_error(exc: sqlite3.IntegrityError) -> ValueError:
    msg = str(exc)
    if "UNIQUE" in msg or "PRIMARY KEY" in msg:
        return ValueError(f"the pull reports the same (subscriber, product, day, metric) twice: {msg}")
    return ValueError(f"invalid usage row: {msg}")


_ROW_PARAMS = attrgetter("day", "subscriber", "product", "metric", "count")
_DAY, _METRIC, _COUNT = attrgetter("day"), attrgetter("metric"), attrgetter("count")
_STR = frozenset({str})
_INT = frozenset({int})  # exact type: bool and float counts are refused
_CHUNK = 4096  # rows validated at a time
_BATCH = 32  # rows per INSERT statement while staging


def _validated_chunks(rows: Iterable[UsageRow], start: date, end: date) -> Iterator[list[UsageRow]]:
    """Yield ``rows`` in lists of up to ``_CHUNK``, each checked before it is yielded.

    Checked with C-level set and map operations (a per-row Python check, or CHECK constraints, cost as
    much as the insert itself): day inside the window (membership in the set of the window's ISO days also
    rejects malformed dates), known metric, count an int >= 0. Chunks are small, so memory stays constant
    and a row source that blocks is consumed as it produces.
    """
    days = _WindowDays(start, end)
    it = iter(rows)
    while chunk := list(islice(it, _CHUNK)):
        counts = list(map(_COUNT, chunk))
        if (
            not days.issuperset(map(_DAY, chunk))
            or not _METRICS.issuperset(map(_METRIC, chunk))
            or not _INT.issuperset(map(type, counts))
            or min(counts) < 0
        ):
            raise ValueError(_reject_reason(chunk, days, start, end))
        yield chunk


def _first_days(chunks: Iterable[list[UsageRow]], firsts: dict[tuple[str, str], str]) -> Iterator[list[UsageRow]]:
    """Pass validated ``chunks`` through, noting in ``firsts`` each (subscriber, product)'s earliest day
    with a count above zero (ISO days of one window: string order is date order)."""
    get = firsts.get
    for chunk in chunks:
        for r in compress(chunk, map(_COUNT, chunk)):  # counts are validated ints >= 0: truthy is > 0
            key, day = (r.subscriber, r.product), r.day
            old = get(key)
            if old is None or day < old:
                firsts[key] = day
        yield chunk


def _stage_params(chunks: Iterable[list[UsageRow]], tail: list[tuple], digest) -> Iterator[list]:
    """Flat parameter lists of ``_BATCH`` rows each for a multi-row INSERT (half the cost per row of one
    statement per row); the rows left over (fewer than ``_BATCH``) go to ``tail``. ``digest`` is fed the
    rows in order (the repr of each flat list: C-level, unambiguous for str and int)."""
    step = _BATCH * 5
    for chunk in chunks:
        whole = len(chunk) - len(chunk) % _BATCH
        flat = list(chain.from_iterable(map(_ROW_PARAMS, chunk[:whole])))
        digest.update(repr(flat).encode())
        for i in range(0, len(flat), step):
            yield flat[i : i + step]
        tail.extend(map(_ROW_PARAMS, chunk[whole:]))


class _WindowDays:
    """``day in window`` for ISO day strings: a set lookup for any sane window, parsing beyond that."""

    _SET_LIMIT = 40_000  # days (~110 years); keeps the set small

    def __init__(self, start: date, end: date) -> None:
        self._s, self._e = start.isoformat(), end.isoformat()
        n = (end - start).days + 1
        self._set = (
            frozenset((start + timedelta(days=i)).isoformat() for i in range(n)) if n <= self._SET_LIMIT else None
        )

    def issuperset(self, days: Iterable[object]) -> bool:
        if self._set is not None:
            return self._set.issuperset(days)
        return all(self._contains(day) for day in days)

    def _contains(self, day: object) -> bool:
        if self._set is not None:
            return day in self._set
        if type(day) is not str or not (self._s <= day <= self._e):
            return False
        try:
            return date.fromisoformat(day).isoformat() == day
        except ValueError:
            return False


def _reject_reason(chunk: list[UsageRow], days: _WindowDays, start: date, end: date) -> str:
    for r in chunk:
        if r.metric not in _METRICS:
            return f"usage row {r!r}: unknown metric (expected one of {', '.join(METRICS)})"
        if type(r.count) is not int or r.count < 0:
            return f"usage row {r!r}: count must be an integer >= 0"
        if not days._contains(r.day):
            return f"usage row {r!r}: day is not an ISO date inside the pulled window {start}..{end}"
    raise AssertionError("a chunk failed validation but no row in it is invalid")
