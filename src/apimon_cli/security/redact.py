"""Values never printed by apimon's own diagnostics (the debug log, waiting notices): the plan's key values
and secrets (added by the plan loader) and what providers learn at run time (generated key values)."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

_SECRETS: set[str] = set()


def add_secrets(values: Iterable[str | None]) -> None:
    _SECRETS.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    """``text`` with every known secret (also URL-encoded) replaced by ``***``."""
    for s in sorted(_SECRETS, key=len, reverse=True):
        if s in text:
            text = text.replace(s, "***")
        q = quote(s, safe="")
        if q != s and q in text:
            text = text.replace(q, "***")
    return text
