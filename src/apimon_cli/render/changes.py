"""A change set in the style of `terraform plan`: + create, ~ update, - destroy, -/+ replace, field
before -> after; apply progress and the apply report."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..reconcile.changes import Change, ChangeSet, change_to_json, changeset_to_json
from ..reconcile.engine import ApplyReport, ChangeOutcome
from .output import Output
from .words import count

_SYMBOL = {"create": ("+", "green"), "update": ("~", "yellow"), "delete": ("-", "red"), "replace": ("-/+", "red")}
_VERB = {"create": "will be created", "update": "will be updated in place", "delete": "will be destroyed",
         "replace": "will be replaced"}


def _value(v: object) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if v == "(sensitive)" else f'"{v}"'
    return str(v)


# A line rich would print differently from its plain text: emoji codes (":name:"), markup-like brackets
# and backslashes, tabs (expanded) and control characters (stripped). Those lines go through rich itself.
_RICH_ONLY = re.compile(r"[\\\[\x00-\x1f\x7f]|:\S*:")


class Lines:
    """Lines of the diff (and apply progress) written in batches, not one ``print`` per line.

    When stdout is not a terminal the text is written as is (masked), byte-identical to what rich prints
    there (no styles, no wrapping with ``soft_wrap``); the rare line rich would change is printed through
    rich. On a terminal the lines of a batch become one ``rich.text.Text`` printed at once. A batch ends
    at ``size`` lines or, with ``interval`` set (apply progress), at most that many seconds after its first
    line: a timer writes it even while the apply waits for a slow change."""

    def __init__(self, out: Output, *, size: int = 2000, interval: float | None = None):
        self.out = out
        self.plain = not out.out.is_terminal  # asked once, not per line (isatty)
        self.size = size
        self.interval = interval
        self._batch: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def add(self, text: str, style: str | None = None) -> None:
        with self._lock:
            self._batch.append((text, style))
            if len(self._batch) >= self.size:
                self._write()
            elif self.interval is not None and self._timer is None:
                self._timer = threading.Timer(self.interval, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        mask = self.out.mask
        if self.plain:
            write = sys.stdout.write
            chunk: list[str] = []
            for text, style in batch:
                text = mask(text)
                if _RICH_ONLY.search(text) is None:
                    chunk.append(text)
                    continue
                if chunk:
                    write("\n".join(chunk) + "\n")
                    chunk = []
                self.out.print(text, style=style)  # already masked; masking again changes nothing
            if chunk:
                write("\n".join(chunk) + "\n")
            sys.stdout.flush()
            return
        from rich.text import Text

        renderable = Text()
        for text, style in batch:
            renderable.append_text(self.out.out.render_str(self.out._escape(mask(text)), style=style or ""))
            renderable.append("\n")
        self.out.out.print(renderable, end="")


def render_change(out: Output | Lines, c: Change) -> None:
    lines = out if isinstance(out, Lines) else Lines(out)
    sym, style = _SYMBOL[c.action]
    verb = "will be adopted (apimon takes ownership)" if c.adopt else _VERB[c.action]
    lines.add(f"  {sym} {c.kind} {c.id} {verb}", f"bold {style}")
    if c.action == "replace":
        order = "the new one is made before the old one is removed" if c.create_before_delete else \
            "the old one is removed before the new one is made"
        lines.add(f"      # {c.reason}; {order}", style)
    for f in c.fields:
        if c.action == "create":
            lines.add(f"      + {f.field} = {_value(f.after)}", style)
        elif c.action == "delete":
            lines.add(f"      - {f.field} = {_value(f.before)}", style)
        else:
            lines.add(f"      ~ {f.field}: {_value(f.before)} -> {_value(f.after)}", style)
    if lines is not out:
        lines.flush()


def summary_line(cs: ChangeSet) -> str:
    """Terraform's summary: a replacement counts once as an add and once as a destroy."""
    s = cs.summary
    return (f"Plan: {s['creating'] + s['replacing']} to add, {s['updating']} to change, "
            f"{s['deleting'] + s['replacing']} to destroy.")


