"""The one place that writes to the terminal. Everything passes the masker: values that came from the
environment (``${env:...}`` and imported keys) never reach stdout or stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any


class Masker:
    def __init__(self, secrets: Iterable[str] = ()):
        # longest first so a secret containing another is masked whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, *values: str | None) -> None:
        self.secrets = sorted({*self.secrets, *(v for v in values if v and len(v) >= 4)}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text


def _raise_broken_pipe() -> None:
    import errno

    raise BrokenPipeError(errno.EPIPE, "Broken pipe")


class Output:
    """stdout for results (tables, JSON), stderr for messages and diagnostics."""

    def __init__(self, masker: Masker | None = None, *, json_mode: bool = False):
        from rich.console import Console  # rich is imported only once something is printed

        self.mask = masker or Masker()
        self.json_mode = json_mode
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        # a closed pipe (`| head`): raise, for the CLI's one quiet handling (cli/pipes.py), instead of rich's
        # own SystemExit(1)
        self.out.on_broken_pipe = self.err.on_broken_pipe = _raise_broken_pipe

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
