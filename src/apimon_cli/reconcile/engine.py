"""The engine: plan (load -> read -> diff -> provider checks and notes) and apply (solver -> provider actions
-> report), without printing. The CLI calls these and renders what they return; tests call them directly.

Apply calls the provider's action for each change: ``<action>_<kind>(change, live) -> str`` (e.g.
``create_product``, ``update_subscriber``), returning a short outcome message or raising ``ProviderError``.
A ``replace`` without its own ``replace_<kind>`` runs ``create_<kind>`` then ``delete_<kind>`` (or the
reverse when ``create_before_delete`` is false). Observers see every attempted change on the calling
thread, in the order outcomes arrive: ``progress(outcome)`` (the CLI's printer) and
``on_applied(change, outcome)`` (events).

An interrupt (Ctrl-C, SIGTERM) during an apply is held until the change in flight has ended and been
recorded: a change is never done on the gateway yet missing from the report. A second interrupt stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from dataclasses import replace as _with
from functools import cached_property

from ..model import DesiredState, LiveState
from ..planfile.loader import LoadedPlan, load_or_raise
from ..providers import Provider, ProviderError, get_provider
from ..providers.base import PlanCheckError
from . import solver
from .changes import Change, ChangeSet
from .diff import compute_changes, live_fingerprint, merge_changes


@dataclass
class ChangeOutcome:
    change: Change
    ok: bool
    message: str = ""


@dataclass
class ApplyReport:
    outcomes: list[ChangeOutcome] = field(default_factory=list)  # applied and failed, in the order they ended
    not_applied: list[Change] = field(default_factory=list)  # not attempted (after a failure, or refused)

    @property
    def applied(self) -> list[ChangeOutcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[ChangeOutcome]:
        return [o for o in self.outcomes if not o.ok]


Progress = Callable[[ChangeOutcome], None]
OnApplied = Callable[[Change, ChangeOutcome], None]


class GatewayChanged(ProviderError):
    """The gateway moved between the plan's read and the apply: nothing was applied."""


GATEWAY_CHANGED = ("the gateway changed while you were planning; nothing was applied. Run `apimon plan` again "
                   "and review the new plan")


@dataclass
class PlanRun:
    loaded: LoadedPlan
    provider: Provider
    live: LiveState
    changes: ChangeSet
    lock: AbstractContextManager | None = None  # the apply lock, held since the read (make_plan(lock=True))

    @cached_property
    def fingerprint(self) -> str:
        """A digest of what the plan read (saved plans compare it): computed when asked, since serialising
        a large live state is a good part of a converged plan's time (1M subscribers)."""
        return live_fingerprint(self.live)

    def close(self) -> None:
        """Release the apply lock (if held) and the provider."""
        lock, self.lock = self.lock, None
        try:
            if lock is not None:
                lock.__exit__(None, None, None)
        finally:
            self.provider.close()


# ---------------------------------------------------------------- plan

def make_plan(paths: list[str], *, strict: bool = False, adopt: bool = False, lock: bool = False) -> PlanRun:
    """Validate the plan, read the gateway, compute the changes. Raises PlanError / ProviderError; the
    provider is closed when it raises, and left open (for apply) when it returns.

    With ``lock`` (apply), the provider's apply lock is taken *before* the gateway is read and held until
    ``PlanRun.close()``: a second apply waits for the first, then plans against what it left, so two applies
    never apply diffs computed from the same stale read."""
    loaded = load_or_raise(paths, strict=strict)
    desired = loaded.desired
    assert desired is not None
    provider = get_provider(desired)
    held: AbstractContextManager | None = None
    try:
        if lock:
            ctx = provider.applying()
            ctx.__enter__()
            held = ctx  # released below only once entered
        live = provider.read_live_state()
        changes = plan_changes(provider, desired, live, adopt=adopt, warnings=[str(d) for d in loaded.warnings])
    except BaseException:
        try:
            if held is not None:
                held.__exit__(None, None, None)
        finally:
            provider.close()
        raise
    return PlanRun(loaded, provider, live, changes, lock=held)


def plan_changes(provider: Provider, desired: DesiredState, live: LiveState, *, adopt: bool = False,
                 warnings: list[str] | tuple[str, ...] = ()) -> ChangeSet:
    """The one place a change set is made: the diff under the provider's rules, the provider's own field
    changes merged in, its plan-time checks (``PlanCheckError``), then the validation warnings and the
    provider's warnings, notes and conflicts (one form: ``warning: <provider>: ...``)."""
    changes = compute_changes(desired, live, rules=provider, adopt=adopt)
    merge_changes(changes, provider.extra_changes(desired, live))
    problems = provider.preflight(desired, live, changes)
    if problems:
        raise PlanCheckError(problems)
    changes.warnings.extend(warnings)
    remarks = provider.notes(desired, live, changes)
    changes.warnings.extend(f"warning: {provider.name}: {w}" for w in remarks.warnings)
    changes.notes.extend(remarks.notes)
    changes.conflicts.extend(remarks.conflicts)
    return changes


