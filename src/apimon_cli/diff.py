"""Desired vs live -> ordered changes. Pure and provider-neutral: no I/O, no printing.

A provider tells which fields it can store (``stores``); fields it cannot store are never a diff.
Order: products created/updated first, then subscribers created/updated, then subscribers deleted,
then products deleted (a subscriber's key needs its product; a product goes after its subscribers).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from .model import DesiredState, LiveState, Pricing, Product, Subscriber, Unmanaged

Action = Literal["create", "update", "delete"]
SENSITIVE = "(sensitive)"


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: object
    after: object


@dataclass(frozen=True)
class Change:
    action: Action
    kind: Literal["product", "subscriber"]
    id: str
    fields: tuple[FieldChange, ...] = ()
    desired: Product | Subscriber | None = None
    live: Product | Subscriber | None = None
    adopt: bool = False  # taking over a resource apimon did not create

    @property
    def label(self) -> str:
        return f"{self.kind} {self.id}"

    def changed(self, name: str) -> bool:
        return any(f.field == name or f.field.startswith(name + ".") for f in self.fields)


@dataclass
class ChangeSet:
    changes: list[Change] = field(default_factory=list)
    unmanaged: list[Unmanaged] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # desired ids that exist unmanaged
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # provider remarks, e.g. quota-bound duration

    def of(self, action: Action) -> list[Change]:
        return [c for c in self.changes if c.action == action]

    @property
    def summary(self) -> dict[str, int]:
        c, u, d = (len(self.of(a)) for a in ("create", "update", "delete"))
        return {"creating": c, "updating": u, "deleting": d, "total": c + u + d}

    @property
    def empty(self) -> bool:
        return not self.changes


# ---------------------------------------------------------------- flattening to comparable fields

def _money(value: Decimal | None) -> str | None:
    """An amount as written in the plan ("29.00"); ``_canonical`` makes "29.00" and "29" compare equal."""
    return None if value is None else format(value, "f")


_DECIMAL = re.compile(r"\d+\.\d+")


def _canonical(value: object) -> object:
    if isinstance(value, str) and "." in value:
        return _DECIMAL.sub(lambda m: format(Decimal(m.group(0)).normalize(), "f"), value)
    return value


def comparable(fields: dict[str, object]) -> dict[str, object]:
    """Flattened fields in the form the diff compares them ("29.00" and "29" equal)."""
    return {k: _canonical(v) for k, v in fields.items()}


def flatten_pricing(p: Pricing) -> dict[str, object]:
    out: dict[str, object] = {"pricing.model": p.model}
    for name in ("fee", "setup_fee", "unit_price", "minimum", "maximum"):
        v = getattr(p, name)
        if v is not None:
            out[f"pricing.{name}"] = _money(v)
    if p.included:
        out["pricing.included"] = p.included
    if p.package:
        out["pricing.package"] = f"size={p.package.size} price={_money(p.package.price)} round={p.package.round}"
    if p.tiers:
        parts = []
        for t in p.tiers:
            s = f"up_to={'inf' if t.up_to is None else t.up_to}"
            if t.unit_price is not None:
                s += f" unit_price={_money(t.unit_price)}"
            if t.flat_fee is not None:
                s += f" flat_fee={_money(t.flat_fee)}"
            parts.append(s)
        out["pricing.tiers"] = "; ".join(parts)
    return out


def flatten_product(p: Product) -> dict[str, object]:
    out: dict[str, object] = {"display_name": p.display_name, "description": p.description,
                              "apis": ", ".join(sorted(p.apis))}
    if p.rate_limit:
        out["rate_limit.rate"] = p.rate_limit.rate
        out["rate_limit.burst"] = p.rate_limit.burst
    if p.quota:
        out["quota.limit"] = p.quota.limit
        out["quota.period"] = p.quota.period
    if p.max_concurrent is not None:
        out["max_concurrent"] = p.max_concurrent
    out.update(flatten_pricing(p.pricing))
    return out


def flatten_subscriber(s: Subscriber) -> dict[str, object]:
    out: dict[str, object] = {"product": s.product, "enabled": s.enabled}
    if s.email is not None:
        out["email"] = s.email
    for k, v in s.metadata:
        out[f"metadata.{k}"] = v
    return out


def key_fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def _field_changes(before: dict, after: dict, stores: Callable[[str], bool]) -> list[FieldChange]:
    out = []
    for name in sorted(set(before) | set(after)):
        if not stores(name):
            continue
        b, a = before.get(name), after.get(name)
        if _canonical(b) != _canonical(a):
            out.append(FieldChange(name, b, a))
    return out


def compute_changes(desired: DesiredState, live: LiveState, *,
                    stores: Callable[[str, str], bool] = lambda kind, f: True,
                    adopt: bool = False) -> ChangeSet:
    """Compare desired with live; ``stores(kind, field)`` says whether the provider keeps that field.

    A resource the plan names that exists on the gateway without apimon's ownership mark is never changed:
    if it already matches the plan it is no change (a note suggests `apimon adopt`, as after `apimon
    import`); if it differs it is a conflict, unless ``adopt`` turns it into an adopting update.
    """
    cs = ChangeSet(unmanaged=list(live.unmanaged))
    unmanaged = {(u.kind, u.name): u for u in live.unmanaged}
    products = _diff_kind("product", desired.products, live.products, flatten_product, unmanaged, stores, adopt,
                          cs, {})
    subscribers = _diff_kind("subscriber", desired.subscribers, live.subscribers, flatten_subscriber, unmanaged,
                             stores, adopt, cs, live.key_fingerprints)
    # creates and updates: products first; deletes: subscribers first
    cs.changes = (products["create"] + products["update"] + subscribers["create"] + subscribers["update"]
                  + subscribers["delete"] + products["delete"])
    return cs


def _diff_kind(kind: str, wanted: dict, existing: dict, flatten: Callable[[object], dict],
               unmanaged: dict[tuple[str, str], Unmanaged], stores: Callable[[str, str], bool], adopt: bool,
               cs: ChangeSet, key_fingerprints: dict[str, str]) -> dict[str, list[Change]]:
    out: dict[str, list[Change]] = {"create": [], "update": [], "delete": []}

    def keeps(f: str) -> bool:
        return stores(kind, f)

    def key_change(rid: str, want) -> list[FieldChange]:
        value = getattr(want, "key_value", None)
        live_fp = key_fingerprints.get(rid)
        if value is not None and live_fp is not None and live_fp != key_fingerprint(value):
            return [FieldChange("key", SENSITIVE, SENSITIVE)]
        return []

    for rid, want in wanted.items():
        have = existing.get(rid)
        if have is not None:
            fields = _field_changes(flatten(have), flatten(want), keeps) + key_change(rid, want)
            if fields:
                out["update"].append(Change("update", kind, rid, tuple(fields), want, have))
            continue
        foreign = unmanaged.get((kind, rid))
        if foreign is None:
            fields = _field_changes({}, flatten(want), keeps)
            if getattr(want, "key_value", None) is not None:
                fields.append(FieldChange("key", None, SENSITIVE))
            out["create"].append(Change("create", kind, rid, tuple(fields), want, None))
            continue
        base = flatten(foreign.resource) if foreign.resource is not None else None
        fields = _field_changes(base, flatten(want), keeps) if base is not None else None
        if adopt:
            adopted = [FieldChange("managed", False, True)] + (fields or [])
            out["update"].append(Change("update", kind, rid, tuple(adopted), want, foreign.resource, adopt=True))
        elif fields == []:
            cs.notes.append(f"{kind} {rid} matches the plan but is not managed by apimon yet; "
                            "`apimon adopt` lets apimon manage it")
        else:
            differs = f" ({', '.join(f.field for f in fields)} differ)" if fields else ""
            cs.conflicts.append(f"{kind} {rid} exists on the gateway but apimon does not manage it{differs}; "
                                "`apimon adopt` (or apply --adopt) takes it over")
    for rid, have in existing.items():
        if rid not in wanted:
            out["delete"].append(Change("delete", kind, rid, tuple(_field_changes(flatten(have), {}, keeps)),
                                        None, have))
    return out


# ---------------------------------------------------------------- fingerprints and JSON

def live_fingerprint(live: LiveState) -> str:
    """A digest of what a plan read: if it differs at apply time, the world moved."""
    doc = {
        "products": {k: flatten_product(v) for k, v in sorted(live.products.items())},
        "subscribers": {k: flatten_subscriber(v) for k, v in sorted(live.subscribers.items())},
        "unmanaged": sorted(f"{u.kind}:{u.name}" for u in live.unmanaged),
        "keys": dict(sorted(live.key_fingerprints.items())),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def change_to_json(c: Change) -> dict:
    return {"kind": c.kind, "id": c.id, "action": c.action, "adopt": c.adopt,
            "fields": {f.field: {"before": f.before, "after": f.after} for f in c.fields}}


def changeset_to_json(cs: ChangeSet) -> dict:
    return {
        "changes": {
            "creating": [change_to_json(c) for c in cs.of("create")],
            "updating": [change_to_json(c) for c in cs.of("update")],
            "deleting": [change_to_json(c) for c in cs.of("delete")],
        },
        "summary": cs.summary,
        "unmanaged": [{"kind": u.kind, "name": u.name, "detail": u.detail} for u in cs.unmanaged],
        "conflicts": cs.conflicts,
        "warnings": cs.warnings,
        "notes": cs.notes,
    }
