"""Key lifecycle on AWS API Gateway (``apimon keys ...``).

AWS API keys are resources of their own, attached to usage plans, so a rotation is a second key:

1. CreateApiKey ``<subscriber>.rotated-<UTC stamp>`` (tagged owned and ``apimon:subscriber``; description,
   customerId and enabled copied from the current key) — the new key exists but is in no plan yet;
2. CreateUsagePlanKey into the plan(s) of the current key — both keys work, on the same usage plan;
3. TagResource ``apimon:expires=<end>`` on the old key — the rotation is recorded on AWS itself.

Each step leaves the old key working, and the next ``keys rotate``, ``keys finish`` or ``apply`` reads where
an interrupted rotation stopped (a newest key with the subscriber tag, older keys without an end) and does
the rest. AWS does not end a key by itself: ``keys finish`` (and every ``apply``) detaches and deletes the
old keys whose end has passed — run it on a schedule. Usage is per key on AWS; ``usage pull`` sums a
subscriber's keys. Values are read only to show their last 4 characters, and never kept.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ...keys.model import ACTIVE, REVOKED, ROTATING_OUT, KeyAction, KeyInfo, Rotated, last4
from ..base import ProviderError
from .read import EXPIRES_TAG, MANAGED_TAGS, SUBSCRIBER_TAG, KeyHandle, key_age, owned, subscriber_of


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _end_of(key: dict) -> datetime | None:
    raw = (key.get("tags") or {}).get(EXPIRES_TAG)
    try:
        return datetime.fromisoformat(raw) if raw else None
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)  # unreadable: treat as over


def _created(key: dict) -> datetime | None:
    value = key.get("createdDate")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


class AwsKeys:
    """The key half of the AWS provider (``self.api``, ``self.read_live_state``, ``self._attach`` ...)."""

    api: Any
    desired: Any

    def _handle(self, sid: str) -> tuple[Any, KeyHandle]:
        live = self.read_live_state(include_values=False)  # type: ignore[attr-defined]
        handle = live.handles.get(("subscriber", sid))
        if handle is None:
            if ("unmanaged-subscriber", sid) in live.handles:
                raise ProviderError(f"subscriber {sid}'s API key is not managed by apimon; apimon manages only the "
                                    "keys it owns")
            raise ProviderError(f"subscriber {sid} has no API key on AWS (apply the plan first?)")
        return live, handle

    def _values(self, sid: str | None = None) -> dict[str, str]:
        """key id -> value for the owned keys (of ``sid``): read to show last 4 characters only."""
        return {k["id"]: k.get("value") or "" for k in self.api.items("GetApiKeys", includeValues=True)
                if owned(k) and (sid is None or subscriber_of(k) == sid)}

    def _complete(self, handle: KeyHandle, ends: datetime) -> list[KeyAction]:
        """Finish an interrupted rotation: the new key into the old keys' plans, the old keys given an end."""
        sid = subscriber_of(handle.raw)
        actions = []
        for old in handle.unfinished:
            for plan_id in handle.rotating_plans.get(old["id"], []):
                if plan_id not in handle.plans:
                    self._attach(plan_id, handle.id)  # type: ignore[attr-defined]
                    handle.plans.append(plan_id)
            self.api.call("TagResource", resourceArn=self._arn("apikeys", old["id"]),  # type: ignore[attr-defined]
                          tags={EXPIRES_TAG: _iso(ends)})
            actions.append(KeyAction(sid, "rotated", "", f"interrupted rotation completed; works until {_iso(ends)}"))
        return actions

    # ---------------------------------------------------------------- the four calls
    def list_keys(self, subscriber_ids: list[str]) -> dict[str, list[KeyInfo]]:
        wanted = set(subscriber_ids)
        now = datetime.now(UTC)
        out: dict[str, list[KeyInfo]] = {}
        for k in sorted(self.api.items("GetApiKeys", includeValues=True), key=key_age):
            sid = subscriber_of(k)
            if not owned(k) or sid not in wanted:
                continue
            end = _end_of(k)
            if end is not None:
                state = ROTATING_OUT if end > now else REVOKED
            else:
                state = ACTIVE if k.get("enabled") else REVOKED
            out.setdefault(sid, []).append(KeyInfo(k["id"], last4(k.get("value") or ""), _created(k), end, state))
        return out

    def rotate_key(self, subscriber_id: str, ends: datetime) -> Rotated:
        sid = subscriber_id
        live, handle = self._handle(sid)
        values = self._values(sid)
        if handle.unfinished:  # a rotation stopped half-way: do the rest, do not start another
            self._complete(handle, ends)
            value = values.get(handle.id)
            old = [KeyInfo(k["id"], last4(values.get(k["id"], "")), _created(k), ends, ROTATING_OUT)
                   for k in handle.unfinished]
            return Rotated(sid, KeyInfo(handle.id, last4(value or ""), _created(handle.raw), None, ACTIVE), value,
                           old, resumed=True, ends=ends)
        now = datetime.now(UTC)
        busy = [k for k in handle.rotating if (_end_of(k) or now) > now]
        if busy:
            raise ProviderError(
                f"subscriber {sid} is already rotating: its key ...{last4(values.get(busy[0]['id'], ''))} works "
                f"until {_iso(_end_of(busy[0]))}; run `apimon keys finish` after that, or `apimon keys revoke {sid} "
                f"--key {last4(values.get(busy[0]['id'], ''))}` to end it now")
        if not handle.plans:
            raise ProviderError(f"subscriber {sid}'s key is in no usage plan; run `apimon apply` first")
        current = handle.raw
        body: dict[str, Any] = {
            "name": f"{sid}.rotated-{now:%Y%m%dT%H%M%SZ}", "description": current.get("description") or "",
            "enabled": bool(current.get("enabled", True)), "tags": {**MANAGED_TAGS, SUBSCRIBER_TAG: sid}}
        if current.get("customerId"):
            body["customerId"] = current["customerId"]
        new = self.api.call("CreateApiKey", **body)  # 1. the new key (in no plan yet)
        value = new.get("value") or ""
        for plan_id in handle.plans:  # 2. into the same usage plan: both keys work
            self._attach(plan_id, new["id"])  # type: ignore[attr-defined]
        self.api.call("TagResource", resourceArn=self._arn("apikeys", handle.id),  # type: ignore[attr-defined]
                      tags={EXPIRES_TAG: _iso(ends)})  # 3. the old key's end, recorded on AWS
        old = KeyInfo(handle.id, last4(values.get(handle.id, "")), _created(current), ends, ROTATING_OUT)
        return Rotated(sid, KeyInfo(new["id"], last4(value), _created(new) or now, None, ACTIVE), value, [old],
                       ends=ends)

    def finish_rotations(self, subscriber_ids: list[str] | None = None, live=None) -> list[KeyAction]:
        """``live``: the state an apply just read (rotations and their tags are not changed by apply)."""
        if live is None:
            live = self.read_live_state(include_values=False)  # type: ignore[attr-defined]
        now = datetime.now(UTC)
        wanted = None if subscriber_ids is None else set(subscriber_ids)
        values: dict[str, str] | None = None
        actions: list[KeyAction] = []
        for (kind, sid), handle in sorted(live.handles.items()):
            if kind != "subscriber" or (wanted is not None and sid not in wanted):
                continue
            if handle.unfinished:
                sub = self.desired.subscribers.get(sid)
                overlap = sub.key_overlap if sub is not None else None
                if overlap is not None:
                    actions += self._complete(handle, now + overlap)
            for old in handle.rotating:
                end = _end_of(old)
                if end is None or end > now:
                    continue
                if values is None:
                    values = self._values()
                for plan_id in handle.rotating_plans.get(old["id"], []):
                    self._detach(plan_id, old["id"])  # type: ignore[attr-defined]
                self._delete_key(old["id"])  # type: ignore[attr-defined]
                actions.append(KeyAction(sid, "expired", last4(values.get(old["id"], "")),
                                         "overlap ended: old key detached and deleted"))
        return actions

    def revoke_key(self, subscriber_id: str, key: str | None, revoke_all: bool) -> list[KeyAction]:
        sid = subscriber_id
        live, handle = self._handle(sid)
        values = self._values(sid)
        now = datetime.now(UTC)
        working = [(handle.raw, ACTIVE)] if handle.raw.get("enabled", True) else []
        working += [(k, ROTATING_OUT) for k in [*handle.rotating, *handle.unfinished] if (_end_of(k) or now) >= now]
        if revoke_all:
            targets = working
        elif key:
            targets = [(k, st) for k, st in working if last4(values.get(k["id"], "")) == key]
            if not targets:
                have = ", ".join(f"...{last4(values.get(k['id'], ''))} ({st})" for k, st in working) or "none"
                raise ProviderError(f"subscriber {sid} has no working key ending in {key!r} (its keys: {have})")
        else:
            targets = [(k, st) for k, st in working if st == ROTATING_OUT]
            if not targets:
                raise ProviderError(
                    f"subscriber {sid} has one key: revoking it would leave {sid} without a key. Rotate first "
                    f"(`apimon keys rotate {sid}`), or pass --all to revoke it anyway")
        if not revoke_all and not any(st == ACTIVE for k, st in working if (k, st) not in targets):
            raise ProviderError(f"revoking ...{last4(values.get(targets[0][0]['id'], ''))} would leave {sid} without "
                                "a working key; rotate first, or pass --all")
        actions = []
        for k, _st in targets:
            tail = last4(values.get(k["id"], ""))
            # deleted, not disabled: a disabled key would be enabled again by the next apply. The current key
            # too (--all): the subscriber has no key until the next `apply` or `keys rotate` issues one
            plans = handle.plans if k is handle.raw else handle.rotating_plans.get(k["id"], [])
            for plan_id in plans:
                self._detach(plan_id, k["id"])  # type: ignore[attr-defined]
            self._delete_key(k["id"])  # type: ignore[attr-defined]
            actions.append(KeyAction(sid, "revoked", tail, "revoked now"))
        return actions

