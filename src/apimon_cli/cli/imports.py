"""`apimon import`: a plan file from a live gateway. Its per-provider options come from the registry."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Annotated, Any, Literal, Optional

import typer

from .common import JsonOpt, fail, make_output, write_private


def _run_import(provider: str, out_file: str | None, managed_only: bool, given: dict[str, Any],
                json_out: bool = False, subscribers_csv: str | None = None) -> None:
    """``given``: the provider options as parsed, by parameter name (``endpoint_url``)."""
    from ..model import Billing, DesiredState, Target
    from ..planfile.writer import plan_document
    from ..providers import ProviderError, get_provider
    from ..providers.registry import names, spec

    out = make_output(json_mode=json_out)
    if provider not in names():
        fail(out, f"error: --provider must be one of {', '.join(names())}; got {provider!r}")
    options = spec(provider).import_options
    settings = {}
    for o in options:
        value = given.get(_param(o.flag))
        value = o.default if value in (None, []) else value
        if value not in (None, []):
            settings[o.setting] = value
    missing = [o.flag for o in options if o.required and o.setting not in settings]
    if missing:
        fail(out, f"error: import from {provider} needs {', '.join(missing)}")
    desired = DesiredState(Target(provider, settings, base_dir=os.getcwd()), Billing(), {}, {})
    try:
        with get_provider(desired) as p:
            exported = p.export_plan(include_unmanaged=not managed_only)
    except ProviderError as exc:
        fail(out, f"error: {exc}")
    products, subscribers, skipped = _importable(exported["products"], exported["subscribers"])
    skipped = [*exported.get("not_imported", []), *skipped]  # what `plan` would show that the file leaves out
    header = (
        f"# Imported by `apimon import --provider {provider}`. Pricing is not stored on every gateway:\n"
        "# review `pricing` before billing from this plan. Key values are never exported.\n"
        "# Run `apimon adopt` on this file to let apimon manage what it does not manage yet.\n"
        + "".join(f"# not imported: {line}\n" for line in skipped)
    )
    csv_ref = None
    if subscribers_csv:
        from ..planfile.sources import write_csv

        # the plan names the CSV relative to itself (where the loader looks for it)
        plan_dir = os.path.dirname(os.path.abspath(out_file)) if out_file else os.getcwd()
        csv_ref = os.path.relpath(os.path.abspath(subscribers_csv), plan_dir)
        try:
            with open(subscribers_csv, "w", encoding="utf-8", newline="") as fh:
                write_csv(sorted(subscribers, key=lambda s: s.id), fh)
        except OSError as exc:
            fail(out, f"error: cannot write {subscribers_csv}: {exc.strerror or exc}")
        out.info(f"Wrote {len(subscribers)} subscribers to {subscribers_csv}.")
    text = plan_document(exported["target"], products, subscribers, billing=exported.get("billing"), header=header,
                         subscribers_csv=csv_ref)
    for line in skipped:
        out.warning(f"warning: not imported: {line}")
    if out_file:
        write_private(out, out_file, text)
        out.info(f"Wrote {len(products)} products and {len(subscribers)} subscribers to {out_file}.")
    if json_out:  # what was imported; the plan itself is in the file, or in "plan" without --out
        out.json({"file": out_file, "products": [p.id for p in products], "subscribers": [s.id for s in subscribers],
                  "not_imported": skipped, **({} if out_file else {"plan": text})})
    elif not out_file:
        sys.stdout.write(text)


def _importable(products: list, subscribers: list) -> tuple[list, list, list[str]]:
    """What a plan file can hold: ids a plan accepts, subscribers of imported products."""
    import re

    from ..planfile.schema import ID_PATTERN

    ok = re.compile(ID_PATTERN).match
    skipped = [f"product {p.id!r}: not a valid plan id ([a-z0-9][a-z0-9-]{{0,62}})" for p in products if not ok(p.id)]
    kept = [p for p in products if ok(p.id)]
    ids = {p.id for p in kept}
    subs = []
    for s in subscribers:
        if not ok(s.id):
            skipped.append(f"subscriber {s.id!r}: not a valid plan id")
        elif s.product not in ids:
            skipped.append(f"subscriber {s.id!r}: its product {s.product!r} is not imported")
        else:
            subs.append(s)
    return kept, subs, skipped


def _param(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _provider_options() -> list[inspect.Parameter]:
    """One CLI option per distinct flag of the providers' import options (``--endpoint`` serves two)."""
    from ..providers.registry import specs

    by_flag: dict[str, list] = {}
    for s in specs().values():
        for o in s.import_options:
            by_flag.setdefault(o.flag, []).append((s.name, o))
    params = []
    for flag, users in by_flag.items():
        option = users[0][1]
        helps = list(dict.fromkeys(o.help for _, o in users))
        text = "/".join(name for name, _ in users) + ": " + "; ".join(helps)
        default = option.default if len(users) == 1 and not option.multiple else None
        value = Literal[tuple(option.choices)] if option.choices and len(users) == 1 else str
        kind = Optional[list[value]] if option.multiple else Optional[value]
        option_type = Annotated[kind, typer.Option(flag, help=text, show_default=default is not None)]
        params.append(inspect.Parameter(_param(flag), inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=option_type))
    return params


def _import_command():
    """The `import` command, its signature built from the registry (typer reads ``__signature__``)."""
    from ..providers.registry import names

    params = [
        inspect.Parameter("provider", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
            Literal[tuple(names())], typer.Option("--provider", help="The gateway to read.")]),
        inspect.Parameter("out_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[str], typer.Option("--out", help="Write the plan here (default: stdout).")]),
        inspect.Parameter("subscribers_csv", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[str], typer.Option("--subscribers-csv", metavar="FILE",
                                        help="Write subscribers to this CSV file (the plan lists it in "
                                             "subscribers_from) instead of YAML: for large gateways.")]),
        *_provider_options(),
        inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOpt),
        inspect.Parameter("managed_only", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--managed-only", help="Only resources apimon already manages (default: "
                                                      "everything, to adopt)")]),
    ]

    def import_(**kwargs: Any) -> None:
        """Write a plan file (format 1) from what a live gateway holds; key values are never written.

        Resources apimon does not manage yet are included: `apimon plan` on the file shows no changes, and
        `apimon adopt` on it lets apimon manage them."""
        _run_import(kwargs.pop("provider"), kwargs.pop("out_file"), kwargs.pop("managed_only"), kwargs,
                    json_out=kwargs.pop("json_out"), subscribers_csv=kwargs.pop("subscribers_csv"))

    import_.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    import_.__annotations__ = {p.name: p.annotation for p in params}
    return import_


def register(app: typer.Typer) -> None:
    app.command("import")(_import_command())
