"""Contract-suite harnesses: one module per provider (``contract/<provider>.py`` defining ``HARNESS``), each
driving that provider's fake (``tests/fakes/``) so ``tests/providers/test_contract.py`` can run the same
scenarios on every provider. Adding a provider: its fake and its harness here."""

from __future__ import annotations

import importlib
import pkgutil
from datetime import date
from typing import Any


class Harness:
    """A provider's fake, seen through what every scenario needs."""

    name = ""
    apis = ("petstore",)  # how a plan names the API both products sell
    usage_metric = "total"  # the metric in which pull_usage reports the calls recorded
    tmp_path: Any = None  # the test's directory (set before each scenario)

    def start(self) -> None:
        """Start the fake (a fresh gateway holding one API)."""

    def stop(self) -> None:
        """Stop it."""

    def env(self) -> dict[str, str]:
        """Environment for apimon (credentials, endpoints)."""
        return {}

    def target(self, tmp_path: Any) -> str:
        """The plan's target block (YAML flow mapping)."""
        raise NotImplementedError

    def seed_unmanaged(self) -> None:
        """Create a product (and where the gateway has one, a subscriber of it) apimon did not create."""
        raise NotImplementedError

    def unmanaged_state(self) -> Any:
        """Everything about the unmanaged resources (to check they were never touched)."""
        raise NotImplementedError

    def change_description(self, product: str, text: str) -> None:
        """Change a product's description on the gateway, behind apimon's back (drift)."""
        raise NotImplementedError

    def record_usage(self, subscriber: str, product: str, day: date, count: int) -> None:
        """Make the gateway report ``count`` calls of the subscriber on the product that day."""
        raise NotImplementedError


def harnesses() -> dict[str, Harness]:
    """Every harness of this package, by provider name."""
    out = {}
    for module in pkgutil.iter_modules(__path__):
        harness = importlib.import_module(f"{__name__}.{module.name}").HARNESS
        out[harness.name] = harness
    return out
