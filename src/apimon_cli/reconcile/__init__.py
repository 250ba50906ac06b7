"""The reconcile core: change types (``changes``), resource kinds and their dependencies (``kinds``), fields
compared by meaning (``fields``), the pure diff (``diff``), the one solver (``solver``) and the engine that
plans and applies (``engine``; saved plans in ``saved``). See docs/architecture.md.

The names below are loaded on first use, so importing one submodule (the registry needs ``changes``) does
not load the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ACTIONS": "changes", "SENSITIVE": "changes", "Action": "changes", "Change": "changes", "ChangeSet": "changes",
    "FieldChange": "changes", "Replacement": "changes", "change_to_json": "changes", "changeset_to_json": "changes",
    "compute_changes": "diff", "live_fingerprint": "diff", "key_fingerprint": "fields",
    "Kind": "kinds", "kinds": "kinds", "rank": "kinds", "register": "kinds",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(name)
