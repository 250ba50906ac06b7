"""Reading an AWS account: usage plans and API keys into the neutral model and typed handles.

List calls only, 500 per page: GetRestApis, GetUsagePlans, GetApiKeys (with values only when the plan
imports a key value, to compare fingerprints; values are never kept, printed or logged), GetUsagePlanKeys
for owned plans (and, for adopt, unmanaged plans whose name the plan uses). A pure read: what AWS does not
store (display name, pricing, metadata other than customer_id) is left at its default and never compared.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ...model import LiveState, Product, Quota, RateLimit, Subscriber, Unmanaged
from ...reconcile.fields import key_fingerprint

MANAGED_TAG = "apimon:managed"
MANAGED_TAGS = {MANAGED_TAG: "true"}
# key rotation (apimon keys rotate): a rotation's new key is named "<subscriber>.rotated-<UTC stamp>" and tagged
# with its subscriber; the old key is tagged with the end of its overlap
SUBSCRIBER_TAG = "apimon:subscriber"
EXPIRES_TAG = "apimon:expires"
READ_THREADS = 8


@dataclass
class PlanHandle:
    """A usage plan as read: its id, the raw body (the base of the one UpdateUsagePlan), its keys' ids."""

    id: str
    raw: dict
    keys: set[str] = field(default_factory=set)


@dataclass
class KeyHandle:
    """An API key as read (never its value): the plans it is in, older owned keys of the same name (left by
    an interrupted replacement), and whether the key's value is the one the plan imports."""

    id: str
    raw: dict
    plans: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    value_matches: bool = False
    rotating: list[dict] = field(default_factory=list)  # keys rotating out (EXPIRES_TAG), raw, without values
    unfinished: list[dict] = field(default_factory=list)  # old keys of an interrupted rotation (no end yet)
    rotating_plans: dict[str, list[str]] = field(default_factory=dict)  # their usage plans (owned)


def subscriber_of(key: dict) -> str:
    """The subscriber an API key belongs to: its SUBSCRIBER_TAG (rotation keys), else its name."""
    return (key.get("tags") or {}).get(SUBSCRIBER_TAG) or key.get("name") or key["id"]


def rotating_out(key: dict) -> bool:
    return EXPIRES_TAG in (key.get("tags") or {})


def owned(resource: dict) -> bool:
    return MANAGED_TAG in (resource.get("tags") or {})


