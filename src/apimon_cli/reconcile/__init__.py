"""The reconcile core: change types (``changes``), resource kinds and their dependencies (``kinds``), fields
compared by meaning (``fields``), the pure diff (``diff``), the one solver (``solver``) and the engine that
plans and applies (``engine``; saved plans in ``saved``). See docs/architecture.md.

Importing this package loads only the pure parts; ``engine`` and ``saved`` are imported where needed.
"""

from .changes import ACTIONS, SENSITIVE, Action, Change, ChangeSet, FieldChange, change_to_json, changeset_to_json
from .diff import Replacement, compute_changes, live_fingerprint
from .fields import key_fingerprint
from .kinds import Kind, kinds, rank, register

__all__ = [
    "ACTIONS",
    "SENSITIVE",
    "Action",
    "Change",
    "ChangeSet",
    "FieldChange",
    "Kind",
    "Replacement",
    "change_to_json",
    "changeset_to_json",
    "compute_changes",
    "key_fingerprint",
    "kinds",
    "live_fingerprint",
    "rank",
    "register",
]
