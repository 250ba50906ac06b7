"""The PostgreSQL dialect of the ledger: a ``sqlite3.Connection``-shaped adapter over psycopg 3.

The ledger's SQL (``store.py``, ``stream.py``, ``sync.py``) is written once, in the subset SQLite and
PostgreSQL share; this module translates what differs, so there is one schema, one set of migrations and
one code path for both back ends:

* placeholders: ``:name`` -> ``%(name)s``, ``?`` -> ``%s``;
* ``BEGIN IMMEDIATE`` -> ``BEGIN`` (serialisation of pulls is an advisory lock, see ``store.py``),
  ``temp.x`` -> ``pg_temp.x``, SQLite's two-argument scalar ``max(a, b)`` / ``min(a, b)`` -> ``greatest`` /
  ``least``;
* DDL: ``WITHOUT ROWID`` dropped, ``INTEGER PRIMARY KEY`` (SQLite's rowid) -> an identity column,
  ``INTEGER`` -> ``BIGINT`` (counts beyond 2**31), ``main.x`` -> ``x``, ``TEXT`` ->
  ``TEXT COLLATE "C"`` (byte order, as SQLite sorts: exports list rows in the same order on both);
* ``sum()`` of BIGINT is NUMERIC in PostgreSQL: loaded back as ``int`` (the ledger has no fractional
  column), so totals are the same Python values on both;
* psycopg errors are re-raised as the DB-API classes of ``sqlite3`` (``IntegrityError``,
  ``OperationalError``) that the ledger code already handles, with the password masked.

Credentials come from the URL, the ``PG*`` environment variables or ``~/.pgpass`` (libpq reads them); the
password is never printed: ``DatabaseURL`` prints masked, every error message is scrubbed.

psycopg is imported only when a PostgreSQL ledger is opened (``apimon --help`` stays fast).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from itertools import chain
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql://", "postgres://")


def is_database_url(text: object) -> bool:
    return isinstance(text, str | DatabaseURL) and str(getattr(text, "url", text)).startswith(SCHEMES)


def mask_url(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` query parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() == "password" for k, _ in pairs):  # else the query as written (no re-encoding)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*/")
    masked = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if not netloc and url.startswith(f"{parts.scheme}://"):  # unix:///path keeps its empty authority
        masked = f"{parts.scheme}://{masked[len(parts.scheme) + 1:]}"
    return masked


def _secrets_of(url: str) -> list[str]:
    out = []
    try:
        parts = urlsplit(url)
        if parts.password:
            out.append(parts.password)
        out += [v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
    except ValueError:
        pass
    return out


class DatabaseURL:
    """A database URL that prints with its password masked (``str()``); ``.url`` is the real one."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __str__(self) -> str:
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"DatabaseURL({mask_url(self.url)!r})"

    def exists(self) -> bool:
        """Whether the database holds a ledger (as ``Path.exists`` for a file: the commands that only read
        the ledger, e.g. `keys audit`, ask it first and create nothing). A database that cannot be reached
        answers True: opening it then reports why, with the password masked."""
        try:
            conn = PgConnection(self.url, timeout=5)
        except sqlite3.Error:
            return True
        try:
            return read_version(conn)[1] is not None
        except sqlite3.Error:
            return True
        finally:
            conn.close()

    def __fspath__(self) -> str:  # never a file: refuse to be used as one
        raise TypeError(f"{self} is a database URL, not a file path")


# --- SQL translation ---------------------------------------------------------------------------------
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_TEMP = re.compile(r"\btemp\.(\w)")
_MAIN = re.compile(r"\bmain\.(\w)")  # SQLite's main schema: the connection's default schema here


def _scalar_minmax(sql: str) -> str:
    """SQLite's scalar max(a, b)/min(a, b) (two or more arguments) -> greatest/least; aggregates untouched."""
    out, i = [], 0
    pattern = re.compile(r"\b(max|min)\(", re.IGNORECASE)
    while m := pattern.search(sql, i):
        depth, j, comma = 1, m.end(), False
        while j < len(sql) and depth:
            ch = sql[j]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == "," and depth == 1:
                comma = True
            j += 1
        out.append(sql[i : m.start()])
        out.append(("greatest(" if m.group(1).lower() == "max" else "least(") if comma else m.group(0))
        i = m.end()
    out.append(sql[i:])
    return "".join(out)


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    s = sql.strip()
    if s.upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    if re.match(r"CREATE\s+(TEMP\s+)?TABLE", s, re.IGNORECASE):
        s = re.sub(r"\)\s*WITHOUT ROWID\s*$", ")", s)
        # SQLite's rowid alias (an automatic key) is an identity column here
        s = re.sub(r"\bINTEGER PRIMARY KEY\b", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", s)
        s = re.sub(r"\bINTEGER\b", "BIGINT", s)
        s = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', s)
    s = s.replace("%", "%%")
    s = _TEMP.sub(r"pg_temp.\1", s)
    s = _MAIN.sub(r"\1", s)
    s = _scalar_minmax(s)
    s = _NAMED.sub(r"%(\1)s", s)
    return s.replace("?", "%s")


# --- errors ------------------------------------------------------------------------------------------
class PgIntegrityError(sqlite3.IntegrityError):
    """A PostgreSQL constraint violation, as the ledger code expects it."""


class PgOperationalError(sqlite3.OperationalError):
    """Any other PostgreSQL error (connection lost, lock timeout, ...), password masked."""

    sqlite_errorname = ""


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


def _mapped(exc: Exception, secrets: Iterable[str]) -> sqlite3.Error:
    import psycopg

    msg = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, secrets)
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return PgIntegrityError(f"UNIQUE constraint failed: {msg}")
    if isinstance(exc, psycopg.IntegrityError):
        return PgIntegrityError(msg)
    err = PgOperationalError(msg)
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        err.sqlite_errorname = "SQLITE_BUSY"
    return err


