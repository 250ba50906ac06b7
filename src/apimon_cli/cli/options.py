"""The options every command takes (before the command name): ``--allow-endpoint``, ``--timeout``, ``-v``.

They are outside the plan on purpose: a plan file is untrusted input (README "Security"), so what may
receive a credential and how long apimon may wait are decided by whoever runs apimon. Each option has an
environment variable (``APIMON_ALLOW_ENDPOINTS``, ``APIMON_TIMEOUT``, ``APIMON_LOG=debug``); the option wins
(``--allow-endpoint`` adds to the variable's list).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Annotated, Optional

import typer

_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$")


def _bad(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(1)


AllowEndpoint = Annotated[Optional[list[str]], typer.Option(
    "--allow-endpoint", metavar="HOST[:PORT]",
    help="Let a plan send credentials to this host (https; loopback also over http). Repeatable; adds to "
         "APIMON_ALLOW_ENDPOINTS.")]
Timeout = Annotated[Optional[float], typer.Option(
    "--timeout", metavar="SECONDS",
    help="Give up a command that has run this long (default: APIMON_TIMEOUT, else no bound beyond the "
         "per-call timeouts and the retry budget).")]
Verbose = Annotated[bool, typer.Option(
    "-v", "--verbose", help="Log one line per gateway HTTP call on stderr (same as APIMON_LOG=debug).")]


def global_options(
    ctx: typer.Context,
    allow_endpoint: AllowEndpoint = None,
    timeout: Timeout = None,
    verbose: Verbose = False,
) -> None:
    from ..security.endpoints import ALLOW_ENV

    if allow_endpoint:
        for entry in allow_endpoint:
            if not _HOSTPORT.match(entry.strip()):
                _bad(f"--allow-endpoint: {entry!r} is not HOST or HOST:PORT")
        listed = [e for e in os.environ.get(ALLOW_ENV, "").split(",") if e.strip()]
        os.environ[ALLOW_ENV] = ",".join([*listed, *(e.strip() for e in allow_endpoint)])
    if timeout is not None:
        if not timeout > 0:
            _bad(f"--timeout: must be a number of seconds above 0; got {timeout:g}")
        os.environ["APIMON_TIMEOUT"] = repr(timeout)
    if os.environ.get("APIMON_TIMEOUT", "").strip() and ctx.invoked_subcommand != "gateway":
        # `gateway serve` is a server: it is not bounded (its own limits are per request)
        from ..providers.base import ProviderError
        from ..providers.transport import watch

        try:
            watch.configure(timeout)
        except ProviderError as exc:
            _bad(str(exc))
    if verbose:
        os.environ["APIMON_LOG"] = "debug"


_WITH_VALUE = ("--allow-endpoint", "--timeout")
_FLAGS = ("-v", "--verbose")


def hoist(argv: list[str]) -> list[str]:
    """These options are accepted after the command name too (``apimon plan p.yaml --timeout 30``): they are
    moved before it, where the parser takes them. Nothing after ``--`` moves."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name = arg.split("=", 1)[0]
        if name in _WITH_VALUE:
            if "=" in arg:
                front.append(arg)
            else:
                front.extend(argv[i:i + 2])
                i += 1
        elif arg in _FLAGS:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest
