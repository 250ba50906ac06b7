"""Issue 19: `subscribers_from:` CSV and PostgreSQL sources: located errors, merge with YAML, no change when
a subscriber moves between YAML and CSV, the JSON Schema, `apimon import --subscribers-csv`."""

from __future__ import annotations

import os
import uuid

import pytest
from conftest import run_cli, write_plan

from apimon_cli.planfile.loader import load_plans
from apimon_cli.planfile.schema import json_schema

HEAD = """
    apimon: 1
    target: {provider: local, local: {state_dir: state}}
    products:
      gold:
        display_name: Gold
        apis: [petstore]
        rate_limit: {rate: 10, burst: 20}
        pricing: {model: free}
"""


def _csv(path, text: str):
    path.write_text(text)
    return path


def test_csv_subscribers_load_with_their_fields(tmp_path):
    (tmp_path / "data").mkdir()
    _csv(tmp_path / "data" / "subs.csv", "id,product,email,enabled,metadata.tier,metadata.crm\n"
         "bob,gold,bob@example.com,true,silver,\n"
         "dan,gold,,false,,'=HYPERLINK(1)\n")
    plan = write_plan(tmp_path / "plan.yaml", HEAD + "    subscribers_from:\n      - csv: data/subs.csv\n")
    loaded = load_plans([str(plan)], env={})
    assert not loaded.errors, [str(d) for d in loaded.errors]
    subs = loaded.desired.subscribers
    assert subs["bob"].email == "bob@example.com" and subs["bob"].enabled
    assert subs["bob"].metadata == (("tier", "silver"),)
    assert subs["dan"].email is None and subs["dan"].enabled is False
    assert subs["dan"].metadata == (("crm", "=HYPERLINK(1)"),)  # the protecting quote is not part of it


def test_csv_errors_are_located_by_row_and_column(tmp_path):
    _csv(tmp_path / "subs.csv", "id,product,email,enabled\n"
         "bob,golde,not-an-email,maybe\n"
         ",gold,,\n"
         "carol,gold\n"
         "Bad_Id,gold,,\n"
         "bob,gold,,\n")
    plan = write_plan(tmp_path / "plan.yaml", HEAD + "    subscribers_from:\n      - csv: subs.csv\n")
    r = run_cli("validate", str(plan), cwd=tmp_path)
    assert r.code == 1
    shown = os.path.normpath(str(tmp_path / "subs.csv"))
    lines = [line.replace(shown, "subs.csv") for line in r.stderr.splitlines()]
    assert 'subs.csv:2:2: error: subscribers.bob.product: unknown product \'golde\' (did you mean "gold"?); ' \
           "defined products: gold" in lines
    assert "subs.csv:2:3: error: subscribers.bob.email: not an email address: 'not-an-email'; " \
           "write name@domain.example" in lines
    assert "subs.csv:2:4: error: subscribers.bob.enabled: must be true or false; got 'maybe'" in lines
    assert "subs.csv:3:1: error: the id is empty; every row needs an id" in lines
    assert "subs.csv:4:3: error: has 2 cells; the header has 4 (id, product, email, enabled)" in lines
    assert any(line.startswith("subs.csv:5:1: error: subscribers.Bad_Id: invalid subscriber id") for line in lines)
    assert any(line.startswith("subs.csv:6:1: error: subscribers.bob: subscriber 'bob' is defined twice in this "
                               "source, here and at row 2") for line in lines)
    assert "Traceback" not in r.stderr


def test_csv_header_problems(tmp_path):
    _csv(tmp_path / "subs.csv", "id,prodcut,mail\nbob,gold,x\n")
    plan = write_plan(tmp_path / "plan.yaml", HEAD + "    subscribers_from:\n      - csv: subs.csv\n")
    diags = [str(d) for d in load_plans([str(plan)], env={}).errors]
    shown = os.path.normpath(str(tmp_path / "subs.csv"))
    assert f"{shown}:1:2: error: unknown column 'prodcut' (did you mean \"product\"?); allowed: id, product, " \
           "email, enabled, metadata.<key>" in diags
    assert any(d.startswith(f"{shown}:1:1: error: required column 'product' is missing") for d in diags)
    missing = write_plan(tmp_path / "missing.yaml", HEAD + "    subscribers_from:\n      - csv: nope.csv\n")
    assert [str(d) for d in load_plans([str(missing)], env={}).errors] == [
        f"{os.path.normpath(str(tmp_path / 'nope.csv'))}:1:1: error: no such file; subscribers_from.csv names a "
        "CSV file relative to the plan file"]


