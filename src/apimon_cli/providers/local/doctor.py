"""`apimon doctor` on the local target: its state directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ..diagnose import INFO, OK, PROBLEM, Check


def checks(provider: Any) -> Iterator[Check]:
    state = provider.state_dir
    yield Check("credentials", INFO, "the local target needs no credentials")
    if not state.exists():
        parent = next((p for p in state.parents if p.exists()), None)
        if parent is not None and not os.access(parent, os.W_OK):
            yield Check("endpoint", PROBLEM, f"state directory {state} does not exist and {parent} is not writable")
        else:
            yield Check("endpoint", INFO, f"state directory {state} does not exist yet (`apimon apply` creates it)")
        return
    if not os.access(state, os.R_OK | os.W_OK):
        yield Check("permissions", PROBLEM, f"state directory {state} is not readable and writable")
        return
    yield Check("endpoint", OK, f"state directory {state}")
