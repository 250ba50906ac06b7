"""Model -> plan-file data (format 1): used by `apimon import` and to store products on the local target.

The inverse of the loader, so anything written here validates and loads back to an equal model.
"""

from __future__ import annotations

from decimal import Decimal

import yaml

from ..model import Pricing, Product, Subscriber
from . import schema as S


def _money(d: Decimal) -> str:
    return format(d, "f")


def pricing_to_plan(p: Pricing) -> dict:
    out: dict = {"model": p.model}
    for name in ("fee", "setup_fee"):
        if getattr(p, name) is not None:
            out[name] = _money(getattr(p, name))
    if p.included:
        out["included"] = p.included
    if p.unit_price is not None:
        out["unit_price"] = _money(p.unit_price)
    if p.package is not None:
        out["package"] = {"size": p.package.size, "price": _money(p.package.price), "round": p.package.round}
    if p.tiers:
        tiers = []
        for t in p.tiers:
            tier: dict = {"up_to": "inf" if t.up_to is None else t.up_to}
            if t.unit_price is not None:
                tier["unit_price"] = _money(t.unit_price)
            if t.flat_fee is not None:
                tier["flat_fee"] = _money(t.flat_fee)
            tiers.append(tier)
        out["tiers"] = tiers
    for name in ("minimum", "maximum"):
        if getattr(p, name) is not None:
            out[name] = _money(getattr(p, name))
    return out


def product_to_plan(p: Product) -> dict:
    out: dict = {"display_name": p.display_name}
    if p.description:
        out["description"] = p.description
    out["apis"] = list(p.apis)
    if p.rate_limit:
        out["rate_limit"] = {"rate": p.rate_limit.rate, "burst": p.rate_limit.burst}
    if p.quota:
        out["quota"] = {"limit": p.quota.limit, "period": p.quota.period}
    out["pricing"] = pricing_to_plan(p.pricing)
    if p.max_concurrent is not None:
        out["max_concurrent"] = p.max_concurrent
    if p.auth != ("api_key",) or p.jwt is not None:
        out["auth"] = auth_to_plan(p)
    if p.scopes:
        out["scopes"] = list(p.scopes)
    return out


def auth_to_plan(p: Product) -> list:
    from ..model import DEFAULT_TOKEN_TTL

    entries: list = []
    for scheme in p.auth:
        if scheme == "jwt" and p.jwt is not None:
            j = p.jwt
            block = {"issuer": j.issuer, "jwks_uri": j.jwks_uri, "audience": j.audience}
            if j.subscriber_claim != "sub":
                block["subscriber_claim"] = j.subscriber_claim
            entries.append({"jwt": block})
        elif scheme == "oauth2" and p.token_ttl != DEFAULT_TOKEN_TTL:
            entries.append({"oauth2": {"token_ttl": _duration(p.token_ttl)}})
        elif scheme != "jwt":
            entries.append(scheme)
    return entries


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def product_from_plan(pid: str, data: dict) -> Product:
    from .loader import _product  # one conversion path for files and stored products

    return _product(pid, S.ProductSpec.model_validate(data))


def subscriber_to_plan(s: Subscriber, *, key_env: str | None = None) -> dict:
    out: dict = {"product": s.product}
    if s.email:
        out["email"] = s.email
    if not s.enabled:
        out["enabled"] = False
    if key_env:
        out["key"] = {"from_env": key_env}
    if s.metadata:
        out["metadata"] = dict(s.metadata)
    if s.client_cert_sha256:
        out["client_cert_sha256"] = s.client_cert_sha256
    return out


def plan_document(
    target: dict, products: list[Product], subscribers: list[Subscriber], billing: dict | None = None, header: str = "",
    subscribers_csv: str | None = None,
) -> str:
    """A complete plan file as YAML text (subscribers listed in ``subscribers_from`` when they were written
    to ``subscribers_csv``)."""
    doc: dict = {"apimon": 1, "target": target}
    if billing:
        doc["billing"] = billing
    doc["products"] = {p.id: product_to_plan(p) for p in sorted(products, key=lambda p: p.id)}
    if subscribers_csv is not None:
        doc["subscribers_from"] = [{"csv": subscribers_csv}]
    else:
        doc["subscribers"] = {s.id: subscriber_to_plan(s) for s in sorted(subscribers, key=lambda s: s.id)}
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
    # `apimon schema > apimon-plan.schema.json` beside the file gives editors completion for it
    schema_line = "# yaml-language-server: $schema=./apimon-plan.schema.json\n"
    return header + schema_line + text
