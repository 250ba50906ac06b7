"""Provider-neutral resources: what a plan asks for and what a gateway holds.

Plain frozen dataclasses, no I/O. The plan loader builds them from YAML, providers build them from
live gateways, the diff engine compares them, billing prices them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal

PricingModel = Literal["free", "flat", "per_unit", "package", "graduated", "volume", "stairstep"]
Period = Literal["day", "week", "month"]
BillingPeriod = Literal["month", "week"]

#: metrics a usage row may carry (Azure API Management's call-count definitions)
METRICS: tuple[str, ...] = ("success", "blocked", "failed", "other", "total")


@dataclass(frozen=True)
class RateLimit:
    rate: int  # steady requests per second
    burst: int  # bucket size, >= rate


@dataclass(frozen=True)
class Quota:
    limit: int
    period: Period = "month"


@dataclass(frozen=True)
class Tier:
    up_to: int | None  # inclusive; None means infinity (only the last tier)
    unit_price: Decimal | None = None
    flat_fee: Decimal | None = None


@dataclass(frozen=True)
class Package:
    size: int
    price: Decimal
    round: Literal["up", "down"] = "up"


@dataclass(frozen=True)
class Pricing:
    model: PricingModel = "free"
    fee: Decimal | None = None  # recurring fee per billing period
    setup_fee: Decimal | None = None  # once, in a subscriber's first invoiced period
    included: int = 0  # units subtracted before the model applies
    unit_price: Decimal | None = None  # per_unit
    package: Package | None = None  # package
    tiers: tuple[Tier, ...] = ()  # graduated / volume / stairstep
    minimum: Decimal | None = None
    maximum: Decimal | None = None


AuthScheme = Literal["api_key", "oauth2", "jwt", "mtls"]
DEFAULT_TOKEN_TTL = 3600  # seconds: access tokens the local gateway issues (products.<id>.auth oauth2.token_ttl)


@dataclass(frozen=True)
class JwtIssuer:
    """``auth: - jwt: {...}``: bearer tokens from an external issuer, checked against its JWKS."""

    issuer: str
    jwks_uri: str
    audience: str
    subscriber_claim: str = "sub"


@dataclass(frozen=True)
class Product:
    id: str
    display_name: str
    description: str = ""
    apis: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None
    quota: Quota | None = None
    pricing: Pricing = field(default_factory=Pricing)
    max_concurrent: int | None = None  # requests in flight per subscriber (local gateway only)
    # listed on the public pricing page (`apimon portal build`); not a gateway field: never stored or compared
    public: bool = field(default=True, compare=False)
    # credentials the product accepts (default: API keys only), required token scopes, the external issuer
    auth: tuple[AuthScheme, ...] = ("api_key",)
    scopes: tuple[str, ...] = ()
    jwt: JwtIssuer | None = None
    token_ttl: int = DEFAULT_TOKEN_TTL  # seconds (oauth2)

    def accepts(self, scheme: str) -> bool:
        return scheme in self.auth


@dataclass(frozen=True, eq=False)
class ClientSecret:
    """A client secret as the plan gives it (``value``) or as a gateway keeps it: the value itself (Apigee's
    consumer secret) or only a password hash (``hashed``, the local state: security/secrets.py). Two
    secrets are the same when their values are equal, or when one value verifies against the other's hash."""

    value: str | None = field(default=None, repr=False)
    hashed: str | None = field(default=None, repr=False)

    def same(self, other: ClientSecret) -> bool:
        import hmac

        if self.value is not None and other.value is not None:
            return hmac.compare_digest(self.value.encode(), other.value.encode())
        from .security.secrets import verify_secret

        if self.value is not None and other.hashed is not None:
            return verify_secret(self.value, other.hashed)
        if other.value is not None and self.hashed is not None:
            return verify_secret(other.value, self.hashed)
        return self.hashed is not None and self.hashed == other.hashed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClientSecret) and self.same(other)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "ClientSecret(sensitive)"


@dataclass(frozen=True)
class Subscriber:
    id: str
    product: str
    email: str | None = None
    enabled: bool = True
    # The key value to import (from key.from_env). Never printed; repr hides it.
    key_value: str | None = field(default=None, repr=False)
    metadata: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    # key lifecycle (apimon keys): rotate when older than key_max_age; the old key keeps working for
    # key_overlap after a rotation. Not gateway fields: never compared.
    key_max_age: timedelta | None = field(default=None, compare=False)
    key_overlap: timedelta = field(default=timedelta(hours=24), compare=False)
    # OAuth 2.0 client secret: the plan's value (client_secret.from_env), or what the gateway keeps (a value a
    # provider reads back, or the local state's hash). Never printed; compared by meaning (reconcile.fields).
    client_secret: ClientSecret | None = field(default=None, repr=False)
    client_cert_sha256: str | None = None  # mtls: lowercase hex, no colons

    @property
    def metadata_dict(self) -> dict[str, str]:
        return dict(self.metadata)


