"""CSV and JSON Lines writers: streaming, RFC 4180, safe to open in a spreadsheet.

CSV text cells that start with ``= + - @``, TAB or CR are prefixed with ``'`` (OWASP CSV injection);
numeric columns are written exactly as given (``-3.00`` stays ``-3.00``), never prefixed.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from itertools import islice, repeat
from operator import attrgetter
from typing import Any, TextIO

#: columns of a usage export, in order (``LedgerRow`` has the same fields in the same order)
USAGE_COLUMNS: tuple[str, ...] = (
    "provider",
    "target",
    "day",
    "subscriber",
    "product",
    "metric",
    "count",
    "pulled_at",
)
USAGE_NUMERIC_COLUMNS: frozenset[str] = frozenset({"count"})

_FORMULA_TRIGGERS = frozenset("=+-@\t\r")


def safe_text(value: str) -> str:
    """``value`` with a leading ``'`` if a spreadsheet would read it as a formula (OWASP)."""
    if value and value[0] in _FORMULA_TRIGGERS:
        return "'" + value
    return value


def _text_cell(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        value = value.isoformat() if isinstance(value, (date, datetime)) else str(value)
    if value and value[0] in _FORMULA_TRIGGERS:
        return "'" + value
    return value


def _numeric_cell(value: Any, column: str) -> Any:
    # Written as given: a numeric column is data, not a formula, and must stay machine-readable. Text in
    # it must look like a number, or it would bypass the formula protection.
    if value is None:
        return ""
    kind = type(value)
    if kind is int:
        return value
    if kind is Decimal and value.is_finite():
        return format(value, "f")  # plain decimal string, never exponent notation ("1E+2")
    if kind is str and (not value or _NUMBER_TEXT.fullmatch(value)):
        return value  # "" is an empty cell (no quantity on a fee line)
    if kind is float and math.isfinite(value):
        return repr(value)
    raise ValueError(f"column {column!r} is numeric but holds {value!r}")


_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def write_csv(
    rows: Iterable[Sequence[Any]],
    columns: Sequence[str],
    out: TextIO,
    numeric_columns: set[str] | frozenset[str] = frozenset(),
) -> int:
    """Write a header and ``rows`` (sequences in ``columns`` order) as RFC 4180 CSV; return the row count.

    ``out`` should be opened with ``newline=""`` (the writer emits ``\\r\\n`` itself). Streams: rows are
    converted and written in chunks of ``_CHUNK``. Cells of ``numeric_columns`` are written unchanged:
    int, numeric text such as ``"-3.00"``, Decimal as a plain decimal string, None as empty; anything
    else there raises ValueError. Every other cell is text: None -> empty, dates ISO 8601, formula
    triggers prefixed with ``'``.
    """
    if not columns:
        raise ValueError("write_csv needs at least one column")
    unknown = set(numeric_columns) - set(columns)
    if unknown:
        raise ValueError(f"numeric columns not among the columns: {sorted(unknown)}")
    width = len(columns)
    numeric = [i for i, c in enumerate(columns) if c in numeric_columns]
    text = [i for i, c in enumerate(columns) if c not in numeric_columns]
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([safe_text(c) for c in columns])
    written = 0
    it = iter(rows)
    # Column-wise per chunk: the common cells (plain str without a trigger, ints) are checked with C-level
    # map/set passes instead of a Python call per cell, which tripled the export time.
    while chunk := list(islice(it, _CHUNK)):
        if _lengths(chunk) != {width}:
            bad = next(i for i, row in enumerate(chunk) if len(row) != width)
            raise ValueError(f"row {written + bad + 1} has {len(chunk[bad])} cells, expected {width}: {chunk[bad]!r}")
        cols: list[Sequence[Any]] = list(zip(*chunk, strict=True))
        for i in text:
            cols[i] = _text_column(cols[i])
        for i in numeric:
            cols[i] = _numeric_column(cols[i], columns[i])
        writer.writerows(zip(*cols, strict=True))
        written += len(chunk)
    return written


_CHUNK = 1024
_TRIGGER_PREFIXES = tuple(_FORMULA_TRIGGERS)
_STR_ONLY = {str}
_INTS = frozenset({int, type(None)})  # written as they are by the csv module (None as an empty cell)


def _lengths(chunk: list[Sequence[Any]]) -> set[int]:
    return set(map(len, chunk))


def _text_column(col: Sequence[Any]) -> Sequence[Any]:
    if set(map(type, col)) == _STR_ONLY:
        if any(map(str.startswith, col, repeat(_TRIGGER_PREFIXES))):
            return [safe_text(v) for v in col]
        return col
    return [_text_cell(v) for v in col]


def _numeric_column(col: Sequence[Any], column: str) -> Sequence[Any]:
    if _INTS.issuperset(map(type, col)):
        return col
    return [_numeric_cell(v, column) for v in col]


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON Lines: {value!r}")


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """Write one JSON object per line (Decimal as a decimal string, dates ISO 8601); return the count.

    Streams (one row in memory at a time). Text is not prefixed: JSON is not opened by spreadsheets.
    NaN/Infinity are refused (not JSON)."""
    encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default).encode
    written = 0
    for row in rows:
        out.write(encode(row if isinstance(row, dict) else dict(row)) + "\n")
        written += 1
    return written


_usage_fields = attrgetter(*USAGE_COLUMNS)


def usage_records(ledger_rows: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """Usage rows (``LedgerRow`` or anything with the ``USAGE_COLUMNS`` attributes) as tuples in
    ``USAGE_COLUMNS`` order, for ``write_csv(..., USAGE_COLUMNS, out, USAGE_NUMERIC_COLUMNS)``."""
    return map(_usage_fields, ledger_rows)


def usage_mappings(ledger_rows: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """Usage rows as dicts keyed by ``USAGE_COLUMNS``, for ``write_jsonl``."""
    for record in usage_records(ledger_rows):
        yield dict(zip(USAGE_COLUMNS, record, strict=True))
