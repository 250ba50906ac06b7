"""The AWS provider's actions, one per kind and action; the engine's solver orders and runs them.

A plan is created complete in one CreateUsagePlan (tags included) and all of a plan's changes go into ONE
UpdateUsagePlan; usage plan key writes are serialized (one at a time in the region: AWS answers 409
ConflictException to concurrent ones). A changed imported key value is a replacement (AWS cannot change a
key's value): a new key with the same name and plan is made, then the old one deleted.
"""

from __future__ import annotations

import threading
from typing import Any

from ...model import LiveState, Product, Subscriber
from ...reconcile.changes import Change
from ...render.words import count
from ..base import ProviderError
from .client import AwsCallError
from .read import EXPIRES_TAG, MANAGED_TAG, MANAGED_TAGS, SUBSCRIBER_TAG, KeyHandle, PlanHandle, number, owned

_PERIODS = {"day": "DAY", "week": "WEEK", "month": "MONTH"}


class AwsWriting:
    """The writing half of the AWS provider (``self.api``, ``self.region``; API references are resolved by
    ``AwsReading``, the other half)."""

    api: Any
    region: str
    _lock: threading.Lock
    _plan_key_lock: threading.Lock
    _known_plan_ids: set[str]
    _known_key_ids: set[str]
    _created_plans: dict[str, str]
    _gone_keys: set[str]
    _detached: set[tuple[str, str]]

    # ---------------------------------------------------------------- products: usage plans
    def _plan_body(self, p: Product) -> dict:
        body: dict[str, Any] = {"name": p.id, "description": p.description, "tags": dict(MANAGED_TAGS)}
        stages = []
        for entry in p.apis:
            resolved = self._api_stage(entry)
            if resolved is None:
                raise ProviderError(f"{entry!r}: {self._resolve_api(entry.rpartition('/')[0])[1]}")
            stages.append({"apiId": resolved[0], "stage": resolved[1]})
        if stages:
            body["apiStages"] = stages
        if p.rate_limit:
            body["throttle"] = {"rateLimit": float(p.rate_limit.rate), "burstLimit": int(p.rate_limit.burst)}
        if p.quota:
            body["quota"] = {"limit": p.quota.limit, "period": _PERIODS[p.quota.period], "offset": 0}
        return body

    def _find_new_plan(self, name: str) -> dict | None:
        for plan in self.api.items("GetUsagePlans"):
            if plan.get("name") == name and owned(plan) and plan["id"] not in self._known_plan_ids:
                return plan
        return None

    def create_product(self, change: Change, live: LiveState) -> str:
        p = change.desired
        assert isinstance(p, Product)
        plan = self.api.call("CreateUsagePlan", recover=lambda: self._find_new_plan(p.id), **self._plan_body(p))
        with self._lock:
            self._created_plans[p.id] = plan["id"]
            self._known_plan_ids.add(plan["id"])
        return f"created (usage plan {plan['id']})"

    def _plan_patch(self, plan: dict, p: Product) -> list[dict]:
        ops: list[dict] = []
        if (plan.get("description") or "") != p.description:
            ops.append({"op": "replace", "path": "/description", "value": p.description})
        throttle = plan.get("throttle") or {}
        if p.rate_limit is None:
            if throttle:
                ops.append({"op": "remove", "path": "/throttle"})
        else:
            for key, want in (("rateLimit", p.rate_limit.rate), ("burstLimit", p.rate_limit.burst)):
                if throttle.get(key) is None or number(throttle[key]) != want:
                    ops.append({"op": "replace", "path": f"/throttle/{key}", "value": str(want)})
        quota = plan.get("quota") or {}
        if p.quota is None:
            if quota:
                ops.append({"op": "remove", "path": "/quota"})
        else:
            if quota.get("limit") is None or number(quota["limit"]) != p.quota.limit:
                ops.append({"op": "replace", "path": "/quota/limit", "value": str(p.quota.limit)})
            if str(quota.get("period") or "").upper() != _PERIODS[p.quota.period]:
                ops.append({"op": "replace", "path": "/quota/period", "value": _PERIODS[p.quota.period]})
            if number(quota.get("offset") or 0) != 0:
                ops.append({"op": "replace", "path": "/quota/offset", "value": "0"})
        have = {(s.get("apiId"), s.get("stage")) for s in plan.get("apiStages") or []}
        want = set()
        for entry in p.apis:
            resolved = self._api_stage(entry)
            if resolved is None:
                raise ProviderError(f"{entry!r}: {self._resolve_api(entry.rpartition('/')[0])[1]}")
            want.add(resolved)
        for api_id, stage in sorted(have - want):
            ops.append({"op": "remove", "path": "/apiStages", "value": f"{api_id}:{stage}"})
        for api_id, stage in sorted(want - have):
            ops.append({"op": "add", "path": "/apiStages", "value": f"{api_id}:{stage}"})
        return ops

    @staticmethod
    def _plan_handle(pid: str, live: LiveState) -> PlanHandle:
        handle = live.handle("product", pid)
        if handle is None:
            raise ProviderError(f"usage plan {pid} is no longer on AWS; run `apimon plan` again")
        return handle

    def update_product(self, change: Change, live: LiveState) -> str:
        p = change.desired
        assert isinstance(p, Product)
        handle = self._plan_handle(p.id, live)
        done = []
        if change.adopt:
            self.api.call("TagResource", resourceArn=self._arn("usageplans", handle.id), tags=dict(MANAGED_TAGS))
            done.append(f"adopted (tagged {MANAGED_TAG})")
        ops = self._plan_patch(handle.raw, p)
        if ops:
            def recover() -> dict | None:
                fresh = self.api.call("GetUsagePlan", usagePlanId=handle.id)
                return fresh if not self._plan_patch(fresh, p) else None

            self.api.call("UpdateUsagePlan", recover=recover, usagePlanId=handle.id, patchOperations=ops)
            done.append(f"updated ({len(ops)} change{'s' if len(ops) != 1 else ''} in one UpdateUsagePlan)")
        return "; ".join(done) or "nothing to change"

    def delete_product(self, change: Change, live: LiveState) -> str:
        handle = live.handles.get(("product", change.id))
        if handle is None:
            return "already gone"
        owned_key_ids = {h.id for (kind, _), h in live.handles.items() if kind == "subscriber"}
        foreign = sorted(k for k in handle.keys if k not in owned_key_ids and k in self._known_key_ids
                         and k not in self._gone_keys and (handle.id, k) not in self._detached)
        if foreign:
            raise ProviderError(f"usage plan {change.id} ({handle.id}) still holds API keys apimon does not manage "
                                f"({', '.join(foreign)}); refusing to delete it (AWS would detach them)")
        try:
            result = self.api.call("DeleteUsagePlan", missing_ok=True, usagePlanId=handle.id)
        except AwsCallError as exc:
            if exc.code != "BadRequestException" or "stage" not in exc.aws_message.lower():
                raise
            # AWS may refuse to delete a plan still associated with API stages: detach them first
            stages = handle.raw.get("apiStages") or []
            ops = [{"op": "remove", "path": "/apiStages", "value": f"{s['apiId']}:{s['stage']}"} for s in stages]
            self.api.call("UpdateUsagePlan", usagePlanId=handle.id, patchOperations=ops)
            result = self.api.call("DeleteUsagePlan", missing_ok=True, usagePlanId=handle.id)
        return "deleted" if result is not None else "already gone"

    # ---------------------------------------------------------------- subscribers: API keys
    def _arn(self, kind: str, rid: str) -> str:
        return f"arn:aws:apigateway:{self.region}::/{kind}/{rid}"

    def _plan_id_for(self, product: str, live: LiveState) -> str:
        with self._lock:
            if product in self._created_plans:
                return self._created_plans[product]
        handle = live.handle("product", product)
        if handle is None:
            raise ProviderError(f"usage plan {product} does not exist on AWS")
        return handle.id

    def _find_new_key(self, name: str) -> dict | None:
        for key in self.api.items("GetApiKeys", nameQuery=name):
            if key.get("name") == name and owned(key) and key["id"] not in self._known_key_ids:
                return key
        return None

    def _create_key(self, sub: Subscriber, tags: dict | None = None) -> dict:
        body: dict[str, Any] = {"name": sub.id, "description": sub.email or "", "enabled": sub.enabled,
                                "tags": {**MANAGED_TAGS, **(tags or {})}}
        customer = sub.metadata_dict.get("customer_id")
        if customer:
            body["customerId"] = customer
        if sub.key_value is not None:
            body["value"] = sub.key_value
        key = self.api.call("CreateApiKey", recover=lambda: self._find_new_key(sub.id), **body)
        with self._lock:
            self._known_key_ids.add(key["id"])
        return {k: v for k, v in key.items() if k != "value"}

    def _attach(self, plan_id: str, key_id: str) -> None:
        def recover() -> dict | None:
            found = any(k["id"] == key_id for k in self.api.items("GetUsagePlanKeys", usagePlanId=plan_id))
            return {"id": key_id} if found else None

        with self._plan_key_lock:
            self.api.call("CreateUsagePlanKey", recover=recover, usagePlanId=plan_id, keyId=key_id,
                          keyType="API_KEY")

    def _detach(self, plan_id: str, key_id: str) -> None:
        with self._plan_key_lock:
            self.api.call("DeleteUsagePlanKey", missing_ok=True, usagePlanId=plan_id, keyId=key_id)
        with self._lock:
            self._detached.add((plan_id, key_id))

    def _delete_key(self, key_id: str) -> None:
        self.api.call("DeleteApiKey", missing_ok=True, apiKey=key_id)
        with self._lock:
            self._gone_keys.add(key_id)

    def create_subscriber(self, change: Change, live: LiveState) -> str:
        sub = change.desired
        assert isinstance(sub, Subscriber)
        plan_id = self._plan_id_for(sub.product, live)
        key = self._create_key(sub)
        self._attach(plan_id, key["id"])
        return "created (key imported)" if sub.key_value is not None else "created (key generated)"

    @staticmethod
    def _key_patch(key: dict, sub: Subscriber) -> list[dict]:
        ops = []
        if bool(key.get("enabled")) != sub.enabled:
            ops.append({"op": "replace", "path": "/enabled", "value": "true" if sub.enabled else "false"})
        if (key.get("description") or "") != (sub.email or ""):
            ops.append({"op": "replace", "path": "/description", "value": sub.email or ""})
        if (key.get("customerId") or "") != sub.metadata_dict.get("customer_id", ""):
            ops.append({"op": "replace", "path": "/customerId", "value": sub.metadata_dict.get("customer_id", "")})
        return ops

    @staticmethod
    def _key_handle(change: Change, live: LiveState) -> KeyHandle:
        handle = live.handle("subscriber", change.id)
        if handle is None:
            raise ProviderError(f"API key {change.id} is no longer on AWS; run `apimon plan` again")
        return handle

    def update_subscriber(self, change: Change, live: LiveState) -> str:
        sub = change.desired
        assert isinstance(sub, Subscriber)
        handle = self._key_handle(change, live)
        target = self._plan_id_for(sub.product, live)
        done = []
        if change.adopt:
            self.api.call("TagResource", resourceArn=self._arn("apikeys", handle.id), tags=dict(MANAGED_TAGS))
            done.append(f"adopted (tagged {MANAGED_TAG})")
        ops = self._key_patch(handle.raw, sub)
        if ops:
            self.api.call("UpdateApiKey", apiKey=handle.id, patchOperations=ops)
            done.append("updated")
        moved = False
        for plan_id in list(handle.plans):
            if plan_id != target:
                self._detach(plan_id, handle.id)
                moved = True
        if target not in handle.plans:
            self._attach(target, handle.id)
            moved = True
        # keys rotating out follow the subscriber: disabled with it, moved with it
        for old in [*handle.rotating, *handle.unfinished]:
            old_ops = [op for op in self._key_patch(old, sub) if op["path"] == "/enabled"]
            if old_ops:
                self.api.call("UpdateApiKey", apiKey=old["id"], patchOperations=old_ops)
            plans = handle.rotating_plans.get(old["id"], [])
            for plan_id in plans:
                if plan_id != target:
                    self._detach(plan_id, old["id"])
            if moved and target not in plans:
                self._attach(target, old["id"])
        if moved:
            done.append(f"moved to {sub.product} (same key)")
        for old in handle.stale:
            self._delete_key(old)
        if handle.stale:
            done.append(f"removed {count(len(handle.stale), 'duplicate key')}")
        return "; ".join(done) or "nothing to change"

    def replace_subscriber(self, change: Change, live: LiveState) -> str:
        """A new key (same name, the new value, in the subscriber's plan); the old key keeps working for
        key.overlap, as a rotation's (tagged with its end; `keys finish` or the next apply deletes it after
        that), or is deleted now when the overlap is 0. If an interrupted replacement already made the new key,
        only what is left is done (the new key carries SUBSCRIBER_TAG, so the old one reads as an unfinished
        rotation's and is given its end by the next apply, not deleted as a duplicate)."""
        from datetime import UTC, datetime

        sub = change.desired
        assert isinstance(sub, Subscriber)
        handle = self._key_handle(change, live)
        if handle.value_matches:
            return self.update_subscriber(change, live)
        overlap = sub.key_overlap.total_seconds() > 0
        new = self._create_key(sub, {SUBSCRIBER_TAG: sub.id} if overlap else None)
        self._attach(self._plan_id_for(sub.product, live), new["id"])
        for old in handle.stale:
            self._delete_key(old)
        if not overlap:
            self._delete_key(handle.id)
            return "key replaced (new value imported)"
        ends = (datetime.now(UTC) + sub.key_overlap).replace(microsecond=0)
        self.api.call("TagResource", resourceArn=self._arn("apikeys", handle.id), tags={EXPIRES_TAG: ends.isoformat()})
        return f"key replaced (new value imported; the old key works until {ends.isoformat()})"

    def delete_subscriber(self, change: Change, live: LiveState) -> str:
        handle = live.handles.get(("subscriber", change.id))
        if handle is None:
            return "already gone"
        for key_id in [handle.id, *handle.stale, *(k["id"] for k in [*handle.rotating, *handle.unfinished])]:
            self._delete_key(key_id)
        return "deleted (key revoked)"
