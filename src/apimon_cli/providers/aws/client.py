"""API Gateway calls under AWS's quotas: boto3's client with its own retries off, paced by
``scheduler.Quotas`` and retried here (botocore's retry modes retry but cannot pace).

Throttling (429, TooManyRequests, LimitExceeded), 409 ConflictException for concurrent modification, 5xx and
dropped connections are retried with backoff that honours Retry-After, at most ``RetryPolicy.max_attempts``
times; then the call fails with AWS's message. After an ambiguous failure (5xx, a connection lost after the
request left) the caller's ``recover`` runs first: if it finds the effect of the lost attempt, nothing is
sent again, so a retried create never makes a duplicate.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from ..base import ProviderError
from ..transport import TIMEOUTS, paginate, retry_after_seconds, watch
from .scheduler import Quotas, RetryPolicy

PAGE_SIZE = 500
POOL_SIZE = 24  # apply workers + read threads

_THROTTLE_CODES = {"TooManyRequestsException", "LimitExceededException", "ThrottlingException",
                   "Throttling", "RequestLimitExceeded"}


class AwsCallError(ProviderError):
    """A call AWS refused (not retried, or retried until the bound)."""

    def __init__(self, message: str, code: str = "", aws_message: str = ""):
        super().__init__(message)
        self.code = code
        self.aws_message = aws_message


def make_client(region: str | None, profile: str | None, endpoint_url: str | None) -> Any:
    """boto3's API Gateway client (no network call): botocore's retries off, apimon's timeouts."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    connect, read = watch.timeouts()  # at most what is left of the command's deadline
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=POOL_SIZE,
                    connect_timeout=connect, read_timeout=read, user_agent_extra="apimon")
    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
        client = session.client("apigateway", endpoint_url=endpoint_url, config=config)
        client.meta.events.register("before-send.apigateway", _track_request)
        return client
    except ProfileNotFound:
        raise ProviderError(f"AWS profile {profile!r} (target.aws.profile) is not configured") from None
    except (BotoCoreError, ValueError) as exc:
        raise ProviderError(f"cannot set up the AWS client: {exc}") from None


def _track_request(request: Any, **_: Any) -> None:
    """botocore's before-send: the call being tracked learns its method and path (the URL is signed by now;
    only scheme, host and path are kept, never headers)."""
    call = watch.current()
    if call is not None:
        call.method, call.url, call.label = request.method, request.url, ""


