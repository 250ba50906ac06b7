"""The Azure provider's actions, one per kind and action; the engine's solver orders and runs them.

Updates and deletes send ``If-Match`` with the ETag read while planning (``AzureReading.fetch_etag``); a
resource changed since the plan stops the apply. A product policy holding elements apimon did not write is
not replaced unless forced (``refusal``). A product is deleted only after its owned subscriptions; one that
still has subscriptions apimon does not own is refused (apimon never sends ``deleteSubscriptions=true``).
"""

from __future__ import annotations

import os
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from ...model import LiveState, Product, Subscriber
from ...reconcile.changes import Change
from ...render.words import count
from ..base import ProviderError
from .client import short
from .policy import policies_equal, product_policy, token_check
from .read import OWNER_TAG, SUB_PREFIX, WANTED_PRODUCT, ProductHandle, SubscriptionHandle


def force_policy() -> bool:
    """`apply --force-policy` (the CLI sets APIMON_FORCE_POLICY=1): replace policies with foreign elements."""
    return os.environ.get("APIMON_FORCE_POLICY", "").lower() in ("1", "true", "yes")


def limits_text(p: Product) -> str:
    parts = []
    token = token_check(p)
    if token is not None:
        parts.append(f"validate-jwt {token.issuer}" + (f" scopes {' '.join(token.scopes)}" if token.scopes else ""))
    if p.rate_limit:
        parts.append(f"rate-limit {p.rate_limit.rate}/s")
    if p.quota:
        parts.append(f"quota {p.quota.limit}/{p.quota.period}")
    return ", ".join(parts) or "no limits"


#: the product fields the policy carries
POLICY_FIELDS = ("rate_limit", "quota", "auth", "scopes")


def writes_policy(c: Change, handle: ProductHandle | None) -> bool:
    """Whether applying ``c`` writes (or deletes) the product's policy."""
    want = c.desired
    if not isinstance(want, Product):
        return False
    xml = product_policy(want)
    if c.action == "create":
        return xml is not None
    if not (c.adopt or any(c.changed(f) for f in POLICY_FIELDS)):
        return False
    live_policy = handle.policy if handle else None
    if xml is None:
        return live_policy is not None
    return not policies_equal(xml, live_policy)


def refusal(c: Change, live: LiveState) -> str | None:
    """Why ``c`` may not be applied: it would replace a policy with elements apimon did not write."""
    handle = live.handles.get(("product", c.id)) if c.kind == "product" else None
    if handle is None or not handle.foreign or force_policy() or not writes_policy(c, handle):
        return None
    return (f"product {c.id}: refusing to replace its policy, which has elements apimon did not write "
            f"({'; '.join(handle.foreign)}); re-run with --force-policy (APIMON_FORCE_POLICY=1) to "
            "replace it with apimon's policy, or remove those elements on the gateway")


