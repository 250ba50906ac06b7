"""Saved plans (`plan --out`, `apply --plan-file`): the reviewed change set, refused once the world moved."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from ..providers import ProviderError
from .changes import changeset_to_json
from .engine import GatewayChanged, PlanRun, make_plan

SAVED_PLAN_VERSION = 1


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def saved_plan(run: PlanRun, *, adopt: bool) -> dict:
    return {
        "apimon_saved_plan": SAVED_PLAN_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        # paths as given (relative ones to the working directory), so a saved plan made in one checkout
        # applies in another, e.g. a CI job that downloads it as an artifact
        "files": [{"path": f, "sha256": _sha256(f)} for f in run.loaded.desired.files],
        "provider": run.loaded.desired.target.provider,
        "adopt": adopt,
        "live_fingerprint": run.fingerprint,
        "plan": changeset_to_json(run.changes),
    }


def plan_from_saved(saved_path: str, *, strict: bool = False, lock: bool = False) -> PlanRun:
    """Re-plan from a saved plan; refuse (changing nothing) if the files or the live state moved. With
    ``lock`` the gateway is read (and compared) under the apply lock, which stays held for the apply."""
    try:
        doc = json.loads(Path(saved_path).read_text())
        if not isinstance(doc, dict) or doc.get("apimon_saved_plan") != SAVED_PLAN_VERSION:
            raise ValueError("not an apimon saved plan (format 1)")
        files = [(f["path"], f["sha256"]) for f in doc["files"]]
        adopt = bool(doc.get("adopt"))
        fingerprint = doc["live_fingerprint"]
    except FileNotFoundError:
        raise ProviderError(f"{saved_path}: no such saved plan") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProviderError(f"{saved_path}: cannot read saved plan: {exc}") from None
    for path, digest in files:
        if not Path(path).exists():
            raise ProviderError(f"saved plan is stale: plan file {path} no longer exists; run `apimon plan` again")
        if _sha256(path) != digest:
            raise ProviderError(f"saved plan is stale: plan file {path} changed since the plan was saved; "
                                "run `apimon plan --out` again")
    run = make_plan([p for p, _ in files], strict=strict, adopt=adopt, lock=lock)
    if run.fingerprint != fingerprint:
        run.close()
        raise GatewayChanged("saved plan is stale: the gateway changed while you were planning (since the plan "
                             "was saved); nothing was applied. Run `apimon plan --out` again and review the new "
                             "plan")
    return run
