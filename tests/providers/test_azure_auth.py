"""Products' credentials on Azure API Management: validate-jwt in the product policy, through the real
azure-mgmt-apimanagement SDK against the ARM fake (which parses the policy XML and refuses malformed
validate-jwt elements like the service), compared as XML, read back by import; and the validation warnings
for what API Management cannot express."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.apimanagement.models import PolicyContract, ProductContract
from conftest import allow_endpoints, run_cli, write_plan
from fakes.azure_apim import AzureApimFake, format_policy_xml

from apimon_cli.model import JwtIssuer, Product, Quota, RateLimit
from apimon_cli.planfile.loader import load_plans
from apimon_cli.providers.azure.policy import (
    TokenCheck,
    discovery_url,
    generate_policy,
    policies_equal,
    read_policy,
    scope_claim,
    token_check,
)
from apimon_cli.reconcile.engine import apply_changes, make_plan

RG, SVC = "rg", "apim"
ISSUER = "https://login.example.com/"
JWKS = "https://login.example.com/.well-known/jwks.json"

PLAN = """
apimon: 1
target:
  provider: azure
  azure: {{subscription_id: sub-1, resource_group: rg, service: apim, endpoint: "{url}"}}
products:
  pro:
    display_name: Pro
    apis: [petstore]
    rate_limit: {{rate: 50, burst: 50}}
    quota: {{limit: 100000, period: day}}
    auth:
      - api_key
      - jwt:
          issuer: {issuer}
          jwks_uri: {jwks}
          audience: "api://petstore?v=1&x=2"
          subscriber_claim: azp
    scopes: [write, read]
  basic:
    display_name: Basic
    apis: [petstore]
subscribers:
  acme: {{product: pro}}
"""


@pytest.fixture(autouse=True)
def env(monkeypatch):
    for name in ("APIMON_FORCE_POLICY", "APIMON_AZURE_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APIMON_AZURE_TOKEN", "test-token")
    monkeypatch.setenv("APIMON_AZURE_RETRY_BACKOFF", "0.01")


@pytest.fixture
def fake(monkeypatch):
    with AzureApimFake(subscription_id="sub-1", resource_group=RG, service=SVC) as f:
        monkeypatch.setenv("APIMON_ALLOW_ENDPOINTS", allow_endpoints(f.base_url)["APIMON_ALLOW_ENDPOINTS"])
        f.add_api("petstore", "Petstore", "petstore")
        yield f


@pytest.fixture
def plan(tmp_path, fake):
    return write_plan(tmp_path / "plan.yaml", PLAN.format(url=fake.base_url, issuer=ISSUER, jwks=JWKS))


def apply(path):
    run = make_plan([str(path)])
    try:
        return run, apply_changes(run.provider, run.changes.changes, run.live)
    finally:
        run.provider.close()


def changes_of(path) -> list[tuple[str, str, str, tuple[str, ...]]]:
    run = make_plan([str(path)])
    run.provider.close()
    return [(c.action, c.kind, c.id, tuple(f.field for f in c.fields)) for c in run.changes.changes]


def validate_jwt(fake, pid: str) -> ET.Element | None:
    """The validate-jwt element of a product's policy as the fake stores it (parsed)."""
    root = ET.fromstring(fake.policies[pid]["value"])
    return root.find("inbound/validate-jwt")


