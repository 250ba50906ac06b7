"""`apimon doctor`: what a plan needs from its gateway, checked with read-only calls.

Each provider's ``doctor.py`` yields ``Check``s (its registry entry names it): where its credentials come
from, whether the endpoint answers, whether the credentials may read what apimon reads, and its quotas in
use against their limits. Nothing is created, changed or deleted; no key value is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

OK, INFO, WARNING, PROBLEM = "ok", "info", "warning", "problem"


@dataclass(frozen=True)
class Check:
    name: str  # "credentials" | "endpoint" | "permissions" | "quotas" | "ledger" | ...
    status: str  # ok | info | warning | problem
    detail: str

    def as_dict(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    result = fn()
    return result, (time.monotonic() - t0) * 1000


def quota(what: str, used: int, limit: int, where: str, planned: int | None = None) -> Check:
    """Quota in use against its limit: a warning from 80 %, a problem when the plan needs more than is left."""
    text = f"{what}: {used:,} of {limit:,} in use{where}"
    if planned is not None and planned > limit:
        return Check("quotas", PROBLEM, f"{text}; the plan needs {planned:,}, more than the limit "
                                        "(ask for a higher quota first)")
    if used >= limit:
        return Check("quotas", PROBLEM, f"{text}: at the limit, nothing more can be created")
    if used >= 0.8 * limit:
        return Check("quotas", WARNING, f"{text}: above 80 %")
    return Check("quotas", OK, text)


def provider_checks(provider: Any) -> Iterator[Check]:
    """The provider's own checks (its ``doctor`` module), each failure turned into a problem."""
    from .base import ProviderError
    from .registry import spec

    ref = spec(provider.name).doctor
    if ref is None:
        yield Check("gateway", INFO, f"provider {provider.name} has no checks")
        return
    import importlib

    module, _, attr = ref.partition(":")
    checks = getattr(importlib.import_module(module), attr)
    try:
        yield from checks(provider)
    except ProviderError as exc:
        yield Check("gateway", PROBLEM, str(exc))
