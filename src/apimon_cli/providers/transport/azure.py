"""azure-core's RetryPolicy, as apimon runs it: bounded attempts, Retry-After read by apimon's one parser,
a longest wait (a service asking for more is answered with its error, not waited for), and the command's
bounds (``transport.watch``): each call tracked (waiting notices, the debug line), its timeouts capped by the
command's deadline, retries only while the command's retry budget lasts."""

from __future__ import annotations

from typing import Any

from azure.core.pipeline.policies import RetryPolicy

from . import TIMEOUTS, retry_after_seconds, watch


class CappedRetryPolicy(RetryPolicy):
    """429 and 5xx retried (azure-core's defaults: GET/PUT/DELETE/HEAD, and POST/PATCH on 500/503/504), at
    most ``attempts`` tries, honouring Retry-After up to ``max_wait`` seconds."""

    def __init__(self, *, attempts: int, backoff: float, max_wait: float):
        retries = max(0, attempts - 1)
        super().__init__(retry_total=retries, retry_connect=retries, retry_read=retries, retry_status=retries,
                         retry_backoff_factor=backoff, retry_backoff_max=max_wait)
        self.max_wait = max_wait

    def get_retry_after(self, response: Any) -> float | None:
        return retry_after_seconds(response.http_response.headers)

    def is_retry(self, settings: dict, response: Any) -> bool:
        wait = self.get_retry_after(response)
        if wait is not None and wait > self.max_wait:
            return False  # the service asks for longer than apimon waits: report it, don't hammer
        return super().is_retry(settings, response)

    def send(self, request: Any) -> Any:
        http = request.http_request
        with watch.track("Azure", http.url, http.method) as call:
            self._bound(request)
            response = super().send(request)
            call.status = response.http_response.status_code
            return response

    def _bound(self, request: Any) -> None:
        options = request.context.options
        connect, read = watch.timeouts()
        options["read_timeout"] = read
        if watch.remaining() is not None:
            options["connection_timeout"] = connect
            options["timeout"] = max(0.01, watch.remaining() or 0.01)  # azure-core's absolute timeout

    def increment(self, settings: dict, response: Any = None, error: Exception | None = None) -> bool:
        status = getattr(getattr(response, "http_response", None), "status_code", None)
        failure = f"HTTP {status}" if status else _describe(error)
        call = watch.current()
        if call is not None:
            call.failed(failure)
            watch.spend_retry(call.since_mark())
        more = super().increment(settings, response=response, error=error)
        settings["apimon_failure"] = failure
        return more and watch.may_retry()  # the command's deadline or retry budget: no more attempts

    def sleep(self, settings: dict, transport: Any, response: Any = None) -> None:
        wait = self.get_retry_after(response) if response is not None else None
        if wait is None:
            wait = self.get_backoff_time(settings)
        wait = watch.capped_wait(min(wait, self.max_wait))
        call = watch.current()
        if call is not None:
            call.retrying(settings.get("apimon_failure") or "failed", wait)
        watch.spend_retry(wait)
        if wait > 0:
            transport.sleep(wait)
        if call is not None:
            call.since_mark()


def _describe(error: Exception | None) -> str:
    if error is None:
        return "failed"
    text = str(error).lower()
    if "read timed out" in text or "timed out" in text and "read" in text:
        return "read timed out (the server accepted the connection and did not answer)"
    if "timed out" in text or "timeout" in text:
        return "timed out"
    if "refused" in text:
        return "connection refused"
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


def transport_kwargs() -> dict:
    """The per-request timeouts of azure-core's RequestsTransport."""
    return {"connection_timeout": TIMEOUTS.connect, "read_timeout": TIMEOUTS.read}
