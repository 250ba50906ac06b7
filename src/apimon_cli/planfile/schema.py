"""The plan file's structure (format version 1) as pydantic models.

These models check shapes and types and generate ``plans/apimon-plan.schema.json``; cross-field rules
(burst >= rate, tier order, references between products and subscribers, provider capabilities) live in
``plan.checks``, where the message wording is ours.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model
from pydantic_core import PydanticCustomError

from ..billing.currency import MAX_AMOUNT_DIGITS, MAX_COUNT
from ..events.types import DEFAULT_QUOTA_ALERTS, EVENT_TYPES

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MAX_PRICE_PLACES = 12
# the bounds invoicing computes within (billing/currency.py): validate refuses what invoice could not price
_MAX_AMOUNT_TEXT = "999,999,999,999,999." + "9" * MAX_PRICE_PLACES


def _short(value: str, limit: int = 40) -> str:
    """repr() of a string, cut for a message: a 16 MiB value never ends up in one."""
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


def _too_large(got: str) -> PydanticCustomError:
    return PydanticCustomError(
        "money",
        "is too large: amounts are below 10^{digits} (at most {digits} digits before the point, up to {largest}) "
        "so that invoices can be computed exactly; got {got}",
        {"digits": MAX_AMOUNT_DIGITS, "largest": _MAX_AMOUNT_TEXT, "got": got},
    )


def _money(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise PydanticCustomError(
            "money",
            'must be a money amount, a quoted decimal like "29.00" or an integer; got {got}',
            {"got": f"the boolean {str(value).lower()} (yes/no/on/off are booleans in YAML)"},
        )
    if isinstance(value, float):
        raise PydanticCustomError(
            "money_float",
            'must be a quoted decimal or an integer, not a YAML float (floats are inexact); quote it: "{got}"',
            {"got": _float_text(value)},
        )
    if isinstance(value, int):
        if value < 0:
            raise PydanticCustomError("money", "must not be negative; got {got}", {"got": value})
        if value >= 10**MAX_AMOUNT_DIGITS:
            raise _too_large(str(value))
        return Decimal(value)
    if isinstance(value, str):
        text = value.strip()
        m = _PLAIN_DECIMAL.fullmatch(text)
        if not m:
            raise PydanticCustomError(
                "money",
                'must be a plain decimal amount like "0.001" (digits, an optional point and up to '
                "12 decimals); got {got}",
                {"got": _short(value)},
            )
        if text.startswith("-"):
            raise PydanticCustomError("money", "must not be negative; got {got}", {"got": _short(value)})
        # bounded on the text, before Decimal() converts it
        if len(m.group(1).lstrip("0")) > MAX_AMOUNT_DIGITS:
            raise _too_large(_short(value))
        places = len(m.group(2) or "") - 1 if m.group(2) else 0
        if places > MAX_PRICE_PLACES:
            raise PydanticCustomError(
                "money",
                "has {places} decimal places; at most {limit} are allowed; got {got}",
                {"places": places, "limit": MAX_PRICE_PLACES, "got": _short(value)},
            )
        return Decimal(text)
    raise PydanticCustomError(
        "money",
        'must be a money amount, a quoted decimal like "29.00" or an integer; got {got}',
        {"got": _kind(value)},
    )


_PLAIN_DECIMAL = re.compile(r"-?([0-9]+)(\.[0-9]+)?")


def _float_text(value: float) -> str:
    text = getattr(value, "text", None) or repr(value)  # yamlsrc keeps floats' source text
    if "e" not in text.lower():
        return text
    try:
        d = Decimal(text.replace("_", ""))
    except ArithmeticError:  # .inf, .nan, YAML 1.1 forms Decimal does not read
        return text
    exp = d.as_tuple().exponent
    # written out only when it is short: 1.0e+999999999 would be a billion digits
    if not d.is_finite() or not isinstance(exp, int) or d.adjusted() > MAX_AMOUNT_DIGITS or exp < -MAX_PRICE_PLACES:
        return text
    return format(d, "f")


Money = Annotated[
    Decimal,
    BeforeValidator(_money),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*0*\d{1,15}(\.\d{1,12})?\s*$"},
                {"type": "integer", "minimum": 0, "maximum": 10**MAX_AMOUNT_DIGITS - 1},
            ],
            "description": 'Exact amount: a string like "0.001" or an integer (never a float).',
        }
    ),
]


def _count(minimum: int):
    def check(value: Any) -> int:
        if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 19:
            raise PydanticCustomError(
                "count",
                "must be a whole number >= {minimum}, not a string; write {got} without quotes",
                {"minimum": minimum, "got": value.strip()},
            )
        if isinstance(value, bool) or not isinstance(value, int):
            raise PydanticCustomError(
                "count", "must be a whole number >= {minimum}; got {got}", {"minimum": minimum, "got": _kind(value)}
            )
        if value < minimum:
            raise PydanticCustomError(
                "count", "must be a whole number >= {minimum}; got {got}", {"minimum": minimum, "got": value}
            )
        if value > MAX_COUNT:
            raise PydanticCustomError(
                "count",
                "is too large: whole numbers go up to {largest} (2^63 - 1, what the ledger and the gateways "
                "store); got {got}",
                {"largest": f"{MAX_COUNT:,}", "got": value},
            )
        return value

    return check


PositiveInt = Annotated[
    int, BeforeValidator(_count(1)), WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_COUNT})
]
NonNegInt = Annotated[
    int, BeforeValidator(_count(0)), WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_COUNT})
]
_positive = _count(1)


def _up_to(value: Any) -> int | None:
    if isinstance(value, str) and value.strip() == "inf":
        return None
    if isinstance(value, float) and value == float("inf"):
        raise PydanticCustomError(
            "count",
            "must be a whole number >= 1, or inf for the last tier; write inf, not {got}",
            {"got": getattr(value, "text", ".inf")},
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError(
            "count", "must be a whole number >= 1, or inf for the last tier; got {got}", {"got": _kind(value)}
        )
    return _positive(value)


UpTo = Annotated[
    int | None,
    BeforeValidator(_up_to),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"const": "inf"}]}),
]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise PydanticCustomError(
            "text",
            "must be a string; got {got} (yes/no/on/off/true/false are booleans in YAML: quote the text)",
            {"got": _kind(value)},
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise PydanticCustomError("text", "must be a string; got {got} (quote it)", {"got": _kind(value)})
    raise PydanticCustomError("text", "must be a string; got {got}", {"got": _kind(value)})


def _metadata_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise PydanticCustomError(
        "text", "must be a string (metadata is free-form text: key: value); got {got}", {"got": _kind(value)}
    )


def _kind(value: Any) -> str:
    """How a value reads in a message: 'a list', 'the string "x"', 'the number 1.5'."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {getattr(value, 'text', None) or repr(value)}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    return type(value).__name__


