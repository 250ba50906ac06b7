"""The usage ledger: daily gateway counters pulled from providers, stored locally for billing."""

from apimon_cli.ledger.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Ledger,
    LedgerError,
    LedgerRow,
    PullReport,
    UsageChange,
    UsageRevision,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Ledger",
    "LedgerError",
    "LedgerRow",
    "PullReport",
    "UsageChange",
    "UsageRevision",
]
