"""The local target: a gateway state in SQLite (``state``), its provider (``provider``), its registry entry
(``spec``). ``apimon gateway serve`` (``apimon_cli.gateway``) serves the same state; it reaches it through
``connect_state`` and ``state_dir_of``, importable from here (loaded on first use: the registry imports this
package for ``spec`` on `apimon --help`)."""

from __future__ import annotations

from typing import Any

__all__ = ["LocalProvider", "connect_state", "database_of", "state_dir_of"]


def __getattr__(name: str) -> Any:
    if name in ("connect_state", "state_dir_of", "database_of"):
        from . import state

        return getattr(state, name)
    if name == "LocalProvider":  # the provider imports the plan-file package (pydantic)
        from .provider import LocalProvider

        return LocalProvider
    raise AttributeError(name)
