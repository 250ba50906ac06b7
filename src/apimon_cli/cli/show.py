"""`apimon show SAVED_PLAN`: print a plan saved with `plan --out` (Terraform's `show`), as text, JSON or
Markdown. It reads only the file: no plan file, no gateway, no credentials."""

from __future__ import annotations

import sys
from typing import Annotated, Literal, Optional

import typer

from .common import JsonOpt, fail, make_output

ShowFormat = Annotated[Optional[Literal["text", "json", "markdown"]], typer.Option(
    "--format", help="text (default), json (the same as --json: the saved plan as it is) or markdown (a "
                     "pull-request comment).", show_default=False)]


def changeset_from_json(doc: dict):
    """A ``ChangeSet`` back from its JSON form (``changeset_to_json``), to print it like `plan` does."""
    from ..model import Unmanaged
    from ..reconcile.changes import LISTED, Change, ChangeSet, FieldChange

    changes = []
    for action, listed in LISTED.items():
        for c in doc["changes"].get(listed, []):
            fields = tuple(FieldChange(name, f.get("before"), f.get("after"))
                           for name, f in c.get("fields", {}).items())
            changes.append(Change(action, c["kind"], c["id"], fields, adopt=bool(c.get("adopt")),
                                  reason=c.get("reason", ""), create_before_delete=c.get("create_before_delete", True)))
    unmanaged = [Unmanaged(u["kind"], u["name"], u.get("detail") or "") for u in doc.get("unmanaged", [])]
    return ChangeSet(changes=changes, unmanaged=unmanaged,
                     conflicts=list(doc.get("conflicts", [])), warnings=list(doc.get("warnings", [])),
                     notes=list(doc.get("notes", [])))


def read_saved(out, path: str) -> dict:
    import json

    from ..reconcile.saved import SAVED_PLAN_VERSION

    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        fail(out, f"error: {path}: no such saved plan (make one with `apimon plan PLAN --out {path}`)")
    except (OSError, UnicodeDecodeError) as exc:
        fail(out, f"error: cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    except json.JSONDecodeError as exc:
        fail(out, f"error: {path}:{exc.lineno}:{exc.colno}: not a saved plan: not JSON ({exc.msg})")
    if not isinstance(doc, dict) or doc.get("apimon_saved_plan") != SAVED_PLAN_VERSION \
            or not isinstance(doc.get("plan"), dict) or not isinstance(doc["plan"].get("changes"), dict):
        fail(out, f"error: {path}: not an apimon saved plan (format {SAVED_PLAN_VERSION}); make one with "
                  "`apimon plan PLAN --out FILE`")
    return doc


def show(
    saved: Annotated[str, typer.Argument(metavar="SAVED_PLAN", help="A plan saved with `apimon plan --out`.",
                                         show_default=False)],
    json_out: JsonOpt = False,
    fmt: ShowFormat = None,
) -> None:
    """Print a saved plan (`plan --out`): what `apply --plan-file` would change, without reading the gateway."""
    if fmt == "json":
        json_out = True
    out = make_output(json_mode=json_out)
    if json_out and fmt in ("text", "markdown"):
        fail(out, f"error: --json and --format {fmt} contradict each other; give one")
    doc = read_saved(out, saved)
    if json_out:
        out.json(doc)
        return
    if fmt == "markdown":
        from ..render.markdown import render_markdown

        sys.stdout.write(out.mask(render_markdown(doc["plan"])))
        return
    from ..render.changes import render_plan

    files = ", ".join(str(f.get("path")) for f in doc.get("files", []) if isinstance(f, dict))
    out.info(f"Saved plan {saved}: made {doc.get('created_at', '?')} for {doc.get('provider', '?')} from {files}"
             + (" (adopting)" if doc.get("adopt") else "") + f"; apply it with `apimon apply --plan-file {saved}`.")
    render_plan(out, changeset_from_json(doc["plan"]), json_out=False)


def register(app: typer.Typer) -> None:
    app.command("show")(show)
