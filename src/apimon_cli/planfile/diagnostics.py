"""Validation findings: one line each, ``FILE:LINE:COL: error: field.path: what is wrong; what is allowed``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int
    col: int
    severity: Literal["error", "warning"]
    path: str  # dotted field path, "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {where}{self.message}"


def dotted(path: Iterable) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def closest(word: object, choices: Iterable[str]) -> str | None:
    """The choice ``word`` is most likely a misspelling of, if any."""
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def suggest(word: object, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' for a near miss, else ''."""
    match = closest(word, choices)
    return f' (did you mean "{match}"?)' if match else ""


class PlanError(Exception):
    """Raised when a plan does not validate; carries every finding."""

    def __init__(self, diagnostics: list[Diagnostic]):
        super().__init__("\n".join(str(d) for d in diagnostics))
        self.diagnostics = diagnostics
