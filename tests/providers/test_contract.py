"""The provider contract: the same scenarios on every provider's fake, through the engine.

create, drift, unmanaged left alone, move a subscriber between products, delete, import round trip (import
then plan = no changes), usage pull. A provider's own test files keep only its quirks. The harnesses are in
``tests/contract/``: a provider of the registry without one fails ``test_every_provider_has_a_harness``.
"""

from __future__ import annotations

from datetime import date

import pytest
from conftest import write_plan
from contract import harnesses

from apimon_cli.planfile.writer import plan_document
from apimon_cli.providers import get_provider
from apimon_cli.providers.registry import names
from apimon_cli.reconcile.engine import apply_plan, make_plan

HARNESSES = harnesses()


def test_every_provider_has_a_harness():
    assert sorted(HARNESSES) == sorted(names())


@pytest.fixture(params=names())
def gateway(request, monkeypatch, tmp_path):
    harness = HARNESSES[request.param]
    harness.start()
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "APIMON_FORCE_POLICY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in harness.env().items():
        monkeypatch.setenv(name, value)
    harness.tmp_path = tmp_path
    yield harness
    harness.stop()


def plan_text(h, *, bob: str | None = "free", free: bool = True) -> str:
    api = h.apis[0]
    products = (f"  pro: {{display_name: Pro, description: For production, apis: [{api}], "
                f"rate_limit: {{rate: 50, burst: 50}}, quota: {{limit: 100000, period: day}}}}\n")
    if free:
        products += f"  free: {{display_name: Free, apis: [{api}], rate_limit: {{rate: 5, burst: 5}}}}\n"
    subscribers = "  acme: {product: pro, email: billing@acme.example}\n"
    if bob:
        subscribers += f"  bob: {{product: {bob}, email: bob@example.com}}\n"
    return f"apimon: 1\ntarget: {h.target(h.tmp_path)}\nproducts:\n{products}subscribers:\n{subscribers}"


def planned(path):
    run = make_plan([str(path)])
    run.provider.close()
    return run


def applied(path) -> list[tuple[str, str, str]]:
    run = make_plan([str(path)])
    try:
        report = apply_plan(run)
    finally:
        run.provider.close()
    assert not report.failed, [o.message for o in report.failed]
    assert not report.not_applied
    return [(o.change.action, o.change.kind, o.change.id) for o in report.outcomes]


def changes(path) -> list[tuple[str, str, str, tuple[str, ...]]]:
    run = planned(path)
    assert not run.changes.conflicts, run.changes.conflicts
    return [(c.action, c.kind, c.id, tuple(f.field for f in c.fields)) for c in run.changes.changes]


def write(h, **kw):
    return write_plan(h.tmp_path / "plan.yaml", plan_text(h, **kw))


def test_create_then_no_changes(gateway):
    path = write(gateway)
    assert [(a, k, i) for a, k, i, _ in changes(path)] == [
        ("create", "product", "pro"), ("create", "product", "free"),
        ("create", "subscriber", "acme"), ("create", "subscriber", "bob")]
    done = applied(path)  # in the order they completed: changes without a dependency between them run together
    assert sorted(done) == sorted([("create", "product", "pro"), ("create", "product", "free"),
                                   ("create", "subscriber", "acme"), ("create", "subscriber", "bob")])
    # a subscriber is created only once its product exists
    assert done.index(("create", "product", "pro")) < done.index(("create", "subscriber", "acme"))
    assert done.index(("create", "product", "free")) < done.index(("create", "subscriber", "bob"))
    assert changes(path) == []


def test_drift_is_shown_and_converged(gateway):
    path = write(gateway)
    applied(path)
    gateway.change_description("pro", "edited on the gateway")
    [change] = planned(path).changes.changes
    assert (change.action, change.id) == ("update", "pro")
    [field] = [f for f in change.fields if f.field == "description"]
    assert (field.before, field.after) == ("edited on the gateway", "For production")
    applied(path)
    assert changes(path) == []


def test_unmanaged_resources_are_reported_and_never_touched(gateway):
    gateway.seed_unmanaged()
    before = gateway.unmanaged_state()
    path = write(gateway)
    run = planned(path)
    assert "legacy" in {u.name for u in run.changes.unmanaged if u.kind == "product"}
    applied(path)
    write(gateway, bob=None, free=False)
    applied(gateway.tmp_path / "plan.yaml")
    assert changes(gateway.tmp_path / "plan.yaml") == []
    assert gateway.unmanaged_state() == before


def test_moving_a_subscriber_keeps_its_key(gateway):
    path = write(gateway)
    applied(path)
    with get_provider(planned(path).loaded.desired) as provider:
        key = provider.reveal_key("bob")
    assert key
    path = write(gateway, bob="pro")
    assert changes(path) == [("update", "subscriber", "bob", ("product",))]
    applied(path)
    assert changes(path) == []
    with get_provider(planned(path).loaded.desired) as provider:
        assert provider.reveal_key("bob") == key


def test_delete_goes_subscribers_first(gateway):
    path = write(gateway)
    applied(path)
    path = write(gateway, bob=None, free=False)
    assert [(a, k, i) for a, k, i, _ in changes(path)] == [("delete", "subscriber", "bob"),
                                                           ("delete", "product", "free")]
    assert applied(path) == [("delete", "subscriber", "bob"), ("delete", "product", "free")]
    run = planned(path)
    assert run.changes.empty and set(run.live.products) == {"pro"} and set(run.live.subscribers) == {"acme"}


def test_import_then_plan_shows_no_changes(gateway):
    gateway.seed_unmanaged()
    path = write(gateway)
    applied(path)
    run = planned(path)
    with get_provider(run.loaded.desired) as provider:
        exported = provider.export_plan(include_unmanaged=False)
    text = plan_document(exported["target"], exported["products"], exported["subscribers"],
                         billing=exported.get("billing"))
    imported = gateway.tmp_path / "imported.yaml"
    imported.write_text(text)
    assert {"pro", "free", "acme", "bob"} <= set(text.replace(":", " ").split())
    assert changes(imported) == []


def test_usage_pull_reports_the_gateways_counts(gateway):
    path = write(gateway)
    applied(path)
    day = date(2026, 3, 2)
    gateway.record_usage("acme", "pro", day, 42)
    with get_provider(planned(path).loaded.desired) as provider:
        rows = list(provider.pull_usage(date(2026, 3, 1), date(2026, 3, 3)))
    counted = {(r.subscriber, r.product, r.day, r.metric): r.count for r in rows}
    assert counted[("acme", "pro", "2026-03-02", gateway.usage_metric)] == 42
    assert {r.subscriber for r in rows} == {"acme"} and {r.day for r in rows} == {"2026-03-02"}


def test_usage_history_reports_usage_from_before_the_window(gateway):
    """What `usage pull` records as first seen on a new ledger (issue 11.2): where the gateway can tell."""
    path = write(gateway)
    applied(path)
    gateway.record_usage("acme", "pro", date(2026, 2, 10), 7)
    gateway.record_usage("acme", "pro", date(2026, 2, 20), 3)
    with get_provider(planned(path).loaded.desired) as provider:
        history = list(provider.usage_history(date(2026, 3, 1)))
    assert history == [("acme", "pro", "2026-02-10")]
    with get_provider(planned(path).loaded.desired) as provider:
        later = list(provider.usage_history(date(2026, 6, 1)))
    # the local state keeps every day; the clouds are asked for the 90 days before the window only
    assert later == ([("acme", "pro", "2026-02-10")] if gateway.name == "local" else [])
