"""Apigee's registry entry: what rate plans and API products keep, its plan checks and import options."""

from __future__ import annotations

from ..registry import Capabilities, ImportOption, NotStored, ProviderSpec, auth_not_stored

DEFAULT_ENDPOINT = "https://apigee.googleapis.com"

CAPABILITIES = Capabilities(
    not_stored=(
        *auth_not_stored("an Apigee API product", ("oauth2", "jwt", "mtls")),
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
