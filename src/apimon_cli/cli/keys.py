"""`apimon keys show`: reveal one subscriber's key, read from the gateway (the one command that prints a key)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .common import fail, load_plan, make_output

keys_app = typer.Typer(help="API keys of subscribers.", no_args_is_help=True, rich_markup_mode=None)


@keys_app.command("show")
def keys_show(
    subscriber: Annotated[str, typer.Argument(help="Subscriber id.")],
    plans: Annotated[list[str], typer.Option("--plan", "-p", help="Plan file(s) naming the target.")],
) -> None:
    """Reveal one subscriber's API key, read from the gateway that holds it."""
    from ..providers import ProviderError, get_provider

    out = make_output()
    loaded = load_plan(out, plans)
    try:
        with get_provider(loaded.desired) as provider:
            key = provider.reveal_key(subscriber)
    except ProviderError as exc:
        fail(out, f"error: {exc}")
    if key is None:
        fail(out, f"error: subscriber {subscriber} has no key on the gateway (apply the plan first?)")
    sys.stdout.write(key + "\n")
