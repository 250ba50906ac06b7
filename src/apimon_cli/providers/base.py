"""What every gateway adapter answers: what exists, make it so, what was used, what can't I express.

A provider module imports its SDK inside itself only, so `apimon --help` and `apimon validate` never pay
for boto3, azure or google. The CLI talks to providers only through this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date

from ..diff import Change, ChangeSet
from ..model import DesiredState, LiveState, Product, Subscriber, UsageRow


class ProviderError(Exception):
    """A failure talking to the gateway, with a message fit for the user (no traceback)."""


class PlanCheckError(ProviderError):
    """The plan refers to something the gateway does not have (an unknown API, stage, environment)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class ChangeOutcome:
    change: Change
    ok: bool
    message: str = ""


@dataclass
class ApplyReport:
    outcomes: list[ChangeOutcome] = field(default_factory=list)
    not_applied: list[Change] = field(default_factory=list)

    @property
    def failed(self) -> list[ChangeOutcome]:
        return [o for o in self.outcomes if not o.ok]


Progress = Callable[[ChangeOutcome], None]


class Provider(ABC):
    """Base class of gateway adapters. One instance per command run."""

    name: str = ""

    def __init__(self, desired: DesiredState):
        self.desired = desired
        self.settings = desired.target.settings

    # ---- what the gateway can keep: fields it cannot store never show as a diff
    def stores(self, kind: str, field: str) -> bool:
        return True

    @property
    def target_id(self) -> str:
        """Identifies the account/org/service in the ledger (provider + target)."""
        return self.name

    # ---- what exists
    @abstractmethod
    def read_live_state(self) -> LiveState: ...

    def check(self, desired: DesiredState, live: LiveState) -> list[str]:
        """Plan-time problems the gateway reveals (unknown APIs, stages...). Empty when fine."""
        return []

    def annotate(self, changes: ChangeSet) -> None:
        """Add provider notes to a change set (e.g. quota-bound durations)."""
        return None

    # ---- make it so
    @abstractmethod
    def apply_change(self, change: Change, live: LiveState) -> str:
        """Apply one change; return a short outcome message. Raise ProviderError on failure."""

    def apply(self, changes: list[Change], live: LiveState, progress: Progress | None = None) -> ApplyReport:
        """Apply changes in order, stopping at the first failure. Providers may override to batch or
        parallelise, keeping the same contract: outcomes for what was tried, not_applied for the rest."""
        report = ApplyReport()
        for i, change in enumerate(changes):
            try:
                msg = self.apply_change(change, live)
                outcome = ChangeOutcome(change, True, msg)
            except ProviderError as exc:
                outcome = ChangeOutcome(change, False, str(exc))
            report.outcomes.append(outcome)
            if progress:
                progress(outcome)
            if not outcome.ok:
                report.not_applied = list(changes[i + 1:])
                break
        return report

    # ---- keys and usage
    def reveal_key(self, subscriber_id: str) -> str | None:
        return None

    def pull_usage(self, start: date, end: date) -> Iterable[UsageRow]:
        raise ProviderError(f"usage pull is not supported for provider {self.name} yet")

    # ---- import: the live gateway as plan-file data
    def export_plan(self, *, include_unmanaged: bool = True) -> dict:
        """The live gateway as plan data: {"target": {...}, "products": [Product], "subscribers":
        [Subscriber], "billing": {...} (optional)}; unmanaged resources too unless told otherwise."""
        raise ProviderError(f"import is not supported for provider {self.name}")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def product_of(change: Change) -> Product:
    assert isinstance(change.desired, Product)
    return change.desired


def subscriber_of(change: Change) -> Subscriber:
    assert isinstance(change.desired, Subscriber)
    return change.desired
