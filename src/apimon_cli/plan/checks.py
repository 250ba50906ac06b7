"""Cross-field rules and provider capabilities: what the schema alone cannot say."""

from __future__ import annotations

import re

from ..model import DesiredState, Pricing
from . import schema as S
from .diagnostics import Diagnostic, suggest
from .yamlsrc import Source

_ID_RE = re.compile(S.ID_PATTERN)
_ALLOWED_BY_MODEL = {
    "free": set(),
    "flat": set(),
    "per_unit": {"unit_price"},
    "package": {"package"},
    "graduated": {"tiers"},
    "volume": {"tiers"},
    "stairstep": {"tiers"},
}
_MODEL_FIELDS = {"unit_price", "package", "tiers"}
_REQUIRED_SETTINGS = {"aws": "region", "azure": "subscription_id, resource_group, service",
                      "apigee": "organization, environments"}


class _Reporter:
    def __init__(self, parsed: list[tuple[Source, S.PlanFile]], strict: bool):
        self.strict = strict
        self.out: list[Diagnostic] = []
        self.owner: dict[tuple[str, str], Source] = {}
        for src, plan in parsed:
            for pid in plan.products:
                self.owner.setdefault(("products", pid), src)
            for sid in plan.subscribers:
                self.owner.setdefault(("subscribers", sid), src)
            if plan.target is not None:
                self.owner.setdefault(("target", ""), src)
            if plan.billing is not None:
                self.owner.setdefault(("billing", ""), src)
        self.first = parsed[0][0]

    def _src(self, path: tuple) -> Source:
        key = (path[0], path[1] if len(path) > 1 and path[0] in ("products", "subscribers") else "")
        return self.owner.get(key, self.first)

    def error(self, path: tuple, message: str, *, key: bool = False) -> None:
        src = self._src(path)
        line, col = src.where(path, key=key)
        self.out.append(Diagnostic(src.file, line, col, "error", _dotted(path), message))

    def warn(self, path: tuple, message: str) -> None:
        src = self._src(path)
        line, col = src.where(path)
        sev = "error" if self.strict else "warning"
        self.out.append(Diagnostic(src.file, line, col, sev, _dotted(path), message))


def _dotted(path: tuple) -> str:
    from .diagnostics import dotted
    return dotted(path)


def check_plan(desired: DesiredState, parsed: list[tuple[Source, S.PlanFile]], env: dict[str, str],
               *, strict: bool = False) -> list[Diagnostic]:
    r = _Reporter(parsed, strict)
    _check_target(desired, parsed, r)
    _check_billing(desired, r)
    for pid, product in desired.products.items():
        base = ("products", pid)
        if not _ID_RE.match(pid):
            r.error(base, f"invalid product id {pid!r}; ids are 1-63 characters of a-z, 0-9 and '-', "
                          "starting with a letter or digit", key=True)
        if product.rate_limit and product.rate_limit.burst < product.rate_limit.rate:
            r.error(base + ("rate_limit", "burst"),
                    f"must be >= rate ({product.rate_limit.rate}); got {product.rate_limit.burst}")
        _check_pricing(product.pricing, base + ("pricing",), _explicit_pricing_fields(parsed, pid), r)
        if len(set(product.apis)) != len(product.apis):
            r.error(base + ("apis",), "lists an API twice; list each API once")
    for sid, sub in desired.subscribers.items():
        base = ("subscribers", sid)
        if not _ID_RE.match(sid):
            r.error(base, f"invalid subscriber id {sid!r}; ids are 1-63 characters of a-z, 0-9 and '-', "
                          "starting with a letter or digit", key=True)
        if sub.product not in desired.products:
            known = ", ".join(sorted(desired.products)) or "none defined"
            r.error(base + ("product",), f"unknown product {sub.product!r}{suggest(sub.product, desired.products)};"
                                         f" defined products: {known}")
        if sub.email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", sub.email):
            r.error(base + ("email",), f"not an email address: {sub.email!r}")
        key_env = _key_env(parsed, sid)
        if key_env is not None:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
                r.error(base + ("key", "from_env"), f"invalid environment variable name {key_env!r}")
            elif key_env not in env:
                r.error(base + ("key", "from_env"), f"environment variable {key_env} is not set; "
                                                     "set it to the key value to import, or remove `key`")
            elif not env[key_env]:
                r.error(base + ("key", "from_env"), f"environment variable {key_env} is empty")
    _check_capabilities(desired, r)
    return r.out


def _explicit_pricing_fields(parsed, pid: str) -> set[str]:
    for _src, plan in parsed:
        if pid in plan.products:
            return set(plan.products[pid].pricing.model_fields_set)
    return set()


def _key_env(parsed, sid: str) -> str | None:
    for _src, plan in parsed:
        if sid in plan.subscribers:
            k = plan.subscribers[sid].key
            return k.from_env if k else None
    return None


