"""Desired vs live -> ordered changes. Pure and provider-neutral: no I/O, no printing.

A provider tells which fields it can store (``stores``); fields it cannot store are never a diff.
Order: products created/updated first, then subscribers created/updated, then subscribers deleted,
then products deleted (a subscriber's key needs its product; a product goes after its subscribers).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, Literal

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
    """Canonical text of an amount: "29.00" and "29" compare equal."""
    return None if value is None else format(value.normalize(), "f")


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
        if b != a:
            out.append(FieldChange(name, b, a))
    return out


def compute_changes(desired: DesiredState, live: LiveState, *,
                    stores: Callable[[str, str], bool] = lambda kind, f: True,
                    adopt: bool = False) -> ChangeSet:
    """Compare desired with live; ``stores(kind, field)`` says whether the provider keeps that field."""
    cs = ChangeSet(unmanaged=list(live.unmanaged))
    unmanaged = {(u.kind, u.name): u for u in live.unmanaged}
    creates_p, updates_p, creates_s, updates_s, deletes_s, deletes_p = [], [], [], [], [], []

    def prod_stores(f: str) -> bool:
        return stores("product", f)

    def sub_stores(f: str) -> bool:
        return stores("subscriber", f)

    for pid, want in desired.products.items():
        have = live.products.get(pid)
        if have is None and ("product", pid) in unmanaged:
            u = unmanaged[("product", pid)]
            if not adopt:
                cs.conflicts.append(f"product {pid} exists on the gateway but apimon does not manage it; "
                                    "`apimon adopt` (or apply --adopt) takes it over")
                continue
            base = flatten_product(u.resource) if isinstance(u.resource, Product) else {}
            fields = [FieldChange("managed", False, True)] + _field_changes(base, flatten_product(want),
                                                                           prod_stores)
            updates_p.append(Change("update", "product", pid, tuple(fields), want, u.resource, adopt=True))
        elif have is None:
            fields = _field_changes({}, flatten_product(want), prod_stores)
            creates_p.append(Change("create", "product", pid, tuple(fields), want, None))
        else:
            fields = _field_changes(flatten_product(have), flatten_product(want), prod_stores)
            if fields:
                updates_p.append(Change("update", "product", pid, tuple(fields), want, have))

    for sid, want in desired.subscribers.items():
        have = live.subscribers.get(sid)
        if have is None and ("subscriber", sid) in unmanaged:
            u = unmanaged[("subscriber", sid)]
            if not adopt:
                cs.conflicts.append(f"subscriber {sid} exists on the gateway but apimon does not manage it; "
                                    "`apimon adopt` (or apply --adopt) takes it over")
                continue
            base = flatten_subscriber(u.resource) if isinstance(u.resource, Subscriber) else {}
            fields = [FieldChange("managed", False, True)] + _field_changes(base, flatten_subscriber(want),
                                                                           sub_stores)
            updates_s.append(Change("update", "subscriber", sid, tuple(fields), want, u.resource, adopt=True))
        elif have is None:
            fields = _field_changes({}, flatten_subscriber(want), sub_stores)
            if want.key_value is not None:
                fields.append(FieldChange("key", None, SENSITIVE))
            creates_s.append(Change("create", "subscriber", sid, tuple(fields), want, None))
        else:
            fields = _field_changes(flatten_subscriber(have), flatten_subscriber(want), sub_stores)
            live_fp = live.key_fingerprints.get(sid)
            if want.key_value is not None and live_fp is not None and live_fp != key_fingerprint(want.key_value):
                fields.append(FieldChange("key", SENSITIVE, SENSITIVE))
            if fields:
                updates_s.append(Change("update", "subscriber", sid, tuple(fields), want, have))

    for sid, have in live.subscribers.items():
        if sid not in desired.subscribers:
            fields = _field_changes(flatten_subscriber(have), {}, sub_stores)
            deletes_s.append(Change("delete", "subscriber", sid, tuple(fields), None, have))
    for pid, have in live.products.items():
        if pid not in desired.products:
            fields = _field_changes(flatten_product(have), {}, prod_stores)
            deletes_p.append(Change("delete", "product", pid, tuple(fields), None, have))

    cs.changes = creates_p + updates_p + creates_s + updates_s + deletes_s + deletes_p
    return cs


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
