"""Saved plans (`plan --out`, `apply --plan-file`): the reviewed change set, refused once the world moved."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from ..providers import ProviderError
from .changes import changeset_to_json
from .engine import GatewayChanged, PlanRun, make_plan

SAVED_PLAN_VERSION = 1
MAX_SAVED_PLAN_BYTES = 512 * 1024 * 1024  # far beyond any real plan; bounds what a crafted --plan-file costs


class SavedPlanError(ProviderError):
    """A saved plan that cannot be written or applied; the message says which path and why."""


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _base(saved_path: str) -> str:
    """The directory a saved plan's paths are relative to: where the saved plan file really is."""
    return os.path.dirname(os.path.realpath(saved_path))


def _inside(path: str, base: str) -> bool:
    return os.path.commonpath([path, base]) == base


def plan_file_paths(files, saved_path: str) -> list[str]:
    """The plan files as a saved plan at ``saved_path`` names them: relative to the saved plan's directory,
    which must hold them (no absolute paths, no ``..``), so the saved plan applies from any working
    directory and in another checkout, and can never point apimon at a file elsewhere."""
    base = _base(saved_path)
    rels = []
    for f in files:
        real = os.path.realpath(f)
        if not _inside(real, base):
            raise SavedPlanError(
                f"--out {saved_path}: the plan file {f} is not inside {base}; a saved plan names its plan files "
                "relative to its own directory, so save it in the plan files' directory or one above it "
                "(e.g. --out plan.out beside them)")
        rels.append(Path(os.path.relpath(real, base)).as_posix())
    return rels


def saved_plan(run: PlanRun, *, adopt: bool, saved_path: str = "saved-plan.json") -> dict:
    return {
        "apimon_saved_plan": SAVED_PLAN_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        # relative to the saved plan's own directory, which holds them (README, "Saved plans")
        "files": [{"path": rel, "sha256": _sha256(f)}
                  for f, rel in zip(run.loaded.desired.files, plan_file_paths(run.loaded.desired.files, saved_path),
                                    strict=True)],
        # subscribers_from CSV files: checked the same way
        "data_files": [{"path": rel, "sha256": _sha256(f)}
                       for f, rel in zip(run.loaded.desired.data_files,
                                         plan_file_paths(run.loaded.desired.data_files, saved_path), strict=True)],
        "provider": run.loaded.desired.target.provider,
        "adopt": adopt,
        "live_fingerprint": run.fingerprint,
        "plan": changeset_to_json(run.changes),
    }


def _shown(text: str) -> str:
    return repr(text if len(text) <= 120 else text[:117] + "...")


def _read_saved(saved_path: str) -> dict:
    """The saved plan's JSON, or SavedPlanError; never quotes the file's content (a crafted --plan-file may
    name any file the process can read)."""
    try:
        st = os.stat(saved_path)
    except FileNotFoundError:
        raise SavedPlanError(f"{saved_path}: no such saved plan") from None
    except OSError as exc:
        raise SavedPlanError(f"{saved_path}: cannot read saved plan: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SavedPlanError(f"{saved_path}: not a saved plan (not a regular file); give the file `apimon plan "
                             "--out` wrote")
    if st.st_size > MAX_SAVED_PLAN_BYTES:
        raise SavedPlanError(f"{saved_path}: not a saved plan (larger than {MAX_SAVED_PLAN_BYTES // 2**20} MiB)")
    try:
        raw = Path(saved_path).read_bytes()
    except OSError as exc:
        raise SavedPlanError(f"{saved_path}: cannot read saved plan: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SavedPlanError(f"{saved_path}: not an apimon saved plan (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:  # the position only: exc.doc is the content
        raise SavedPlanError(f"{saved_path}: not an apimon saved plan (not JSON: {exc.msg} at line {exc.lineno}, "
                             f"column {exc.colno})") from None
    except RecursionError:
        raise SavedPlanError(f"{saved_path}: not an apimon saved plan (nested too deeply)") from None
    if not isinstance(doc, dict) or doc.get("apimon_saved_plan") != SAVED_PLAN_VERSION:
        raise SavedPlanError(f"{saved_path}: not an apimon saved plan (format {SAVED_PLAN_VERSION})")
    return doc


def _saved_files(doc: dict, saved_path: str, key: str = "files") -> list[tuple[str, str]]:
    """(path to load, sha256) per plan file (``data_files``: subscribers_from CSV files), each resolved
    against the saved plan's directory and kept inside it."""
    files = doc.get(key, [] if key == "data_files" else None)
    if not isinstance(files, list) or (not files and key == "files"):
        raise SavedPlanError(f"{saved_path}: not an apimon saved plan (`{key}` must list the plan files)")
    base = _base(saved_path)
    out = []
    for i, f in enumerate(files):
        if not (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)):
            raise SavedPlanError(f"{saved_path}: not an apimon saved plan ({key}[{i}] needs a path and a sha256)")
        rel = f["path"]
        parts = rel.replace("\\", "/").split("/")
        why = None
        if not rel or "\x00" in rel:
            why = "is empty" if not rel else "holds a NUL byte"
        elif os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
            why = "is absolute"
        elif ".." in parts:
            why = "leaves the saved plan's directory (..)"
        if why is None:
            candidate = os.path.join(base, *parts)
            if not _inside(os.path.realpath(candidate), base):
                why = f"leads outside the saved plan's directory (through a symlink: {candidate})"
        if why is not None:
            raise SavedPlanError(
                f"{saved_path}: refusing plan file path {_shown(rel)}: it {why}; a saved plan may only name plan "
                f"files inside its own directory ({base}). Run `apimon plan --out` again")
        out.append((candidate, f["sha256"]))
    return out


def plan_from_saved(saved_path: str, *, strict: bool = False, lock: bool = False) -> PlanRun:
    """Re-plan from a saved plan; refuse (changing nothing) if the files or the live state moved. With
    ``lock`` the gateway is read (and compared) under the apply lock, which stays held for the apply."""
    doc = _read_saved(saved_path)
    files = _saved_files(doc, saved_path)
    data_files = _saved_files(doc, saved_path, "data_files")
    adopt = bool(doc.get("adopt"))
    fingerprint = doc.get("live_fingerprint")
    if not isinstance(fingerprint, str):
        raise SavedPlanError(f"{saved_path}: not an apimon saved plan (no live_fingerprint)")
    for path, digest in files + data_files:
        if not os.path.isfile(path):
            raise SavedPlanError(f"saved plan is stale: plan file {path} (from {saved_path}) no longer exists; run "
                                 "`apimon plan --out` again")
        try:
            actual = _sha256(path)
        except OSError as exc:
            raise SavedPlanError(f"saved plan {saved_path}: cannot read plan file {path}: "
                                 f"{exc.strerror or exc}") from None
        if actual != digest:
            raise SavedPlanError(f"saved plan is stale: plan file {path} changed since the plan was saved; "
                                 "run `apimon plan --out` again")
    run = make_plan([p for p, _ in files], strict=strict, adopt=adopt, lock=lock)
    if run.fingerprint != fingerprint:
        run.close()
        raise GatewayChanged("saved plan is stale: the gateway changed while you were planning (since the plan "
                             "was saved); nothing was applied. Run `apimon plan --out` again and review the new "
                             "plan")
    return run
