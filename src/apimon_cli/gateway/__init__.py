"""`apimon gateway serve`: a local API gateway over the local target's state (see ``server``).

Requests ``/{api}/{path}`` with an ``x-api-key`` header are checked (key, enabled, the product includes the
API), rate limited (token bucket: the product's rate and burst), counted against the product's quota (UTC
day / ISO week / calendar month, persisted in ``quota_counters``), proxied to the plan's
``target.local.upstreams[api]`` and metered per subscriber, product and UTC day into the ``usage`` table.
"""

from __future__ import annotations

from collections.abc import Callable

from ..model import DesiredState
from .clock import Clock, FakeClock, clock_from_env
from .server import Gateway, GatewayConfig, GatewayError, Summary, check_upstreams, parse_listen, run

__all__ = [
    "Clock",
    "FakeClock",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "Summary",
    "clock_from_env",
    "config_from_plan",
    "serve",
]


def config_from_plan(
    desired: DesiredState,
    *,
    listen: str = "127.0.0.1:8080",
    connect_timeout: float = 5.0,
    upstream_timeout: float = 30.0,
) -> GatewayConfig:
    """The gateway's configuration from a loaded plan (its target must be local) and the CLI options."""
    from ..providers.local import state_dir_of

    if desired.target.provider != "local":
        raise GatewayError(
            f"`apimon gateway serve` serves the local target; this plan's target is {desired.target.provider}"
        )
    for name, value in (("--connect-timeout", connect_timeout), ("--upstream-timeout", upstream_timeout)):
        if not value > 0:
            raise GatewayError(f"{name} must be a positive number of seconds; got {value}")
    host, port = parse_listen(listen)
    upstreams = check_upstreams(desired.target.settings.get("upstreams") or {})
    return GatewayConfig(
        state_dir=state_dir_of(desired),
        upstreams=upstreams,
        host=host,
        port=port,
        connect_timeout=connect_timeout,
        upstream_timeout=upstream_timeout,
    )


def serve(
    config: GatewayConfig, *, clock: Clock | None = None, on_ready: Callable[[Gateway], None] | None = None
) -> Summary:
    """Run the gateway in this process until SIGINT/SIGTERM (blocking); returns what it served."""
    try:
        clock = clock or clock_from_env()
    except ValueError as exc:
        raise GatewayError(str(exc)) from None
    return run(config, clock=clock, on_ready=on_ready)
