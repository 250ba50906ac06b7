"""Key lifecycle on Azure API Management (``apimon keys ...``).

An APIM subscription has two keys, primary and secondary, both valid at all times; apimon hands out the
primary. A rotation keeps the subscription (and so its usage history and reports) and uses the secondary:

1. ``regenerateSecondaryKey``: a fresh secondary, which is the new key (``keys show`` reveals it during the
   overlap); the old primary keeps working;
2. after the overlap (``keys finish`` or ``apply``), one PATCH sets ``primaryKey`` to the new key and a fresh
   random ``secondaryKey``: the old primary stops working and the subscriber ends with the new key as primary.

Subscriptions have nowhere to keep a rotation's end, so apimon records it in the ledger's ``key_rotations``
table (``keys.journal``) before step 1, with the new key's fingerprint after it; a rotation interrupted
before the fingerprint is recorded redoes step 1 (that secondary was never shown), and the swap checks the
fingerprint so a repeated finish cannot swap twice.

A subscriber whose key comes from ``key.from_env`` is rotated by ``apply`` instead (``write.py``): one PATCH
sets the new value as the primary and the old primary as the secondary, so both work for ``key.overlap``;
the journal records the end with the *old* key's fingerprint (prefixed ``old:``, written before the PATCH),
and after the end ``keys finish`` / ``apply`` regenerates the secondary, only while it is still that old key.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from ...keys.model import ACTIVE, REVOKED, ROTATING_OUT, KeyAction, KeyInfo, Rotated, last4
from ...reconcile.fields import key_fingerprint
from ..base import ProviderError
from .client import SDK_ERRORS
from .read import SUB_PREFIX, with_etag

#: a journal record of a key.from_env rotation: the fingerprint of the old key, kept as the secondary
OLD_KEY = "old:"


def _old_fp(rotation) -> str | None:
    """The old key's fingerprint of a key.from_env rotation's record, else None."""
    if rotation and rotation[1] and rotation[1].startswith(OLD_KEY):
        return rotation[1][len(OLD_KEY):]
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


class AzureKeys:
    """The key half of the Azure provider (``self.client``, ``self.rg``, ``self.service``, ``self.explain``)."""

    client: Any
    rg: str
    service: str
    key_journal: Any = None
    _etag_seen: str | None = None

    def _journal(self):
        if self.key_journal is None:
            raise ProviderError("key rotation on Azure needs the ledger (it records the rotation there)")
        return self.key_journal

    def _secrets(self, sid: str):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            sub, self._etag_seen = self.client.subscription.get(self.rg, self.service, SUB_PREFIX + sid,
                                                                cls=with_etag)
            keys = self.client.subscription.list_secrets(self.rg, self.service, SUB_PREFIX + sid)
        except ResourceNotFoundError:
            raise ProviderError(f"subscriber {sid} has no subscription {SUB_PREFIX}{sid} on Azure (apply the plan "
                                "first?); apimon manages only the subscriptions it owns") from None
        except SDK_ERRORS as exc:
            raise self.explain(exc, f"reading the keys of subscriber {sid}") from None  # type: ignore[attr-defined]
        return sub, keys

    def list_keys(self, subscriber_ids: list[str]) -> dict[str, list[KeyInfo]]:
        pending = self._journal().pending() if self.key_journal is not None else {}
        now = datetime.now(UTC)
        out: dict[str, list[KeyInfo]] = {}
        for sid in subscriber_ids:
            try:
                sub, keys = self._secrets(sid)
            except ProviderError:
                continue
            created = sub.created_date
            state = ACTIVE if (sub.state or "active") == "active" else REVOKED
            rotation = pending.get(sid)
            old_fp = _old_fp(rotation)
            if old_fp is not None and key_fingerprint(keys.secondary_key or "") == old_fp:
                ends = datetime.fromisoformat(rotation[0])
                out[sid] = [KeyInfo("secondary", last4(keys.secondary_key or ""), created, ends,
                                    ROTATING_OUT if ends > now else REVOKED),
                            KeyInfo("primary", last4(keys.primary_key or ""), None, None, state)]
            elif rotation and rotation[1] and key_fingerprint(keys.secondary_key or "") == rotation[1]:
                ends = datetime.fromisoformat(rotation[0])
                out[sid] = [KeyInfo("primary", last4(keys.primary_key or ""), created, ends,
                                    ROTATING_OUT if ends > now else REVOKED),
                            KeyInfo("secondary", last4(keys.secondary_key or ""), None, None, state)]
            else:
                out[sid] = [KeyInfo("primary", last4(keys.primary_key or ""), created, None, state)]
        return out

    def reveal_key(self, subscriber_id: str) -> str | None:
        """The key to use: the new one (secondary) while a rotation is in its overlap, else the primary."""
        try:
            _, keys = self._secrets(subscriber_id)
        except ProviderError:
            return None
        rotation = self._journal().pending().get(subscriber_id) if self.key_journal is not None else None
        if rotation and rotation[1] and key_fingerprint(keys.secondary_key or "") == rotation[1]:
            return keys.secondary_key
        return keys.primary_key

    def rotate_key(self, subscriber_id: str, ends: datetime) -> Rotated:
        sid = subscriber_id
        journal = self._journal()
        sub, keys = self._secrets(sid)
        rotation = journal.pending().get(sid)
        resumed = False
        old_fp = _old_fp(rotation)
        if old_fp is not None:
            if key_fingerprint(keys.secondary_key or "") == old_fp:
                raise ProviderError(
                    f"subscriber {sid} is already rotating: its old key ...{last4(keys.secondary_key or '')} works "
                    f"until {rotation[0]}; run `apimon keys finish` after that, or `apimon keys revoke {sid} --key "
                    f"{last4(keys.secondary_key or '')}` to end it now")
            rotation = None  # a key.from_env rotation that never got its PATCH: nothing of it to keep
        if rotation is not None:
            if rotation[1] and key_fingerprint(keys.secondary_key or "") == rotation[1]:
                raise ProviderError(
                    f"subscriber {sid} is already rotating: its old key ...{last4(keys.primary_key or '')} works "
                    f"until {rotation[0]}; run `apimon keys finish` after that, or `apimon keys revoke {sid} --key "
                    f"{last4(keys.primary_key or '')}` to end it now")
            ends = datetime.fromisoformat(rotation[0])  # interrupted before the new key was recorded: redo it
            resumed = True
        journal.put(sid, _iso(ends), None)  # the intent first
        try:
            self.client.subscription.regenerate_secondary_key(self.rg, self.service, SUB_PREFIX + sid)
        except Exception as exc:
            if isinstance(exc, SDK_ERRORS):
                raise self.explain(exc, f"regenerating the secondary key of {sid}") from None  # type: ignore[attr-defined]
            raise
        _, keys = self._secrets(sid)
        journal.put(sid, _iso(ends), key_fingerprint(keys.secondary_key))
        new = KeyInfo("secondary", last4(keys.secondary_key), datetime.now(UTC), None, ACTIVE)
        old = KeyInfo("primary", last4(keys.primary_key), sub.created_date, ends, ROTATING_OUT)
        return Rotated(sid, new, keys.secondary_key, [old], resumed=resumed, ends=ends)

    def _swap(self, sid: str, new_fp: str | None) -> str | None:
        """The new key (secondary) becomes the primary, with a fresh secondary; the old primary stops.
        Returns the old primary's last 4, or None when there was nothing to swap."""
        from azure.mgmt.apimanagement.models import SubscriptionUpdateParameters

        sub, keys = self._secrets(sid)
        if new_fp is None or key_fingerprint(keys.primary_key or "") == new_fp:
            return None  # never made, or swapped already (a finish interrupted after the PATCH)
        if key_fingerprint(keys.secondary_key or "") != new_fp:
            return None  # the keys were changed by someone else: leave them
        params = SubscriptionUpdateParameters(primary_key=keys.secondary_key,
                                              secondary_key=secrets.token_hex(16))
        self.client.subscription.update(self.rg, self.service, SUB_PREFIX + sid,
                                        if_match=self._etag_seen or "*", parameters=params)
        return last4(keys.primary_key or "")

    def _end_secondary(self, sid: str, old_fp: str) -> str | None:
        """The end of a key.from_env rotation: a fresh secondary, so the old key (kept there) stops. Only while
        the secondary is still that old key (never twice, never another key). Returns its last 4, or None."""
        _, keys = self._secrets(sid)
        if key_fingerprint(keys.secondary_key or "") != old_fp:
            return None  # regenerated already, never made (interrupted before the PATCH), or changed by someone
        try:
            self.client.subscription.regenerate_secondary_key(self.rg, self.service, SUB_PREFIX + sid)
        except SDK_ERRORS as exc:
            raise self.explain(exc, f"regenerating the secondary key of {sid}") from None  # type: ignore[attr-defined]
        return last4(keys.secondary_key or "")

    def finish_rotations(self, subscriber_ids: list[str] | None = None, live=None) -> list[KeyAction]:
        if self.key_journal is None:
            return []
        now = datetime.now(UTC)
        actions: list[KeyAction] = []
        for sid, (ends, new_fp) in sorted(self.key_journal.pending().items()):
            if subscriber_ids is not None and sid not in subscriber_ids:
                continue
            if datetime.fromisoformat(ends) > now:
                continue
            try:
                old_fp = _old_fp((ends, new_fp))
                old = self._swap(sid, new_fp) if old_fp is None else self._end_secondary(sid, old_fp)
            except ProviderError as exc:
                if "has no subscription" not in str(exc):
                    raise
                old = None  # the subscriber is gone: nothing to finish
            self.key_journal.drop(sid)
            if old is not None:
                actions.append(KeyAction(sid, "expired", old, "overlap ended: the new key is the primary now"
                                         if old_fp is None else "overlap ended: the old key (secondary) regenerated"))
        return actions

    def revoke_key(self, subscriber_id: str, key: str | None, revoke_all: bool) -> list[KeyAction]:
        from azure.mgmt.apimanagement.models import SubscriptionUpdateParameters

        sid = subscriber_id
        journal = self._journal()
        sub, keys = self._secrets(sid)
        rotation = journal.pending().get(sid)
        old_fp = _old_fp(rotation)
        if old_fp is not None:
            return self._revoke_from_env(sid, keys, rotation, old_fp, key, revoke_all)
        rotating = bool(rotation and rotation[1] and key_fingerprint(keys.secondary_key or "") == rotation[1])
        old4, new4 = last4(keys.primary_key or ""), last4(keys.secondary_key or "")
        if revoke_all:
            params = SubscriptionUpdateParameters(primary_key=secrets.token_hex(16),
                                                  secondary_key=secrets.token_hex(16))
            done = [old4, new4] if rotating else [old4]
        elif (key is None and rotating) or (rotating and key == old4):
            # end the overlap now: the same swap as finish
            params = SubscriptionUpdateParameters(primary_key=keys.secondary_key, secondary_key=secrets.token_hex(16))
            done = [old4]
        elif key is not None and key not in (old4, new4 if rotating else None):
            raise ProviderError(f"subscriber {sid} has no working key ending in {key!r}")
        else:
            raise ProviderError(f"revoking ...{key or old4} would leave {sid} without a working key; rotate first, "
                                "or pass --all")
        self.client.subscription.update(self.rg, self.service, SUB_PREFIX + sid, if_match=self._etag_seen or "*",
                                        parameters=params)
        if rotation is not None:
            journal.drop(sid)
        return [KeyAction(sid, "revoked", k, "revoked now") for k in done]

    def _revoke_from_env(self, sid: str, keys, rotation, old_fp: str, key: str | None,
                         revoke_all: bool) -> list[KeyAction]:
        """revoke during a key.from_env rotation: the old key is the secondary; the primary is the plan's value."""
        from azure.mgmt.apimanagement.models import SubscriptionUpdateParameters

        rotating = key_fingerprint(keys.secondary_key or "") == old_fp
        new4, old4 = last4(keys.primary_key or ""), last4(keys.secondary_key or "")
        if revoke_all:
            params = SubscriptionUpdateParameters(primary_key=secrets.token_hex(16),
                                                  secondary_key=secrets.token_hex(16))
            done = [new4, old4] if rotating else [new4]
        elif rotating and key in (None, old4):
            params = SubscriptionUpdateParameters(secondary_key=secrets.token_hex(16))  # the old key ends now
            done = [old4]
        elif key is not None and key not in (new4, old4 if rotating else None):
            raise ProviderError(f"subscriber {sid} has no working key ending in {key!r}")
        else:
            raise ProviderError(f"revoking ...{key or new4} would leave {sid} without a working key; it takes its "
                                "key from key.from_env: put a new value there and apply, or pass --all")
        self.client.subscription.update(self.rg, self.service, SUB_PREFIX + sid, if_match=self._etag_seen or "*",
                                        parameters=params)
        self._journal().drop(sid)
        return [KeyAction(sid, "revoked", k, "revoked now") for k in done]
