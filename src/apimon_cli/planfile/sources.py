"""``subscribers_from:``: subscribers kept as data (issue 19), next to the ones written in YAML.

A plan file may list sources::

    subscribers_from:
      - csv: subscribers.csv            # relative to the plan file
      - postgresql: "${env:CRM_DATABASE_URL}"
        query: "SELECT id, product, email, enabled FROM api_customers"

Both give rows with the columns ``id, product, email, enabled, metadata.<key>...`` (``id`` and ``product``
required; an empty ``email`` or ``metadata.<key>`` cell means none; ``enabled`` is ``true``/``false``, empty
means true). Each source is read streaming (CSV line by line, PostgreSQL with a server-side cursor) into
the same ``Subscriber`` the YAML gives, and every problem is located like a YAML one: ``file.csv:ROW:COLUMN``
(the header is row 1) or ``postgresql:DB:ROW:COLUMN`` (the first result row is row 1). A ``RowSource`` plays
the part of a YAML ``Source`` for the loader's merge and checks: an id defined in YAML and in a source is
reported as defined twice, naming both places.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..model import Subscriber
from .diagnostics import Diagnostic, suggest

COLUMNS = ("id", "product", "email", "enabled")
METADATA_PREFIX = "metadata."
_TRUE = {"true": True, "false": False}
_FIELD_OF = {"id": None, "product": "product", "email": "email", "enabled": "enabled"}


@dataclass
class RowSource:
    """A CSV file or a query, located like a plan file: ``where`` answers (row, column) of a subscriber's
    field. Holds the row of each subscriber (an int per subscriber) and the header."""

    file: str
    columns: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # subscriber id -> row number
    data: dict = field(default_factory=dict)  # no top-level fields (the loader asks for `target`)
    secrets: set[str] = field(default_factory=set)
    is_file: bool = True
    _col: dict[str, int] = field(default_factory=dict)

    def set_columns(self, columns: list[str]) -> None:
        self.columns = columns
        self._col = {c: i + 1 for i, c in enumerate(columns)}

    def where(self, path: tuple, *, key: bool = False) -> tuple[int, int]:
        if len(path) < 2 or path[0] != "subscribers" or path[1] not in self.rows:
            return (1, 1)
        row = self.rows[path[1]]
        rest = path[2:]
        if key or not rest:
            return (row, self._col.get("id", 1))
        name = f"{METADATA_PREFIX}{rest[1]}" if rest[0] == "metadata" and len(rest) > 1 else str(rest[0])
        return (row, self._col.get(name, self._col.get("id", 1)))

    def release(self) -> None:
        pass


def _header_problems(src: RowSource, columns: list[str], line: int = 1) -> list[Diagnostic]:
    out = []
    seen: set[str] = set()
    allowed = [*COLUMNS, "metadata.<key>"]
    for i, c in enumerate(columns, 1):
        if c in seen:
            out.append(Diagnostic(src.file, line, i, "error", "", f"column {c!r} appears twice; name each column once"))
        seen.add(c)
        if c in COLUMNS or (c.startswith(METADATA_PREFIX) and len(c) > len(METADATA_PREFIX)):
            continue
        out.append(Diagnostic(src.file, line, i, "error", "",
                              f"unknown column {c!r}{suggest(c, COLUMNS)}; allowed: {', '.join(allowed)}"))
    for required in ("id", "product"):
        if required not in seen:
            out.append(Diagnostic(src.file, line, 1, "error", "",
                                  f"required column {required!r} is missing; the header names id, product "
                                  "(and optionally email, enabled, metadata.<key>)"))
    return out


def _subscribers(src: RowSource, rows: Iterable[tuple[int, list]], diags: list[Diagnostic]
                 ) -> Iterator[tuple[str, Subscriber | None]]:
    """(id, Subscriber or None when the row's problems are reported) for each row; a row whose id is
    missing is reported and skipped.

    The hot path of a million-row source: values many rows share (product, enabled, the metadata tuple)
    are kept once (a dict of the ones seen), metadata columns are visited in key order (no sort per row),
    and the error messages are built only for rows that have one."""
    cols = src.columns
    idx = {c: i for i, c in enumerate(cols)}
    i_id, i_product = idx["id"], idx["product"]
    i_email, i_enabled = idx.get("email"), idx.get("enabled")
    meta = sorted(((c[len(METADATA_PREFIX):], i) for i, c in enumerate(cols) if c.startswith(METADATA_PREFIX)))
    width = len(cols)
    file = src.file
    seen_rows = src.rows
    shared: dict = {}  # one object per distinct product, metadata tuple
    shared_get = shared.setdefault
    for line, values in rows:
        if len(values) != width:
            if not any(v not in ("", None) for v in values):
                continue  # a blank line
            diags.append(Diagnostic(file, line, min(len(values), width) + 1, "error", "",
                                    f"has {len(values)} cells; the header has {width} ({', '.join(cols)})"))
            continue
        sid = values[i_id]
        if sid is None or sid == "":
            diags.append(Diagnostic(file, line, i_id + 1, "error", "", "the id is empty; every row needs an id"))
            continue
        if type(sid) is not str:
            sid = str(sid)
        if sid in seen_rows:
            diags.append(Diagnostic(file, line, i_id + 1, "error", f"subscribers.{sid}",
                                    f"subscriber {sid!r} is defined twice in this source, here and at row "
                                    f"{seen_rows[sid]}; ids must be unique across all plan files and sources"))
            continue
        seen_rows[sid] = line
        product = values[i_product]
        if product is None or product == "":
            diags.append(Diagnostic(file, line, i_product + 1, "error", f"subscribers.{sid}.product",
                                    "required field is empty; name the subscriber's product"))
            yield sid, None
            continue
        product = shared_get(product, product) if type(product) is str else str(product)
        email = values[i_email] if i_email is not None else None
        if not email:
            email = None
        elif type(email) is not str or email[0] == "'":
            email = _uncell(email)
        enabled = True
        if i_enabled is not None:
            raw = values[i_enabled]
            if raw == "true" or raw is True or raw == "" or raw is None:
                pass
            elif raw == "false" or raw is False:
                enabled = False
            else:
                got = _TRUE.get(str(raw).strip().lower())
                if got is None:
                    diags.append(Diagnostic(file, line, i_enabled + 1, "error", f"subscribers.{sid}.enabled",
                                            f"must be true or false; got {raw!r}"))
                else:
                    enabled = got
        if meta:
            pairs = tuple([(k, _uncell(v) if type(v) is not str or v[0] == "'" else v)
                           for k, i in meta if (v := values[i]) is not None and v != ""])
            metadata = shared_get(pairs, pairs)
        else:
            metadata = ()
        yield sid, Subscriber(sid, product, email, enabled, None, metadata)


def read_csv(path: Path, shown: str, diags: list[Diagnostic]
             ) -> tuple[RowSource, Iterator[tuple[str, Subscriber | None]]]:
    """A CSV source: its RowSource and its subscribers, read as they are consumed."""
    src = RowSource(shown)

    def rows() -> Iterator[tuple[str, Subscriber | None]]:
        try:
            fh = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            diags.append(Diagnostic(shown, 1, 1, "error", "", "no such file; subscribers_from.csv names a CSV "
                                    "file relative to the plan file"))
            return
        except OSError as exc:
            diags.append(Diagnostic(shown, 1, 1, "error", "", f"cannot read the file ({exc.strerror or exc})"))
            return
        with fh:
            reader = csv.reader(fh, strict=True)
            try:
                header = next(reader, None)
                if header is None:
                    diags.append(Diagnostic(shown, 1, 1, "error", "", "the CSV file is empty; its first row is the "
                                            "header: id, product, email, enabled, metadata.<key>..."))
                    return
                header = [h.strip() for h in header]
                problems = _header_problems(src, header)
                if problems:
                    diags.extend(problems)
                    return
                src.set_columns(header)

                def numbered() -> Iterator[tuple[int, list]]:
                    for values in reader:
                        yield reader.line_num, values

                yield from _subscribers(src, numbered(), diags)
            except csv.Error as exc:
                diags.append(Diagnostic(shown, reader.line_num, 1, "error", "", f"not valid CSV: {exc}"))
            except UnicodeDecodeError as exc:
                diags.append(Diagnostic(shown, reader.line_num + 1, 1, "error", "",
                                        f"invalid UTF-8 (byte 0x{exc.object[exc.start]:02x}); CSV files are UTF-8"))

    return src, rows()


def read_postgresql(url: str, query: str, label: str, diags: list[Diagnostic]
                    ) -> tuple[RowSource, Iterator[tuple[str, Subscriber | None]]]:
    """A PostgreSQL source: the query runs in a read-only transaction with a server-side (named) cursor, so
    rows arrive in batches and memory stays flat at any size."""
    src = RowSource(label, is_file=False)
    src.secrets.add(url)

    def rows() -> Iterator[tuple[str, Subscriber | None]]:
        try:
            import psycopg
        except ImportError:
            diags.append(Diagnostic(label, 1, 1, "error", "", "reading subscribers from PostgreSQL needs psycopg: "
                                    "pip install 'apimon[postgres]'"))
            return
        try:
            with psycopg.connect(url, connect_timeout=10) as conn:
                conn.read_only = True
                with conn.transaction(), conn.cursor(name="apimon_subscribers") as cur:
                    cur.itersize = 5000
                    cur.execute(query)
                    columns = [d.name for d in (cur.description or [])]
                    problems = _header_problems(src, columns)
                    if problems:
                        diags.extend(problems)
                        return
                    src.set_columns(columns)
                    numbered = ((n, list(values)) for n, values in enumerate(cur, 1))
                    yield from _subscribers(src, numbered, diags)
        except psycopg.Error as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            diags.append(Diagnostic(label, 1, 1, "error", "", f"cannot read subscribers from PostgreSQL: {message}"))

    return src, rows()


def postgres_label(url: str) -> str:
    """``postgresql:DBNAME`` (never the URL: it may hold a password)."""
    try:
        from urllib.parse import urlsplit

        name = urlsplit(url).path.lstrip("/") or "postgres"
    except ValueError:
        name = "postgres"
    return f"postgresql:{name}"


def resolve_csv(plan_file: str, csv_path: str) -> tuple[Path, str]:
    """The CSV's path (relative to the plan file) and how messages show it."""
    p = Path(os.path.expanduser(csv_path))
    if not p.is_absolute():
        p = Path(plan_file).parent / p
    return p, os.path.normpath(str(p))


def write_csv(subscribers: Iterable[Subscriber], out=None) -> int:
    """Subscribers as CSV (``apimon import --subscribers-csv``): id, product, email, enabled and one
    ``metadata.<key>`` column per key any subscriber has. Cells that could start a spreadsheet formula are
    prefixed with a quote (read back without it). Returns the number of rows."""
    subs = list(subscribers)
    keys = sorted({k for s in subs for k, _ in s.metadata})
    writer = csv.writer(out or sys.stdout, lineterminator="\n")
    writer.writerow([*COLUMNS, *(METADATA_PREFIX + k for k in keys)])
    for s in subs:
        meta = dict(s.metadata)
        writer.writerow([_cell(s.id), _cell(s.product), _cell(s.email or ""), "true" if s.enabled else "false",
                         *(_cell(meta.get(k, "")) for k in keys)])
    return len(subs)


def _cell(value: str) -> str:
    from ..export.writers import safe_text

    return safe_text(value)


_TRIGGERS = frozenset("=+-@\t\r")


def _uncell(value: object) -> str:
    """A cell as written by ``write_csv``: a ``'`` protecting a formula trigger is not part of the value."""
    text = str(value)
    return text[1:] if len(text) > 1 and text[0] == "'" and text[1] in _TRIGGERS else text
