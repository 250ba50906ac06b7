"""`apimon keys show|list|rotate|finish|revoke|audit`: subscribers' keys, read from and changed on the gateway.

Only `keys show`, `keys rotate --reveal` and `keys rotate --out FILE` ever print or write a key's value; every
other output shows the last 4 characters.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .common import fail, load_plan, make_output

keys_app = typer.Typer(help="API keys of subscribers: show, list, rotate, finish, revoke, audit.",
                       no_args_is_help=True, rich_markup_mode=None)

PlanOpt = Annotated[list[str], typer.Option("--plan", "-p", help="Plan file(s) naming the target.", metavar="PLAN")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
LedgerOpt = Annotated[Optional[str], typer.Option(
    "--ledger", help="Ledger holding the key audit log (default: .apimon/ledger.db beside the plan; or APIMON_LEDGER).",
    metavar="FILE")]


def _session(out, plans: list[str]):
    from ..providers import get_provider

    loaded = load_plan(out, plans)
    return loaded, get_provider(loaded.desired)


def attach_journal(provider, plans: list[str], ledger: str | None):
    """Where rotations are recorded when the gateway cannot (Azure): the ledger's key_rotations table."""
    from ..keys.journal import Journal
    from .common import ledger_path

    provider.key_journal = Journal(ledger_path(ledger, plans), provider.name, provider.target_id)
    return provider


def _record(out, plans: list[str], ledger: str | None, loaded, provider, actions) -> None:
    """The audit log in the ledger, and key events when the plan has an events block."""
    if not actions:
        return
    from ..keys.service import audit_entries, key_events
    from ..ledger.store import Ledger, LedgerError
    from .common import ledger_path

    path = ledger_path(ledger, plans)
    try:
        with Ledger.open(path) as book:
            book.append_audit(audit_entries(actions, provider.name, provider.target_id))
    except (LedgerError, OSError) as exc:
        out.warning(f"warning: the key audit log in {path} could not be written: {exc}")
    if loaded.desired.events is not None:
        from ..events.publish import publish

        publish(key_events(actions, provider.name, provider.target_id), loaded.desired.events,
                list(loaded.desired.files), out)


def _finish(out, plans, ledger, loaded, provider, subscribers=None, live=None) -> list:
    """Complete the rotations whose overlap has ended, and (with an events block) announce the ones ending
    soon, once."""
    from ..keys.service import EXPIRING_NOTICE, expiring_soon
    from ..ledger.store import Ledger, LedgerError
    from .common import ledger_path

    actions = list(provider.finish_rotations(subscribers, live=live))
    if loaded.desired.events is None:
        _record(out, plans, ledger, loaded, provider, actions)
        return actions
    ids = sorted(loaded.desired.subscribers) if subscribers is None else subscribers
    try:
        infos = provider.list_keys(ids)
    except Exception:
        infos = {}
    path = ledger_path(ledger, plans)
    announced: set[tuple[str, str]] = set()
    if path.exists():
        try:
            with Ledger.open(path) as book:
                announced = {(e.subscriber, e.last4) for e in book.audit(provider.name, provider.target_id)
                             if e.action == "expiring"}
        except LedgerError:
            pass
    actions += expiring_soon(infos, announced, getattr(loaded.desired.events, "key_expiring", EXPIRING_NOTICE))
    _record(out, plans, ledger, loaded, provider, actions)
    return actions


def finish_after_apply(out, plans: list[str], ledger: str | None, loaded, provider, live=None) -> None:
    """Every `apply` completes the rotations whose overlap has ended (`keys finish`)."""
    from ..providers import ProviderError

    try:
        actions = _finish(out, plans, ledger, loaded, provider, live=live)
    except ProviderError as exc:
        out.warning(f"warning: keys: rotations could not be finished: {exc}; run `apimon keys finish`")
        return
    for a in actions:
        if a.action == "expired":
            out.info(f"Key ...{a.last4} of {a.subscriber}: overlap ended, old key removed.")