def caller_account(region: str | None, profile: str | None, endpoint_url: str | None) -> str:
    """The account id of the credentials in use (STS GetCallerIdentity), with apimon's timeouts and a few
    retries. An ``endpoint_url`` override (LocalStack, moto) is asked too: it serves STS on the same port; AWS's
    own endpoints (``*.amazonaws.com``) do not, so STS's default endpoint is asked then."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    config = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=TIMEOUTS.connect,
                    read_timeout=TIMEOUTS.read, user_agent_extra="apimon")
    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
        # AWS's own API Gateway endpoint does not serve STS: ask STS's default endpoint then
        from urllib.parse import urlsplit

        host = (urlsplit(endpoint_url).hostname or "").rstrip(".").lower() if endpoint_url else ""
        own = host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")
        sts = session.client("sts", endpoint_url=None if own else endpoint_url, config=config)
        account = sts.get_caller_identity().get("Account")
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise ProviderError(f"no usable AWS credentials ({exc}); configure the standard AWS chain "
                            "or target.aws.profile") from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise ProviderError(f"STS GetCallerIdentity: {err.get('Code', '?')}: {err.get('Message', '')}") from None
    except (BotoCoreError, ValueError) as exc:
        raise ProviderError(f"STS GetCallerIdentity: {exc}") from None
    if not account:
        raise ProviderError("STS GetCallerIdentity answered without an account id")
    return str(account)


def configured_endpoint(region: str | None, profile: str | None) -> str | None:
    """The endpoint boto3 is configured with (AWS_ENDPOINT_URL, the profile's endpoint_url), if not AWS's."""
    url = make_client(region, profile, None).meta.endpoint_url
    return None if url.endswith(".amazonaws.com") or ".amazonaws.com." in url else url


def _one_line(message: str, status: int) -> str:
    """AWS's message, or for a body that is not AWS's JSON (an HTML page from a proxy) a one-line excerpt."""
    return watch.excerpt(message) if message and "<" in message else message


def _snake(op: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in op).lstrip("_")


def _transient_conflict(message: str) -> bool:
    """409 for concurrent modification (retry) vs. a lasting conflict: exists, same API stage twice..."""
    text = message.lower()
    return "concurrent" in text or not any(w in text for w in ("exist", "multiple", "cannot"))


class AwsClient:
    """One apimon run's calls to API Gateway, shared by its threads."""

    def __init__(self, region: str, profile: str | None, endpoint_url: str | None, quotas: Quotas,
                 retry: RetryPolicy):
        self.region, self.profile, self.endpoint_url = region, profile, endpoint_url
        self.quotas = quotas
        self.retry = retry
        self.call_counts: Counter[str] = Counter()  # API calls made (attempts), by operation
        self.throttle_errors = 0  # 429s and throttling codes received
        self._lock = threading.Lock()
        self._boto: Any = None

    @property
    def boto(self) -> Any:
        if self._boto is None:
            self._boto = make_client(self.region, self.profile, self.endpoint_url)
        return self._boto

    def call(self, op: str, *, recover: Callable[[], Any] | None = None, missing_ok: bool = False,
             **kwargs: Any) -> Any:
        """One API Gateway operation under the quotas, retried here (botocore's retries are off).

        ``recover`` runs before a retry that follows an ambiguous failure (5xx, dropped connection): if it
        finds the effect of the failed attempt it returns it (not None) and nothing is sent again.
        ``missing_ok``: a NotFoundException returns None (deletes that find the resource gone).
        """

        method = getattr(self.boto, _snake(op))
        with watch.track("AWS", self.boto.meta.endpoint_url, "POST") as call:
            call.label = op  # until botocore's before-send names the request
            return self._call(op, method, call, recover, missing_ok, kwargs)

    def _call(self, op: str, method: Any, call: watch.Call, recover: Callable[[], Any] | None, missing_ok: bool,
              kwargs: dict) -> Any:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            EndpointConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        ambiguous = False
        last = ""
        attempts = self.retry.max_attempts
        for attempt in range(1, attempts + 1):
            if ambiguous and recover is not None:
                found = recover()
                if found is not None:
                    return found
            self.quotas.acquire(op)
            retry_after: float | None = None
            call.mark = time.monotonic()
            if attempt == 1:
                call.started = call.mark  # pacing under AWS's quotas is not waiting for AWS
            try:
                with self._lock:
                    self.call_counts[op] += 1
                result = method(**kwargs)
                call.status = int((result or {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 200)
                return result
            except ClientError as exc:
                err = exc.response.get("Error", {})
                meta = exc.response.get("ResponseMetadata", {})
                code, message = str(err.get("Code", "")), str(err.get("Message", "") or "")
                status = int(meta.get("HTTPStatusCode") or 0)
                call.status = status or code
                retry_after = retry_after_seconds(meta.get("HTTPHeaders"))
                if missing_ok and (code == "NotFoundException" or status == 404):
                    return None
                message = _one_line(message, status)
                if code in _THROTTLE_CODES or status == 429:
                    with self._lock:
                        self.throttle_errors += 1
                    self.quotas.throttled(op, retry_after)
                elif code == "ConflictException" and _transient_conflict(message):
                    pass  # concurrent modification: try again
                elif status >= 500:
                    ambiguous = True
                else:
                    raise AwsCallError(f"{op}: {code or status}: {message or 'request refused'}", code,
                                       message) from None
                named = code and code != str(status)
                last = f"{code if named or not status else f'HTTP {status}'}: {message or 'no message'}"
            except (NoCredentialsError, PartialCredentialsError) as exc:
                raise ProviderError(f"no usable AWS credentials ({exc}); configure the standard AWS chain "
                                    "or target.aws.profile") from None
            except (EndpointConnectionError, ConnectionError) as exc:
                last = f"cannot connect: {exc}"  # the request never left: not ambiguous
            except ReadTimeoutError:
                ambiguous = True
                last = "read timed out (the server accepted the connection and did not answer)"
            except HTTPClientError as exc:
                ambiguous = True
                last = f"connection lost: {exc}"
            finally:
                self.quotas.completed(op)
            call.failed(last)
            watch.spend_retry(call.since_mark())
            if watch.expired():
                raise watch.timeout_error(call.describe(), last)
            if attempt < attempts and watch.may_retry():
                wait = watch.capped_wait(self.retry.delay(attempt, retry_after))
                call.retrying(last, wait)
                watch.spend_retry(wait)
                time.sleep(wait)
                continue
            raise AwsCallError(f"{op} at {call.endpoint}: {last} (gave up after {attempt} "
                               f"attempt{'s' if attempt != 1 else ''}{watch.budget_note()})", "", last)
        raise AwsCallError(f"{op}: {last}", "", last)  # pragma: no cover - the loop returns or raises

    def pages(self, op: str, **kwargs: Any) -> Iterator[dict]:
        """Every page of a list operation (pages of 500, followed by ``position``)."""
        def fetch(position: str | None) -> tuple[list[dict], str | None]:
            page = self.call(op, **kwargs, limit=PAGE_SIZE, **({"position": position} if position else {}))
            return [page], page.get("position")

        return paginate(fetch)

    def items(self, op: str, **kwargs: Any) -> list[dict]:
        return [item for page in self.pages(op, **kwargs) for item in page.get("items") or []]
