"""urllib3's Retry mounted on a requests session (google-auth's AuthorizedSession is one), as apimon runs it.

Retried: 429 and 5xx answers and lost connections, at most ``attempts - 1`` times, with exponential
backoff (``backoff`` seconds, doubling) or the Retry-After the server sends (read by apimon's one parser,
at most ``max_wait`` seconds). POST is retried too, on purpose: Apigee's creates answer a repeated create
with 409, which apimon reports as "already exists", and the next apply converges because what apimon
created carries its ownership marker; the alternative (never retrying a create) fails a whole apply on
one throttled call. Every call goes with ``TIMEOUTS`` (the caller passes ``timeout=request_timeout()``), at
most what is left of the command's deadline; a retry happens only while the command's retry budget lasts
and is reported to the call being tracked (``transport.watch``: the waiting notices, the debug line).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from urllib3.util.retry import Retry

from . import backoff, retry_after_seconds, watch

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class SessionRetry(Retry):
    """urllib3's Retry with apimon's Retry-After parser, backoff and an injectable sleep (tests)."""

    def __init__(self, *args: Any, backoff_base: float = 0.5, max_wait: float = 60.0,
                 sleep: Callable[[float], None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.backoff_base = backoff_base
        self.max_wait = max_wait
        self.sleeper = sleep

    failure = ""  # why the last attempt failed (for the notices and the error)

    def new(self, **kw: Any) -> SessionRetry:
        retry = super().new(**kw)
        retry.backoff_base, retry.max_wait, retry.sleeper = self.backoff_base, self.max_wait, self.sleeper
        return retry

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> SessionRetry:
        from urllib3.exceptions import MaxRetryError, ResponseError

        failure = describe_failure(response, error)
        call = watch.current()
        if call is not None:
            call.failed(failure)
            watch.spend_retry(call.since_mark())
        if not watch.may_retry():  # the command's deadline or retry budget: no more attempts
            raise MaxRetryError(_pool, url or "", error or ResponseError(failure))
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        retry.failure = failure
        return retry

    def get_backoff_time(self) -> float:
        attempts = len(self.history)
        return backoff(attempts, self.backoff_base, self.max_wait) if attempts else 0.0

    def get_retry_after(self, response: Any) -> float | None:
        wait = retry_after_seconds(response.headers)
        return None if wait is None else min(self.max_wait, wait)

    def sleep(self, response: Any = None) -> None:
        wait = self.get_retry_after(response) if response is not None else None
        wait = watch.capped_wait(self.get_backoff_time() if wait is None else wait)
        call = watch.current()
        if call is not None:
            call.retrying(self.failure or "failed", wait)
        watch.spend_retry(wait)
        if wait > 0:
            (self.sleeper or _sleep)(wait)
        if call is not None:
            call.since_mark()


def describe_failure(response: Any = None, error: Exception | None = None) -> str:
    """One line on why an attempt failed: ``HTTP 503`` or the connection error (read timed out...)."""
    if response is not None and getattr(response, "status", None):
        return f"HTTP {response.status}"
    if error is None:
        return "failed"
    text = str(error)
    lower = text.lower()
    if "read timed out" in lower:
        return "read timed out (the server accepted the connection and did not answer)"
    if "timed out" in lower:
        return "connect timed out"
    if "refused" in lower:
        return "connection refused"
    return f"{type(error).__name__}: {text.split(': ', 1)[-1][:200]}"


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def mount_retries(session: Any, *, attempts: int, backoff_base: float, max_wait: float,
                  sleep: Callable[[float], None] | None = None, pool_size: int = 10) -> SessionRetry:
    """Mount one HTTPAdapter with apimon's retry policy on ``session`` for http and https."""
    from requests.adapters import HTTPAdapter

    retries = max(0, attempts - 1)
    retry = SessionRetry(total=retries, connect=retries, read=retries, status=retries, other=0,
                         status_forcelist=RETRY_STATUSES, allowed_methods=None, raise_on_status=False,
                         respect_retry_after_header=True, backoff_base=backoff_base, max_wait=max_wait,
                         sleep=sleep)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return retry


def request_timeout() -> tuple[float, float]:
    """The (connect, read) timeout requests takes on every call (capped by the command's deadline)."""
    return watch.timeouts()
