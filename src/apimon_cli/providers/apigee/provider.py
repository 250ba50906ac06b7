"""Apigee X / hybrid: API products, rate plans (monetization), developers and developer apps.

Talks to ``{endpoint}/v1/organizations/{org}/...`` with google-auth's ``AuthorizedSession``: Application
Default Credentials, or the bearer token in ``APIMON_APIGEE_TOKEN`` taken as-is.

Mapping (docs: /work/shared/design/provider-mapping.md)
- product -> API product ``{name: id, displayName, description, approvalType: auto, environments (target),
  proxies (apis), quota, quotaInterval, quotaTimeUnit}``. Apigee has no weekly quota unit: a week is written
  as ``quotaInterval "7"`` days. ``rate_limit`` is recorded in the attributes ``apimon-rate`` and
  ``apimon-burst`` (not enforced: spike arrest lives in proxies). Updates are read-modify-write PUTs, so
  operation groups, scopes and foreign attributes survive.
- pricing -> one published rate plan per product (monetization add-on): fee -> fixedRecurringFee,
  setup_fee -> setupFee, per_unit -> FIXED_PER_UNIT, graduated -> BANDED, stairstep -> STAIRSTEP.
  ``free``, ``volume`` and ``package`` have no rate plan; included/minimum/maximum and graduated tiers'
  flat fees are not written (apimon's invoices still apply them).
- subscriber -> developer (email; first/last/user name from metadata ``first_name``/``last_name``/
  ``user_name``, else the subscriber id) + one developer app named after the subscriber, whose one
  credential holds the subscriber's product. Metadata lives in app attributes ``apimon-meta-<key>``.
  ``enabled: false`` revokes the key; nothing is deleted.
- ownership: the attribute ``apimon-managed=true`` on products, developers and apps; rate plans are owned
  when their product is and their description starts with ``apimon-managed``. Anything else is read,
  reported and never written.

Rate plan changes: a new plan starts at the apply instant T and every open apimon plan of the product
ends at exactly T (same instant: no gap, no overlap; exactly one published plan is active afterwards).
The new plan is created as a DRAFT first, then the old one is ended, then the draft is published; a run
interrupted between the last two steps leaves a draft starting where the old plan ended, which the next
apply publishes from that instant, closing the gap.

Plan reads are list pages only: the organization, ``apiproducts?expand=true`` (inclusive ``startKey``),
``apiproducts/-/rateplans?expand=true`` (``nextStartKey``) and ``apps?expand=true&includeCred=true``
(``pageToken``) at the organization level. Where the organization-level app list is not available (404
or 501) or looks truncated, apps are listed per developer (developers paged by inclusive ``startKey``).

Usage: ``environments/{env}/stats/api_product,developer_app`` with ``sum(message_count)`` (total) and
``sum(is_error)`` (proxy errors: policy failures such as quota or spike arrest violations, and target
failures); success = total - errors. If the server refuses ``sum(is_error)``, success is recorded equal to
total and ``usage_warnings`` says so.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from ...model import DesiredState, LiveState, Pricing, Product, Quota, RateLimit, Subscriber, Tier, Unmanaged, UsageRow
from ...reconcile.changes import Change, ChangeSet, FieldChange
from ...reconcile.fields import key_fingerprint, pricing_fields
from ..base import Provider, ProviderError

log = logging.getLogger("apimon.apigee")

DEFAULT_ENDPOINT = "https://apigee.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
TOKEN_ENV = "APIMON_APIGEE_TOKEN"
PAGE_SIZE_ENV = "APIMON_APIGEE_PAGE_SIZE"

MANAGED = "apimon-managed"
RATE_ATTR = "apimon-rate"
BURST_ATTR = "apimon-burst"
META_PREFIX = "apimon-meta-"
PLAN_MARKER = "apimon-managed"  # rate plans have no attributes: their description starts with this
MAX_ATTRIBUTES = 18  # custom attributes per entity
MAX_PAGE = 1000
MAX_STATS_DAYS = 92
STATS_ROWS = 14400
DAY_MS = 86_400_000
KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,2048}")
NAME_KEYS = ("first_name", "last_name", "user_name")

_RETRY_STATUS = {429, 500, 502, 503, 504}
_PERIOD_TO_BILLING = {"month": "MONTHLY", "week": "WEEKLY"}
_OUTPUT_ONLY = ("createdAt", "lastModifiedAt")
_NO_PLAN_MODELS = ("free", "volume", "package")


# ================================================================ HTTP


class ApigeeError(ProviderError):
    """An Apigee API error, with the HTTP status kept for callers that handle some of them."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class AlreadyExists(ApigeeError):
    """409: the resource exists (created concurrently, or by an earlier attempt of a retried create)."""


class NotFound(ApigeeError):
    """404."""


def _seg(value: str) -> str:
    """One URL path segment (emails keep their @)."""
    return quote(value, safe="@")