PushVendor = Literal["stripe", "lago", "openmeter"]
PUSH_VENDORS: tuple[str, ...] = ("stripe", "lago", "openmeter")


@dataclass(frozen=True)
class PushSink:
    """One ``billing.push.<vendor>`` block: where ``apimon billing push`` sends usage."""

    vendor: PushVendor
    endpoint: str  # API base URL (checked against the endpoint allow-list at load time)
    meter: str  # Stripe event_name, Lago metric_code, OpenMeter CloudEvent type
    destination: str | None  # metadata key holding the vendor's customer/subscription/subject; None: subscriber id
    secret_env: str  # environment variable holding the credential
    secret: str | None = field(default=None, repr=False)  # its value (None if unset); never printed
    field: str = "requests"  # Lago property / OpenMeter data key carrying the count
    source: str = "apimon"  # OpenMeter CloudEvent source
    where: str = ""  # FILE:LINE:COL of the block, for located errors at push time

    def destination_of(self, sub: Subscriber) -> str | None:
        if self.destination is None:
            return sub.id
        return sub.metadata_dict.get(self.destination) or None


@dataclass(frozen=True)
class Billing:
    currency: str = "USD"
    period: BillingPeriod = "month"
    metric: Literal["success", "total"] = "success"
    push: tuple[PushSink, ...] = field(default=(), compare=False)

    def sink(self, vendor: str) -> PushSink | None:
        return next((s for s in self.push if s.vendor == vendor), None)


@dataclass(frozen=True)
class Target:
    provider: str  # a provider of the registry (providers/registry.py)
    settings: dict  # the provider's block (target.<provider>), env-substituted
    base_dir: str = "."  # directory of the first plan file (relative paths resolve here)


@dataclass(frozen=True)
class DesiredState:
    target: Target
    billing: Billing
    products: dict[str, Product]
    subscribers: dict[str, Subscriber]
    files: tuple[str, ...] = ()  # plan files it was loaded from
    events: object | None = None  # events.config.EventsConfig: the plan's `events` block, if any
    # fields whose value comes from the environment (${env:...}): (section, id, field), e.g. ("subscribers",
    # "acme", "metadata.customer_id"). Secrets: the diff shows them as "(sensitive)", before and after.
    secret_fields: frozenset[tuple[str, str, str]] = frozenset()
    data_files: tuple[str, ...] = ()  # CSV files of subscribers_from (saved plans check them too)


@dataclass(frozen=True)
class Unmanaged:
    """A gateway resource apimon did not create: reported, never touched."""

    kind: str  # a resource kind (reconcile.kinds): product, subscriber
    name: str
    detail: str = ""
    # the resource in the neutral model, when the provider can read it (used by adopt)
    resource: Product | Subscriber | None = field(default=None, compare=False)


@dataclass
class LiveState:
    """What the gateway holds, in the neutral model: a pure read, never filled in from the plan.

    ``products``/``subscribers`` hold only resources apimon owns, with what the gateway stores (fields it
    cannot store are left at their defaults and are never compared: see the provider's capabilities).
    ``handles`` keeps the provider's typed handle of each resource (AWS plan id, ETag, raw body...), needed to
    apply changes and never compared; ``facts`` is what the provider read beyond resources (an object of its
    own type, e.g. Apigee's organization settings) for its pure plan hooks.
    """

    products: dict[str, Product] = field(default_factory=dict)
    subscribers: dict[str, Subscriber] = field(default_factory=dict)
    unmanaged: list[Unmanaged] = field(default_factory=list)
    handles: dict[tuple[str, str], Any] = field(default_factory=dict)  # (kind, id) -> provider handle
    # subscriber id -> fingerprint of its live key value (sha256 hex prefix), where readable
    key_fingerprints: dict[str, str] = field(default_factory=dict)
    facts: Any = None

    def handle(self, kind: str, rid: str) -> Any:
        """The handle of a resource apimon owns, else of the unmanaged one of that name (adopting), or None."""
        return self.handles.get((kind, rid)) or self.handles.get((f"unmanaged-{kind}", rid))


@dataclass(frozen=True)
class UsageRow:
    """One day of one metric for one subscriber on one product, as reported by a gateway."""

    subscriber: str
    product: str
    day: str  # ISO date, UTC
    metric: str  # one of METRICS
    count: int
