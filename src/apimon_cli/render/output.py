"""The one place that writes to the terminal. Everything passes the masker: values that came from the
environment (``${env:...}`` and imported keys) never reach stdout or stderr."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from typing import Any


def renderings(secret: str) -> set[str]:
    """Every way ``secret`` can appear in what apimon writes: as is, inside a repr() (``\\`` and quotes
    escaped, either quote style), inside JSON (``\\``, ``"``, and ``\\u00e9`` with ensure_ascii), inside a CSV
    cell (``""``) and inside HTML (``&quot;``, ``&amp;``)."""
    import html

    forms = {
        secret,
        repr(secret)[1:-1],
        repr(secret + "'\"")[1:-4],  # the single-quote style a longer repr() may use
        ascii(secret)[1:-1],
        ascii(secret + "'\"")[1:-4],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        secret.replace('"', '""'),
        html.escape(secret, quote=True),
    }
    return {f for f in forms if f}


MIN_SECRET = 4  # shorter values are not masked: "***" in place of every "true" would hide the output


class Masker:
    """Replaces every rendering of a secret value (see ``renderings``) with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._raw: set[str] = set()
        self._prefixes: set[str] | None = None
        self._longest = 0
        self.secrets: list[str] = []
        self.add(*secrets)

    def add(self, *values: str | None) -> None:
        new = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET} - self._raw
        if not new:
            return
        self._raw |= new
        self._prefixes = None
        forms = set(self.secrets)
        for v in new:
            forms |= renderings(v)
        # longest first so a secret containing another is masked whole
        self.secrets = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text

    def cut(self, text: str) -> str:
        """Like calling the masker, and also masks the start of a secret that a message cut short
        (``'sk_live_4eC39...'``): the longest part before ``...`` or ``…`` that begins a secret."""
        text = self(text)
        if "..." not in text and "…" not in text:
            return text
        if self._prefixes is None:  # built once: a set lookup per length instead of a scan per secret
            self._prefixes = {s[:k] for s in self.secrets for k in range(MIN_SECRET, len(s))}
            self._longest = max((len(s) for s in self.secrets), default=0)
        out = []
        for piece in re.split(r"(\.\.\.|…)", text):
            if piece in ("...", "…") and out:
                before = out[-1]
                for k in range(min(len(before), self._longest), MIN_SECRET - 1, -1):
                    if before[-k:] in self._prefixes:
                        out[-1] = before[:-k] + "***"
                        break
            out.append(piece)
        return "".join(out)


def _raise_broken_pipe() -> None:
    import errno

    raise BrokenPipeError(errno.EPIPE, "Broken pipe")


class Output:
    """stdout for results (tables, JSON), stderr for messages and diagnostics."""

    def __init__(self, masker: Masker | None = None, *, json_mode: bool = False):
        from rich.console import Console  # rich is imported only once something is printed

        self.mask = masker or Masker()
        self.json_mode = json_mode
        import os

        # NO_COLOR (or --no-color) means no escape codes at all: no colour, no bold, nothing for a CI log to strip
        plain = {"color_system": None} if os.environ.get("NO_COLOR") else {}
        self.out = Console(highlight=False, soft_wrap=True, **plain)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, **plain)
        # a closed pipe (`| head`): raise, for the CLI's one quiet handling (cli/pipes.py), instead of rich's
        # own SystemExit(1)
        self.out.on_broken_pipe = self.err.on_broken_pipe = _raise_broken_pipe

    def to_stderr(self) -> Output:
        """The same output with results going to stderr too (the plan shown before `apply --json` asks)."""
        view = object.__new__(Output)
        view.mask, view.json_mode, view.out, view.err = self.mask, False, self.err, self.err
        return view

    @property
    def interactive(self) -> bool:
        return sys.stdin.isatty() and self.err.is_terminal

    def print(self, text: str = "", style: str | None = None) -> None:
        self.out.print(self._escape(self.mask(text)), style=style)

    def rich(self, renderable: Any) -> None:
        """A rich renderable built from masked text (tables)."""
        self.out.print(renderable)

    def info(self, text: str, style: str | None = None) -> None:
        self.err.print(self._escape(self.mask(text)), style=style)

    def error(self, text: str) -> None:
        self.err.print(self._escape(self.mask(text)), style="red")

    def warning(self, text: str) -> None:
        self.err.print(self._escape(self.mask(text)), style="yellow")

    def json(self, data: Any) -> None:
        text = json.dumps(data, indent=2, sort_keys=False, default=str)
        sys.stdout.write(self.mask(text) + "\n")
        sys.stdout.flush()

    @staticmethod
    def _escape(text: str) -> str:
        from rich.markup import escape

        return escape(text)
