"""AWS API Gateway (REST APIs): products are usage plans, subscribers are API keys in a usage plan.

Mapping (plan -> AWS)
- product id -> usage plan ``name``; ``description`` -> ``description``; ``apis`` -> ``apiStages``
  (each entry ``rest-api-name-or-id/stage``, resolved through GetRestApis; an unknown API, an ambiguous
  API name or an unknown stage is a plan-time error naming the entry); ``rate_limit {rate, burst}`` ->
  ``throttle {rateLimit, burstLimit}``; ``quota {limit, period}`` -> ``quota {limit, period DAY|WEEK|MONTH,
  offset 0}``.
- Not stored on AWS, so never a diff (the capabilities in ``spec``): ``display_name`` (``import`` writes the
  id) and ``pricing`` (apimon's plan file is the only place it lives; ``import`` writes ``model: free``).
- subscriber id -> API key ``name``; ``email`` -> API key ``description``; ``metadata.customer_id`` ->
  ``customerId`` (other metadata is not stored); ``enabled`` -> ``enabled``; ``key.from_env`` -> the key
  ``value`` at creation (AWS cannot change a key's value: a new value replaces the key, keeping name and
  plan -- ``plan`` shows the replacement); ``product`` -> the one apimon-owned usage plan the key is attached
  to (a usage plan key). Moving a subscriber detaches the key from the old plan, then attaches it to the new
  one (AWS refuses one key in two plans that share an API stage), so the key value never changes.
- Ownership: plans and keys apimon creates carry the tag ``apimon:managed`` (set at creation). Untagged
  plans and keys are reported as unmanaged and never touched; an owned plan that still holds keys
  apimon does not own is never deleted. Adopting tags the existing resource (TagResource) and updates it.

Reading: ``read``. Writing: ``write``, run by the engine's solver on up to 16 workers, paced by
``scheduler.Quotas`` so a large apply stays under AWS's fixed quotas (10/s burst 40 for every call,
UpdateUsagePlan 1 per 20 s, CreateApiKey and DeleteApiKey 5/s); calls and retries: ``client``.

``APIMON_AWS_QUOTA_SCALE`` (float, default 1.0; for tests and benchmarks only) divides the quotas' time:
with 10, UpdateUsagePlan may run every 2 s. See ``scheduler``.

Usage (``pull_usage``): GetUsage per owned plan, in windows of at most 90 days, every page merged
(botocore's ``build_full_result()`` keeps only the first page of ``items``, so pages are iterated here).
AWS's ``used`` counts the calls the usage plan admitted with a valid key: calls the backend then failed
are included, calls the gateway blocked (throttled, over quota, bad key or route) are not. apimon records
``used`` per key name per UTC day as both metric ``success`` and metric ``total`` (AWS cannot tell the
backend's failures apart, so ``success`` on AWS includes them); ``remaining`` is ignored; keys and plans
apimon does not own are skipped; days with no calls are not reported.

Credentials: boto3's standard chain, ``target.aws.profile``, ``target.aws.endpoint_url`` (else boto3's
``AWS_ENDPOINT_URL``). boto3 is imported by ``client`` only, when a command first needs AWS.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from ...model import DesiredState, LiveState, Product, RateLimit, Subscriber, UsageRow
from ...reconcile.changes import Change, ChangeSet
from ...reconcile.solver import ApplyPolicy
from ..base import PlanNotes, Provider, ProviderError, not_owned
from .client import AwsClient
from .keys import AwsKeys
from .read import READ_THREADS, AwsReading, key_age, owned, rotating_out, subscriber_of
from .scheduler import QUOTA_SCALE_ENV, Quotas, QuotaScaleError, RetryPolicy, lower_bound_seconds, quota_scale
from .write import AwsWriting

MAX_USAGE_DAYS = 90
APPLY_THREADS = 16
#: a quota-bound duration is worth a note in `apimon plan` from this many seconds on
NOTE_THRESHOLD_S = 2.0


def _date_windows(start: date, end: date, days: int = MAX_USAGE_DAYS) -> Iterator[tuple[date, date]]:
    cur = start
    while cur <= end:
        last = min(end, cur + timedelta(days=days - 1))
        yield cur, last
        cur = last + timedelta(days=1)


class AwsProvider(AwsKeys, AwsReading, AwsWriting, Provider):
    name = "aws"

    def __init__(self, desired: DesiredState):
        super().__init__(desired)
        self.region = self.settings.get("region")
        if not self.region:
            raise ProviderError("target.aws.region is required")
        self.profile = self.settings.get("profile") or None
        self.endpoint_url = self.settings.get("endpoint_url") or None
        try:
            self.scale = quota_scale()
        except QuotaScaleError as exc:
            raise ProviderError(str(exc)) from None
        self.quotas = Quotas(self.scale)
        self.api = AwsClient(self.region, self.profile, self.endpoint_url, self.quotas, RetryPolicy(scale=self.scale))
        self._lock = threading.Lock()
        self._plan_key_lock = threading.Lock()
        self._rest_apis: list[dict] | None = None
        self._stages: dict[str, list[str]] = {}
        self._known_plan_ids: set[str] = set()
        self._known_key_ids: set[str] = set()
        self._created_plans: dict[str, str] = {}  # product id -> usage plan id made in this run
        self._gone_keys: set[str] = set()  # key ids deleted in this run
        self._detached: set[tuple[str, str]] = set()  # (plan id, key id) detached in this run

    @property
    def client(self) -> Any:
        """boto3's API Gateway client."""
        return self.api.boto

    @property
    def throttle_errors(self) -> int:
        return self.api.throttle_errors

    # ---------------------------------------------------------------- plan hooks
    def canonical(self, kind: str, resource: Any) -> Any:
        if kind == "product" and resource.apis:
            return replace(resource, apis=self.canonical_apis(resource.apis))
        return resource

    def preflight(self, desired: DesiredState, live: LiveState, changes: ChangeSet) -> list[str]:
        """Every API stage the plan names exists (GetStages once per REST API the plan names)."""
        problems = []
        for pid, product in desired.products.items():
            for entry in product.apis:
                ref, _, stage = entry.rpartition("/")
                api_id, why = self._resolve_api(ref)
                if api_id is None:
                    problems.append(f"products.{pid}.apis: {entry!r}: {why}")
                    continue
                stages = self._stage_names(api_id)
                if stage not in stages:
                    name = next((a["name"] for a in self._load_rest_apis() if a["id"] == api_id), "")
                    known = ", ".join(stages) or "none deployed"
                    problems.append(f"products.{pid}.apis: {entry!r}: REST API {name or api_id} ({api_id}) has "
                                    f"no stage {stage!r}; its stages: {known}")
        return problems

    def _calls_for(self, change: Change) -> Counter[str]:
        calls: Counter[str] = Counter()
        if change.adopt:
            calls["TagResource"] += 1
        if change.kind == "product":
            if change.action == "create":
                calls["CreateUsagePlan"] += 1
            elif change.action == "delete":
                calls["DeleteUsagePlan"] += 1
            elif any(f.field != "managed" and self.stores("product", f.field) for f in change.fields):
                calls["UpdateUsagePlan"] += 1
            return calls
        if change.action in ("create", "replace"):
            calls.update({"CreateApiKey": 1, "CreateUsagePlanKey": 1})
        if change.action in ("delete", "replace"):
            calls["DeleteApiKey"] += 1
        if change.action == "update":
            if change.changed("product"):
                calls.update({"DeleteUsagePlanKey": 1, "CreateUsagePlanKey": 1})
            if any(change.changed(f) for f in ("enabled", "email", "metadata.customer_id")):
                calls["UpdateApiKey"] += 1
        return calls

    def notes(self, desired: DesiredState, live: LiveState, changes: ChangeSet) -> PlanNotes:
        """How long AWS's quotas make the apply, when they dominate."""
        out = PlanNotes()
        calls: Counter[str] = Counter()
        for change in changes.changes:
            calls.update(self._calls_for(change))
        if not calls:
            return out
        bounds = lower_bound_seconds(dict(calls), self.scale)
        scaled = f" (quota time divided by {QUOTA_SCALE_ENV}={self.scale:g})" if self.scale != 1 else ""
        texts = {
            "*": (sum(calls.values()), "API calls", "AWS's account-wide management quota (10 per second, burst 40)"),
            "UpdateUsagePlan": (calls["UpdateUsagePlan"], "usage plan updates",
                                "AWS's UpdateUsagePlan quota (1 request every 20 s)"),
            "CreateApiKey": (calls["CreateApiKey"], "API key creations", "AWS's CreateApiKey quota (5 per second)"),
            "DeleteApiKey": (calls["DeleteApiKey"], "API key deletions", "AWS's DeleteApiKey quota (5 per second)"),
        }
        for op, seconds in sorted(bounds.items(), key=lambda kv: -kv[1]):
            if seconds >= NOTE_THRESHOLD_S:
                n, what, quota = texts[op]
                if n == 1:
                    what = what[:-1]
                out.notes.append(f"{n} {what}: at least {_duration(seconds)} under {quota}{scaled}")
        return out

    def apply_policy(self) -> ApplyPolicy:
        return ApplyPolicy(workers=APPLY_THREADS, pacing=self.quotas)

    # ---------------------------------------------------------------- keys, usage, import
    def ledger_target(self) -> str:
        """``account:<id>/<region>`` (the account from STS GetCallerIdentity), so two accounts behind one
        profile name never share ledger rows; prefixed by the endpoint when one is configured (LocalStack and
        moto answer one account id for everybody)."""
        from .client import caller_account, configured_endpoint

        account = caller_account(self.region, self.profile, self.endpoint_url)
        endpoint = self.endpoint_url or configured_endpoint(self.region, self.profile)
        name = f"account:{account}/{self.region}"
        return f"{endpoint.rstrip('/')}/{name}" if endpoint else name

    def reveal_key(self, subscriber_id: str) -> str | None:
        named = [k for k in self.api.items("GetApiKeys") if subscriber_of(k) == subscriber_id]
        mine = [k for k in named if owned(k) and not rotating_out(k)]
        if not mine:
            if any(not owned(k) for k in named):
                raise not_owned(subscriber_id)
            return None
        newest = max(mine, key=key_age)
        return self.api.call("GetApiKey", apiKey=newest["id"], includeValue=True).get("value")

    def pull_usage(self, start: date, end: date) -> Iterable[UsageRow]:
        if end < start:
            return
        plans = [p for p in self.api.items("GetUsagePlans") if owned(p)]
        # a subscriber's keys (a rotation's old and new key) are summed under the subscriber
        key_names = {k["id"]: subscriber_of(k) for k in self.api.items("GetApiKeys") if owned(k)}
        for plan in sorted(plans, key=lambda p: p.get("name") or p["id"]):
            product = plan.get("name") or plan["id"]
            for first, last in _date_windows(start, end):
                used: dict[tuple[str, date], int] = {}
                for page in self.api.pages("GetUsage", usagePlanId=plan["id"], startDate=first.isoformat(),
                                           endDate=last.isoformat()):
                    base = date.fromisoformat(page.get("startDate") or first.isoformat())
                    for key_id, days in (page.get("items") or {}).items():
                        for i, pair in enumerate(days or []):
                            day = base + timedelta(days=i)
                            if pair and first <= day <= last:
                                used[(key_id, day)] = int(pair[0] or 0)
                summed: dict[tuple[date, str], int] = {}
                for (key_id, day), count in used.items():
                    if count and key_id in key_names:
                        summed[(day, key_names[key_id])] = summed.get((day, key_names[key_id]), 0) + count
                for (day, sid), count in sorted(summed.items()):
                    for metric in ("success", "total"):
                        yield UsageRow(sid, product, day.isoformat(), metric, count)

    def export_plan(self, *, include_unmanaged: bool = True) -> dict:
        """The live account as plan data: apimon-owned usage plans and keys (all of them with
        ``include_unmanaged``, for a first import before ``apimon adopt``). Key values are never read.

        Every key `plan` shows is either written as a subscriber of the usage plan it is in or listed under
        ``not_imported`` with the reason (in no imported usage plan, or in several: a plan subscriber has one
        product)."""
        live = self.read_live_state(include_values=False)
        products = dict(live.products)
        subscribers = dict(live.subscribers)
        plan_product = {live.handles[("product", n)].id: n for n in products}
        if include_unmanaged:
            for u in live.unmanaged:
                if u.kind == "product" and isinstance(u.resource, Product):
                    if u.name not in products:
                        products[u.name] = u.resource
                        handle = live.handles.get(("unmanaged-product", u.name))
                        if handle is not None:
                            plan_product[handle.id] = u.name
                elif u.kind == "subscriber" and isinstance(u.resource, Subscriber):
                    subscribers.setdefault(u.name, u.resource)
        # the read lists the members of owned plans (and of plans the plan file names) only: an import's plan
        # file names none, so read the members of the unmanaged plans being imported here
        known = {live.handles[("product", n)].id for n in live.products}
        plans_of: dict[str, set[str]] = {}
        extra = sorted(set(plan_product) - known)
        with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="apimon-aws-import") as pool:
            for pid, key_ids in zip(extra, pool.map(self._plan_members, extra), strict=True):
                for key_id in key_ids:
                    plans_of.setdefault(key_id, set()).add(pid)
        not_imported: list[str] = []
        out_subscribers = []
        for sid, s in subscribers.items():
            handle = live.handles.get(("subscriber", sid)) or live.handles.get(("unmanaged-subscriber", sid))
            in_plans = set(getattr(handle, "plans", ()) or ()) | plans_of.get(getattr(handle, "id", ""), set())
            names = sorted({plan_product[p] for p in in_plans if p in plan_product})
            key = f"API key {handle.id}" if handle is not None else "API key"
            if not names:
                not_imported.append(f"subscriber {sid!r}: {key} is in no imported usage plan (a plan subscriber "
                                    "needs a product); add it to a usage plan, or delete it if unused")
                continue
            if len(names) > 1:
                not_imported.append(f"subscriber {sid!r}: {key} is in {len(names)} usage plans "
                                    f"({', '.join(names)}); a plan subscriber has one product: remove the key from "
                                    "all but one and import again")
                continue
            out_subscribers.append(_exportable_subscriber(s, names[0]))
        target: dict[str, Any] = {"region": self.region}
        if self.profile:
            target["profile"] = self.profile
        if self.endpoint_url:
            target["endpoint_url"] = self.endpoint_url
        return {"target": {"provider": "aws", "aws": target},
                "products": [_exportable_product(p) for p in products.values()],
                "subscribers": out_subscribers, "not_imported": not_imported}


def _exportable_product(p: Product) -> Product:
    """Valid plan data: whole-number rate limits with burst >= rate (hand-made plans may differ)."""
    if p.rate_limit is None:
        return p
    rate = max(1, math.ceil(p.rate_limit.rate))
    burst = max(rate, math.ceil(p.rate_limit.burst))
    return replace(p, rate_limit=RateLimit(rate, burst))


def _exportable_subscriber(s: Subscriber, product: str) -> Subscriber:
    email = s.email if s.email and re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", s.email) else None
    return Subscriber(s.id, product, email, s.enabled, None, s.metadata)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
