"""products.<id>.max_concurrent: a positive integer, enforced by the local gateway; cloud targets warn."""

from __future__ import annotations

import textwrap
from pathlib import Path

from conftest import run_cli

from apimon_cli.planfile.loader import load_or_raise
from apimon_cli.planfile.writer import product_from_plan, product_to_plan

LOCAL = """
    apimon: 1
    target: {{provider: local, local: {{state_dir: state}}}}
    products:
      pro:
        display_name: Pro
        apis: [petstore]
        max_concurrent: {n}
    subscribers:
      acme: {{product: pro}}
    """


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def test_max_concurrent_loads_round_trips_and_is_a_diff_on_the_local_target(tmp_path):
    plan = write(tmp_path / "plan.yaml", LOCAL.format(n=8))
    product = load_or_raise([plan]).desired.products["pro"]
    assert product.max_concurrent == 8
    assert product_from_plan("pro", product_to_plan(product)) == product
    r = run_cli("apply", plan, "--auto-approve")
    assert r.code == 0, r.output
    assert "No changes" in run_cli("plan", plan).stdout or run_cli("plan", plan, "--detailed-exitcode").code == 0
    write(tmp_path / "plan.yaml", LOCAL.format(n=16))
    r = run_cli("plan", plan, "--detailed-exitcode")
    assert r.code == 2 and "max_concurrent" in r.stdout and "8" in r.stdout and "16" in r.stdout


def test_max_concurrent_must_be_a_positive_integer(tmp_path):
    for bad, expected in (("0", "must be a whole number >= 1; got 0"), ('"4"', "not a string")):
        plan = write(tmp_path / "plan.yaml", LOCAL.format(n=bad))
        r = run_cli("validate", plan)
        assert r.code == 1 and "products.pro.max_concurrent" in r.stderr and expected in r.stderr, r.stderr


def test_cloud_targets_warn_naming_field_and_provider(tmp_path):
    plan = write(
        tmp_path / "aws.yaml",
        """
        apimon: 1
        target: {provider: aws, aws: {region: us-east-1}}
        products:
          pro: {display_name: Pro, apis: [petstore/prod], max_concurrent: 8}
        """,
    )
    r = run_cli("validate", plan)
    assert r.code == 0, r.output
    warning = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "products.pro.max_concurrent" in warning[0] and "aws:" in warning[0]
    assert run_cli("validate", "--strict", plan).code == 1
