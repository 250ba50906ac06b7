"""plans/apimon-plan.schema.json: current with `apimon schema`, and every shipped plan conforms to it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT, run_cli

from apimon_cli.planfile.schema import json_schema

SCHEMA_FILE = ROOT / "plans" / "apimon-plan.schema.json"
PLANS = sorted((ROOT / "plans").glob("*.yaml"))
CORPUS = ROOT / "tests" / "corpus"


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _env_for(path: Path) -> dict[str, str]:
    """Stand-in values for the ${env:NAME} references of a shipped plan (they are documented examples)."""
    text = path.read_text()
    env = {name: f"example-{name.lower()}" for name in re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", text)}
    # imported key values: long enough for every gateway (AWS wants 20 to 128 characters)
    env.update(
        {name: f"example-key-{name.lower()}-0123456789" for name in re.findall(r"from_env:\s*([A-Za-z_]\w*)", text)}
    )
    return env


def test_committed_schema_is_current():
    result = run_cli("schema")
    assert result.code == 0, result.stderr
    assert SCHEMA_FILE.read_text() == result.stdout, (
        "plans/apimon-plan.schema.json is stale; regenerate it: apimon schema > plans/apimon-plan.schema.json"
    )
    assert json.loads(result.stdout) == json_schema()


def test_schema_is_valid_draft_2020_12():
    _validator()


def test_there_are_plans_to_check():
    assert PLANS, "plans/*.yaml is empty"


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_shipped_plan_matches_the_json_schema(plan: Path):
    data = yaml.safe_load(plan.read_text())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in _validator().iter_errors(data)]
    assert errors == []


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_shipped_plan_validates_with_apimon(plan: Path):
    result = run_cli("validate", plan.name, cwd=plan.parent, env=_env_for(plan))
    assert result.code == 0, result.stderr
    assert "The plan is valid" in result.stdout
    assert " error: " not in result.stderr


@pytest.mark.parametrize(
    "case",
    [
        "006-unknown-top-level-key",
        "007-unknown-product-field",
        "008-rate-as-string",
        "009-negative-quota",
        "010-quota-period-year",
        "017-float-money",
        "019-product-id-uppercase",
        "034-boolean-as-money",
        "035-13-decimal-price",
        "049-scientific-money",
        "050-negative-money",
        "068-unknown-pricing-model",
        "004-apimon-2",
    ],
)
def test_schema_rejects_what_the_loader_rejects(case: str):
    """The JSON Schema is not a looser description: editors flag the same structural mistakes."""
    data = yaml.safe_load((CORPUS / f"{case}.yaml").read_text())
    assert list(_validator().iter_errors(data)), f"{case} passes the JSON Schema"


def test_schema_allows_inf_only_as_a_string_and_money_only_as_string_or_integer():
    v = _validator()
    base = {"apimon": 1, "target": {"provider": "local"}}

    def product(pricing: dict) -> dict:
        return {**base, "products": {"p": {"display_name": "P", "pricing": pricing}}}

    ok = product(
        {"model": "graduated", "tiers": [{"up_to": 10, "unit_price": "0.1"}, {"up_to": "inf", "unit_price": 1}]}
    )
    assert not list(v.iter_errors(ok))
    assert list(v.iter_errors(product({"model": "per_unit", "unit_price": 0.5})))
    assert list(v.iter_errors(product({"model": "per_unit", "unit_price": "0.0000000000001"})))
    assert list(v.iter_errors(product({"model": "graduated", "tiers": [{"up_to": float("inf")}]})))