def jwt_product(**kw) -> Product:
    base = dict(id="pro", display_name="Pro", auth=("api_key", "jwt"), scopes=("read", "write"),
                jwt=JwtIssuer(ISSUER, JWKS, "api://petstore", "azp"))
    return Product(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ the policy


def test_generated_validate_jwt_is_apims_documented_shape_and_reads_back():
    token = token_check(jwt_product())
    xml = generate_policy(RateLimit(5, 5), Quota(10, "day"), token)
    live = format_policy_xml(xml)  # accepted by the fake's checks, re-formatted like the service
    root = ET.fromstring(live)
    inbound = [el.tag for el in root.find("inbound")]
    assert inbound == ["base", "validate-jwt", "rate-limit", "quota"]  # the token first: no quota spent without one
    el = root.find("inbound/validate-jwt")
    assert el.attrib == {"header-name": "Authorization", "failed-validation-httpcode": "401",
                         "failed-validation-error-message": "Unauthorized: the bearer token is missing or invalid",
                         "require-scheme": "Bearer", "clock-skew": "60"}
    assert [c.tag for c in el] == ["openid-config", "audiences", "issuers", "required-claims"]
    assert el.find("openid-config").attrib == {"url": "https://login.example.com/.well-known/openid-configuration"}
    assert [a.text for a in el.findall("audiences/audience")] == ["api://petstore"]
    assert [i.text for i in el.findall("issuers/issuer")] == [ISSUER]
    claim = el.find("required-claims/claim")
    assert claim.attrib == {"name": "scope", "match": "all", "separator": " "}
    assert [v.text for v in claim.findall("value")] == ["read", "write"]

    reading = read_policy(live)
    assert reading.foreign == [] and reading.token == TokenCheck(ISSUER, "api://petstore", ("read", "write"), JWKS)
    assert reading.model_auth()["jwt"] == JwtIssuer(ISSUER, JWKS, "api://petstore")
    assert policies_equal(xml, live)
    assert not policies_equal(xml, generate_policy(RateLimit(5, 5), Quota(10, "day"),
                                                   token_check(jwt_product(scopes=("read",)))))


def test_discovery_url_and_scope_claim_follow_the_issuer():
    assert discovery_url("https://login.example.com/") == "https://login.example.com/.well-known/openid-configuration"
    assert discovery_url("https://login.microsoftonline.com/t1/v2.0") == \
        "https://login.microsoftonline.com/t1/v2.0/.well-known/openid-configuration"
    assert scope_claim("https://login.microsoftonline.com/t1/v2.0") == "scp"  # Entra ID access tokens
    assert scope_claim("https://sts.windows.net/t1/") == "scp"
    assert scope_claim("https://contoso.ciamlogin.com/t1/v2.0") == "scp"
    assert scope_claim("https://dev-1.us.auth0.com/") == "scope"
    entra = jwt_product(jwt=JwtIssuer("https://login.microsoftonline.com/t1/v2.0", JWKS, "api://x"))
    root = ET.fromstring(format_policy_xml(generate_policy(None, None, token_check(entra))))
    assert root.find("inbound/validate-jwt/required-claims/claim").get("name") == "scp"
    assert read_policy(ET.tostring(root, encoding="unicode")).token.scopes == ("read", "write")


def test_only_jwt_is_expressed_oauth2_and_mtls_alone_write_no_token_check():
    assert token_check(jwt_product(auth=("api_key", "oauth2"), jwt=None)) is None
    assert token_check(jwt_product(auth=("mtls",), jwt=None)) is None
    assert token_check(jwt_product(auth=("oauth2", "jwt"))) is not None


def test_hand_edited_validate_jwt_is_foreign_and_named():
    live = generate_policy(None, None, token_check(jwt_product()))
    edited = live.replace('<issuers>', '<issuers>\n\t\t\t\t<issuer>https://evil.example/</issuer>')
    reading = read_policy(edited)
    assert reading.token is None
    assert reading.foreign == ["inbound/validate-jwt/issuers (apimon writes exactly one <issuer>)"]
    other = read_policy(live.replace("login.example.com/.well-known/openid", "other.example/.well-known/openid"))
    assert other.foreign == ["inbound/validate-jwt/openid-config (not the issuer's discovery document "
                             "https://login.example.com/.well-known/openid-configuration)"]
    extra = read_policy(live.replace('clock-skew="60"', 'clock-skew="300"'))
    assert extra.foreign == ["inbound/validate-jwt@clock-skew"]
    keys = read_policy(live.replace("<audiences>", '<issuer-signing-keys><key>AAAA</key></issuer-signing-keys>'
                                                   "<audiences>"))
    assert keys.foreign[0].startswith("inbound/validate-jwt children (openid-config, issuer-signing-keys")


@pytest.mark.parametrize("element, message", [
    ('<validate-jwt><openid-config url="https://a.example/.well-known/openid-configuration" /></validate-jwt>',
     "exactly one of 'header-name', 'query-parameter-name' or 'token-value'"),
    ('<validate-jwt header-name="Authorization"><issuers><issuer>x</issuer></issuers>'
     '<audiences><audience>y</audience></audiences></validate-jwt>', "out of order"),
    ('<validate-jwt header-name="Authorization"><openid-config url="/relative" /></validate-jwt>',
     "absolute http(s) URL"),
    ('<validate-jwt header-name="Authorization"><audiences /></validate-jwt>', "non-empty 'audience'"),
    ('<validate-jwt header-name="Authorization" failed-validation-httpcode="nope" />',
     "failed-validation-httpcode"),
    ('<validate-jwt header-name="Authorization"><jwks-uri url="https://a.example/jwks" /></validate-jwt>',
     "not expected in 'validate-jwt'"),
    ('<validate-jwt header-name="Authorization"><required-claims><claim match="all"><value>r</value></claim>'
     '</required-claims></validate-jwt>', "'name' attribute"),
])
def test_the_fake_refuses_malformed_validate_jwt_like_the_service(fake, element, message):
    client = fake.client()
    client.product.create_or_update(RG, SVC, "p", ProductContract(display_name="P", state="published"))
    doc = f"<policies><inbound><base />{element}</inbound><backend><base /></backend></policies>"
    with pytest.raises(HttpResponseError) as err:
        client.product_policy.create_or_update(RG, SVC, "p", "policy", PolicyContract(value=doc, format="rawxml"))
    assert err.value.status_code == 400 and message in str(err.value)
    outbound = ('<policies><inbound><base /></inbound><outbound><base /><validate-jwt header-name="Authorization" />'
                "</outbound></policies>")
    with pytest.raises(HttpResponseError, match="inbound only"):
        client.product_policy.create_or_update(RG, SVC, "p", "policy", PolicyContract(value=outbound))
    client.close()


# ------------------------------------------------------------------------------------------------ the loop


def test_apply_writes_validate_jwt_then_no_changes_then_scope_and_issuer_changes(plan, fake):
    run, report = apply(plan)
    assert not report.failed, [o.message for o in report.failed]
    pro = next(o for o in report.outcomes if o.change.id == "pro")
    assert "validate-jwt https://login.example.com/ scopes read write" in pro.message
    el = validate_jwt(fake, "pro")
    assert el is not None and el.find("audiences/audience").text == "api://petstore?v=1&x=2"  # escaped, read back
    assert [v.text for v in el.findall("required-claims/claim/value")] == ["read", "write"]
    assert "basic" not in fake.policies  # no limits, no token check: no policy
    assert changes_of(plan) == []  # converged: the re-formatted live policy compares equal as XML

    # jwks_uri and subscriber_claim are not written to API Management: changing them is never a diff
    text = plan.read_text().replace(JWKS, "https://keys.example.com/jwks").replace("azp", "sub")
    write_plan(plan, text)
    assert changes_of(plan) == []

    etag = fake.policies["pro"]["etag"]
    write_plan(plan, text.replace("scopes: [write, read]", "scopes: [read]"))
    assert changes_of(plan) == [("update", "product", "pro", ("scopes",))]
    apply(plan)
    assert fake.policies["pro"]["etag"] != etag
    assert [v.text for v in validate_jwt(fake, "pro").findall("required-claims/claim/value")] == ["read"]
    assert changes_of(plan) == []

    text = plan.read_text().replace(ISSUER, "https://idp.example.org/")
    write_plan(plan, text)
    assert changes_of(plan) == [("update", "product", "pro", ("auth.jwt.issuer",))]
    apply(plan)
    assert validate_jwt(fake, "pro").find("openid-config").get("url") == \
        "https://idp.example.org/.well-known/openid-configuration"
    assert changes_of(plan) == []

    # API keys only again: the policy keeps its limits, without the token check
    lines = plan.read_text().split("\n")
    start = lines.index("    auth:")
    end = next(i for i, line in enumerate(lines) if line.startswith("    scopes:"))
    write_plan(plan, "\n".join(lines[:start] + lines[end + 1:]))
    assert changes_of(plan) == [("update", "product", "pro", ("auth", "auth.jwt.audience", "auth.jwt.issuer",
                                                               "scopes"))]
    apply(plan)
    assert validate_jwt(fake, "pro") is None and "<rate-limit" in fake.policies["pro"]["value"]
    assert changes_of(plan) == []


def test_a_token_check_alone_makes_a_policy_and_removing_it_deletes_it(plan, fake):
    text = plan.read_text()
    write_plan(plan, text.replace("    rate_limit: {rate: 50, burst: 50}\n    quota: {limit: 100000, period: day}\n",
                                  ""))
    apply(plan)
    assert validate_jwt(fake, "pro") is not None and "<quota" not in fake.policies["pro"]["value"]
    assert changes_of(plan) == []


def test_oauth2_and_mtls_are_not_written_and_never_a_difference(plan, fake):
    apply(plan)
    # oauth2 beside jwt and mtls change nothing API Management holds
    text = plan.read_text().replace("      - api_key\n", "      - api_key\n      - oauth2\n      - mtls\n")
    write_plan(plan, text)
    assert changes_of(plan) == []


def test_import_reads_the_token_check_back_into_the_plan(plan, fake, tmp_path):
    apply(plan)
    out = tmp_path / "imported.yaml"
    env = {"APIMON_AZURE_TOKEN": "t", **allow_endpoints(fake.base_url)}
    r = run_cli("import", "--provider", "azure", "--subscription-id", "sub-1", "--resource-group", RG,
                "--service", SVC, "--endpoint", fake.base_url, "--out", str(out), env=env)
    assert r.code == 0, r.output
    loaded = load_plans([str(out)])
    assert loaded.desired is not None, [str(d) for d in loaded.errors]
    pro = loaded.desired.products["pro"]
    assert pro.auth == ("api_key", "jwt") and pro.scopes == ("read", "write")
    assert pro.jwt == JwtIssuer(ISSUER, JWKS, "api://petstore?v=1&x=2")  # jwks_uri from apimon's comment
    assert loaded.desired.products["basic"].auth == ("api_key",)
    r = run_cli("plan", str(out), "--detailed-exitcode", env=env)
    assert r.code == 0 and "No changes." in r.stdout, r.output


# ------------------------------------------------------------------------------------------------ validation

WARN = """
apimon: 1
target: {{provider: azure, azure: {{subscription_id: s, resource_group: g, service: n}}}}
products:
  p:
    display_name: P
    auth: {auth}
    scopes: [read]
"""
JWT = f"{{jwt: {{issuer: '{ISSUER}', jwks_uri: '{JWKS}', audience: api://x}}}}"


@pytest.mark.parametrize("auth, expected", [
    ("[api_key, oauth2]", ["products.p.auth: azure: auth lists oauth2, which an API Management product cannot "
                           "express (oauth2: API Management issues no client-credentials tokens",
                           "products.p.scopes: azure: scopes are checked only in validate-jwt"]),
    ("[api_key, mtls]", ["products.p.auth: azure: auth lists mtls, which an API Management product cannot express",
                         "products.p.scopes: scopes are checked on oauth2 and jwt tokens only"]),
    (f"[oauth2, {JWT}]", ["products.p.auth: azure: API Management requires the subscription key"]),
    (f"[api_key, {JWT}, mtls]", ["products.p.auth: azure: auth lists mtls",
                                 "products.p.auth: azure: API Management requires the subscription key"]),
])
def test_azure_warns_naming_the_field_and_the_provider_and_strict_errors(tmp_path, auth, expected):
    path = write_plan(tmp_path / "p.yaml", WARN.format(auth=auth))
    loaded = load_plans([str(path)])
    warnings = [str(d) for d in loaded.warnings]
    assert len(warnings) == len(expected), warnings
    for want in expected:
        assert any(want in w for w in warnings), (want, warnings)
    strict = load_plans([str(path)], strict=True)
    assert strict.desired is None and len(strict.errors) == len(expected)
