"""AWS API Gateway usage plans know API keys only: products' oauth2/jwt/mtls and scopes warn at validation,
naming the field and the provider (`--strict` makes them errors), and are never a difference (moto)."""

from __future__ import annotations

import boto3
import pytest
from conftest import run_cli, write_plan
from moto import mock_aws

from apimon_cli.planfile.loader import load_plans
from apimon_cli.reconcile.engine import apply_changes, make_plan

JWT = "{jwt: {issuer: 'https://login.example.com/', jwks_uri: 'https://login.example.com/jwks', audience: api://x}}"
PLAN = """
apimon: 1
target: {{provider: aws, aws: {{region: us-east-1}}}}
products:
  p:
    display_name: P
    apis: [petstore/prod]
    auth: {auth}
{scopes}
subscribers:
  s: {{product: p, client_secret: {{from_env: S_SECRET}}, client_cert_sha256: "{cert}"}}
"""
CERT = "ab" * 32


def plan(tmp_path, auth: str, scopes: str = "    scopes: [read]") -> str:
    return str(write_plan(tmp_path / "p.yaml", PLAN.format(auth=auth, scopes=scopes, cert=CERT)))


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("S_SECRET", "s-secret_0123456789abcdef")


@pytest.mark.parametrize("auth, listed", [
    ("[api_key, oauth2]", "auth lists oauth2, which an API Gateway usage plan cannot express (oauth2: API Gateway "
                          "issues no client-credentials tokens"),
    (f"[{JWT}]", "auth lists jwt, which an API Gateway usage plan cannot express (jwt: usage plans know API keys "
                 "only"),
    (f"[oauth2, {JWT}, mtls]", "auth lists oauth2, jwt and mtls, which an API Gateway usage plan cannot express "
                               "(oauth2: "),
])
def test_aws_warns_about_each_scheme_it_cannot_express_and_strict_errors(tmp_path, auth, listed):
    loaded = load_plans([plan(tmp_path, auth)])
    warnings = [str(d) for d in loaded.warnings]
    auth_warning = [w for w in warnings if "products.p.auth: aws: " in w]
    assert len(auth_warning) == 1 and listed in auth_warning[0], warnings
    assert "enforced by `apimon gateway serve` (local target) only" in auth_warning[0]
    assert any("products.p.scopes: aws: token scopes cannot be expressed on an API Gateway usage plan" in w
               for w in warnings)
    strict = load_plans([plan(tmp_path, auth)], strict=True)
    assert strict.desired is None
    assert any("products.p.auth: aws: auth lists" in str(e) and "error" in str(e) for e in strict.errors)


def test_api_keys_only_is_silent_and_the_cli_strict_exit_code(tmp_path):
    quiet = load_plans([plan(tmp_path, "[api_key]", scopes="")])
    assert not [w for w in map(str, quiet.warnings) if ": aws: " in w], quiet.warnings
    path = plan(tmp_path, "[api_key, oauth2]")
    env = {"S_SECRET": "s-secret_0123456789abcdef"}
    r = run_cli("validate", path, env=env)
    assert r.code == 0 and "products.p.auth: aws: auth lists oauth2" in r.stderr
    r = run_cli("validate", path, "--strict", env=env)
    assert r.code == 1 and "products.p.auth: aws: auth lists oauth2" in r.stderr
    assert "s-secret_" not in r.output


def test_auth_fields_are_never_a_difference_on_aws(tmp_path, monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("apigateway", region_name="us-east-1")
        api = client.create_rest_api(name="petstore")["id"]
        root = client.get_resources(restApiId=api)["items"][0]["id"]
        client.put_method(restApiId=api, resourceId=root, httpMethod="GET", authorizationType="NONE")
        client.put_integration(restApiId=api, resourceId=root, httpMethod="GET", type="MOCK")
        client.create_deployment(restApiId=api, stageName="prod")
        path = plan(tmp_path, f"[api_key, oauth2, {JWT}, mtls]")
        run = make_plan([path])
        try:
            report = apply_changes(run.provider, run.changes.changes, run.live)
        finally:
            run.provider.close()
        assert not report.failed
        again = make_plan([path])
        again.provider.close()
        assert again.changes.changes == []
        write_plan(tmp_path / "p.yaml", (tmp_path / "p.yaml").read_text().replace("[read]", "[read, write]"))
        monkeypatch.setenv("S_SECRET", "another-secret_0123456789abcdef")
        again = make_plan([path])
        again.provider.close()
        assert again.changes.changes == []
