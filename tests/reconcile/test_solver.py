"""The one solver and the engine's apply: dependency order, bounded workers, phases, stop on failure,
observers, replacements. A recording provider implements the action protocol (a test double of the
interface, not of apimon's code)."""

from __future__ import annotations

import threading
import time

import pytest

from apimon_cli.model import Billing, DesiredState, LiveState, Product, Subscriber, Target
from apimon_cli.providers.base import PlanNotes, Provider, ProviderError
from apimon_cli.reconcile import solver
from apimon_cli.reconcile.changes import Change, FieldChange
from apimon_cli.reconcile.engine import apply_changes
from apimon_cli.reconcile.solver import ApplyPolicy, Cancelled, dependencies


def product(pid: str) -> Product:
    return Product(pid, pid.title())


def sub(sid: str, pid: str) -> Subscriber:
    return Subscriber(sid, pid)


def moved(sid: str, old: str, new: str) -> Change:
    return Change("update", "subscriber", sid, (FieldChange("product", old, new),), sub(sid, new), sub(sid, old))


def test_dependencies_come_from_the_kinds():
    changes = [
        Change("create", "product", "new", desired=product("new")),  # 0
        Change("update", "product", "kept", (FieldChange("description", "", "x"),), product("kept"),
               product("kept")),  # 1
        Change("create", "subscriber", "a", desired=sub("a", "new")),  # 2: needs product new
        Change("update", "subscriber", "b", (FieldChange("enabled", True, False),), sub("b", "kept"),
               sub("b", "kept")),  # 3: in place, needs nothing
        moved("c", "old", "new"),  # 4: a move needs new and leaves old
        Change("replace", "subscriber", "d", (FieldChange("key", "x", "y"),), sub("d", "kept"), sub("d", "kept")),
        Change("delete", "subscriber", "e", live=sub("e", "old")),  # 6: leaves old
        Change("delete", "product", "old", live=product("old")),  # 7
    ]
    deps = dependencies(changes)
    assert deps == {0: set(), 1: set(), 2: {0}, 3: set(), 4: {0}, 5: {1}, 6: set(), 7: {4, 6}}


class Recorder(Provider):
    """A gateway that records the order and overlap of its actions."""

    name = "local"

    def __init__(self, policy: ApplyPolicy = ApplyPolicy(), fail: str = "", delay: float = 0.0):
        super().__init__(DesiredState(Target("local", {}), Billing(), {}, {}))
        self.policy, self.fail, self.delay = policy, fail, delay
        self.log: list[str] = []
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.lock = threading.Lock()

    def read_live_state(self) -> LiveState:
        return LiveState()

    def apply_policy(self) -> ApplyPolicy:
        return self.policy

    def _do(self, change: Change, what: str) -> str:
        with self.lock:
            self.running[change.kind] = self.running.get(change.kind, 0) + 1
            self.peak[change.kind] = max(self.peak.get(change.kind, 0), self.running[change.kind])
        time.sleep(self.delay)
        with self.lock:
            self.running[change.kind] -= 1
            self.log.append(f"{what} {change.kind} {change.id}")
        if change.id == self.fail:
            raise ProviderError(f"{change.id} refused")
        return what + "d"

    def create_product(self, change, live):
        return self._do(change, "create")

    def update_product(self, change, live):
        return self._do(change, "update")

    def delete_product(self, change, live):
        return self._do(change, "delete")

    def create_subscriber(self, change, live):
        return self._do(change, "create")

    def update_subscriber(self, change, live):
        return self._do(change, "update")

    def delete_subscriber(self, change, live):
        return self._do(change, "delete")

    def notes(self, desired, live, changes) -> PlanNotes:
        return PlanNotes()


def plan_of_two_products_and_subscribers(n: int = 6) -> list[Change]:
    out = [Change("create", "product", pid, desired=product(pid)) for pid in ("p", "q")]
    out += [Change("create", "subscriber", f"s{i}", desired=sub(f"s{i}", "p" if i % 2 else "q")) for i in range(n)]
    out += [Change("delete", "subscriber", "gone", live=sub("gone", "old")),
            Change("delete", "product", "old", live=product("old"))]
    return out


