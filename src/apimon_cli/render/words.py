"""Wording shared by every message: `1 change`, `6 changes` (never `6 change(s)`)."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``count(1, "key")`` -> "1 key"; ``count(6, "key")`` -> "6 keys"; irregular plurals as ``plural``."""
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"