# ---------------------------------------------------------------- apply

def apply_plan(run: PlanRun, *, progress: Progress | None = None,
               on_applied: OnApplied | None = None) -> ApplyReport:
    """Apply a plan under the apply lock. Without the lock held since the read (or with a lock that covers
    only this machine, as on the clouds) the gateway is read again under the lock first, and a gateway that
    moved since the plan's read refuses the apply (``GatewayChanged``, nothing written)."""
    if run.lock is None:
        with run.provider.applying():
            check_unchanged(run)
            return apply_changes(run.provider, run.changes.changes, run.live, progress=progress,
                                 on_applied=on_applied, locked=True)
    if not run.provider.lock_covers_gateway:
        check_unchanged(run)
    return apply_changes(run.provider, run.changes.changes, run.live, progress=progress, on_applied=on_applied,
                         locked=True)


def check_unchanged(run: PlanRun) -> None:
    """Re-read the gateway; raise ``GatewayChanged`` if it is not what the plan was computed from."""
    if run.changes.empty:
        return
    if live_fingerprint(run.provider.read_live_state()) != run.fingerprint:
        raise GatewayChanged(GATEWAY_CHANGED)


def apply_changes(provider: Provider, changes: list[Change], live: LiveState, *, progress: Progress | None = None,
                  on_applied: OnApplied | None = None, locked: bool = False) -> ApplyReport:
    """Apply changes in dependency order; stop at the first failure (changes in flight finish). The report
    has what was applied, what failed and what was not attempted. The provider's apply lock is taken around
    it unless the caller holds it (``locked``)."""
    report = ApplyReport()

    def observe(outcome: ChangeOutcome) -> None:
        report.outcomes.append(outcome)
        if on_applied is not None:
            on_applied(outcome.change, outcome)
        if progress is not None:
            progress(outcome)
        interrupt.check()  # an interrupt that came while the change was in flight: now it is recorded

    interrupt = _HeldInterrupt()
    refused = provider.refusals(changes, live)
    if refused:  # the provider vetoes the apply as a whole: nothing is changed
        first = refused[0][0]
        observe(ChangeOutcome(first, False, " | ".join(m for _, m in refused) + "; nothing was applied"))
        report.not_applied = [c for c in changes if c is not first]
        return report
    with nullcontext() if locked else provider.applying(), interrupt.holding():
        attempted = solver.run(changes, lambda c: _attempt(provider, c, live), lambda o: not o.ok,
                               provider.apply_policy(), observe)
    interrupt.check()  # came with the last change: the apply is whole, but the user asked to stop
    report.not_applied = [c for i, c in enumerate(changes) if i not in attempted]
    return report


class _HeldInterrupt:
    """SIGINT and SIGTERM held while changes run: the first is noted (and said), raised as
    ``KeyboardInterrupt`` once the change in flight is recorded; a second one raises at once."""

    def __init__(self) -> None:
        self.pending = False

    @contextmanager
    def holding(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def hold(signum, frame) -> None:
            if self.pending:
                raise KeyboardInterrupt
            self.pending = True
            try:
                sys.stderr.write("Interrupt received: finishing the change in flight "
                                 "(interrupt again to stop at once)\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

        for s in previous:
            signal.signal(s, hold)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def check(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


def _attempt(provider: Provider, change: Change, live: LiveState) -> ChangeOutcome:
    try:
        return ChangeOutcome(change, True, perform(provider, change, live))
    except solver.Cancelled:
        raise
    except ProviderError as exc:
        return ChangeOutcome(change, False, str(exc))
    except Exception as exc:  # an SDK error the provider explains, or a bug: reported on this change
        explained = provider.explain(exc, change.label)
        if explained is not None:
            return ChangeOutcome(change, False, str(explained))
        return ChangeOutcome(change, False, f"unexpected error: {type(exc).__name__}: {exc}")


def perform(provider: Provider, change: Change, live: LiveState) -> str:
    """Run the provider's action for one change."""
    action = getattr(provider, f"{change.action}_{change.kind}", None)
    if action is not None:
        return action(change, live)
    if change.action == "replace":
        create, delete = _with(change, action="create"), _with(change, action="delete")
        steps = (create, delete) if change.create_before_delete else (delete, create)
        return "replaced (" + "; then ".join(perform(provider, s, live) for s in steps) + ")"
    raise ProviderError(f"{change.label}: provider {provider.name} cannot {change.action} a {change.kind}")
