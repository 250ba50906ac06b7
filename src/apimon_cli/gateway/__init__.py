"""`apimon gateway serve`: a local API gateway over the local target's state.

Requests ``/{api}/{path}`` with an ``x-api-key`` header are checked (key, enabled, the product includes the
API, a path that stays below the upstream's base path), bounded (requests in flight per subscriber and per
upstream), rate limited (token bucket: the product's rate and burst), counted against the product's quota
(UTC day / ISO week / calendar month, persisted in ``quota_counters``), proxied to the plan's
``target.local.upstreams[api]`` and metered per subscriber, product and UTC day into the ``usage`` table.

Modules, one concern each:

- ``config``      every number (limits, timeouts) in ``GatewayConfig``; ``Summary``; option parsing
- ``connections`` client connections: connection limit, header/keep-alive timeouts, head size limits,
  error answers (aiohttp protocol subclass)
- ``pipeline``    one request: authenticate -> admit -> bound -> limits -> proxy -> meter -> observers
- ``auth``        SEAM: ``Authenticator.authenticate(request) -> KeyState | Denial`` (``ApiKeyAuth``)
- ``limits``      ``KeyState`` (subscriber, product, limits, counters), the off-loop key table build, and
  SEAM: ``LimitsBackend`` (token bucket + quota counter; ``InMemoryLimits`` is the default)
- ``metering``    usage counters and SEAM: ``MeterObserver`` / ``MeteredRequest`` (``Gateway.add_observer``)
- ``paths``       request target -> API and a path that cannot leave the upstream's base path
- ``proxy``       per-upstream pools and forwarding (streaming, body limits)
- ``store``       the SQLite state (snapshot, counts) and ``StateLock`` (one gateway per SQLite state)
- ``lifecycle``   ``Gateway``: start, hot reload off the loop, flush, deadline sweep, drain; ``run`` (uvloop)
- ``clock``, ``log`` wall-clock windows; rate-limited stderr

Seams for later work: a new credential scheme is an ``Authenticator``; shared limits are a
``LimitsBackend`` with ``exclusive_state = False`` (then no state lock is taken); per-request events are a
``MeterObserver``. ``Gateway(config, auth=..., limits=...)`` takes the first two; ``add_observer`` the third.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..model import DesiredState
from .auth import ApiKeyAuth, Authenticator, Denial, GatewayAuth
from .clock import Clock, FakeClock, clock_from_env
from .config import GatewayConfig, GatewayError, Summary, check_upstreams, parse_listen
from .lifecycle import Gateway, run
from .limits import InMemoryLimits, KeyState, LimitsBackend
from .metering import MeteredRequest, MeterObserver

__all__ = [
    "ApiKeyAuth",
    "Authenticator",
    "Clock",
    "Denial",
    "GatewayAuth",
    "FakeClock",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "InMemoryLimits",
    "KeyState",
    "LimitsBackend",
    "MeterObserver",
    "MeteredRequest",
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
    total_timeout: float = 300.0,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    client_ca: str | None = None,
) -> GatewayConfig:
    """The gateway's configuration from a loaded plan (its target must be local) and the CLI options."""
    from ..providers.local import state_dir_of

    if desired.target.provider != "local":
        raise GatewayError(
            f"`apimon gateway serve` serves the local target; this plan's target is {desired.target.provider}"
        )
    for name, value in (
        ("--connect-timeout", connect_timeout),
        ("--upstream-timeout", upstream_timeout),
        ("--total-timeout", total_timeout),
    ):
        if not value > 0:
            raise GatewayError(f"{name} must be a positive number of seconds; got {value}")
    host, port = parse_listen(listen)
    upstreams = check_upstreams(desired.target.settings.get("upstreams") or {})
    config = GatewayConfig(
        state_dir=state_dir_of(desired),
        upstreams=upstreams,
        host=host,
        port=port,
        connect_timeout=connect_timeout,
        upstream_timeout=upstream_timeout,
        total_timeout=total_timeout,
        events=desired.events,
        limits=desired.target.settings.get("limits"),
        database=desired.target.settings.get("database") or None,
        issuer=(desired.target.settings.get("oauth2") or {}).get("issuer") or None,
        signing_alg=(desired.target.settings.get("oauth2") or {}).get("signing_alg") or "RS256",
        tls_cert=Path(tls_cert) if tls_cert else None,
        tls_key=Path(tls_key) if tls_key else None,
        client_ca=Path(client_ca) if client_ca else None,
    )
    config.check()
    from .lifecycle import tls_context

    tls_context(config)  # a certificate that cannot be loaded stops here, before anything starts
    return config


def serve(
    config: GatewayConfig, *, clock: Clock | None = None, on_ready: Callable[[Gateway], None] | None = None
) -> Summary:
    """Run the gateway in this process until SIGINT/SIGTERM (blocking); returns what it served."""
    try:
        clock = clock or clock_from_env()
    except ValueError as exc:
        raise GatewayError(str(exc)) from None
    return run(config, clock=clock, on_ready=on_ready)
