"""`apimon doctor` on Azure: where the token comes from, the API Management service answering read-only calls,
and its SKU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ..diagnose import INFO, OK, PROBLEM, Check, timed
from .client import SDK_ERRORS


def checks(provider: Any) -> Iterator[Check]:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    if os.environ.get("APIMON_AZURE_TOKEN", "").strip():
        yield Check("credentials", OK, "Azure token from APIMON_AZURE_TOKEN")
    else:
        from azure.identity import DefaultAzureCredential

        from .client import ARM_ENDPOINTS

        cred = DefaultAzureCredential()
        try:
            cred.get_token(ARM_ENDPOINTS[provider.cloud] + "/.default")
        except Exception as exc:  # azure-identity raises its own CredentialUnavailableError/ClientAuthenticationError
            yield Check("credentials", PROBLEM, "no Azure credentials: sign in with `az login` (or another "
                                                f"DefaultAzureCredential source) or set APIMON_AZURE_TOKEN "
                                                f"({str(exc).splitlines()[0][:200]})")
            return
        used = type(getattr(cred, "_successful_credential", None)).__name__
        yield Check("credentials", OK, f"Azure token from DefaultAzureCredential ({used})")
    c, rg, svc = provider.client, provider.rg, provider.service
    try:
        service, ms = timed(lambda: c.api_management_service.get(rg, svc))
    except ClientAuthenticationError as exc:
        yield Check("credentials", PROBLEM, str(provider.explain(exc, "reading the service")))
        return
    except HttpResponseError as exc:
        if exc.status_code == 403:
            yield Check("endpoint", OK, f"{provider.base_url} answers")
            yield Check("permissions", PROBLEM, f"Azure denied reading service {svc} (HTTP 403); the credentials "
                                                "need a role such as API Management Service Contributor")
        else:
            yield Check("endpoint", PROBLEM, str(provider.explain(exc, f"reading service {svc}")))
        return
    except SDK_ERRORS as exc:
        yield Check("endpoint", PROBLEM, str(provider.explain(exc, f"reading service {svc}")))
        return
    yield Check("endpoint", OK, f"{provider.base_url} answered for service {svc} in {ms:.0f} ms")
    denied = []
    for what, op in (("products", lambda: next(iter(c.product.list_by_service(rg, svc, top=1)), None)),
                     ("subscriptions", lambda: next(iter(c.subscription.list(rg, svc, top=1)), None)),
                     ("APIs", lambda: next(iter(c.api.list_by_service(rg, svc, top=1)), None))):
        try:
            op()
        except HttpResponseError as exc:
            if exc.status_code != 403:
                raise provider.explain(exc, f"listing {what}") from None
            denied.append(what)
    if denied:
        yield Check("permissions", PROBLEM, f"Azure denied listing {', '.join(denied)} (HTTP 403)")
        return
    yield Check("permissions", OK, "read products, subscriptions and APIs (read-only calls)")
    sku = getattr(service, "sku", None)
    if sku is not None:
        yield Check("quotas", INFO, f"service {svc}: SKU {sku.name}, capacity {sku.capacity}; API Management "
                                    "has no fixed product or subscription quota apimon reads")
