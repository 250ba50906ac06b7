"""azure-core's RetryPolicy, as apimon runs it: bounded attempts, Retry-After read by apimon's one parser,
and a longest wait (a service asking for more is answered with its error, not waited for)."""

from __future__ import annotations

from typing import Any

from azure.core.pipeline.policies import RetryPolicy

from . import TIMEOUTS, retry_after_seconds


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


def transport_kwargs() -> dict:
    """The per-request timeouts of azure-core's RequestsTransport."""
    return {"connection_timeout": TIMEOUTS.connect, "read_timeout": TIMEOUTS.read}
