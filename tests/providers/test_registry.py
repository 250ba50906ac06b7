"""The provider registry: each provider declares itself once; the schema, the checks and the CLI read it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import run_cli, write_plan

from apimon_cli.planfile.loader import load_plans
from apimon_cli.planfile.schema import json_schema
from apimon_cli.providers.registry import names, spec, specs


def test_every_provider_package_is_registered_in_order():
    assert names() == ["aws", "azure", "apigee", "local"]
    assert json_schema()["$defs"]["TargetSpec"]["properties"]["provider"]["enum"] == names()
    for name, s in specs().items():
        assert s.name == name and s.settings_model().__name__ in json_schema()["$defs"]


def test_the_registry_and_the_plan_schema_import_no_cloud_sdk():
    code = ("import sys; from apimon_cli.providers.registry import specs; from apimon_cli.planfile import schema; "
            "import apimon_cli.cli; [s.settings_model() for s in specs().values()]; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'azure', 'google', "
            "'urllib3', 'requests')]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ["aws", "azure", "apigee", "local"])
def test_what_a_provider_does_not_store_is_never_compared(name):
    caps = spec(name).capabilities
    for gap in caps.not_stored:
        field = gap.field.replace("*", "anything")
        assert not caps.stores(gap.kind, field), (name, gap.field)
        for kept in gap.keeps:
            assert caps.stores(gap.kind, kept)
        assert gap.warning or gap.why, f"{name}: say why {gap.field} needs no warning"


AZURE = """
apimon: 1
target: {provider: azure, azure: {subscription_id: s, resource_group: g, service: n}}
products:
  pro: {display_name: Pro, rate_limit: {rate: 5, burst: 5}}
subscribers:
  acme: {product: pro, email: a@acme.example, metadata: {customer_id: c1}}
  bob: {product: pro, email: b@bob.example}
  carol: {product: pro, email: c@carol.example}
"""


def test_azure_warns_where_a_plan_sets_what_it_does_not_store(tmp_path):
    # one declaration serves stores() and the warnings: Azure keeps no email and no metadata
    path = write_plan(tmp_path / "azure.yaml", AZURE)
    loaded = load_plans([str(path)])
    warnings = [str(d) for d in loaded.warnings]
    assert len(warnings) == 2, warnings  # once per field, counting the others
    assert any(":6:" in w and "subscribers.acme.email: azure: API Management subscriptions have no email" in w
               and "(2 other subscribers set it too)" in w for w in warnings)
    assert any("subscribers.acme.metadata: azure: API Management subscriptions have no metadata" in w
               and "other subscribers" not in w for w in warnings)
    strict = load_plans([str(path)], strict=True)
    assert strict.desired is None and len(strict.errors) == 2


def test_a_settings_block_is_required_when_its_model_has_required_fields(tmp_path):
    path = write_plan(tmp_path / "p.yaml", "apimon: 1\ntarget: {provider: apigee}\n")
    r = run_cli("validate", str(path))
    assert r.code == 1
    assert ("provider apigee needs its settings; add a `target.apigee` block with organization, environments"
            in r.stderr)
    assert run_cli("validate", str(write_plan(tmp_path / "l.yaml", "apimon: 1\ntarget: {provider: local}\n"))).code == 0


def test_import_options_come_from_the_registry():
    r = run_cli("import", "--help")
    assert r.code == 0
    for s in specs().values():
        for option in s.import_options:
            assert option.flag in r.stdout
    assert "--provider [aws|azure|apigee|local]" in r.stdout  # the registry's names, declared as choices
    assert "azure/apigee: API base URL override" in r.stdout  # one flag serves two providers
    r = run_cli("import", "--provider", "azure", "--service", "x")
    assert r.code == 1 and "error: import from azure needs --subscription-id, --resource-group" in r.stderr
    r = run_cli("import", "--provider", "kong")
    assert r.code == 1 and "'kong' is not one of 'aws', 'azure', 'apigee', 'local'" in r.stderr


def test_ledger_target_ids_are_known_offline(tmp_path):
    assert spec("azure").target_id({"subscription_id": "s", "resource_group": "g", "service": "n"}, ".") == \
        "azure:s/g/n"
    assert spec("apigee").target_id({"organization": "acme"}, ".") == "apigee:organizations/acme"
    assert spec("apigee").target_id({"organization": "acme", "endpoint": "http://x/"}, ".") == \
        "apigee:organizations/acme@http://x"
    assert spec("local").target_id({"state_dir": "st"}, str(tmp_path)) == str((tmp_path / "st").resolve())
    code = textwrap.dedent("""
        import os, sys
        os.environ.pop("AWS_ENDPOINT_URL", None); os.environ.pop("AWS_PROFILE", None)
        from apimon_cli.providers.registry import spec
        print(spec("aws").target_id({"region": "eu-west-1"}, "."))
        print(spec("aws").target_id({"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:1/"}, "."))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true"})
    assert proc.stdout.split() == ["profile:default/eu-west-1", "http://127.0.0.1:1/eu-west-1"], proc.stderr
