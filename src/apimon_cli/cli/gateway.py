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
