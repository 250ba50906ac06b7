"""Valid plans: merging files, ${env:...}, anchors, warnings vs --strict, and the writer's round trip."""

from __future__ import annotations

import gc
import importlib.util
import textwrap
from decimal import Decimal as D
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apimon_cli.model import Package, Pricing, Product, Quota, RateLimit, Subscriber, Tier
from apimon_cli.planfile.diagnostics import PlanError
from apimon_cli.planfile.loader import load_or_raise, load_plans
from apimon_cli.planfile.writer import plan_document, product_from_plan, product_to_plan


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def errors(loaded) -> list[str]:
    return [str(d) for d in loaded.errors]


# ---------------------------------------------------------------- several files


def test_files_merge(tmp_path: Path):
    a = write(
        tmp_path / "a.yaml",
        """
        apimon: 1
        target: {provider: local}
        billing: {currency: EUR}
        products:
          free: {display_name: Free}
          pro:
            display_name: Pro
            pricing: {model: per_unit, unit_price: "0.002"}
        """,
    )
    b = write(
        tmp_path / "b.yaml",
        """
        apimon: 1
        products:
          starter: {display_name: Starter, pricing: {model: flat, fee: 10}}
        subscribers:
          acme: {product: pro, email: billing@acme.example}
          globex: {product: starter}
        """,
    )
    c = write(
        tmp_path / "c.yaml",
        """
        apimon: 1
        target: {provider: local}
        subscribers:
          initech: {product: free, enabled: false}
        """,
    )
    loaded = load_plans([a, b, c], env={})
    assert errors(loaded) == []
    d = loaded.desired
    assert sorted(d.products) == ["free", "pro", "starter"]
    assert sorted(d.subscribers) == ["acme", "globex", "initech"]
    assert d.subscribers["initech"].enabled is False
    assert d.products["starter"].pricing.fee == D(10)
    assert d.billing.currency == "EUR"
    assert d.files == (a, b, c)
    assert d.target.base_dir == str(tmp_path.resolve())

    result = run_cli("validate", "a.yaml", "b.yaml", "c.yaml", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == "The plan is valid: 3 products, 3 subscribers, target local."


def test_duplicate_across_files_names_both_locations(tmp_path: Path):
    a = write(tmp_path / "a.yaml", "apimon: 1\ntarget: {provider: local}\nproducts:\n  free: {display_name: F}\n")
    b = write(tmp_path / "b.yaml", "apimon: 1\nproducts:\n\n  free: {display_name: G}\n")
    loaded = load_plans([a, b], env={})
    assert errors(loaded) == [
        f"{b}:4:3: error: products.free: product 'free' is defined twice, here and at {a}:4:3; ids must be "
        "unique across all plan files"
    ]


def test_a_problem_in_one_product_does_not_hide_the_others(tmp_path: Path):
    p = write(
        tmp_path / "p.yaml",
        """
        apimon: 1
        target: {provider: local}
        products:
          bad: {display_name: Bad, rate_limit: {rate: fast, burst: 1}}
          worse: {display_name: Worse, rate_limit: {rate: 10, burst: 1}}
        subscribers:
          acme: {product: bad}
          globex: {product: missing}
        """,
    )
    assert [(d.path, d.line) for d in load_plans([p], env={}).errors] == [
        ("products.bad.rate_limit.rate", 4),
        ("products.worse.rate_limit.burst", 5),
        ("subscribers.globex.product", 8),
    ]


# ---------------------------------------------------------------- ${env:...}


def test_env_substitution(tmp_path: Path):
    p = write(
        tmp_path / "p.yaml",
        """
        apimon: 1
        target:
          provider: azure
          azure:
            subscription_id: ${env:SUB_ID}
            resource_group: rg-${env:STAGE}
            service: contoso
        products:
          free: {display_name: "Free (${env:STAGE})"}
        subscribers:
          acme: {product: free, key: {from_env: ACME_KEY}}
        """,
    )
    env = {"SUB_ID": "1111-2222", "STAGE": "prod", "ACME_KEY": "k" * 32}
    loaded = load_plans([p], env=env)
    assert errors(loaded) == []
    d = loaded.desired
    assert d.target.settings["subscription_id"] == "1111-2222"
    assert d.target.settings["resource_group"] == "rg-prod"
    assert d.products["free"].display_name == "Free (prod)"
    assert d.subscribers["acme"].key_value == "k" * 32
    assert {"1111-2222", "prod", "k" * 32} <= loaded.secrets
    assert "k" * 32 not in repr(d.subscribers["acme"])


def test_env_unset_is_reported_once_and_values_from_env_are_masked(tmp_path: Path):
    write(
        tmp_path / "p.yaml",
        """
        apimon: 1
        target: {provider: local}
        products:
          free: {display_name: "${env:APIMON_TEST_NAME}"}
        subscribers:
          acme: {product: free, email: "${env:APIMON_TEST_EMAIL}"}
          globex: {product: free, email: "${env:APIMON_TEST_UNSET}"}
        """,
    )
    secret = "not-an-email-secret"
    result = run_cli(
        "validate", "p.yaml", cwd=tmp_path, env={"APIMON_TEST_NAME": "Free plan", "APIMON_TEST_EMAIL": secret}
    )
    assert result.code == 1
    assert secret not in result.stdout + result.stderr
    assert result.stderr.splitlines()[:-1] == [
        "p.yaml:6:32: error: subscribers.acme.email: not an email address: '***'; write name@domain.example",
        "p.yaml:7:34: error: subscribers.globex.email: environment variable APIMON_TEST_UNSET is not set; set it "
        "before running apimon (the plan reads ${env:APIMON_TEST_UNSET})",
    ]


# ---------------------------------------------------------------- YAML features


def test_anchors_and_merge_keys(tmp_path: Path):
    p = write(
        tmp_path / "p.yaml",
        """
        apimon: 1
        target: {provider: local}
        products:
          free:
            display_name: Free
            apis: &apis [petstore, orders]
            rate_limit: &limits {rate: 5, burst: 10}
          starter:
            display_name: Starter
            apis: *apis
            rate_limit: *limits
            pricing: &metered
              model: per_unit
              unit_price: "0.001"
          pro:
            display_name: Pro
            apis: *apis
            rate_limit: {<<: *limits, burst: 50}
            pricing:
              <<: *metered
              fee: "10.00"
        """,
    )
    loaded = load_plans([p], env={})
    assert errors(loaded) == []
    products = loaded.desired.products
    assert products["starter"].rate_limit == RateLimit(5, 10)
    assert products["pro"].rate_limit == RateLimit(5, 50)
    assert products["pro"].apis == ("petstore", "orders")
    assert products["pro"].pricing.unit_price == D("0.001") and products["pro"].pricing.fee == D("10.00")
    assert products["starter"].pricing.fee is None


def test_problem_inside_a_merged_block_points_at_the_anchor(tmp_path: Path):
    p = write(
        tmp_path / "p.yaml",
        """
        apimon: 1
        target: {provider: local}
        products:
          free:
            display_name: Free
            rate_limit: &limits {rate: 50, burst: 10}
          pro:
            display_name: Pro
            rate_limit: {<<: *limits, rate: 5}
        """,
    )
    assert errors(load_plans([p], env={})) == [
        f"{p}:6:43: error: products.free.rate_limit.burst: must be >= rate (50); got 10",
    ]


def test_yaml_keys_are_taken_as_written(tmp_path: Path):
    p = write(
        tmp_path / "p.yaml",
        """
        apimon: 1
        target: {provider: local}
        products:
          42: {display_name: Answer}
          yes: {display_name: "Yes"}
        """,
    )
    assert sorted(load_plans([p], env={}).desired.products) == ["42", "yes"]


# ---------------------------------------------------------------- warnings and --strict

AZURE = """
    apimon: 1
    target:
      provider: azure
      azure: {subscription_id: "0000", resource_group: rg-apis, service: contoso}
    products:
      starter:
        display_name: Starter
        apis: [petstore]
        rate_limit: {rate: 50, burst: 100}
        quota: {limit: 1000, period: month}
    """


def test_warnings_do_not_fail_validate(tmp_path: Path):
    write(tmp_path / "azure.yaml", AZURE)
    result = run_cli("validate", "azure.yaml", cwd=tmp_path)
    assert result.code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1:3] for line in lines] == [
        ["warning", "products.starter.rate_limit.burst"],
        ["warning", "products.starter.quota.period"],
    ]
    assert lines[0].startswith("azure.yaml:9:35: warning: ")
    assert "(2 warnings)" in result.stdout


