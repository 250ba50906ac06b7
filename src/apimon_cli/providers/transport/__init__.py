"""What every provider's HTTP shares: the timeouts (one place), the one Retry-After parser and the one pager.

Retries go through the libraries made for them: azure-core's ``RetryPolicy`` for Azure
(``transport.azure``), urllib3's ``Retry`` mounted on the requests session for Apigee
(``transport.session``); AWS keeps its own loop because it paces calls under AWS's quotas, which
botocore's retry modes cannot do (``providers.aws.client``). All three read Retry-After here.

This module imports no SDK; ``transport.azure`` and ``transport.session`` import azure-core and urllib3
and are imported by the providers that use them.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar


@dataclass(frozen=True)
class Timeouts:
    """Every gateway call has both: seconds to connect, seconds to wait for (each part of) the answer. The
    command's deadline and retry budget, the waiting notices and the debug log: ``transport.watch``."""

    connect: float = 10.0
    read: float = 30.0


TIMEOUTS = Timeouts()


def retry_after_seconds(headers: Mapping[str, Any] | None, *, now: float | None = None) -> float | None:
    """The seconds a server asks to wait before retrying, or None: ``retry-after-ms`` and
    ``x-ms-retry-after-ms`` (Azure, milliseconds), then ``Retry-After`` as seconds or an HTTP date
    (RFC 9110 10.2.3). Header names are matched case-insensitively; negative waits are 0."""
    if not headers:
        return None
    lower = {str(k).lower(): v for k, v in headers.items()}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        raw = lower.get(name)
        if raw:
            try:
                return max(0.0, float(raw) / 1000)
            except ValueError:
                pass
    raw = lower.get("retry-after")
    if raw is None or str(raw).strip() == "":
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(raw))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


T = TypeVar("T")
Item = TypeVar("Item")


def paginate(fetch: Callable[[T | None], tuple[Iterable[Item], T | None]]) -> Iterator[Item]:
    """Every item of a paged list. ``fetch(token)`` returns a page's items and the next page's token (None
    for the first page; a falsy token ends). A token seen before ends too: a server that loops cannot keep
    apimon paging forever."""
    token: T | None = None
    seen: set = set()
    while True:
        items, token = fetch(token)
        yield from items
        if not token or token in seen:
            return
        seen.add(token)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff: ``base`` before the first retry, doubling, at most ``cap``."""
    return min(cap, base * 2 ** (attempt - 1))
