"""Azure API Management through azure-mgmt-apimanagement (api-version 2024-05-01).

Mapping (see docs in the module constants below and the report in the PR):
- product -> APIM product (``subscriptionRequired: true``, ``approvalRequired: false``, ``state: published``);
  apimon owns a product when the APIM tag ``apimon-managed`` is assigned to it. Others are never touched.
- rate_limit / quota -> the product policy (``azure_policy``); pricing and burst are not stored.
- apis -> product-API links; an API missing from the service is a plan-time error.
- subscriber -> APIM subscription named ``apimon-<subscriber id>`` (the ownership marker: names cannot change,
  so nothing else can make a subscription look like apimon's), display name = subscriber id, scope
  ``/products/<id>``, state active/suspended; email and metadata are not stored.

Concurrency control: every update and delete sends ``If-Match`` with the ETag read while planning. List
responses carry no ETags, so the plan GETs exactly the resources it is going to write (right after the diff,
in ``annotate``) and checks they still hold what the list showed. A 412 stops the apply with a message.

Reads run on a bounded thread pool (``APIMON_AZURE_CONCURRENCY``, default 8): collections are listed page by
page with ``$top``/``$skip`` several pages ahead; per-product policy and API-link reads (APIM has no list
for those across products) run in parallel. 429 and 5xx answers are retried a bounded number of times,
honouring Retry-After.
"""

from __future__ import annotations

import email.utils
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import HTTPPolicy, SansIOHTTPPolicy

from ...model import DesiredState, LiveState, Product, Subscriber, Unmanaged, UsageRow
from ...reconcile.changes import Change
from ...reconcile.engine import ApplyReport, ChangeOutcome, Progress
from ...reconcile.fields import key_fingerprint
from ..base import Provider, ProviderError
from .policy import generate_policy, policies_equal, read_policy

OWNER_TAG = "apimon-managed"
SUB_PREFIX = "apimon-"
ARM_ENDPOINTS = {
    "public": "https://management.azure.com",
    "china": "https://management.chinacloudapi.cn",
    "usgovernment": "https://management.usgovcloudapi.net",
}
PAGE_SIZE = 100
DEFAULT_CONCURRENCY = 8
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ATTEMPTS = 5
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_PRODUCT_SCOPE = re.compile(r"/products/([^/]+)$", re.IGNORECASE)
_SERVICE_PREFIX = re.compile(r"^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.apimanagement"
                             r"/service/[^/]+", re.IGNORECASE)
_WANTED_PRODUCT = {"subscription_required": True, "approval_required": False, "state": "published"}


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ProviderError(f"{name} must be a whole number; got {raw!r}") from None
    if value < minimum:
        raise ProviderError(f"{name} must be >= {minimum}; got {value}")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ProviderError(f"{name} must be a number of seconds; got {raw!r}") from None


def force_policy() -> bool:
    """`apply --force-policy` (the CLI sets APIMON_FORCE_POLICY=1): replace policies with foreign elements."""
    return os.environ.get("APIMON_FORCE_POLICY", "").lower() in ("1", "true", "yes")


# ---------------------------------------------------------------- pipeline policies

class _StaticBearer(SansIOHTTPPolicy):
    """APIMON_AZURE_TOKEN as-is (azure-core's bearer policy refuses plain http, which tests need)."""

    def __init__(self, token: str):
        super().__init__()
        self._token = token

    def on_request(self, request: Any) -> None:
        request.http_request.headers["Authorization"] = f"Bearer {self._token}"


class _TokenCredential:
    def __init__(self, token: str):
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, int(time.time()) + 3600)


def _retry_after(response: Any) -> float | None:
    millis = response.headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _Retry(HTTPPolicy):
    """Bounded retries: 429/5xx (Retry-After honoured up to ``max_wait``), connection errors when safe."""

    def __init__(self, attempts: int, backoff: float, max_wait: float):
        super().__init__()
        self.attempts = attempts
        self.backoff = backoff
        self.max_wait = max_wait

    def send(self, request: Any) -> Any:
        attempt = 0
        while True:
            attempt += 1
            method = request.http_request.method.upper()
            try:
                response = self.next.send(request)
            except (ServiceRequestError, ServiceResponseError) as exc:
                retryable = isinstance(exc, ServiceRequestError) or method in IDEMPOTENT
                if not retryable or attempt >= self.attempts:
                    raise
                time.sleep(self._backoff(attempt))
                continue
            status = response.http_response.status_code
            if status not in RETRY_STATUSES or attempt >= self.attempts:
                return response
            wait_s = _retry_after(response.http_response)
            if wait_s is None:
                wait_s = self._backoff(attempt)
            elif wait_s > self.max_wait:
                return response  # the service asks for longer than apimon waits: report it, don't hammer
            time.sleep(wait_s)

    def _backoff(self, attempt: int) -> float:
        return min(self.max_wait, self.backoff * (2 ** (attempt - 1))) * random.uniform(0.8, 1.2)


# ---------------------------------------------------------------- bounded-concurrency reads

class _Scheduler:
    """Runs tasks on a bounded pool; a task's completion handler (run on this thread) may add tasks.

    No task ever waits for another, so the pool can never deadlock however small it is.
    """

    def __init__(self, pool: ThreadPoolExecutor):
        self.pool = pool
        self.pending: dict[Future, Callable[[Any], None]] = {}

    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any], None]) -> None:
        self.pending[self.pool.submit(fn)] = on_done

    def run(self) -> None:
        try:
            while self.pending:
                done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    self.pending.pop(fut)(fut.result())
        finally:
            for fut in self.pending:
                fut.cancel()
            self.pending.clear()


