"""The resource kinds apimon reconciles, and how they depend on each other.

A kind names its section of ``DesiredState``/``LiveState`` (``products``), the fields the diff compares,
and the kind it belongs to (a subscriber belongs to a product: ``parent="product"``, named by its
``product`` field). Everything that orders changes derives from this table:

- the diff lists changes kind by kind in registration order (parents first) for creates, updates and
  replacements, then deletes in reverse order (children first) -- ``rank``;
- the solver makes a change that needs its parent (a create, a replacement, an adoption or a move) wait for
  the parent's own create/update, and a parent's delete wait for the changes that leave it --
  ``dependencies`` in ``reconcile.solver``.

To add a kind (the key-rotation work adds ``key``, a child of ``subscriber``): give ``DesiredState`` and
``LiveState`` a section for it, write its ``fields`` function, and ``register`` it after its parent. The
diff, the solver, the engine's JSON and the printer then handle it; providers add ``create_key``,
``update_key``, ``delete_key`` (and optionally ``replace_key``) actions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .fields import product_fields, subscriber_fields


@dataclass(frozen=True)
class Kind:
    name: str  # "subscriber": Change.kind, handles' (kind, id), Unmanaged.kind
    section: str  # attribute of DesiredState and LiveState holding id -> resource: "subscribers"
    fields: Callable[[Any], dict[str, object]]  # the comparable fields of a resource (reconcile.fields)
    parent: str | None = None  # the kind this one belongs to
    parent_field: str | None = None  # the field naming the parent; a change to it is a move
    secret: Callable[[Any], str | None] | None = None  # the desired secret value, compared by fingerprint
    fingerprints: Callable[[Any], dict[str, str]] | None = None  # LiveState -> id -> live secret's fingerprint

    def parents(self, resource: Any) -> tuple[str, ...]:
        """The ids of the parents a resource is attached to (a live key can be in several AWS plans:
        "a, b")."""
        if self.parent_field is None or resource is None:
            return ()
        value = getattr(resource, self.parent_field, "") or ""
        return tuple(p.strip() for p in value.split(",") if p.strip())


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if kind.parent is not None and kind.parent not in _KINDS:
        raise ValueError(f"kind {kind.name}: register its parent {kind.parent} first")
    _KINDS[kind.name] = kind
    return kind


def kinds() -> list[Kind]:
    """Every kind, parents before children."""
    return list(_KINDS.values())


def kind(name: str) -> Kind:
    return _KINDS[name]


def rank(kind_name: str, action: str) -> int:
    """A change's place in apply order: creates, updates and replacements of parents before children,
    then deletes of children before parents."""
    names = list(_KINDS)
    i = names.index(kind_name)
    return i if action != "delete" else 2 * len(names) - 1 - i


PRODUCT = register(Kind("product", "products", product_fields))
SUBSCRIBER = register(Kind("subscriber", "subscribers", subscriber_fields, parent="product", parent_field="product",
                           secret=lambda s: s.key_value, fingerprints=lambda live: live.key_fingerprints))