def test_strict_turns_warnings_into_errors(tmp_path: Path):
    write(tmp_path / "azure.yaml", AZURE)
    result = run_cli("validate", "--strict", "azure.yaml", cwd=tmp_path)
    assert result.code == 1
    assert [line.split(": ")[1] for line in result.stderr.splitlines()[:-1]] == ["error", "error"]
    loaded = load_plans([str(tmp_path / "azure.yaml")], strict=True, env={})
    assert loaded.desired is None and len(loaded.errors) == 2


def test_apigee_capability_warnings(tmp_path: Path):
    p = write(
        tmp_path / "p.yaml",
        """
        apimon: 1
        target:
          provider: apigee
          apigee: {organization: acme, environments: [prod]}
        products:
          bulk:
            display_name: Bulk
            rate_limit: {rate: 5, burst: 5}
            pricing: {model: package, package: {size: 100, price: 1}, included: 10, minimum: 5}
        subscribers:
          acme: {product: bulk, email: a@acme.example}
        """,
    )
    loaded = load_plans([p], env={})
    assert loaded.desired is not None
    assert sorted(d.path for d in loaded.warnings) == [
        "products.bulk.pricing.included",
        "products.bulk.pricing.minimum",
        "products.bulk.pricing.model",
        "products.bulk.rate_limit",
    ]
    assert all(d.message.startswith("apigee: ") for d in loaded.warnings)


