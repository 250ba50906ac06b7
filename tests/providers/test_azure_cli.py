"""End to end through the real CLI (subprocesses) against the standalone Azure APIM fake.

validate -> plan -> apply -> plan (no changes) -> import -> plan on the import (no changes), with a product
and subscriptions apimon does not own present throughout and untouched at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from azure.mgmt.apimanagement import ApiManagementClient
from azure.mgmt.apimanagement.models import (
    PolicyContract,
    ProductContract,
    ProductUpdateParameters,
    SubscriptionCreateParameters,
)
from conftest import ROOT, allow_endpoints, run_cli, write_plan
from fakes.azure_apim import StubCredential, _auth_policy_class

RG, SVC = "rg", "apim"
KEY = "imported-key-0123456789abcdef"
PLAN = """
apimon: 1
target:
  provider: azure
  azure: {{subscription_id: sub-1, resource_group: rg, service: apim, endpoint: "{url}"}}
products:
  free:
    display_name: Free
    description: Try it
    apis: [petstore]
    rate_limit: {{rate: 5, burst: 10}}
    quota: {{limit: 1000, period: month}}
    pricing: {{model: free}}
  pro:
    display_name: Pro
    apis: [petstore, orders]
    rate_limit: {{rate: 50, burst: 50}}
    quota: {{limit: 100000, period: day}}
    pricing: {{model: per_unit, fee: "29.00", unit_price: "0.001"}}
subscribers:
  acme: {{product: pro, email: billing@acme.example}}
  bob: {{product: free, enabled: false}}
  imported: {{product: free, key: {{from_env: IMPORTED_KEY}}}}
