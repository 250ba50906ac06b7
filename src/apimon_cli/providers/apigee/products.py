"""The Apigee provider's product actions: API products (read-modify-write PUTs, so fields apimon does not
manage survive) and their rate plans (a pricing change switches plans at one instant: no gap, no overlap).

Rate plan changes: a new plan starts at the apply instant T and every open apimon plan of the product
ends at exactly T (same instant: no gap, no overlap; exactly one published plan is active afterwards).
The new plan is created as a DRAFT first, then the old one is ended, then the draft is published; a run
interrupted between the last two steps leaves a draft starting where the old plan ended, which the next
apply publishes from that instant, closing the gap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...model import LiveState, Product
from ...reconcile.changes import Change
from ..base import ProviderError
from .client import AlreadyExists, NotFound, seg
from .rateplans import OUTPUT_ONLY, ms_iso, plan_body_for_put, plan_owned, plan_terms, rate_plan_body, window
from .read import AUTH_ATTR, BURST_ATTR, MANAGED, RATE_ATTR, as_held, attrs_of, auth_from_attrs, managed, quota_to_api


class ApigeeProducts:
    """Product actions of the Apigee provider."""

    api: Any
    desired: Any
    environments: list[str]
    page_size: int
    monetization: bool
    now_ms: Callable[[], int]

    def _desired_plan(self, product: Product) -> dict | None:
        b = self.desired.billing
        return rate_plan_body(product, b.currency, b.period)

    def _product_body(self, product: Product, base: dict | None) -> dict:
        """The whole product for a create or a PUT: apimon's fields over everything else ``base`` has."""
        body = {k: v for k, v in (base or {}).items() if k not in OUTPUT_ONLY}
        body.update(name=product.id, displayName=product.display_name, approvalType="auto",
                    environments=list(self.environments))
        if product.description:
            body["description"] = product.description
        else:
            body.pop("description", None)
        if product.apis:
            body["proxies"] = list(product.apis)
        else:
            body.pop("proxies", None)
        for k in ("quota", "quotaInterval", "quotaTimeUnit"):
            body.pop(k, None)
        if product.quota:
            body.update(quota_to_api(product.quota))
        held = as_held(product)
        # scopes are apimon's on a product with oauth2 (and removed when the plan drops oauth2); otherwise
        # scopes set by hand survive, like operation groups
        if "oauth2" in held.auth or "oauth2" in auth_from_attrs(attrs_of(body)):
            if held.scopes:
                body["scopes"] = list(held.scopes)
            else:
                body.pop("scopes", None)
        attrs = [a for a in body.get("attributes", [])
                 if a.get("name") not in (MANAGED, RATE_ATTR, BURST_ATTR, AUTH_ATTR)]
        attrs.append({"name": MANAGED, "value": "true"})
        if product.rate_limit:
            attrs += [{"name": RATE_ATTR, "value": str(product.rate_limit.rate)},
                      {"name": BURST_ATTR, "value": str(product.rate_limit.burst)}]
        if held.auth != ("api_key",):
            attrs.append({"name": AUTH_ATTR, "value": ",".join(held.auth)})
        body["attributes"] = attrs
        return body

    def create_product(self, change: Change, live: LiveState) -> str:
        return self._upsert_product(change)

    def update_product(self, change: Change, live: LiveState) -> str:
        return self._upsert_product(change)

    def _upsert_product(self, change: Change) -> str:
        product = change.desired
        assert isinstance(product, Product)
        path = f"/apiproducts/{seg(product.id)}"
        if change.action == "create":
            try:
                self.api.post("/apiproducts", self._product_body(product, None))
            except AlreadyExists:
                raise ProviderError(f"product {product.id} already exists on Apigee (created since the plan was "
                                    "read, or by an earlier attempt); run `apimon plan` again") from None
            msg = "created"
        else:
            msg = "adopted" if change.adopt else "updated"
            if change.adopt or any(not f.field.startswith("pricing.") for f in change.fields):
                try:
                    raw = self.api.get(path)
                except NotFound:
                    raise ProviderError(f"product {product.id} no longer exists on Apigee; run `apimon plan` "
                                        "again") from None
                if not managed(raw) and not change.adopt:
                    raise ProviderError(f"product {product.id} is not managed by apimon; left alone")
                self.api.put(path, self._product_body(product, raw))
        if self.monetization and (change.action == "create" or change.changed("pricing")):
            note = self._converge_rate_plan(product, new_product=change.action == "create")
            if note:
                msg += f"; {note}"
        return msg

    def delete_product(self, change: Change, live: LiveState) -> str:
        path = f"/apiproducts/{seg(change.id)}"
        try:
            raw = self.api.get(path)
        except NotFound:
            return "already gone"
        if not managed(raw):
            raise ProviderError(f"product {change.id} is not managed by apimon; left alone")
        self.api.delete(path)
        return "deleted (with its rate plans)"

    # ---------------------------------------------------------------- apply: rate plans
    def _converge_rate_plan(self, product: Product, *, new_product: bool = False) -> str:
        """Make the product's one open apimon rate plan the desired one, switching at a single instant."""
        want = self._desired_plan(product)
        base = f"/apiproducts/{seg(product.id)}/rateplans"
        plans = [] if new_product else self.api.list_next_key(base, "ratePlans", self.page_size, expand="true")
        now = self.now_ms()
        own = [p for p in plans if plan_owned(p)]
        published = [p for p in own if p.get("state") == "PUBLISHED"]
        drafts = [p for p in own if p.get("state") != "PUBLISHED"]

        def plan_path(p: dict) -> str:
            return f"{base}/{seg(p['name'])}"

        if want is None:  # free, or a model Apigee cannot express: no plan from now on
            ended = 0
            for p in published:
                start, end = window(p)
                if end > now:
                    if start < now:
                        self.api.put(plan_path(p), {**plan_body_for_put(p), "endTime": str(now)})
                    else:
                        self.api.delete(plan_path(p))
                    ended += 1
            for d in drafts:
                self.api.delete(plan_path(d))
            return f"rate plan ended at {ms_iso(now)}" if ended else ""

        foreign = [p["name"] for p in plans if not plan_owned(p) and p.get("state") == "PUBLISHED"
                   and window(p)[1] > now]
        if foreign:
            raise ProviderError(f"product {product.id} has published rate plans apimon does not manage "
                                f"({', '.join(foreign)}); Apigee allows one active plan per product")
        open_plans = [p for p in published if window(p)[1] > now]
        if (len(open_plans) == 1 and window(open_plans[0])[0] <= now
                and plan_terms(open_plans[0]) == plan_terms(want)):
            for d in drafts:  # leftovers of an earlier attempt
                self.api.delete(plan_path(d))
            return "rate plan unchanged"
        # an interrupted switch left a draft starting where the last plan ended, nothing published after it
        start, pending = now, None
        for d in sorted(drafts, key=lambda p: -window(p)[0]):
            ds = window(d)[0]
            if ds and any(window(p)[1] == ds for p in published) and not any(
                    window(p)[1] > ds for p in published):
                start, pending = ds, d
                break
        body = {**want, "startTime": str(start)}
        to_end = [p for p in published if window(p)[1] > start and window(p)[0] < start]
        to_delete = [p for p in published if window(p)[1] > start and window(p)[0] >= start]
        if not to_end and not to_delete and not drafts:
            self.api.post(base, {**body, "state": "PUBLISHED"})
            return f"rate plan published from {ms_iso(start)}"
        if pending is not None:
            draft = self.api.put(plan_path(pending), {**body, "state": "DRAFT"})
        else:
            draft = self.api.post(base, {**body, "state": "DRAFT"})
        for p in to_end:  # the old plan ends exactly where the new one starts
            self.api.put(plan_path(p), {**plan_body_for_put(p), "endTime": str(start)})
        for p in to_delete:  # published but not started yet: never active
            self.api.delete(plan_path(p))
        self.api.put(f"{base}/{seg(draft['name'])}", {**body, "state": "PUBLISHED"})
        for d in drafts:
            if d is not pending:
                self.api.delete(plan_path(d))
        return (f"rate plan switched at {ms_iso(start)} (previous plan ended at the same instant)"
                if to_end else f"rate plan published from {ms_iso(start)}")
