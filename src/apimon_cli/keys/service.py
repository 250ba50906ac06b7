"""The key commands' engine: checks against the plan, the provider's key calls, the audit log and events.

The CLI (``cli/keys.py``) parses and prints; this module decides. Every action is appended to the audit log
in the ledger (who: the OS user) and, when the plan has an ``events`` block, published as
``com.apimon.key.created|rotated|revoked|expiring``.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from ..model import DesiredState
from ..providers.base import Provider, ProviderError
from .model import ROTATING_OUT, KeyAction, KeyInfo, Rotated

#: key.expiring is published once, this long before a rotated-out key stops working
EXPIRING_NOTICE = timedelta(hours=1)


class KeyCommandError(ProviderError):
    """A key command refused (a message for the user)."""


def who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): the uid
        return f"uid {os.getuid()}"


def managed_subscriber(desired: DesiredState, sid: str) -> None:
    if sid not in desired.subscribers:
        known = ", ".join(sorted(desired.subscribers)[:10]) or "none"
        raise KeyCommandError(f"subscriber {sid} is not in the plan (subscribers: {known}); apimon manages only "
                              "the keys of subscribers its plan declares")


def rotate(provider: Provider, desired: DesiredState, sid: str, overlap: timedelta | None) -> Rotated:
    managed_subscriber(desired, sid)
    sub = desired.subscribers[sid]
    if sub.key_value is not None:
        raise KeyCommandError(
            f"subscriber {sid} takes its key from the environment (key.from_env), so apimon cannot choose a new "
            f"one: put the new value in that variable and run `apimon apply` — the old value keeps working for "
            f"key.overlap ({_fmt(sub.key_overlap)})")
    window = sub.key_overlap if overlap is None else overlap
    rotated = provider.rotate_key(sid, datetime.now(UTC).replace(microsecond=0) + window)
    rotated.overlap = window
    return rotated


def due_for_rotation(provider: Provider, desired: DesiredState) -> list[tuple[str, int]]:
    """(subscriber, age in days) for subscribers whose active key is older than their key.max_age."""
    aged = [s for s in desired.subscribers.values() if s.key_max_age is not None and s.key_value is None]
    if not aged:
        return []
    keys = provider.list_keys([s.id for s in aged])
    now = datetime.now(UTC)
    out = []
    for s in aged:
        infos = keys.get(s.id) or []
        if any(k.state == ROTATING_OUT for k in infos):
            continue  # already rotating
        active = [k for k in infos if k.state == "active" and k.created is not None]
        if active and all(now - k.created > s.key_max_age for k in active):
            newest = max(k.created for k in active)
            out.append((s.id, (now - newest).days))
    return out


def audit_entries(actions: Iterable[KeyAction], provider: str, target: str):
    from ..ledger.audit import AuditEntry

    at = datetime.now(UTC).isoformat(timespec="seconds")
    user = who()
    return [AuditEntry(at, user, provider, target, a.subscriber, a.action, a.last4, a.detail) for a in actions]


def rotation_actions(r: Rotated) -> list[KeyAction]:
    ends = r.ends.isoformat(timespec="seconds") if r.ends else "now"
    out = [KeyAction(r.subscriber, "created", r.new.last4, "new key (rotation)" + (", resumed" if r.resumed else ""))]
    out += [KeyAction(r.subscriber, "rotated", k.last4, f"works until {ends}") for k in r.old]
    return out


def expiring_soon(infos: dict[str, list[KeyInfo]], already: set[tuple[str, str]],
                  notice: timedelta = EXPIRING_NOTICE) -> list[KeyAction]:
    """key.expiring notices due now (once per key: ``already`` holds the (subscriber, last4) announced);
    ``notice``: how long before a key's end (the events block's ``key_expiring``)."""
    now = datetime.now(UTC)
    out = []
    for sid, keys in infos.items():
        for k in keys:
            if (k.state == ROTATING_OUT and k.expires is not None and k.expires - now <= notice
                    and (sid, k.last4) not in already):
                out.append(KeyAction(sid, "expiring", k.last4, f"stops working at {k.expires.isoformat()}"))
    return out


def key_events(actions: Iterable[KeyAction], provider: str, target: str) -> list:
    from ..events import types as T
    from ..events.cloudevent import SOURCE_KEYS, CloudEvent, new_id, rfc3339

    kinds = {"created": T.KEY_CREATED, "rotated": T.KEY_ROTATED, "revoked": T.KEY_REVOKED,
             "expired": T.KEY_REVOKED, "expiring": T.KEY_EXPIRING}
    when = rfc3339(datetime.now(UTC).timestamp())
    out = []
    for a in actions:
        if a.action not in kinds:
            continue
        data = {"subscriber": a.subscriber, "provider": provider, "target": target, "key_last4": a.last4,
                "detail": a.detail}
        if a.action in ("revoked", "expired"):
            data["reason"] = "revoked" if a.action == "revoked" else "rotated"
        out.append(CloudEvent(new_id(), SOURCE_KEYS, kinds[a.action], when, a.subscriber, data))
    return out


def _fmt(value: timedelta) -> str:
    from .durations import format_duration

    return format_duration(value)
