"""Apigee's registry entry: what rate plans and API products keep, its plan checks and import options."""

from __future__ import annotations

import re

from ..registry import Capabilities, ImportOption, NotStored, Partly, ProviderSpec, auth_not_stored, auth_partly

DEFAULT_ENDPOINT = "https://apigee.googleapis.com"

GATEWAY = "an Apigee API product"
WHY_NOT = {
    "jwt": "an API product has no issuer settings; a proxy's VerifyJWT policy checks such tokens",
    "mtls": "client certificates are checked by the environment group's TLS settings, not per developer app",
}
KEY_CHARS = re.compile(r"[A-Za-z0-9_-]{1,2048}")  # consumer keys and secrets (keys create refuses others)

CAPABILITIES = Capabilities(
    not_stored=(
        # auth: api_key and oauth2 in the product attribute apimon-auth (an app's credential is both an API key and
        # OAuth client credentials); scopes: the product's scopes; client_secret: the credential's consumer secret
        *auth_not_stored(GATEWAY, ("jwt", "mtls"), keeps=("auth",), keeps_scopes=True, keeps_secret=True),
        NotStored("product", "max_concurrent",
                  warning="the gateway has no bound on a subscriber's requests in flight; max_concurrent is enforced "
                          "only by `apimon gateway serve` (local target)"),
        NotStored("product", "pricing.included",
                  warning="rate plans have no included units; apimon's invoices apply them, Apigee's do not"),
        NotStored("product", "pricing.minimum",
                  warning="rate plans have no minimum; apimon's invoices apply it, Apigee's do not"),
        NotStored("product", "pricing.maximum",
                  warning="rate plans have no maximum; apimon's invoices apply it, Apigee's do not"),
    ),
    partly=(
        *auth_partly(GATEWAY, ("jwt", "mtls"), why_not=WHY_NOT),
        Partly("product", "scopes", warn_when=lambda p: bool(p.scopes) and not p.accepts("oauth2")
               and p.accepts("jwt"),
               warning="scopes are the API product's OAuth scopes, written only with oauth2; this product lists "
                       "jwt without oauth2, so Apigee checks no scopes"),
    ),
)


def plan_checks(parts, r) -> None:
    for pid, product in parts.products.items():
        base = ("products", pid)
        if product.quota and product.quota.period == "week":
            r.warn(base + ("quota", "period"),
                   "apigee: API product quotas have no week unit; written as an interval of 7 days "
                   "(rolling, not ISO calendar weeks)")
        p = product.pricing
        if p.model == "graduated" and any(t.flat_fee is not None for t in p.tiers):
            r.warn(base + ("pricing", "tiers"),
                   "apigee: BANDED rate plans have no per-tier flat fee; apimon's invoices apply it, Apigee's do not")
        if product.rate_limit:
            r.warn(base + ("rate_limit",),
                   "apigee: API products have no product-level rate limit (spike arrest lives in proxies); "
                   "recorded as product attributes, not enforced")
        if p.model in ("volume", "package"):
            r.warn(base + ("pricing", "model"),
                   f"apigee: rate plans cannot express model {p.model}; no rate plan is written (apimon's invoices "
                   "still use it)")
    for sid, sub in parts.subscribers.items():
        secret = sub.client_secret.value if sub.client_secret is not None else None
        if secret and not KEY_CHARS.fullmatch(secret):
            r.error(("subscribers", sid, "client_secret", "from_env"),
                    "apigee: consumer secrets may contain only letters, digits, '_' and '-' (at most 2 KB); the "
                    "client secret does not (e.g. `openssl rand -hex 32`)")
        if not sub.email:
            r.error(("subscribers", sid, "email"),
                    "apigee: developers need an email address; add email: to the subscriber")


def target_id(settings: dict, base_dir: str) -> str:
    endpoint = (settings.get("endpoint") or DEFAULT_ENDPOINT).rstrip("/")
    suffix = "" if endpoint == DEFAULT_ENDPOINT else f"@{endpoint}"
    return f"apigee:organizations/{settings.get('organization', '')}{suffix}"


def credential_urls(settings: dict) -> list[tuple[str, str, str | None]]:
    """target.apigee.endpoint receives the Google bearer token: the public API, or listed."""
    return [("endpoint", settings.get("endpoint") or DEFAULT_ENDPOINT, DEFAULT_ENDPOINT)]


SPEC = ProviderSpec(
    name="apigee",
    summary="Apigee X / hybrid: API products, rate plans, developers and apps",
    provider="apimon_cli.providers.apigee.provider:ApigeeProvider",
    settings="apimon_cli.providers.apigee.settings:ApigeeTarget",
    target_id=target_id,
    capabilities=CAPABILITIES,
    plan_checks=plan_checks,
    import_options=(
        ImportOption("--organization", "organization", "organization", required=True),
        ImportOption("--environment", "environments", "environment (repeatable)", required=True, multiple=True),
        ImportOption("--endpoint", "endpoint", "API base URL override", default=DEFAULT_ENDPOINT),
    ),
    credential_urls=credential_urls,
    doctor="apimon_cli.providers.apigee.doctor:checks",
)
