"""Which URLs may receive a credential (issue 18 item 1).

A plan file is untrusted input (it arrives in pull requests and runs in CI with real credentials), so a URL
read from a plan that apimon would send a secret to is accepted only if:

* it is the vendor's public default (``default``; compared by scheme, host and port), or
* its host (``host`` or ``host:port``) is listed *outside* the plan, in ``APIMON_ALLOW_ENDPOINTS``
  (comma-separated ``host[:port]``; an entry without a port allows every port of that host) and the URL is
  ``https``. A loopback host (``localhost``, ``127.0.0.0/8``, ``::1``) is never allowed implicitly; when it is
  listed, plain ``http`` is accepted for it too (test fakes and local proxies).

``check_endpoint`` returns ``None`` when the URL may be used, else the reason (one line, safe to print:
it names the URL and how to allow it, never a credential).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

ALLOW_ENV = "APIMON_ALLOW_ENDPOINTS"


def _host_port(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    return parts.scheme, parts.hostname.lower().rstrip("."), port or (443 if parts.scheme == "https" else 80)


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(env: Mapping[str, str] | None = None) -> list[tuple[str, int | None]]:
    """The entries of APIMON_ALLOW_ENDPOINTS as (host, port or None for any port)."""
    raw = (os.environ if env is None else env).get(ALLOW_ENV, "")
    out: list[tuple[str, int | None]] = []
    for entry in raw.split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        host, port = entry, None
        if entry.startswith("["):  # [::1]:8443
            host, _, rest = entry[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        elif entry.count(":") == 1:
            host, _, p = entry.partition(":")
            port = int(p) if p.isdigit() else None
        out.append((host.rstrip("."), port))
    return out


def check_endpoint(url: str, default: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """None if ``url`` may receive a credential, else why not (see the module docstring)."""
    parsed = _host_port(url)
    if parsed is None:
        return f"{url!r} is not an http(s) URL with a host (and without user:password@)"
    scheme, host, port = parsed
    if default is not None and _host_port(default) == parsed:
        return None
    listed = any(h == host and (p is None or p == port) for h, p in allowed_hosts(env))
    hint = f"list it outside the plan to allow it: {ALLOW_ENV}={host}:{port}"
    if not listed:
        what = "a loopback address" if is_loopback(host) else "not the vendor's public endpoint"
        return f"{url} is {what} and is not in {ALLOW_ENV}; credentials are sent only to allowed hosts ({hint})"
    if scheme != "https" and not is_loopback(host):
        return f"{url} is listed in {ALLOW_ENV} but is not https; credentials travel only over https"
    return None