def test_an_id_in_yaml_and_csv_is_an_error_naming_both_places(tmp_path):
    _csv(tmp_path / "subs.csv", "id,product\nbob,gold\nacme,gold\n")
    plan = write_plan(tmp_path / "plan.yaml", HEAD + """
    subscribers:
      acme: {product: gold}
    subscribers_from:
      - csv: subs.csv
    """)
    diags = [str(d) for d in load_plans([str(plan)], env={}).errors]
    shown = os.path.normpath(str(tmp_path / "subs.csv"))
    assert diags == [f"{shown}:3:1: error: subscribers.acme: subscriber 'acme' is defined twice, here and at "
                     f"{plan}:11:3; ids must be unique across all plan files"]


def test_a_subscriber_moved_between_yaml_and_csv_is_no_change(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", HEAD + """
    subscribers:
      acme: {product: gold, email: ops@acme.example, metadata: {tier: gold}}
      bob: {product: gold, enabled: false}
    """)
    assert run_cli("apply", "--auto-approve", str(plan), cwd=tmp_path).code == 0
    _csv(tmp_path / "subs.csv", "id,product,email,enabled,metadata.tier\nacme,gold,ops@acme.example,,gold\n"
         "bob,gold,,false,\n")
    write_plan(tmp_path / "plan.yaml", HEAD + "    subscribers_from:\n      - csv: subs.csv\n")
    r = run_cli("plan", "--detailed-exitcode", str(plan), cwd=tmp_path)
    assert r.code == 0, r.output
    assert "No changes." in r.stdout
    # and a real change in the CSV shows
    _csv(tmp_path / "subs.csv", "id,product,email,enabled,metadata.tier\nacme,gold,ops@acme.example,,silver\n"
         "bob,gold,,false,\n")
    r = run_cli("plan", "--detailed-exitcode", str(plan), cwd=tmp_path)
    assert r.code == 2 and '~ metadata.tier: "gold" -> "silver"' in r.stdout


def test_the_json_schema_documents_the_csv_columns():
    schema = json_schema()
    source = schema["$defs"]["SubscriberSourceSpec"]
    assert set(source["properties"]) == {"csv", "postgresql", "query"}
    assert set(source["x-apimon-columns"]) == {"id", "product", "email", "enabled", "metadata.<key>"}
    assert "id, product, email, enabled" in source["properties"]["csv"]["anyOf"][0].get("description", "") or \
        "id, product, email, enabled" in source["properties"]["csv"]["description"]
    assert schema["properties"]["subscribers_from"]["items"] == {"$ref": "#/$defs/SubscriberSourceSpec"}


def test_import_writes_subscribers_to_csv(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", HEAD + """
    subscribers:
      acme: {product: gold, email: ops@acme.example, metadata: {note: "=1+1"}}
      bob: {product: gold, enabled: false}
    """)
    assert run_cli("apply", "--auto-approve", str(plan), cwd=tmp_path).code == 0
    out = tmp_path / "imported"
    out.mkdir()
    r = run_cli("import", "--provider", "local", "--state-dir", str(tmp_path / "state"), "--out",
                str(out / "plan.yaml"), "--subscribers-csv", str(out / "subs.csv"), cwd=tmp_path)
    assert r.code == 0, r.output
    assert (out / "subs.csv").read_text() == ("id,product,email,enabled,metadata.note\n"
                                              "acme,gold,ops@acme.example,true,'=1+1\n"
                                              "bob,gold,,false,\n")
    text = (out / "plan.yaml").read_text()
    assert "subscribers_from:\n- csv: subs.csv\n" in text and "\nsubscribers:" not in text
    again = run_cli("plan", "--detailed-exitcode", str(out / "plan.yaml"), cwd=tmp_path)
    assert again.code == 0 and "No changes." in again.stdout, again.output


# ---------------------------------------------------------------- PostgreSQL

@pytest.fixture
def postgres_db():
    psycopg = pytest.importorskip("psycopg")
    base = os.environ.get("APIMON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {base}: {str(exc).splitlines()[0]}")
    name = f"apimon_scale_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE api_customers (id text, product text, email text, enabled boolean, tier text)")
            conn.execute("INSERT INTO api_customers VALUES ('bob', 'gold', 'bob@example.com', true, 'silver'), "
                         "('dan', 'gold', NULL, false, NULL)")
        yield url, name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


PG_SOURCE = """
    subscribers_from:
      - postgresql: "${env:CRM_DATABASE_URL}"
        query: 'SELECT id, product, email, enabled, tier AS "metadata.tier" FROM api_customers ORDER BY id'
"""


def test_postgresql_subscribers_merge_with_yaml_and_apply(tmp_path, postgres_db):
    url, name = postgres_db
    plan = write_plan(tmp_path / "plan.yaml", HEAD + """
    subscribers:
      acme: {product: gold}
""" + PG_SOURCE)
    loaded = load_plans([str(plan)], env={"CRM_DATABASE_URL": url})
    assert not loaded.errors, [str(d) for d in loaded.errors]
    subs = loaded.desired.subscribers
    assert sorted(subs) == ["acme", "bob", "dan"]
    assert subs["bob"].metadata == (("tier", "silver"),) and subs["dan"].enabled is False
    assert url in loaded.secrets  # masked wherever it could be printed
    r = run_cli("apply", "--auto-approve", str(plan), cwd=tmp_path, env={"CRM_DATABASE_URL": url})
    assert r.code == 0, r.output
    assert "Apply complete: 4 changes applied." in r.stdout
    assert url not in r.output


def test_postgresql_errors_are_located_by_row_and_column(tmp_path, postgres_db):
    import psycopg

    url, name = postgres_db
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO api_customers VALUES ('eve', 'gol', 'x', NULL, NULL), ('bob', 'gold', NULL, "
                     "true, NULL)")
    plan = write_plan(tmp_path / "plan.yaml", HEAD + """
    subscribers:
      bob: {product: gold}
""" + PG_SOURCE)
    diags = [str(d) for d in load_plans([str(plan)], env={"CRM_DATABASE_URL": url}).errors]
    label = f"postgresql:{name}"
    assert f"{label}:1:1: error: subscribers.bob: subscriber 'bob' is defined twice, here and at {plan}:11:3; " \
           "ids must be unique across all plan files" in diags
    assert f"{label}:4:2: error: subscribers.eve.product: unknown product 'gol' (did you mean \"gold\"?); " \
           "defined products: gold" in diags
    assert f"{label}:4:3: error: subscribers.eve.email: not an email address: 'x'; write name@domain.example" in diags
    bad = write_plan(tmp_path / "bad.yaml", HEAD + PG_SOURCE.replace("FROM api_customers", "FROM nowhere"))
    [problem] = [str(d) for d in load_plans([str(bad)], env={"CRM_DATABASE_URL": url}).errors]
    assert problem.startswith(f"{label}:1:1: error: cannot read subscribers from PostgreSQL: relation \"nowhere\"")


def test_a_saved_plan_applies_with_its_csv_and_is_stale_when_the_csv_changes(tmp_path):
    _csv(tmp_path / "subs.csv", "id,product\nbob,gold\n")
    plan = write_plan(tmp_path / "plan.yaml", HEAD + "    subscribers_from:\n      - csv: subs.csv\n")
    saved = tmp_path / "saved.json"
    assert run_cli("plan", "--out", str(saved), str(plan), cwd=tmp_path).code == 0
    _csv(tmp_path / "subs.csv", "id,product\nbob,gold\ncarol,gold\n")
    stale = run_cli("apply", "--plan-file", str(saved), cwd=tmp_path)
    assert stale.code == 1 and "subs.csv changed since the plan was saved" in stale.stderr
    _csv(tmp_path / "subs.csv", "id,product\nbob,gold\n")
    r = run_cli("apply", "--plan-file", str(saved), cwd=tmp_path)
    assert r.code == 0, r.output
    assert "Apply complete: 2 changes applied." in r.stdout
