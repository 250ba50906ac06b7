"""The API Management client as apimon builds it: azure-mgmt-apimanagement over a requests session, retried by
azure-core's RetryPolicy (``transport.azure``), with apimon's timeouts and credentials, and SDK errors
explained in one line."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import SansIOHTTPPolicy

from ..base import ProviderError
from ..transport import watch
from ..transport.azure import CappedRetryPolicy, transport_kwargs
from .spec import ARM_ENDPOINTS

MAX_ATTEMPTS = 5
SDK_ERRORS = (HttpResponseError, ServiceRequestError, ServiceResponseError)


def env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ProviderError(f"{name} must be a whole number; got {raw!r}") from None
    if value < minimum:
        raise ProviderError(f"{name} must be >= {minimum}; got {value}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ProviderError(f"{name} must be a number of seconds; got {raw!r}") from None


class _StaticBearer(SansIOHTTPPolicy):
    """APIMON_AZURE_TOKEN as-is (azure-core's bearer policy refuses plain http, which tests need)."""

    def __init__(self, token: str):
        super().__init__()
        self._token = token

    def on_request(self, request: Any) -> None:
        request.http_request.headers["Authorization"] = f"Bearer {self._token}"


class _TokenCredential:
    def __init__(self, token: str):
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, int(time.time()) + 3600)


def _quiet_sdk_logs() -> None:
    """azure-identity and azure-core log multi-line warnings (every credential DefaultAzureCredential tried)
    to stderr through Python's last-resort handler; apimon reports one line itself."""
    import logging

    for name in ("azure", "msal"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        logger.propagate = False


def make_client(subscription_id: str, cloud: str, base_url: str, concurrency: int) -> Any:
    _quiet_sdk_logs()
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from azure.mgmt.apimanagement import ApiManagementClient

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, concurrency + 2))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    retry = CappedRetryPolicy(attempts=env_int("APIMON_AZURE_MAX_ATTEMPTS", MAX_ATTEMPTS),
                              backoff=env_float("APIMON_AZURE_RETRY_BACKOFF", 0.5),
                              max_wait=env_float("APIMON_AZURE_MAX_RETRY_WAIT", 60.0))
    kwargs: dict[str, Any] = {"base_url": base_url, "retry_policy": retry, "polling_interval": 0,
                              "transport": RequestsTransport(session=session, session_owner=True, **transport_kwargs())}
    token = os.environ.get("APIMON_AZURE_TOKEN")
    if token:
        credential: Any = _TokenCredential(token)
        kwargs["authentication_policy"] = _StaticBearer(token)
    else:
        from azure.identity import AzureAuthorityHosts, DefaultAzureCredential

        authority = {"public": AzureAuthorityHosts.AZURE_PUBLIC_CLOUD,
                     "china": AzureAuthorityHosts.AZURE_CHINA,
                     "usgovernment": AzureAuthorityHosts.AZURE_GOVERNMENT}[cloud]
        credential = DefaultAzureCredential(authority=authority)
        kwargs["credential_scopes"] = [ARM_ENDPOINTS[cloud] + "/.default"]
    return ApiManagementClient(credential, subscription_id, **kwargs)


def short(exc: Exception) -> str:
    err = getattr(exc, "error", None)
    msg = getattr(err, "message", None) or getattr(exc, "message", None) or str(exc)
    return str(msg).splitlines()[0][:300]


def _last_failure(exc: Exception) -> str:
    from ..transport.azure import _describe

    return _describe(exc)


def explain(exc: Exception, what: str, *, service: str, rg: str, subscription_id: str,
            base_url: str) -> ProviderError:
    """A user-facing message for an SDK error."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ClientAuthenticationError):
        return ProviderError(f"{what}: Azure did not accept the credentials ({short(exc)}); sign in with "
                             "`az login` (or another DefaultAzureCredential source) or set APIMON_AZURE_TOKEN")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        if watch.expired():
            from azure.core.exceptions import ServiceRequestTimeoutError, ServiceResponseTimeoutError

            ours = isinstance(exc, (ServiceRequestTimeoutError, ServiceResponseTimeoutError))  # the deadline
            return watch.timeout_error(f"Azure at {base_url} ({what})", None if ours else _last_failure(exc))
        return ProviderError(f"{what}: cannot reach Azure at {base_url}: {_last_failure(exc)}{watch.budget_note()}")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        code = getattr(getattr(exc, "error", None), "code", None) or ""
        if code in ("ResourceGroupNotFound", "SubscriptionNotFound") or (
                status == 404 and "Microsoft.ApiManagement/service" in str(exc.message or "")):
            return ProviderError(f"{what}: API Management service {service!r} was not found in resource "
                                 f"group {rg!r} of subscription {subscription_id!r} ({short(exc)})")
        if status == 412:
            return ProviderError(f"{what}: it was changed on the gateway since the plan read it (HTTP 412 "
                                 "Precondition Failed: its ETag no longer matches). Nothing more was applied; "
                                 "run `apimon plan` to see its current state, then apply again")
        if status == 429:
            after = exc.response.headers.get("Retry-After") if exc.response is not None else None
            hint = f"; Azure asks to wait {after} s" if after else ""
            return ProviderError(f"{what}: Azure kept throttling the requests (HTTP 429){hint}. Try again "
                                 "later or lower APIMON_AZURE_CONCURRENCY")
        return ProviderError(f"{what}: Azure answered HTTP {status}{' ' + code if code else ''}: {short(exc)}")
    return ProviderError(f"{what}: {type(exc).__name__}: {exc}")


def raw_list(client: Any, path: str, convert: Callable[[dict], Any], **params: Any) -> Callable[..., Any]:
    """A list operation of the service's collection at ``path`` through the SDK client's own pipeline (same
    auth, retries, base URL, ``nextLink`` paging), keeping only the fields apimon reads. Used for the large
    collections: msrest model deserialization costs ~0.3 ms per item, which bounds a plan of thousands of
    subscriptions by CPU whatever the concurrency."""
    from azure.core.exceptions import map_error
    from azure.core.paging import ItemPaged
    from azure.core.rest import HttpRequest
    from azure.mgmt.core.exceptions import ARMErrorFormat

    api_version = client._config.api_version

    def op(top: int | None = None, skip: int | None = None) -> Any:
        def get_next(link: str | None) -> Any:
            if link:
                parts = urlsplit(link)
                query = dict(parse_qsl(parts.query, keep_blank_values=True))
                query["api-version"] = api_version
                request = HttpRequest("GET", parts._replace(query=urlencode(query, quote_via=quote)).geturl())
            else:
                query = {"api-version": api_version, **{k: v for k, v in params.items() if v is not None}}
                if top:
                    query["$top"] = top
                if skip:
                    query["$skip"] = skip
                request = HttpRequest("GET", path, params=query)
            response = client._send_request(request)
            if response.status_code != 200:
                map_error(status_code=response.status_code, response=response,
                          error_map={401: ClientAuthenticationError, 404: ResourceNotFoundError})
                raise HttpResponseError(response=response, error_format=ARMErrorFormat)
            return response

        def extract(response: Any) -> tuple[str | None, Iterable[Any]]:
            body = response.json()
            return body.get("nextLink") or None, iter([convert(v) for v in body.get("value") or []])

        return ItemPaged(get_next, extract)

    return op
