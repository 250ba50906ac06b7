"""Cross-field rules and provider capabilities: what the schema alone cannot say."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..model import Billing, Pricing, Product, Subscriber, Target
from . import schema as S
from .diagnostics import Diagnostic, dotted, suggest
from .yamlsrc import Source

_ID_RE = re.compile(S.ID_PATTERN)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
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
_BELONGS_TO = {"unit_price": "per_unit", "package": "package", "tiers": "graduated, volume or stairstep"}


@dataclass
class PlanParts:
    """Everything the files define, merged; entries whose structure was invalid are left out (their problems
    are reported already), but their ids are known (``owner``) so references to them are not errors."""

    complete: bool  # every file was read and parsed
    first: Source | None
    target: Target | None = None
    target_spec: S.TargetSpec | None = None
    billing: Billing = field(default_factory=Billing)
    products: dict[str, Product] = field(default_factory=dict)
    subscribers: dict[str, Subscriber] = field(default_factory=dict)
    product_specs: dict[str, S.ProductSpec] = field(default_factory=dict)
    subscriber_specs: dict[str, S.SubscriberSpec] = field(default_factory=dict)
    billing_spec: S.BillingSpec | None = None
    owner: dict[tuple[str, str], Source] = field(default_factory=dict)  # (kind, id) -> defining file
    events_spec: S.EventsSpec | None = None

    def known(self, kind: str) -> list[str]:
        return [name for k, name in self.owner if k == kind]


class _Reporter:
    def __init__(self, parts: PlanParts, strict: bool):
        self.parts = parts
        self.strict = strict
        self.out: list[Diagnostic] = []

    def _src(self, path: tuple) -> Source | None:
        if path[0] in ("products", "subscribers"):
            return self.parts.owner.get((path[0], path[1]))
        return self.parts.owner.get((path[0], ""), self.parts.first)

    def error(self, path: tuple, message: str, *, key: bool = False, severity: str = "error") -> None:
        src = self._src(path)
        if src is None:  # pragma: no cover - every checked entry comes from a file
            return
        line, col = src.where(path, key=key)
        self.out.append(Diagnostic(src.file, line, col, severity, dotted(path), message))  # type: ignore[arg-type]

    def warn(self, path: tuple, message: str) -> None:
        self.error(path, message, severity="error" if self.strict else "warning")


def check_plan(parts: PlanParts, env: dict[str, str], *, strict: bool = False) -> list[Diagnostic]:
    r = _Reporter(parts, strict)
    _check_target(parts, r)
    _check_endpoints(parts, env, r)
    _check_billing(parts, r)
    _check_push(parts, env, r)
    _check_ids(parts, r, "products", "product")
    for pid, product in parts.products.items():
        base = ("products", pid)
        if product.rate_limit and product.rate_limit.burst < product.rate_limit.rate:
            r.error(
                base + ("rate_limit", "burst"),
                f"must be >= rate ({product.rate_limit.rate}); got {product.rate_limit.burst}",
            )
        explicit = set(parts.product_specs[pid].pricing.model_fields_set)
        _check_pricing(product.pricing, base + ("pricing",), explicit, r)
        seen: set[str] = set()
        for i, api in enumerate(product.apis):
            if api in seen:
                r.error(base + ("apis", i), f"{api!r} is listed twice; list each API once")
            seen.add(api)
    known_products = set(parts.known("products"))
    _check_ids(parts, r, "subscribers", "subscriber")
    for sid, sub in parts.subscribers.items():
        base = ("subscribers", sid)
        if parts.complete and sub.product not in known_products:
            listed = ", ".join(sorted(known_products)) or "none"
            r.error(
                base + ("product",),
                f"unknown product {sub.product!r}{suggest(sub.product, known_products)}; defined products: {listed}",
            )
        if sub.email is not None and not _EMAIL_RE.fullmatch(sub.email):
            r.error(base + ("email",), f"not an email address: {sub.email!r}; write name@domain.example")
        spec = parts.subscriber_specs[sid]
        if spec.key is not None and spec.key.from_env is not None:
            name = spec.key.from_env
            if not _ENV_NAME_RE.fullmatch(name):
                r.error(
                    base + ("key", "from_env"),
                    f"invalid environment variable name {name!r}; use letters, digits and _, not starting with a digit",
                )
            elif name not in env:
                r.error(
                    base + ("key", "from_env"),
                    f"environment variable {name} is not set; set it to the key "
                    "value to import, or remove `key` to let the gateway generate one",
                )
            elif not env[name]:
                r.error(
                    base + ("key", "from_env"),
                    f"environment variable {name} is empty; set it to the key "
                    "value to import, or remove `key` to let the gateway generate one",
                )
    _check_auth(parts, env, r)
    _check_capabilities(parts, r)
    if parts.events_spec is not None:
        from ..events.config import check as check_events

        for path, message in check_events(parts.events_spec, env):
            r.error(("events", *path), message)
    return r.out


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _check_auth(parts: PlanParts, env: dict[str, str], r: _Reporter) -> None:
    """products.<id>.auth / scopes and the subscribers' client_secret / client_cert_sha256."""
    from urllib.parse import urlsplit

    for pid, product in parts.products.items():
        spec = parts.product_specs.get(pid)
        if spec is None:
            continue
        base = ("products", pid)
        if spec.auth is not None:
            if not spec.auth:
                r.error(base + ("auth",), "lists no credential scheme; list at least one of api_key, oauth2, "
                        "jwt, mtls (or remove `auth` for API keys only)")
            seen: dict[str, int] = {}
            for i, entry in enumerate(spec.auth):
                if entry.scheme in seen:
                    r.error(base + ("auth", i), f"{entry.scheme} is listed twice (first at entry {seen[entry.scheme]}"
                            "); list each scheme once")
                seen.setdefault(entry.scheme, i)
                if entry.jwt is not None:
                    url = entry.jwt.jwks_uri
                    where = urlsplit(url)
                    loopback = where.scheme == "http" and where.hostname in _LOOPBACK
                    if not (where.scheme == "https" and where.hostname) and not loopback:
                        r.error(base + ("auth", i, "jwt", "jwks_uri"),
                                f"must be an https:// URL (http only on 127.0.0.1); got {url!r}")
                    if not entry.jwt.issuer.strip():
                        r.error(base + ("auth", i, "jwt", "issuer"), "must not be empty: the `iss` tokens carry")
                    if not entry.jwt.audience.strip():
                        r.error(base + ("auth", i, "jwt", "audience"), "must not be empty: the `aud` tokens carry")
                    if not entry.jwt.subscriber_claim.strip():
                        r.error(base + ("auth", i, "jwt", "subscriber_claim"), "must name a claim, e.g. sub or azp")
                if entry.oauth2 is not None and entry.oauth2.token_ttl:
                    from ..keys.durations import parse_duration

                    ttl = parse_duration(entry.oauth2.token_ttl).total_seconds()
                    if not 30 <= ttl <= 86400:
                        r.error(base + ("auth", i, "oauth2", "token_ttl"),
                                f"must be between 30s and 24h; got {entry.oauth2.token_ttl}")
        if product.scopes and not (product.accepts("oauth2") or product.accepts("jwt")):
            r.warn(base + ("scopes",), "scopes are checked on oauth2 and jwt tokens only; this product accepts "
                   f"{', '.join(product.auth)}, so they have no effect")
    for sid, sub in parts.subscribers.items():
        spec = parts.subscriber_specs.get(sid)
        base = ("subscribers", sid)
        product = parts.products.get(sub.product)
        secret_spec = getattr(spec, "client_secret", None)
        if secret_spec is not None:
            name = secret_spec.from_env
            path = base + ("client_secret", "from_env")
            if not _ENV_NAME_RE.fullmatch(name):
                r.error(path, f"invalid environment variable name {name!r}; use letters, digits and _, "
                        "not starting with a digit")
            elif not env.get(name):
                r.error(path, f"environment variable {name} is {'empty' if name in env else 'not set'}; set it to "
                        "the client secret, or remove `client_secret` to let the gateway generate one")
            elif len(env[name]) < 16:
                r.error(path, f"the client secret in {name} has {len(env[name])} characters; use at least 16 "
                        "(e.g. `openssl rand -base64 32`)")
            if product is not None and not product.accepts("oauth2"):
                r.warn(base + ("client_secret",), f"product {sub.product} does not accept oauth2 (its auth: "
                       f"{', '.join(product.auth)}): the client secret is not used")
        if sub.client_cert_sha256 and product is not None and not product.accepts("mtls"):
            r.warn(base + ("client_cert_sha256",), f"product {sub.product} does not accept mtls (its auth: "
                   f"{', '.join(product.auth)}): the certificate fingerprint is not used")
        if product is not None and product.auth == ("mtls",) and not sub.client_cert_sha256:
            r.warn(base, f"product {sub.product} accepts only mtls, but the subscriber has no client_cert_sha256: "
                   "it cannot call")


