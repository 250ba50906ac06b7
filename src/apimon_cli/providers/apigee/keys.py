"""Key lifecycle on Apigee (``apimon keys ...``): a second credential on the subscriber's app.

1. ``keys/create`` a new credential (key and secret made by apimon, attribute ``apimon_rotated_at``) — it holds
   no API product yet;
2. ``updateDeveloperAppKey`` adds the subscriber's API product to it — both credentials work;
3. the old credential gets the attribute ``apimon_expires`` (the end of the overlap). Apigee cannot change an
   issued credential's ``expiresAt``, so the end is kept there and ``keys finish`` (or ``apply``) revokes and
   deletes the old credential once it has passed.

Every step leaves the old credential working; an interrupted rotation (a newest ``apimon_rotated_at``
credential beside an old one without an end) is completed by the next run. Usage on Apigee is reported per
app, so it stays the subscriber's whatever credential is used.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from ...keys.model import ACTIVE, REVOKED, ROTATING_OUT, KeyAction, KeyInfo, Rotated, last4
from ..base import ProviderError
from .read import EXPIRES_ATTR, ROTATED_ATTR, attribute, key_ok, managed, primary_credential


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _when(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def _ms(value: Any) -> datetime | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(n / 1000, UTC) if n > 0 else None


def _products(cred: dict) -> list[str]:
    return [r.get("apiproduct", "") for r in cred.get("apiProducts", [])]


def _with(attrs: list[dict] | None, name: str, value: str) -> list[dict]:
    return [a for a in attrs or [] if a.get("name") != name] + [{"name": name, "value": value}]


class ApigeeKeys:
    """The key half of the Apigee provider (``self.api``, ``self.list_apps``, ``self._key_path`` ...)."""

    api: Any
    desired: Any

    def _app_of(self, sid: str):
        for app in self.list_apps():  # type: ignore[attr-defined]
            if app.name == sid:
                if not managed(app.raw):
                    raise ProviderError(f"subscriber {sid}'s app is not managed by apimon; apimon manages only the "
                                        "keys it owns")
                self.api.sensitive.update(c.get("consumerKey", "") for c in app.raw.get("credentials", []))
                return app
        raise ProviderError(f"subscriber {sid} has no app on Apigee (apply the plan first?)")

    def _product_of(self, sid: str, app) -> str | None:
        sub = self.desired.subscribers.get(sid)
        return sub.product if sub is not None else None

    def _state(self, sid: str):
        """(app, current credential, rotating-out credentials, unfinished old credentials)."""
        app = self._app_of(sid)
        creds = app.raw.get("credentials", [])
        rotating = [c for c in creds if attribute(c, EXPIRES_ATTR) is not None]
        others = [c for c in creds if attribute(c, EXPIRES_ATTR) is None]
        newest = max(others, key=lambda c: int(c.get("issuedAt") or 0), default=None)
        unfinished: list[dict] = []
        if newest is not None and attribute(newest, ROTATED_ATTR) is not None and len(others) > 1:
            unfinished = [c for c in others if c is not newest and c.get("status", "approved") != "revoked"]
        current = newest if unfinished else primary_credential(app.raw, self._product_of(sid, app),
                                                               self.now_ms())  # type: ignore[attr-defined]
        return app, current, rotating, unfinished

    def _complete(self, sid: str, app, current: dict, unfinished: list[dict], ends: datetime) -> None:
        product = self._product_of(sid, app)
        key = current["consumerKey"]
        if product and product not in _products(current):
            self.api.post(self._key_path(app.email, sid, key),  # type: ignore[attr-defined]
                          {"apiProducts": [product], "attributes": current.get("attributes") or []})
        for old in unfinished:
            self.api.post(self._key_path(app.email, sid, old["consumerKey"]),  # type: ignore[attr-defined]
                          {"attributes": _with(old.get("attributes"), EXPIRES_ATTR, _iso(ends))})

    # ---------------------------------------------------------------- the four calls
    def list_keys(self, subscriber_ids: list[str]) -> dict[str, list[KeyInfo]]:
        wanted = set(subscriber_ids)
        now = datetime.now(UTC)
        out: dict[str, list[KeyInfo]] = {}
        for app in self.list_apps():  # type: ignore[attr-defined]
            if app.name not in wanted or not managed(app.raw):
                continue
            infos = []
            for c in sorted(app.raw.get("credentials", []), key=lambda c: int(c.get("issuedAt") or 0)):
                key = c.get("consumerKey", "")
                self.api.sensitive.add(key)
                end = _when(attribute(c, EXPIRES_ATTR)) or _ms(c.get("expiresAt"))
                if c.get("status", "approved") == "revoked" or not key_ok(c, int(now.timestamp() * 1000)):
                    state = REVOKED
                elif attribute(c, EXPIRES_ATTR) is not None:
                    state = ROTATING_OUT if end and end > now else REVOKED
                else:
                    state = ACTIVE
                infos.append(KeyInfo(last4(key), last4(key), _ms(c.get("issuedAt")), end, state))
            out[app.name] = infos
        return out

    def rotate_key(self, subscriber_id: str, ends: datetime) -> Rotated:
        sid = subscriber_id
        app, current, rotating, unfinished = self._state(sid)
        if current is None:
            raise ProviderError(f"subscriber {sid} has no credential on Apigee; run `apimon apply` first")
        if unfinished:  # a rotation stopped half-way
            self._complete(sid, app, current, unfinished, ends)
            old = [KeyInfo(last4(c["consumerKey"]), last4(c["consumerKey"]), _ms(c.get("issuedAt")), ends, ROTATING_OUT)
                   for c in unfinished]
            return Rotated(sid, KeyInfo(last4(current["consumerKey"]), last4(current["consumerKey"]),
                                        _ms(current.get("issuedAt")), None, ACTIVE), current["consumerKey"], old,
                           resumed=True, ends=ends)
        now = datetime.now(UTC)
        busy = [c for c in rotating if (_when(attribute(c, EXPIRES_ATTR)) or now) > now]
        if busy:
            tail = last4(busy[0]["consumerKey"])
            raise ProviderError(f"subscriber {sid} is already rotating: its key ...{tail} works until "
                                f"{attribute(busy[0], EXPIRES_ATTR)}; run `apimon keys finish` after that, or "
                                f"`apimon keys revoke {sid} --key {tail}` to end it now")
        key, secret = secrets.token_urlsafe(36), secrets.token_urlsafe(48)
        planned = self.desired.subscribers.get(sid)  # type: ignore[attr-defined]
        if planned is not None and planned.client_secret is not None and planned.client_secret.value:
            secret = planned.client_secret.value  # the new key keeps the plan's client secret
        self.api.sensitive.update((key, secret))
        marker = [{"name": ROTATED_ATTR, "value": _iso(now)}]
        self.api.post(f"{self._app_path(app.email, sid)}/keys",  # type: ignore[attr-defined]
                      {"consumerKey": key, "consumerSecret": secret, "attributes": marker})  # 1. no product yet
        new = {"consumerKey": key, "attributes": marker, "apiProducts": []}
        self._complete(sid, app, new, [current], ends)  # 2. the product on it, 3. the old one's end
        return Rotated(sid, KeyInfo(last4(key), last4(key), now, None, ACTIVE), key,
                       [KeyInfo(last4(current["consumerKey"]), last4(current["consumerKey"]),
                                _ms(current.get("issuedAt")), ends, ROTATING_OUT)], ends=ends)

    def finish_rotations(self, subscriber_ids: list[str] | None = None, live=None) -> list[KeyAction]:
        now = datetime.now(UTC)
        actions: list[KeyAction] = []
        for app in self.list_apps():  # type: ignore[attr-defined]
            sid = app.name
            if not managed(app.raw) or (subscriber_ids is not None and sid not in subscriber_ids):
                continue
            if sid not in self.desired.subscribers:
                continue
            _, current, rotating, unfinished = self._state(sid)
            if unfinished and current is not None:
                self._complete(sid, app, current, unfinished, now + self.desired.subscribers[sid].key_overlap)
            for old in rotating:
                end = _when(attribute(old, EXPIRES_ATTR))
                if end is None or end > now:
                    continue
                path = self._key_path(app.email, sid, old["consumerKey"])  # type: ignore[attr-defined]
                if old.get("status", "approved") != "revoked":
                    self.api.action(path, "revoke")
                self.api.delete(path)
                actions.append(KeyAction(sid, "expired", last4(old["consumerKey"]),
                                         "overlap ended: old credential revoked and deleted"))
        return actions

    def revoke_key(self, subscriber_id: str, key: str | None, revoke_all: bool) -> list[KeyAction]:
        sid = subscriber_id
        app, current, rotating, unfinished = self._state(sid)
        now = datetime.now(UTC)
        working = [(current, ACTIVE)] if current is not None and current.get("status", "approved") != "revoked" else []
        working += [(c, ROTATING_OUT) for c in [*rotating, *unfinished]
                    if (_when(attribute(c, EXPIRES_ATTR)) or now) >= now and c.get("status", "approved") != "revoked"]
        if revoke_all:
            targets = working
        elif key:
            targets = [(c, st) for c, st in working if last4(c["consumerKey"]) == key]
            if not targets:
                raise ProviderError(f"subscriber {sid} has no working key ending in {key!r}")
        else:
            targets = [(c, st) for c, st in working if st == ROTATING_OUT]
            if not targets:
                raise ProviderError(f"subscriber {sid} has one key: revoking it would leave {sid} without a key. "
                                    f"Rotate first (`apimon keys rotate {sid}`), or pass --all to revoke it anyway")
        if not revoke_all and not any(st == ACTIVE for c, st in working if all(c is not t for t, _ in targets)):
            raise ProviderError(f"that would leave {sid} without a working key; rotate first, or pass --all")
        actions = []
        for c, _st in targets:
            path = self._key_path(app.email, sid, c["consumerKey"])  # type: ignore[attr-defined]
            # revoked, then deleted (a revoked key would be approved again by the next apply); --all leaves
            # the app without a credential until the next `apply` or `keys rotate`
            self.api.action(path, "revoke")
            self.api.delete(path)
            actions.append(KeyAction(sid, "revoked", last4(c["consumerKey"]), "revoked now"))
        return actions