class _PagedList:
    """A collection read with ``$top``/``$skip`` up to ``ahead`` pages at a time, falling back to following
    ``nextLink`` when the service pages differently from what was asked.

    ``list_op(top=, skip=)`` must return an azure-core ``ItemPaged``.
    """

    def __init__(self, sched: _Scheduler, list_op: Callable[..., Any], ahead: int,
                 on_complete: Callable[[list], None]):
        self.sched = sched
        self.list_op = list_op
        self.ahead = max(1, ahead)
        self.on_complete = on_complete
        self.pages: dict[int, list] = {}
        self.tails: dict[int, list] = {}  # skip of a page the service paged differently -> items after it
        self.size = 0
        self.next_skip = 0
        self.end: float = float("inf")  # skip of the last page
        self.in_flight = 0
        self.following = False

    def start(self) -> None:
        self._fetch_skip(0)

    def _fetch_skip(self, skip: int) -> None:
        self.in_flight += 1

        def fetch() -> tuple[list, str | None]:
            pages = self.list_op(top=PAGE_SIZE, skip=skip or None).by_page()
            items = list(next(pages))
            return items, pages.continuation_token

        self.sched.submit(fetch, lambda result: self._on_page(skip, result))

    def _fetch_link(self, origin: int, link: str) -> None:
        self.in_flight += 1

        def fetch() -> tuple[list, str | None]:
            pages = self.list_op().by_page(continuation_token=link)
            items = list(next(pages))
            return items, pages.continuation_token

        self.sched.submit(fetch, lambda result: self._on_link_page(origin, result))

    def _on_page(self, skip: int, result: tuple[list, str | None]) -> None:
        self.in_flight -= 1
        items, link = result
        self.pages[skip] = items
        if link is None:
            self.end = min(self.end, skip)
        elif skip == 0:
            self.size = len(items)
            if self.size == 0:  # an empty first page that still has a next link: just follow links
                self.end = 0
                self.following = True
                self._fetch_link(0, link)
            else:
                self.next_skip = self.size
                for _ in range(self.ahead):
                    self._schedule_next()
        elif len(items) != self.size and skip < self.end:
            # the service pages differently from what we asked: keep this page, follow its links from here
            self.end = skip
            self.following = True
            self._fetch_link(skip, link)
        else:
            self._schedule_next()
        self._maybe_done()

    def _schedule_next(self) -> None:
        if not self.following and self.next_skip <= self.end and self.size:
            skip = self.next_skip
            self.next_skip += self.size
            self._fetch_skip(skip)

    def _on_link_page(self, origin: int, result: tuple[list, str | None]) -> None:
        self.in_flight -= 1
        items, link = result
        self.tails.setdefault(origin, []).extend(items)
        if link is not None and origin == self.end:
            self._fetch_link(origin, link)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.in_flight == 0:
            out = [item for skip in sorted(self.pages) if skip <= self.end for item in self.pages[skip]]
            self.on_complete(out + self.tails.get(int(self.end), []))


def _relative(arm_id: str | None) -> str:
    """'/subscriptions/.../service/x/products/gold' -> '/products/gold'."""
    return _SERVICE_PREFIX.sub("", arm_id or "")


def _last(path: str | None) -> str:
    return (path or "").rstrip("/").rsplit("/", 1)[-1]


def _product_of_scope(scope: str | None) -> str | None:
    m = _PRODUCT_SCOPE.search(scope or "")
    return m.group(1) if m else None


def _with_etag(_response: Any, model: Any, headers: dict) -> tuple[Any, str | None]:
    return model, headers.get("ETag")


def _limits_text(p: Product) -> str:
    parts = []
    if p.rate_limit:
        parts.append(f"rate-limit {p.rate_limit.rate}/s")
    if p.quota:
        parts.append(f"quota {p.quota.limit}/{p.quota.period}")
    return ", ".join(parts) or "no limits"


def _ns_subscription(v: dict) -> SimpleNamespace:
    p = v.get("properties") or {}
    return SimpleNamespace(name=v.get("name"), scope=p.get("scope"), display_name=p.get("displayName"),
                           state=p.get("state"))


def _ns_product_by_tag(v: dict) -> SimpleNamespace:
    prod, tag = v.get("product"), v.get("tag")
    product = None if prod is None else SimpleNamespace(
        id=prod.get("id"), name=prod.get("name"), description=prod.get("description"), state=prod.get("state"),
        subscription_required=prod.get("subscriptionRequired"), approval_required=prod.get("approvalRequired"))
    return SimpleNamespace(product=product, tag=None if tag is None else SimpleNamespace(id=tag.get("id")))