# ---------------------------------------------------------------- API behaviour


def test_load_or_raise(tmp_path: Path):
    p = write(tmp_path / "p.yaml", "apimon: 1\ntarget: {provider: local}\nproducts: {Bad: {display_name: B}}\n")
    with pytest.raises(PlanError) as info:
        load_or_raise([p])
    assert [d.path for d in info.value.diagnostics] == ["products.Bad"]
    assert str(info.value).startswith(f"{p}:3:12: error: products.Bad: invalid product id 'Bad'")


def test_no_files():
    loaded = load_plans([], env={})
    assert loaded.desired is None and len(loaded.errors) == 1


def test_gc_state_is_restored(tmp_path: Path):
    p = write(tmp_path / "p.yaml", "apimon: 1\ntarget: {provider: local}\n")
    assert gc.isenabled()
    load_plans([p], env={})
    assert gc.isenabled()
    gc.disable()
    try:
        load_plans([p], env={})
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_benchmark_plan_is_valid(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("startup_bench", ROOT / "benchmarks" / "startup.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    plan = bench.generate_plan(tmp_path / "big.yaml", products=40, subscribers=200)
    loaded = load_plans([str(plan)], env={})
    assert errors(loaded) == [] and len(loaded.desired.subscribers) == 200


# ---------------------------------------------------------------- never a traceback

YAMLISH = st.text(
    alphabet=st.sampled_from(list("ab:- \n\t{}[],&*!|>'\"#%@`?<=~.0159\\$") + ["\x00", "é"]), max_size=120
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["inf", "0.001", "free", "per_unit", "aws", "${env:X}"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)),
    max_leaves=12,
)
FIELDS = [
    "apimon",
    "target",
    "billing",
    "products",
    "subscribers",
    "display_name",
    "pricing",
    "model",
    "tiers",
    "rate_limit",
    "burst",
    "rate",
    "quota",
    "product",
    "key",
    "from_env",
    "provider",
    "aws",
    "local",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=YAMLISH)
def test_arbitrary_text_never_raises(tmp_path: Path, text: str):
    p = tmp_path / "fuzz.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    loaded = load_plans([str(p)], env={})
    assert all(d.line >= 1 and d.col >= 1 and "\n" not in d.message for d in loaded.diagnostics)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    doc=st.fixed_dictionaries(
        {"apimon": st.sampled_from([1, 1, 2, "1"])},
        optional={k: VALUES for k in ("target", "billing")}
        | {
            "products": st.dictionaries(
                st.sampled_from(["free", "pro", "X"]),
                st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=4),
                max_size=2,
            ),
            "subscribers": st.dictionaries(
                st.sampled_from(["acme", "b c"]),
                st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=3),
                max_size=2,
            ),
        },
    )
)
def test_arbitrary_structures_never_raise(tmp_path: Path, doc: dict):
    p = tmp_path / "fuzz.yaml"
    p.write_text(yaml.safe_dump(doc))
    loaded = load_plans([str(p)], env={"X": "x"})
    assert loaded.desired is not None or loaded.errors
    assert all(d.line >= 1 and d.col >= 1 and "\n" not in d.message for d in loaded.diagnostics)


