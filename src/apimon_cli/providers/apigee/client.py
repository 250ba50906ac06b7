"""JSON over google-auth's ``AuthorizedSession`` for the Apigee v1 API, with urllib3's Retry mounted on it
(``transport.session``: 429, 5xx and lost connections retried, Retry-After honoured, POST included -- see
there why), apimon's timeouts on every call, and Apigee's two list paginations on the shared pager."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from ..base import ProviderError
from ..transport import paginate, watch
from ..transport.session import RETRY_STATUSES, describe_failure, mount_retries, request_timeout

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
TOKEN_ENV = "APIMON_APIGEE_TOKEN"


class ApigeeError(ProviderError):
    """An Apigee API error, with the HTTP status kept for callers that handle some of them."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class AlreadyExists(ApigeeError):
    """409: the resource exists (created concurrently, or by an earlier attempt of a retried create)."""


class NotFound(ApigeeError):
    """404."""


def seg(value: str) -> str:
    """One URL path segment (emails keep their @)."""
    return quote(value, safe="@")


class ApigeeClient:
    """One apimon run's calls to an Apigee organization."""

    max_retries = 5
    backoff = 0.5  # seconds before the first retry; doubled per attempt
    max_wait = 60.0  # the longest Retry-After waited for

    def __init__(self, endpoint: str, org: str, session: Any, sleep: Callable[[float], None] = time.sleep):
        self.endpoint = endpoint.rstrip("/")
        self.org = org
        self.base = f"{self.endpoint}/v1/organizations/{seg(org)}"
        self.session = session
        self.sleep = sleep  # replaceable (tests): every retry wait goes through it
        self.sensitive: set[str] = set()  # key values: never in a message
        self.requests = 0
        mount_retries(session, attempts=self.max_retries + 1, backoff_base=self.backoff, max_wait=self.max_wait,
                      sleep=lambda seconds: self.sleep(seconds))

    def _redact(self, text: str) -> str:
        for s in self.sensitive:
            if s:
                text = text.replace(s, "(sensitive)").replace(quote(s, safe=""), "(sensitive)")
        return text

    def call(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
             empty: bool = False) -> dict:
        """One API call; returns the decoded JSON body ({} when empty). Raises ApigeeError."""
        import requests
        from google.auth.exceptions import GoogleAuthError, RefreshError, TransportError

        headers: dict[str, str] = {}
        data: bytes | None = None
        if empty:  # action calls (approve/revoke) take no body; JSON content type would ask for one
            data, headers["Content-Type"] = b"", "application/octet-stream"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        url = self.base + path
        shown = url + ("?" + urlencode({k: v for k, v in params.items() if v is not None}) if params else "")
        with watch.track("Apigee", self._redact(shown), method) as call:
            try:
                resp = self.session.request(method, url, params=params, data=data, headers=headers,
                                            timeout=request_timeout())
            except RefreshError as exc:
                raise ApigeeError(f"Apigee refused the credentials and they cannot be refreshed ({exc}); "
                                  f"set {TOKEN_ENV} to a fresh token (`gcloud auth print-access-token`) "
                                  "or renew Application Default Credentials", 401) from None
            except (requests.ConnectionError, requests.Timeout, TransportError) as exc:
                failure = call.last_failure or describe_failure(error=exc)
                where = call.describe()
                if watch.expired():
                    raise watch.timeout_error(where, failure) from None
                tries = f" after {call.retries + 1} attempts" if call.retries else ""
                raise ApigeeError(f"cannot reach {where}: {failure}{tries}{watch.budget_note()}") from None
            except GoogleAuthError as exc:
                raise ApigeeError(f"Apigee credentials: {exc}") from None
            call.status = resp.status_code
        self.requests += 1
        if resp.status_code >= 400:
            retries = getattr(getattr(resp.raw, "retries", None), "history", ())
            raise self._error(method, path, resp, len(retries))
        if not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError:
            raise ApigeeError(f"Apigee {method} {self._redact(path)}: response is not JSON") from None

    def _error(self, method: str, path: str, resp: Any, retries: int) -> ApigeeError:
        status, message = resp.status_code, watch.excerpt(resp.text, resp.headers.get("Content-Type"))
        try:
            err = resp.json().get("error", {})
            message = err.get("message") or message
            status_name = err.get("status") or ""
        except (ValueError, AttributeError):
            status_name = ""
        message = self._redact(message)
        where = f"{method} {self._redact(path) or '/'}"
        code = resp.status_code
        if code == 401:
            return ApigeeError(f"Apigee refused the credentials (401 UNAUTHENTICATED): {message} Set "
                               f"{TOKEN_ENV} to a fresh token or run `gcloud auth application-default login`.",
                               code)
        if code == 403:
            return ApigeeError(f"Apigee denied {where} (403 PERMISSION_DENIED): {message} Check the "
                               f"organization name ({self.org}) and the caller's Apigee roles.", code)
        if code == 409:
            return AlreadyExists(f"{where}: already exists on Apigee (409 {status_name}): {message}", code)
        if code == 404:
            return NotFound(f"{where}: not found on Apigee (404): {message}", code)
        if code in RETRY_STATUSES:
            return ApigeeError(f"Apigee {where} still failed after {retries} retries: {status} "
                               f"{status_name}: {message}", code)
        return ApigeeError(f"Apigee {where}: {status} {status_name}: {message}", code)

    # ---- helpers
    def get(self, path: str, **params) -> dict:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None} or None)

    def post(self, path: str, body: Any = None, **params) -> dict:
        return self.call("POST", path, params=params or None, body=body if body is not None else {})

    def put(self, path: str, body: Any) -> dict:
        return self.call("PUT", path, body=body)

    def delete(self, path: str) -> dict:
        return self.call("DELETE", path)

    def action(self, path: str, action: str) -> None:
        self.call("POST", path, params={"action": action}, empty=True)

    def list_inclusive(self, path: str, item_key: str, id_key: str, page_size: int, **params) -> list[dict]:
        """Pages of a list whose ``startKey`` is inclusive and that has no next token: the next page starts
        at (and repeats) the last item of the previous one; a short page is the last."""
        seen: set[str] = set()

        def fetch(start: str | None) -> tuple[list[dict], str | None]:
            query = {**params, "count": str(page_size), **({"startKey": start} if start is not None else {})}
            items = self.get(path, **query).get(item_key, [])
            fresh = [i for i in items if i.get(id_key) not in seen]
            seen.update(i.get(id_key) for i in fresh)
            return fresh, items[-1][id_key] if len(items) >= page_size and fresh else None

        return list(paginate(fetch))

    def list_next_key(self, path: str, item_key: str, page_size: int, **params) -> list[dict]:
        """Pages of a list that returns ``nextStartKey`` (the first item of the next page)."""
        def fetch(start: str | None) -> tuple[list[dict], str | None]:
            body = self.get(path, **params, count=str(page_size), **({"startKey": start} if start else {}))
            return body.get(item_key, []), body.get("nextStartKey")

        return list(paginate(fetch))


def session_from_environment() -> Any:
    """AuthorizedSession from APIMON_APIGEE_TOKEN (as-is) or Application Default Credentials."""
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        from google.auth.transport.requests import AuthorizedSession
        from google.oauth2.credentials import Credentials
    except ModuleNotFoundError as exc:  # pragma: no cover - a dependency of apimon
        raise ProviderError(f"provider apigee needs the Python package {exc.name!r}") from None
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return AuthorizedSession(Credentials(token=token))
    try:
        creds, _ = google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError:
        raise ProviderError(f"no Google credentials: set {TOKEN_ENV} to an access token "
                            "(`gcloud auth print-access-token`) or run `gcloud auth application-default "
                            "login`") from None
    return AuthorizedSession(creds)
