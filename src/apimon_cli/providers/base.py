"""What every gateway adapter answers: what exists, what it can hold, make it so, what was used.

A provider reads (``read_live_state``, a pure read into typed handles), states what its gateway can hold
(``stores``/``replacement`` from its registry entry's capabilities, ``canonical`` for values it holds in its
own form), checks the plan against the gateway (``preflight``), adds what only it knows to a plan
(``extra_changes``, ``notes``: pure) and supplies one action per kind and action
(``create_product(change, live) -> str`` ... ``delete_subscriber``; ``replace_<kind>`` is optional). It
never orders or loops over changes: the engine and its solver do (``reconcile.engine``), under the
provider's ``apply_policy``.

A provider package imports its SDK only in the modules that talk to the gateway, which are imported when
the provider is instantiated: `apimon --help` and `apimon validate` never pay for boto3, azure or google.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..model import DesiredState, LiveState, UsageRow
from ..reconcile.changes import Change, ChangeSet, Replacement
from ..reconcile.solver import ApplyPolicy

#: days before a pulled window that ``usage pull`` asks the gateway about, on a new ledger (first-seen dates)
HISTORY_DAYS = 90

if TYPE_CHECKING:
    from ..keys.model import KeyAction, KeyInfo, Rotated
    from .registry import ProviderSpec


class ProviderError(Exception):
    """A failure talking to the gateway, with a message fit for the user (no traceback)."""


def not_owned(subscriber_id: str) -> ProviderError:
    """`keys show` on a subscriber apimon does not manage: refused, its key is not apimon's to show."""
    return ProviderError(f"subscriber {subscriber_id} is not managed by apimon; apimon shows only the keys it "
                         "owns (adopt it first: `apimon adopt PLAN`)")


