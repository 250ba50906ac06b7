"""AWS's registry entry: what API Gateway keeps, what a key change replaces, its plan checks and options."""

from __future__ import annotations

from ...reconcile.changes import Replacement
from ..registry import Capabilities, ImportOption, NotStored, ProviderSpec, auth_not_stored

CAPABILITIES = Capabilities(
    not_stored=(
        # usage plans and API keys hold no credential scheme but the key: auth, scopes and client secrets warn
        *auth_not_stored("an API Gateway usage plan", ("oauth2", "jwt", "mtls"), why_not={
            "oauth2": "API Gateway issues no client-credentials tokens (an Amazon Cognito user pool does)",
            "jwt": "usage plans know API keys only; a Cognito or Lambda authorizer on the API's methods, outside "
                   "apimon, checks tokens",
            "mtls": "mutual TLS is a custom domain's truststore, not a usage plan's or an API key's",
        }),
        NotStored("product", "max_concurrent",
                  warning="the gateway has no bound on a subscriber's requests in flight; max_concurrent is enforced "
                          "only by `apimon gateway serve` (local target)"),
        NotStored("product", "display_name",
                  why="a usage plan is named by the product id and has no display name (import writes the id)"),
        NotStored("product", "pricing.*",
                  why="API Gateway has no prices: pricing lives in the plan, and apimon's invoices apply it"),
        NotStored("subscriber", "metadata.*", keeps=("metadata.customer_id",),
                  why="an API key keeps one customer id (customerId); other metadata stays in the plan for exports"),
    ),
    replacements=(
        Replacement("subscriber", "key", "AWS cannot change an imported key value", create_before_delete=True),
    ),
)


def plan_checks(parts, r) -> None:
    """AWS-specific rules on the plan (offline)."""
    for pid, product in parts.products.items():
        for i, api in enumerate(product.apis):
            if api.count("/") != 1 or api.startswith("/") or api.endswith("/"):
                r.error(("products", pid, "apis", i),
                        f'AWS APIs are written "rest-api-name-or-id/stage", e.g. "petstore/prod"; got {api!r}')
    for sid, sub in parts.subscribers.items():
        if sub.key_value is not None and not 20 <= len(sub.key_value) <= 128:
            r.error(("subscribers", sid, "key", "from_env"),
                    f"aws: API key values must be 20 to 128 characters; the value has {len(sub.key_value)}")


def target_id(settings: dict, base_dir: str) -> str:
    """The ledger's name for the account, known without a network call (so `apimon invoice` works
    offline): the endpoint override (target.aws.endpoint_url, else what boto3 is configured with), else the
    credentials profile, plus the region."""
    from .client import configured_endpoint

    region = settings.get("region")
    profile = settings.get("profile") or None
    endpoint = settings.get("endpoint_url") or configured_endpoint(region, profile)
    if endpoint:
        return f"{endpoint.rstrip('/')}/{region}"
    return f"profile:{profile or 'default'}/{region}"


def public_endpoint(region: str) -> str:
    """API Gateway's public endpoint of a region (the only endpoint_url a plan may set without listing it)."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://apigateway.{region}.{suffix}"


def credential_urls(settings: dict) -> list[tuple[str, str, str | None]]:
    """target.aws.endpoint_url receives SigV4-signed requests: the region's public endpoint, or listed."""
    url = settings.get("endpoint_url")
    return [("endpoint_url", url, public_endpoint(settings.get("region") or ""))] if url else []


SPEC = ProviderSpec(
    name="aws",
    summary="AWS API Gateway (REST APIs): usage plans and API keys",
    provider="apimon_cli.providers.aws.provider:AwsProvider",
    settings="apimon_cli.providers.aws.settings:AwsTarget",
    target_id=target_id,
    capabilities=CAPABILITIES,
    plan_checks=plan_checks,
    import_options=(
        ImportOption("--region", "region", "region", required=True),
        ImportOption("--profile", "profile", "credentials profile"),
        ImportOption("--endpoint-url", "endpoint_url", "endpoint override"),
    ),
    credential_urls=credential_urls,
    doctor="apimon_cli.providers.aws.doctor:checks",
)
