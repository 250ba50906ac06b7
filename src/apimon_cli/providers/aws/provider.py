"""AWS API Gateway (REST APIs): products are usage plans, subscribers are API keys in a usage plan.

Mapping (plan -> AWS)
- product id -> usage plan ``name``; ``description`` -> ``description``; ``apis`` -> ``apiStages``
  (each entry ``rest-api-name-or-id/stage``, resolved through GetRestApis; an unknown API, an ambiguous
  API name or an unknown stage is a plan-time error naming the entry); ``rate_limit {rate, burst}`` ->
  ``throttle {rateLimit, burstLimit}``; ``quota {limit, period}`` -> ``quota {limit, period DAY|WEEK|MONTH,
  offset 0}``.
- Not stored on AWS, so never a diff (``stores`` says False): ``display_name`` (``import`` writes the id)
  and ``pricing`` (apimon's plan file is the only place it lives; ``import`` writes ``model: free``).
- subscriber id -> API key ``name``; ``email`` -> API key ``description``; ``metadata.customer_id`` ->
  ``customerId`` (other metadata is not stored); ``enabled`` -> ``enabled``; ``key.from_env`` -> the key
  ``value`` at creation (AWS cannot change a key's value: a new value replaces the key, keeping name and
  plan); ``product`` -> the one apimon-owned usage plan the key is attached to (a usage plan key).
  Moving a subscriber detaches the key from the old plan, then attaches it to the new one (AWS refuses
  one key in two plans that share an API stage), so the key value never changes.
- Ownership: plans and keys apimon creates carry the tag ``apimon:managed`` (set at creation). Untagged
  plans and keys are reported as unmanaged and never touched; an owned plan that still holds keys
  apimon does not own is never deleted. Adopting tags the existing resource (TagResource) and updates it.

Reading (``plan``): list calls only, 500 per page: GetRestApis, GetUsagePlans, GetApiKeys (with values
only when the plan imports a key value, to compare fingerprints; values are never kept, printed or
logged), GetUsagePlanKeys for owned plans (and, for adopt, unmanaged plans whose name the plan uses),
GetStages once per REST API the plan names.

Writing (``apply``): a plan is created complete in one CreateUsagePlan (tags included) and all of a
plan's changes go into ONE UpdateUsagePlan; usage plan key writes are serialized (one at a time in the
region: AWS answers 409 ConflictException to concurrent ones). Changes run on a bounded thread pool in
dependency order (a product before the subscribers that need it; subscriber deletes and moves before
the product they leave), paced by ``aws_scheduler.Quotas`` so a large apply stays under AWS's fixed
quotas (10/s burst 40 for every call, UpdateUsagePlan 1 per 20 s, CreateApiKey and DeleteApiKey 5/s).
botocore's own retries are off (one attempt): throttling (429, TooManyRequests, LimitExceeded), 409
ConflictException, 5xx and dropped connections are retried here, with backoff that honours Retry-After,
at most ``RetryPolicy.max_attempts`` times; then the change fails with AWS's message and the apply report
lists what was applied and what was not. After an ambiguous failure (5xx, dropped connection) a create
first looks for what it may already have made, so a retry never makes a duplicate.

``APIMON_AWS_QUOTA_SCALE`` (float, default 1.0; for tests and benchmarks only) divides the quotas' time:
with 10, UpdateUsagePlan may run every 2 s. See ``aws_scheduler``.

Usage (``pull_usage``): GetUsage per owned plan, in windows of at most 90 days, every page merged
(botocore's ``build_full_result()`` keeps only the first page of ``items``, so pages are iterated here).
AWS's ``used`` counts the calls the usage plan admitted with a valid key: calls the backend then failed
are included, calls the gateway blocked (throttled, over quota, bad key or route) are not. apimon records
``used`` per key name per UTC day as both metric ``success`` and metric ``total`` (AWS cannot tell the
backend's failures apart, so ``success`` on AWS includes them); ``remaining`` is ignored; keys and plans
apimon does not own are skipped; days with no calls are not reported.

Credentials: boto3's standard chain, ``target.aws.profile``, ``target.aws.endpoint_url`` (else boto3's
``AWS_ENDPOINT_URL``). boto3 is imported here only, when a command first needs AWS.
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from ...model import DesiredState, LiveState, Pricing, Product, Quota, RateLimit, Subscriber, Unmanaged, UsageRow
from ...reconcile.changes import Change, ChangeSet
from ...reconcile.engine import ApplyReport, ChangeOutcome, Progress
from ...reconcile.fields import key_fingerprint
from ..base import Provider, ProviderError
from .scheduler import (
    QUOTA_SCALE_ENV,
    Cancelled,
    Quotas,
    QuotaScaleError,
    RetryPolicy,
    lower_bound_seconds,
    quota_scale,
)

MANAGED_TAG = "apimon:managed"
MANAGED_TAGS = {MANAGED_TAG: "true"}
PAGE_SIZE = 500
MAX_USAGE_DAYS = 90
APPLY_THREADS = 16
READ_THREADS = 8
#: a quota-bound duration is worth a note in `apimon plan` from this many seconds on
NOTE_THRESHOLD_S = 2.0

_THROTTLE_CODES = {"TooManyRequestsException", "LimitExceededException", "ThrottlingException",
                   "Throttling", "RequestLimitExceeded"}
_PERIODS = {"day": "DAY", "week": "WEEK", "month": "MONTH"}


class AwsCallError(ProviderError):
    """A call AWS refused (not retried, or retried until the bound)."""

    def __init__(self, message: str, code: str = "", aws_message: str = ""):
        super().__init__(message)
        self.code = code
        self.aws_message = aws_message


def _snake(op: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in op).lstrip("_")


def _retry_after(headers: dict) -> float | None:
    raw = (headers or {}).get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def _transient_conflict(message: str) -> bool:
    """409 for concurrent modification (retry) vs. a lasting conflict: exists, same API stage twice..."""
    text = message.lower()
    return "concurrent" in text or not any(w in text for w in ("exist", "multiple", "cannot"))


def _owned(resource: dict) -> bool:
    return MANAGED_TAG in (resource.get("tags") or {})


def _number(value: Any) -> int | float:
    """AWS (and moto) send numbers as int, float or string: an int when it is one."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return 0
    return int(f) if f.is_integer() else f


