"""The gateway's configuration: every limit and timeout, with the numbers the README documents.

Nothing here does I/O. ``GatewayConfig`` is built by ``config_from_plan`` (the CLI) or directly by tests;
``Summary`` is what a stopped gateway reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

KIB = 1024
MIB = 1024 * KIB


class GatewayError(Exception):
    """A problem that stops the gateway from starting (bad options, no state, port in use, state in use)."""


@dataclass
class GatewayConfig:
    state_dir: Path
    upstreams: dict[str, str]  # api name -> base URL
    host: str = "127.0.0.1"
    port: int = 8080
    # ---- upstream side
    connect_timeout: float = 5.0  # seconds to connect to an upstream: 504
    upstream_timeout: float = 30.0  # seconds to wait for response headers or the next body chunk: 504
    total_timeout: float = 300.0  # seconds from a request's arrival to its response's last byte: 504 / cut
    upstream_connections: int = 256  # per upstream: its own pool; over it 503 + Retry-After
    # ---- per subscriber
    max_concurrent: int = 64  # requests in flight per subscriber when the product sets no max_concurrent
    # ---- client side (slowloris, oversized requests)
    max_connections: int = 4096  # open client connections (lowered to fit the open-file limit); over it: 503
    header_timeout: float = 10.0  # a request head must be complete this long after its first byte: 408
    keepalive_timeout: float = 15.0  # an idle connection (no request in progress) is closed after this
    body_timeout: float = 30.0  # a client silent this long while sending a request body: 408
    max_request_line: int = 16 * KIB  # the request target: 414
    max_header_line: int = 8 * KIB  # one header (name + value): 431
    max_headers: int = 100  # header count: 431
    max_head_size: int = 32 * KIB  # the whole request head: 431
    max_body_size: int = 64 * MIB  # a request body (Content-Length or streamed): 413
    # ---- lifecycle
    poll_interval: float = 0.25  # revision polling (hot reload)
    flush_interval: float = 1.0  # usage / quota writes
    drain_timeout: float = 10.0  # on SIGINT/SIGTERM, how long requests in flight may still run
    # ---- events
    events: Any = None  # events.config.EventsConfig: the plan's events block (None: no events)
    # ---- limits back end: target.local.limits ({backend, url, on_error, timeout, key_prefix}; None: memory)
    limits: dict | None = None
    database: str | None = None  # target.local.database: the state in PostgreSQL (None: state_dir/state.db)
    reuse_port: bool = False  # SO_REUSEPORT on the listener: one of `gateway serve --workers N`'s processes
    worker: int = 0  # that process's index: worker i > 0 keeps its events in events-gateway-<i>.db
    # ---- OAuth 2.0 (target.local.oauth2): the iss of issued tokens (default: the gateway's URL) and the
    # algorithm of new signing keys
    issuer: str | None = None
    signing_alg: str = "RS256"
    # ---- TLS (gateway serve --tls-cert/--tls-key; --client-ca asks clients for a certificate: mtls)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None

    def check(self) -> None:
        """Refuse nonsense numbers with one line naming the option."""
        for name in ("connect_timeout", "upstream_timeout", "total_timeout", "header_timeout", "keepalive_timeout",
                     "body_timeout", "drain_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise GatewayError(f"--{name.replace('_', '-')} must be a positive number of seconds; got {value}")
        for name in ("upstream_connections", "max_concurrent", "max_connections", "max_request_line",
                     "max_header_line", "max_headers", "max_head_size", "max_body_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise GatewayError(f"gateway setting {name} must be a positive integer; got {value!r}")


@dataclass
class Summary:
    requests: int = 0  # metered requests (a known key)
    unauthenticated: int = 0  # no or unknown key: not metered
    seconds: float = 0.0
    lost: list[tuple] = field(default_factory=list)  # usage rows that could not be written (should be [])
    lost_quota: list[tuple] = field(default_factory=list)  # quota deltas that could not be written
    refused: int = 0  # requests and connections refused while draining or over the connection limit
    limits_errors: int = 0  # requests decided by target.local.limits.on_error (Redis unreachable)

    @property
    def unwritten(self) -> int:
        """Metered requests whose counts are not in the usage table (the lost rows' totals)."""
        return sum(row[4] for row in self.lost if row[3] == "total")

    @property
    def written(self) -> int:
        return self.requests - self.unwritten


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT', 'PORT' or '[IPv6]:PORT'."""
    raw = text.strip()
    host, sep, port = raw.rpartition(":")
    if not sep:
        host, port = "", raw
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise GatewayError(f"--listen must be HOST:PORT; got {text!r}") from None
    if not 0 <= number <= 65535:
        raise GatewayError(f"--listen port must be 0..65535; got {number}")
    return host, number


def check_upstreams(upstreams: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for api, url in (upstreams or {}).items():
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GatewayError(
                f"target.local.upstreams.{api}: must be an http(s) URL like http://127.0.0.1:9000; got {url!r}"
            )
        if parts.query or parts.fragment:
            raise GatewayError(f"target.local.upstreams.{api}: a base URL has no query or fragment; got {url!r}")
        if "/" in api:
            raise GatewayError(
                f"target.local.upstreams.{api}: an API name for the local gateway is one path segment (no '/')"
            )
        out[str(api)] = str(url)
    return out
