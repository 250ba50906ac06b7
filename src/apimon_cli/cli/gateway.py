"""`apimon gateway serve`: the local gateway in front of the plan's upstreams (``apimon_cli.gateway``)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import PlanArgs, fail, load_plan, make_output

gateway_app = typer.Typer(
    help="The local gateway: serve the local target's products, keys and limits.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@gateway_app.command("serve")
def gateway_serve(
    plans: PlanArgs,
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to listen on (port 0: any free port).")
    ] = "127.0.0.1:8080",
    connect_timeout: Annotated[
        float, typer.Option("--connect-timeout", help="Seconds to get a connection to an upstream; then 504.")
    ] = 5.0,
    upstream_timeout: Annotated[
        float,
        typer.Option(
            "--upstream-timeout",
            help="Seconds to wait for an upstream's response headers or next body chunk; then 504.",
        ),
    ] = 30.0,
    total_timeout: Annotated[
        float,
        typer.Option(
            "--total-timeout",
            help="Seconds one request may take from its arrival to its response's last byte; then 504 "
            "(or the body is cut).",
        ),
    ] = 300.0,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Gateway processes on the one port (SO_REUSEPORT); more than 1 needs "
            "target.local.limits.backend redis.",
        ),
    ] = 1,
    tls_cert: Annotated[
        str | None, typer.Option("--tls-cert", help="Serve HTTPS with this certificate (PEM; TLS 1.2 or later).")
    ] = None,
    tls_key: Annotated[str | None, typer.Option("--tls-key", help="The certificate's private key (PEM).")] = None,
    client_ca: Annotated[
        str | None,
        typer.Option("--client-ca", help="Ask clients for a certificate signed by this CA (PEM): mutual TLS for "
                     "products with auth mtls (a certificate is asked for, not required)."),
    ] = None,
) -> None:
    """Run the local gateway in front of the plan's upstreams.

    Proxies /API/PATH to target.local.upstreams[API] with key checks (x-api-key), rate limits, quotas and
    usage metering from the local target's state; applies take effect within a second. Stop with Ctrl-C or
    SIGTERM: pending usage counts are written first."""
    from ..gateway import GatewayError, config_from_plan, serve

    out = make_output()
    loaded = load_plan(out, plans)

    def ready(gw) -> None:
        apis = ", ".join(f"{a} -> {u}" for a, u in sorted(gw.upstreams.items())) or "none"
        out.info(
            f"apimon gateway listening on {gw.url} ({len(gw.keys)} keys; upstreams: {apis}; "
            f"event loop: {gw.loop_name}); Ctrl-C to stop"
        )

    def ready_all(info) -> None:
        apis = ", ".join(f"{a} -> {u}" for a, u in sorted(info.upstreams.items())) or "none"
        out.info(
            f"apimon gateway listening on {info.url} ({info.workers} workers; {info.keys} keys; upstreams: {apis}; "
            f"event loop: {info.loop_name}); Ctrl-C to stop"
        )

    try:
        config = config_from_plan(
            loaded.desired,
            listen=listen,
            connect_timeout=connect_timeout,
            upstream_timeout=upstream_timeout,
            total_timeout=total_timeout,
            tls_cert=tls_cert,
            tls_key=tls_key,
            client_ca=client_ca,
        )
        if workers == 1:
            summary = serve(config, on_ready=ready)
        else:
            from ..gateway.workers import serve_workers

            summary = serve_workers(config, workers, on_ready=ready_all,
                                    on_note=lambda line: out.warning(f"apimon gateway: warning: {line}"))
    except GatewayError as exc:
        fail(out, f"error: {exc}")
    written = (
        f"{summary.requests} metered requests written to the usage table"
        if not summary.unwritten
        else f"{summary.requests} metered requests, {summary.written} written to the usage table and "
        f"{summary.unwritten} NOT written"
    )
    out.info(
        f"apimon gateway stopped after {summary.seconds:.0f} s: {written}, "
        f"{summary.unauthenticated} without a valid key (not metered)."
        + (f" {summary.limits_errors} requests were decided without Redis (target.local.limits.on_error)."
           if summary.limits_errors else "")
    )
    if summary.lost or summary.lost_quota:
        out.json({"unwritten_usage": summary.lost, "unwritten_quota": summary.lost_quota})
        fail(out, "error: some usage counts could not be written to the state (printed above as JSON)")


@gateway_app.command("rotate-signing-key")
def gateway_rotate_signing_key(plans: PlanArgs) -> None:
    """Add a new signing key for the tokens the local gateway issues.

    New tokens are signed with it at once (running gateways reload within a second); the previous key keeps
    validating until the last token it signed has expired (the longest token_ttl of the plan's products plus
    60 s of leeway) and is removed by the next rotation after that. Nothing else changes."""
    from datetime import UTC, datetime

    from ..gateway.store import rotate_signing_key
    from ..gateway.tokens import LEEWAY
    from ..providers import ProviderError
    from ..providers.local import connect_state, database_of, state_dir_of

    out = make_output()
    loaded = load_plan(out, plans)
    desired = loaded.desired
    if desired.target.provider != "local":
        fail(out, f"error: rotate-signing-key is for the local target's gateway; this plan's target is "
                  f"{desired.target.provider}")
    alg = (desired.target.settings.get("oauth2") or {}).get("signing_alg") or "RS256"
    longest = max([p.token_ttl for p in desired.products.values() if p.accepts("oauth2")] or [3600])
    try:
        conn = connect_state(state_dir_of(desired), create=False, database=database_of(desired))
    except ProviderError as exc:
        fail(out, f"error: {exc}")
    try:
        key, retired, removed = rotate_signing_key(conn, alg, longest + LEEWAY)
    except Exception as exc:
        fail(out, f"error: cannot rotate the signing key: {exc}")
    finally:
        conn.close()

    def when(epoch: float) -> str:
        return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")

    out.info(f"New signing key {key.kid} ({key.alg}); new tokens are signed with it.")
    ends = when(time_now() + longest + LEEWAY)
    for old in retired:
        out.info(f"Key {old.kid} is retired: it validates tokens until {ends}, then it is removed.")
    for kid in removed:
        out.info(f"Key {kid} was removed (its last token has expired).")


def time_now() -> float:
    import time

    return time.time()