class ApigeeClient:
    """JSON over an AuthorizedSession, with bounded retries of 429 (honouring Retry-After) and 5xx."""

    max_retries = 5
    backoff = 0.5  # seconds; doubled per attempt
    max_wait = 60.0
    timeout = 60.0

    def __init__(self, endpoint: str, org: str, session, sleep: Callable[[float], None] = time.sleep):
        self.endpoint = endpoint.rstrip("/")
        self.org = org
        self.base = f"{self.endpoint}/v1/organizations/{_seg(org)}"
        self.session = session
        self.sleep = sleep
        self.sensitive: set[str] = set()  # key values: never in a message
        self.requests = 0

    def _redact(self, text: str) -> str:
        for s in self.sensitive:
            if s:
                text = text.replace(s, "(sensitive)").replace(quote(s, safe=""), "(sensitive)")
        return text

    def call(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
             empty: bool = False) -> dict:
        """One API call; returns the decoded JSON body ({} when empty). Raises ApigeeError."""
        import requests
        from google.auth.exceptions import GoogleAuthError, RefreshError, TransportError

        url = self.base + path
        headers: dict[str, str] = {}
        data: bytes | None = None
        if empty:  # action calls (approve/revoke) take no body; JSON content type would ask for one
            data, headers["Content-Type"] = b"", "application/octet-stream"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        attempt = 0
        while True:
            try:
                resp = self.session.request(method, url, params=params, data=data, headers=headers,
                                            timeout=self.timeout)
            except RefreshError as exc:
                raise ApigeeError(f"Apigee refused the credentials and they cannot be refreshed ({exc}); "
                                  f"set {TOKEN_ENV} to a fresh token (`gcloud auth print-access-token`) "
                                  "or renew Application Default Credentials", 401) from None
            except (requests.ConnectionError, requests.Timeout, TransportError) as exc:
                if attempt < self.max_retries:
                    self.sleep(self.backoff * 2 ** attempt)
                    attempt += 1
                    continue
                raise ApigeeError(f"cannot reach Apigee at {self.endpoint}: {type(exc).__name__}") from None
            except GoogleAuthError as exc:
                raise ApigeeError(f"Apigee credentials: {exc}") from None
            self.requests += 1
            if resp.status_code in _RETRY_STATUS and attempt < self.max_retries:
                self.sleep(self._wait(resp, attempt))
                attempt += 1
                continue
            break
        if resp.status_code >= 400:
            raise self._error(method, path, resp, attempt)
        if not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError:
            raise ApigeeError(f"Apigee {method} {self._redact(path)}: response is not JSON") from None

    def _wait(self, resp, attempt: int) -> float:
        raw = resp.headers.get("Retry-After")
        if raw:
            try:
                return min(self.max_wait, max(0.0, float(raw)))
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(raw)
                    return min(self.max_wait, max(0.0, when.timestamp() - time.time()))
                except (TypeError, ValueError):
                    pass
        return min(self.max_wait, self.backoff * 2 ** attempt)

    def _error(self, method: str, path: str, resp, retries: int) -> ApigeeError:
        status, message = resp.status_code, resp.text[:300]
        try:
            err = resp.json().get("error", {})
            message = err.get("message") or message
            status_name = err.get("status") or ""
        except (ValueError, AttributeError):
            status_name = ""
        message = self._redact(message)
        where = f"{method} {self._redact(path) or '/'}"
        code = resp.status_code
        if code == 401:
            return ApigeeError(f"Apigee refused the credentials (401 UNAUTHENTICATED): {message} Set "
                               f"{TOKEN_ENV} to a fresh token or run `gcloud auth application-default login`.",
                               code)
        if code == 403:
            return ApigeeError(f"Apigee denied {where} (403 PERMISSION_DENIED): {message} Check the "
                               f"organization name ({self.org}) and the caller's Apigee roles.", code)
        if code == 409:
            return AlreadyExists(f"{where}: already exists on Apigee (409 {status_name}): {message}", code)
        if code == 404:
            return NotFound(f"{where}: not found on Apigee (404): {message}", code)
        if code in _RETRY_STATUS:
            return ApigeeError(f"Apigee {where} still failed after {retries} retries: {status} "
                               f"{status_name}: {message}", code)
        return ApigeeError(f"Apigee {where}: {status} {status_name}: {message}", code)

    # ---- helpers
    def get(self, path: str, **params) -> dict:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None} or None)

    def post(self, path: str, body: Any = None, **params) -> dict:
        return self.call("POST", path, params=params or None, body=body if body is not None else {})

    def put(self, path: str, body: Any) -> dict:
        return self.call("PUT", path, body=body)

    def delete(self, path: str) -> dict:
        return self.call("DELETE", path)

    def action(self, path: str, action: str) -> None:
        self.call("POST", path, params={"action": action}, empty=True)

    def list_inclusive(self, path: str, item_key: str, id_key: str, page_size: int, **params) -> list[dict]:
        """Pages of a list whose ``startKey`` is inclusive and that has no next token: the next page starts
        at (and repeats) the last item of the previous one; a short page is the last."""
        out: list[dict] = []
        seen: set[str] = set()
        start = None
        while True:
            query = {**params, "count": str(page_size)}
            if start is not None:
                query["startKey"] = start
            items = self.get(path, **query).get(item_key, [])
            fresh = [i for i in items if i.get(id_key) not in seen]
            for item in fresh:
                seen.add(item.get(id_key))
                out.append(item)
            if len(items) < page_size or not fresh:
                return out
            start = items[-1][id_key]

    def list_next_key(self, path: str, item_key: str, page_size: int, **params) -> list[dict]:
        """Pages of a list that returns ``nextStartKey`` (the first item of the next page)."""
        out: list[dict] = []
        start = None
        while True:
            query = {**params, "count": str(page_size)}
            if start:
                query["startKey"] = start
            body = self.get(path, **query)
            out.extend(body.get(item_key, []))
            start = body.get("nextStartKey")
            if not start:
                return out


def _session_from_environment():
    """AuthorizedSession from APIMON_APIGEE_TOKEN (as-is) or Application Default Credentials."""
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        from google.auth.transport.requests import AuthorizedSession
        from google.oauth2.credentials import Credentials
    except ModuleNotFoundError as exc:  # pragma: no cover - a dependency of apimon
        raise ProviderError(f"provider apigee needs the Python package {exc.name!r}") from None
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return AuthorizedSession(Credentials(token=token))
    try:
        creds, _ = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError:
        raise ProviderError(f"no Google credentials: set {TOKEN_ENV} to an access token "
                            "(`gcloud auth print-access-token`) or run `gcloud auth application-default "
                            "login`") from None
    return AuthorizedSession(creds)


# ================================================================ money and rate plans


def money_to_api(amount: Decimal, currency: str) -> dict:
    """google.type.Money from an exact Decimal: {currencyCode, units (int64 string), nanos}."""
    if amount < 0 or not amount.is_finite():
        raise ValueError(f"{amount} is not a non-negative amount")
    units = int(amount)  # truncates toward zero, exactly
    nanos = (amount - units).scaleb(9)
    if nanos != nanos.to_integral_value():
        raise ValueError(f"{format(amount, 'f')} has more than 9 decimal places (Apigee money has nanos)")
    out: dict = {"currencyCode": currency, "units": str(units)}
    if int(nanos):
        out["nanos"] = int(nanos)
    return out


def money_from_api(money: dict | None) -> Decimal:
    """The exact amount of a google.type.Money (proto3: absent units/nanos are 0)."""
    if not money:
        return Decimal(0)
    try:
        value = Decimal(int(money.get("units") or 0)) + Decimal(int(money.get("nanos") or 0)).scaleb(-9)
    except (ValueError, TypeError, InvalidOperation):
        raise ApigeeError(f"Apigee returned an unreadable money value: {money!r}") from None
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def rate_plan_body(product: Product, currency: str, period: str) -> dict | None:
    """The rate plan apimon writes for a product, without times and state; None when none is written."""
    p = product.pricing
    if p.model in _NO_PLAN_MODELS:
        return None
    body: dict = {
        "displayName": product.display_name,
        "description": f"{PLAN_MARKER}: pricing of API product {product.id}, written by apimon",
        "currencyCode": currency,
        "billingPeriod": _PERIOD_TO_BILLING[period],
    }
    if p.fee is not None:
        body["fixedRecurringFee"] = money_to_api(p.fee, currency)
        body["fixedFeeFrequency"] = 1
    if p.setup_fee is not None:
        body["setupFee"] = money_to_api(p.setup_fee, currency)
    if p.model == "per_unit":
        body["consumptionPricingType"] = "FIXED_PER_UNIT"
        body["consumptionPricingRates"] = [{"fee": money_to_api(p.unit_price or Decimal(0), currency)}]
    elif p.model in ("graduated", "stairstep"):
        body["consumptionPricingType"] = "BANDED" if p.model == "graduated" else "STAIRSTEP"
        rates, start = [], 0
        for t in p.tiers:
            amount = t.unit_price if p.model == "graduated" else t.flat_fee
            rate: dict = {"fee": money_to_api(amount or Decimal(0), currency)}
            if start:
                rate["start"] = str(start)
            if t.up_to is not None:  # Apigee ranges (start, end]: apimon's up_to is inclusive too
                rate["end"] = str(t.up_to)
                start = t.up_to
            rates.append(rate)
        body["consumptionPricingRates"] = rates
    return body


