"""Export writers: streaming CSV (RFC 4180, formula-injection safe) and JSON Lines."""

from apimon_cli.export.writers import (
    USAGE_COLUMNS,
    USAGE_NUMERIC_COLUMNS,
    safe_text,
    usage_mappings,
    usage_records,
    write_csv,
    write_jsonl,
)

__all__ = [
    "USAGE_COLUMNS",
    "USAGE_NUMERIC_COLUMNS",
    "safe_text",
    "usage_mappings",
    "usage_records",
    "write_csv",
    "write_jsonl",
]