# ---------------------------------------------------------------- writer round trip

PRODUCTS = [
    Product("free", "Free", "Try it", ("petstore",), RateLimit(5, 10), Quota(1000, "month"), Pricing("free")),
    Product("flat", "Flat", pricing=Pricing("flat", fee=D("29.00"), setup_fee=D("5"))),
    Product(
        "metered",
        "Metered",
        apis=("a", "b"),
        quota=Quota(10, "day"),
        pricing=Pricing("per_unit", fee=D("1.50"), included=1000, unit_price=D("0.000000000001")),
    ),
    Product("bulk", "Bulk", pricing=Pricing("package", package=Package(1000, D("0.50"), "down"), maximum=D(90))),
    Product(
        "grad",
        "Graduated",
        rate_limit=RateLimit(200, 400),
        pricing=Pricing(
            "graduated",
            fee=D("199.00"),
            minimum=D("250.00"),
            tiers=(Tier(1_000_000, D("0.0008"), D("1")), Tier(None, D("0.0003"))),
        ),
    ),
    Product("vol", "Volume", pricing=Pricing("volume", tiers=(Tier(10, flat_fee=D("5")), Tier(None, D("0.1"))))),
    Product(
        "steps",
        "Stairs",
        pricing=Pricing("stairstep", tiers=(Tier(100, flat_fee=D("10")), Tier(None, flat_fee=D("50")))),
    ),
]


@pytest.mark.parametrize("product", PRODUCTS, ids=lambda p: p.id)
def test_writer_round_trip(product: Product):
    data = product_to_plan(product)
    assert product_from_plan(product.id, data) == product
    # through YAML text, as `apimon import` and the local target store it
    assert product_from_plan(product.id, yaml.safe_load(yaml.safe_dump(data))) == product


def test_plan_document_loads_back_equal(tmp_path: Path):
    subscribers = [
        Subscriber("acme", "grad", email="billing@acme.example", metadata=(("customer_id", "cus_1"),)),
        Subscriber("globex", "free", enabled=False),
    ]
    text = plan_document(
        {"provider": "local"}, PRODUCTS, subscribers, billing={"currency": "USD"}, header="# written by a test\n"
    )
    p = tmp_path / "imported.yaml"
    p.write_text(text)
    loaded = load_plans([str(p)], env={})
    assert errors(loaded) == []
    assert loaded.desired.products == {p.id: p for p in PRODUCTS}
    assert loaded.desired.subscribers == {s.id: s for s in subscribers}
