"""Apigee X / hybrid: API products, rate plans (monetization), developers and developer apps.

Talks to ``{endpoint}/v1/organizations/{org}/...`` with google-auth's ``AuthorizedSession`` (``client``):
Application Default Credentials, or the bearer token in ``APIMON_APIGEE_TOKEN`` taken as-is.

Mapping
- product -> API product ``{name: id, displayName, description, approvalType: auto, environments (target),
  proxies (apis), quota, quotaInterval, quotaTimeUnit}``. Apigee has no weekly quota unit: a week is written
  as ``quotaInterval "7"`` days. ``rate_limit`` is recorded in the attributes ``apimon-rate`` and
  ``apimon-burst`` (not enforced: spike arrest lives in proxies). auth api_key/oauth2 -> the attribute
  ``apimon-auth``; with oauth2, scopes -> the product's ``scopes`` (jwt and mtls cannot be expressed:
  validation warns). Updates are read-modify-write PUTs, so operation groups, scopes of products without
  oauth2 and foreign attributes survive (``products``).
- client_secret -> the consumer secret of the subscriber's credential (an imported one: ``subscribers``);
  read back and compared by value, shown only by `apimon keys show --secret`.
- pricing -> one published rate plan per product (monetization add-on): fee -> fixedRecurringFee,
  setup_fee -> setupFee, per_unit -> FIXED_PER_UNIT, graduated -> BANDED, stairstep -> STAIRSTEP
  (``rateplans``). ``free``, ``volume`` and ``package`` have no rate plan; included/minimum/maximum and
  graduated tiers' flat fees are not written (apimon's invoices still apply them). The diff compares a
  product's pricing as the rate plan apimon would write (``canonical``); differences only Apigee sees
  (currency, billing period, fee frequency, several open plans) are the field ``pricing.rate_plan``.
- subscriber -> developer (email; first/last/user name from metadata ``first_name``/``last_name``/
  ``user_name``, else the subscriber id) + one developer app named after the subscriber, whose one
  credential holds the subscriber's product (``subscribers``). Metadata lives in app attributes
  ``apimon-meta-<key>``. ``enabled: false`` revokes the key; nothing is deleted.
- ownership: the attribute ``apimon-managed=true`` on products, developers and apps; rate plans are owned
  when their product is and their description starts with ``apimon-managed``. Anything else is read,
  reported and never written.

Reads: ``read``. Usage: ``environments/{env}/stats/api_product,developer_app`` with ``sum(message_count)``
(total) and ``sum(is_error)`` (proxy errors: policy failures such as quota or spike arrest violations, and
target failures); success = total - errors. If the server refuses ``sum(is_error)``, success is recorded
equal to total and ``usage_warnings`` says so.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from ...model import DesiredState, LiveState, Product, Subscriber, UsageRow
from ...reconcile.changes import Change, ChangeSet, FieldChange
from ...render.words import count
from ..base import PlanNotes, Provider, ProviderError, not_owned
from .client import ApigeeClient, ApigeeError, seg, session_from_environment
from .keys import ApigeeKeys
from .products import ApigeeProducts
from .rateplans import as_rate_plan, plan_summary, plan_terms, pricing_from_rate_plan
from .read import ApigeeFacts, ApigeeReading, as_held, managed, primary_credential
from .spec import DEFAULT_ENDPOINT
from .subscribers import ApigeeSubscribers

PAGE_SIZE_ENV = "APIMON_APIGEE_PAGE_SIZE"
MAX_ATTRIBUTES = 18  # custom attributes per entity
MAX_PAGE = 1000
MAX_STATS_DAYS = 92
STATS_ROWS = 14400
KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,2048}")


class ApigeeProvider(ApigeeKeys, ApigeeReading, ApigeeProducts, ApigeeSubscribers, Provider):
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
        self._dev_managed: dict[str, bool] = {}  # developer email -> has apimon-managed
        self.apps_listed_per_developer = False
        self.usage_warnings: list[str] = []

    @property
    def api(self) -> ApigeeClient:
        if self._client is None:
            if not self.org:
                raise ProviderError("target.apigee.organization is not set")
            self._client = ApigeeClient(self.endpoint, self.org, session_from_environment())
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.session.close()
            self._client = None

    # ---------------------------------------------------------------- what Apigee holds
    def stores(self, kind: str, field: str) -> bool:
        """Without monetization no rate plans are read or written: pricing is not compared at all."""
        if kind == "product" and field.startswith("pricing.") and not self.monetization:
            return False
        return super().stores(kind, field)

    def canonical(self, kind: str, resource: Any) -> Any:
        """A product's pricing as the rate plan apimon would write, so what Apigee cannot hold (no plan for
        free/volume/package, no flat fee on BANDED tiers) is never a difference."""
        if kind != "product":
            return resource
        resource = as_held(resource)  # the credentials an API product can express (read.as_held)
        if self.monetization:
            b = self.desired.billing
            return replace(resource, pricing=as_rate_plan(resource.pricing, b.currency, b.period))
        return resource

    # ---------------------------------------------------------------- plan hooks
    def preflight(self, desired: DesiredState, live: LiveState, changes: ChangeSet) -> list[str]:
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
        return problems

    def extra_changes(self, desired: DesiredState, live: LiveState) -> list[Change]:
        """What only Apigee sees: a product in other environments than the target's, and rate plan terms the
        neutral pricing does not carry (currency, billing period, fee frequency, several open plans)."""
        facts: ApigeeFacts = live.facts
        want_envs = sorted(self.environments)
        out = []
        for pid, have in live.products.items():
            want = desired.products.get(pid)
            if want is None:
                continue
            fields = []
            envs = sorted(live.handles[("product", pid)].raw.get("environments", []))
            if envs != want_envs:
                fields.append(FieldChange("apigee.environments", ", ".join(envs), ", ".join(want_envs)))
            if facts.monetized:
                fields += self._rate_plan_fields(want, have, facts.open_plans.get(pid, []))
            if fields:
                out.append(Change("update", "product", pid, tuple(fields), want, have))
        return out

    def _rate_plan_fields(self, want: Product, have: Product, open_plans: list[dict]) -> list[FieldChange]:
        try:
            body = self._desired_plan(want)
        except ValueError:  # reported by preflight
            return []
        current = open_plans[-1] if open_plans else None
        several = len(open_plans) > 1
        if not several and plan_terms(current) == plan_terms(body):
            return []
        if several or self.canonical("product", want).pricing == pricing_from_rate_plan(current):
            # same neutral pricing, different Apigee terms: the diff cannot see it
            more = f" (+{len(open_plans) - 1} more open)" if several else ""
            return [FieldChange("pricing.rate_plan", plan_summary(current) + more, plan_summary(body))]
        return []

    def notes(self, desired: DesiredState, live: LiveState, changes: ChangeSet) -> PlanNotes:
        facts: ApigeeFacts = live.facts
        out = PlanNotes()
        priced = [pid for pid, p in desired.products.items() if p.pricing.model != "free" or p.pricing.fee is not None]
        if not facts.monetized and priced:
            out.warnings.append(
                f"monetization is not enabled in organization {self.org}: no rate plans are read or written and "
                f"pricing is not compared ({count(len(priced), 'priced product')}); apimon's own invoices still "
                "use the plan's pricing")
        if facts.proxies is not None:
            for pid, product in sorted(desired.products.items()):
                missing = [a for a in product.apis if a not in facts.proxies]
                if missing:
                    out.warnings.append(f"products.{pid}.apis: no API proxy named {', '.join(missing)} in organization "
                                        f"{self.org}; the product is written, the proxy must exist for calls to "
                                        "succeed")
        if facts.monetized:
            switching = [c.id for c in changes.changes if c.kind == "product" and c.action == "update"
                         and c.changed("pricing")]
            if switching:
                out.notes.append(f"apigee: rate plans of {', '.join(switching)} switch at apply time: the current plan "
                                 "ends and the new one starts at the same instant (one active plan, no gap)")
        for pid, names in sorted(facts.foreign_plans.items()):
            change = next((c for c in changes.changes if c.kind == "product" and c.id == pid), None)
            if change is not None and change.action != "delete" and change.changed("pricing"):
                out.conflicts.append(
                    f"product {pid} has published rate plans apimon does not manage ({', '.join(names)}); "
                    "Apigee allows one active plan per product: expire or delete them first")
        return out

    # ---------------------------------------------------------------- keys, usage, import
    def reveal_key(self, subscriber_id: str) -> str | None:
        apps = [app for app in self.list_apps() if app.name == subscriber_id]
        for app in apps:
            if managed(app.raw):
                cred = primary_credential(app.raw, None, self.now_ms())
                return cred.get("consumerKey") if cred else None
        if apps:
            raise not_owned(subscriber_id)
        return None

    def reveal_secret(self, subscriber_id: str) -> str | None:
        """The consumer secret of the subscriber's key: its OAuth 2.0 client secret (client id = the key). Apigee
        returns it with the app, so `apimon keys show --secret` can show it."""
        apps = [app for app in self.list_apps() if app.name == subscriber_id]
        for app in apps:
            if managed(app.raw):
                cred = primary_credential(app.raw, None, self.now_ms())
                return cred.get("consumerSecret") if cred else None
        if apps:
            raise not_owned(subscriber_id)
        return None

    def pull_usage(self, start: date, end: date) -> Iterable[UsageRow]:
        """Daily message counts per owned app and product, summed over the target's environments."""
        owned = {app.name for app in self.list_apps() if managed(app.raw)}
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
        path = f"/environments/{seg(env)}/stats/api_product,developer_app"
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

    @staticmethod
    def _adoptable_apps(live, taken: set[str], not_imported: list[str]) -> list[Subscriber]:
        out = []
        for u in live.unmanaged:
            if u.kind != "subscriber":
                continue
            sub = u.resource
            if not isinstance(sub, Subscriber):
                not_imported.append(f"subscriber {u.name!r}: {u.detail}")
            elif not sub.product:
                not_imported.append(f"subscriber {u.name!r}: the app has no approved key on an API product (a "
                                    "plan subscriber needs a product)")
            elif "," in sub.product:
                not_imported.append(f"subscriber {u.name!r}: the app's key is on several API products "
                                    f"({sub.product.replace(',', ', ')}); a plan subscriber has one product")
            elif sub.id in taken:
                not_imported.append(f"subscriber {u.name!r}: another app or subscriber is already imported as "
                                    f"{sub.id!r} (plan subscriber ids are unique, Apigee app names are unique "
                                    "per developer only)")
            else:
                taken.add(sub.id)
                out.append(sub)
        return out

    def export_plan(self, *, include_unmanaged: bool = True) -> dict:
        """Owned products and subscribers, plus products and developer apps apimon does not manage yet
        (adoptable: an app is adopted as the subscriber of its name and developer email). An app that cannot
        be a plan subscriber is listed under ``not_imported`` with the reason."""
        live = self.read_live_state()
        products = list(live.products.values())
        subscribers = list(live.subscribers.values())
        not_imported: list[str] = []
        if include_unmanaged:
            products += [u.resource for u in live.unmanaged if u.kind == "product" and u.resource is not None]
            subscribers += self._adoptable_apps(live, {s.id for s in subscribers}, not_imported)
        target: dict = {"organization": self.org, "environments": list(self.environments)}
        if self.endpoint != DEFAULT_ENDPOINT:
            target["endpoint"] = self.endpoint
        out: dict = {"target": {"provider": "apigee", "apigee": target},
                     "products": products, "subscribers": subscribers, "not_imported": not_imported}
        terms = {(p.get("currencyCode"), p.get("billingPeriod")) for pid in live.products
                 for p in live.facts.open_plans.get(pid, [])}
        if len(terms) == 1:
            currency, period = terms.pop()
            out["billing"] = {"currency": currency, "period": "week" if period == "WEEKLY" else "month"}
        return out
