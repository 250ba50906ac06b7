"""products.<id>.public: a portal flag, not a gateway field (never a diff, never applied)."""

from __future__ import annotations

from conftest import run_cli, write_plan

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
products:
  pro:
    display_name: Pro
    public: %s
    pricing: {model: per_unit, unit_price: "0.001"}
subscribers:
  acme: {product: pro}
"""


def test_public_loads_and_defaults_to_true(tmp_path):
    from apimon_cli.planfile.loader import load_or_raise

    hidden = write_plan(tmp_path / "a.yaml", PLAN % "false")
    assert load_or_raise([str(hidden)]).desired.products["pro"].public is False
    shown = write_plan(tmp_path / "b.yaml", (PLAN % "true").replace("    public: true\n", ""))
    assert load_or_raise([str(shown)]).desired.products["pro"].public is True


def test_public_must_be_a_boolean_with_a_located_error(tmp_path):
    p = write_plan(tmp_path / "plan.yaml", PLAN % '"no"')
    r = run_cli("validate", str(p))
    assert r.code == 1
    assert "plan.yaml:6:13: error: products.pro.public: must be true or false (unquoted)" in r.stderr


def test_toggling_public_is_never_a_gateway_change(tmp_path):
    p = write_plan(tmp_path / "plan.yaml", PLAN % "true")
    assert run_cli("apply", str(p), "--auto-approve").code == 0
    write_plan(p, PLAN % "false")
    r = run_cli("plan", str(p), "--detailed-exitcode")
    assert r.code == 0, r.output
    assert "No changes" in r.stdout or "0 to add, 0 to change, 0 to destroy" in r.stdout
