"""`apimon portal build`: a static pricing page and per-subscriber statements (see ``portal.site``)."""

from __future__ import annotations

from datetime import date
from pathlib import Path


def build(desired, book, window, provider: str, target: str, *, tokens_file: Path, as_of: date,
          title: str = "API pricing", quantities=None, rotate=(), mask=None) -> tuple[dict[str, bytes], dict[str, str]]:
    """(relative path -> content, subscriber -> token) of the site for ``window``, from the ledger ``book``."""
    from ..report.quota import lookback_start
    from ..report.source import period_invoices, read_usage
    from .site import EXAMPLES, build_site
    from .tokens import statement_tokens

    usage = read_usage(book, lookback_start(window.start), window.end, provider, target)
    invoices = period_invoices(desired, window, book, provider, target)
    tokens = statement_tokens(tokens_file, sorted(desired.subscribers), rotate)
    files = build_site(desired, window, usage, invoices, tokens, as_of, title=title,
                       quantities=quantities or EXAMPLES, mask=mask)
    return files, tokens
