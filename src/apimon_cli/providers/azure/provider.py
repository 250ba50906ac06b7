"""Azure API Management through azure-mgmt-apimanagement (api-version 2024-05-01).

Mapping:
- product -> APIM product (``subscriptionRequired: true``, ``approvalRequired: false``, ``state: published``);
  apimon owns a product when the APIM tag ``apimon-managed`` is assigned to it. Others are never touched.
- rate_limit / quota -> the product policy (``policy``); pricing and burst are not stored.
- auth jwt (+ scopes) -> a ``validate-jwt`` element first in the product policy's inbound section: the issuer's
  OpenID discovery document (``openid-config``; API Management has no element for a bare JWKS URL), the
  audience, the issuer and the scopes as a required claim (``policy``). API Management still requires the
  subscription key (the subscriber) on every call, so a caller sends both (validation warns). oauth2 (tokens
  the gateway issues) and mtls cannot be expressed (validation warns); client secrets are not stored.
- apis -> product-API links; an API missing from the service is a plan-time error.
- subscriber -> APIM subscription named ``apimon-<subscriber id>`` (the ownership marker: names cannot change,
  so nothing else can make a subscription look like apimon's), display name = subscriber id, scope
  ``/products/<id>``, state active/suspended; email and metadata are not stored (validation warns).

Concurrency control: every update and delete sends ``If-Match`` with the ETag read while planning. List
responses carry no ETags, so the plan GETs exactly the resources it is going to write (``preflight``, right
after the diff) and checks they still hold what the list showed. A 412 stops the apply with a message.

Reads run on a bounded thread pool (``APIMON_AZURE_CONCURRENCY``, default 8; ``paging``); applies run on the
engine's solver at the same concurrency, products one at a time and each kind's phase after the one before.
429 and 5xx answers are retried a bounded number of times, honouring Retry-After (``transport.azure``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from types import SimpleNamespace
from typing import Any

from azure.core.exceptions import HttpResponseError

from ...model import DesiredState, LiveState, UsageRow
from ...reconcile.changes import Change, ChangeSet
from ...reconcile.solver import ApplyPolicy
from ..base import PlanNotes, Provider, ProviderError
from .client import ARM_ENDPOINTS, SDK_ERRORS, env_int, explain, make_client
from .keys import AzureKeys
from .paging import PagedList, Scheduler
from .policy import as_held
from .read import SUB_PREFIX, WANTED_PRODUCT, AzureFacts, AzureReading, is_missing_products_by_tags, last
from .write import AzureWriting, force_policy, refusal, writes_policy

DEFAULT_CONCURRENCY = 8

__all__ = ["AzureProvider", "force_policy"]


def _ns_report(v: dict) -> SimpleNamespace:
    return SimpleNamespace(subscription_id=v.get("subscriptionId"), product_id=v.get("productId"),
                           call_count_success=v.get("callCountSuccess"), call_count_blocked=v.get("callCountBlocked"),
                           call_count_failed=v.get("callCountFailed"), call_count_other=v.get("callCountOther"),
                           call_count_total=v.get("callCountTotal"))


class AzureProvider(AzureKeys, AzureReading, AzureWriting, Provider):
    name = "azure"

    def __init__(self, desired: DesiredState):
        super().__init__(desired)
        s = self.settings
        missing = [k for k in ("subscription_id", "resource_group", "service") if not s.get(k)]
        if missing:
            raise ProviderError(f"target.azure needs {', '.join(missing)}")
        self.subscription_id: str = s["subscription_id"]
        self.rg: str = s["resource_group"]
        self.service: str = s["service"]
        self.cloud: str = s.get("cloud") or "public"
        if self.cloud not in ARM_ENDPOINTS:
            raise ProviderError(f"target.azure.cloud must be one of {', '.join(ARM_ENDPOINTS)}; got {self.cloud!r}")
        self.base_url: str = (s.get("endpoint") or ARM_ENDPOINTS[self.cloud]).rstrip("/")
        self.concurrency = env_int("APIMON_AZURE_CONCURRENCY", DEFAULT_CONCURRENCY)
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._tag_ready = False
        self._plain_product_list = False  # the service does not serve productsByTags: list products + tags

    # ---------------------------------------------------------------- plumbing
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.subscription_id, self.cloud, self.base_url, self.concurrency)
        return self._client

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="apimon-azure")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def explain(self, exc: Exception, what: str) -> ProviderError | None:
        if isinstance(exc, SDK_ERRORS):
            return explain(exc, what, service=self.service, rg=self.rg, subscription_id=self.subscription_id,
                           base_url=self.base_url)
        return None

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except SDK_ERRORS as exc:
            raise self.explain(exc, what) from None

    # ---------------------------------------------------------------- read
    def read_live_state(self) -> LiveState:
        try:
            try:
                return self._read()
            except HttpResponseError as exc:
                if self._plain_product_list or not is_missing_products_by_tags(exc):
                    raise
                self._plain_product_list = True  # read again without it
                return self._read()
        except SDK_ERRORS as exc:
            raise self.explain(exc, f"reading API Management service {self.service}") from None

    # ---------------------------------------------------------------- plan hooks
    def canonical(self, kind: str, resource: Any) -> Any:
        """A product's credentials as API Management holds them (``policy.as_held``): what it cannot
        express (oauth2, mtls, scopes without jwt) is never a difference; validation warns about it."""
        return as_held(resource) if kind == "product" else resource

    def preflight(self, desired: DesiredState, live: LiveState, changes: ChangeSet) -> list[str]:
        """Every API the plan names exists; then the ETags of what the plan updates or deletes, read now and
        checked against what the list showed."""
        known = set(live.facts.api_ids if isinstance(live.facts, AzureFacts) else ())
        problems = []
        for pid, product in desired.products.items():
            for api in product.apis:
                if api not in known:
                    listing = ", ".join(sorted(known)[:20]) or "none"
                    problems.append(f"products.{pid}.apis: API {api!r} does not exist in API Management service "
                                    f"{self.service} (APIs there: {listing})")
        if not problems:
            self._prefetch_etags(changes.changes, live)
        return problems

    def _prefetch_etags(self, changes: list[Change], live: LiveState) -> None:
        wanted = [c for c in changes if c.action in ("update", "delete")]
        if not wanted:
            return
        sched = Scheduler(self.pool)
        for c in wanted:
            sched.submit(lambda c=c: self.fetch_etag(c.kind, c.id, live), lambda _r: None)
        try:
            sched.run()
        except SDK_ERRORS as exc:
            raise self.explain(exc, "reading ETags of the resources the plan changes") from None

    def notes(self, desired: DesiredState, live: LiveState, changes: ChangeSet) -> PlanNotes:
        out = PlanNotes()
        foreign_subs = live.facts.foreign_subs if isinstance(live.facts, AzureFacts) else {}
        for c in changes.changes:
            handle = live.handles.get((c.kind, c.id))
            if c.kind == "product" and c.action != "delete" and handle and handle.foreign and writes_policy(c, handle):
                out.warnings.append(
                    f"product {c.id}: its live policy has elements apimon did not write "
                    f"({'; '.join(handle.foreign)}); apply will refuse to replace it unless "
                    "--force-policy (APIMON_FORCE_POLICY=1) is given, which removes them")
            if c.kind == "product" and c.action == "delete" and foreign_subs.get(c.id):
                out.warnings.append(
                    f"product {c.id} will not be deleted: it has subscriptions apimon does not own "
                    f"({', '.join(foreign_subs[c.id])}); apimon never deletes them")
        changing = {c.id for c in changes.changes if c.kind == "product"}
        for (kind, pid), handle in sorted(live.handles.items()):
            if kind != "product" or not handle.owned:
                continue
            if handle.foreign and pid not in changing:
                out.notes.append(f"product {pid}: the live policy has elements apimon did not write "
                                 f"({'; '.join(handle.foreign)}); left as is")
            out.notes.extend(f"product {pid}: {note}" for note in handle.notes)
            drift = [f"{k}={v}" for k, v in handle.snapshot.items()
                     if k in WANTED_PRODUCT and v is not None and v != WANTED_PRODUCT[k]]
            if drift:
                out.notes.append(f"product {pid} has {', '.join(drift)} on the gateway; apimon sets "
                                 "subscription_required=True, approval_required=False, state=published "
                                 "with its next change to the product")
        return out

    # ---------------------------------------------------------------- apply
    def refusals(self, changes: list[Change], live: LiveState) -> list[tuple[Change, str]]:
        """A policy with foreign elements is never replaced unforced: such a plan applies nothing."""
        return [(c, m) for c in changes if (m := refusal(c, live))]

    def apply_policy(self) -> ApplyPolicy:
        """Products one at a time; each phase (product writes, subscriber writes, subscriber deletes, product
        deletes) after the one before; subscriber changes at the read concurrency."""
        return ApplyPolicy(workers=self.concurrency, per_kind={"product": 1}, phased=True)

    # ---------------------------------------------------------------- keys, usage, import
    def pull_usage(self, start: date, end: date) -> Iterable[UsageRow]:
        """Daily call counts of apimon's subscriptions: one bySubscription report per UTC day."""
        if end < start:
            return []
        sched = Scheduler(self.pool)
        out: list[UsageRow] = []

        def collect(day: date) -> Callable[[list], None]:
            def on_rows(records: list) -> None:
                seen: set[tuple[str, str]] = set()
                for r in records:
                    name = last(r.subscription_id)
                    if not name.lower().startswith(SUB_PREFIX):
                        continue
                    pid = last(r.product_id)
                    if (name, pid) in seen:
                        continue
                    seen.add((name, pid))
                    counts = {"success": r.call_count_success, "blocked": r.call_count_blocked,
                              "failed": r.call_count_failed, "other": r.call_count_other,
                              "total": r.call_count_total}
                    if not counts["total"]:
                        continue
                    for metric, count in counts.items():
                        out.append(UsageRow(name[len(SUB_PREFIX):], pid, day.isoformat(), metric, int(count or 0)))
            return on_rows

        day = start
        while day <= end:
            window = (f"timestamp ge datetime'{day.isoformat()}T00:00:00' and "
                      f"timestamp le datetime'{day.isoformat()}T23:59:59'")
            PagedList(sched, self.raw_list("reports/bySubscription", _ns_report, **{"$filter": window}),
                       self.concurrency, collect(day)).start()
            day += timedelta(days=1)
        try:
            sched.run()
        except SDK_ERRORS as exc:
            raise self.explain(exc, "reading usage reports") from None
        return sorted(out, key=lambda u: (u.day, u.subscriber, u.product, u.metric))

    def export_plan(self, *, include_unmanaged: bool = True) -> dict:
        """Owned products and subscriptions, plus products apimon does not manage yet (adoptable).
        Foreign subscriptions are never exported: apimon owns only `apimon-` subscriptions, so they
        cannot be adopted (see the module docstring); each is listed under ``not_imported`` with that reason."""
        self.details_of_all_products = include_unmanaged  # an import's plan names no product: read them all
        try:
            live = self.read_live_state()
        finally:
            self.details_of_all_products = False
        products = list(live.products.values())
        not_imported: list[str] = []
        if include_unmanaged:
            for u in live.unmanaged:
                if u.kind == "product" and u.resource is not None:
                    products.append(u.resource)
                elif u.kind == "product":
                    not_imported.append(f"product {u.name!r}: {u.detail}; its policy and APIs could not be read")
                elif u.kind == "subscriber":
                    not_imported.append(
                        f"subscriber {u.name!r}: {u.detail}; apimon manages only subscriptions it names "
                        f"{SUB_PREFIX}<id> and Azure cannot rename one, so it cannot be adopted (it is left alone)")
        azure: dict[str, Any] = {"subscription_id": self.subscription_id, "resource_group": self.rg,
                                 "service": self.service}
        if self.cloud != "public":
            azure["cloud"] = self.cloud
        if self.settings.get("endpoint"):
            azure["endpoint"] = self.settings["endpoint"]
        return {"target": {"provider": "azure", "azure": azure},
                "products": products, "subscribers": list(live.subscribers.values()), "not_imported": not_imported}