@keys_app.command("show")
def keys_show(
    subscriber: Annotated[str, typer.Argument(help="Subscriber id.", metavar="SUBSCRIBER")],
    plans: PlanOpt,
    json_out: JsonOpt = False,
    secret: Annotated[bool, typer.Option("--secret", help="Reveal the OAuth 2.0 client secret instead, where the "
                                         "gateway keeps it readable (Apigee's consumer secret).")] = False,
) -> None:
    """Reveal one subscriber's (current) API key, read from the gateway that holds it."""
    from ..providers import ProviderError

    out = make_output(json_mode=json_out)
    loaded, session = _session(out, plans)
    if subscriber not in loaded.desired.subscribers:
        fail(out, f"error: subscriber {subscriber} is not in the plan; apimon shows only the keys of subscribers "
                  "it manages")
    what = "client secret" if secret else "key"
    try:
        with session as provider:
            p = attach_journal(provider, plans, None)
            key = p.reveal_secret(subscriber) if secret else p.reveal_key(subscriber)
    except ProviderError as exc:
        fail(out, f"error: {exc}")
    if key is None:
        fail(out, f"error: subscriber {subscriber} has no {what} the gateway can reveal (apply the plan first?"
                  + (" Only Apigee keeps client secrets readable)" if secret else ")"))
    if json_out:  # the one output that holds a key value, on request: not masked
        import json

        field = "client_secret" if secret else "key"
        sys.stdout.write(json.dumps({"subscriber": subscriber, field: key}, indent=2) + "\n")
        return
    sys.stdout.write(key + "\n")


@keys_app.command("secret")
def keys_secret(
    subscriber: Annotated[str, typer.Argument(help="Subscriber id.", metavar="SUBSCRIBER")],
    plans: PlanOpt,
    json_out: JsonOpt = False,
) -> None:
    """Issue a new generated OAuth 2.0 client secret (local gateway) and print it once.

    The state keeps only its hash, so it cannot be shown again: run this again for a new one (the previous
    secret stops working at once; tokens already issued stay valid until they expire). A subscriber whose
    plan entry sets client_secret: {from_env: VAR} keeps that one: change the variable and apply instead."""
    from ..providers import ProviderError

    out = make_output(json_mode=json_out)
    loaded, session = _session(out, plans)
    sub = loaded.desired.subscribers.get(subscriber)
    if sub is None:
        fail(out, f"error: subscriber {subscriber} is not in the plan; apimon issues secrets only to subscribers "
                  "it manages")
    if sub.client_secret is not None:
        fail(out, f"error: subscriber {subscriber}: its client secret comes from the plan (client_secret: "
                  "{from_env: ...}); change the variable and run `apimon apply` instead")
    product = loaded.desired.products.get(sub.product)
    if product is not None and not product.accepts("oauth2"):
        out.warning(f"warning: product {sub.product} does not accept oauth2 (products.{sub.product}.auth): the "
                    "secret gets no tokens until it does")
    try:
        with session as provider:
            secret = provider.new_client_secret(subscriber)
    except ProviderError as exc:
        fail(out, f"error: {exc}")
    if json_out:  # the one output that holds the secret, on request
        import json

        sys.stdout.write(json.dumps({"subscriber": subscriber, "client_secret": secret}, indent=2) + "\n")
        return
    sys.stdout.write(secret + "\n")


