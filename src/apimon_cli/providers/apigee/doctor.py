"""`apimon doctor` on Apigee: where the Google credentials come from, the organization answering read-only
calls, its environments and monetization."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ..diagnose import INFO, OK, PROBLEM, WARNING, Check, timed
from .client import TOKEN_ENV, ApigeeError


def _source() -> str:
    if os.environ.get(TOKEN_ENV, "").strip():
        return f"{TOKEN_ENV}"
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return "GOOGLE_APPLICATION_CREDENTIALS (Application Default Credentials)"
    return "Application Default Credentials (gcloud or the metadata server)"


def checks(provider: Any) -> Iterator[Check]:
    try:
        api = provider.api
    except ApigeeError as exc:
        yield Check("credentials", PROBLEM, str(exc))
        return
    except Exception as exc:  # ProviderError: no credentials
        yield Check("credentials", PROBLEM, str(exc))
        return
    yield Check("credentials", OK, f"Google credentials from {_source()}")
    try:
        org, ms = timed(lambda: api.get(""))
    except ApigeeError as exc:
        if exc.status == 401:
            yield Check("endpoint", OK, f"{provider.endpoint} answers")
            yield Check("credentials", PROBLEM, str(exc))
        elif exc.status in (403, 404):
            yield Check("endpoint", OK, f"{provider.endpoint} answers")
            yield Check("permissions", PROBLEM, str(exc))
        else:
            yield Check("endpoint", PROBLEM, str(exc))
        return
    yield Check("endpoint", OK, f"{provider.endpoint} answered for organization {provider.org} in {ms:.0f} ms")
    denied = []
    for what, path, params in (("API products", "/apiproducts", {"count": "1"}),
                               ("developers", "/developers", {"count": "1"}),
                               ("API proxies", "/apis", {})):
        try:
            api.get(path, **params)
        except ApigeeError as exc:
            if exc.status not in (401, 403):
                raise
            denied.append(f"{what} ({exc.status})")
    if denied:
        yield Check("permissions", PROBLEM, f"Apigee denied listing {', '.join(denied)}; the caller needs an "
                                            "Apigee role that reads them (e.g. Apigee API Admin)")
        return
    yield Check("permissions", OK, "read API products, developers and API proxies (read-only calls)")
    envs = set(org.get("environments") or [])
    missing = [e for e in provider.environments if e not in envs]
    if missing:
        yield Check("environments", PROBLEM, f"organization {provider.org} has no environment "
                                             f"{', '.join(missing)} (it has: {', '.join(sorted(envs)) or 'none'})")
    else:
        yield Check("environments", OK, f"{', '.join(provider.environments)} exist in {provider.org}")
    monetized = bool(((org.get("addonsConfig") or {}).get("monetizationConfig") or {}).get("enabled"))
    yield Check("monetization", OK if monetized else WARNING,
                "monetization is enabled (rate plans are written)" if monetized else
                "monetization is not enabled: no rate plans are written (apimon's invoices still price usage)")
    yield Check("quotas", INFO, "Apigee has no fixed per-organization product or app quota apimon reads")
