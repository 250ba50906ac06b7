"""The change types: what the diff emits, the engine applies and the printer shows. Plain data, no I/O.

A change is one resource of one kind (``reconcile.kinds``) going from its live state to the desired one:

- ``create``: the resource does not exist on the gateway;
- ``update``: it exists and changes in place (``fields`` lists what changes, before -> after);
- ``delete``: apimon owns it and the plan no longer has it;
- ``replace``: it changes, but the gateway cannot change it in place: a new one is made and the old one
  removed (``reason`` says why, e.g. "AWS cannot change an imported key value"; ``create_before_delete``
  says in which order, Terraform's ``create_before_destroy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["create", "update", "delete", "replace"]
ACTIONS: tuple[Action, ...] = ("create", "update", "delete", "replace")
SENSITIVE = "(sensitive)"
#: the JSON/summary name of each action's list
LISTED = {"create": "creating", "update": "updating", "delete": "deleting", "replace": "replacing"}


@dataclass(frozen=True)
class FieldChange:
    field: str  # flattened field name: "rate_limit.burst", "metadata.customer_id", "key"
    before: object  # as shown: money as written ("29.00"), lists joined, key values never (SENSITIVE)
    after: object


@dataclass(frozen=True)
class Change:
    action: Action
    kind: str  # a registered kind: "product", "subscriber"
    id: str
    fields: tuple[FieldChange, ...] = ()
    desired: Any = None  # the resource as the plan wants it (None for a delete)
    live: Any = None  # the resource as the gateway holds it (None for a create)
    adopt: bool = False  # taking over a resource apimon did not create
    reason: str = ""  # replace: why it cannot be changed in place
    create_before_delete: bool = True  # replace: make the new one before removing the old one

    @property
    def label(self) -> str:
        return f"{self.kind} {self.id}"

    def changed(self, name: str) -> bool:
        """Whether field ``name`` (or a field under it: "pricing" covers "pricing.fee") changes."""
        return any(f.field == name or f.field.startswith(name + ".") for f in self.fields)


@dataclass(frozen=True)
class Replacement:
    """A field the gateway cannot change in place: changing it replaces the resource (a provider's
    capability, ``providers.registry.Capabilities.replacements``)."""

    kind: str
    field: str
    reason: str  # shown with the replacement: "AWS cannot change an imported key value"
    create_before_delete: bool = True


@dataclass
class ChangeSet:
    changes: list[Change] = field(default_factory=list)  # in apply order (see reconcile.kinds.rank)
    unmanaged: list = field(default_factory=list)  # model.Unmanaged: reported, never touched
    conflicts: list[str] = field(default_factory=list)  # desired ids that exist unmanaged
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # provider remarks, e.g. quota-bound duration

    def of(self, action: Action) -> list[Change]:
        return [c for c in self.changes if c.action == action]

    @property
    def summary(self) -> dict[str, int]:
        counts = {LISTED[a]: len(self.of(a)) for a in ("create", "update", "delete", "replace")}
        return {**counts, "total": sum(counts.values())}

    @property
    def empty(self) -> bool:
        return not self.changes


def change_to_json(c: Change) -> dict:
    out = {"kind": c.kind, "id": c.id, "action": c.action, "adopt": c.adopt,
           "fields": {f.field: {"before": f.before, "after": f.after} for f in c.fields}}
    if c.action == "replace":
        out["reason"] = c.reason
        out["create_before_delete"] = c.create_before_delete
    return out


def changeset_to_json(cs: ChangeSet) -> dict:
    return {
        "changes": {LISTED[a]: [change_to_json(c) for c in cs.of(a)] for a in ("create", "update", "delete",
                                                                               "replace")},
        "summary": cs.summary,
        "unmanaged": [{"kind": u.kind, "name": u.name, "detail": u.detail} for u in cs.unmanaged],
        "conflicts": cs.conflicts,
        "warnings": cs.warnings,
        "notes": cs.notes,
    }
