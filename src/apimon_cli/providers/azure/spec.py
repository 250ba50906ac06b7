"""Azure's registry entry: what API Management keeps, its plan checks and import options."""

from __future__ import annotations

from ..registry import Capabilities, ImportOption, NotStored, Partly, ProviderSpec, auth_not_stored, auth_partly

GATEWAY = "an API Management product"
#: why API Management cannot express a scheme, as the validation warning says it
WHY_NOT = {
    "oauth2": "API Management issues no client-credentials tokens; list jwt with the identity provider that "
              "issues them (e.g. Microsoft Entra ID), and API Management validates its tokens",
    "mtls": "API Management checks client certificates with its own policy and certificates, not per subscriber",
}

CAPABILITIES = Capabilities(
    not_stored=(
        # jwt and scopes are the product policy's validate-jwt (policy.py); the issuer's keys come from its
        # discovery document, so jwks_uri is not written; the subscriber is the subscription key, not a claim
        *auth_not_stored(GATEWAY, ("oauth2", "mtls"),
                         keeps=("auth", "auth.jwt.issuer", "auth.jwt.audience"), keeps_scopes=True),
        NotStored("product", "max_concurrent",
                  warning="the gateway has no bound on a subscriber's requests in flight; max_concurrent is enforced "
                          "only by `apimon gateway serve` (local target)"),
        NotStored("product", "pricing.*",
                  why="API Management has no prices: pricing lives in the plan, and apimon's invoices apply it"),
        NotStored("product", "rate_limit.burst",
                  warning="API Management's rate-limit policy has no burst; only rate is enforced (set burst equal "
                          "to rate to silence this)",
                  warn_when=lambda p: p.rate_limit is not None and p.rate_limit.burst != p.rate_limit.rate),
        NotStored("subscriber", "email", once=True,
                  warning="API Management subscriptions have no email; it is not written to Azure (apimon's "
                          "invoices and exports still use it)"),
        NotStored("subscriber", "metadata.*", once=True,
                  warning="API Management subscriptions have no metadata; it is not written to Azure (apimon's "
                          "invoices and exports still use it)"),
    ),
    partly=(
        # oauth2 beside jwt: the jwt issuer (Entra ID...) issues the client-credentials tokens, validate-jwt
        # checks them; oauth2 alone has no issuer on Azure
        *auth_partly(GATEWAY, ("oauth2", "mtls"), why_not=WHY_NOT, covered_by={"oauth2": "jwt"}),
        Partly("product", "scopes", warn_when=lambda p: bool(p.scopes) and p.accepts("oauth2")
               and not p.accepts("jwt"),
               warning="scopes are checked only in validate-jwt, for jwt tokens; this product lists oauth2 "
                       "without jwt, so API Management checks no scopes"),
    ),
)


def plan_checks(parts, r) -> None:
    for pid, product in parts.products.items():
        if product.accepts("jwt"):
            r.warn(("products", pid, "auth"),
                   "azure: API Management requires the subscription key (Ocp-Apim-Subscription-Key) on every call "
                   "to a product; validate-jwt checks the bearer token in addition, so callers send both "
                   "(the local gateway accepts either)")
        if product.quota and product.quota.period == "month":
            r.warn(("products", pid, "quota", "period"),
                   "azure: API Management quotas renew after a fixed number of seconds, not on calendar months; "
                   "month is written as 2592000 s (30 days)")


ARM_ENDPOINTS = {
    "public": "https://management.azure.com",
    "china": "https://management.chinacloudapi.cn",
    "usgovernment": "https://management.usgovcloudapi.net",
}


def credential_urls(settings: dict) -> list[tuple[str, str, str | None]]:
    """target.azure.endpoint receives the Azure bearer token: the cloud's Resource Manager, or listed."""
    url = settings.get("endpoint")
    return [("endpoint", url, ARM_ENDPOINTS.get(settings.get("cloud") or "public"))] if url else []


def target_id(settings: dict, base_dir: str) -> str:
    return f"azure:{settings.get('subscription_id')}/{settings.get('resource_group')}/{settings.get('service')}"


SPEC = ProviderSpec(
    name="azure",
    summary="Azure API Management: products, policies and subscriptions",
    provider="apimon_cli.providers.azure.provider:AzureProvider",
    settings="apimon_cli.providers.azure.settings:AzureTarget",
    target_id=target_id,
    capabilities=CAPABILITIES,
    plan_checks=plan_checks,
    import_options=(
        ImportOption("--subscription-id", "subscription_id", "subscription id", required=True),
        ImportOption("--resource-group", "resource_group", "resource group", required=True),
        ImportOption("--service", "service", "API Management service name", required=True),
        ImportOption("--cloud", "cloud", "Azure cloud", default="public", choices=("public", "china", "usgovernment")),
        ImportOption("--endpoint", "endpoint", "API base URL override"),
    ),
    credential_urls=credential_urls,
    doctor="apimon_cli.providers.azure.doctor:checks",
)