def _check_ids(parts, r, kind: str, noun: str) -> None:
    for rid in parts.known(kind):
        if not _ID_RE.match(rid):
            r.error((kind, rid), f"invalid {noun} id {rid!r}; ids are 1-63 characters of a-z, 0-9 and '-', "
                                 "starting with a letter or digit", key=True)


def _check_pricing(p: Pricing, path: tuple, explicit: set[str], r: _Reporter) -> None:
    allowed = _ALLOWED_BY_MODEL[p.model]
    tiered = p.model in ("graduated", "volume", "stairstep")
    for name in sorted((explicit & _MODEL_FIELDS) - allowed):
        if name == "unit_price" and tiered:
            hint = "tiers carry their own unit_price; remove it (or use model per_unit)"
        else:
            hint = f"`{name}` belongs to model {_BELONGS_TO[name]}; remove it"
        r.error(path + (name,), f"not used by model {p.model}; {hint}", key=True)
    if p.model == "free" and (p.fee or p.setup_fee):
        r.error(path + ("fee" if p.fee else "setup_fee",), "model free charges nothing; use model flat for a fixed fee")
    if p.model == "flat" and p.fee is None:
        r.error(path + ("fee",), 'model flat needs a fee; add fee: "29.00" (a quoted decimal)')
    if p.model == "per_unit" and p.unit_price is None:
        r.error(path + ("unit_price",), 'model per_unit needs unit_price; add unit_price: "0.001" (a quoted decimal)')
    if p.model == "package" and p.package is None:
        r.error(path + ("package",), 'model package needs package; add package: {size: 1000, price: "0.50"}')
    if tiered:
        if not p.tiers:
            r.error(path + ("tiers",), f"model {p.model} needs tiers; add at least one, the last with up_to: inf")
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
            r.error(
                tpath + ("up_to",),
                f"inf is allowed only in the last tier (tiers[{last}]); give this tier a whole-number bound",
            )
        elif tier.up_to is not None and i == last:
            r.error(
                tpath + ("up_to",),
                f"the last tier must have up_to: inf (so every quantity has a price); got {tier.up_to}",
            )
        if tier.up_to is not None:
            if tier.up_to <= previous:
                r.error(
                    tpath + ("up_to",),
                    f"tiers must strictly increase: must be > {previous} (the previous tier's up_to); got {tier.up_to}",
                )
            previous = max(previous, tier.up_to)
        if p.model == "stairstep":
            if tier.unit_price is not None:
                r.error(
                    tpath + ("unit_price",),
                    "stairstep tiers charge a flat_fee only; remove unit_price (or use model graduated or volume)",
                    key=True,
                )
            if tier.flat_fee is None:
                r.error(tpath, 'stairstep tiers need a flat_fee; add flat_fee: "10.00"')
        elif tier.unit_price is None and tier.flat_fee is None:
            r.error(tpath, "a tier needs unit_price, flat_fee or both; add one")