class PlanCheckError(ProviderError):
    """The plan refers to something the gateway does not have (an unknown API, stage, environment)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class PlanNotes:
    """What a provider adds to a plan: warnings (printed `warning: <provider>: ...`), notes, conflicts
    (a conflict refuses the apply)."""

    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


class Provider(ABC):
    """Base class of gateway adapters. One instance per command run."""

    name: str = ""

    def __init__(self, desired: DesiredState):
        self.desired = desired
        self.settings = desired.target.settings

    @property
    def spec(self) -> ProviderSpec:
        from .registry import spec

        return spec(self.name)

    # ---- what the gateway can hold (reconcile.diff.Rules)
    def stores(self, kind: str, field: str) -> bool:
        """Whether the gateway keeps this field; fields it does not are never compared. Asked once per
        field of every resource the diff compares: answered from a per-instance memo after the first time."""
        memo = self.__dict__.setdefault("_stores_memo", {})
        known = memo.get((kind, field))
        if known is None:
            known = memo[(kind, field)] = self.spec.capabilities.stores(kind, field)
        return known

    def replacement(self, kind: str, fields: Iterable[str]) -> Replacement | None:
        """The replacement a change to these fields needs (the gateway cannot make it in place), if any."""
        return self.spec.capabilities.replacement(kind, fields)

    def canonical(self, kind: str, resource: Any) -> Any:
        """The resource in the form the gateway holds it, for comparison only (pure)."""
        return resource

    @property
    def target_id(self) -> str:
        """Identifies the account/org/service in the ledger (provider + target); known offline."""
        return self.spec.target_id(self.settings, self.desired.target.base_dir)

    def ledger_target(self) -> str:
        """The target `usage pull` stores rows under: the gateway's own id for the account where it can be
        asked (AWS: the account id from STS), else ``target_id``. May call the gateway; readers of the ledger
        map ``target_id`` to it offline (``Ledger.resolve_target``)."""
        return self.target_id

    # ---- what exists
    @abstractmethod
    def read_live_state(self) -> LiveState:
        """What the gateway holds: owned resources in the neutral model, the rest as unmanaged, typed
        handles for apply. May use the plan to decide what to read (which key values, which unmanaged
        resources could be adopted), never to fill in values."""

    def preflight(self, desired: DesiredState, live: LiveState, changes: ChangeSet) -> list[str]:
        """Plan-time problems the gateway reveals (unknown APIs, stages...), one line each; empty when fine.
        The last step that may read the gateway while planning (e.g. the ETags of what the plan changes)."""
        return []

    def extra_changes(self, desired: DesiredState, live: LiveState) -> list[Change]:
        """Field changes only this provider can see (pure); the engine merges them into the plan."""
        return []

    def notes(self, desired: DesiredState, live: LiveState, changes: ChangeSet) -> PlanNotes:
        """Warnings, notes and conflicts about this plan on this gateway (pure)."""
        return PlanNotes()

    # ---- make it so: actions are methods named <action>_<kind>(change, live) -> str
    def apply_policy(self) -> ApplyPolicy:
        """How the solver runs this provider's changes (workers, per-kind limits, phases, pacing)."""
        return ApplyPolicy()

    # whether ``applying()`` excludes every other apimon apply on this gateway (the local state's lock file);
    # a cloud's lock is this machine's only, so the engine re-reads the gateway under it before writing
    lock_covers_gateway: bool = False

    def applying(self) -> AbstractContextManager:
        """The apply lock, held from the read of an apply until its last write (``providers.lock``): this
        machine's lock file for the target unless the provider has a better one."""
        from .lock import exclusive, host_lock_path

        path = host_lock_path(self.name, self.settings)
        return exclusive(path, what=f"{self.name} target {self.target_id} ({path})")

    def refusals(self, changes: list[Change], live: LiveState) -> list[tuple[Change, str]]:
        """Changes this provider refuses to apply at all; any refusal stops the apply before it starts."""
        return []

    def explain(self, exc: Exception, what: str) -> ProviderError | None:
        """A user-facing error for an SDK exception raised by an action (None: not the SDK's)."""
        return None

    # ---- keys and usage
    def reveal_key(self, subscriber_id: str) -> str | None:
        """The key value of a subscriber apimon owns (None: no such subscriber or key). A subscriber apimon
        does not own raises ``not_owned(subscriber_id)``: apimon shows only the keys it owns."""
        return None

    def reveal_secret(self, subscriber_id: str) -> str | None:
        """The OAuth 2.0 client secret of a subscriber apimon owns, where the gateway keeps it readable (Apigee's
        consumer secret); None: no such subscriber, or a gateway that keeps none or only a hash."""
        return None

    def new_client_secret(self, subscriber_id: str) -> str:
        """A new generated OAuth 2.0 client secret for a subscriber apimon owns, returned once: the gateway
        keeps only its hash, and the subscriber's previous secret stops working (``apimon keys secret``)."""
        raise ProviderError(f"generated client secrets are issued by the local gateway; provider {self.name} "
                            "keeps its own (Apigee: `apimon keys show SUBSCRIBER --secret`), or set "
                            "client_secret: {from_env: VAR} in the plan")

    # ---- key lifecycle (apimon keys rotate|finish|list|revoke; see the ``keys`` package)
    def list_keys(self, subscriber_ids: list[str]) -> dict[str, list[KeyInfo]]:
        """The keys of the owned subscribers among ``subscriber_ids`` as the gateway holds them (never values)."""
        raise ProviderError(f"key lifecycle is not supported for provider {self.name} yet")

    def rotate_key(self, subscriber_id: str, ends: datetime) -> Rotated:
        """A new key that works at once with the same product, limits and quota counters; the current one
        keeps working until ``ends``. Completes an interrupted rotation instead of starting a second one."""
        raise ProviderError(f"key rotation is not supported for provider {self.name} yet")

    def finish_rotations(self, subscriber_ids: list[str] | None = None, live=None) -> list[KeyAction]:
        """Remove the old keys whose overlap has ended (and complete interrupted steps)."""
        return []

    def revoke_key(self, subscriber_id: str, key: str | None, revoke_all: bool) -> list[KeyAction]:
        """Revoke now: the key ending in ``key`` (last 4), else the rotating-out keys; ``revoke_all``: every key."""
        raise ProviderError(f"key revocation is not supported for provider {self.name} yet")

    def pull_usage(self, start: date, end: date) -> Iterable[UsageRow]:
        raise ProviderError(f"usage pull is not supported for provider {self.name} yet")

    def usage_history(self, before: date) -> Iterable[tuple[str, str, str]]:
        """(subscriber, product, ISO day): each subscriber's earliest usage of each product that the gateway can
        report from before the pulled window (``before`` is its first day). `usage pull` persists it as the
        ledger's first-seen record (the setup fee's "first recorded usage"), so a new ledger does not make every
        customer look new; it asks only on a ledger that knows nothing of the target yet.

        By default: the ``HISTORY_DAYS`` before the window through ``pull_usage`` (AWS: one GetUsage span per
        usage plan; Apigee: one stats query per environment; Azure: one report per day). A customer with calls
        then is not new; older usage is not asked for. A provider that keeps its whole history overrides it."""
        seen: dict[tuple[str, str], str] = {}
        for row in self.pull_usage(before - timedelta(days=HISTORY_DAYS), before - timedelta(days=1)):
            if row.count > 0 and row.metric in ("success", "total"):
                key = (row.subscriber, row.product)
                if key not in seen or row.day < seen[key]:
                    seen[key] = row.day
        return sorted((sub, prod, day) for (sub, prod), day in seen.items())

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