Text = Annotated[str, BeforeValidator(_text), WithJsonSchema({"type": "string"})]
MetaValue = Annotated[
    str,
    BeforeValidator(_metadata_value),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
]


def _strict_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise PydanticCustomError("bool", "must be true or false (unquoted); got {got}", {"got": _kind(value)})


Bool = Annotated[bool, BeforeValidator(_strict_bool), WithJsonSchema({"type": "boolean"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Strict = _Strict  # the base of every plan-file block, providers' settings blocks included


class RateLimitSpec(_Strict):
    rate: PositiveInt = Field(description="Steady requests per second.")
    burst: PositiveInt = Field(description="Bucket size: requests allowed at once; >= rate.")


class QuotaSpec(_Strict):
    limit: PositiveInt
    period: Literal["day", "week", "month"] = "month"


class TierSpec(_Strict):
    up_to: UpTo = Field(description='Inclusive upper bound of the tier; "inf" for the last tier.')
    unit_price: Money | None = None
    flat_fee: Money | None = None


class PackageSpec(_Strict):
    size: PositiveInt
    price: Money
    round: Literal["up", "down"] = "up"


class PricingSpec(_Strict):
    model: Literal["free", "flat", "per_unit", "package", "graduated", "volume", "stairstep"]
    fee: Money | None = Field(None, description="Recurring fee per billing period.")
    setup_fee: Money | None = Field(None, description="Charged once, in a subscriber's first period.")
    included: NonNegInt = Field(0, description="Units covered by the fee, subtracted before the model.")
    unit_price: Money | None = None
    package: PackageSpec | None = None
    tiers: list[TierSpec] | None = None
    minimum: Money | None = None
    maximum: Money | None = None


def _duration(value: Any) -> str:
    from ..keys.durations import parse_duration

    if not isinstance(value, str):
        raise PydanticCustomError("duration", "must be a duration such as 30s, 15m, 24h or 7d; got {got}",
                                  {"got": _kind(value)})
    try:
        parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("duration", "{why}", {"why": str(exc)}) from None
    return value.strip()


Duration = Annotated[str, BeforeValidator(_duration),
                     WithJsonSchema({"type": "string", "pattern": r"^\s*\d{1,7}\s*[smhd]\s*$"})]


class KeySpec(_Strict):
    from_env: Text | None = Field(None, description="Name of the environment variable holding the key value to "
                                  "import. Rotate such a key by changing the variable and running `apimon apply`: "
                                  "the old value keeps working for `overlap`.")
    max_age: Duration | None = Field(None, description="Rotate the key when it is older than this (30s, 15m, 24h, "
                                     "7d): `plan` shows it, `apply` rotates it.")
    overlap: Duration | None = Field(None, description="How long the old key keeps working after a rotation "
                                     "(default: the product's key.overlap, else 24h).")


class ProductKeySpec(_Strict):
    overlap: Duration | None = Field(None, description="Default overlap of key rotations of this product's "
                                     "subscribers (default 24h).")
    max_age: Duration | None = Field(None, description="Default key.max_age of this product's subscribers.")


AUTH_SCHEMES = ("api_key", "oauth2", "jwt", "mtls")
_SCOPE_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")  # RFC 6749 §3.3 scope-token
_FINGERPRINT_RE = re.compile(r"^[0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2}){31}$")


class JwtSpec(_Strict):
    issuer: Text = Field(description="The issuer: the tokens' `iss` claim, exactly (e.g. https://login.example.com/).")
    jwks_uri: Text = Field(description="Where the issuer publishes its signing keys (https; a JWKS document).")
    audience: Text = Field(description="The tokens' `aud` must contain this value (e.g. api://petstore).")
    subscriber_claim: Text = Field("sub", description="The claim naming the subscriber id (default sub; azp, "
                                   "client_id or appid for client-credential tokens of many issuers).")


class OAuth2Spec(_Strict):
    token_ttl: Duration | None = Field(None, description="Lifetime of the access tokens the gateway issues "
                                       "(30s..24h, default 1h).")


class AuthEntrySpec(_Strict):
    """One entry of ``products.<id>.auth``: a scheme name, or ``jwt:`` / ``oauth2:`` with settings."""

    scheme: Literal["api_key", "oauth2", "jwt", "mtls"]
    jwt: JwtSpec | None = None
    oauth2: OAuth2Spec | None = None


def _auth_entry(value: Any) -> Any:
    allowed = "api_key, oauth2, jwt: {issuer, jwks_uri, audience}, mtls"
    if isinstance(value, str):
        if value == "jwt":
            raise PydanticCustomError("auth", "jwt needs its issuer: write `- jwt: {{issuer: URL, jwks_uri: URL, "
                                      "audience: TEXT}}`", {})
        if value in AUTH_SCHEMES:
            return {"scheme": value}
        raise PydanticCustomError("auth", "unknown credential scheme {got}; allowed: {allowed}",
                                  {"got": _short(value), "allowed": allowed})
    if isinstance(value, dict) and len(value) == 1:
        (name, settings), = value.items()
        if name in ("jwt", "oauth2"):
            return {"scheme": name, name: {} if settings is None and name == "oauth2" else settings}
        raise PydanticCustomError("auth", "unknown credential scheme {got}; allowed: {allowed}",
                                  {"got": _short(str(name)), "allowed": allowed})
    raise PydanticCustomError("auth", "must be a scheme name or one `jwt:`/`oauth2:` mapping ({allowed}); got {got}",
                              {"allowed": allowed, "got": _kind(value)})


_AUTH_ENTRY_SCHEMA = {"anyOf": [
    {"enum": ["api_key", "oauth2", "mtls"]},
    {"type": "object", "additionalProperties": False, "required": ["jwt"], "properties": {"jwt": {
        "type": "object", "additionalProperties": False, "required": ["issuer", "jwks_uri", "audience"],
        "properties": {"issuer": {"type": "string"}, "jwks_uri": {"type": "string"}, "audience": {"type": "string"},
                       "subscriber_claim": {"type": "string"}}}}},
    {"type": "object", "additionalProperties": False, "required": ["oauth2"], "properties": {"oauth2": {
        "type": ["object", "null"], "additionalProperties": False,
        "properties": {"token_ttl": {"type": "string"}}}}},
]}
AuthEntry = Annotated[AuthEntrySpec, BeforeValidator(_auth_entry), WithJsonSchema(_AUTH_ENTRY_SCHEMA)]


def _scope(value: Any) -> str:
    if not isinstance(value, str) or not _SCOPE_RE.fullmatch(value):
        raise PydanticCustomError("scope", "a scope is 1-128 printable characters without spaces, quotes or "
                                  "backslashes (RFC 6749 §3.3), e.g. read or orders:write; got {got}",
                                  {"got": _kind(value)})
    return value


Scope = Annotated[str, BeforeValidator(_scope), WithJsonSchema({"type": "string", "pattern": _SCOPE_RE.pattern})]


def _fingerprint(value: Any) -> str:
    if not isinstance(value, str) or not _FINGERPRINT_RE.fullmatch(value.strip()):
        raise PydanticCustomError("fingerprint", "must be a certificate's SHA-256 fingerprint: 64 hex digits, "
                                  "optionally in pairs separated by ':' (openssl x509 -noout -fingerprint -sha256); "
                                  "got {got}", {"got": _kind(value)})
    return value.strip().replace(":", "").lower()


Fingerprint = Annotated[str, BeforeValidator(_fingerprint),
                        WithJsonSchema({"type": "string", "pattern": _FINGERPRINT_RE.pattern})]


class ClientSecretSpec(_Strict):
    from_env: Text = Field(description="Name of the environment variable holding the OAuth 2.0 client secret.")


class ProductSpec(_Strict):
    display_name: Text
    description: Text = ""
    apis: list[Text] = Field(default_factory=list)
    rate_limit: RateLimitSpec | None = None
    quota: QuotaSpec | None = None
    pricing: PricingSpec = Field(default_factory=lambda: PricingSpec(model="free"))
    max_concurrent: PositiveInt | None = Field(
        None,
        description="Requests one subscriber may have in flight at once (local gateway; over it: 503 with "
        "Retry-After). Default: the gateway's bound (64).",
    )
    key: ProductKeySpec | None = Field(None, description="Defaults for the keys of this product's subscribers.")
    public: Bool = Field(
        True,
        description="Listed on the public pricing page (`apimon portal build`); false hides it there. "
        "Not a gateway field: it never changes what `apply` does.",
    )
    auth: list[AuthEntry] | None = Field(
        None, description="Credentials the product accepts (default [api_key]): api_key (x-api-key header), "
        "oauth2 (client credentials issued by the gateway: POST /oauth2/token), jwt: {issuer, jwks_uri, audience, "
        "subscriber_claim} (bearer tokens of an external issuer), mtls (a client certificate; local gateway only).")
    scopes: list[Scope] | None = Field(
        None, description="Scopes an oauth2 or jwt token must carry (all of them) to call this product's APIs.")


class SubscriberSpec(_Strict):
    product: Text
    email: Text | None = None
    enabled: Bool = True
    key: KeySpec | None = None
    metadata: dict[str, MetaValue] = Field(default_factory=dict)
    client_secret: ClientSecretSpec | None = Field(
        None, description="OAuth 2.0 client secret (oauth2 products): {from_env: VAR}; without one the local "
        "gateway's is generated by `apimon keys secret` (printed once), and Apigee keeps the consumer secret it "
        "generated.")
    client_cert_sha256: Fingerprint | None = Field(
        None, description="SHA-256 fingerprint of the subscriber's client certificate (mtls products).")


class SubscriberSourceSpec(_Strict):
    """One entry of ``subscribers_from``: a CSV file or a PostgreSQL query whose rows are subscribers.

    Columns (the CSV header, or the query's result columns): ``id`` (required), ``product`` (required),
    ``email`` (empty: none), ``enabled`` (true/false; empty: true), ``metadata.<key>`` (one column per
    metadata key; empty: no such key). Errors are located ``file.csv:ROW:COLUMN`` (the header is row 1)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True,
        json_schema_extra={"x-apimon-columns": {
            "id": "subscriber id (required): 1-63 characters of a-z, 0-9 and '-'",
            "product": "product id (required)",
            "email": "contact email (optional; empty: none)",
            "enabled": "true or false (optional; empty: true)",
            "metadata.<key>": "one column per metadata key (optional; empty: the subscriber has no such key)",
        }},
    )

    csv: Text | None = Field(None, description=(
        "A CSV file, relative to the plan file; UTF-8, header row: id, product, email, enabled, "
        "metadata.<key>... (id and product required)."))
    postgresql: Text | None = Field(None, description=(
        'A PostgreSQL connection URL, e.g. "${env:CRM_DATABASE_URL}"; needs `query`.'))
    query: Text | None = Field(None, description=(
        "With postgresql: a SELECT whose result columns are id, product, email, enabled, metadata.<key>... "
        "(read with a server-side cursor)."))


def _target_spec() -> type[BaseModel]:
    """``target``: ``provider`` plus one optional settings block per provider of the registry, each the
    provider's own model (``providers/<name>/settings.py``)."""
    from ..providers.registry import specs

    providers = specs()
    blocks: dict[str, Any] = {name: (s.settings_model() | None, None) for name, s in providers.items()}
    return create_model("TargetSpec", __base__=_Strict, provider=(Literal[tuple(providers)], ...), **blocks)


TargetSpec = _target_spec()


class SecretRef(_Strict):
    from_env: Text = Field(description="Name of the environment variable holding the secret (never the value).")


class StripePushSpec(_Strict):
    api_key: SecretRef = Field(description="Stripe secret key: {from_env: VAR}.")
    event_name: Text = Field(description="The event_name of the Stripe meter.")
    customer: Text = Field(description="Where each subscriber's Stripe customer id lives: metadata.<key>.")
    api_base: Text = Field("https://api.stripe.com", description="API base URL (see APIMON_ALLOW_ENDPOINTS).")


class LagoPushSpec(_Strict):
    api_url: Text = Field("https://api.getlago.com", description="Lago API URL (Lago Cloud or self-hosted).")
    api_key: SecretRef = Field(description="Lago API key: {from_env: VAR}.")
    metric_code: Text = Field(description="The billable metric's code (a sum_agg metric on `field`).")
    field: Text = Field("requests", description="The event property that carries the count.")
    subscription: Text = Field(description="Where each subscriber's Lago external_subscription_id lives.")


class OpenMeterPushSpec(_Strict):
    url: Text = Field("https://openmeter.cloud", description="OpenMeter API URL.")
    token: SecretRef = Field(description="OpenMeter API token: {from_env: VAR}.")
    type: Text = Field(description="The CloudEvent type the meter filters on.")
    subject: Text | None = Field(None, description="metadata.<key> holding the subject; default the subscriber id.")
    field: Text = Field("requests", description="The data property that carries the count (the meter's valueProperty).")
    source: Text = Field("apimon", description="CloudEvent source (events are deduplicated by id + source).")


class PushSpec(_Strict):
    stripe: StripePushSpec | None = None
    lago: LagoPushSpec | None = None
    openmeter: OpenMeterPushSpec | None = None


class BillingSpec(_Strict):
    currency: Text = "USD"
    period: Literal["month", "week"] = "month"
    metric: Literal["success", "total"] = "success"
    push: PushSpec | None = Field(None, description="Billing platforms `apimon billing push` sends usage to.")


class KafkaSecuritySpec(_Strict):
    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol; SASL_SSL for MSK (SCRAM) and Confluent Cloud."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: Text | None = None
    password: SecretRef | None = None
    ca_file: Text | None = Field(None, description="PEM file of the CA that signed the brokers' certificates "
                                                   "(default: the system's CAs).")


class KafkaSpec(_Strict):
    bootstrap_servers: Text = Field(description="host:port[,host:port]")
    topic: Text = Field("apimon.events", description="One topic for every event type.")
    security: KafkaSecuritySpec | None = None


class WebhookSpec(_Strict):
    url: Text
    secret: SecretRef = Field(description="Standard Webhooks secret (whsec_ + base64) for webhook-signature.")
    types: list[Literal[EVENT_TYPES]] | None = Field(  # type: ignore[valid-type]
        None, description="Event types sent to the webhook; default: all but com.apimon.request."
    )


class EventsSpec(_Strict):
    kafka: KafkaSpec | None = None
    webhook: WebhookSpec | None = None
    quota_alerts: list[PositiveInt] = Field(
        default_factory=lambda: list(DEFAULT_QUOTA_ALERTS),
        description="Percentages of a subscriber's quota that raise com.apimon.quota.threshold (1-100).",
    )
    key_expiring: Duration = Field(
        "1h", description="How long before a rotated-out key stops working com.apimon.key.expiring is published "
                          "(once, by `keys finish` or `apply`): 30s, 15m, 24h, 7d; default 1h.")


class PlanHead(_Strict):
    """A plan file's top level; products and subscribers are validated one by one (``PlanFile`` for the
    JSON Schema), so that one bad product does not hide the problems of the others."""

    apimon: Literal[1]
    target: TargetSpec = None  # type: ignore[assignment]  # may be left out, but not null
    billing: BillingSpec = None  # type: ignore[assignment]
    events: EventsSpec = None  # type: ignore[assignment]
    products: dict[str, Any] = Field(default_factory=dict)
    subscribers: dict[str, Any] = Field(default_factory=dict)
    subscribers_from: list[SubscriberSourceSpec] = Field(default_factory=list)


class PlanFile(_Strict):
    """One apimon plan file (format version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="apimon plan file, format 1")

    apimon: Literal[1] = Field(description="Plan format version.")
    target: TargetSpec = Field(None, description="Where the plan is applied; in one of the files.")  # type: ignore[assignment]
    billing: BillingSpec = Field(None, description="Currency, billing period, billable metric.")  # type: ignore[assignment]
    events: EventsSpec = Field(None, description="CloudEvents to Kafka and a webhook.")  # type: ignore[assignment]
    products: dict[str, ProductSpec] = Field(default_factory=dict)
    subscribers: dict[str, SubscriberSpec] = Field(default_factory=dict)
    subscribers_from: list[SubscriberSourceSpec] = Field(
        default_factory=list,
        description=("Subscribers kept as data: CSV files and PostgreSQL queries, merged with `subscribers` "
                     "(an id defined twice is an error naming both places)."))


def json_schema() -> dict:
    schema = PlanFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://apimon.dev/schemas/apimon-plan-1.json"
    id_keys = {"propertyNames": {"pattern": ID_PATTERN}}
    schema["properties"]["products"].update(id_keys)
    schema["properties"]["subscribers"].update(id_keys)
    return schema
