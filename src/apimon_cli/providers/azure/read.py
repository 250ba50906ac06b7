"""Reading an API Management service into the neutral model and typed handles (a pure read).

Three collections are listed in parallel (products with their tags, subscriptions, APIs), then per product
its policy (APIM has no cross-product list of policy contents) and its API links: per API
(``apis/{id}/products``) when the service has fewer APIs than apimon reads products, else per product.
List responses carry no ETags: ``fetch_etag`` GETs one resource for its ETag, for what a plan changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import ResourceNotFoundError

from ...model import LiveState, Product, Subscriber, Unmanaged
from ...reconcile.fields import key_fingerprint
from . import paging
from .client import raw_list
from .paging import PagedList, Scheduler
from .policy import read_policy

OWNER_TAG = "apimon-managed"
SUB_PREFIX = "apimon-"
_PRODUCT_SCOPE = re.compile(r"/products/([^/]+)$", re.IGNORECASE)
_SERVICE_PREFIX = re.compile(r"^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.apimanagement"
                             r"/service/[^/]+", re.IGNORECASE)
#: how apimon's products are configured; other values are put back with the next change to the product
WANTED_PRODUCT = {"subscription_required": True, "approval_required": False, "state": "published"}


@dataclass
class Tagged:
    """The ETag part of a handle: read at plan time for what the plan changes (``fetch_etag``)."""

    etag: str | None = None
    etag_read: bool = False
    gone: bool = False  # the GET found it deleted
    stale: bool = False  # the GET found it changed since the list the plan was computed from


@dataclass
class ProductHandle(Tagged):
    owned: bool = False
    snapshot: dict = field(default_factory=dict)  # the product's properties as listed
    policy: str | None = None  # the policy XML as read
    policy_etag: str | None = None
    foreign: list[str] = field(default_factory=list)  # policy elements apimon did not write
    notes: list[str] = field(default_factory=list)  # remarks on the policy's limits
    apis: list[str] = field(default_factory=list)


@dataclass
class SubscriptionHandle(Tagged):
    name: str = ""
    snapshot: dict = field(default_factory=dict)


@dataclass
class AzureFacts:
    api_ids: list[str] = field(default_factory=list)
    foreign_subs: dict[str, list[str]] = field(default_factory=dict)  # product -> subscriptions not apimon's


def relative(arm_id: str | None) -> str:
    """'/subscriptions/.../service/x/products/gold' -> '/products/gold'."""
    return _SERVICE_PREFIX.sub("", arm_id or "")


def last(path: str | None) -> str:
    return (path or "").rstrip("/").rsplit("/", 1)[-1]


def _product_of_scope(scope: str | None) -> str | None:
    m = _PRODUCT_SCOPE.search(scope or "")
    return m.group(1) if m else None


def with_etag(_response: Any, model: Any, headers: dict) -> tuple[Any, str | None]:
    return model, headers.get("ETag")


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


def is_missing_products_by_tags(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    request = getattr(response, "request", None)
    return (getattr(exc, "status_code", None) in (404, 501)
            and "/productsByTags" in str(getattr(request, "url", "")))


def owned_ids(rows: list) -> set[str]:
    return {last(r.product.id) for r in rows
            if r.product is not None and r.tag is not None and last(r.tag.id).lower() == OWNER_TAG}


class AzureReading:
    """The reading half of the Azure provider (``self.client``, ``self.pool``, ``self.rg``, ...)."""

    client: Any
    pool: Any
    rg: str
    service: str
    subscription_id: str
    concurrency: int
    desired: Any
    _plain_product_list: bool
    #: read the policy and API links of every product, not only of owned ones and the plan's (import)
    details_of_all_products: bool = False

    def _service_path(self, collection: str) -> str:
        return (f"/subscriptions/{quote(self.subscription_id)}/resourceGroups/{quote(self.rg)}/providers/"
                f"Microsoft.ApiManagement/service/{quote(self.service)}/{collection}")

    def raw_list(self, collection: str, convert: Callable[[dict], Any], **params: Any) -> Callable[..., Any]:
        return raw_list(self.client, self._service_path(collection), convert, **params)

    def _products_with_tags(self) -> list:
        """What productsByTags answers, built from the product list and each product's tags (slower: one
        request per product), for a service that does not serve productsByTags."""
        c, rg, svc = self.client, self.rg, self.service
        rows = []
        for p in c.product.list_by_service(rg, svc, top=paging.PAGE_SIZE):
            product = SimpleNamespace(id=p.id, name=p.display_name, description=p.description, state=p.state,
                                      subscription_required=p.subscription_required,
                                      approval_required=p.approval_required)
            tags = [SimpleNamespace(id=t.id) for t in c.tag.list_by_product(rg, svc, p.name)]
            rows.extend(SimpleNamespace(product=product, tag=t) for t in (tags or [None]))
        return rows

    def _read(self) -> LiveState:
        c, rg, svc = self.client, self.rg, self.service
        desired_products = set(self.desired.products)
        want_keys = {sid for sid, s in self.desired.subscribers.items() if s.key_value is not None}
        sched = Scheduler(self.pool)
        rows: list = []
        subs: list = []
        listed: dict[str, list | None] = {"products": None, "apis": None}
        policies: dict[str, tuple[str | None, str | None]] = {}  # pid -> (policy XML, its ETag)
        links: dict[str, list[str]] = {}  # pid -> API ids
        secrets: dict[str, str] = {}
        facts = AzureFacts()

        def read_policy_of(pid: str) -> tuple[str, str | None, str | None]:
            try:
                policy, etag = c.product_policy.get(rg, svc, pid, "policy", format="rawxml", cls=with_etag)
                return pid, policy.value, etag
            except ResourceNotFoundError:
                return pid, None, None

        def read_links_of(pid: str) -> tuple[str, list[str]]:
            return pid, [a.name for a in c.product_api.list_by_product(rg, svc, pid, top=paging.PAGE_SIZE)]

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
            every = {last(r.product.id) for r in items if r.product is not None}
            targets = sorted(every if self.details_of_all_products else every & (owned_ids(items) | desired_products))
            for pid in targets:
                links[pid] = []
                sched.submit(lambda pid=pid: read_policy_of(pid), lambda r: policies.__setitem__(r[0], (r[1], r[2])))
            if len(apis) < len(targets):
                for api in apis:
                    PagedList(sched, lambda api=api, **kw: c.api_product.list_by_apis(rg, svc, api, **kw),
                              self.concurrency, on_api_products(api)).start()
            else:
                for pid in targets:
                    sched.submit(lambda pid=pid: read_links_of(pid), lambda r: links.__setitem__(*r))

        def on_products(items: list) -> None:
            rows.extend(items)
            listed["products"] = items
            read_details()

        def on_apis(items: list) -> None:
            facts.api_ids = [a.name for a in items]
            listed["apis"] = facts.api_ids
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
            PagedList(sched, self.raw_list("productsByTags", _ns_product_by_tag, includeNotTaggedProducts="true"),
                      self.concurrency, on_products).start()
        PagedList(sched, self.raw_list("subscriptions", _ns_subscription), self.concurrency, on_subs).start()
        PagedList(sched, lambda **kw: c.api.list_by_service(rg, svc, **kw), self.concurrency, on_apis).start()
        sched.run()
        details = {pid: (*policies.get(pid, (None, None)), sorted(apis)) for pid, apis in links.items()}
        return _assemble(rows, subs, details, secrets, facts)

    def fetch_etag(self, kind: str, rid: str, live: LiveState) -> None:
        """GET one resource for its ETag, and mark it stale if it no longer holds what the list showed."""
        c, rg, svc = self.client, self.rg, self.service
        handle = live.handles.get((kind, rid))
        if handle is None:
            handle = live.handles[(kind, rid)] = ProductHandle() if kind == "product" else SubscriptionHandle()
        try:
            if kind == "product":
                model, etag = c.product.get(rg, svc, rid, cls=with_etag)
                now = {"display_name": model.display_name or "", "description": model.description or "",
                       "state": model.state, "subscription_required": model.subscription_required,
                       "approval_required": bool(model.approval_required)}
            else:
                name = handle.name or SUB_PREFIX + rid
                model, etag = c.subscription.get(rg, svc, name, cls=with_etag)
                now = {"scope": relative(model.scope).lower(), "display_name": model.display_name,
                       "state": model.state}
        except ResourceNotFoundError:
            handle.etag, handle.gone, handle.etag_read = None, True, True
            return
        handle.gone, handle.etag, handle.etag_read = False, etag, True
        before = handle.snapshot
        # what the plan's diff was computed from must still hold (fields both reads carry)
        handle.stale = bool(before) and any(
            before.get(k) != v for k, v in now.items() if k in before and None not in (before.get(k), v)
            and k in ("display_name", "description", "state", "scope"))


def _assemble(rows: list, subs: list, details: dict, secrets: dict, facts: AzureFacts) -> LiveState:
    live = LiveState(facts=facts)
    owned = owned_ids(rows)
    props: dict[str, Any] = {}
    for r in rows:
        if r.product is not None:
            props.setdefault(last(r.product.id), r.product)
    for pid in sorted(props):
        p = props[pid]
        snapshot = {"display_name": p.name or "", "description": p.description or "", "state": p.state,
                    "subscription_required": p.subscription_required,
                    "approval_required": bool(p.approval_required)}
        value, policy_etag, apis = details.get(pid, (None, None, None))
        reading = read_policy(value)
        product = Product(id=pid, display_name=p.name or "", description=p.description or "",
                          apis=tuple(apis or ()), rate_limit=reading.model_rate_limit, quota=reading.model_quota,
                          **reading.model_auth())
        live.handles[("product", pid)] = ProductHandle(
            owned=pid in owned, snapshot=snapshot, policy=value, policy_etag=policy_etag, foreign=reading.foreign,
            notes=reading.notes, apis=list(apis or ()))
        if pid in owned:
            live.products[pid] = product
        else:
            live.unmanaged.append(Unmanaged("product", pid, f"no {OWNER_TAG} tag",
                                            product if apis is not None else None))
    unique = {s.name or "": s for s in subs}
    for name, s in sorted(unique.items()):
        scope = relative(s.scope)
        pid = _product_of_scope(scope)
        snapshot = {"scope": scope.lower(), "display_name": s.display_name, "state": s.state}
        if name.lower().startswith(SUB_PREFIX):
            sid = name[len(SUB_PREFIX):]
            live.subscribers[sid] = Subscriber(id=sid, product=pid or scope, enabled=s.state == "active")
            live.handles[("subscriber", sid)] = SubscriptionHandle(name=name, snapshot=snapshot)
            if name in secrets and secrets[name]:
                live.key_fingerprints[sid] = key_fingerprint(secrets[name])
        else:
            where = f"subscription on product {pid}" if pid else f"subscription with scope {scope or '?'}"
            live.unmanaged.append(Unmanaged("subscriber", name, f"{where}, not created by apimon",
                                            Subscriber(id=name, product=pid or scope, enabled=s.state == "active")))
            if pid:
                facts.foreign_subs.setdefault(pid, []).append(name)
    return live