def number(value: Any) -> int | float:
    """AWS (and moto) send numbers as int, float or string: an int when it is one."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return 0
    return int(f) if f.is_integer() else f


class AwsReading:
    """The reading half of the AWS provider (``self.api``: ``AwsClient``; ``self.desired``; ``self.region``)."""

    api: Any
    desired: Any
    region: str
    _rest_apis: list[dict] | None
    _stages: dict[str, list[str]]
    _known_plan_ids: set[str]
    _known_key_ids: set[str]

    # ---------------------------------------------------------------- REST APIs and stages
    def _load_rest_apis(self) -> list[dict]:
        if self._rest_apis is None:
            self._rest_apis = [{"id": a["id"], "name": a.get("name") or ""} for a in self.api.items("GetRestApis")]
        return self._rest_apis

    def _resolve_api(self, ref: str) -> tuple[str | None, str]:
        """(api id, "") or (None, why not)."""
        apis = self._load_rest_apis()
        if any(a["id"] == ref for a in apis):
            return ref, ""
        named = [a["id"] for a in apis if a["name"] == ref]
        if len(named) == 1:
            return named[0], ""
        if named:
            return None, (f"{len(named)} REST APIs are named {ref!r} ({', '.join(sorted(named))}); "
                          "write the API id instead of its name")
        return None, f"no REST API named or with id {ref!r} in {self.region}"

    def _api_stage(self, entry: str) -> tuple[str, str] | None:
        ref, _, stage = entry.rpartition("/")
        api_id, _ = self._resolve_api(ref)
        return (api_id, stage) if api_id else None

    def _stage_names(self, api_id: str) -> list[str]:
        if api_id not in self._stages:
            resp = self.api.call("GetStages", restApiId=api_id)
            self._stages[api_id] = sorted(s.get("stageName", "") for s in resp.get("item") or [])
        return self._stages[api_id]

    def _api_text(self, api_id: str, stage: str) -> str:
        """How a live apiStage is written: name/stage when the name is unique, else id/stage."""
        apis = self._load_rest_apis()
        names = [a["name"] for a in apis if a["id"] == api_id]
        if names and names[0] and sum(a["name"] == names[0] for a in apis) == 1 and "/" not in names[0]:
            return f"{names[0]}/{stage}"
        return f"{api_id}/{stage}"

    def canonical_apis(self, apis: tuple[str, ...]) -> tuple[str, ...]:
        """API references by what they name: "petstore/prod" and "a1b2c3/prod" are the same stage."""
        out = []
        for entry in apis:
            resolved = self._api_stage(entry)
            out.append(f"{resolved[0]}/{resolved[1]}" if resolved else entry)
        return tuple(sorted(out))

    # ---------------------------------------------------------------- read
    def _project_product(self, plan: dict) -> Product:
        pid = plan.get("name") or plan["id"]
        throttle = plan.get("throttle") or {}
        rate_limit = None
        if throttle.get("rateLimit") is not None or throttle.get("burstLimit") is not None:
            rate_limit = RateLimit(number(throttle.get("rateLimit")), number(throttle.get("burstLimit")))  # type: ignore[arg-type]
        quota = plan.get("quota") or {}
        q = None
        if quota.get("limit") is not None:
            q = Quota(int(number(quota["limit"])), str(quota.get("period") or "MONTH").lower())  # type: ignore[arg-type]
        stages = plan.get("apiStages") or []
        apis = tuple(sorted(self._api_text(s.get("apiId", ""), s.get("stage", "")) for s in stages))
        return Product(id=pid, display_name=pid, description=plan.get("description") or "", apis=apis,
                       rate_limit=rate_limit, quota=q)

    @staticmethod
    def _project_subscriber(key: dict, product: str) -> Subscriber:
        sid = subscriber_of(key)
        metadata = (("customer_id", key["customerId"]),) if key.get("customerId") else ()
        return Subscriber(id=sid, product=product, email=key.get("description") or None,
                          enabled=bool(key.get("enabled")), metadata=metadata)

    def _plan_members(self, plan_id: str) -> set[str]:
        return {k["id"] for k in self.api.items("GetUsagePlanKeys", usagePlanId=plan_id)}

    def read_live_state(self, *, include_values: bool | None = None) -> LiveState:
        want_values = (any(s.key_value is not None for s in self.desired.subscribers.values())
                       if include_values is None else include_values)
        live = LiveState()
        self._load_rest_apis()  # apiStages are shown by API name
        plans = sorted(self.api.items("GetUsagePlans"), key=lambda p: p["id"])
        self._known_plan_ids = {p["id"] for p in plans}
        owned_plans: dict[str, dict] = {}
        unmanaged_plans: dict[str, dict] = {}
        for plan in plans:
            name = plan.get("name") or plan["id"]
            if owned(plan) and name not in owned_plans:
                owned_plans[name] = plan
            elif owned(plan):
                live.unmanaged.append(Unmanaged("product", name, f"usage plan {plan['id']}: a second apimon-managed "
                                                                 f"plan named {name}; delete one by hand"))
            else:
                unmanaged_plans.setdefault(name, plan)
        candidates = {n: p for n, p in unmanaged_plans.items() if n in self.desired.products and n not in owned_plans}
        keys, members = self._read_keys(want_values, [*owned_plans.values(), *candidates.values()])
        self._known_key_ids = {k["id"] for k in keys}
        plan_name = {p["id"]: n for n, p in owned_plans.items()}
        candidate_name = {p["id"]: n for n, p in candidates.items()}
        plans_of: dict[str, list[str]] = {}
        for plan_id, key_ids in members.items():
            for key_id in key_ids:
                plans_of.setdefault(key_id, []).append(plan_id)

        for name, plan in sorted(owned_plans.items()):
            live.products[name] = self._project_product(plan)
            live.handles[("product", name)] = PlanHandle(plan["id"], plan, members.get(plan["id"], set()))
        for plan in plans:
            name = plan.get("name") or plan["id"]
            if owned(plan) or unmanaged_plans.get(name) is not plan:
                continue
            live.unmanaged.append(Unmanaged("product", name, f"usage plan {plan['id']} has no {MANAGED_TAG} tag",
                                            self._project_product(plan)))
            live.handles[("unmanaged-product", name)] = PlanHandle(plan["id"], plan, members.get(plan["id"], set()))

        owned_keys: dict[str, list[dict]] = {}
        rotating: dict[str, list[dict]] = {}
        for key in keys:
            name = key.get("name") or key["id"]
            if owned(key) and rotating_out(key):
                rotating.setdefault(subscriber_of(key), []).append(_without_value(key))
            elif owned(key):
                owned_keys.setdefault(subscriber_of(key), []).append(key)
            elif ("unmanaged-subscriber", name) not in live.handles:
                in_plans = [p for p in plans_of.get(key["id"], []) if p in plan_name or p in candidate_name]
                product = ", ".join(sorted(plan_name.get(p) or candidate_name[p] for p in in_plans))
                live.unmanaged.append(Unmanaged("subscriber", name, f"API key {key['id']} has no {MANAGED_TAG} tag",
                                                self._project_subscriber(key, product)))
                live.handles[("unmanaged-subscriber", name)] = KeyHandle(key["id"], _without_value(key), in_plans)
        for name, group in sorted(owned_keys.items()):
            want = self.desired.subscribers.get(name)
            want_fp = key_fingerprint(want.key_value) if want and want.key_value else None
            primary = next((k for k in group if want_fp and k.get("value")
                            and key_fingerprint(k["value"]) == want_fp), group[-1])  # else the newest
            # a rotation interrupted before the old key got its end: the new key (a rotation key, named
            # differently) is the primary, and the older keys of the subscriber's own name are not duplicates
            # to delete but the rotation's old keys, to keep until the overlap (``unfinished``)
            rotation = SUBSCRIBER_TAG in (primary.get("tags") or {}) and primary is group[-1]
            unfinished = [_without_value(k) for k in group if k is not primary and rotation]
            stale = [k["id"] for k in group if k is not primary and not any(u["id"] == k["id"] for u in unfinished)]
            in_plans = [p for p in plans_of.get(primary["id"], []) if p in plan_name]
            product = ", ".join(sorted(plan_name[p] for p in in_plans))
            live.subscribers[name] = self._project_subscriber(primary, product)
            handle = KeyHandle(primary["id"], _without_value(primary), in_plans, stale,
                               rotating=rotating.get(name, []), unfinished=unfinished)
            for raw_key in [*handle.rotating, *unfinished]:
                handle.rotating_plans[raw_key["id"]] = [p for p in plans_of.get(raw_key["id"], []) if p in plan_name]
            live.handles[("subscriber", name)] = handle
            if want_values and primary.get("value"):
                fp = key_fingerprint(primary["value"])
                live.key_fingerprints[name] = fp if not stale else f"duplicates:{fp}"
                handle.value_matches = fp == want_fp
        return live

    def _read_keys(self, want_values: bool, plans: list[dict]) -> tuple[list[dict], dict[str, set[str]]]:
        """The API keys (oldest first) and the members of ``plans``: the plans' key pages are read on a few
        threads while this one pages through the keys."""
        with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="apimon-aws-read") as pool:
            futures = {p["id"]: pool.submit(self._plan_members, p["id"]) for p in plans}
            try:
                keys = sorted(self.api.items("GetApiKeys", includeValues=want_values), key=key_age)
                members = {plan_id: f.result() for plan_id, f in futures.items()}
            except BaseException:
                for f in futures.values():
                    f.cancel()
                raise
        return keys, members


def key_age(key: dict) -> tuple:
    """Oldest first. AWS gives createdDate to the second, so a key created in the same second as the one it
    rotates ties: a rotation key (named ``<subscriber>.rotated-<stamp>``, later stamps later) is newer than the
    key of the subscriber's own name, whatever the ids say."""
    rotation = SUBSCRIBER_TAG in (key.get("tags") or {})
    return (str(key.get("createdDate") or ""), rotation, key.get("name") or "", key["id"])


def _without_value(key: dict) -> dict:
    return {k: v for k, v in key.items() if k != "value"}
