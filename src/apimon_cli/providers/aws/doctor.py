"""`apimon doctor` on AWS: the credential chain's source, API Gateway answering read-only calls, and the
account's usage plans and API keys against API Gateway's default quotas in the region."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..diagnose import INFO, OK, PROBLEM, Check, quota, timed
from .client import AwsCallError

USAGE_PLANS_QUOTA = 300  # per account and region (API Gateway's default quota, adjustable)
API_KEYS_QUOTA = 10_000  # per account and region (default, adjustable)

_SOURCES = {
    "env": "environment variables (AWS_ACCESS_KEY_ID)",
    "shared-credentials-file": "the shared credentials file (~/.aws/credentials)",
    "config-file": "the AWS config file (~/.aws/config)",
    "assume-role": "an assumed role (profile role_arn)",
    "assume-role-with-web-identity": "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)",
    "sso": "AWS IAM Identity Center (SSO)",
    "custom-process": "a credential_process",
    "container-role": "the container's role (ECS/EKS)",
    "iam-role": "the instance's role (EC2 metadata)",
}
_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException",
           "InvalidSignatureException", "ExpiredTokenException")


def checks(provider: Any) -> Iterator[Check]:
    import boto3

    session = boto3.session.Session(profile_name=provider.profile, region_name=provider.region)
    creds = session.get_credentials()
    if creds is None:
        yield Check("credentials", PROBLEM, "no AWS credentials found: configure the standard chain (environment, "
                                            "~/.aws, SSO, a role) or target.aws.profile")
        return
    source = _SOURCES.get(creds.method, creds.method)
    profile = f", profile {provider.profile}" if provider.profile else ""
    yield Check("credentials", OK, f"AWS credentials from {source}{profile}")
    endpoint = provider.api.boto.meta.endpoint_url
    try:
        _, ms = timed(lambda: provider.api.call("GetRestApis", limit=1))
    except AwsCallError as exc:
        if exc.code in _DENIED:
            yield Check("endpoint", OK, f"{endpoint} answers")
            yield Check("permissions", PROBLEM, f"AWS refused GetRestApis ({exc.code}: {exc.aws_message}); "
                                                "the credentials need apigateway:GET")
        else:
            yield Check("endpoint", PROBLEM, f"{endpoint}: {exc}")
        return
    yield Check("endpoint", OK, f"{endpoint} answered GetRestApis in {ms:.0f} ms")
    counts: dict[str, int] = {}
    denied = []
    for op, what in (("GetUsagePlans", "usage plans"), ("GetApiKeys", "API keys")):
        try:
            counts[what] = len(provider.api.items(op))
        except AwsCallError as exc:
            if exc.code not in _DENIED:
                raise
            denied.append(f"{op} ({exc.code})")
    if denied:
        yield Check("permissions", PROBLEM, f"AWS refused {', '.join(denied)}; apimon reads REST APIs, usage "
                                            "plans and API keys (apigateway:GET)")
        return
    yield Check("permissions", OK, "read REST APIs, usage plans and API keys (read-only calls)")
    where = f" in {provider.region}"
    planned_plans = len(provider.desired.products)
    yield quota("usage plans", counts["usage plans"], USAGE_PLANS_QUOTA, where, planned_plans)
    yield quota("API keys", counts["API keys"], API_KEYS_QUOTA, where, len(provider.desired.subscribers))
    yield Check("quotas", INFO, f"limits are API Gateway's default quotas ({USAGE_PLANS_QUOTA} usage plans, "
                                f"{API_KEYS_QUOTA:,} API keys per account and region); raised ones are not read")
