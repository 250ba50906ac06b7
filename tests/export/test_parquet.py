"""usage export --format parquet: a Hive-partitioned dataset that reads back to the CSV export's sums."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from conftest import run_cli

from apimon_cli.export.parquet import dataset_partitioning, write_dataset
from apimon_cli.ledger import Ledger
from apimon_cli.model import UsageRow


def fill(location) -> None:
    with Ledger.open(location) as ledger:
        ledger.replace_window("local", "gw", date(2026, 11, 1), date(2026, 11, 30), [
            UsageRow(f"sub{i}", "pro" if i % 2 else "starter", f"2026-11-{d:02d}", m, i * d + (m == "total"))
            for d in (1, 2, 17) for i in range(40) for m in ("success", "blocked", "total")
        ], pulled_at="2026-12-01T08:00:00+00:00")
        ledger.replace_window("aws", "acct", date(2026, 10, 31), date(2026, 10, 31), [
            UsageRow("=HYPERLINK()", "pro", "2026-10-31", "success", 2**40)], pulled_at="2026-11-01T00:00:05+00:00")


def test_parquet_dataset_gives_the_csv_exports_sums_and_types(tmp_path, ledger_location):
    fill(ledger_location)
    where = str(getattr(ledger_location, "url", ledger_location))
    r = run_cli("usage", "export", "--format", "csv", "--ledger", where)
    assert r.code == 0, r.output
    csv_rows = list(csv.DictReader(io.StringIO(r.stdout)))
    out = tmp_path / "dataset"
    r = run_cli("usage", "export", "--format", "parquet", "--out", str(out), "--ledger", where)
    assert r.code == 0, r.output
    assert f"Wrote {len(csv_rows):,} usage rows" in r.stderr + r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["day=2026-10-31", "day=2026-11-01", "day=2026-11-02",
                                                     "day=2026-11-17"]
    table = ds.dataset(out, format="parquet", partitioning=dataset_partitioning()).to_table()
    assert table.schema.field("count").type == pa.int64()
    assert table.schema.field("day").type == pa.date32()
    assert table.schema.field("pulled_at").type == pa.timestamp("us", tz="UTC")
    assert table.num_rows == len(csv_rows)

    def key(day, sub, metric):
        return (str(day), sub.lstrip("'") if sub.startswith("'=") else sub, metric)

    from_csv = Counter()
    for row in csv_rows:
        from_csv[key(row["day"], row["subscriber"], row["metric"])] += int(row["count"])
    from_parquet = Counter()
    for row in table.to_pylist():
        from_parquet[key(row["day"], row["subscriber"], row["metric"])] += row["count"]
    assert from_parquet == from_csv and sum(from_csv.values()) > 2**40
    stamps = {row["pulled_at"] for row in table.to_pylist()}
    assert stamps == {datetime(2026, 12, 1, 8, tzinfo=UTC), datetime(2026, 11, 1, 0, 0, 5, tzinfo=UTC)}
    # a window of days: only those partitions
    part = tmp_path / "nov2"
    r = run_cli("usage", "export", "--format", "parquet", "--out", str(part), "--from", "2026-11-02",
                "--to", "2026-11-02", "--ledger", where)
    assert r.code == 0 and [p.name for p in part.iterdir()] == ["day=2026-11-02"]


def test_rows_go_out_in_row_groups_and_a_full_directory_is_refused(tmp_path):
    path = tmp_path / "l.db"
    fill(path)
    with Ledger.open(path) as ledger:
        assert write_dataset(ledger.iter_rows(), tmp_path / "d", row_group=25) == 361
    meta = pq.ParquetFile(tmp_path / "d" / "day=2026-11-01" / "part-0.parquet").metadata
    assert meta.num_rows == 120 and meta.num_row_groups == 5  # 25-row groups: bounded memory per day file
    r = run_cli("usage", "export", "--format", "parquet", "--out", str(tmp_path / "d"), "--ledger", str(path))
    assert r.code == 1 and "not empty" in r.stderr
    r = run_cli("usage", "export", "--format", "parquet", "--ledger", str(path))
    assert r.code == 1 and "--out DIR" in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