def _check_target(parts: PlanParts, r: _Reporter) -> None:
    from ..providers.registry import spec as provider_spec
    from ..providers.registry import specs

    spec = parts.target_spec
    if spec is None:
        return
    provider = spec.provider
    required = provider_spec(provider).required_settings()
    if required and getattr(spec, provider) is None:
        r.error(
            ("target", "provider"),
            f"provider {provider} needs its settings; add a `target.{provider}` "
            f"block with {', '.join(required)}",
        )
    for other in specs():
        if other != provider and getattr(spec, other) is not None:
            r.error(
                ("target", other), f"not used by provider {provider}; remove it (or set provider: {other})", key=True
            )


def _check_endpoints(parts: PlanParts, env: dict[str, str], r: _Reporter) -> None:
    """The endpoint rule (issue 18, ``security.endpoints``) on the target's URLs that receive a credential."""
    from ..providers.registry import spec as provider_spec
    from ..security.endpoints import check_endpoint

    if parts.target is None or parts.target_spec is None:
        return
    name = parts.target.provider
    urls = provider_spec(name).credential_urls
    if urls is None or getattr(parts.target_spec, name) is None:
        return
    for field_name, url, default in urls(parts.target.settings):
        problem = check_endpoint(url, default, env)
        if problem:
            r.error(("target", name, field_name), problem)


