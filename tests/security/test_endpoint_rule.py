"""Issue 18.1: a URL that receives a credential comes from the plan only if it is the provider's public
default or a host listed outside the plan (APIMON_ALLOW_ENDPOINTS, --allow-endpoint); loopback only when
listed. A plan pointing an endpoint elsewhere is a located validation error, and nothing is sent."""

from __future__ import annotations

import pytest
from conftest import run_cli, write_plan
from listener import Listener

TOKENS = {"APIMON_AZURE_TOKEN": "azure-secret-token-123", "APIMON_APIGEE_TOKEN": "google-secret-token-456"}

TARGETS = {
    "aws": ("  provider: aws\n  aws: {{region: us-east-1, endpoint_url: '{url}'}}\n", "target.aws.endpoint_url", 4),
    "azure": ("  provider: azure\n  azure: {{subscription_id: s, resource_group: g, service: n, endpoint: '{url}'}}\n",
              "target.azure.endpoint", 4),
    "apigee": ("  provider: apigee\n  apigee: {{organization: acme, environments: [prod], endpoint: '{url}'}}\n",
               "target.apigee.endpoint", 4),
}


def plan_for(tmp_path, provider: str, url: str):
    target = TARGETS[provider][0].format(url=url)
    return write_plan(tmp_path / "plan.yaml", "apimon: 1\ntarget:\n" + target +
                      "products:\n  free: {display_name: Free, apis: [petstore/prod], pricing: {model: free}}\n"
                      "subscribers:\n  acme: {product: free, email: a@acme.example}\n")


@pytest.mark.parametrize("provider", sorted(TARGETS))
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_a_loopback_endpoint_not_listed_is_refused_and_never_contacted(tmp_path, provider, command):
    with Listener() as listener:
        plan = plan_for(tmp_path, provider, listener.url)
        r = run_cli(command, str(plan), env=TOKENS, timeout=60)
        assert r.code == 1, r.output
        field, line = TARGETS[provider][1], TARGETS[provider][2]
        assert f"{plan}:{line}:" in r.stderr and field in r.stderr, r.stderr
        assert f"APIMON_ALLOW_ENDPOINTS=127.0.0.1:{listener.port}" in r.stderr  # how to allow it
        assert listener.connections == 0 and listener.received == b""
    for secret in TOKENS.values():
        assert secret not in r.output


@pytest.mark.parametrize("provider", sorted(TARGETS))
def test_a_foreign_https_host_is_refused(tmp_path, provider):
    plan = plan_for(tmp_path, provider, "https://collector.attacker.example")
    r = run_cli("validate", str(plan), env=TOKENS)
    assert r.code == 1 and "not the vendor's public endpoint" in r.stderr
    assert "APIMON_ALLOW_ENDPOINTS=collector.attacker.example:443" in r.stderr


def test_listing_another_port_of_the_host_does_not_allow_it(tmp_path):
    with Listener() as listener:
        plan = plan_for(tmp_path, "apigee", listener.url)
        r = run_cli("plan", str(plan), env={**TOKENS, "APIMON_ALLOW_ENDPOINTS": f"127.0.0.1:{listener.port + 1}"})
        assert r.code == 1 and "target.apigee.endpoint" in r.stderr
        assert listener.connections == 0


@pytest.mark.parametrize("provider", sorted(TARGETS))
def test_the_public_default_needs_no_listing(tmp_path, provider):
    url = {"aws": "https://apigateway.us-east-1.amazonaws.com", "azure": "https://management.azure.com",
           "apigee": "https://apigee.googleapis.com"}[provider]
    r = run_cli("validate", str(plan_for(tmp_path, provider, url)), env=TOKENS)
    assert r.code == 0, r.output


def test_aws_public_endpoint_of_another_region_is_not_the_default(tmp_path):
    plan = plan_for(tmp_path, "aws", "https://apigateway.eu-west-1.amazonaws.com")
    r = run_cli("validate", str(plan))
    assert r.code == 1 and "target.aws.endpoint_url" in r.stderr


def test_allowed_by_env_or_flag_https_only_except_loopback(tmp_path):
    plan = plan_for(tmp_path, "azure", "https://arm-proxy.corp.example:8443")
    assert run_cli("validate", str(plan), env={"APIMON_ALLOW_ENDPOINTS": "arm-proxy.corp.example:8443"}).code == 0
    assert run_cli("--allow-endpoint", "arm-proxy.corp.example", "validate", str(plan)).code == 0
    # the flag is accepted after the command name too
    assert run_cli("validate", str(plan), "--allow-endpoint", "arm-proxy.corp.example:8443").code == 0
    r = run_cli("validate", str(plan_for(tmp_path, "azure", "http://arm-proxy.corp.example")),
                "--allow-endpoint", "arm-proxy.corp.example")
    assert r.code == 1 and "not https" in r.stderr
    r = run_cli("validate", str(plan_for(tmp_path, "azure", "http://127.0.0.1:9")), "--allow-endpoint", "127.0.0.1:9")
    assert r.code == 0, r.output
    r = run_cli("validate", str(plan), "--allow-endpoint", "not a host!")
    assert r.code == 1 and "--allow-endpoint" in r.stderr

