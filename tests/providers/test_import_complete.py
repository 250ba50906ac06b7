"""`apimon import` writes every subscriber `apimon plan` can see, or lists it under "not imported" with the
reason (issue 11 item 4), on AWS (moto behind AwsFake), Azure (the ARM fake) and Apigee (the Apigee fake),
through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, allow_endpoints, run_cli


def _accounted(tmp_path: Path, env: dict, imported: Path) -> tuple[dict, list[str]]:
    """(the imported subscribers, the header's not-imported lines), after checking that every subscriber the
    plan on the imported file sees is one or the other."""
    text = imported.read_text()
    doc = yaml.safe_load(text)
    subscribers = doc.get("subscribers") or {}
    skipped = [line[len("# not imported: "):] for line in text.splitlines() if line.startswith("# not imported: ")]
    r = run_cli("plan", str(imported), "--json", cwd=tmp_path, env=env)
    assert r.code == 0, r.output
    seen = {u["name"] for u in json.loads(r.stdout)["unmanaged"] if u["kind"] == "subscriber"}
    for name in seen:
        assert name in subscribers or any(line.startswith(f"subscriber {name!r}:") for line in skipped), \
            (name, subscribers, skipped)
    return subscribers, skipped


# ---------------------------------------------------------------- AWS


@pytest.fixture
def aws_fake():
    from fakes.aws_gateway import AwsFake

    with AwsFake() as fake:
        fake.add_rest_api("petstore", ["prod"])
        mc = fake.moto_client()
        legacy = mc.create_usage_plan(name="legacy", description="hand made")["id"]
        other = mc.create_usage_plan(name="other", description="hand made too")["id"]
        handmade = mc.create_api_key(name="handmade", enabled=True, customerId="cus_9")["id"]
        mc.create_usage_plan_key(usagePlanId=legacy, keyId=handmade, keyType="API_KEY")
        both = mc.create_api_key(name="both", enabled=True)["id"]
        for plan in (legacy, other):
            mc.create_usage_plan_key(usagePlanId=plan, keyId=both, keyType="API_KEY")
        mc.create_api_key(name="loose", enabled=True)
        yield fake


def test_aws_import_writes_keys_of_unmanaged_usage_plans(aws_fake, tmp_path):
    env = {"AWS_ENDPOINT_URL": aws_fake.endpoint_url}
    out = tmp_path / "imported.yaml"
    r = run_cli("import", "--provider", "aws", "--region", "us-east-1", "--out", str(out), cwd=tmp_path, env=env)
    assert r.code == 0, r.output
    subscribers, skipped = _accounted(tmp_path, env, out)
    # before: the plan was imported, its key was not, and the header did not say so
    assert subscribers["handmade"] == {"product": "legacy", "metadata": {"customer_id": "cus_9"}}
    assert "both" not in subscribers  # one product per plan subscriber: a key in two plans is not one
    assert any(line.startswith("subscriber 'both': API key") and "in 2 usage plans (legacy, other)" in line
               for line in skipped), skipped
    assert any(line.startswith("subscriber 'loose': API key") and "in no imported usage plan" in line
               for line in skipped), skipped
    assert "warning: not imported: subscriber 'loose'" in r.stderr
    r = run_cli("plan", str(out), "--detailed-exitcode", cwd=tmp_path, env=env)
    assert r.code == 0 and "subscriber handmade matches the plan but is not managed by apimon yet" in r.stdout
    r = run_cli("adopt", str(out), "--auto-approve", cwd=tmp_path, env=env)
    assert r.code == 0 and "subscriber handmade: adopted" in r.stdout, r.output
    assert run_cli("plan", str(out), "--detailed-exitcode", cwd=tmp_path, env=env).code == 0


# ---------------------------------------------------------------- Azure


@pytest.fixture
def azure_fake():
    from azure.mgmt.apimanagement import ApiManagementClient
    from azure.mgmt.apimanagement.models import ProductContract, SubscriptionCreateParameters
    from fakes.azure_apim import StubCredential, _auth_policy_class

    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fakes" / "azure_apim.py"), "--port", "0",
                             "--seed-apis", "petstore"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        c = ApiManagementClient(StubCredential(), "sub-1", base_url=url, retry_total=0,
                                authentication_policy=_auth_policy_class()("t"))
        c.product.create_or_update("rg", "apim", "legacy", ProductContract(display_name="Legacy", state="published"))
        c.product_api.create_or_update("rg", "apim", "legacy", "petstore")
        c.subscription.create_or_update("rg", "apim", "legacy-alice", SubscriptionCreateParameters(
            scope="/products/legacy", display_name="Alice", state="active"))
        c.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_azure_import_lists_subscriptions_it_cannot_adopt_and_imports_unmanaged_products(azure_fake, tmp_path):
    env = {"APIMON_AZURE_TOKEN": "test-token", **allow_endpoints(azure_fake)}
    out = tmp_path / "imported.yaml"
    r = run_cli("import", "--provider", "azure", "--subscription-id", "sub-1", "--resource-group", "rg",
                "--service", "apim", "--endpoint", azure_fake, "--out", str(out), cwd=tmp_path, env=env)
    assert r.code == 0, r.output
    subscribers, skipped = _accounted(tmp_path, env, out)
    assert subscribers == {}
    assert any(line.startswith("subscriber 'legacy-alice': subscription on product legacy, not created by apimon")
               and "cannot be adopted" in line for line in skipped), skipped
    # before: the unmanaged product was left out (its policy and APIs were read only for the plan's products)
    assert yaml.safe_load(out.read_text())["products"]["legacy"]["apis"] == ["petstore"]


# ---------------------------------------------------------------- Apigee


@pytest.fixture
def apigee_fake():
    from fakes.apigee import ApigeeFake

    with ApigeeFake(org="acme", environments=["prod"], proxies=["petstore"]) as fake:
        fake.add_product("legacy", environments=["prod"], quota="5")
        fake.add_developer("old@example.com")
        fake.add_app("old@example.com", "oldapp", api_products=["legacy"], consumer_key="legacykey-0123456789")
        fake.add_developer("two@example.com")
        fake.add_app("two@example.com", "oldapp", api_products=["legacy"], consumer_key="legacykey-abcdefghij")
        fake.add_app("two@example.com", "nokey", api_products=[], consumer_key="nokey-0123456789")
        yield fake


def test_apigee_import_writes_unmanaged_apps_or_says_why_not(apigee_fake, tmp_path):
    env = {"APIMON_APIGEE_TOKEN": "test-token", **allow_endpoints(apigee_fake.endpoint)}
    out = tmp_path / "imported.yaml"
    r = run_cli("import", "--provider", "apigee", "--organization", "acme", "--environment", "prod",
                "--endpoint", apigee_fake.endpoint, "--out", str(out), cwd=tmp_path, env=env)
    assert r.code == 0, r.output
    subscribers, skipped = _accounted(tmp_path, env, out)
    # before: no subscriber at all, and no word about the three apps `plan` lists
    assert subscribers == {"oldapp": {"product": "legacy", "email": "old@example.com"}}
    assert any(line.startswith("subscriber 'two@example.com/oldapp': another app") for line in skipped), skipped
    assert any(line.startswith("subscriber 'two@example.com/nokey': the app has no approved key") for line in skipped)
    text = out.read_text()
    assert "legacykey" not in text and "nokey-0123" not in text
    r = run_cli("plan", str(out), "--detailed-exitcode", cwd=tmp_path, env=env)
    assert r.code == 0 and "subscriber oldapp matches the plan but is not managed by apimon yet" in r.stdout
    r = run_cli("adopt", str(out), "--auto-approve", cwd=tmp_path, env=env)
    assert r.code == 0 and "subscriber oldapp: adopted" in r.stdout, r.output
    assert run_cli("plan", str(out), "--detailed-exitcode", cwd=tmp_path, env=env).code == 0