# --- COPY text ---
_PLAIN = frozenset({str, int})  # exact types whose COPY text is ``str(value)`` (bool, float, None: psycopg)


def _needs_escape(text: str, tabs: int, newlines: int) -> bool:
    """Whether preformatted COPY text lines hold a character inside a value that the text format escapes
    or refuses: any backslash, CR or NUL, or more tabs / newlines than the separators themselves."""
    return ("\\" in text or "\r" in text or "\0" in text or text.count("\t") != tabs
            or text.count("\n") != newlines)


# --- the connection ----------------------------------------------------------------------------------
def _int_numeric_loader():
    from psycopg.adapt import Loader

    class IntNumericLoader(Loader):
        def load(self, data):
            text = bytes(data)
            return int(text) if b"." not in text else int(text.split(b".")[0])

    return IntNumericLoader


class PgConnection:
    """What ``Ledger`` uses of a ``sqlite3.Connection`` (autocommit; explicit BEGIN/COMMIT), on psycopg."""

    dialect = "postgresql"

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        import psycopg

        self.url = url
        self.name = mask_url(url)
        self._secrets = _secrets_of(url)
        self._timeout = timeout
        self.total_changes = 0
        try:
            self._pg = self._connect()
        except psycopg.Error as exc:
            raise _mapped(exc, self._secrets) from None

    def _connect(self):
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(min(self._timeout, 10))),
                               application_name="apimon")
        conn.adapters.register_loader("numeric", _int_numeric_loader())
        # a writer waits for another's lock up to the ledger timeout, then fails with a clear error
        conn.execute(f"SET lock_timeout = '{int(self._timeout * 1000)}ms'")
        return conn

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self._pg.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, params=None):
        import psycopg

        cur = self._pg.cursor()
        try:
            cur.execute(translate(sql), params if params else None)
        except psycopg.Error as exc:
            raise _mapped(exc, self._secrets) from None
        if cur.rowcount > 0 and cur.description is None:
            self.total_changes += cur.rowcount
        return cur

    def executemany(self, sql: str, seq) -> None:
        import psycopg

        cur = self._pg.cursor()
        try:
            cur.executemany(translate(sql), seq)
        except psycopg.Error as exc:
            raise _mapped(exc, self._secrets) from None
        if cur.rowcount > 0:
            self.total_changes += cur.rowcount
        return cur

    def copy_rows(self, sql: str, chunks: Iterable[Sequence[tuple]], consts: tuple = ()) -> int:
        """``COPY ... FROM STDIN`` (text format) of ``chunks`` (lists of row tuples), each row written as
        ``consts + row`` in the statement's column order; returns the number of rows.

        A chunk whose values are all exact ``str``/``int`` and hold no character the COPY text format
        escapes (backslash, tab, newline, carriage return) or refuses (NUL) is sent as one preformatted
        block: ``line % row`` per row, C-level, about a tenth of psycopg's per-row adaptation. Any other
        chunk (or every chunk, when a constant needs escaping) goes row by row through psycopg's
        ``write_row`` (escaping, ``None`` -> NULL): the same values reach the server either way. Rows of
        one COPY have no order, so the two paths may interleave.
        """
        import psycopg

        head = "".join(f"{c}\t".replace("%", "%%") for c in consts)
        fast = all(type(c) in _PLAIN for c in consts) and not _needs_escape(head, len(consts), 0)
        lines: dict[int, str] = {}
        n = 0
        try:
            with self._pg.cursor() as cur, cur.copy(sql) as copy:
                for chunk in chunks:
                    if not chunk:
                        continue
                    n += len(chunk)
                    if fast and _PLAIN.issuperset(map(type, chain.from_iterable(chunk))):
                        width = len(chunk[0])
                        line = lines.get(width) or lines.setdefault(width, head + "\t".join(["%s"] * width) + "\n")
                        text = "".join(map(line.__mod__, chunk))
                        if not _needs_escape(text, len(chunk) * (len(consts) + width - 1), len(chunk)):
                            copy.write(text)
                            continue
                    write = copy.write_row
                    for r in chunk:
                        write(consts + r)
        except psycopg.Error as exc:
            raise _mapped(exc, self._secrets) from None
        self.total_changes += n
        return n

    def stream(self, sql: str, params, batch: int = 2048) -> Iterator[tuple]:
        """Rows of a query through a server-side cursor on a connection of its own (one read-only snapshot,
        constant memory on both sides, this connection stays free for writes meanwhile)."""
        import psycopg

        try:
            conn = self._connect()
        except psycopg.Error as exc:
            raise _mapped(exc, self._secrets) from None
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            with conn.cursor(name="apimon_export") as cur:
                cur.itersize = batch
                cur.execute(translate(sql), params if params else None)
                while rows := cur.fetchmany(batch):
                    yield from rows
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise _mapped(exc, self._secrets) from None
        finally:
            conn.close()

    def close(self) -> None:
        self._pg.close()


def read_version(conn: PgConnection) -> tuple[bool, int | None]:
    """(database has tables of its own, schema_version or None when the ledger has no schema yet)."""
    has_tables = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema())"
    ).fetchone()[0]
    if conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]:
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        return has_tables, (rows[0][0] if len(rows) == 1 else -1)
    return has_tables, None


def window_lock_sql() -> str:
    """Serialises replacements of one (provider, target): a transaction-scoped advisory lock on a hash of
    both (released at COMMIT/ROLLBACK, even when the process dies: the session ends)."""
    return "SELECT pg_advisory_xact_lock(7001, hashtext(:p || chr(1) || :t))"


UPGRADE_LOCK_SQL = "SELECT pg_advisory_xact_lock(7001, 0)"