class AzureWriting:
    """The writing half of the Azure provider (ETags are read by ``AzureReading.fetch_etag``, the other half;
    ``_call`` explains SDK errors)."""

    client: Any
    rg: str
    service: str
    _tag_ready: bool
    key_journal: Any

    def _etag(self, kind: str, rid: str, live: LiveState, what: str) -> str | None:
        """The plan-time ETag of a resource (read now if the plan did not); None if it is gone. Raises if it
        changed since the plan read it."""
        handle = live.handles.get((kind, rid))
        if handle is None or not handle.etag_read:
            self._call(what, lambda: self.fetch_etag(kind, rid, live))
            handle = live.handles[(kind, rid)]
        if handle.stale:
            raise ProviderError(f"{what}: it was changed on the gateway since the plan read it. Nothing more was "
                                "applied; run `apimon plan` to see its current state, then apply again")
        return None if handle.gone else handle.etag

    # ---------------------------------------------------------------- products
    def _ensure_tag(self) -> None:
        if self._tag_ready:
            return
        from azure.mgmt.apimanagement.models import TagCreateUpdateParameters

        try:
            self.client.tag.get(self.rg, self.service, OWNER_TAG)
        except ResourceNotFoundError:
            self.client.tag.create_or_update(self.rg, self.service, OWNER_TAG,
                                             TagCreateUpdateParameters(display_name=OWNER_TAG))
        self._tag_ready = True

    def _write_policy(self, pid: str, want: Product, etag: str | None, existed: bool) -> None:
        from azure.mgmt.apimanagement.models import PolicyContract

        c, rg, svc = self.client, self.rg, self.service
        xml = product_policy(want)
        if xml is None:
            if existed:
                c.product_policy.delete(rg, svc, pid, "policy", if_match=etag or "*")
            return
        kwargs = {"if_match": etag} if existed and etag else {}
        c.product_policy.create_or_update(rg, svc, pid, "policy", PolicyContract(value=xml, format="rawxml"),
                                          **kwargs)

    def create_product(self, change: Change, live: LiveState) -> str:
        from azure.mgmt.apimanagement.models import ProductContract

        want = change.desired
        assert isinstance(want, Product)
        c, rg, svc = self.client, self.rg, self.service
        try:
            c.product.get_entity_tag(rg, svc, want.id)
            raise ProviderError(f"product {want.id} was created on the gateway since the plan read it; run "
                                "`apimon plan` again")
        except ResourceNotFoundError:
            pass
        c.product.create_or_update(rg, svc, want.id, ProductContract(
            display_name=want.display_name, description=want.description or None, **WANTED_PRODUCT))
        self._ensure_tag()
        c.tag.assign_to_product(rg, svc, want.id, OWNER_TAG)
        self._write_policy(want.id, want, None, existed=False)
        for api in want.apis:
            c.product_api.create_or_update(rg, svc, want.id, api)
        return f"created ({limits_text(want)}; {count(len(want.apis), 'API')} linked)"

    def update_product(self, change: Change, live: LiveState) -> str:
        from azure.mgmt.apimanagement.models import ProductUpdateParameters

        want = change.desired
        assert isinstance(want, Product)
        c, rg, svc = self.client, self.rg, self.service
        message = refusal(change, live)
        if message:
            raise ProviderError(message)
        etag = self._etag("product", want.id, live, change.label)
        if etag is None:
            raise ProviderError(f"product {want.id} no longer exists on the gateway; run `apimon plan` again")
        handle = live.handles[("product", want.id)]
        drift = any(handle.snapshot.get(k) is not None and handle.snapshot.get(k) != v
                    for k, v in WANTED_PRODUCT.items())
        done = []
        if change.adopt or drift or change.changed("display_name") or change.changed("description"):
            c.product.update(rg, svc, want.id, if_match=etag, parameters=ProductUpdateParameters(
                display_name=want.display_name, description=want.description, **WANTED_PRODUCT))
            done.append("properties")
        if change.adopt:
            self._ensure_tag()
            c.tag.assign_to_product(rg, svc, want.id, OWNER_TAG)
            done.append(f"tagged {OWNER_TAG}")
        if writes_policy(change, handle):
            self._write_policy(want.id, want, handle.policy_etag, existed=handle.policy is not None)
            removed = f", removed {'; '.join(handle.foreign)}" if handle.foreign else ""
            done.append(f"policy ({limits_text(want)}{removed})")
        if change.changed("apis") or change.adopt:
            have = set(handle.apis)
            for api in sorted(set(want.apis) - have):
                c.product_api.create_or_update(rg, svc, want.id, api)
            for api in sorted(have - set(want.apis)):
                c.product_api.delete(rg, svc, want.id, api)
            if set(want.apis) != have:
                done.append("API links")
        verb = "adopted" if change.adopt else "updated"
        return f"{verb} ({', '.join(done)})" if done else verb

    def delete_product(self, change: Change, live: LiveState) -> str:
        c, rg, svc = self.client, self.rg, self.service
        etag = self._etag("product", change.id, live, change.label)
        if etag is None:
            return "already gone"
        remaining = sorted(s.name for s in c.product_subscriptions.list(rg, svc, change.id))
        if remaining:
            foreign = [n for n in remaining if not n.lower().startswith(SUB_PREFIX)]
            if foreign:
                raise ProviderError(f"product {change.id} still has subscriptions apimon does not own: "
                                    f"{', '.join(foreign)}; refusing to delete it (apimon never deletes "
                                    "subscriptions it did not create). Move or delete them, then apply again")
            raise ProviderError(f"product {change.id} still has subscriptions: {', '.join(remaining)} (created "
                                "since the plan?); run `apimon plan` again")
        c.product.delete(rg, svc, change.id, if_match=etag)
        return "deleted"

    # ---------------------------------------------------------------- subscribers: subscriptions
    def create_subscriber(self, change: Change, live: LiveState) -> str:
        from azure.mgmt.apimanagement.models import SubscriptionCreateParameters

        sub = change.desired
        assert isinstance(sub, Subscriber)
        self.client.subscription.create_or_update(self.rg, self.service, SUB_PREFIX + sub.id,
                                                  SubscriptionCreateParameters(
                                                      scope=f"/products/{sub.product}", display_name=sub.id,
                                                      state="active" if sub.enabled else "suspended",
                                                      primary_key=sub.key_value))
        return "created (key imported)" if sub.key_value else "created (key generated by Azure)"

    @staticmethod
    def _subscription_name(change: Change, live: LiveState) -> str:
        handle = live.handles.get(("subscriber", change.id))
        return handle.name if isinstance(handle, SubscriptionHandle) and handle.name else SUB_PREFIX + change.id

    def update_subscriber(self, change: Change, live: LiveState) -> str:
        from azure.mgmt.apimanagement.models import SubscriptionUpdateParameters

        sub = change.desired
        assert isinstance(sub, Subscriber)
        if change.adopt:
            raise ProviderError(f"subscription {change.id} cannot be adopted: Azure subscription names cannot "
                                f"change and apimon owns only subscriptions named {SUB_PREFIX}<subscriber id>. "
                                f"Delete it (or leave it) and let apimon create {SUB_PREFIX}{change.id}; "
                                "key.from_env keeps its key value")
        name = self._subscription_name(change, live)
        etag = self._etag("subscriber", sub.id, live, change.label)
        if etag is None:
            raise ProviderError(f"subscription {name} no longer exists on the gateway; run `apimon plan` again")
        moving = change.changed("product")
        params = SubscriptionUpdateParameters(display_name=sub.id, state="active" if sub.enabled else "suspended")
        if moving:
            params.scope = f"/products/{sub.product}"
        old_works_until = None
        if change.changed("key") and sub.key_value is not None:
            params.primary_key = sub.key_value
            old_works_until = self._keep_old_key(sub, name, params)
        try:
            self.client.subscription.update(self.rg, self.service, name, if_match=etag, parameters=params)
        except HttpResponseError as exc:
            if moving and exc.status_code == 400:
                return self._recreate_subscription(sub, name, etag, exc, params.secondary_key)
            raise
        parts = []
        if moving:
            parts.append(f"moved to product {sub.product}, keys kept")
        if change.changed("enabled"):
            parts.append("enabled" if sub.enabled else "suspended")
        if change.changed("key"):
            parts.append(f"key replaced, the old key works until {old_works_until} as the secondary"
                         if old_works_until else "key replaced")
        return f"updated ({', '.join(parts)})" if parts else "updated"

    def _keep_old_key(self, sub: Subscriber, name: str, params: Any) -> str | None:
        """A new value in key.from_env: the old primary becomes the secondary (both keys of a subscription
        work) and keeps working for key.overlap; its end and fingerprint go to the rotation journal *before*
        the PATCH (``keys.journal``, as a rotation's), so ``keys finish`` or the next apply regenerates the
        secondary after the end, and an apply interrupted before the PATCH redoes it with the same end.
        Returns the end, or None when the old key stops now (``key.overlap: 0s``, no ledger, nothing to keep)."""
        from datetime import UTC, datetime

        from ...reconcile.fields import key_fingerprint
        from .keys import OLD_KEY, _iso

        journal = self.key_journal
        if journal is None or sub.key_overlap.total_seconds() <= 0:
            return None
        old = self.client.subscription.list_secrets(self.rg, self.service, name).primary_key
        if not old or old == sub.key_value:
            return None
        from ...security.redact import add_secrets

        add_secrets([old])  # the old value is no longer the plan's: never in a diagnostic either
        record = OLD_KEY + key_fingerprint(old)
        pending = journal.pending().get(sub.id)
        if pending is not None and pending[1] == record:
            ends = pending[0]  # an apply interrupted before the PATCH: the end it recorded
        else:
            ends = _iso(datetime.now(UTC) + sub.key_overlap)
        journal.put(sub.id, ends, record)
        params.secondary_key = old
        return ends

    def _recreate_subscription(self, sub: Subscriber, name: str, etag: str, cause: HttpResponseError,
                               secondary: str | None = None) -> str:
        """Azure refused to change the scope: recreate it on the new product with the same keys (``secondary``:
        the old primary kept for key.overlap, when the key changes too)."""
        from azure.mgmt.apimanagement.models import SubscriptionCreateParameters

        c, rg, svc = self.client, self.rg, self.service
        keys = c.subscription.list_secrets(rg, svc, name)
        primary = sub.key_value or keys.primary_key
        c.subscription.delete(rg, svc, name, if_match=etag)
        c.subscription.create_or_update(rg, svc, name, SubscriptionCreateParameters(
            scope=f"/products/{sub.product}", display_name=sub.id,
            state="active" if sub.enabled else "suspended", primary_key=primary,
            secondary_key=secondary or keys.secondary_key))
        return (f"moved to product {sub.product} by recreating subscription {name} with the same primary and "
                f"secondary keys (Azure refused to change its scope: {short(cause)})")

    def delete_subscriber(self, change: Change, live: LiveState) -> str:
        name = self._subscription_name(change, live)
        etag = self._etag("subscriber", change.id, live, change.label)
        if etag is None:
            return "already gone"
        self.client.subscription.delete(self.rg, self.service, name, if_match=etag)
        return "deleted (key revoked)"