def _check_pricing(p: Pricing, path: tuple, explicit: set[str], r: _Reporter) -> None:
    allowed = _ALLOWED_BY_MODEL[p.model]
    for name in sorted((explicit & _MODEL_FIELDS) - allowed):
        hint = {"unit_price": "per_unit", "package": "package", "tiers": "graduated, volume or stairstep"}[name]
        r.error(path + (name,), f"not used by model {p.model}; `{name}` belongs to model {hint}")
    if p.model == "free" and (p.fee or p.setup_fee):
        r.error(path + ("fee" if p.fee else "setup_fee",), "model free charges nothing; use model flat for a fee")
    if p.model == "flat" and p.fee is None:
        r.error(path + ("fee",), "model flat needs a fee, e.g. fee: \"29.00\"")
    if p.model == "per_unit" and p.unit_price is None:
        r.error(path + ("unit_price",), "model per_unit needs unit_price, e.g. unit_price: \"0.001\"")
    if p.model == "package" and p.package is None:
        r.error(path + ("package",), "model package needs package: {size, price, round}")
    if p.model in ("graduated", "volume", "stairstep"):
        if not p.tiers:
            r.error(path + ("tiers",), f"model {p.model} needs at least one tier; the last has up_to: inf")
        else:
            _check_tiers(p, path + ("tiers",), r)
    if p.minimum is not None and p.maximum is not None and p.minimum > p.maximum:
        r.error(path + ("minimum",), f"must be <= maximum ({p.maximum}); got {p.minimum}")


def _check_tiers(p: Pricing, path: tuple, r: _Reporter) -> None:
    previous = 0
    last = len(p.tiers) - 1
    for i, tier in enumerate(p.tiers):
        tpath = path + (i,)
        if tier.up_to is None and i != last:
            r.error(tpath + ("up_to",), "inf is only allowed as the last tier's up_to")
        elif tier.up_to is not None and i == last:
            r.error(tpath + ("up_to",), f"the last tier must have up_to: inf; got {tier.up_to}")
        if tier.up_to is not None:
            if tier.up_to <= previous:
                r.error(tpath + ("up_to",), f"tiers must strictly increase: must be > {previous}; "
                                            f"got {tier.up_to}")
            previous = max(previous, tier.up_to)
        if p.model == "stairstep":
            if tier.unit_price is not None:
                r.error(tpath + ("unit_price",), "stairstep tiers charge a flat_fee only; remove unit_price")
            if tier.flat_fee is None:
                r.error(tpath, "stairstep tiers need a flat_fee")
        elif tier.unit_price is None and tier.flat_fee is None:
            r.error(tpath, "a tier needs unit_price, flat_fee or both")


def _check_target(desired: DesiredState, parsed, r: _Reporter) -> None:
    provider = desired.target.provider
    if provider != "local" and not desired.target.settings:
        r.error(("target", "provider"), f"provider {provider} needs a `target.{provider}` block with "
                                        f"{_REQUIRED_SETTINGS[provider]}")


def _check_billing(desired: DesiredState, r: _Reporter) -> None:
    code = desired.billing.currency
    try:
        from ..billing.currency import is_known_currency
    except ImportError:  # pragma: no cover - billing package always ships
        def is_known_currency(c: str) -> bool:
            return bool(re.fullmatch(r"[A-Z]{3}", c))
    if not is_known_currency(code):
        r.error(("billing", "currency"), f"unknown currency {code!r}; use an ISO 4217 code such as USD, EUR, JPY")


# ---------------------------------------------------------------- provider capabilities

def _check_capabilities(desired: DesiredState, r: _Reporter) -> None:
    provider = desired.target.provider
    for pid, product in desired.products.items():
        base = ("products", pid)
        if provider == "aws":
            for i, api in enumerate(product.apis):
                if api.count("/") != 1 or api.startswith("/") or api.endswith("/"):
                    r.error(base + ("apis", i), f"AWS APIs are written \"rest-api-name-or-id/stage\"; got {api!r}")
        if provider == "azure":
            if product.rate_limit and product.rate_limit.burst != product.rate_limit.rate:
                r.warn(base + ("rate_limit", "burst"),
                       "azure: API Management's rate-limit policy has no burst; only rate is enforced "
                       "(calls per second)")
            if product.quota and product.quota.period == "month":
                r.warn(base + ("quota", "period"),
                       "azure: API Management quotas renew after a fixed number of seconds, not on calendar "
                       "months; month is written as 2592000 s (30 days)")
        if provider == "apigee":
            if product.rate_limit:
                r.warn(base + ("rate_limit",),
                       "apigee: API products have no product-level rate limit (spike arrest lives in proxies);"
                       " recorded as product attributes, not enforced")
            p = product.pricing
            if p.model in ("volume", "package"):
                r.warn(base + ("pricing", "model"),
                       f"apigee: rate plans cannot express model {p.model}; no rate plan is written "
                       "(apimon's invoices still use it)")
            for name in ("minimum", "maximum"):
                if getattr(p, name) is not None:
                    r.warn(base + ("pricing", name),
                           f"apigee: rate plans have no {name}; apimon's invoices apply it, Apigee's do not")
            if p.included:
                r.warn(base + ("pricing", "included"),
                       "apigee: rate plans have no included units; apimon's invoices apply them")
    for sid, sub in desired.subscribers.items():
        base = ("subscribers", sid)
        if provider == "apigee" and not sub.email:
            r.error(base, "apigee: developers need an email; add `email:`")
        if provider == "aws" and sub.key_value is not None and not 20 <= len(sub.key_value) <= 128:
            r.error(base + ("key", "from_env"),
                    f"aws: API key values must be 20 to 128 characters; the value has {len(sub.key_value)}")
