"""CSV / JSON Lines writers: RFC 4180, formula injection, numeric cells untouched, streaming."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from apimon_cli.export import (
    USAGE_COLUMNS,
    USAGE_NUMERIC_COLUMNS,
    safe_text,
    usage_mappings,
    usage_records,
    write_csv,
    write_jsonl,
)
from apimon_cli.ledger import Ledger
from apimon_cli.model import UsageRow


def read_back(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("=SUM(A1)", "'=SUM(A1)"),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@x", "'@x"),
        ("\tX", "'\tX"),
        ("\rX", "'\rX"),
        ('=HYPERLINK("http://evil","x")', '\'=HYPERLINK("http://evil","x")'),
        ("acme", "acme"),
        ("a=b", "a=b"),
        ("", ""),
        ("'already", "'already"),
        (" =1", " =1"),
    ],
)
def test_safe_text(value, expected):
    assert safe_text(value) == expected


def test_text_cells_are_protected_numeric_cells_are_not():
    out = io.StringIO(newline="")
    rows = [
        ("=SUM(A1)", "-3.00", Decimal("-3.00")),
        ("+1", Decimal("12.50"), -2),
        ("-2", "+4", Decimal("1E+2")),
        ("@x", None, Decimal("0.000000000001")),
        ("\tX", "", 0),
        ("\rX", "7", 7),
    ]
    assert write_csv(rows, ["description", "quantity", "amount"], out, {"quantity", "amount"}) == 6
    assert read_back(out.getvalue()) == [
        ["description", "quantity", "amount"],
        ["'=SUM(A1)", "-3.00", "-3.00"],
        ["'+1", "12.50", "-2"],
        ["'-2", "+4", "100"],
        ["'@x", "", "0.000000000001"],
        ["'\tX", "", "0"],
        ["'\rX", "7", "7"],
    ]


def test_negative_amount_as_text_column_is_prefixed_but_numeric_column_untouched():
    out = io.StringIO(newline="")
    write_csv([("-3.00", "-3.00")], ["note", "amount"], out, {"amount"})
    assert out.getvalue() == "note,amount\r\n'-3.00,-3.00\r\n"


@pytest.mark.parametrize("bad", ["=1+1", "-2+cmd|' /C calc'!A0", "12 EUR", "@SUM(1)", float("nan"), Decimal("NaN")])
def test_non_numbers_in_a_numeric_column_are_refused(bad):
    with pytest.raises(ValueError, match="'amount' is numeric"):
        write_csv([("x", bad)], ["note", "amount"], io.StringIO(), {"amount"})


def test_numbers_in_a_numeric_column_pass_unchanged():
    out = io.StringIO(newline="")
    values = ["-3.00", "+4", "1e5", ".5", "0", "", 12, -7, None, Decimal("-0.50"), 2.5]
    write_csv([(v,) for v in values], ["amount"], out, {"amount"})
    assert [r[0] for r in read_back(out.getvalue())[1:]] == [
        "-3.00",
        "+4",
        "1e5",
        ".5",
        "0",
        "",
        "12",
        "-7",
        "",
        "-0.50",
        "2.5",
    ]


def test_rfc4180_round_trip_of_quotes_newlines_commas():
    nasty = [
        'say "hi"',
        "two\nlines",
        "crlf\r\ninside",
        "a,b,c",
        '",\n"',
        "unicode ☃ café",
        "  padded  ",
    ]
    out = io.StringIO(newline="")
    write_csv([(v, i) for i, v in enumerate(nasty)], ["text", "n"], out, {"n"})
    text = out.getvalue()
    assert text.startswith("text,n\r\n") and text.endswith("\r\n")
    assert '"say ""hi"""' in text  # RFC 4180 quote doubling
    assert read_back(text)[1:] == [[v, str(i)] for i, v in enumerate(nasty)]


def test_text_cells_of_other_types():
    out = io.StringIO(newline="")
    write_csv(
        [(date(2026, 1, 2), datetime(2026, 1, 2, 3, 4, tzinfo=UTC), None, -5)],
        ["day", "at", "none", "n_as_text"],
        out,
        set(),
    )
    assert read_back(out.getvalue())[1] == ["2026-01-02", "2026-01-02T03:04:00+00:00", "", "'-5"]


def test_header_cells_are_protected_too():
    out = io.StringIO(newline="")
    write_csv([], ["invoice_id", "=cmd"], out, set())
    assert out.getvalue() == "invoice_id,'=cmd\r\n"


def test_bad_rows_and_columns_are_rejected():
    with pytest.raises(ValueError, match="expected 2"):
        write_csv([("a",)], ["x", "y"], io.StringIO(), set())
    with pytest.raises(ValueError, match="numeric columns"):
        write_csv([], ["x"], io.StringIO(), {"y"})


def test_write_csv_streams():
    out = io.StringIO(newline="")

    def rows():
        for i in range(10_000):
            if i == 5_000:  # the first half is already written while the source is still producing
                assert out.getvalue().count("\r\n") >= 4_000
            yield (f"s{i}", i)

    assert write_csv(rows(), ["s", "n"], out, {"n"}) == 10_000


def test_write_jsonl():
    out = io.StringIO()
    rows = [
        {"amount": Decimal("-3.00"), "day": date(2026, 1, 2), "text": '=SUM(A1)\n"q"', "n": 3},
        {"amount": Decimal("1E+2"), "at": datetime(2026, 1, 2, tzinfo=UTC), "none": None},
    ]
    assert write_jsonl(iter(rows), out) == 2
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3
    assert [json.loads(line) for line in lines[:2]] == [
        {"amount": "-3.00", "day": "2026-01-02", "text": '=SUM(A1)\n"q"', "n": 3},
        {"amount": "100", "at": "2026-01-02T00:00:00+00:00", "none": None},
    ]
    with pytest.raises(TypeError):
        write_jsonl([{"x": object()}], io.StringIO())
    with pytest.raises(ValueError):
        write_jsonl([{"x": float("inf")}], io.StringIO())


def test_usage_export_from_a_ledger(tmp_path):
    with Ledger.open(tmp_path / "l.db") as ledger:
        ledger.replace_window(
            "aws",
            "=acct",
            date(2026, 1, 1),
            date(2026, 1, 31),
            [
                UsageRow("-bob", "gold", "2026-01-02", "success", 3),
                UsageRow("acme", "gold", "2026-01-01", "total", 5),
            ],
            pulled_at="2026-02-01T00:00:00+00:00",
        )
        out = io.StringIO(newline="")
        write_csv(usage_records(ledger.iter_rows()), USAGE_COLUMNS, out, USAGE_NUMERIC_COLUMNS)
        jl = io.StringIO()
        write_jsonl(usage_mappings(ledger.iter_rows()), jl)
    assert read_back(out.getvalue()) == [
        list(USAGE_COLUMNS),
        ["aws", "'=acct", "2026-01-01", "acme", "gold", "total", "5", "2026-02-01T00:00:00+00:00"],
        ["aws", "'=acct", "2026-01-02", "'-bob", "gold", "success", "3", "2026-02-01T00:00:00+00:00"],
    ]
    assert json.loads(jl.getvalue().splitlines()[1]) == {
        "provider": "aws",
        "target": "=acct",
        "day": "2026-01-02",
        "subscriber": "-bob",
        "product": "gold",
        "metric": "success",
        "count": 3,
        "pulled_at": "2026-02-01T00:00:00+00:00",
    }