#: A plan with more changes than this is summarised unless ``--full`` is given.
SUMMARY_THRESHOLD = 1000
#: How many changes of each kind and action a summary shows in full.
SUMMARY_FIRST = 20


def render_changeset(out: Output, cs: ChangeSet, *, full: bool = False, key_rotations: int = 0) -> None:
    """``key_rotations``: keys past key.max_age that apply will rotate (listed by the caller after the diff),
    so a plan with only those is not "No changes"."""
    lines = Lines(out)
    for u in cs.unmanaged:
        detail = f" ({u.detail})" if u.detail else ""
        lines.add(f"  = {u.kind} {u.name}: unmanaged, left alone{detail}", "dim")
    if full or len(cs.changes) <= SUMMARY_THRESHOLD:
        for c in cs.changes:
            render_change(lines, c)
    else:
        _render_summary(lines, cs)
    for note in cs.notes:
        lines.add(f"  note: {note}", "cyan")
    if cs.empty and not key_rotations:
        lines.add("No changes. The gateway matches the plan.", "bold green")
    elif cs.empty:
        lines.add("No resource changes; keys to rotate:", "bold")
    else:
        lines.add("")
        lines.add(summary_line(cs), "bold red" if cs.summary["deleting"] or cs.summary["replacing"] else "bold")
    lines.flush()


def _render_summary(lines: Lines, cs: ChangeSet) -> None:
    """A large plan: the first ``SUMMARY_FIRST`` changes of each kind and action in full, how many more
    there are, and the changes per product (a subscriber counts under the product it ends up on, a
    deleted one under the product it had)."""
    from collections import Counter

    shown: Counter = Counter()
    hidden: Counter = Counter()
    per_product: dict[str, Counter] = {}
    for c in cs.changes:
        key = (c.kind, c.action)
        if shown[key] < SUMMARY_FIRST:
            shown[key] += 1
            render_change(lines, c)
        else:
            hidden[key] += 1
        if c.kind == "product":
            product = c.id
        else:
            resource = c.desired if c.desired is not None else c.live
            product = getattr(resource, "product", None)
        if product is not None:
            per_product.setdefault(product, Counter())[c.action] += 1
    for (kind, action), n in hidden.items():
        lines.add(f"  ... and {count(n, f'more {kind} change')} ({action}); `--full` shows every change", "dim")
    lines.add("")
    lines.add(f"Changes per product ({len(cs.changes):,} changes, summarised; `--full` for all of them):", "bold")
    for product in sorted(per_product):
        counts = per_product[product]
        parts = [f"{counts[a]:,} to {verb}" for a, verb in
                 (("create", "create"), ("update", "update"), ("replace", "replace"), ("delete", "destroy"))
                 if counts[a]]
        lines.add(f"  {product}: {', '.join(parts)}")


def render_plan(out: Output, cs: ChangeSet, *, json_out: bool, full: bool = False,
                key_rotations: list[dict] | None = None) -> None:
    """What `plan` and `apply` show before acting: warnings and the diff (or the JSON, always complete),
    then conflicts. A diff of more than ``SUMMARY_THRESHOLD`` changes is summarised unless ``full``.
    ``key_rotations``: the keys past key.max_age that apply rotates (``key_rotations`` in the JSON)."""
    if json_out:
        doc = changeset_to_json(cs)
        if key_rotations is not None:
            doc["key_rotations"] = key_rotations
        out.json(doc)
    else:
        for w in cs.warnings:
            out.warning(w)
        render_changeset(out, cs, full=full, key_rotations=len(key_rotations or []))
    render_conflicts(out, cs)


def render_conflicts(out: Output, cs: ChangeSet) -> None:
    for c in cs.conflicts:
        out.error(f"error: {c}")


