"""The Apigee provider's subscriber actions: a developer (email; names from metadata) and one app named after
the subscriber holding the product, whose one credential is the subscriber's key. ``enabled: false``
revokes the key; nothing is deleted. An email change moves the app to the new developer, keeping its key.

The credential's consumer key and secret are also the app's OAuth 2.0 client credentials (client id = consumer
key). A subscriber with ``client_secret.from_env`` gets an imported credential (``keys`` create with
consumerKey + consumerSecret: the plan's key, else one apimon generates) instead of the one Apigee generates.
Apigee cannot change an issued credential's secret: a new client secret deletes the credential and imports
the same key again with the new secret, its products, attributes and status (a moment without the key).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from ...model import LiveState, Subscriber
from ...reconcile.changes import Change
from ..base import ProviderError
from .client import AlreadyExists, NotFound, seg
from .rateplans import OUTPUT_ONLY
from .read import (
    EXPIRES_ATTR,
    MANAGED,
    META_PREFIX,
    NAME_KEYS,
    AppHandle,
    developer_names,
    managed,
    primary_credential,
)


def new_key() -> str:
    """A consumer key apimon makes for a credential it imports (letters, digits, '-' and '_', like Apigee's)."""
    return secrets.token_urlsafe(36)


class ApigeeSubscribers:
    """Subscriber actions of the Apigee provider."""

    api: Any
    _dev_managed: dict[str, bool]
    now_ms: Callable[[], int]

    def _app_path(self, email: str, app: str) -> str:
        return f"/developers/{seg(email)}/apps/{seg(app)}"

    def _key_path(self, email: str, app: str, key: str) -> str:
        self.api.sensitive.add(key)
        return f"{self._app_path(email, app)}/keys/{seg(key)}"

    def _app_attributes(self, sub: Subscriber, base: list[dict]) -> list[dict]:
        keep = [a for a in base if a.get("name") != MANAGED and not a.get("name", "").startswith(META_PREFIX)]
        return keep + [{"name": MANAGED, "value": "true"}] + [
            {"name": META_PREFIX + k, "value": v} for k, v in sub.metadata]

    def _ensure_developer(self, sub: Subscriber, email: str) -> None:
        """Create the subscriber's developer, or reuse it if apimon manages it."""
        if self._dev_managed.get(email):
            return
        body = {"email": email, **developer_names(sub), "attributes": [{"name": MANAGED, "value": "true"}]}
        try:
            self.api.post("/developers", body)
            self._dev_managed[email] = True
            return
        except AlreadyExists:
            dev = self.api.get(f"/developers/{seg(email)}")
        self._dev_managed[email] = managed(dev)
        if not managed(dev):
            raise ProviderError(f"subscriber {sub.id}: developer {email} exists on Apigee and apimon does not "
                                f"manage it; left alone (add the attribute {MANAGED}=true to that developer "
                                "to let apimon add apps to it)")

    def create_subscriber(self, change: Change, live: LiveState) -> str:
        sub = change.desired
        email = (sub.email or "").lower()
        if not email:
            raise ProviderError(f"subscriber {sub.id}: Apigee developers need an email")
        self._ensure_developer(sub, email)
        body: dict = {"name": sub.id, "attributes": self._app_attributes(sub, [])}
        imported = sub.key_value is not None or sub.client_secret is not None
        if not imported:
            body["apiProducts"] = [sub.product]
        try:
            app = self.api.post(f"/developers/{seg(email)}/apps", body)
        except AlreadyExists:
            raise ProviderError(f"subscriber {sub.id}: developer {email} already has an app named {sub.id} "
                                "(created since the plan was read?); run `apimon plan` again") from None
        generated = [c["consumerKey"] for c in app.get("credentials", [])]
        self.api.sensitive.update(generated)
        self.api.sensitive.update(c.get("consumerSecret", "") for c in app.get("credentials", []))
        if imported:
            key = self._import_key(sub, email, sub.key_value or new_key(), self._secret_for(sub), [])
            for g in generated:  # exactly one key: the imported one
                self.api.delete(self._key_path(email, sub.id, g))
        else:
            key = generated[0]
        if not sub.enabled:
            self.api.action(self._key_path(email, sub.id, key), "revoke")
        done = "created (key imported)" if sub.key_value is not None else "created (key generated)"
        if sub.client_secret is not None:
            done += ", client secret imported"
        return done + (", key revoked" if not sub.enabled else "")

    @staticmethod
    def _secret_for(sub: Subscriber, current: dict | None = None) -> str:
        """The consumer secret of a credential apimon imports: the plan's client secret, else the current
        credential's (a key change keeps the client secret), else a new one."""
        if sub.client_secret is not None and sub.client_secret.value:
            return sub.client_secret.value
        return (current or {}).get("consumerSecret") or secrets.token_urlsafe(32)

    def _import_key(self, sub: Subscriber, email: str, key: str, secret: str, attributes: list[dict]) -> str:
        """Add an existing key to the app and attach the subscriber's product to it (keys/create attaches
        nothing)."""
        self.api.sensitive.update((key, secret))
        body: dict = {"consumerKey": key, "consumerSecret": secret}
        try:
            self.api.post(f"{self._app_path(email, sub.id)}/keys", body)
        except AlreadyExists:
            raise ProviderError(f"subscriber {sub.id}: the imported key value is already used by another app "
                                "on Apigee") from None
        attach: dict = {"apiProducts": [sub.product]}
        if attributes:
            attach["attributes"] = attributes
        self.api.post(self._key_path(email, sub.id, key), attach)
        return key

    def _fresh_app(self, sid: str, email: str) -> dict:
        try:
            return self.api.get(self._app_path(email, sid))
        except NotFound:
            raise ProviderError(f"subscriber {sid}: app {sid} of developer {email} no longer exists on Apigee; "
                                "run `apimon plan` again") from None

    def _handle(self, live: LiveState, change: Change) -> AppHandle:
        h = live.handle("subscriber", change.id)
        if h is None:
            raise ProviderError(f"subscriber {change.id}: not found in what the plan read; run `apimon plan` again")
        return h

    def update_subscriber(self, change: Change, live: LiveState) -> str:
        sub = change.desired
        h = self._handle(live, change)
        email = h.email
        app = self._fresh_app(sub.id, email)
        if not managed(app) and not change.adopt:
            raise ProviderError(f"subscriber {sub.id} is not managed by apimon; left alone")
        if (sub.email or "").lower() != email:
            return self._move_to_developer(sub, email, app)
        done = []
        now = self.now_ms()
        cred = primary_credential(app, sub.product, now)
        if change.adopt or change.changed("metadata"):
            self.api.post(f"{self._app_path(email, sub.id)}/attributes",
                          {"attribute": self._app_attributes(sub, app.get("attributes", []))})
            done.append("adopted" if change.adopt else "metadata updated")
            if any(change.changed(f"metadata.{k}") for k in NAME_KEYS):
                self._update_developer_names(sub, email)
        new_secret = change.changed("client_secret") and sub.client_secret is not None
        if cred is None or (change.changed("key") and sub.key_value is not None):
            old = cred
            key = sub.key_value or (new_key() if sub.client_secret is not None else None)
            if key is None:  # no credential at all: generate one holding the product
                generated = self.api.post(self._app_path(email, sub.id),
                                          {"name": sub.id, "apiProducts": [sub.product]})
                cred = generated.get("credentials", [{}])[-1]
            else:
                self._import_key(sub, email, key, self._secret_for(sub, old), (old or {}).get("attributes", []))
                cred = {"consumerKey": key, "status": "approved",
                        "apiProducts": [{"apiproduct": sub.product, "status": "approved"}]}
                if old is not None and sub.key_value is not None and sub.key_overlap.total_seconds() > 0:
                    # a new value in key.from_env: the old key works for key.overlap, as a rotation's (its end
                    # in apimon_expires; `keys finish` or the next apply revokes and deletes it after that)
                    from datetime import UTC, datetime

                    ends = (datetime.now(UTC) + sub.key_overlap).isoformat(timespec="seconds")
                    attrs = [a for a in old.get("attributes") or [] if a.get("name") != EXPIRES_ATTR]
                    self.api.post(self._key_path(email, sub.id, old["consumerKey"]),
                                  {"attributes": [*attrs, {"name": EXPIRES_ATTR, "value": ends}]})
                    done.append(f"key replaced (the old key works until {ends})")
                else:
                    if old is not None:
                        self.api.delete(self._key_path(email, sub.id, old["consumerKey"]))
                    done.append("key replaced")
            if new_secret:
                done.append("client secret imported")
        elif new_secret:
            cred = self._replace_secret(sub, email, cred)
            done.append("client secret replaced (key kept)")
        key = cred["consumerKey"]
        self.api.sensitive.add(key)
        products = [r.get("apiproduct", "") for r in cred.get("apiProducts", [])]
        if products != [sub.product]:
            if sub.product not in products:  # add the new product first: the key never holds nothing
                body: dict = {"apiProducts": [sub.product]}
                if cred.get("attributes"):  # this call replaces the key's attributes: send them back
                    body["attributes"] = cred["attributes"]
                self.api.post(self._key_path(email, sub.id, key), body)
            for old_product in products:
                if old_product != sub.product:
                    self.api.delete(f"{self._key_path(email, sub.id, key)}/apiproducts/{seg(old_product)}")
            done.append(f"moved to product {sub.product}")
            cred = {**cred, "apiProducts": [{"apiproduct": sub.product, "status": "approved"}]}
        done += self._set_enabled(sub, email, app, cred)
        return ", ".join(done) or "up to date"

    def _replace_secret(self, sub: Subscriber, email: str, cred: dict) -> dict:
        """A new consumer secret on the subscriber's key: Apigee cannot change an issued credential's secret and
        a consumer key exists once per organization, so the credential is deleted and the same key imported
        again with the new secret, its products and attributes; its status is restored by ``_set_enabled``."""
        key = cred["consumerKey"]
        path = self._key_path(email, sub.id, key)
        products = [r.get("apiproduct", "") for r in cred.get("apiProducts", [])] or [sub.product]
        self.api.delete(path)
        self.api.sensitive.add(sub.client_secret.value if sub.client_secret else "")
        try:
            self.api.post(f"{self._app_path(email, sub.id)}/keys",
                          {"consumerKey": key, "consumerSecret": self._secret_for(sub)})
            body: dict = {"apiProducts": products}
            if cred.get("attributes"):
                body["attributes"] = cred["attributes"]
            self.api.post(path, body)
        except ProviderError as exc:
            raise ProviderError(f"subscriber {sub.id}: its key was removed to import the new client secret, but "
                                f"importing it again failed ({exc}); run `apimon apply` again to import it") from None
        return {**cred, "status": "approved",
                "apiProducts": [{"apiproduct": p, "status": "approved"} for p in products]}

    def _set_enabled(self, sub: Subscriber, email: str, app: dict, cred: dict) -> list[str]:
        key = cred["consumerKey"]
        key_path = self._key_path(email, sub.id, key)
        if not sub.enabled:
            if cred.get("status", "approved") != "revoked":
                self.api.action(key_path, "revoke")
                return ["key revoked"]
            return []
        done = []
        if app.get("status", "approved") == "revoked":
            self.api.action(self._app_path(email, sub.id), "approve")
            done.append("app approved")
        if cred.get("status", "approved") == "revoked":
            self.api.action(key_path, "approve")
            done.append("key approved")
        for ref in cred.get("apiProducts", []):
            if ref.get("status", "approved") == "revoked":
                self.api.action(f"{key_path}/apiproducts/{seg(ref['apiproduct'])}", "approve")
                done.append(f"key approved for {ref['apiproduct']}")
        return done

    def _update_developer_names(self, sub: Subscriber, email: str) -> None:
        dev = self.api.get(f"/developers/{seg(email)}")
        if not managed(dev):
            return  # the names of a developer apimon does not own stay as they are
        body = {k: v for k, v in dev.items() if k not in (*OUTPUT_ONLY, "apps", "developerId",
                                                             "organizationName", "status")}
        body.update(developer_names(sub))
        self.api.put(f"/developers/{seg(email)}", body)

    def _move_to_developer(self, sub: Subscriber, old_email: str, app: dict) -> str:
        """An email change: the app moves to the new developer, keeping its key (key and secret are
        re-imported: a key exists once per organization, so the old app goes first)."""
        new_email = (sub.email or "").lower()
        self._ensure_developer(sub, new_email)
        cred = primary_credential(app, sub.product, self.now_ms())
        created = self.api.post(f"/developers/{seg(new_email)}/apps",
                                {"name": sub.id, "attributes": self._app_attributes(sub, app.get("attributes", []))})
        generated = [c["consumerKey"] for c in created.get("credentials", [])]
        self.api.sensitive.update(generated)
        if cred is not None:
            self.api.delete(self._app_path(old_email, sub.id))
            try:
                self._import_key(sub, new_email, cred["consumerKey"], cred["consumerSecret"],
                                 cred.get("attributes", []))
            except ProviderError as exc:
                raise ProviderError(f"subscriber {sub.id}: moved to developer {new_email} but its key could not "
                                    f"be re-imported ({exc}); the app now has a new generated key") from None
            for g in generated:
                self.api.delete(self._key_path(new_email, sub.id, g))
            cred = {**cred, "apiProducts": [{"apiproduct": sub.product, "status": "approved"}]}
        else:
            self.api.delete(self._app_path(old_email, sub.id))
            self.api.post(self._key_path(new_email, sub.id, generated[0]), {"apiProducts": [sub.product]})
            cred = {"consumerKey": generated[0], "status": "approved",
                    "apiProducts": [{"apiproduct": sub.product, "status": "approved"}]}
        self._set_enabled(sub, new_email, {"status": "approved"}, cred)
        self._remove_developer_if_empty(old_email)
        return f"moved to developer {new_email} (key kept)"

    def _remove_developer_if_empty(self, email: str) -> bool:
        try:
            dev = self.api.get(f"/developers/{seg(email)}")
        except NotFound:
            return False
        if managed(dev) and not dev.get("apps"):
            self.api.delete(f"/developers/{seg(email)}")
            self._dev_managed.pop(email, None)
            return True
        return False

    def delete_subscriber(self, change: Change, live: LiveState) -> str:
        h = self._handle(live, change)
        email = h.email
        try:
            app = self.api.get(self._app_path(email, change.id))
        except NotFound:
            return "already gone"
        if not managed(app):
            raise ProviderError(f"subscriber {change.id} is not managed by apimon; left alone")
        self.api.sensitive.update(c.get("consumerKey", "") for c in app.get("credentials", []))
        self.api.delete(self._app_path(email, change.id))
        gone = self._remove_developer_if_empty(email)
        return "deleted (app and key)" + (f", developer {email} removed" if gone else "")