def _plan_terms(plan: dict | None) -> tuple | None:
    """What a rate plan charges, comparable between what apimon would write and what Apigee holds."""
    if plan is None:
        return None
    rates = tuple((int(r.get("start") or 0), int(r.get("end") or 0), money_from_api(r.get("fee")))
                  for r in plan.get("consumptionPricingRates", []))
    return (plan.get("currencyCode", ""), plan.get("billingPeriod", ""), money_from_api(plan.get("setupFee")),
            money_from_api(plan.get("fixedRecurringFee")), int(plan.get("fixedFeeFrequency") or 0),
            plan.get("consumptionPricingType", ""), rates)


def _plan_summary(plan: dict | None) -> str:
    if plan is None:
        return "no rate plan"
    freq = int(plan.get("fixedFeeFrequency") or 0)
    return (f"{plan.get('currencyCode', '?')} {plan.get('billingPeriod', '?')}"
            + (f", fee every {freq} period(s)" if freq else ""))


def pricing_from_rate_plan(plan: dict | None) -> Pricing:
    """The neutral pricing a rate plan expresses (used for import and for drift)."""
    if plan is None:
        return Pricing()
    fee = money_from_api(plan["fixedRecurringFee"]) if plan.get("fixedRecurringFee") else None
    setup = money_from_api(plan["setupFee"]) if plan.get("setupFee") else None
    ctype = plan.get("consumptionPricingType", "")
    rates = plan.get("consumptionPricingRates", [])
    if ctype == "FIXED_PER_UNIT" and rates:
        return Pricing(model="per_unit", fee=fee, setup_fee=setup, unit_price=money_from_api(rates[0].get("fee")))
    if ctype in ("BANDED", "STAIRSTEP") and rates:
        tiers = []
        for i, r in enumerate(rates):
            end = int(r.get("end") or 0)
            up_to = None if (i == len(rates) - 1 and not end) else end
            amount = money_from_api(r.get("fee"))
            tiers.append(Tier(up_to=up_to, unit_price=amount) if ctype == "BANDED"
                         else Tier(up_to=up_to, flat_fee=amount))
        return Pricing(model="graduated" if ctype == "BANDED" else "stairstep", fee=fee, setup_fee=setup,
                       tiers=tuple(tiers))
    if fee is not None or setup is not None:
        return Pricing(model="flat", fee=fee if fee is not None else Decimal(0), setup_fee=setup)
    return Pricing()


def _window(plan: dict) -> tuple[int, float]:
    """[startTime, endTime) in ms; an unset end is open."""
    end = int(plan.get("endTime") or 0)
    return int(plan.get("startTime") or 0), (end if end else float("inf"))


def _plan_owned(plan: dict) -> bool:
    return (plan.get("description") or "").startswith(PLAN_MARKER)


def _plan_body_for_put(plan: dict) -> dict:
    return {k: v for k, v in plan.items() if k not in ("name", *_OUTPUT_ONLY)}


def _ms_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


# ================================================================ entity helpers


def _attrs(entity: dict) -> dict[str, str]:
    return {a.get("name", ""): a.get("value", "") for a in entity.get("attributes", [])}


def _managed(entity: dict) -> bool:
    return _attrs(entity).get(MANAGED) == "true"


def _quota_from_api(raw: dict) -> Quota | None:
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


def _quota_to_api(quota: Quota) -> dict:
    if quota.period == "week":  # Apigee time units: minute, hour, day, month
        return {"quota": str(quota.limit), "quotaInterval": "7", "quotaTimeUnit": "day"}
    return {"quota": str(quota.limit), "quotaInterval": "1", "quotaTimeUnit": quota.period}


def _rate_limit_from_attrs(attrs: dict[str, str]) -> RateLimit | None:
    try:
        rate = int(attrs[RATE_ATTR])
        burst = int(attrs.get(BURST_ATTR) or rate)
    except (KeyError, ValueError):
        return None
    return RateLimit(rate, burst) if rate > 0 else None


def _developer_names(sub: Subscriber) -> dict[str, str]:
    md = sub.metadata_dict
    return {"firstName": md.get("first_name") or sub.id, "lastName": md.get("last_name") or sub.id,
            "userName": md.get("user_name") or sub.id}


def _key_ok(cred: dict, now_ms: int) -> bool:
    expires = int(cred.get("expiresAt") or -1)
    return expires in (-1, 0) or expires > now_ms


@dataclass
class _App:
    email: str
    raw: dict

    @property
    def name(self) -> str:
        return self.raw.get("name", "")


def _primary_credential(app: dict, want_product: str | None, now_ms: int) -> dict | None:
    """The credential that is the subscriber's key: a live one holding the product, else any live one."""
    creds = [c for c in app.get("credentials", []) if _key_ok(c, now_ms)] or list(app.get("credentials", []))
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


# ================================================================ the provider


