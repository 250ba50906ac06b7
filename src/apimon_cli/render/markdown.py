"""A plan as Markdown for a pull-request comment (`plan --format markdown`, `show SAVED_PLAN --format
markdown`): the summary line first, then one collapsed ``<details>`` block per resource with its field
changes as a ``diff`` code block. Works from the plan's JSON form (``changeset_to_json``), the form a
saved plan keeps, so both commands print the same thing. Key values never appear: key fields are shown as
``(sensitive)`` whatever the document holds, and the caller's masker runs over the result."""

from __future__ import annotations

from ..reconcile.changes import SENSITIVE

_ORDER = (("creating", "create"), ("updating", "update"), ("replacing", "replace"), ("deleting", "delete"))
_SYMBOL = {"create": "+", "update": "~", "delete": "-", "replace": "-/+"}
_VERB = {"create": "will be created", "update": "will be updated in place", "delete": "will be destroyed",
         "replace": "will be replaced"}


def summary_text(summary: dict) -> str:
    """Terraform's summary (a replacement counts once as an add and once as a destroy)."""
    if not summary.get("total"):
        return "No changes. The gateway matches the plan."
    return (f"Plan: {summary['creating'] + summary['replacing']} to add, {summary['updating']} to change, "
            f"{summary['deleting'] + summary['replacing']} to destroy.")


def _value(name: str, v: object) -> str:
    if name == "key" or name.startswith("key.") or v == SENSITIVE:
        return SENSITIVE
    if v is None:
        return "(none)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def _cell(text: str) -> str:
    """Text inside HTML (the <summary>) and table cells: no markup, no pipes."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("\n", " "))


def _fence(lines: list[str]) -> str:
    body = "\n".join(lines)
    ticks = "```"
    while ticks in body:
        ticks += "`"
    return f"{ticks}diff\n{body}\n{ticks}"


def render_markdown(plan: dict) -> str:
    """``plan``: a change set as JSON (``changeset_to_json``). The first line is the summary line."""
    changes = plan.get("changes", {})
    summary = plan.get("summary", {})
    rotations = plan.get("key_rotations") or []
    head = summary_text(summary)
    if rotations and not summary.get("total"):
        head = f"No resource changes; {len(rotations)} key{'s' if len(rotations) != 1 else ''} to rotate."
    out = [f"**{head}**", ""]
    counts = [(listed, action) for listed, action in _ORDER if changes.get(listed)]
    if counts:
        out += ["| action | resources |", "|---|---:|"]
        out += [f"| {_SYMBOL[a]} {a} | {len(changes[listed])} |" for listed, a in counts]
        out.append("")
    for listed, action in _ORDER:
        for c in changes.get(listed, []):
            verb = "will be adopted (apimon takes ownership)" if c.get("adopt") else _VERB[action]
            head = f"{_SYMBOL[action]} {c['kind']} {c['id']} {verb}"
            lines: list[str] = []
            if action == "replace":
                order = ("the new one is made before the old one is removed" if c.get("create_before_delete", True)
                         else "the old one is removed before the new one is made")
                lines.append(f"# {c.get('reason', '')}; {order}")
            for name, f in c.get("fields", {}).items():
                before, after = _value(name, f.get("before")), _value(name, f.get("after"))
                if action == "create":
                    lines.append(f"+ {name} = {after}")
                elif action == "delete":
                    lines.append(f"- {name} = {before}")
                else:
                    lines += [f"- {name} = {before}", f"+ {name} = {after}"]
            out += ["<details>", f"<summary><code>{_cell(head)}</code></summary>", ""]
            out += [_fence(lines or ["(no field changes)"]), "", "</details>", ""]
    if rotations:
        out += ["**Key rotations** (key.max_age; the old keys keep working for key.overlap)", ""]
        out += [f"- `~ rotate key of {_cell(r['subscriber'])}: {r['age_days']} days old` (key.max_age {r['max_age']})"
                for r in rotations] + [""]
    unmanaged = plan.get("unmanaged", [])
    if unmanaged:
        out += ["<details>", f"<summary>{len(unmanaged)} unmanaged resource{'s' if len(unmanaged) != 1 else ''}, "
                "left alone</summary>", ""]
        out += [f"- `{_cell(u['kind'])} {_cell(u['name'])}`" + (f": {_cell(u['detail'])}" if u.get("detail") else "")
                for u in unmanaged]
        out += ["", "</details>", ""]
    for heading, items in (("Conflicts (nothing can be applied until they are resolved)", plan.get("conflicts")),
                           ("Warnings", plan.get("warnings")), ("Notes", plan.get("notes"))):
        if items:
            out += [f"**{heading}**", ""] + [f"- {_cell(str(i))}" for i in items] + [""]
    return "\n".join(out).rstrip() + "\n"