"""
ENV = {"APIMON_AZURE_TOKEN": "test-token", "IMPORTED_KEY": KEY, "APIMON_AZURE_RETRY_BACKOFF": "0.01"}


class Fake:
    def __init__(self, url: str):
        self.url = url
        self.client = ApiManagementClient(StubCredential(), "sub-1", base_url=url, retry_total=0,
                                          authentication_policy=_auth_policy_class()("t"))

    def control(self, path: str, body: dict | None = None, method: str = "POST") -> dict:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"{}")

    def etags(self) -> dict:
        """ETags of what apimon does not own: they change on every write."""
        c = self.client
        return {
            "legacy": c.product.get_entity_tag(RG, SVC, "legacy", cls=lambda r, m, h: h["ETag"]),
            "legacy-policy": c.product_policy.get_entity_tag(RG, SVC, "legacy", "policy",
                                                            cls=lambda r, m, h: h["ETag"]),
            "legacy-alice": c.subscription.get_entity_tag(RG, SVC, "legacy-alice", cls=lambda r, m, h: h["ETag"]),
            "master": c.subscription.get_entity_tag(RG, SVC, "master", cls=lambda r, m, h: h["ETag"]),
            "links": sorted(a.name for a in c.product_api.list_by_product(RG, SVC, "legacy")),
        }


@pytest.fixture
def fake(monkeypatch):
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fakes" / "azure_apim.py"), "--port", "0",
                             "--seed-apis", "petstore,orders"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        monkeypatch.setitem(ENV, "APIMON_ALLOW_ENDPOINTS", allow_endpoints(url)["APIMON_ALLOW_ENDPOINTS"])
        f = Fake(url)
        c = f.client
        c.product.create_or_update(RG, SVC, "legacy", ProductContract(display_name="Legacy", state="published"))
        c.product_api.create_or_update(RG, SVC, "legacy", "petstore")
        c.product_policy.create_or_update(RG, SVC, "legacy", "policy", PolicyContract(
            value="<policies><inbound><base /><ip-filter action='allow' /></inbound></policies>"))
        c.subscription.create_or_update(RG, SVC, "legacy-alice", SubscriptionCreateParameters(
            scope="/products/legacy", display_name="Alice", state="active"))
        c.subscription.create_or_update(RG, SVC, "master", SubscriptionCreateParameters(
            scope="/apis", display_name="Built-in all-access subscription", state="active"))
        before = f.etags()
        yield f
        assert f.etags() == before, "apimon touched resources it does not own"
        c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def plan(tmp_path: Path, fake: Fake) -> Path:
    return write_plan(tmp_path / "plan.yaml", PLAN.format(url=fake.url))


def cli(*args: str, env: dict | None = None, cwd=None):
    return run_cli(*args, env={**ENV, **(env or {})}, cwd=cwd)


def test_validate_plan_apply_plan_import_plan(plan: Path, fake: Fake, tmp_path: Path):
    r = cli("validate", str(plan))
    assert r.code == 0 and "valid: 2 products, 3 subscribers, target azure" in r.stdout
    assert "2592000 s" in r.stderr  # the month quota warning

    r = cli("plan", str(plan), "--detailed-exitcode")
    assert r.code == 2, r.output
    assert "+ product free will be created" in r.stdout and "+ subscriber imported will be created" in r.stdout
    assert "= product legacy: unmanaged, left alone (no apimon-managed tag)" in r.stdout
    assert "= subscriber legacy-alice: unmanaged, left alone" in r.stdout
    assert "Plan: 5 to add, 0 to change, 0 to destroy." in r.stdout
    assert "pricing" not in r.stdout and "burst" not in r.stdout and "email" not in r.stdout

    r = cli("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.output
    assert "Apply complete: 5 changes applied." in r.stdout
    assert "created (key imported)" in r.stdout and "created (key generated by Azure)" in r.stdout
    assert KEY not in r.output

    r = cli("plan", str(plan), "--detailed-exitcode")
    assert r.code == 0 and "No changes." in r.stdout, r.output

    r = cli("keys", "show", "imported", "--plan", str(plan))
    assert r.code == 0 and r.stdout.strip() == KEY

    out = tmp_path / "imported.yaml"
    r = cli("import", "--provider", "azure", "--subscription-id", "sub-1", "--resource-group", "rg",
            "--service", "apim", "--endpoint", fake.url, "--out", str(out))
    assert r.code == 0, r.output
    # the unmanaged product is imported (to adopt); its foreign subscriptions are listed as not imported
    assert "Wrote 3 products and 3 subscribers" in r.stderr
    text = out.read_text()
    assert "\n  legacy:\n" in text and KEY not in text and "endpoint: " + fake.url in text
    assert "# not imported: subscriber 'legacy-alice'" in text and "# not imported: subscriber 'master'" in text
    r = cli("plan", str(out), "--detailed-exitcode")
    assert r.code == 0 and "No changes." in r.stdout, r.output


def test_change_since_plan_stops_apply_then_plan_shows_it(plan: Path, fake: Fake):
    assert cli("apply", str(plan), "--auto-approve").code == 0
    write_plan(plan, plan.read_text().replace("display_name: Pro", "display_name: Pro plan"))
    # someone edits the product between apimon's plan and its write: the write's If-Match fails
    fake.client.product.update(RG, SVC, "pro", if_match="*",
                               parameters=ProductUpdateParameters(description="edited by ops"))
    fake.control("/_fake/inject", {"method": "PATCH", "path_regex": "/products/pro$", "status": 412,
                                   "times": 1})
    r = cli("apply", str(plan), "--auto-approve")
    assert r.code == 1
    assert "product pro: FAILED" in r.output and "changed on the gateway since the plan read it" in r.output
    assert "HTTP 412" in r.output and "Traceback" not in r.output

    r = cli("plan", str(plan), "--detailed-exitcode")
    assert r.code == 2
    assert '~ description: "edited by ops" -> ""' in r.stdout
    assert '~ display_name: "Pro" -> "Pro plan"' in r.stdout
    assert cli("apply", str(plan), "--auto-approve").code == 0
    assert "No changes." in cli("plan", str(plan)).stdout


def test_foreign_policy_elements_need_force_policy(plan: Path, fake: Fake):
    assert cli("apply", str(plan), "--auto-approve").code == 0
    c = fake.client
    live = c.product_policy.get(RG, SVC, "pro", "policy", format="rawxml").value
    c.product_policy.create_or_update(RG, SVC, "pro", "policy", PolicyContract(
        value=live.replace("<outbound>", "<outbound>\n<set-header name='X-Tier' exists-action='override' />")))
    r = cli("plan", str(plan), "--detailed-exitcode")
    assert r.code == 0 and "note: product pro: the live policy has elements apimon did not write " \
                           "(outbound/set-header)" in r.stdout

    write_plan(plan, plan.read_text().replace("limit: 100000", "limit: 200000"))
    r = cli("plan", str(plan))
    assert "product pro: its live policy has elements apimon did not write (outbound/set-header)" in r.stderr
    r = cli("apply", str(plan), "--auto-approve")
    assert r.code == 1 and "refusing to replace its policy" in r.output and "--force-policy" in r.output
    assert "set-header" in c.product_policy.get(RG, SVC, "pro", "policy").value

    r = cli("apply", str(plan), "--auto-approve", env={"APIMON_FORCE_POLICY": "1"})
    assert r.code == 0, r.output
    assert "removed outbound/set-header" in r.stdout
    assert "set-header" not in c.product_policy.get(RG, SVC, "pro", "policy").value
    assert "No changes." in cli("plan", str(plan)).stdout


def test_faults_during_plan_and_apply_are_retried(plan: Path, fake: Fake):
    fake.control("/_fake/inject", {"method": "GET", "path_regex": "/productsByTags$", "status": 429, "times": 1,
                                   "retry_after": 0.1})
    fake.control("/_fake/inject", {"method": "PUT", "path_regex": "/products/free$", "status": 503, "times": 2})
    r = cli("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.output
    requests = fake.control("/_fake/requests", method="GET")["requests"]
    assert sum(1 for m, p, _ in requests if m == "PUT" and p.endswith("/products/free")) == 3
    assert "No changes." in cli("plan", str(plan)).stdout


def test_shipped_example_plan_is_valid(monkeypatch):
    from apimon_cli.planfile.loader import load_plans

    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    loaded = load_plans([str(ROOT / "plans" / "azure.yaml")], strict=True)
    assert loaded.desired is not None and not loaded.diagnostics, [str(d) for d in loaded.diagnostics]
    assert loaded.desired.target.provider == "azure" and len(loaded.desired.products) == 3