class ApigeeProvider(Provider):
    name = "apigee"

    def __init__(self, desired: DesiredState):
        super().__init__(desired)
        s = self.settings
        self.org: str = s.get("organization", "")
        self.environments: list[str] = list(s.get("environments") or [])
        self.endpoint: str = (s.get("endpoint") or DEFAULT_ENDPOINT).rstrip("/")
        try:
            size = int(os.environ.get(PAGE_SIZE_ENV) or MAX_PAGE)
        except ValueError:
            size = MAX_PAGE
        self.page_size = max(2, min(MAX_PAGE, size))  # inclusive startKey needs >= 2 to make progress
        self.now_ms: Callable[[], int] = lambda: int(time.time() * 1000)
        self._client: ApigeeClient | None = None
        self._org_info: dict | None = None
        self._warnings: list[str] = []
        self._extra_fields: dict[str, list[FieldChange]] = {}  # product id -> provider-only drift
        self._foreign_plans: dict[str, list[str]] = {}  # product id -> unmanaged open rate plans
        self._rate_plans: dict[str, list[dict]] = {}
        self._live_products: dict[str, Product] = {}
        self._dev_managed: dict[str, bool] = {}  # developer email -> has apimon-managed
        self.apps_listed_per_developer = False
        self.usage_warnings: list[str] = []

    # ---------------------------------------------------------------- plumbing
    @property
    def api(self) -> ApigeeClient:
        if self._client is None:
            if not self.org:
                raise ProviderError("target.apigee.organization is not set")
            self._client = ApigeeClient(self.endpoint, self.org, _session_from_environment())
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.session.close()
            self._client = None

    @property
    def target_id(self) -> str:
        suffix = "" if self.endpoint == DEFAULT_ENDPOINT else f"@{self.endpoint}"
        return f"apigee:organizations/{self.org}{suffix}"

    def _organization(self) -> dict:
        if self._org_info is None:
            self._org_info = self.api.get("")
        return self._org_info

    @property
    def monetization(self) -> bool:
        cfg = self._organization().get("addonsConfig", {}).get("monetizationConfig", {})
        return bool(cfg.get("enabled"))

    def stores(self, kind: str, field: str) -> bool:
        if kind == "product" and field == "max_concurrent":
            return False
        if kind == "product" and field.startswith("pricing."):
            if not self.monetization:
                return False
            return field not in ("pricing.included", "pricing.minimum", "pricing.maximum")
        return True

    def _desired_plan(self, product: Product) -> dict | None:
        b = self.desired.billing
        return rate_plan_body(product, b.currency, b.period)

    # ---------------------------------------------------------------- reads
    def _list_products(self) -> list[dict]:
        return self.api.list_inclusive("/apiproducts", "apiProduct", "name", self.page_size, expand="true")

    def _list_rate_plans(self) -> dict[str, list[dict]]:
        plans: dict[str, list[dict]] = {}
        for plan in self.api.list_next_key("/apiproducts/-/rateplans", "ratePlans", self.page_size,
                                           expand="true"):
            plans.setdefault(plan.get("apiproduct", ""), []).append(plan)
        return plans

    def _list_apps(self) -> list[_App]:
        """Every developer app of the organization with its credentials."""
        apps = self._list_apps_org()
        if apps is None:
            self.apps_listed_per_developer = True
            apps = self._list_apps_per_developer()
        return apps

    def _list_apps_org(self) -> list[_App] | None:
        """The organization-level list (apps.list, expand + includeCred), or None when unusable.

        ``status`` and ``keyStatus`` default to ``approved``: apps and keys apimon revoked are listed by
        separate queries, merged by appId."""
        found: dict[str, _App] = {}
        for filters in ({}, {"keyStatus": "revoked"}, {"status": "revoked"}):
            token, paged = None, False
            while True:
                params = {"expand": "true", "includeCred": "true", "pageSize": str(self.page_size), **filters}
                if token:
                    params["pageToken"] = token
                try:
                    body = self.api.get("/apps", **params)
                except ApigeeError as exc:
                    if exc.status in (404, 501) and not found:
                        log.debug("organization-level app list unavailable: %s", exc)
                        return None
                    raise
                items = body.get("app", [])
                token = body.get("nextPageToken")
                paged = paged or bool(token)
                for app in items:
                    if app.get("appGroup") or app.get("companyName"):
                        continue  # AppGroup/company apps are not developer apps
                    email = app.get("developerEmail")
                    if not email:
                        log.debug("organization-level app list has no developerEmail; listing per developer")
                        return None
                    found.setdefault(app.get("appId") or f"{email}/{app.get('name')}", _App(email, app))
                if not token:
                    if not paged and len(items) >= self.page_size:  # a full first page, no token: no paging
                        log.debug("organization-level app list looks truncated; listing per developer")
                        return None
                    break
        return list(found.values())

    def _list_apps_per_developer(self) -> list[_App]:
        out: list[_App] = []
        for dev in self.api.list_inclusive("/developers", "developer", "email", self.page_size):
            email = dev["email"]
            for app in self.api.get(f"/developers/{_seg(email)}/apps", expand="true").get("app", []):
                out.append(_App(email, app))
        return out

    def read_live_state(self) -> LiveState:
        live = LiveState()
        self._warnings, self._extra_fields, self._foreign_plans = [], {}, {}
        monetized = self.monetization
        raw_products = self._list_products()
        self._rate_plans = self._list_rate_plans() if monetized else {}
        want_envs = sorted(self.environments)
        now = self.now_ms()
        for raw in raw_products:
            pid = raw.get("name", "")
            desired = self.desired.products.get(pid)
            if not _managed(raw):
                live.unmanaged.append(Unmanaged("product", pid, "no apimon-managed attribute",
                                                self._product_model(raw, Pricing())))
                live.handles[("product", pid)] = raw
                continue
            pricing = self._live_pricing(pid, desired, monetized, now)
            live.products[pid] = self._product_model(raw, pricing)
            live.handles[("product", pid)] = raw
            if desired is not None and sorted(raw.get("environments", [])) != want_envs:
                self._extra_fields.setdefault(pid, []).append(
                    FieldChange("apigee.environments", ", ".join(sorted(raw.get("environments", []))),
                                ", ".join(want_envs)))
        self._read_subscribers(live, now)
        self._live_products = live.products
        return live

    def _live_pricing(self, pid: str, desired: Product | None, monetized: bool, now: int) -> Pricing:
        """The pricing Apigee holds for an owned product, projected onto the desired one when the rate plan
        is exactly what apimon would write (fields Apigee cannot hold then never show as a change)."""
        if not monetized:
            return desired.pricing if desired is not None else Pricing()
        plans = self._rate_plans.get(pid, [])
        own = [p for p in plans if _plan_owned(p) and p.get("state") == "PUBLISHED"]
        open_plans = sorted((p for p in own if _window(p)[1] > now), key=lambda p: _window(p)[0])
        current = open_plans[-1] if open_plans else None
        foreign = [p["name"] for p in plans if not _plan_owned(p) and p.get("state") == "PUBLISHED"
                   and _window(p)[1] > now]
        if foreign:
            self._foreign_plans[pid] = foreign
        if desired is None:
            return pricing_from_rate_plan(current)
        try:
            want = self._desired_plan(desired)
        except ValueError:  # reported by check()
            want = {"unwritable": True}
        if len(open_plans) <= 1 and _plan_terms(current) == _plan_terms(want):
            return desired.pricing
        live = pricing_from_rate_plan(current)
        if len(open_plans) > 1 or self._visible_pricing(live) == self._visible_pricing(desired.pricing):
            # same neutral pricing, different Apigee terms (currency, period, fee frequency, several open
            # plans): the diff cannot see it, so it is added as a provider field
            self._extra_fields.setdefault(pid, []).append(
                FieldChange("pricing.rate_plan", _plan_summary(current)
                            + (f" (+{len(open_plans) - 1} more open)" if len(open_plans) > 1 else ""),
                            _plan_summary(want)))
        return live

    def _visible_pricing(self, pricing: Pricing) -> dict:
        """The pricing fields the diff compares."""
        return {k: v for k, v in pricing_fields(pricing).items() if self.stores("product", k)}

    def _product_model(self, raw: dict, pricing: Pricing) -> Product:
        attrs = _attrs(raw)
        return Product(id=raw.get("name", ""), display_name=raw.get("displayName") or raw.get("name", ""),
                       description=raw.get("description", ""), apis=tuple(raw.get("proxies", [])),
                       rate_limit=_rate_limit_from_attrs(attrs), quota=_quota_from_api(raw), pricing=pricing)

    def _subscriber_model(self, app: _App, now: int) -> tuple[Subscriber, str | None]:
        raw = app.raw
        desired = self.desired.subscribers.get(app.name)
        cred = _primary_credential(raw, desired.product if desired else None, now)
        refs = cred.get("apiProducts", []) if cred else []
        names = sorted(r.get("apiproduct", "") for r in refs)
        if desired is not None and names == [desired.product]:
            product = desired.product
        else:
            product = ",".join(names)  # none or several: shows as a change, converges on apply
        enabled = (raw.get("status", "approved") == "approved" and cred is not None
                   and cred.get("status", "approved") == "approved"
                   and all(r.get("status", "approved") == "approved" for r in refs))
        email = app.email
        if desired is not None and desired.email and desired.email.lower() == email:
            email = desired.email  # Apigee keeps emails lower-case
        attrs = _attrs(raw)
        metadata = tuple(sorted((k[len(META_PREFIX):], v) for k, v in attrs.items() if k.startswith(META_PREFIX)))
        sub = Subscriber(id=app.name, product=product, email=email, enabled=enabled, metadata=metadata)
        return sub, (cred or {}).get("consumerKey")

    def _read_subscribers(self, live: LiveState, now: int) -> None:
        for app in self._list_apps():
            sub, key = self._subscriber_model(app, now)
            handle = {"email": app.email, "app": app.name}
            if _managed(app.raw) and app.name not in live.subscribers:
                live.subscribers[app.name] = sub
                live.handles[("subscriber", app.name)] = handle
                if key:
                    live.key_fingerprints[app.name] = key_fingerprint(key)
                continue
            desired = self.desired.subscribers.get(app.name)
            same_dev = desired is not None and (desired.email or "").lower() == app.email
            if _managed(app.raw):  # a second owned app of that name (an interrupted developer move)
                live.unmanaged.append(Unmanaged("subscriber", f"{app.email}/{app.name}",
                                                "second apimon app with this name; delete one by hand"))
            elif same_dev and app.name not in live.subscribers:
                live.unmanaged.append(Unmanaged("subscriber", app.name, f"app of developer {app.email}", sub))
                live.handles[("unmanaged-subscriber", app.name)] = handle
            else:
                live.unmanaged.append(Unmanaged("subscriber", f"{app.email}/{app.name}", "developer app", sub))

    # ---------------------------------------------------------------- plan-time checks and notes
    def check(self, desired: DesiredState, live: LiveState) -> list[str]:
        problems: list[str] = []
        have_envs = set(self._organization().get("environments", []))
        for env in self.environments:
            if have_envs and env not in have_envs:
                problems.append(f"target.apigee.environments: environment {env!r} does not exist in "
                                f"organization {self.org} (it has: {', '.join(sorted(have_envs))})")
        if self.monetization:
            for pid, product in desired.products.items():
                try:
                    self._desired_plan(product)
                except ValueError as exc:
                    problems.append(f"products.{pid}.pricing: apigee: {exc}")
        for sid, sub in desired.subscribers.items():
            if sub.key_value is not None and not KEY_RE.fullmatch(sub.key_value):
                problems.append(f"subscribers.{sid}.key: apigee: consumer keys may contain only letters, digits,"
                                " '_' and '-' (at most 2 KB); the imported value does not")
            if len(sub.metadata) + 1 > MAX_ATTRIBUTES:
                problems.append(f"subscribers.{sid}.metadata: apigee: an app holds at most {MAX_ATTRIBUTES} "
                                f"attributes; {len(sub.metadata)} metadata keys + apimon's marker do not fit")
        self._check_proxies(desired)
        return problems

    def _check_proxies(self, desired: DesiredState) -> None:
        wanted = {a for p in desired.products.values() for a in p.apis}
        if not wanted:
            return
        known = {p.get("name") for p in self.api.get("/apis").get("proxies", [])}
        for pid, product in sorted(desired.products.items()):
            missing = [a for a in product.apis if a not in known]
            if missing:
                self._warnings.append(f"warning: products.{pid}.apis: apigee: no API proxy named "
                                      f"{', '.join(missing)} in organization {self.org}; the product is written, "
                                      "the proxy must exist for calls to succeed")

    def annotate(self, changes: ChangeSet) -> None:
        desired = self.desired
        priced = [pid for pid, p in desired.products.items()
                  if p.pricing.model != "free" or p.pricing.fee is not None]
        if not self.monetization and priced:
            changes.warnings.append(
                f"warning: apigee: monetization is not enabled in organization {self.org}: no rate plans are read "
                f"or written and pricing is not compared ({len(priced)} priced product(s)); apimon's own "
                "invoices still use the plan's pricing")
        changes.warnings.extend(w for w in self._warnings if w not in changes.warnings)
        for pid, fields in sorted(self._extra_fields.items()):
            if pid in desired.products:
                self._add_product_fields(changes, desired.products[pid], self._live_products.get(pid), fields)
        if self.monetization:
            switching = [c.id for c in changes.changes if c.kind == "product" and c.action == "update"
                         and c.changed("pricing")]
            if switching:
                changes.notes.append(
                    f"apigee: rate plans of {', '.join(switching)} switch at apply time: the current plan ends "
                    "and the new one starts at the same instant (one active plan, no gap)")
        for pid, names in sorted(self._foreign_plans.items()):
            change = next((c for c in changes.changes if c.kind == "product" and c.id == pid), None)
            if change is not None and change.action != "delete" and change.changed("pricing"):
                changes.conflicts.append(
                    f"product {pid} has published rate plan(s) apimon does not manage ({', '.join(names)}); "
                    "Apigee allows one active plan per product: expire or delete them first")

    @staticmethod
    def _add_product_fields(changes: ChangeSet, want: Product, have: Product | None,
                            fields: list[FieldChange]) -> None:
        pid = want.id
        for i, c in enumerate(changes.changes):
            if c.kind == "product" and c.id == pid:
                if c.action == "update":
                    names = {f.field for f in c.fields}
                    extra = tuple(f for f in fields if f.field not in names)
                    changes.changes[i] = replace(c, fields=c.fields + extra)
                return
        # no change for that product yet: a provider-only update, after the other product changes
        last = max((i for i, c in enumerate(changes.changes) if c.kind == "product" and c.action != "delete"),
                   default=-1)
        changes.changes.insert(last + 1, Change("update", "product", pid, tuple(fields), want, have))

    # ---------------------------------------------------------------- apply: products
    def apply_change(self, change: Change, live: LiveState) -> str:
        if change.kind == "product":
            if change.action == "delete":
                return self._delete_product(change)
            return self._upsert_product(change)
        if change.action == "delete":
            return self._delete_subscriber(change, live)
        if change.action == "create":
            return self._create_subscriber(change)
        return self._update_subscriber(change, live)

    def _product_body(self, product: Product, base: dict | None) -> dict:
        """The whole product for a create or a PUT: apimon's fields over everything else ``base`` has."""
        body = {k: v for k, v in (base or {}).items() if k not in _OUTPUT_ONLY}
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
            body.update(_quota_to_api(product.quota))
        attrs = [a for a in body.get("attributes", []) if a.get("name") not in (MANAGED, RATE_ATTR, BURST_ATTR)]
        attrs.append({"name": MANAGED, "value": "true"})
        if product.rate_limit:
            attrs += [{"name": RATE_ATTR, "value": str(product.rate_limit.rate)},
                      {"name": BURST_ATTR, "value": str(product.rate_limit.burst)}]
        body["attributes"] = attrs
        return body

    def _upsert_product(self, change: Change) -> str:
        product = change.desired if isinstance(change.desired, Product) else self.desired.products[change.id]
        path = f"/apiproducts/{_seg(product.id)}"
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
                if not _managed(raw) and not change.adopt:
                    raise ProviderError(f"product {product.id} is not managed by apimon; left alone")
                self.api.put(path, self._product_body(product, raw))
        if self.monetization and (change.action == "create" or change.changed("pricing")):
            note = self._converge_rate_plan(product, new_product=change.action == "create")
            if note:
                msg += f"; {note}"
        return msg

    def _delete_product(self, change: Change) -> str:
        path = f"/apiproducts/{_seg(change.id)}"
        try:
            raw = self.api.get(path)
        except NotFound:
            return "already gone"
        if not _managed(raw):
            raise ProviderError(f"product {change.id} is not managed by apimon; left alone")
        self.api.delete(path)
        return "deleted (with its rate plans)"

    # ---------------------------------------------------------------- apply: rate plans
    def _converge_rate_plan(self, product: Product, *, new_product: bool = False) -> str:
        """Make the product's one open apimon rate plan the desired one, switching at a single instant."""
        want = self._desired_plan(product)
        base = f"/apiproducts/{_seg(product.id)}/rateplans"
        plans = [] if new_product else self.api.list_next_key(base, "ratePlans", self.page_size, expand="true")
        now = self.now_ms()
        own = [p for p in plans if _plan_owned(p)]
        published = [p for p in own if p.get("state") == "PUBLISHED"]
        drafts = [p for p in own if p.get("state") != "PUBLISHED"]

        def plan_path(p: dict) -> str:
            return f"{base}/{_seg(p['name'])}"

        if want is None:  # free, or a model Apigee cannot express: no plan from now on
            ended = 0
            for p in published:
                start, end = _window(p)
                if end > now:
                    if start < now:
                        self.api.put(plan_path(p), {**_plan_body_for_put(p), "endTime": str(now)})
                    else:
                        self.api.delete(plan_path(p))
                    ended += 1
            for d in drafts:
                self.api.delete(plan_path(d))
            return f"rate plan ended at {_ms_iso(now)}" if ended else ""

        foreign = [p["name"] for p in plans if not _plan_owned(p) and p.get("state") == "PUBLISHED"
                   and _window(p)[1] > now]
        if foreign:
            raise ProviderError(f"product {product.id} has published rate plan(s) apimon does not manage "
                                f"({', '.join(foreign)}); Apigee allows one active plan per product")
        open_plans = [p for p in published if _window(p)[1] > now]
        if (len(open_plans) == 1 and _window(open_plans[0])[0] <= now
                and _plan_terms(open_plans[0]) == _plan_terms(want)):
            for d in drafts:  # leftovers of an earlier attempt
                self.api.delete(plan_path(d))
            return "rate plan unchanged"
        # an interrupted switch left a draft starting where the last plan ended, nothing published after it
        start, pending = now, None
        for d in sorted(drafts, key=lambda p: -_window(p)[0]):
            ds = _window(d)[0]
            if ds and any(_window(p)[1] == ds for p in published) and not any(
                    _window(p)[1] > ds for p in published):
                start, pending = ds, d
                break
        body = {**want, "startTime": str(start)}
        to_end = [p for p in published if _window(p)[1] > start and _window(p)[0] < start]
        to_delete = [p for p in published if _window(p)[1] > start and _window(p)[0] >= start]
        if not to_end and not to_delete and not drafts:
            self.api.post(base, {**body, "state": "PUBLISHED"})
            return f"rate plan published from {_ms_iso(start)}"
        if pending is not None:
            draft = self.api.put(plan_path(pending), {**body, "state": "DRAFT"})
        else:
            draft = self.api.post(base, {**body, "state": "DRAFT"})
        for p in to_end:  # the old plan ends exactly where the new one starts
            self.api.put(plan_path(p), {**_plan_body_for_put(p), "endTime": str(start)})
        for p in to_delete:  # published but not started yet: never active
            self.api.delete(plan_path(p))
        self.api.put(f"{base}/{_seg(draft['name'])}", {**body, "state": "PUBLISHED"})
        for d in drafts:
            if d is not pending:
                self.api.delete(plan_path(d))
        return (f"rate plan switched at {_ms_iso(start)} (previous plan ended at the same instant)"
                if to_end else f"rate plan published from {_ms_iso(start)}")

    # ---------------------------------------------------------------- apply: subscribers
    def _app_path(self, email: str, app: str) -> str:
        return f"/developers/{_seg(email)}/apps/{_seg(app)}"

    def _key_path(self, email: str, app: str, key: str) -> str:
        self.api.sensitive.add(key)
        return f"{self._app_path(email, app)}/keys/{_seg(key)}"

    def _app_attributes(self, sub: Subscriber, base: list[dict]) -> list[dict]:
        keep = [a for a in base if a.get("name") != MANAGED and not a.get("name", "").startswith(META_PREFIX)]
        return keep + [{"name": MANAGED, "value": "true"}] + [
            {"name": META_PREFIX + k, "value": v} for k, v in sub.metadata]

    def _ensure_developer(self, sub: Subscriber, email: str) -> None:
        """Create the subscriber's developer, or reuse it if apimon manages it."""
        if self._dev_managed.get(email):
            return
        body = {"email": email, **_developer_names(sub), "attributes": [{"name": MANAGED, "value": "true"}]}
        try:
            self.api.post("/developers", body)
            self._dev_managed[email] = True
            return
        except AlreadyExists:
            dev = self.api.get(f"/developers/{_seg(email)}")
        self._dev_managed[email] = _managed(dev)
        if not _managed(dev):
            raise ProviderError(f"subscriber {sub.id}: developer {email} exists on Apigee and apimon does not "
                                f"manage it; left alone (add the attribute {MANAGED}=true to that developer "
                                "to let apimon add apps to it)")

    def _create_subscriber(self, change: Change) -> str:
        sub = change.desired
        email = (sub.email or "").lower()
        if not email:
            raise ProviderError(f"subscriber {sub.id}: Apigee developers need an email")
        self._ensure_developer(sub, email)
        body: dict = {"name": sub.id, "attributes": self._app_attributes(sub, [])}
        if sub.key_value is None:
            body["apiProducts"] = [sub.product]
        try:
            app = self.api.post(f"/developers/{_seg(email)}/apps", body)
        except AlreadyExists:
            raise ProviderError(f"subscriber {sub.id}: developer {email} already has an app named {sub.id} "
                                "(created since the plan was read?); run `apimon plan` again") from None
        generated = [c["consumerKey"] for c in app.get("credentials", [])]
        self.api.sensitive.update(generated)
        if sub.key_value is not None:
            key = self._import_key(sub, email, sub.key_value, secrets.token_urlsafe(32), [])
            for g in generated:  # exactly one key: the imported one
                self.api.delete(self._key_path(email, sub.id, g))
        else:
            key = generated[0]
        if not sub.enabled:
            self.api.action(self._key_path(email, sub.id, key), "revoke")
        return ("created (key imported)" if sub.key_value is not None else "created (key generated)") + (
            ", key revoked" if not sub.enabled else "")

    def _import_key(self, sub: Subscriber, email: str, key: str, secret: str, attributes: list[dict]) -> str:
        """Add an existing key to the app and attach the subscriber's product to it (keys/create attaches
        nothing)."""
        self.api.sensitive.update((key, secret))
        body: dict = {"consumerKey": key, "consumerSecret": secret}
        try:
            self.api.post(f"{self._app_path(email, sub.id)}/keys", body)
        except AlreadyExists:
            raise ProviderError(f"subscriber {sub.id}: the imported key value is already used by another app "
                                "on Apigee") from None
        attach: dict = {"apiProducts": [sub.product]}
        if attributes:
            attach["attributes"] = attributes
        self.api.post(self._key_path(email, sub.id, key), attach)
        return key

    def _fresh_app(self, sid: str, email: str) -> dict:
        try:
            return self.api.get(self._app_path(email, sid))
        except NotFound:
            raise ProviderError(f"subscriber {sid}: app {sid} of developer {email} no longer exists on Apigee; "
                                "run `apimon plan` again") from None

    def _handle(self, live: LiveState, change: Change) -> dict:
        h = live.handles.get(("subscriber", change.id)) or live.handles.get(("unmanaged-subscriber", change.id))
        if h is None:
            raise ProviderError(f"subscriber {change.id}: not found in what the plan read; run `apimon plan` again")
        return h

    def _update_subscriber(self, change: Change, live: LiveState) -> str:
        sub = change.desired
        h = self._handle(live, change)
        email = h["email"]
        app = self._fresh_app(sub.id, email)
        if not _managed(app) and not change.adopt:
            raise ProviderError(f"subscriber {sub.id} is not managed by apimon; left alone")
        if (sub.email or "").lower() != email:
            return self._move_to_developer(sub, email, app)
        done = []
        now = self.now_ms()
        cred = _primary_credential(app, sub.product, now)
        if change.adopt or change.changed("metadata"):
            self.api.post(f"{self._app_path(email, sub.id)}/attributes",
                          {"attribute": self._app_attributes(sub, app.get("attributes", []))})
            done.append("adopted" if change.adopt else "metadata updated")
            if any(change.changed(f"metadata.{k}") for k in NAME_KEYS):
                self._update_developer_names(sub, email)
        if cred is None or (change.changed("key") and sub.key_value is not None):
            old = cred
            key = sub.key_value or None
            if key is None:  # no credential at all: generate one holding the product
                generated = self.api.post(self._app_path(email, sub.id),
                                          {"name": sub.id, "apiProducts": [sub.product]})
                cred = generated.get("credentials", [{}])[-1]
            else:
                self._import_key(sub, email, key, secrets.token_urlsafe(32), (old or {}).get("attributes", []))
                cred = {"consumerKey": key, "status": "approved",
                        "apiProducts": [{"apiproduct": sub.product, "status": "approved"}]}
                if old is not None:
                    self.api.delete(self._key_path(email, sub.id, old["consumerKey"]))
                done.append("key replaced")
        key = cred["consumerKey"]
        self.api.sensitive.add(key)
        products = [r.get("apiproduct", "") for r in cred.get("apiProducts", [])]
        if products != [sub.product]:
            if sub.product not in products:  # add the new product first: the key never holds nothing
                body: dict = {"apiProducts": [sub.product]}
                if cred.get("attributes"):  # this call replaces the key's attributes: send them back
                    body["attributes"] = cred["attributes"]
                self.api.post(self._key_path(email, sub.id, key), body)
            for old_product in products:
                if old_product != sub.product:
                    self.api.delete(f"{self._key_path(email, sub.id, key)}/apiproducts/{_seg(old_product)}")
            done.append(f"moved to product {sub.product}")
            cred = {**cred, "apiProducts": [{"apiproduct": sub.product, "status": "approved"}]}
        done += self._set_enabled(sub, email, app, cred)
        return ", ".join(done) or "up to date"

    def _set_enabled(self, sub: Subscriber, email: str, app: dict, cred: dict) -> list[str]:
        key = cred["consumerKey"]
        key_path = self._key_path(email, sub.id, key)
        if not sub.enabled:
            if cred.get("status", "approved") != "revoked":
                self.api.action(key_path, "revoke")
                return ["key revoked"]
            return []
        done = []
        if app.get("status", "approved") == "revoked":
            self.api.action(self._app_path(email, sub.id), "approve")
            done.append("app approved")
        if cred.get("status", "approved") == "revoked":
            self.api.action(key_path, "approve")
            done.append("key approved")
        for ref in cred.get("apiProducts", []):
            if ref.get("status", "approved") == "revoked":
                self.api.action(f"{key_path}/apiproducts/{_seg(ref['apiproduct'])}", "approve")
                done.append(f"key approved for {ref['apiproduct']}")
        return done

    def _update_developer_names(self, sub: Subscriber, email: str) -> None:
        dev = self.api.get(f"/developers/{_seg(email)}")
        if not _managed(dev):
            return  # the names of a developer apimon does not own stay as they are
        body = {k: v for k, v in dev.items() if k not in (*_OUTPUT_ONLY, "apps", "developerId",
                                                             "organizationName", "status")}
        body.update(_developer_names(sub))
        self.api.put(f"/developers/{_seg(email)}", body)

    def _move_to_developer(self, sub: Subscriber, old_email: str, app: dict) -> str:
        """An email change: the app moves to the new developer, keeping its key (key and secret are
        re-imported: a key exists once per organization, so the old app goes first)."""
        new_email = (sub.email or "").lower()
        self._ensure_developer(sub, new_email)
        cred = _primary_credential(app, sub.product, self.now_ms())
        created = self.api.post(f"/developers/{_seg(new_email)}/apps",
                                {"name": sub.id, "attributes": self._app_attributes(sub, app.get("attributes", []))})
        generated = [c["consumerKey"] for c in created.get("credentials", [])]
        self.api.sensitive.update(generated)
        if cred is not None:
            self.api.delete(self._app_path(old_email, sub.id))
            try:
                self._import_key(sub, new_email, cred["consumerKey"], cred["consumerSecret"],
                                 cred.get("attributes", []))
            except ProviderError as exc:
                raise ProviderError(f"subscriber {sub.id}: moved to developer {new_email} but its key could not "
                                    f"be re-imported ({exc}); the app now has a new generated key") from None
            for g in generated:
                self.api.delete(self._key_path(new_email, sub.id, g))
            cred = {**cred, "apiProducts": [{"apiproduct": sub.product, "status": "approved"}]}
        else:
            self.api.delete(self._app_path(old_email, sub.id))
            self.api.post(self._key_path(new_email, sub.id, generated[0]), {"apiProducts": [sub.product]})
            cred = {"consumerKey": generated[0], "status": "approved",
                    "apiProducts": [{"apiproduct": sub.product, "status": "approved"}]}
        self._set_enabled(sub, new_email, {"status": "approved"}, cred)
        self._remove_developer_if_empty(old_email)
        return f"moved to developer {new_email} (key kept)"

    def _remove_developer_if_empty(self, email: str) -> bool:
        try:
            dev = self.api.get(f"/developers/{_seg(email)}")
        except NotFound:
            return False
        if _managed(dev) and not dev.get("apps"):
            self.api.delete(f"/developers/{_seg(email)}")
            self._dev_managed.pop(email, None)
            return True
        return False

    def _delete_subscriber(self, change: Change, live: LiveState) -> str:
        h = self._handle(live, change)
        email = h["email"]
        try:
            app = self.api.get(self._app_path(email, change.id))
        except NotFound:
            return "already gone"
        if not _managed(app):
            raise ProviderError(f"subscriber {change.id} is not managed by apimon; left alone")
        self.api.sensitive.update(c.get("consumerKey", "") for c in app.get("credentials", []))
        self.api.delete(self._app_path(email, change.id))
        gone = self._remove_developer_if_empty(email)
        return "deleted (app and key)" + (f", developer {email} removed" if gone else "")

    # ---------------------------------------------------------------- keys, usage, import
    def reveal_key(self, subscriber_id: str) -> str | None:
        for app in self._list_apps():
            if app.name == subscriber_id and _managed(app.raw):
                cred = _primary_credential(app.raw, None, self.now_ms())
                return cred.get("consumerKey") if cred else None
        return None

    def pull_usage(self, start: date, end: date) -> Iterable[UsageRow]:
        """Daily message counts per owned app and product, summed over the target's environments."""
        owned = {app.name for app in self._list_apps() if _managed(app.raw)}
        totals: dict[tuple[str, str, str], list[int]] = {}
        for env in self.environments:
            chunk = start
            while chunk <= end:
                last = min(end, chunk + timedelta(days=MAX_STATS_DAYS - 1))
                for product, app, day, total, errors in self._stats(env, chunk, last):
                    if app in owned:
                        acc = totals.setdefault((app, product, day), [0, 0])
                        acc[0] += total
                        acc[1] += errors
                chunk = last + timedelta(days=1)
        for (app, product, day), (total, errors) in sorted(totals.items(), key=lambda kv: (kv[0][2], kv[0])):
            if not total:
                continue  # Apigee lists every day of a row that had traffic; a ledger has no use for zeros
            yield UsageRow(app, product, day, "total", total)
            yield UsageRow(app, product, day, "success", max(0, total - errors))

    _errors_metric = True

    def _stats(self, env: str, first: date, last: date) -> Iterator[tuple[str, str, str, int, int]]:
        """(product, app, ISO day, total, errors) for the UTC days first..last (<= 92 days)."""
        # [first 00:00, last+1 00:00): the end instant is the next day's start, so a day is never in two
        # windows; buckets outside first..last (a server counting the end minute) are ignored
        time_range = f"{first:%m/%d/%Y} 00:00~{last + timedelta(days=1):%m/%d/%Y} 00:00"
        path = f"/environments/{_seg(env)}/stats/api_product,developer_app"
        offset = 0
        while True:
            select = "sum(message_count),sum(is_error)" if self._errors_metric else "sum(message_count)"
            params = {"select": select, "timeRange": time_range, "timeUnit": "day", "tsAscending": "true",
                      "limit": str(STATS_ROWS), "offset": str(offset)}
            try:
                body = self.api.get(path, **params)
            except ApigeeError as exc:
                if self._errors_metric and exc.status == 400 and "is_error" in str(exc):
                    self._errors_metric = False
                    self.usage_warnings.append(
                        "apigee: the analytics API refused sum(is_error); success is recorded equal to total "
                        "(every call Apigee counted)")
                    continue
                raise
            rows = [d for e in body.get("environments", []) for d in e.get("dimensions", [])]
            for row in rows:
                names = row.get("individualNames") or row.get("name", "").split(",", 1)
                if len(names) != 2:
                    continue
                per_metric = {m.get("name"): m.get("values", []) for m in row.get("metrics", [])}
                errors = {d: n for d, n in self._day_values(per_metric.get("sum(is_error)", []))}
                for day, total in self._day_values(per_metric.get("sum(message_count)", [])):
                    d = date.fromisoformat(day)
                    if first <= d <= last:
                        yield names[0], names[1], day, total, errors.get(day, 0)
            if len(rows) < STATS_ROWS:
                return
            offset += STATS_ROWS

    @staticmethod
    def _day_values(values: list) -> Iterator[tuple[str, int]]:
        for v in values:
            if not isinstance(v, dict):
                continue
            try:
                number = Decimal(str(v.get("value", "0")))
            except InvalidOperation:
                raise ApigeeError(f"Apigee stats returned an unreadable value {v.get('value')!r}") from None
            if not number.is_finite() or number != number.to_integral_value():
                raise ApigeeError(f"Apigee stats returned a non-integral count {v.get('value')!r}")
            day = datetime.fromtimestamp(int(v["timestamp"]) / 1000, tz=UTC).date().isoformat()
            yield day, int(number)

    def export_plan(self, *, include_unmanaged: bool = True) -> dict:
        """Owned products and subscribers, plus products apimon does not manage yet (adoptable)."""
        live = self.read_live_state()
        products = list(live.products.values())
        if include_unmanaged:
            products += [u.resource for u in live.unmanaged if u.kind == "product" and u.resource is not None]
        target: dict = {"organization": self.org, "environments": list(self.environments)}
        if self.endpoint != DEFAULT_ENDPOINT:
            target["endpoint"] = self.endpoint
        out: dict = {"target": {"provider": "apigee", "apigee": target},
                     "products": products, "subscribers": list(live.subscribers.values())}
        now = self.now_ms()
        terms = {(p.get("currencyCode"), p.get("billingPeriod")) for pid in live.products
                 for p in self._rate_plans.get(pid, [])
                 if _plan_owned(p) and p.get("state") == "PUBLISHED" and _window(p)[1] > now}
        if len(terms) == 1:
            currency, period = terms.pop()
            out["billing"] = {"currency": currency, "period": "week" if period == "WEEKLY" else "month"}
        return out
