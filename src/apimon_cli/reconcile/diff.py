"""Desired vs live -> changes. Pure and provider-neutral: no I/O, no printing.

The provider says, as plain rules, what its gateway can hold (``Rules``):

- ``stores(kind, field)``: fields it cannot store are never compared (nor shown);
- ``canonical(kind, resource)``: the resource as the gateway would hold it, for comparison only (AWS
  resolves "petstore/prod" and "a1b2c3/prod" to the same stage; Apigee maps pricing onto the rate plan it
  would write). Shown values stay the plan's and the gateway's own;
- ``replacement(kind, fields)``: a change to these fields cannot be made in place (``replace``).

Fields are compared by meaning (``reconcile.fields.same``). The changes come in apply order: every kind's
creates, then its updates and replacements (parents first), then deletes (children first).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..model import DesiredState, LiveState, Unmanaged
from .changes import SENSITIVE, Change, ChangeSet, FieldChange, Replacement
from .fields import key_fingerprint, same, shown
from .kinds import Kind, kinds, rank


class Rules(Protocol):
    def stores(self, kind: str, field: str) -> bool: ...
    def canonical(self, kind: str, resource: Any) -> Any: ...
    def replacement(self, kind: str, fields: Iterable[str]) -> Replacement | None: ...


class EveryField:
    """A gateway that stores every field as written (the local target)."""

    def stores(self, kind: str, field: str) -> bool:
        return True

    def canonical(self, kind: str, resource: Any) -> Any:
        return resource

    def replacement(self, kind: str, fields: Iterable[str]) -> Replacement | None:
        return None


class _Stores(EveryField):
    def __init__(self, stores: Callable[[str, str], bool]):
        self._stores = stores

    def stores(self, kind: str, field: str) -> bool:
        return self._stores(kind, field)


def compute_changes(desired: DesiredState, live: LiveState, *, rules: Rules | None = None,
                    stores: Callable[[str, str], bool] | None = None, adopt: bool = False) -> ChangeSet:
    """Compare desired with live under the provider's ``rules`` (or just a ``stores`` predicate).

    A resource the plan names that exists on the gateway without apimon's ownership mark is never changed:
    if it already matches the plan it is no change (a note suggests `apimon adopt`, as after `apimon
    import`); if it differs it is a conflict, unless ``adopt`` turns it into an adopting update.
    """
    rules = rules or (_Stores(stores) if stores else EveryField())
    cs = ChangeSet(unmanaged=list(live.unmanaged))
    unmanaged = {(u.kind, u.name): u for u in live.unmanaged}
    applying: list[Change] = []
    deleting: list[Change] = []
    for k in kinds():
        apply_k, delete_k = _diff_kind(k, desired, live, rules, unmanaged, adopt, cs)
        applying += apply_k
        deleting = delete_k + deleting  # children's deletes before their parents'
    cs.changes = applying + deleting
    return cs


def merge_changes(cs: ChangeSet, extra: Iterable[Change]) -> None:
    """Add provider-only field changes (``Provider.extra_changes``): their fields join the change the diff
    already has for that resource; otherwise the change is added, after the other changes of its rank."""
    for change in extra:
        at = next((i for i, c in enumerate(cs.changes) if (c.kind, c.id) == (change.kind, change.id)), None)
        if at is None:
            cs.changes.append(change)
            continue
        have = cs.changes[at]
        if have.action in ("update", "replace"):
            names = {f.field for f in have.fields}
            fields = have.fields + tuple(f for f in change.fields if f.field not in names)
            cs.changes[at] = Change(have.action, have.kind, have.id, fields, have.desired, have.live, have.adopt,
                                    have.reason, have.create_before_delete)
    cs.changes.sort(key=lambda c: rank(c.kind, c.action))  # stable: the diff's order within a rank


def _diff_kind(k: Kind, desired: DesiredState, live: LiveState, rules: Rules,
               unmanaged: dict[tuple[str, str], Unmanaged], adopt: bool,
               cs: ChangeSet) -> tuple[list[Change], list[Change]]:
    wanted: dict = getattr(desired, k.section)
    existing: dict = getattr(live, k.section)
    fingerprints = k.fingerprints(live) if k.fingerprints else {}
    creates: list[Change] = []
    updates: list[Change] = []
    deletes: list[Change] = []

    secret_fields: dict[str, set[str]] = {}
    for section, rid, name in getattr(desired, "secret_fields", ()):
        if section == k.section:
            secret_fields.setdefault(rid, set()).add(name)

    def fields(have: Any, want: Any, secret: set[str] | None = None) -> list[FieldChange]:
        return _field_changes(k, rules, have, want, secret or set())

    for rid, want in wanted.items():
        have = existing.get(rid)
        hidden = secret_fields.get(rid)
        secret = k.secret(want) if k.secret else None
        if have is not None:
            changed = fields(have, want, hidden)
            live_fp = fingerprints.get(rid)
            if secret is not None and live_fp is not None and live_fp != key_fingerprint(secret):
                changed.append(FieldChange("key", SENSITIVE, SENSITIVE))
            if changed:
                rule = rules.replacement(k.name, [f.field for f in changed])
                if rule is not None:
                    updates.append(Change("replace", k.name, rid, tuple(changed), want, have, reason=rule.reason,
                                          create_before_delete=rule.create_before_delete))
                else:
                    updates.append(Change("update", k.name, rid, tuple(changed), want, have))
            continue
        foreign = unmanaged.get((k.name, rid))
        if foreign is None:
            changed = fields(None, want, hidden)
            if secret is not None:
                changed.append(FieldChange("key", None, SENSITIVE))
            creates.append(Change("create", k.name, rid, tuple(changed), want, None))
            continue
        changed = fields(foreign.resource, want, hidden) if foreign.resource is not None else None
        if adopt:
            adopted = [FieldChange("managed", False, True)] + (changed or [])
            updates.append(Change("update", k.name, rid, tuple(adopted), want, foreign.resource, adopt=True))
        elif changed == []:
            cs.notes.append(f"{k.name} {rid} matches the plan but is not managed by apimon yet; "
                            "`apimon adopt` lets apimon manage it")
        else:
            differs = f" ({', '.join(f.field for f in changed)} differ)" if changed else ""
            cs.conflicts.append(f"{k.name} {rid} exists on the gateway but apimon does not manage it{differs}; "
                                "`apimon adopt` (or apply --adopt) takes it over")
    for rid, have in existing.items():
        if rid not in wanted:
            deletes.append(Change("delete", k.name, rid, tuple(fields(have, None)), None, have))
    return creates + updates, deletes


#: fields the gateway may hold a value of its own for (a generated client secret): compared only when set
_ONLY_WHEN_SET = ("client_secret",)


def _field_changes(k: Kind, rules: Rules, have: Any, want: Any, secret: set[str] = frozenset()) -> list[FieldChange]:  # type: ignore[assignment]
    """Fields that differ by meaning, compared as the gateway holds them, shown as written; a field whose
    value comes from the environment (``secret``) is shown as SENSITIVE, its old value too."""
    def flat(resource: Any, canonical: bool) -> dict[str, object]:
        if resource is None:
            return {}
        return k.fields(rules.canonical(k.name, resource) if canonical else resource)

    before, after = flat(have, True), flat(want, True)
    for name in _ONLY_WHEN_SET:  # compared only where the plan sets it (else the gateway's own value stands)
        if want is not None and name not in after:
            before.pop(name, None)
    if before == after:  # the common case of a converged plan: every field equal, so none differs by meaning
        return []
    shown_before, shown_after = flat(have, False), flat(want, False)
    out = []
    for name in sorted(set(before) | set(after)):
        if not rules.stores(k.name, name):
            continue
        if not same(name, before.get(name), after.get(name)):
            if secret and any(name == s or name.startswith(s + ".") or s.startswith(name + ".") for s in secret):
                out.append(FieldChange(name, None if have is None or shown_before.get(name) is None else SENSITIVE,
                                       None if shown_after.get(name) is None else SENSITIVE))
                continue
            out.append(FieldChange(name, shown(shown_before.get(name)), shown(shown_after.get(name))))
    return out


def live_fingerprint(live: LiveState) -> str:
    """A digest of what a plan read: if it differs at apply time, the world moved."""
    import hashlib

    doc: dict[str, object] = {
        k.section: {rid: {f: shown(v) for f, v in k.fields(r).items()}
                    for rid, r in sorted(getattr(live, k.section).items())} for k in kinds()}
    doc["unmanaged"] = sorted(f"{u.kind}:{u.name}" for u in live.unmanaged)
    doc["keys"] = dict(sorted(live.key_fingerprints.items()))
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
