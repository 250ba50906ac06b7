"""`usage export --format parquet --out DIR`: the ledger as a Hive-partitioned Parquet dataset (pyarrow).

Layout: ``DIR/day=YYYY-MM-DD/part-0.parquet``, one file per day. The columns are the CSV export's
(``USAGE_COLUMNS``) with Parquet types: text columns ``string``, ``count`` ``int64``, ``pulled_at``
``timestamp[us, UTC]`` (null for rows migrated from schema 1) and ``day`` a ``date``, held in the
partition path as Hive readers expect (a column stored in both the files and the path conflicts in
pyarrow). DuckDB's ``read_parquet('DIR/**/*.parquet', hive_partitioning = true)`` reads ``day`` as a DATE;
pyarrow needs the partition type given: ``ds.dataset(DIR, partitioning=ds.partitioning(pa.schema([("day",
pa.date32())]), flavor="hive"))`` (``DATASET_PARTITIONING``).

Streaming: the ledger yields rows ordered by day, so one day's file is open at a time and rows go out in
row groups of ``ROW_GROUP`` rows: memory is bounded by one row group whatever the ledger's size.
The dataset is written into a hidden directory beside DIR and renamed into place when complete: an
interrupted export leaves no half dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

ROW_GROUP = 64 * 1024

_TEXT = ("provider", "target", "subscriber", "product", "metric")


class ParquetExportError(Exception):
    """The dataset cannot be written (directory not empty, not writable, a row pyarrow refuses)."""


def file_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("provider", pa.string()),
            ("target", pa.string()),
            ("subscriber", pa.string()),
            ("product", pa.string()),
            ("metric", pa.string()),
            ("count", pa.int64()),
            ("pulled_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def dataset_partitioning():
    """The partitioning to hand ``pyarrow.dataset.dataset`` so that ``day`` reads back as a date."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    return ds.partitioning(pa.schema([("day", pa.date32())]), flavor="hive")


def _timestamp(text: str | None) -> datetime | None:
    if text is None or text == "":
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ParquetExportError(f"ledger row has a pulled_at that is not an ISO timestamp: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def write_dataset(rows: Iterable, out_dir: str | os.PathLike, *, row_group: int = ROW_GROUP) -> int:
    """Write ``rows`` (``LedgerRow``s ordered by day) as a Hive-partitioned dataset at ``out_dir``; returns
    the row count. ``out_dir`` must not exist or be an empty directory."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ParquetExportError("--format parquet needs pyarrow: pip install 'apimon[parquet]'") from None

    target = Path(out_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        what = "is not a directory" if not target.is_dir() else "is a directory that is not empty"
        raise ParquetExportError(f"--out {target} {what}; give a new or empty directory for the dataset")
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.apimon-", dir=parent))
    except OSError as exc:
        raise ParquetExportError(f"cannot write {target}: {exc.strerror or exc}") from None
    schema = file_schema()
    total = 0
    writer = None
    day = None
    cols: dict[str, list] = {name: [] for name in schema.names}
    stamps: dict[str | None, datetime | None] = {}  # pulled_at repeats (one per pull): parse each once

    def flush() -> None:
        if cols["count"]:
            writer.write_table(pa.Table.from_pydict(cols, schema=schema), row_group_size=row_group)
            for v in cols.values():
                v.clear()

    try:
        for r in rows:
            if r.day != day:
                if writer is not None:
                    flush()
                    writer.close()
                day = r.day
                part = tmp / f"day={day}"
                part.mkdir()
                writer = pq.ParquetWriter(part / "part-0.parquet", schema, compression="zstd")
            cols["provider"].append(r.provider)
            cols["target"].append(r.target)
            cols["subscriber"].append(r.subscriber)
            cols["product"].append(r.product)
            cols["metric"].append(r.metric)
            cols["count"].append(r.count)
            at = r.pulled_at
            stamp = stamps.get(at, stamps)
            if stamp is stamps:
                if len(stamps) > 4096:
                    stamps.clear()
                stamp = stamps[at] = _timestamp(at)
            cols["pulled_at"].append(stamp)
            total += 1
            if len(cols["count"]) >= row_group:
                flush()
        if writer is not None:
            flush()
            writer.close()
            writer = None
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(tmp, target)
    except OSError as exc:
        raise ParquetExportError(f"cannot write {target}: {exc.strerror or exc}") from None
    except (pa.ArrowException, ValueError) as exc:
        raise ParquetExportError(f"cannot write {target}: {exc}") from None
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return total
