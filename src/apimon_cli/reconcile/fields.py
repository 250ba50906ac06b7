"""Resources as flat fields, compared by meaning: money as Decimal, emails case-folded, text exactly.

``product_fields``/``subscriber_fields`` give each comparable field its typed value (Decimal, int, bool,
str, a tuple of tiers...); ``same`` compares two values of a field by what they mean ("29.00" and "29"
are the same amount, "Billing@Acme.example" and "billing@acme.example" the same mailbox, but "Plan v1.10"
and "Plan v1.1" are different text); ``shown`` is the value as ``plan`` prints it and ``--json`` writes it.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal

from ..model import ClientSecret, Package, Pricing, Product, Subscriber, Tier

#: fields whose values compare case-insensitively
_CASEFOLDED = frozenset({"email"})


def money(value: Decimal) -> str:
    """An amount as written in the plan ("29.00")."""
    return format(value, "f")


def _tier_text(t: Tier) -> str:
    s = f"up_to={'inf' if t.up_to is None else t.up_to}"
    if t.unit_price is not None:
        s += f" unit_price={money(t.unit_price)}"
    if t.flat_fee is not None:
        s += f" flat_fee={money(t.flat_fee)}"
    return s


def shown(value: object) -> object:
    """A field value as printed and written to JSON (strings for money, lists joined)."""
    if isinstance(value, ClientSecret):
        return "(sensitive)"
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, Package):
        return f"size={value.size} price={money(value.price)} round={value.round}"
    if isinstance(value, tuple):
        if value and isinstance(value[0], Tier):
            return "; ".join(_tier_text(t) for t in value)
        return ", ".join(str(v) for v in value)
    return value


def same(name: str, a: object, b: object) -> bool:
    """Whether two values of field ``name`` mean the same (Decimal and dataclass equality compare amounts
    by value, so 29.00 == 29 and tiers of equal amounts are equal)."""
    if name in _CASEFOLDED and isinstance(a, str) and isinstance(b, str):
        return a.casefold() == b.casefold()
    return a == b


def pricing_fields(p: Pricing) -> dict[str, object]:
    out: dict[str, object] = {"pricing.model": p.model}
    for name in ("fee", "setup_fee", "unit_price", "minimum", "maximum"):
        v = getattr(p, name)
        if v is not None:
            out[f"pricing.{name}"] = v
    if p.included:
        out["pricing.included"] = p.included
    if p.package:
        out["pricing.package"] = p.package
    if p.tiers:
        out["pricing.tiers"] = tuple(p.tiers)
    return out


def product_fields(p: Product) -> dict[str, object]:
    out: dict[str, object] = {"display_name": p.display_name, "description": p.description,
                              "apis": tuple(sorted(p.apis))}
    if p.rate_limit:
        out["rate_limit.rate"] = p.rate_limit.rate
        out["rate_limit.burst"] = p.rate_limit.burst
    if p.quota:
        out["quota.limit"] = p.quota.limit
        out["quota.period"] = p.quota.period
    if p.max_concurrent is not None:
        out["max_concurrent"] = p.max_concurrent
    out.update(pricing_fields(p.pricing))
    out.update(auth_fields(p))
    return out


def auth_fields(p: Product) -> dict[str, object]:
    """The credentials a product accepts; left out at the default (API keys only), so gateways that cannot
    express them (and plans that do not use them) compare as before."""
    from ..model import DEFAULT_TOKEN_TTL

    out: dict[str, object] = {}
    if p.auth != ("api_key",):
        out["auth"] = tuple(p.auth)
    if p.scopes:
        out["scopes"] = tuple(p.scopes)
    if p.jwt is not None:
        out["auth.jwt.issuer"] = p.jwt.issuer
        out["auth.jwt.jwks_uri"] = p.jwt.jwks_uri
        out["auth.jwt.audience"] = p.jwt.audience
        out["auth.jwt.subscriber_claim"] = p.jwt.subscriber_claim
    if "oauth2" in p.auth and p.token_ttl != DEFAULT_TOKEN_TTL:
        out["auth.oauth2.token_ttl"] = p.token_ttl
    return out


def subscriber_fields(s: Subscriber) -> dict[str, object]:
    out: dict[str, object] = {"product": s.product, "enabled": s.enabled}
    if s.email is not None:
        out["email"] = s.email
    for k, v in s.metadata:
        out[f"metadata.{k}"] = v
    if s.client_secret is not None:  # only where the plan gives one (client_secret.from_env)
        out["client_secret"] = s.client_secret
    if s.client_cert_sha256 is not None:
        out["client_cert_sha256"] = s.client_cert_sha256
    return out


def key_fingerprint(value: str) -> str:
    """A key value's fingerprint (sha256 hex prefix): what the diff compares instead of the value."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]