@keys_app.command("list")
def keys_list(
    plans: Annotated[list[str], typer.Argument(help="Plan file(s).", metavar="PLAN...")],
    subscriber: Annotated[Optional[str], typer.Option("--subscriber", help="Only this subscriber.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Each subscriber's keys as the gateway holds them (last 4 characters, created, expires, state)."""
    from ..keys.service import managed_subscriber
    from ..providers import ProviderError

    out = make_output(json_mode=as_json)
    loaded, session = _session(out, plans)
    ids = [subscriber] if subscriber else sorted(loaded.desired.subscribers)
    try:
        if subscriber:
            managed_subscriber(loaded.desired, subscriber)  # a typo is an error, not "No keys"
        with session as provider:
            keys = attach_journal(provider, plans, None).list_keys(ids)
    except ProviderError as exc:
        fail(out, f"error: {exc}")
    if as_json:
        out.json({"subscribers": [{"subscriber": sid, "keys": [k.as_json() for k in keys.get(sid, [])]}
                                  for sid in ids if sid in keys]})
        return
    rows = [(sid, k) for sid in ids for k in keys.get(sid, [])]
    if not rows:
        out.print("No keys (apply the plan first?).")
        return
    out.print(f"{'SUBSCRIBER':<24} {'KEY':<8} {'STATE':<13} {'CREATED':<20} EXPIRES")
    for sid, k in rows:
        created = k.created.strftime("%Y-%m-%d %H:%M") if k.created else "-"
        expires = k.expires.strftime("%Y-%m-%d %H:%M") if k.expires else "-"
        out.print(f"{sid:<24} {('...' + k.last4) if k.last4 else '-':<8} {k.state:<13} {created:<20} {expires}")


@keys_app.command("rotate")
def keys_rotate(
    subscriber: Annotated[str, typer.Argument(help="Subscriber id.", metavar="SUBSCRIBER")],
    plans: PlanOpt,
    overlap: Annotated[Optional[str], typer.Option(
        "--overlap", help="How long the old key keeps working: 30s, 15m, 24h, 7d (default: key.overlap, else 24h).",
        metavar="DURATION")] = None,
    reveal: Annotated[bool, typer.Option("--reveal", help="Print the new key (on a terminal only).")] = False,
    out_file: Annotated[Optional[str], typer.Option(
        "--out", help="Write the new key into FILE (readable by its owner only).", metavar="FILE")] = None,
    ledger: LedgerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give a subscriber a new key; the old one keeps working until the overlap ends."""
    from ..keys.durations import format_duration, parse_duration
    from ..keys.service import rotate, rotation_actions
    from ..providers import ProviderError

    out = make_output(json_mode=as_json)
    window = None
    if overlap is not None:
        try:
            window = parse_duration(overlap)
        except ValueError as exc:
            fail(out, f"error: --overlap: {exc}")
    if reveal and not sys.stdout.isatty():
        fail(out, "error: --reveal prints the key only on a terminal; use --out FILE to keep it in a file")
    loaded, session = _session(out, plans)
    try:
        with session as provider:
            rotated = rotate(attach_journal(provider, plans, ledger), loaded.desired, subscriber, window)
            _record(out, plans, ledger, loaded, provider, rotation_actions(rotated))
    except ProviderError as exc:
        fail(out, f"error: {exc}")
    if out_file and rotated.value is not None:
        from .common import write_private

        try:
            write_private(out, out_file, rotated.value + "\n")
        except OSError as exc:
            fail(out, f"error: cannot write {out_file}: {exc.strerror or exc}")
    ends = rotated.ends.isoformat(timespec="seconds") if rotated.ends else None
    if as_json:
        out.json({"subscriber": subscriber, "new_key": rotated.new.as_json(),
                  "old_keys": [k.as_json() for k in rotated.old], "old_keys_work_until": ends,
                  "resumed": rotated.resumed, "written_to": out_file})
        return
    old = ", ".join(f"...{k.last4}" for k in rotated.old) or "none"
    out.print(f"Rotated the key of {subscriber}: new key ...{rotated.new.last4}" + (" (completed an interrupted "
              "rotation)" if rotated.resumed else "") + ".")
    if rotated.old:
        span = format_duration(rotated.overlap) if rotated.overlap is not None else ""
        out.print(f"The old key {old} keeps working until {ends}" + (f" ({span})" if span else "") +
                  "; `apimon keys finish` (or the next `apimon apply`) removes it after that.")
    if reveal and rotated.value is not None:
        sys.stdout.write(rotated.value + "\n")
    elif out_file:
        out.print(f"The new key is in {out_file}.")
    else:
        out.print(f"Fetch the new key with `apimon keys show {subscriber} --plan {' --plan '.join(plans)}`.")


@keys_app.command("finish")
def keys_finish(
    plans: Annotated[list[str], typer.Argument(help="Plan file(s).", metavar="PLAN...")],
    ledger: LedgerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Complete the rotations whose overlap has ended (the old keys stop working and are removed)."""
    from ..providers import ProviderError

    out = make_output(json_mode=as_json)
    loaded, session = _session(out, plans)
    try:
        with session as provider:
            actions = _finish(out, plans, ledger, loaded, attach_journal(provider, plans, ledger))
    except ProviderError as exc:
        fail(out, f"error: {exc}")
    done = [a for a in actions if a.action == "expired"]
    if as_json:
        out.json({"finished": [{"subscriber": a.subscriber, "key_last4": a.last4} for a in done],
                  "expiring": [{"subscriber": a.subscriber, "key_last4": a.last4, "detail": a.detail}
                               for a in actions if a.action == "expiring"]})
        return
    for a in done:
        out.print(f"{a.subscriber}: old key ...{a.last4} removed (overlap ended).")
    out.print(f"Finished {len(done)} rotation{'s' if len(done) != 1 else ''}.")


@keys_app.command("revoke")
def keys_revoke(
    subscriber: Annotated[str, typer.Argument(help="Subscriber id.", metavar="SUBSCRIBER")],
    plans: PlanOpt,
    key: Annotated[Optional[str], typer.Option("--key", help="The key's last 4 characters (default: the key(s) "
                                                "rotating out).", metavar="LAST4")] = None,
    revoke_all: Annotated[bool, typer.Option("--all", help="Revoke every key, leaving the subscriber without one.")]
    = False,
    ledger: LedgerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key now (a leaked key); refuses to leave the subscriber without a working key unless --all."""
    from ..keys.service import managed_subscriber
    from ..providers import ProviderError

    out = make_output(json_mode=as_json)
    loaded, session = _session(out, plans)
    try:
        managed_subscriber(loaded.desired, subscriber)
        with session as provider:
            actions = attach_journal(provider, plans, ledger).revoke_key(subscriber, key, revoke_all)
            _record(out, plans, ledger, loaded, provider, actions)
    except ProviderError as exc:
        fail(out, f"error: {exc}")
    if as_json:
        out.json({"subscriber": subscriber, "revoked": [a.last4 for a in actions], "has_key": not revoke_all})
        return
    for a in actions:
        out.print(f"Revoked key ...{a.last4} of {subscriber}.")
    if revoke_all:
        # local and Azure keep the subscriber (with a key nobody is shown): a rotation issues a new key; AWS and
        # Apigee delete the keys, so the subscriber is re-created by apply
        again = (f"apimon apply {' '.join(plans)}" if provider.name in ("aws", "apigee")
                 else f"apimon keys rotate {subscriber} --plan {' --plan '.join(plans)}")
        out.warning(f"warning: {subscriber} has no working key now; `{again}` issues a new one")


@keys_app.command("audit")
def keys_audit(
    plans: Annotated[list[str], typer.Argument(help="Plan file(s).", metavar="PLAN...")],
    subscriber: Annotated[Optional[str], typer.Option("--subscriber", help="Only this subscriber.")] = None,
    ledger: LedgerOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The key audit log: who did what to which key, when."""
    from ..providers.registry import spec
    from .common import ledger_path, open_ledger

    out = make_output(json_mode=as_json)
    loaded = load_plan(out, plans)
    desired = loaded.desired
    target = spec(desired.target.provider).target_id(desired.target.settings, desired.target.base_dir)
    path = ledger_path(ledger, plans)
    entries = []
    if path.exists():
        with open_ledger(out, path) as book:
            entries = book.audit(desired.target.provider, target, subscriber)
    if as_json:
        out.json({"entries": [e._asdict() for e in entries]})
        return
    if not entries:
        out.print("No key actions recorded.")
        return
    for e in entries:
        out.print(f"{e.at}  {e.who:<12} {e.action:<9} {e.subscriber:<20} ...{e.last4:<5} {e.detail}")


# ---------------------------------------------------------------- plan and apply: key.max_age, finishing rotations

def rotations_due(run) -> list[tuple[str, int]]:
    """(subscriber, age in days) whose key is older than key.max_age (a read only when a plan sets it)."""
    from ..keys.service import due_for_rotation
    from ..providers import ProviderError

    if not any(s.key_max_age is not None for s in run.loaded.desired.subscribers.values()):
        return []
    try:
        return due_for_rotation(run.provider, run.loaded.desired)
    except ProviderError:
        return []  # a provider without key listing: nothing to rotate


def rotations_json(run, due) -> list[dict]:
    """``key_rotations`` of `plan --json` / `apply --json`: the keys past key.max_age that apply rotates."""
    from ..keys.durations import format_duration

    subs = run.loaded.desired.subscribers
    return [{"subscriber": sid, "age_days": days, "max_age": format_duration(subs[sid].key_max_age),
             "overlap": format_duration(subs[sid].key_overlap)} for sid, days in due]


def print_rotations_due(out, run, due) -> None:
    from ..keys.durations import format_duration

    for sid, days in due:
        age = run.loaded.desired.subscribers[sid].key_max_age
        out.print(f"  ~ rotate key of {sid}: {days} days old (key.max_age {format_duration(age)})")
    if due:
        out.print(f"Key rotations: {len(due)} (apply rotates them; the old keys keep working for key.overlap).")


def apply_key_lifecycle(out, run, due, *, show: bool) -> bool:
    """After apply: rotate the keys past key.max_age, then finish the rotations whose overlap has ended.
    Returns False when a rotation failed."""
    from ..keys.service import rotate, rotation_actions
    from ..providers import ProviderError

    plans = list(run.loaded.desired.files)
    attach_journal(run.provider, plans, None)
    ok = True
    for sid, days in due:
        try:
            rotated = rotate(run.provider, run.loaded.desired, sid, None)
        except ProviderError as exc:
            out.error(f"error: rotate key of {sid}: {exc}")
            ok = False
            continue
        _record(out, plans, None, run.loaded, run.provider, rotation_actions(rotated))
        if show:
            out.print(f"  ~ key of {sid} rotated ({days} days old): new key ...{rotated.new.last4}; fetch it with "
                      f"`apimon keys show {sid} --plan {' --plan '.join(plans)}`")
    finish_after_apply(out, plans, None, run.loaded, run.provider, live=None if due else run.live)
    return ok