def render_apply_json(out: Output, cs: ChangeSet, report: ApplyReport | None, *, interrupted: bool = False,
                      key_rotations: list[dict] | None = None) -> None:
    """`apply --json`: the plan and what became of each change (``interrupted``: Ctrl-C or SIGTERM);
    ``key_rotations`` (keys past key.max_age that apply rotates) goes into the plan part."""
    report = report or ApplyReport()
    plan = changeset_to_json(cs)
    if key_rotations is not None:
        plan["key_rotations"] = key_rotations
    out.json({
        "plan": plan,
        "applied": [change_to_json(o.change) | {"outcome": o.message} for o in report.applied],
        "failed": [change_to_json(o.change) | {"error": o.message} for o in report.failed],
        "not_applied": [change_to_json(c) for c in report.not_applied],
        **({"interrupted": True} if interrupted else {}),
    })


@contextmanager
def apply_progress(out: Output, total: int, *, full: bool = False) -> Iterator[Callable[[ChangeOutcome], None]]:
    """A progress callback for the engine: each outcome as a line (written in batches of at most 0.1 s),
    and a bar on a terminal. An apply of more than ``SUMMARY_THRESHOLD`` changes shows the first
    ``SUMMARY_FIRST`` outcomes of each kind and action, then how many more were applied (every failure is
    shown); ``full`` shows every outcome."""
    lines = Lines(out, interval=0.1)
    show = _OutcomeFilter(lines, summarise=not full and total > SUMMARY_THRESHOLD)
    if not (out.err.is_terminal and total > 1):
        try:
            yield show
        finally:
            show.finish()
            lines.flush()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("Applying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=out.out,
                  transient=False) as bar:
        task = bar.add_task("apply", total=total)

        def progress(outcome: ChangeOutcome) -> None:
            show(outcome)
            bar.advance(task)

        try:
            yield progress
        finally:
            show.finish()
            lines.flush()


class _OutcomeFilter:
    def __init__(self, lines: Lines, *, summarise: bool):
        from collections import Counter

        self.lines = lines
        self.summarise = summarise
        self.shown: Counter = Counter()
        self.hidden: Counter = Counter()

    def __call__(self, o: ChangeOutcome) -> None:
        key = (o.change.kind, o.change.action)
        if not o.ok or not self.summarise or self.shown[key] < SUMMARY_FIRST:
            self.shown[key] += 1
            render_outcome(self.lines, o)
        else:
            self.hidden[key] += 1

    def finish(self) -> None:
        for (kind, action), n in self.hidden.items():
            more = count(n, f"more {kind} change")
            self.lines.add(f"  ... and {more} applied ({action}); `--full` shows each", "dim")


def render_outcome(out: Output | Lines, o: ChangeOutcome) -> None:
    sym, style = _SYMBOL[o.change.action]
    if o.ok:
        if isinstance(out, Lines):
            out.add(f"  {sym} {o.change.kind} {o.change.id}: {o.message}", style)
        else:
            out.print(f"  {sym} {o.change.kind} {o.change.id}: {o.message}", style=style)
    else:
        if isinstance(out, Lines):  # stdout so far comes first, then the failure on stderr
            out.flush()
            out = out.out
        out.error(f"  ! {o.change.kind} {o.change.id}: FAILED: {o.message}")


def _changes(n: int) -> str:
    return f"{n} change{'' if n == 1 else 's'}"


def render_apply_report(out: Output, report: ApplyReport, *, interrupted: bool = False) -> None:
    """The apply's outcome; a failure (or an interrupt) lists what was applied, failed, not attempted."""
    done = report.applied
    if not report.failed and not interrupted:
        out.print(f"Apply complete: {_changes(len(done))} applied.", style="bold green")
        return
    out.error(f"Apply {'interrupted' if interrupted else 'stopped'}: {_changes(len(done))} applied, "
              f"{len(report.failed)} failed, {len(report.not_applied)} not attempted.")
    for o in done:
        out.error(f"  applied:      {o.change.action} {o.change.kind} {o.change.id}")
    for o in report.failed:
        out.error(f"  failed:       {o.change.action} {o.change.kind} {o.change.id}: {o.message}")
    for c in report.not_applied:
        out.error(f"  not applied:  {c.action} {c.kind} {c.id}")
    out.error("Run `apimon apply` again: it continues from what is live." if interrupted else
              "Fix the cause and run `apimon apply` again: it continues from what is live.")