def _check_billing(parts: PlanParts, r: _Reporter) -> None:
    if ("billing", "") not in parts.owner:
        return
    code = parts.billing.currency
    from ..billing.currency import is_known_currency

    if not is_known_currency(code):
        r.error(("billing", "currency"), f"unknown currency {code!r}; use an ISO 4217 code such as USD, EUR, JPY")


_PUSH_FIELDS = {  # vendor -> (URL field, its public default, destination field, what the destination is)
    "stripe": ("api_base", "https://api.stripe.com", "customer", "Stripe customer id"),
    "lago": ("api_url", "https://api.getlago.com", "subscription", "Lago external_subscription_id"),
    "openmeter": ("url", "https://openmeter.cloud", "subject", "OpenMeter subject"),
}
_SECRET_FIELD = {"stripe": "api_key", "lago": "api_key", "openmeter": "token"}


def _check_push(parts: PlanParts, env: dict[str, str], r: _Reporter) -> None:
    """billing.push: destinations are `metadata.<key>` and every subscriber has it; credentials go only to
    allowed endpoints (security.endpoints); the credential is named by a valid environment variable."""
    from ..security.endpoints import check_endpoint

    spec = parts.billing_spec.push if parts.billing_spec is not None else None
    if spec is None:
        return
    for sink in parts.billing.push:
        base = ("billing", "push", sink.vendor)
        url_field, default, dest_field, what = _PUSH_FIELDS[sink.vendor]
        problem = check_endpoint(sink.endpoint, default, env)
        if problem:
            r.error(base + (url_field,), problem)
        secret_path = base + (_SECRET_FIELD[sink.vendor], "from_env")
        if not _ENV_NAME_RE.fullmatch(sink.secret_env):
            r.error(secret_path, f"invalid environment variable name {sink.secret_env!r}; use letters, digits and _")
        given = getattr(getattr(spec, sink.vendor), dest_field)
        if given is None:
            continue  # OpenMeter's subject defaults to the subscriber id
        if not given.startswith("metadata.") or not given[len("metadata."):]:
            example = _DEFAULT_KEYS[sink.vendor]
            r.error(base + (dest_field,), f"must name a subscriber metadata key (metadata.{example}); got {given!r}")
            continue
        key = sink.destination
        for sid, sub in sorted(parts.subscribers.items()):
            if not sub.metadata_dict.get(key):
                r.error(("subscribers", sid), f"has no metadata.{key}: billing.push.{sink.vendor} needs the {what} "
                        f"of every subscriber; add `metadata: {{{key}: ...}}`", key=True)


_DEFAULT_KEYS = {"stripe": "stripe_customer_id", "lago": "lago_subscription_id", "openmeter": "openmeter_subject"}


# ---------------------------------------------------------------- provider capabilities


def _check_capabilities(parts: PlanParts, r: _Reporter) -> None:
    """The target provider's rules (its registry entry): a warning where the plan sets a field the gateway
    does not store, then the provider's own checks."""
    if parts.target is None:
        return
    from ..providers.registry import spec as provider_spec
    from ..reconcile.kinds import kind

    spec = provider_spec(parts.target.provider)
    for gap in spec.capabilities.warnings():
        section = kind(gap.kind).section
        resources = getattr(parts, section)
        hits = [rid for rid, resource in resources.items() if gap.is_set_on(resource)]
        if gap.once and hits:
            others = f" ({len(hits) - 1} other {section} set it too)" if len(hits) > 1 else ""
            r.warn((section, hits[0], *gap.path), f"{spec.name}: {gap.message(resources[hits[0]])}{others}")
            continue
        for rid in hits:
            r.warn((section, rid, *gap.path), f"{spec.name}: {gap.message(resources[rid])}")
    if spec.plan_checks is not None:
        spec.plan_checks(parts, r)