def test_one_worker_applies_in_plan_order_and_observers_see_every_outcome():
    provider = Recorder()
    changes = plan_of_two_products_and_subscribers(2)
    seen: list[tuple[str, bool]] = []
    progress: list[str] = []
    report = apply_changes(provider, changes, LiveState(), progress=lambda o: progress.append(o.change.id),
                           on_applied=lambda c, o: seen.append((c.id, o.ok)))
    assert provider.log == ["create product p", "create product q", "create subscriber s0", "create subscriber s1",
                            "delete subscriber gone", "delete product old"]
    assert seen == [(c.id, True) for c in changes] and progress == [c.id for c in changes]
    assert [o.message for o in report.applied] == ["created"] * 4 + ["deleted"] * 2 and not report.not_applied


def test_a_failure_stops_the_apply_and_the_report_says_what_was_not_attempted():
    provider = Recorder(fail="q")
    changes = plan_of_two_products_and_subscribers(2)
    report = apply_changes(provider, changes, LiveState())
    assert [(o.change.id, o.ok) for o in report.outcomes] == [("p", True), ("q", False)]
    assert report.failed[0].message == "q refused"
    assert [c.id for c in report.not_applied] == ["s0", "s1", "gone", "old"]


def test_bounded_workers_respect_dependencies_per_kind_limits_and_phases():
    provider = Recorder(ApplyPolicy(workers=4, per_kind={"product": 1}, phased=True), delay=0.02)
    changes = plan_of_two_products_and_subscribers(8)
    report = apply_changes(provider, changes, LiveState())
    assert not report.failed and len(report.outcomes) == len(changes)
    assert provider.peak["product"] == 1 and 2 <= provider.peak["subscriber"] <= 4
    order = provider.log
    assert order[:2] == ["create product p", "create product q"]  # phase 1 before phase 2
    assert order[-2:] == ["delete subscriber gone", "delete product old"]


def test_without_phases_a_subscriber_starts_as_soon_as_its_product_exists():
    provider = Recorder(ApplyPolicy(workers=4), delay=0.02)
    changes = [Change("create", "product", "p", desired=product("p")),
               Change("update", "product", "slow", (FieldChange("description", "", "x"),), product("slow"),
                      product("slow")),
               Change("create", "subscriber", "s", desired=sub("s", "p"))]
    apply_changes(provider, changes, LiveState())
    assert provider.log.index("create subscriber s") > provider.log.index("create product p")


def test_a_change_cancelled_before_it_started_is_not_attempted():
    attempted = solver.run([Change("create", "product", "p", desired=product("p"))],
                           lambda c: (_ for _ in ()).throw(Cancelled()), lambda o: False, ApplyPolicy(),
                           lambda o: None)
    assert attempted == set()


def test_a_replacement_without_its_own_action_creates_then_deletes_or_the_reverse():
    provider = Recorder()
    change = Change("replace", "subscriber", "acme", (FieldChange("key", "x", "y"),), sub("acme", "p"),
                    sub("acme", "p"), reason="cannot change keys")
    report = apply_changes(provider, [change], LiveState())
    assert provider.log == ["create subscriber acme", "delete subscriber acme"]
    assert report.applied[0].message == "replaced (created; then deleted)"
    provider = Recorder()
    apply_changes(provider, [Change("replace", "subscriber", "acme", (), sub("acme", "p"), sub("acme", "p"),
                                    create_before_delete=False)], LiveState())
    assert provider.log == ["delete subscriber acme", "create subscriber acme"]


class Vetoing(Recorder):
    def refusals(self, changes, live):
        return [(c, f"{c.id} may not change") for c in changes if c.kind == "product"]


def test_a_refusal_applies_nothing():
    provider = Vetoing()
    changes = plan_of_two_products_and_subscribers(1)
    report = apply_changes(provider, changes, LiveState())
    assert provider.log == []
    [outcome] = report.outcomes
    assert not outcome.ok and outcome.message.endswith("; nothing was applied")
    assert "p may not change | q may not change" in outcome.message
    assert len(report.not_applied) == len(changes) - 1


class Buggy(Recorder):
    def create_product(self, change, live):
        raise KeyError("oops")


def test_an_unexpected_error_is_reported_on_its_change():
    report = apply_changes(Buggy(), [Change("create", "product", "p", desired=product("p"))], LiveState())
    assert report.failed[0].message == "unexpected error: KeyError: 'oops'"


@pytest.mark.parametrize("workers", [1, 4])
def test_interrupting_an_apply_cancels_the_pacing(workers):
    cancelled = threading.Event()

    class Pacing:
        def cancel(self):
            cancelled.set()

    def execute(change):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        solver.run([Change("create", "product", "p", desired=product("p"))], execute, lambda o: False,
                   ApplyPolicy(workers=workers, pacing=Pacing()), lambda o: None)
    assert cancelled.is_set()