def _quiet_sdk_logs() -> None:
    """azure-identity and azure-core log multi-line warnings (every credential DefaultAzureCredential tried)
    to stderr through Python's last-resort handler; apimon reports one line itself."""
    import logging

    for name in ("azure", "msal"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        logger.propagate = False


def _is_missing_products_by_tags(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    request = getattr(response, "request", None)
    return (getattr(exc, "status_code", None) in (404, 501)
            and "/productsByTags" in str(getattr(request, "url", "")))


def _ns_report(v: dict) -> SimpleNamespace:
    return SimpleNamespace(subscription_id=v.get("subscriptionId"), product_id=v.get("productId"),
                           call_count_success=v.get("callCountSuccess"), call_count_blocked=v.get("callCountBlocked"),
                           call_count_failed=v.get("callCountFailed"), call_count_other=v.get("callCountOther"),
                           call_count_total=v.get("callCountTotal"))


# ---------------------------------------------------------------- the provider

class AzureProvider(Provider):
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
        self.concurrency = _env_int("APIMON_AZURE_CONCURRENCY", DEFAULT_CONCURRENCY)
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._live: LiveState | None = None
        self._api_ids: list[str] = []
        self._foreign_subs: dict[str, list[str]] = {}  # product id -> subscriptions apimon does not own
        self._tag_ready = False
        self._plain_product_list = False  # the service does not serve productsByTags: list products + tags

    # ---------------------------------------------------------------- plumbing
    @property
    def target_id(self) -> str:
        return f"azure:{self.subscription_id}/{self.rg}/{self.service}"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        _quiet_sdk_logs()
        import requests
        from azure.core.pipeline.transport import RequestsTransport
        from azure.mgmt.apimanagement import ApiManagementClient

        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, self.concurrency + 2))
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        retry = _Retry(attempts=_env_int("APIMON_AZURE_MAX_ATTEMPTS", MAX_ATTEMPTS),
                       backoff=_env_float("APIMON_AZURE_RETRY_BACKOFF", 0.5),
                       max_wait=_env_float("APIMON_AZURE_MAX_RETRY_WAIT", 60.0))
        kwargs: dict[str, Any] = {"base_url": self.base_url, "retry_policy": retry, "polling_interval": 0,
                                  "transport": RequestsTransport(session=session, session_owner=True)}
        token = os.environ.get("APIMON_AZURE_TOKEN")
        if token:
            credential: Any = _TokenCredential(token)
            kwargs["authentication_policy"] = _StaticBearer(token)
        else:
            from azure.identity import AzureAuthorityHosts, DefaultAzureCredential

            authority = {"public": AzureAuthorityHosts.AZURE_PUBLIC_CLOUD,
                         "china": AzureAuthorityHosts.AZURE_CHINA,
                         "usgovernment": AzureAuthorityHosts.AZURE_GOVERNMENT}[self.cloud]
            credential = DefaultAzureCredential(authority=authority)
            kwargs["credential_scopes"] = [ARM_ENDPOINTS[self.cloud] + "/.default"]
        return ApiManagementClient(credential, self.subscription_id, **kwargs)

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

    def _explain(self, exc: Exception, what: str) -> ProviderError:
        """A user-facing message for an SDK error."""
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, ClientAuthenticationError):
            return ProviderError(f"{what}: Azure did not accept the credentials ({_short(exc)}); sign in with "
                                 "`az login` (or another DefaultAzureCredential source) or set APIMON_AZURE_TOKEN")
        if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
            return ProviderError(f"{what}: cannot reach Azure at {self.base_url}: {_short(exc)}")
        if isinstance(exc, HttpResponseError):
            status = exc.status_code
            code = getattr(getattr(exc, "error", None), "code", None) or ""
            if code in ("ResourceGroupNotFound", "SubscriptionNotFound") or (
                    status == 404 and "Microsoft.ApiManagement/service" in str(exc.message or "")):
                return ProviderError(f"{what}: API Management service {self.service!r} was not found in resource "
                                     f"group {self.rg!r} of subscription {self.subscription_id!r} ({_short(exc)})")
            if status == 412:
                return ProviderError(f"{what}: it was changed on the gateway since the plan read it (HTTP 412 "
                                     "Precondition Failed: its ETag no longer matches). Nothing more was applied; "
                                     "run `apimon plan` to see its current state, then apply again")
            if status == 429:
                after = exc.response.headers.get("Retry-After") if exc.response is not None else None
                hint = f"; Azure asks to wait {after} s" if after else ""
                return ProviderError(f"{what}: Azure kept throttling the requests (HTTP 429){hint}. Try again "
                                     "later or lower APIMON_AZURE_CONCURRENCY")
            return ProviderError(f"{what}: Azure answered HTTP {status}{' ' + code if code else ''}: "
                                 f"{_short(exc)}")
        return ProviderError(f"{what}: {type(exc).__name__}: {exc}")

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
            raise self._explain(exc, what) from None

    def _raw_list(self, collection: str, convert: Callable[[dict], Any], **params: Any) -> Callable[..., Any]:
        """A list operation of the service's ``collection`` through the SDK client's own pipeline (same auth,
        retries, base URL, ``nextLink`` paging), keeping only the fields apimon reads. Used for the large
        collections: msrest model deserialization costs ~0.3 ms per item, which bounds a plan of thousands
        of subscriptions by CPU whatever the concurrency."""
        from azure.core.exceptions import map_error
        from azure.core.paging import ItemPaged
        from azure.core.rest import HttpRequest
        from azure.mgmt.core.exceptions import ARMErrorFormat

        path = (f"/subscriptions/{quote(self.subscription_id)}/resourceGroups/{quote(self.rg)}/providers/"
                f"Microsoft.ApiManagement/service/{quote(self.service)}/{collection}")
        api_version = self.client._config.api_version

        def op(top: int | None = None, skip: int | None = None) -> Any:
            def get_next(link: str | None) -> Any:
                if link:
                    parts = urlsplit(link)
                    query = dict(parse_qsl(parts.query, keep_blank_values=True))
                    query["api-version"] = api_version
                    request = HttpRequest("GET", parts._replace(query=urlencode(query, quote_via=quote)).geturl())
                else:
                    query = {"api-version": api_version, **{k: v for k, v in params.items() if v is not None}}
                    if top:
                        query["$top"] = top
                    if skip:
                        query["$skip"] = skip
                    request = HttpRequest("GET", path, params=query)
                response = self.client._send_request(request)
                if response.status_code != 200:
                    map_error(status_code=response.status_code, response=response,
                              error_map={401: ClientAuthenticationError, 404: ResourceNotFoundError})
                    raise HttpResponseError(response=response, error_format=ARMErrorFormat)
                return response

            def extract(response: Any) -> tuple[str | None, Iterable[Any]]:
                body = response.json()
                return body.get("nextLink") or None, iter([convert(v) for v in body.get("value") or []])

            return ItemPaged(get_next, extract)

        return op

    # ---------------------------------------------------------------- stores
    def stores(self, kind: str, field: str) -> bool:
        if kind == "product":
            return not (field.startswith("pricing.") or field in ("rate_limit.burst", "max_concurrent"))
        if kind == "subscriber":
            return not (field == "email" or field.startswith("metadata."))
        return True

    # ---------------------------------------------------------------- read
    def read_live_state(self) -> LiveState:
        try:
            try:
                return self._read_live_state()
            except HttpResponseError as exc:
                if self._plain_product_list or not _is_missing_products_by_tags(exc):
                    raise
                self._plain_product_list = True  # read again without it
                return self._read_live_state()
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
            raise self._explain(exc, f"reading API Management service {self.service}") from None

    def _products_with_tags(self) -> list:
        """What productsByTags answers, built from the product list and each product's tags (slower: one
        request per product), for a service that does not serve productsByTags."""
        c, rg, svc = self.client, self.rg, self.service
        rows = []
        for p in c.product.list_by_service(rg, svc, top=PAGE_SIZE):
            product = SimpleNamespace(id=p.id, name=p.display_name, description=p.description, state=p.state,
                                      subscription_required=p.subscription_required,
                                      approval_required=p.approval_required)
            tags = [SimpleNamespace(id=t.id) for t in c.tag.list_by_product(rg, svc, p.name)]
            rows.extend(SimpleNamespace(product=product, tag=t) for t in (tags or [None]))
        return rows

    def _read_live_state(self) -> LiveState:
        """Three collections listed in parallel (products with their tags, subscriptions, APIs), then per
        product its policy (APIM has no cross-product list of policy contents) and its API links: per API
        (``apis/{id}/products``) when the service has fewer APIs than apimon reads products, else per product.
        """
        c, rg, svc = self.client, self.rg, self.service
        desired_products = set(self.desired.products)
        want_keys = {sid for sid, s in self.desired.subscribers.items() if s.key_value is not None}
        sched = _Scheduler(self.pool)
        rows: list = []
        subs: list = []
        listed: dict[str, list | None] = {"products": None, "apis": None}
        policies: dict[str, tuple[str | None, str | None]] = {}  # pid -> (policy XML, its ETag)
        links: dict[str, list[str]] = {}  # pid -> API ids
        secrets: dict[str, str] = {}

        def read_policy_of(pid: str) -> tuple[str, str | None, str | None]:
            try:
                policy, etag = c.product_policy.get(rg, svc, pid, "policy", format="rawxml", cls=_with_etag)
                return pid, policy.value, etag
            except ResourceNotFoundError:
                return pid, None, None

        def read_links_of(pid: str) -> tuple[str, list[str]]:
            return pid, [a.name for a in c.product_api.list_by_product(rg, svc, pid, top=PAGE_SIZE)]

        def on_api_products(api: str) -> Callable[[list], None]:
            def on_items(items: list) -> None:
                for p in items:
                    if p.name in links:
                        links[p.name].append(api)
            return on_items

        def read_details() -> None:
            items, apis = listed["products"], listed["apis"]
            if items is None or apis is None:
                return
            owned = _owned_ids(items)
            targets = sorted({_last(r.product.id) for r in items if r.product is not None}
                             & (owned | desired_products))
            for pid in targets:
                links[pid] = []
                sched.submit(lambda pid=pid: read_policy_of(pid),
                             lambda r: policies.__setitem__(r[0], (r[1], r[2])))
            if len(apis) < len(targets):
                for api in apis:
                    _PagedList(sched, lambda api=api, **kw: c.api_product.list_by_apis(rg, svc, api, **kw),
                               self.concurrency, on_api_products(api)).start()
            else:
                for pid in targets:
                    sched.submit(lambda pid=pid: read_links_of(pid), lambda r: links.__setitem__(*r))

        def on_products(items: list) -> None:
            rows.extend(items)
            listed["products"] = items
            read_details()

        def on_apis(items: list) -> None:
            self._api_ids = [a.name for a in items]
            listed["apis"] = self._api_ids
            read_details()

        def read_secret(name: str) -> tuple[str, str | None]:
            return name, c.subscription.list_secrets(rg, svc, name).primary_key

        def on_subs(items: list) -> None:
            subs.extend(items)
            for s in items:
                name = s.name or ""
                if name.lower().startswith(SUB_PREFIX) and name[len(SUB_PREFIX):] in want_keys:
                    sched.submit(lambda name=name: read_secret(name), lambda r: secrets.__setitem__(*r))

        if self._plain_product_list:
            sched.submit(self._products_with_tags, on_products)
        else:
            _PagedList(sched, self._raw_list("productsByTags", _ns_product_by_tag, includeNotTaggedProducts="true"),
                       self.concurrency, on_products).start()
        _PagedList(sched, self._raw_list("subscriptions", _ns_subscription), self.concurrency, on_subs).start()
        _PagedList(sched, lambda **kw: c.api.list_by_service(rg, svc, **kw), self.concurrency, on_apis).start()
        sched.run()
        details = {pid: (*policies.get(pid, (None, None)), sorted(apis)) for pid, apis in links.items()}
        live = self._assemble(rows, subs, details, secrets)
        self._live = live
        return live

    def _assemble(self, rows: list, subs: list, details: dict, secrets: dict) -> LiveState:
        live = LiveState()
        owned = _owned_ids(rows)
        props: dict[str, Any] = {}
        for r in rows:
            if r.product is not None:
                props.setdefault(_last(r.product.id), r.product)
        for pid in sorted(props):
            p = props[pid]
            snapshot = {"display_name": p.name or "", "description": p.description or "", "state": p.state,
                        "subscription_required": p.subscription_required,
                        "approval_required": bool(p.approval_required)}
            value, policy_etag, apis = details.get(pid, (None, None, None))
            reading = read_policy(value)
            product = Product(id=pid, display_name=p.name or "", description=p.description or "",
                              apis=tuple(apis or ()), rate_limit=reading.model_rate_limit,
                              quota=reading.model_quota)
            handle = {"owned": pid in owned, "snapshot": snapshot, "policy": value, "policy_etag": policy_etag,
                      "foreign": reading.foreign, "notes": reading.notes, "apis": list(apis or ())}
            live.handles[("product", pid)] = handle
            if pid in owned:
                live.products[pid] = product
            else:
                live.unmanaged.append(Unmanaged("product", pid, f"no {OWNER_TAG} tag",
                                                product if apis is not None else None))
        self._foreign_subs = {}
        unique = {s.name or "": s for s in subs}
        for name, s in sorted(unique.items()):
            scope = _relative(s.scope)
            pid = _product_of_scope(scope)
            snapshot = {"scope": scope.lower(), "display_name": s.display_name, "state": s.state}
            if name.lower().startswith(SUB_PREFIX):
                sid = name[len(SUB_PREFIX):]
                live.subscribers[sid] = Subscriber(id=sid, product=pid or scope, enabled=s.state == "active")
                live.handles[("subscriber", sid)] = {"name": name, "snapshot": snapshot}
                if name in secrets and secrets[name]:
                    live.key_fingerprints[sid] = key_fingerprint(secrets[name])
            else:
                where = f"subscription on product {pid}" if pid else f"subscription with scope {scope or '?'}"
                live.unmanaged.append(Unmanaged("subscriber", name, f"{where}, not created by apimon",
                                                Subscriber(id=name, product=pid or scope,
                                                           enabled=s.state == "active")))
                if pid:
                    self._foreign_subs.setdefault(pid, []).append(name)
        return live

    # ---------------------------------------------------------------- plan-time checks and notes
    def check(self, desired: DesiredState, live: LiveState) -> list[str]:
        known = set(self._api_ids)
        problems = []
        for pid, product in desired.products.items():
            for api in product.apis:
                if api not in known:
                    listing = ", ".join(sorted(known)[:20]) or "none"
                    problems.append(f"products.{pid}.apis: API {api!r} does not exist in API Management service "
                                    f"{self.service} (APIs there: {listing})")
        return problems

    def annotate(self, changes: Any) -> None:
        live = self._live
        if live is None:
            return
        for c in changes.changes:
            handle = live.handles.get((c.kind, c.id), {})
            if (c.kind == "product" and c.action != "delete" and handle.get("foreign")
                    and self._writes_policy(c, handle)):
                changes.warnings.append(
                    f"product {c.id}: its live policy has elements apimon did not write "
                    f"({'; '.join(handle['foreign'])}); apply will refuse to replace it unless "
                    "--force-policy (APIMON_FORCE_POLICY=1) is given, which removes them")
            if c.kind == "product" and c.action == "delete" and self._foreign_subs.get(c.id):
                changes.warnings.append(
                    f"product {c.id} will not be deleted: it has subscriptions apimon does not own "
                    f"({', '.join(self._foreign_subs[c.id])}); apimon never deletes them")
        changing = {c.id for c in changes.changes if c.kind == "product"}
        for (kind, pid), handle in sorted(live.handles.items()):
            if kind != "product" or not handle.get("owned"):
                continue
            if handle.get("foreign") and pid not in changing:
                changes.notes.append(f"product {pid}: the live policy has elements apimon did not write "
                                     f"({'; '.join(handle['foreign'])}); left as is")
            for note in handle.get("notes", []):
                changes.notes.append(f"product {pid}: {note}")
            drift = [f"{k}={v}" for k, v in handle["snapshot"].items()
                     if k in _WANTED_PRODUCT and v is not None and v != _WANTED_PRODUCT[k]]
            if drift:
                changes.notes.append(f"product {pid} has {', '.join(drift)} on the gateway; apimon sets "
                                     "subscription_required=True, approval_required=False, state=published "
                                     "with its next change to the product")
        self._prefetch_etags(changes.changes, live)

    def _prefetch_etags(self, changes: list[Change], live: LiveState) -> None:
        """GET what the plan will update or delete: its ETag, checked against what the list showed."""
        wanted = [c for c in changes if c.action in ("update", "delete")]
        if not wanted:
            return
        sched = _Scheduler(self.pool)
        for c in wanted:
            sched.submit(lambda c=c: self._fetch_etag(c.kind, c.id, live), lambda _r: None)
        try:
            sched.run()
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
            raise self._explain(exc, "reading ETags of the resources the plan changes") from None

    def _fetch_etag(self, kind: str, rid: str, live: LiveState) -> None:
        handle = live.handles.setdefault((kind, rid), {})
        c, rg, svc = self.client, self.rg, self.service
        try:
            if kind == "product":
                model, etag = c.product.get(rg, svc, rid, cls=_with_etag)
                now = {"display_name": model.display_name or "", "description": model.description or "",
                       "state": model.state, "subscription_required": model.subscription_required,
                       "approval_required": bool(model.approval_required)}
            else:
                name = handle.get("name") or SUB_PREFIX + rid
                model, etag = c.subscription.get(rg, svc, name, cls=_with_etag)
                now = {"scope": _relative(model.scope).lower(), "display_name": model.display_name,
                       "state": model.state}
        except ResourceNotFoundError:
            handle["etag"], handle["gone"] = None, True
            return
        handle["gone"] = False
        handle["etag"] = etag
        before = handle.get("snapshot")
        # what the plan's diff was computed from must still hold (fields both reads carry)
        handle["stale"] = before is not None and any(
            before.get(k) != v for k, v in now.items() if k in before and None not in (before.get(k), v)
            and k in ("display_name", "description", "state", "scope"))

    def _etag(self, kind: str, rid: str, live: LiveState, what: str) -> str | None:
        """The plan-time ETag of a resource; None if it is gone. Raises if it changed since the plan read it."""
        handle = live.handles.setdefault((kind, rid), {})
        if "etag" not in handle:
            self._call(what, lambda: self._fetch_etag(kind, rid, live))
        if handle.get("stale"):
            raise ProviderError(f"{what}: it was changed on the gateway since the plan read it. Nothing more was "
                                "applied; run `apimon plan` to see its current state, then apply again")
        return None if handle.get("gone") else handle.get("etag")

    # ---------------------------------------------------------------- apply
    def _writes_policy(self, c: Change, handle: dict) -> bool:
        want = c.desired
        if not isinstance(want, Product):
            return False
        if c.action == "create":
            return want.rate_limit is not None or want.quota is not None
        if not (c.adopt or c.changed("rate_limit") or c.changed("quota")):
            return False
        live_policy = handle.get("policy")
        if want.rate_limit is None and want.quota is None:
            return live_policy is not None
        return not policies_equal(generate_policy(want.rate_limit, want.quota), live_policy)

    def _policy_refusal(self, c: Change, live: LiveState) -> str | None:
        handle = live.handles.get(("product", c.id), {})
        if c.kind != "product" or not handle.get("foreign") or force_policy():
            return None
        if not self._writes_policy(c, handle):
            return None
        return (f"product {c.id}: refusing to replace its policy, which has elements apimon did not write "
                f"({'; '.join(handle['foreign'])}); re-run with --force-policy (APIMON_FORCE_POLICY=1) to "
                "replace it with apimon's policy, or remove those elements on the gateway")

    def apply(self, changes: list[Change], live: LiveState, progress: Progress | None = None) -> ApplyReport:
        """Refuse the whole apply up front when a policy with foreign elements would be replaced; then apply
        in the diff's order, products one by one, runs of subscriber changes at bounded concurrency."""
        for i, c in enumerate(changes):
            msg = self._policy_refusal(c, live)
            if msg:
                refused = [m for m in (self._policy_refusal(x, live) for x in changes) if m]
                outcome = ChangeOutcome(c, False, " | ".join(refused) + "; nothing was applied")
                if progress:
                    progress(outcome)
                return ApplyReport(outcomes=[outcome], not_applied=changes[:i] + changes[i + 1:])
        report = ApplyReport()
        i = 0
        while i < len(changes):
            j = i + 1
            if changes[i].kind == "subscriber":  # a run of independent subscriber changes of one phase
                phase = changes[i].action == "delete"
                while j < len(changes) and changes[j].kind == "subscriber" and (changes[j].action == "delete") == phase:
                    j += 1
            if not self._apply_batch(changes[i:j], live, report, progress):
                report.not_applied.extend(changes[j:])
                break
            i = j
        return report

    def _apply_batch(self, batch: list[Change], live: LiveState, report: ApplyReport,
                     progress: Progress | None) -> bool:
        """Apply changes that do not depend on each other, up to ``concurrency`` at a time; after a failure
        nothing new starts (changes in flight finish and are reported). False if one failed."""
        pending: dict[Future, Change] = {}
        queue = list(batch)
        ok = True

        def attempt(change: Change) -> ChangeOutcome:
            try:
                return ChangeOutcome(change, True, self.apply_change(change, live))
            except ProviderError as exc:
                return ChangeOutcome(change, False, str(exc))

        while queue or pending:
            while ok and queue and len(pending) < self.concurrency:
                change = queue.pop(0)
                pending[self.pool.submit(attempt, change)] = change
            if not pending:
                break
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                pending.pop(fut)
                outcome = fut.result()
                report.outcomes.append(outcome)
                if progress:
                    progress(outcome)
                ok = ok and outcome.ok
            if not ok and not pending:
                break
        report.not_applied.extend(queue)
        return ok

    def apply_change(self, change: Change, live: LiveState) -> str:
        what = change.label
        try:
            if change.kind == "product":
                if change.action == "create":
                    return self._create_product(change)
                if change.action == "update":
                    return self._update_product(change, live)
                return self._delete_product(change, live)
            if change.action == "create":
                return self._create_subscriber(change)
            if change.action == "update":
                return self._update_subscriber(change, live)
            return self._delete_subscriber(change, live)
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
            raise self._explain(exc, what) from None

    # ---- products
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
        if want.rate_limit is None and want.quota is None:
            if existed:
                c.product_policy.delete(rg, svc, pid, "policy", if_match=etag or "*")
            return
        xml = generate_policy(want.rate_limit, want.quota)
        kwargs = {"if_match": etag} if existed and etag else {}
        c.product_policy.create_or_update(rg, svc, pid, "policy", PolicyContract(value=xml, format="rawxml"),
                                          **kwargs)

    def _create_product(self, change: Change) -> str:
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
            display_name=want.display_name, description=want.description or None, **_WANTED_PRODUCT))
        self._ensure_tag()
        c.tag.assign_to_product(rg, svc, want.id, OWNER_TAG)
        self._write_policy(want.id, want, None, existed=False)
        for api in want.apis:
            c.product_api.create_or_update(rg, svc, want.id, api)
        return f"created ({_limits_text(want)}; {len(want.apis)} API(s) linked)"

    def _update_product(self, change: Change, live: LiveState) -> str:
        from azure.mgmt.apimanagement.models import ProductUpdateParameters

        want = change.desired
        assert isinstance(want, Product)
        c, rg, svc = self.client, self.rg, self.service
        handle = live.handles.setdefault(("product", want.id), {})
        refusal = self._policy_refusal(change, live)
        if refusal:
            raise ProviderError(refusal)
        etag = self._etag("product", want.id, live, change.label)
        if etag is None:
            raise ProviderError(f"product {want.id} no longer exists on the gateway; run `apimon plan` again")
        snapshot = handle.get("snapshot", {})
        drift = any(snapshot.get(k) is not None and snapshot.get(k) != v for k, v in _WANTED_PRODUCT.items())
        done = []
        if change.adopt or drift or change.changed("display_name") or change.changed("description"):
            c.product.update(rg, svc, want.id, if_match=etag, parameters=ProductUpdateParameters(
                display_name=want.display_name, description=want.description, **_WANTED_PRODUCT))
            done.append("properties")
        if change.adopt:
            self._ensure_tag()
            c.tag.assign_to_product(rg, svc, want.id, OWNER_TAG)
            done.append(f"tagged {OWNER_TAG}")
        if self._writes_policy(change, handle):
            self._write_policy(want.id, want, handle.get("policy_etag"), existed=handle.get("policy") is not None)
            removed = f", removed {'; '.join(handle['foreign'])}" if handle.get("foreign") else ""
            done.append(f"policy ({_limits_text(want)}{removed})")
        if change.changed("apis") or change.adopt:
            have = set(handle.get("apis") or ())
            for api in sorted(set(want.apis) - have):
                c.product_api.create_or_update(rg, svc, want.id, api)
            for api in sorted(have - set(want.apis)):
                c.product_api.delete(rg, svc, want.id, api)
            if set(want.apis) != have:
                done.append("API links")
        verb = "adopted" if change.adopt else "updated"
        return f"{verb} ({', '.join(done)})" if done else verb

    def _delete_product(self, change: Change, live: LiveState) -> str:
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

    # ---- subscribers
    def _create_subscriber(self, change: Change) -> str:
        from azure.mgmt.apimanagement.models import SubscriptionCreateParameters

        sub = change.desired
        assert isinstance(sub, Subscriber)
        self.client.subscription.create_or_update(self.rg, self.service, SUB_PREFIX + sub.id,
                                                  SubscriptionCreateParameters(
                                                      scope=f"/products/{sub.product}", display_name=sub.id,
                                                      state="active" if sub.enabled else "suspended",
                                                      primary_key=sub.key_value))
        return "created (key imported)" if sub.key_value else "created (key generated by Azure)"

    def _update_subscriber(self, change: Change, live: LiveState) -> str:
        from azure.mgmt.apimanagement.models import SubscriptionUpdateParameters

        sub = change.desired
        assert isinstance(sub, Subscriber)
        if change.adopt:
            raise ProviderError(f"subscription {change.id} cannot be adopted: Azure subscription names cannot "
                                f"change and apimon owns only subscriptions named {SUB_PREFIX}<subscriber id>. "
                                f"Delete it (or leave it) and let apimon create {SUB_PREFIX}{change.id}; "
                                "key.from_env keeps its key value")
        name = live.handles.get(("subscriber", sub.id), {}).get("name") or SUB_PREFIX + sub.id
        etag = self._etag("subscriber", sub.id, live, change.label)
        if etag is None:
            raise ProviderError(f"subscription {name} no longer exists on the gateway; run `apimon plan` again")
        moving = change.changed("product")
        params = SubscriptionUpdateParameters(display_name=sub.id, state="active" if sub.enabled else "suspended")
        if moving:
            params.scope = f"/products/{sub.product}"
        if change.changed("key") and sub.key_value is not None:
            params.primary_key = sub.key_value
        try:
            self.client.subscription.update(self.rg, self.service, name, if_match=etag, parameters=params)
        except HttpResponseError as exc:
            if moving and exc.status_code == 400:
                return self._recreate_subscription(sub, name, etag, exc)
            raise
        parts = []
        if moving:
            parts.append(f"moved to product {sub.product}, keys kept")
        if change.changed("enabled"):
            parts.append("enabled" if sub.enabled else "suspended")
        if change.changed("key"):
            parts.append("key replaced")
        return f"updated ({', '.join(parts)})" if parts else "updated"

    def _recreate_subscription(self, sub: Subscriber, name: str, etag: str, cause: HttpResponseError) -> str:
        """Azure refused to change the scope: recreate it on the new product with the same keys."""
        from azure.mgmt.apimanagement.models import SubscriptionCreateParameters

        c, rg, svc = self.client, self.rg, self.service
        keys = c.subscription.list_secrets(rg, svc, name)
        primary = sub.key_value or keys.primary_key
        c.subscription.delete(rg, svc, name, if_match=etag)
        c.subscription.create_or_update(rg, svc, name, SubscriptionCreateParameters(
            scope=f"/products/{sub.product}", display_name=sub.id,
            state="active" if sub.enabled else "suspended", primary_key=primary,
            secondary_key=keys.secondary_key))
        return (f"moved to product {sub.product} by recreating subscription {name} with the same primary and "
                f"secondary keys (Azure refused to change its scope: {_short(cause)})")

    def _delete_subscriber(self, change: Change, live: LiveState) -> str:
        name = live.handles.get(("subscriber", change.id), {}).get("name") or SUB_PREFIX + change.id
        etag = self._etag("subscriber", change.id, live, change.label)
        if etag is None:
            return "already gone"
        self.client.subscription.delete(self.rg, self.service, name, if_match=etag)
        return "deleted (key revoked)"

    # ---------------------------------------------------------------- keys, usage, import
    def reveal_key(self, subscriber_id: str) -> str | None:
        try:
            return self.client.subscription.list_secrets(self.rg, self.service, SUB_PREFIX + subscriber_id).primary_key
        except ResourceNotFoundError:
            return None
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
            raise self._explain(exc, f"reading the key of subscriber {subscriber_id}") from None

    def pull_usage(self, start: date, end: date) -> Iterable[UsageRow]:
        """Daily call counts of apimon's subscriptions: one bySubscription report per UTC day."""
        if end < start:
            return []
        sched = _Scheduler(self.pool)
        out: list[UsageRow] = []

        def collect(day: date) -> Callable[[list], None]:
            def on_rows(records: list) -> None:
                seen: set[tuple[str, str]] = set()
                for r in records:
                    name = _last(r.subscription_id)
                    if not name.lower().startswith(SUB_PREFIX):
                        continue
                    pid = _last(r.product_id)
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
            _PagedList(sched, self._raw_list("reports/bySubscription", _ns_report, **{"$filter": window}),
                       self.concurrency, collect(day)).start()
            day += timedelta(days=1)
        try:
            sched.run()
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as exc:
            raise self._explain(exc, "reading usage reports") from None
        return sorted(out, key=lambda u: (u.day, u.subscriber, u.product, u.metric))

    def export_plan(self, *, include_unmanaged: bool = True) -> dict:
        """Owned products and subscriptions, plus products apimon does not manage yet (adoptable).
        Foreign subscriptions are never exported: apimon owns only `apimon-` subscriptions, so they
        cannot be adopted (see the module docstring)."""
        live = self.read_live_state()
        products = list(live.products.values())
        if include_unmanaged:
            products += [u.resource for u in live.unmanaged if u.kind == "product" and u.resource is not None]
        azure: dict[str, Any] = {"subscription_id": self.subscription_id, "resource_group": self.rg,
                                 "service": self.service}
        if self.cloud != "public":
            azure["cloud"] = self.cloud
        if self.settings.get("endpoint"):
            azure["endpoint"] = self.settings["endpoint"]
        return {"target": {"provider": "azure", "azure": azure},
                "products": products, "subscribers": list(live.subscribers.values())}


def _owned_ids(rows: list) -> set[str]:
    return {_last(r.product.id) for r in rows
            if r.product is not None and r.tag is not None and _last(r.tag.id).lower() == OWNER_TAG}


def _short(exc: Exception) -> str:
    err = getattr(exc, "error", None)
    msg = getattr(err, "message", None) or getattr(exc, "message", None) or str(exc)
    return str(msg).splitlines()[0][:300]


__all__ = ["AzureProvider", "OWNER_TAG", "SUB_PREFIX", "force_policy"]