def _date_windows(start: date, end: date, days: int = MAX_USAGE_DAYS) -> Iterator[tuple[date, date]]:
    cur = start
    while cur <= end:
        last = min(end, cur + timedelta(days=days - 1))
        yield cur, last
        cur = last + timedelta(days=1)


class AwsProvider(Provider):
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
        self.retry = RetryPolicy(scale=self.scale)
        self.call_counts: Counter[str] = Counter()  # API calls made (attempts), by operation
        self.throttle_errors = 0  # 429s and throttling codes received
        self._lock = threading.Lock()
        self._plan_key_lock = threading.Lock()
        self._client: Any = None
        self._rest_apis: list[dict] | None = None
        self._stages: dict[str, list[str]] = {}
        self._known_plan_ids: set[str] = set()
        self._known_key_ids: set[str] = set()
        self._created_plans: dict[str, str] = {}  # product id -> usage plan id made in this run
        self._gone_keys: set[str] = set()  # key ids deleted in this run
        self._detached: set[tuple[str, str]] = set()  # (plan id, key id) detached in this run

    # ---------------------------------------------------------------- client and calls
    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ProfileNotFound

            config = Config(retries={"mode": "standard", "total_max_attempts": 1},
                            max_pool_connections=APPLY_THREADS + READ_THREADS, connect_timeout=10,
                            read_timeout=60, user_agent_extra="apimon")
            try:
                session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
                self._client = session.client("apigateway", endpoint_url=self.endpoint_url, config=config)
            except ProfileNotFound:
                raise ProviderError(f"AWS profile {self.profile!r} (target.aws.profile) is not configured") from None
            except (BotoCoreError, ValueError) as exc:
                raise ProviderError(f"cannot set up the AWS client: {exc}") from None
        return self._client

    @property
    def target_id(self) -> str:
        """The ledger's name for this account, known without a network call (so `apimon invoice` works
        offline): the endpoint override, else the credentials profile, plus the region."""
        endpoint = self.endpoint_url or self._client_endpoint_override()
        if endpoint:
            return f"{endpoint.rstrip('/')}/{self.region}"
        return f"profile:{self.profile or 'default'}/{self.region}"

    def _client_endpoint_override(self) -> str | None:
        url = self.client.meta.endpoint_url
        return None if url.endswith(".amazonaws.com") or ".amazonaws.com." in url else url

    def _call(self, op: str, *, recover: Callable[[], Any] | None = None, missing_ok: bool = False,
              **kwargs: Any) -> Any:
        """One API Gateway operation under the quotas, retried here (botocore's retries are off).

        ``recover`` runs before a retry that follows an ambiguous failure (5xx, dropped connection): if it
        finds the effect of the failed attempt it returns it (not None) and nothing is sent again.
        ``missing_ok``: a NotFoundException returns None (deletes that find the resource gone).
        """
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            EndpointConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        method = getattr(self.client, _snake(op))
        ambiguous = False
        last = ""
        attempts = self.retry.max_attempts
        for attempt in range(1, attempts + 1):
            if ambiguous and recover is not None:
                found = recover()
                if found is not None:
                    return found
            self.quotas.acquire(op)
            retry_after: float | None = None
            try:
                with self._lock:
                    self.call_counts[op] += 1
                return method(**kwargs)
            except ClientError as exc:
                err = exc.response.get("Error", {})
                meta = exc.response.get("ResponseMetadata", {})
                code, message = str(err.get("Code", "")), str(err.get("Message", "") or "")
                status = int(meta.get("HTTPStatusCode") or 0)
                retry_after = _retry_after(meta.get("HTTPHeaders", {}))
                if missing_ok and (code == "NotFoundException" or status == 404):
                    return None
                if code in _THROTTLE_CODES or status == 429:
                    with self._lock:
                        self.throttle_errors += 1
                    self.quotas.throttled(op, retry_after)
                elif code == "ConflictException" and _transient_conflict(message):
                    pass  # concurrent modification: try again
                elif status >= 500:
                    ambiguous = True
                else:
                    raise AwsCallError(f"{op}: {code or status}: {message or 'request refused'}", code,
                                       message) from None
                last = f"{code or status}: {message or 'no message'}"
            except (NoCredentialsError, PartialCredentialsError) as exc:
                raise ProviderError(f"no usable AWS credentials ({exc}); configure the standard AWS chain "
                                    "or target.aws.profile") from None
            except (EndpointConnectionError, ConnectionError) as exc:
                last = f"cannot connect: {exc}"  # the request never left: not ambiguous
            except HTTPClientError as exc:
                ambiguous = True
                last = f"connection lost: {exc}"
            finally:
                self.quotas.completed(op)
            if attempt < attempts:
                time.sleep(self.retry.delay(attempt, retry_after))
        raise AwsCallError(f"{op}: {last} (gave up after {attempts} attempts)", "", last)

    def _pages(self, op: str, **kwargs: Any) -> Iterator[dict]:
        """Every page of a list operation (limit 500 per page)."""
        position: str | None = None
        seen: set[str] = set()
        while True:
            args = dict(kwargs, limit=PAGE_SIZE)
            if position:
                args["position"] = position
            page = self._call(op, **args)
            yield page
            position = page.get("position")
            if not position or position in seen:
                return
            seen.add(position)

    def _items(self, op: str, **kwargs: Any) -> list[dict]:
        return [item for page in self._pages(op, **kwargs) for item in page.get("items") or []]

    # ---------------------------------------------------------------- what AWS can keep
    def stores(self, kind: str, field: str) -> bool:
        if kind == "product":
            return not (field in ("display_name", "max_concurrent") or field.startswith("pricing"))
        if field.startswith("metadata."):
            return field == "metadata.customer_id"
        return True

    # ---------------------------------------------------------------- REST APIs and stages
    def _load_rest_apis(self) -> list[dict]:
        if self._rest_apis is None:
            self._rest_apis = [{"id": a["id"], "name": a.get("name") or ""} for a in self._items("GetRestApis")]
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
            resp = self._call("GetStages", restApiId=api_id)
            self._stages[api_id] = sorted(s.get("stageName", "") for s in resp.get("item") or [])
        return self._stages[api_id]

    def _api_text(self, pid: str, api_id: str, stage: str) -> str:
        """How a live apiStage is written: as the plan spells it, else name/stage (id/stage if ambiguous)."""
        product = self.desired.products.get(pid)
        candidates = list(product.apis) if product else []
        candidates += [e for p in self.desired.products.values() for e in p.apis]
        for entry in candidates:
            if self._api_stage(entry) == (api_id, stage):
                return entry
        names = [a["name"] for a in self._load_rest_apis() if a["id"] == api_id]
        if names and names[0] and sum(a["name"] == names[0] for a in self._load_rest_apis()) == 1 \
                and "/" not in names[0]:
            return f"{names[0]}/{stage}"
        return f"{api_id}/{stage}"

    def check(self, desired: DesiredState, live: LiveState) -> list[str]:
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

    # ---------------------------------------------------------------- read
    def _project_product(self, plan: dict) -> Product:
        pid = plan.get("name") or plan["id"]
        want = self.desired.products.get(pid)
        throttle = plan.get("throttle") or {}
        rate_limit = None
        if throttle.get("rateLimit") is not None or throttle.get("burstLimit") is not None:
            rate_limit = RateLimit(_number(throttle.get("rateLimit")), _number(throttle.get("burstLimit")))  # type: ignore[arg-type]
        quota = plan.get("quota") or {}
        q = None
        if quota.get("limit") is not None:
            q = Quota(int(_number(quota["limit"])), str(quota.get("period") or "MONTH").lower())  # type: ignore[arg-type]
        apis = tuple(sorted(self._api_text(pid, s.get("apiId", ""), s.get("stage", ""))
                            for s in plan.get("apiStages") or []))
        return Product(id=pid, display_name=want.display_name if want else pid,
                       description=plan.get("description") or "", apis=apis, rate_limit=rate_limit, quota=q,
                       pricing=want.pricing if want else Pricing())

    def _project_subscriber(self, key: dict, product: str) -> Subscriber:
        sid = key.get("name") or key["id"]
        want = self.desired.subscribers.get(sid)
        metadata = {k: v for k, v in (want.metadata if want else ()) if k != "customer_id"}
        if key.get("customerId"):
            metadata["customer_id"] = key["customerId"]
        return Subscriber(id=sid, product=product, email=key.get("description") or None,
                          enabled=bool(key.get("enabled")), metadata=tuple(sorted(metadata.items())))

    def _plan_members(self, plan_id: str) -> set[str]:
        return {k["id"] for k in self._items("GetUsagePlanKeys", usagePlanId=plan_id)}

    def read_live_state(self, *, include_values: bool | None = None) -> LiveState:
        want_values = (any(s.key_value is not None for s in self.desired.subscribers.values())
                       if include_values is None else include_values)
        live = LiveState()
        self._load_rest_apis()  # apiStages are shown by API name
        plans = sorted(self._items("GetUsagePlans"), key=lambda p: p["id"])
        self._known_plan_ids = {p["id"] for p in plans}
        owned_plans: dict[str, dict] = {}
        unmanaged_plans: dict[str, dict] = {}
        for plan in plans:
            name = plan.get("name") or plan["id"]
            if _owned(plan) and name not in owned_plans:
                owned_plans[name] = plan
            elif _owned(plan):
                live.unmanaged.append(Unmanaged("product", name, f"usage plan {plan['id']}: a second apimon-managed "
                                                                 f"plan named {name}; delete one by hand"))
            else:
                unmanaged_plans.setdefault(name, plan)
        candidates = {n: p for n, p in unmanaged_plans.items() if n in self.desired.products and n not in owned_plans}
        # the plans' key pages are read on a few threads while this one pages through the API keys
        with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="apimon-aws-read") as pool:
            futures = {p["id"]: pool.submit(self._plan_members, p["id"])
                       for p in [*owned_plans.values(), *candidates.values()]}
            try:
                keys = sorted(self._items("GetApiKeys", includeValues=want_values),
                              key=lambda k: (str(k.get("createdDate") or ""), k["id"]))
                members = {plan_id: f.result() for plan_id, f in futures.items()}
            except BaseException:
                for f in futures.values():
                    f.cancel()
                raise
        self._known_key_ids = {k["id"] for k in keys}
        plan_name = {p["id"]: n for n, p in owned_plans.items()}
        candidate_name = {p["id"]: n for n, p in candidates.items()}
        plans_of: dict[str, list[str]] = {}
        for plan_id, key_ids in members.items():
            for key_id in key_ids:
                plans_of.setdefault(key_id, []).append(plan_id)

        for name, plan in sorted(owned_plans.items()):
            live.products[name] = self._project_product(plan)
            live.handles[("product", name)] = {"id": plan["id"], "raw": plan, "keys": members.get(plan["id"], set())}
        for plan in plans:
            name = plan.get("name") or plan["id"]
            if _owned(plan) or unmanaged_plans.get(name) is not plan:
                continue
            live.unmanaged.append(Unmanaged("product", name, f"usage plan {plan['id']} has no {MANAGED_TAG} tag",
                                            self._project_product(plan)))
            live.handles[("unmanaged-product", name)] = {"id": plan["id"], "raw": plan,
                                                         "keys": members.get(plan["id"], set())}

        owned_keys: dict[str, list[dict]] = {}
        for key in keys:
            name = key.get("name") or key["id"]
            if _owned(key):
                owned_keys.setdefault(name, []).append(key)
            elif ("unmanaged-subscriber", name) not in live.handles:
                in_plans = [p for p in plans_of.get(key["id"], []) if p in plan_name or p in candidate_name]
                product = ", ".join(sorted(plan_name.get(p) or candidate_name[p] for p in in_plans))
                live.unmanaged.append(Unmanaged("subscriber", name, f"API key {key['id']} has no {MANAGED_TAG} tag",
                                                self._project_subscriber(key, product)))
                live.handles[("unmanaged-subscriber", name)] = {"id": key["id"], "raw": key, "plans": in_plans,
                                                                "stale": []}
        for name, group in sorted(owned_keys.items()):
            want = self.desired.subscribers.get(name)
            want_fp = key_fingerprint(want.key_value) if want and want.key_value else None
            primary = next((k for k in group if want_fp and k.get("value")
                            and key_fingerprint(k["value"]) == want_fp), group[-1])  # else the newest
            stale = [k["id"] for k in group if k is not primary]
            in_plans = [p for p in plans_of.get(primary["id"], []) if p in plan_name]
            product = ", ".join(sorted(plan_name[p] for p in in_plans))
            live.subscribers[name] = self._project_subscriber(primary, product)
            live.handles[("subscriber", name)] = {"id": primary["id"], "raw": _without_value(primary),
                                                  "plans": in_plans, "stale": stale}
            if want_values and primary.get("value"):
                fp = key_fingerprint(primary["value"])
                live.key_fingerprints[name] = fp if not stale else f"duplicates:{fp}"
                live.handles[("subscriber", name)]["value_matches"] = fp == want_fp
        return live

    # ---------------------------------------------------------------- plan notes
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
        if change.action == "create":
            calls.update({"CreateApiKey": 1, "CreateUsagePlanKey": 1})
        elif change.action == "delete":
            calls["DeleteApiKey"] += 1
        else:
            if change.changed("key"):
                calls.update({"CreateApiKey": 1, "CreateUsagePlanKey": 1, "DeleteApiKey": 1})
            if change.changed("product"):
                calls.update({"DeleteUsagePlanKey": 1, "CreateUsagePlanKey": 1})
            if any(change.changed(f) for f in ("enabled", "email", "metadata.customer_id")):
                calls["UpdateApiKey"] += 1
        return calls

    def annotate(self, changes: ChangeSet) -> None:
        calls: Counter[str] = Counter()
        for change in changes.changes:
            calls.update(self._calls_for(change))
        if not calls:
            return
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
                changes.notes.append(f"{n} {what}: at least {_duration(seconds)} under {quota}{scaled}")

    # ---------------------------------------------------------------- apply
    def apply(self, changes: list[Change], live: LiveState, progress: Progress | None = None) -> ApplyReport:
        report = ApplyReport()
        if not changes:
            return report
        deps, dependents = self._dependencies(changes, live)
        waiting = [len(d) for d in deps]
        ready = [i for i, n in enumerate(waiting) if n == 0]
        heapq.heapify(ready)
        results: queue.Queue[tuple[int, ChangeOutcome | None]] = queue.Queue()
        stop = threading.Event()
        started: set[int] = set()

        def run(i: int) -> None:
            if stop.is_set():
                results.put((i, None))
                return
            try:
                outcome = ChangeOutcome(changes[i], True, self.apply_change(changes[i], live))
            except Cancelled:
                results.put((i, None))
                return
            except ProviderError as exc:
                outcome = ChangeOutcome(changes[i], False, str(exc))
            except Exception as exc:  # a bug or an unexpected SDK error: report it on this change
                outcome = ChangeOutcome(changes[i], False, f"unexpected error: {type(exc).__name__}: {exc}")
            results.put((i, outcome))

        pool = ThreadPoolExecutor(max_workers=APPLY_THREADS, thread_name_prefix="apimon-aws")
        in_flight = 0
        try:
            while True:
                while ready and not stop.is_set():
                    i = heapq.heappop(ready)
                    started.add(i)
                    in_flight += 1
                    pool.submit(run, i)
                if in_flight == 0:
                    break
                i, outcome = results.get()
                in_flight -= 1
                if outcome is None:
                    started.discard(i)
                    continue
                report.outcomes.append(outcome)
                if progress:
                    progress(outcome)
                if not outcome.ok:
                    stop.set()
                    continue
                for j in dependents[i]:
                    waiting[j] -= 1
                    if waiting[j] == 0:
                        heapq.heappush(ready, j)
        except BaseException:
            stop.set()
            self.quotas.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        report.not_applied = [c for i, c in enumerate(changes) if i not in started]
        return report

    def _dependencies(self, changes: list[Change], live: LiveState) -> tuple[list[set[int]], list[list[int]]]:
        product_change = {c.id: i for i, c in enumerate(changes) if c.kind == "product" and c.action != "delete"}
        leaving: dict[str, list[int]] = {}
        deps: list[set[int]] = [set() for _ in changes]
        for i, c in enumerate(changes):
            if c.kind != "subscriber":
                continue
            if c.action != "delete" and isinstance(c.desired, Subscriber) and \
                    (c.action == "create" or c.adopt or c.changed("product") or c.changed("key")):
                j = product_change.get(c.desired.product)
                if j is not None:
                    deps[i].add(j)
            if isinstance(c.live, Subscriber) and (c.action == "delete" or c.changed("product")):
                for name in c.live.product.split(", "):
                    leaving.setdefault(name, []).append(i)
        for i, c in enumerate(changes):
            if c.kind == "product" and c.action == "delete":
                deps[i].update(leaving.get(c.id, []))
        dependents: list[list[int]] = [[] for _ in changes]
        for i, d in enumerate(deps):
            for j in d:
                dependents[j].append(i)
        return deps, dependents

    def apply_change(self, change: Change, live: LiveState) -> str:
        if change.kind == "product":
            if change.action == "create":
                return self._create_plan(change)
            if change.action == "update":
                return self._update_plan(change, live)
            return self._delete_plan(change, live)
        if change.action == "create":
            return self._create_subscriber(change, live)
        if change.action == "update":
            return self._update_subscriber(change, live)
        return self._delete_subscriber(change, live)

    # ---- products
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
        for plan in self._items("GetUsagePlans"):
            if plan.get("name") == name and _owned(plan) and plan["id"] not in self._known_plan_ids:
                return plan
        return None

    def _create_plan(self, change: Change) -> str:
        p = change.desired
        assert isinstance(p, Product)
        plan = self._call("CreateUsagePlan", recover=lambda: self._find_new_plan(p.id), **self._plan_body(p))
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
            if throttle.get("rateLimit") is None or _number(throttle["rateLimit"]) != p.rate_limit.rate:
                ops.append({"op": "replace", "path": "/throttle/rateLimit", "value": str(p.rate_limit.rate)})
            if throttle.get("burstLimit") is None or _number(throttle["burstLimit"]) != p.rate_limit.burst:
                ops.append({"op": "replace", "path": "/throttle/burstLimit", "value": str(p.rate_limit.burst)})
        quota = plan.get("quota") or {}
        if p.quota is None:
            if quota:
                ops.append({"op": "remove", "path": "/quota"})
        else:
            if quota.get("limit") is None or _number(quota["limit"]) != p.quota.limit:
                ops.append({"op": "replace", "path": "/quota/limit", "value": str(p.quota.limit)})
            if str(quota.get("period") or "").upper() != _PERIODS[p.quota.period]:
                ops.append({"op": "replace", "path": "/quota/period", "value": _PERIODS[p.quota.period]})
            if _number(quota.get("offset") or 0) != 0:
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

    def _plan_handle(self, pid: str, live: LiveState) -> dict:
        handle = live.handles.get(("product", pid)) or live.handles.get(("unmanaged-product", pid))
        if handle is None:
            raise ProviderError(f"usage plan {pid} is no longer on AWS; run `apimon plan` again")
        return handle

    def _update_plan(self, change: Change, live: LiveState) -> str:
        p = change.desired
        assert isinstance(p, Product)
        handle = self._plan_handle(p.id, live)
        plan_id = handle["id"]
        done = []
        if change.adopt:
            self._call("TagResource", resourceArn=self._arn("usageplans", plan_id), tags=dict(MANAGED_TAGS))
            done.append(f"adopted (tagged {MANAGED_TAG})")
        ops = self._plan_patch(handle["raw"], p)
        if ops:
            def recover() -> dict | None:
                fresh = self._call("GetUsagePlan", usagePlanId=plan_id)
                return fresh if not self._plan_patch(fresh, p) else None

            self._call("UpdateUsagePlan", recover=recover, usagePlanId=plan_id, patchOperations=ops)
            done.append(f"updated ({len(ops)} change{'s' if len(ops) != 1 else ''} in one UpdateUsagePlan)")
        return "; ".join(done) or "nothing to change"

    def _delete_plan(self, change: Change, live: LiveState) -> str:
        handle = live.handles.get(("product", change.id))
        if handle is None:
            return "already gone"
        plan_id = handle["id"]
        owned_key_ids = {h["id"] for (kind, _), h in live.handles.items() if kind == "subscriber"}
        foreign = sorted(k for k in handle["keys"] if k not in owned_key_ids and k in self._known_key_ids
                         and k not in self._gone_keys and (plan_id, k) not in self._detached)
        if foreign:
            raise ProviderError(f"usage plan {change.id} ({plan_id}) still holds API keys apimon does not manage "
                                f"({', '.join(foreign)}); refusing to delete it (AWS would detach them)")
        try:
            result = self._call("DeleteUsagePlan", missing_ok=True, usagePlanId=plan_id)
        except AwsCallError as exc:
            if exc.code != "BadRequestException" or "stage" not in exc.aws_message.lower():
                raise
            # AWS may refuse to delete a plan still associated with API stages: detach them first
            stages = handle["raw"].get("apiStages") or []
            ops = [{"op": "remove", "path": "/apiStages", "value": f"{s['apiId']}:{s['stage']}"} for s in stages]
            self._call("UpdateUsagePlan", usagePlanId=plan_id, patchOperations=ops)
            result = self._call("DeleteUsagePlan", missing_ok=True, usagePlanId=plan_id)
        return "deleted" if result is not None else "already gone"

    # ---- subscribers
    def _arn(self, kind: str, rid: str) -> str:
        return f"arn:aws:apigateway:{self.region}::/{kind}/{rid}"

    def _plan_id_for(self, product: str, live: LiveState) -> str:
        with self._lock:
            if product in self._created_plans:
                return self._created_plans[product]
        handle = live.handles.get(("product", product)) or live.handles.get(("unmanaged-product", product))
        if handle is None:
            raise ProviderError(f"usage plan {product} does not exist on AWS")
        return handle["id"]

    def _find_new_key(self, name: str) -> dict | None:
        for key in self._items("GetApiKeys", nameQuery=name):
            if key.get("name") == name and _owned(key) and key["id"] not in self._known_key_ids:
                return key
        return None

    def _create_key(self, sub: Subscriber) -> dict:
        body: dict[str, Any] = {"name": sub.id, "description": sub.email or "", "enabled": sub.enabled,
                                "tags": dict(MANAGED_TAGS)}
        customer = sub.metadata_dict.get("customer_id")
        if customer:
            body["customerId"] = customer
        if sub.key_value is not None:
            body["value"] = sub.key_value
        key = self._call("CreateApiKey", recover=lambda: self._find_new_key(sub.id), **body)
        with self._lock:
            self._known_key_ids.add(key["id"])
        return {k: v for k, v in key.items() if k != "value"}

    def _attach(self, plan_id: str, key_id: str) -> None:
        def recover() -> dict | None:
            found = any(k["id"] == key_id for k in self._items("GetUsagePlanKeys", usagePlanId=plan_id))
            return {"id": key_id} if found else None

        with self._plan_key_lock:
            self._call("CreateUsagePlanKey", recover=recover, usagePlanId=plan_id, keyId=key_id, keyType="API_KEY")

    def _detach(self, plan_id: str, key_id: str) -> None:
        with self._plan_key_lock:
            self._call("DeleteUsagePlanKey", missing_ok=True, usagePlanId=plan_id, keyId=key_id)
        with self._lock:
            self._detached.add((plan_id, key_id))

    def _delete_key(self, key_id: str) -> None:
        self._call("DeleteApiKey", missing_ok=True, apiKey=key_id)
        with self._lock:
            self._gone_keys.add(key_id)

    def _create_subscriber(self, change: Change, live: LiveState) -> str:
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

    def _update_subscriber(self, change: Change, live: LiveState) -> str:
        sub = change.desired
        assert isinstance(sub, Subscriber)
        handle = live.handles.get(("subscriber", sub.id)) or live.handles.get(("unmanaged-subscriber", sub.id))
        if handle is None:
            raise ProviderError(f"API key {sub.id} is no longer on AWS; run `apimon plan` again")
        key_id = handle["id"]
        target = self._plan_id_for(sub.product, live)
        done = []
        if change.adopt:
            self._call("TagResource", resourceArn=self._arn("apikeys", key_id), tags=dict(MANAGED_TAGS))
            done.append(f"adopted (tagged {MANAGED_TAG})")
        if change.changed("key") and sub.key_value is not None and not handle.get("value_matches"):
            # AWS cannot change a key's value: a new key (same name, new value) replaces the old one
            new = self._create_key(sub)
            self._attach(target, new["id"])
            for old in [key_id, *handle.get("stale", [])]:
                self._delete_key(old)
            return "; ".join([*done, "key replaced (new value imported)"])
        ops = self._key_patch(handle["raw"], sub)
        if ops:
            self._call("UpdateApiKey", apiKey=key_id, patchOperations=ops)
            done.append("updated")
        current = list(handle.get("plans", []))
        moved = False
        for plan_id in current:
            if plan_id != target:
                self._detach(plan_id, key_id)
                moved = True
        if target not in current:
            self._attach(target, key_id)
            moved = True
        if moved:
            done.append(f"moved to {sub.product} (same key)")
        stale = handle.get("stale", [])
        for old in stale:
            self._delete_key(old)
        if stale:
            done.append(f"removed {len(stale)} duplicate key(s)")
        return "; ".join(done) or "nothing to change"

    def _delete_subscriber(self, change: Change, live: LiveState) -> str:
        handle = live.handles.get(("subscriber", change.id))
        if handle is None:
            return "already gone"
        for key_id in [handle["id"], *handle.get("stale", [])]:
            self._delete_key(key_id)
        return "deleted (key revoked)"

    # ---------------------------------------------------------------- keys, usage, import
    def reveal_key(self, subscriber_id: str) -> str | None:
        mine = [k for k in self._items("GetApiKeys", nameQuery=subscriber_id)
                if k.get("name") == subscriber_id and _owned(k)]
        if not mine:
            return None
        newest = max(mine, key=lambda k: (str(k.get("createdDate") or ""), k["id"]))
        return self._call("GetApiKey", apiKey=newest["id"], includeValue=True).get("value")

    def pull_usage(self, start: date, end: date) -> Iterable[UsageRow]:
        if end < start:
            return
        plans = [p for p in self._items("GetUsagePlans") if _owned(p)]
        key_names = {k["id"]: k.get("name") or k["id"] for k in self._items("GetApiKeys") if _owned(k)}
        for plan in sorted(plans, key=lambda p: p.get("name") or p["id"]):
            product = plan.get("name") or plan["id"]
            for first, last in _date_windows(start, end):
                used: dict[tuple[str, date], int] = {}
                for page in self._pages("GetUsage", usagePlanId=plan["id"], startDate=first.isoformat(),
                                        endDate=last.isoformat()):
                    base = date.fromisoformat(page.get("startDate") or first.isoformat())
                    for key_id, days in (page.get("items") or {}).items():
                        for i, pair in enumerate(days or []):
                            day = base + timedelta(days=i)
                            if pair and first <= day <= last:
                                used[(key_id, day)] = int(pair[0] or 0)
                for (key_id, day), count in sorted(used.items(), key=lambda kv: (kv[0][1], kv[0][0])):
                    if count and key_id in key_names:
                        for metric in ("success", "total"):
                            yield UsageRow(key_names[key_id], product, day.isoformat(), metric, count)

    def export_plan(self, *, include_unmanaged: bool = True) -> dict:
        """The live account as plan data: apimon-owned usage plans and keys (all of them with
        ``include_unmanaged``, for a first import before ``apimon adopt``). Key values are never read."""
        desired, self.desired = self.desired, replace(self.desired, products={}, subscribers={})
        try:  # project what AWS holds, not what some plan wants (display_name = id, pricing free)
            live = self.read_live_state(include_values=False)
        finally:
            self.desired = desired
        products = dict(live.products)
        subscribers = dict(live.subscribers)
        if include_unmanaged:
            for u in live.unmanaged:
                if u.kind == "product" and isinstance(u.resource, Product):
                    products.setdefault(u.name, u.resource)
                elif u.kind == "subscriber" and isinstance(u.resource, Subscriber):
                    subscribers.setdefault(u.name, u.resource)
        out_products = [_exportable_product(p) for p in products.values()]
        out_subscribers = []
        for s in subscribers.values():
            first = s.product.split(", ")[0] if s.product else ""
            if first in products:  # a key in no plan cannot be written as a subscriber
                out_subscribers.append(_exportable_subscriber(s, first))
        target: dict[str, Any] = {"region": self.region}
        if self.profile:
            target["profile"] = self.profile
        if self.endpoint_url:
            target["endpoint_url"] = self.endpoint_url
        return {"target": {"provider": "aws", "aws": target}, "products": out_products,
                "subscribers": out_subscribers}


def _without_value(key: dict) -> dict:
    return {k: v for k, v in key.items() if k != "value"}


def _exportable_product(p: Product) -> Product:
    """Valid plan data: whole-number rate limits with burst >= rate (hand-made plans may differ)."""
    import math

    if p.rate_limit is None:
        return p
    rate = max(1, math.ceil(p.rate_limit.rate))
    burst = max(rate, math.ceil(p.rate_limit.burst))
    return Product(p.id, p.display_name, p.description, p.apis, RateLimit(rate, burst), p.quota, p.pricing)


def _exportable_subscriber(s: Subscriber, product: str) -> Subscriber:
    import re

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
