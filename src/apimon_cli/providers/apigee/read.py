"""Reading an Apigee organization: API products with their open rate plan, developers' apps with their key,
into the neutral model and typed handles (a pure read), plus the organization's facts the plan hooks use.

Plan reads are list pages only: the organization, ``apiproducts?expand=true`` (inclusive ``startKey``),
``apiproducts/-/rateplans?expand=true`` (``nextStartKey``), ``apps?expand=true&includeCred=true``
(``pageToken``) at the organization level, and the API proxies when the plan names any. Where the
organization-level app list is not available (404 or 501) or looks truncated, apps are listed per developer
(developers paged by inclusive ``startKey``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...model import ClientSecret, LiveState, Pricing, Product, Quota, RateLimit, Subscriber, Unmanaged
from ...reconcile.fields import key_fingerprint
from ..transport import paginate
from .client import ApigeeError, seg
from .rateplans import plan_owned, pricing_from_rate_plan, window

log = logging.getLogger("apimon.apigee")

MANAGED = "apimon-managed"
RATE_ATTR = "apimon-rate"
BURST_ATTR = "apimon-burst"
META_PREFIX = "apimon-meta-"
#: the credential schemes of products.<id>.auth that Apigee can express, comma-separated (an attribute like
#: apimon-rate: an app's credential is always both an API key and OAuth client credentials; which one a call
#: presents is the proxy's VerifyAPIKey / OAuthV2 policy)
AUTH_ATTR = "apimon-auth"
#: the schemes an Apigee API product can express (jwt and mtls cannot: validation warns)
EXPRESSIBLE = ("api_key", "oauth2")
NAME_KEYS = ("first_name", "last_name", "user_name")


@dataclass
class ProductHandle:
    raw: dict  # the API product as listed (the base of the read-modify-write PUT)


@dataclass
class AppHandle:
    email: str  # the developer the app belongs to (lower-case, as Apigee keeps it)
    app: str


@dataclass
class ApigeeFacts:
    """What the read learnt beyond resources, for the pure plan hooks."""

    organization: dict = field(default_factory=dict)
    monetized: bool = False
    open_plans: dict[str, list[dict]] = field(default_factory=dict)  # product -> open published apimon plans
    foreign_plans: dict[str, list[str]] = field(default_factory=dict)  # product -> open plans not apimon's
    proxies: set[str] | None = None  # API proxy names, when the plan names APIs


class _Unusable(Exception):
    """The organization-level app list cannot be trusted: list apps per developer instead."""


def attrs_of(entity: dict) -> dict[str, str]:
    return {a.get("name", ""): a.get("value", "") for a in entity.get("attributes", [])}


def managed(entity: dict) -> bool:
    return attrs_of(entity).get(MANAGED) == "true"


def quota_from_api(raw: dict) -> Quota | None:
    if not raw.get("quota"):
        return None
    try:
        limit = int(raw["quota"])
        interval = int(raw.get("quotaInterval") or 1)
    except ValueError:
        return None
    unit = raw.get("quotaTimeUnit") or ""
    if limit <= 0:
        return None
    if interval == 1 and unit in ("day", "month"):
        return Quota(limit, unit)  # type: ignore[arg-type]
    if interval == 7 and unit == "day":
        return Quota(limit, "week")
    return None  # a window apimon does not write (hours, 2 days...): shows as a change


def quota_to_api(quota: Quota) -> dict:
    if quota.period == "week":  # Apigee time units: minute, hour, day, month
        return {"quota": str(quota.limit), "quotaInterval": "7", "quotaTimeUnit": "day"}
    return {"quota": str(quota.limit), "quotaInterval": "1", "quotaTimeUnit": quota.period}


def rate_limit_from_attrs(attrs: dict[str, str]) -> RateLimit | None:
    try:
        rate = int(attrs[RATE_ATTR])
        burst = int(attrs.get(BURST_ATTR) or rate)
    except (KeyError, ValueError):
        return None
    return RateLimit(rate, burst) if rate > 0 else None


def auth_from_attrs(attrs: dict[str, str]) -> tuple[str, ...]:
    listed = [s.strip() for s in (attrs.get(AUTH_ATTR) or "").split(",")]
    return tuple(s for s in EXPRESSIBLE if s in listed) or ("api_key",)


def as_held(p: Product) -> Product:
    """A product's credentials as an Apigee API product holds them, for comparison: the expressible schemes
    (API keys when none), scopes only with oauth2, no token settings (validation warns about the rest)."""
    from dataclasses import replace

    from ...model import DEFAULT_TOKEN_TTL

    auth = tuple(s for s in EXPRESSIBLE if s in p.auth) or ("api_key",)
    return replace(p, auth=auth, scopes=tuple(sorted(set(p.scopes))) if "oauth2" in auth else (), jwt=None,
                   token_ttl=DEFAULT_TOKEN_TTL)


def developer_names(sub: Subscriber) -> dict[str, str]:
    md = sub.metadata_dict
    return {"firstName": md.get("first_name") or sub.id, "lastName": md.get("last_name") or sub.id,
            "userName": md.get("user_name") or sub.id}


def key_ok(cred: dict, now_ms: int) -> bool:
    expires = int(cred.get("expiresAt") or -1)
    return expires in (-1, 0) or expires > now_ms


@dataclass
class App:
    email: str
    raw: dict

    @property
    def name(self) -> str:
        return self.raw.get("name", "")


#: a credential rotating out (apimon keys rotate) carries the end of its overlap in this attribute; Apigee cannot
#: change an issued credential's expiresAt, so `keys finish` revokes and deletes it after that
EXPIRES_ATTR = "apimon_expires"
#: a credential made by a rotation carries when
ROTATED_ATTR = "apimon_rotated_at"


def attribute(cred: dict, name: str) -> str | None:
    return next((a.get("value") for a in cred.get("attributes") or [] if a.get("name") == name), None)


def primary_credential(app: dict, want_product: str | None, now_ms: int) -> dict | None:
    """The credential that is the subscriber's key: a live one holding the product, else any live one (keys
    rotating out only when there is nothing else)."""
    every = [c for c in app.get("credentials", []) if attribute(c, EXPIRES_ATTR) is None] or \
        list(app.get("credentials", []))
    creds = [c for c in every if key_ok(c, now_ms)] or every
    if not creds:
        return None

    def products(c: dict) -> list[str]:
        return [r.get("apiproduct", "") for r in c.get("apiProducts", [])]

    for c in creds:
        if want_product and want_product in products(c):
            return c
    for c in creds:
        if products(c):
            return c
    return creds[0]


class ApigeeReading:
    """The reading half of the Apigee provider (``self.api``: ``ApigeeClient``)."""

    api: Any
    desired: Any
    org: str
    environments: list[str]
    page_size: int
    apps_listed_per_developer: bool
    now_ms: Callable[[], int]  # the clock (tests move it)
    _org_info: dict | None

    def _organization(self) -> dict:
        if self._org_info is None:
            self._org_info = self.api.get("")
        return self._org_info

    @property
    def monetization(self) -> bool:
        cfg = self._organization().get("addonsConfig", {}).get("monetizationConfig", {})
        return bool(cfg.get("enabled"))

    def _list_products(self) -> list[dict]:
        return self.api.list_inclusive("/apiproducts", "apiProduct", "name", self.page_size, expand="true")

    def _list_rate_plans(self) -> dict[str, list[dict]]:
        plans: dict[str, list[dict]] = {}
        for plan in self.api.list_next_key("/apiproducts/-/rateplans", "ratePlans", self.page_size,
                                           expand="true"):
            plans.setdefault(plan.get("apiproduct", ""), []).append(plan)
        return plans

    def list_apps(self) -> list[App]:
        """Every developer app of the organization with its credentials."""
        try:
            return self._list_apps_org()
        except _Unusable as why:
            log.debug("listing apps per developer: %s", why)
            self.apps_listed_per_developer = True
            return self._list_apps_per_developer()

    def _list_apps_org(self) -> list[App]:
        """The organization-level list (apps.list, expand + includeCred).

        ``status`` and ``keyStatus`` default to ``approved``: apps and keys apimon revoked are listed by
        separate queries, merged by appId."""
        found: dict[str, App] = {}
        for filters in ({}, {"keyStatus": "revoked"}, {"status": "revoked"}):
            def fetch(token: str | None, filters: dict = filters) -> tuple[list[dict], str | None]:
                params = {"expand": "true", "includeCred": "true", "pageSize": str(self.page_size), **filters}
                try:
                    body = self.api.get("/apps", **params, **({"pageToken": token} if token else {}))
                except ApigeeError as exc:
                    if exc.status in (404, 501) and not found:
                        raise _Unusable(f"organization-level app list unavailable: {exc}") from None
                    raise
                items, next_token = body.get("app", []), body.get("nextPageToken")
                if token is None and not next_token and len(items) >= self.page_size:
                    raise _Unusable("organization-level app list looks truncated (a full page, no token)")
                return items, next_token

            for app in paginate(fetch):
                if app.get("appGroup") or app.get("companyName"):
                    continue  # AppGroup/company apps are not developer apps
                email = app.get("developerEmail")
                if not email:
                    raise _Unusable("organization-level app list has no developerEmail")
                found.setdefault(app.get("appId") or f"{email}/{app.get('name')}", App(email, app))
        return list(found.values())

    def _list_apps_per_developer(self) -> list[App]:
        out: list[App] = []
        for dev in self.api.list_inclusive("/developers", "developer", "email", self.page_size):
            email = dev["email"]
            for app in self.api.get(f"/developers/{seg(email)}/apps", expand="true").get("app", []):
                out.append(App(email, app))
        return out

    def read_live_state(self) -> LiveState:
        facts = ApigeeFacts(organization=self._organization(), monetized=self.monetization)
        live = LiveState(facts=facts)
        rate_plans = self._list_rate_plans() if facts.monetized else {}
        now = self.now_ms()
        for raw in self._list_products():
            pid = raw.get("name", "")
            live.handles[("product", pid)] = ProductHandle(raw)
            if not managed(raw):
                live.unmanaged.append(Unmanaged("product", pid, "no apimon-managed attribute",
                                                product_model(raw, Pricing())))
                continue
            plans = rate_plans.get(pid, [])
            own = [p for p in plans if plan_owned(p) and p.get("state") == "PUBLISHED"]
            facts.open_plans[pid] = sorted((p for p in own if window(p)[1] > now), key=lambda p: window(p)[0])
            foreign = [p["name"] for p in plans if not plan_owned(p) and p.get("state") == "PUBLISHED"
                       and window(p)[1] > now]
            if foreign:
                facts.foreign_plans[pid] = foreign
            current = facts.open_plans[pid][-1] if facts.open_plans[pid] else None
            live.products[pid] = product_model(raw, pricing_from_rate_plan(current))
        self._read_subscribers(live, now)
        if any(p.apis for p in self.desired.products.values()):
            facts.proxies = {p.get("name") for p in self.api.get("/apis").get("proxies", [])}
        return live

    def _subscriber_model(self, app: App, now: int) -> tuple[Subscriber, str | None]:
        raw = app.raw
        desired = self.desired.subscribers.get(app.name)  # which credential is the key: the one holding it
        cred = primary_credential(raw, desired.product if desired else None, now)
        refs = cred.get("apiProducts", []) if cred else []
        product = ",".join(sorted(r.get("apiproduct", "") for r in refs))  # none or several: a change
        enabled = (raw.get("status", "approved") == "approved" and cred is not None
                   and cred.get("status", "approved") == "approved"
                   and all(r.get("status", "approved") == "approved" for r in refs))
        attrs = attrs_of(raw)
        metadata = tuple(sorted((k[len(META_PREFIX):], v) for k, v in attrs.items() if k.startswith(META_PREFIX)))
        secret = (cred or {}).get("consumerSecret")
        if secret:
            self.api.sensitive.add(secret)
        sub = Subscriber(id=app.name, product=product, email=app.email, enabled=enabled, metadata=metadata,
                         client_secret=ClientSecret(value=secret) if secret else None)
        return sub, (cred or {}).get("consumerKey")

    def _read_subscribers(self, live: LiveState, now: int) -> None:
        for app in self.list_apps():
            sub, key = self._subscriber_model(app, now)
            handle = AppHandle(app.email, app.name)
            if managed(app.raw) and app.name not in live.subscribers:
                live.subscribers[app.name] = sub
                live.handles[("subscriber", app.name)] = handle
                if key:
                    live.key_fingerprints[app.name] = key_fingerprint(key)
                continue
            desired = self.desired.subscribers.get(app.name)
            same_dev = desired is not None and (desired.email or "").lower() == app.email
            if managed(app.raw):  # a second owned app of that name (an interrupted developer move)
                live.unmanaged.append(Unmanaged("subscriber", f"{app.email}/{app.name}",
                                                "second apimon app with this name; delete one by hand"))
            elif same_dev and app.name not in live.subscribers:
                live.unmanaged.append(Unmanaged("subscriber", app.name, f"app of developer {app.email}", sub))
                live.handles[("unmanaged-subscriber", app.name)] = handle
            else:
                live.unmanaged.append(Unmanaged("subscriber", f"{app.email}/{app.name}", "developer app", sub))


def product_model(raw: dict, pricing: Pricing) -> Product:
    attrs = attrs_of(raw)
    auth = auth_from_attrs(attrs)
    scopes = tuple(sorted(set(raw.get("scopes") or []))) if "oauth2" in auth else ()
    return Product(id=raw.get("name", ""), display_name=raw.get("displayName") or raw.get("name", ""),
                   description=raw.get("description", ""), apis=tuple(raw.get("proxies", [])),
                   rate_limit=rate_limit_from_attrs(attrs), quota=quota_from_api(raw), pricing=pricing,
                   auth=auth, scopes=scopes)
