"""A local fake of the AWS API Gateway control plane for apimon's tests.

``AwsFake`` runs moto's ``ThreadedMotoServer`` on 127.0.0.1 and, in front of it, a small HTTP server
(also 127.0.0.1, ephemeral port) that forwards every request to moto and answers by itself the parts
moto 5.2.x lacks or gets wrong:

* ``GET /usageplans/{id}/usage`` (GetUsage) with the real wire shape (``values`` keyed by API key id,
  one ``[used, remaining]`` pair per day, ``startDate``..``endDate`` inclusive), paged by key with
  ``limit``/``position``; data is seeded with :meth:`AwsFake.set_usage`.
* ``limit``/``position`` paging (default 25, max 500, items on the wire in ``item``) for GetUsagePlans,
  GetApiKeys, GetUsagePlanKeys and GetRestApis; ``customerId`` filtering for GetApiKeys.
* apiStage validation on CreateUsagePlan and on UpdateUsagePlan ``add /apiStages``.
* TagResource / UntagResource / GetTags on usage plans and API keys (moto only has tags given at
  create); the tags are merged into GetUsagePlan(s) / GetApiKey(s) / Update* responses.
* 404 instead of moto's 500 for DeleteUsagePlan / DeleteApiKey on a missing id.
* A request log, per-operation counters, fault injection, AWS control-plane quota enforcement and
  409 ConflictException on concurrent CreateUsagePlanKey calls.

Each ``AwsFake`` uses its own random moto account id (sent to moto as ``x-moto-account-id``), so several
fakes in one process do not share state. Do not run ``moto.mock_aws`` in the same process while a fake
is up: starting/stopping ``mock_aws`` resets every moto backend.

Not verified against live AWS (chosen to be strict; AWS's exact text may differ): the messages of the
GetUsage date errors, the 90-day rule taken as at most 90 days inclusive, ``limit`` outside 1..500 and a
bad ``position`` answered 400 (AWS may clamp), days without seeded data reported as ``[0, quota limit or
0]``, keys listed in GetUsage = keys on the plan plus keys with seeded data. apiStage errors use the
message AWS was seen sending (``Invalid API Stage {api: X, stage: Y} specified for usageplan Z``).
Gaps: no UpdateUsage, no real metering, no ``nameQuery`` semantics beyond moto's prefix match, 409 on
concurrent CreateUsagePlanKey only while one is in flight (raise ``plan_key_hold`` to widen the window).

Run it standalone (prints the front's URL on the first stdout line, serves until SIGINT/SIGTERM)::

    python tests/fakes/aws_gateway.py --port 0 [--region us-east-1] [--enforce-quotas --scale 0.05]

A standalone fake is driven over HTTP through ``/__fake__/...`` (see ``_admin``): ``POST
/__fake__/usage``, ``POST /__fake__/inject``, ``POST|DELETE /__fake__/quotas``, ``GET
/__fake__/requests``, ``POST /__fake__/reset_counts``, ``POST /__fake__/rest_api``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import http.client
import json
import math
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qsl, quote, unquote, urlencode

import boto3
import botocore.session
from botocore.config import Config

HOST = "127.0.0.1"
DEFAULT_REGION = "us-east-1"
DEFAULT_PAGE = 25
MAX_PAGE = 500
MAX_USAGE_DAYS = 90
MAX_TAGS = 50

# x-amzn-ErrorType as API Gateway sends it; botocore keeps the part before the first ':'.
_ERROR_SUFFIX = ":http://internal.amazon.com/coral/com.amazonaws.backplane.controlplane/"
_DEFAULT_ERROR = {
    400: ("BadRequestException", "Bad Request"),
    401: ("UnauthorizedException", "Unauthorized"),
    404: ("NotFoundException", "Not Found"),
    409: ("ConflictException",
          "Unable to complete operation due to concurrent modification. Please try again later."),
    429: ("TooManyRequestsException", "Too Many Requests"),
    500: (None, "Internal server error"),
    503: ("ServiceUnavailableException", "Service Unavailable"),
}
_CONFLICT_MESSAGE = _DEFAULT_ERROR[409][1]
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
               "upgrade", "content-length", "host", "server", "date", "status"}
_ARN_RE = re.compile(r"^arn:aws[\w-]*:apigateway:([^:]*)::/(usageplans|apikeys)/([^/]+)$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class RequestRecord(NamedTuple):
    """One request the front received: path is URL-decoded, query maps name -> last value."""

    method: str
    path: str
    query: dict[str, str]


class _Resp(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class _Req:
    method: str
    raw_path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    operation: str

    @property
    def segments(self) -> list[str]:
        return [unquote(s) for s in self.raw_path.strip("/").split("/")]

    def q(self, name: str) -> str | None:
        for key, value in reversed(self.query):
            if key == name:
                return value
        return None


@dataclass
class Fault:
    """An injected fault; ``remaining`` counts down as matching requests arrive."""

    match: Callable[[str, str, str], bool]
    status: int
    remaining: int
    retry_after: float | None
    error_type: str | None
    message: str
    drop_connection: bool
    after_forward: bool = False  # the request takes effect first, then the client sees the failure
    hits: int = 0


@dataclass
class _Bucket:
    rate: float
    capacity: float
    tokens: float = field(init=False)
    last: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.capacity
        self.last = time.monotonic()

    def wait(self, now: float) -> float:
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1.0


class _ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


def _json(status: int, obj: Any, extra: Iterable[tuple[str, str]] = ()) -> _Resp:
    return _Resp(status, [("Content-Type", "application/json"), *extra], json.dumps(obj).encode())


def _error(status: int, error_type: str | None, message: str,
           extra: Iterable[tuple[str, str]] = ()) -> _Resp:
    headers = [("Content-Type", "application/json")]
    if error_type:
        headers.append(("x-amzn-ErrorType", error_type + _ERROR_SUFFIX))
    return _Resp(status, headers + list(extra), json.dumps({"message": message}).encode())


def _fmt_seconds(value: float) -> str:
    value = math.ceil(value * 1000) / 1000
    return str(int(value)) if value == int(value) else f"{value:.3f}".rstrip("0")


def _encode_position(offset: int) -> str:
    raw = json.dumps({"o": offset, "n": random.randrange(1 << 16)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_position(token: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = int(data["o"])
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise _ApiError(400, "BadRequestException", "Invalid position parameter") from exc
    if offset < 0:
        raise _ApiError(400, "BadRequestException", "Invalid position parameter")
    return offset


def _core_session() -> botocore.session.Session:
    """A botocore session that ignores ~/.aws, AWS_PROFILE and AWS_CONFIG_FILE."""
    return botocore.session.Session(session_vars={
        "profile": (None, None, None, None),
        "config_file": (None, None, "/dev/null", None),
        "credentials_file": (None, None, "/dev/null", None),
    })


def _build_routes() -> list[tuple[str, re.Pattern[str], dict[str, str], int, str]]:
    """(method, path regex, required query, specificity, operation) from botocore's model."""
    model = _core_session().get_service_model("apigateway")
    routes = []
    for name in model.operation_names:
        http_spec = model.operation_model(name).http
        path, _, qs = http_spec["requestUri"].partition("?")
        segs = [s for s in path.strip("/").split("/") if s]
        pattern = "^/" + "/".join("[^/]+" if s.startswith("{") else re.escape(s) for s in segs) + "/?$"
        required = dict(parse_qsl(qs))
        literal = sum(not s.startswith("{") for s in segs)
        specificity = literal * 10 + len(required)
        routes.append((http_spec["method"], re.compile(pattern), required, specificity, name))
    routes.sort(key=lambda r: -r[3])
    return routes


_ROUTES: list[tuple[str, re.Pattern[str], dict[str, str], int, str]] | None = None


def _operation_names() -> set[str]:
    operation_name("GET", "/")
    assert _ROUTES is not None
    return {route[4] for route in _ROUTES}


def operation_name(method: str, raw_path: str, query: Iterable[tuple[str, str]] = ()) -> str:
    """The API Gateway operation a request maps to (e.g. 'GetUsage'), or 'METHOD /path'."""
    global _ROUTES
    if _ROUTES is None:
        _ROUTES = _build_routes()
    qd = dict(query)
    for r_method, regex, required, _, name in _ROUTES:
        if r_method == method and regex.match(raw_path) and all(qd.get(k) == v for k, v in required.items()):
            return name
    return f"{method} {unquote(raw_path)}"


class _QuietMotoServer:
    """moto's ThreadedMotoServer, without request logging and with a short shutdown poll."""

    def __init__(self) -> None:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class Handler(MotoRequestHandler):
            def log(self, *args: Any, **kwargs: Any) -> None:  # silence werkzeug's request log
                pass

        class Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                app = DomainDispatcherApplication(create_backend_app)
                self._server = make_server(self._ip_address, self._port, app, True, request_handler=Handler)
                self._server_ready_event.set()
                self._server.serve_forever(poll_interval=0.05)

        self.server = Server(ip_address=HOST, port=0, verbose=False)

    def start(self) -> tuple[str, int]:
        self.server.start()
        return self.server.get_host_and_port()

    def stop(self) -> None:
        self.server.stop()


class _FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], fake: AwsFake):
        self.fake = fake
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(addr, _FrontHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_sockets(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FrontServer
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake.verbose:
            super().log_message(format, *args)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        resp = self.server.fake._handle(self.command, self.path, dict(self.headers.items()), body)
        if resp is None:  # drop the connection without any response
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(resp.status)
        names = set()
        for name, value in resp.headers:
            names.add(name.lower())
            self.send_header(name, value)
        if "x-amzn-requestid" not in names:
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if resp.status != 204:
            self.send_header("Content-Length", str(len(resp.body)))
        if resp.status != 204 and self.command != "HEAD":
            # one write for headers and body: two small writes hit Nagle + delayed ACK (~40 ms)
            self._headers_buffer.append(b"\r\n" + resp.body)
            self.flush_headers()
        else:
            self.end_headers()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class AwsFake:
    """moto + a faithful front for the API Gateway calls apimon makes. See the module docstring.

    Attributes: ``endpoint_url`` (the front), ``moto_url``, ``region``, ``account_id``, ``requests``
    (list of :class:`RequestRecord`), ``counts`` (Counter by operation name), ``throttled`` (number of
    429 responses sent), ``plan_key_hold`` (seconds a CreateUsagePlanKey stays in flight, default 0),
    ``plan_key_conflict_scope`` ('region': any two in flight conflict, as AWS support describes it;
    'plan': only two on the same plan).
    """

    def __init__(self, *, region: str = DEFAULT_REGION, port: int = 0, account_id: str | None = None,
                 plan_key_conflict_scope: str = "region", plan_key_hold: float = 0.0,
                 verbose: bool = False):
        if plan_key_conflict_scope not in ("region", "plan"):
            raise ValueError("plan_key_conflict_scope must be 'region' or 'plan'")
        self.region = region
        self.account_id = account_id or str(random.randrange(10**11, 10**12))
        self.plan_key_conflict_scope = plan_key_conflict_scope
        self.plan_key_hold = plan_key_hold
        self.verbose = verbose
        self.endpoint_url = ""
        self.moto_url = ""
        self.requests: list[RequestRecord] = []
        self.counts: Counter[str] = Counter()
        self.throttled = 0
        self._port = port
        self._lock = threading.RLock()
        self._usage: dict[str, dict[str, dict[date, tuple[int, int]]]] = {}
        self._tags: dict[tuple[str, str], dict[str, str]] = {}
        self._faults: list[Fault] = []
        self._quota: dict[str, _Bucket] | None = None
        self._plan_keys_in_flight: set[str] = set()
        self._moto: _QuietMotoServer | None = None
        self._front: _FrontServer | None = None
        self._front_thread: threading.Thread | None = None
        self._moto_addr: tuple[str, int] = ("", 0)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        operation_name("GET", "/")  # build the route table before serving
        self._moto = _QuietMotoServer()
        self._moto_addr = self._moto.start()
        self.moto_url = f"http://{self._moto_addr[0]}:{self._moto_addr[1]}"
        self._front = _FrontServer((HOST, self._port), self)
        self.endpoint_url = f"http://{HOST}:{self._front.server_address[1]}"
        self._front_thread = threading.Thread(target=self._front.serve_forever,
                                              kwargs={"poll_interval": 0.05}, name="aws-fake-front",
                                              daemon=True)
        self._front_thread.start()
        return self

    def stop(self) -> None:
        if self._front is not None:
            self._front.shutdown()
            self._front.close_open_sockets()
            self._front.server_close()
            self._front = None
        if self._front_thread is not None:
            self._front_thread.join(timeout=5)
            self._front_thread = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
            self._drop_moto_state()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _drop_moto_state(self) -> None:
        with contextlib.suppress(ImportError, AttributeError, KeyError):  # moto internals may move
            from moto.apigateway.models import apigateway_backends
            apigateway_backends.pop(self.account_id, None)

    # ----------------------------------------------------------------- clients
    def _session(self) -> boto3.session.Session:
        return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                     region_name=self.region, botocore_session=_core_session())

    def client(self, *, max_attempts: int | None = None, config: Config | None = None) -> Any:
        """A boto3 apigateway client on the front, dummy credentials, no proxies, ~/.aws ignored.

        ``max_attempts`` is the *total* number of attempts (botocore ``total_max_attempts``): 1 disables
        retries. Note that botocore's ``Config(retries={'max_attempts': 1})`` still retries once.
        Default: standard retry mode, 3 attempts.
        """
        cfg = Config(proxies={}, retries={"mode": "standard", "total_max_attempts": max_attempts or 3})
        if config is not None:
            cfg = cfg.merge(config)
        return self._session().client("apigateway", endpoint_url=self.endpoint_url, config=cfg)

    def moto_client(self) -> Any:
        """A client straight on moto (bypasses the front: not logged, no faults) in this fake's account."""
        client = self._session().client("apigateway", endpoint_url=self.moto_url,
                                        config=Config(proxies={}, retries={"total_max_attempts": 1}))

        def add_account(request: Any, **_: Any) -> None:
            request.headers["x-moto-account-id"] = self.account_id

        client.meta.events.register("before-sign.apigateway", add_account)
        return client

    def add_rest_api(self, name: str, stages: Iterable[str] = ("prod",)) -> str:
        """Create a REST API with a MOCK GET / method deployed to each stage; returns its id."""
        mc = self.moto_client()
        api_id = mc.create_rest_api(name=name)["id"]
        root = mc.get_resources(restApiId=api_id)["items"][0]["id"]
        mc.put_method(restApiId=api_id, resourceId=root, httpMethod="GET", authorizationType="NONE")
        mc.put_integration(restApiId=api_id, resourceId=root, httpMethod="GET", type="MOCK")
        for stage in stages:
            mc.create_deployment(restApiId=api_id, stageName=stage)
        return api_id

    # ----------------------------------------------------------------- seeding & control
    def set_usage(self, plan_id: str, key_id: str, day: date | str, used: int, remaining: int) -> None:
        """Seed one day of GetUsage data for (plan, key)."""
        if isinstance(day, str):
            day = date.fromisoformat(day)
        with self._lock:
            self._usage.setdefault(plan_id, {}).setdefault(key_id, {})[day] = (int(used), int(remaining))

    def clear_usage(self) -> None:
        with self._lock:
            self._usage.clear()

    def reset_counts(self) -> None:
        """Clear the request log, the per-operation counters and ``throttled``."""
        with self._lock:
            self.requests.clear()
            self.counts.clear()
            self.throttled = 0

    def count(self, operation: str) -> int:
        with self._lock:
            return self.counts[operation]

    def inject(self, match: Callable[[str, str], bool] | str, status: int = 429, times: int = 1,
               retry_after: float | None = None, body_error_type: str | None = None,
               drop_connection: bool = False, message: str | None = None, after_forward: bool = False) -> Fault:
        """Make the next ``times`` matching requests fail.

        ``match``: a callable ``(method, path) -> bool`` (path URL-decoded, no query), an API Gateway
        operation name ('CreateUsagePlanKey'), or else a regex searched in ``"METHOD /path"``. The error
        type defaults from the status (429 TooManyRequestsException, 409 ConflictException, 400
        BadRequestException, 404 NotFoundException, 503 ServiceUnavailableException; 500: no type, so
        botocore's code is '500', body "Internal server error"). ``body_error_type=""`` sends no type.
        ``retry_after`` sets the Retry-After header. ``drop_connection`` closes the TCP connection with no
        response instead. ``after_forward`` lets the request take effect first (a response lost on the way
        back, as after a network failure or a gateway timeout): a client that retries blindly duplicates it.
        """
        if callable(match):
            fn = match

            def matcher(method: str, path: str, _op: str) -> bool:
                return bool(fn(method, path))
        elif match in _operation_names():
            def matcher(method: str, path: str, op: str) -> bool:
                return op == match
        else:
            regex = re.compile(match)

            def matcher(method: str, path: str, _op: str) -> bool:
                return bool(regex.search(f"{method} {path}"))
        default_type, default_message = _DEFAULT_ERROR.get(status, (None, "Error"))
        fault = Fault(matcher, status, times, retry_after,
                      default_type if body_error_type is None else body_error_type,
                      message or default_message, drop_connection, after_forward)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def enforce_quotas(self, *, scale: float = 1.0, update_usage_plan_interval: float | None = None,
                       create_api_key_per_s: float | None = None, delete_api_key_per_s: float | None = None,
                       global_per_s: float | None = None, burst: int = 40) -> None:
        """Throttle like AWS's fixed control-plane quotas (429 TooManyRequestsException + Retry-After).

        Defaults are AWS's numbers with time shrunk by ``scale``: UpdateUsagePlan one every ``20 * scale``
        s, CreateApiKey and DeleteApiKey ``5 / scale`` per s each (bucket of one second's worth), every
        call ``10 / scale`` per s with a bucket of ``burst``. Explicit values are used as given.
        """
        interval = 20.0 * scale if update_usage_plan_interval is None else update_usage_plan_interval
        create = 5.0 / scale if create_api_key_per_s is None else create_api_key_per_s
        delete = 5.0 / scale if delete_api_key_per_s is None else delete_api_key_per_s
        glob = 10.0 / scale if global_per_s is None else global_per_s
        with self._lock:
            self._quota = {
                "*": _Bucket(glob, float(burst)),
                "UpdateUsagePlan": _Bucket(1.0 / interval, 1.0),
                "CreateApiKey": _Bucket(create, max(1.0, create)),
                "DeleteApiKey": _Bucket(delete, max(1.0, delete)),
            }

    def disable_quotas(self) -> None:
        with self._lock:
            self._quota = None

    def reset(self) -> None:
        """Forget everything: moto state of this account, usage, tags, faults, quotas, counters."""
        with self._lock:
            self._usage.clear()
            self._tags.clear()
            self._faults.clear()
            self._quota = None
        self.reset_counts()
        with contextlib.suppress(ImportError, AttributeError, KeyError):  # moto internals may move
            from moto.apigateway.models import apigateway_backends
            if self.account_id in apigateway_backends:
                apigateway_backends[self.account_id].reset()

    # ----------------------------------------------------------------- request handling
    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Resp | None:
        raw_path, _, raw_query = target.partition("?")
        query = parse_qsl(raw_query, keep_blank_values=True)
        if raw_path.startswith("/__fake__/"):
            return self._admin(method, raw_path, body)
        op = operation_name(method, raw_path, query)
        path = unquote(raw_path)
        with self._lock:
            self.requests.append(RequestRecord(method, path, dict(query)))
            self.counts[op] += 1
            fault = next((f for f in self._faults if f.remaining > 0 and f.match(method, path, op)), None)
            if fault is not None:
                fault.remaining -= 1
                fault.hits += 1
                if fault.status == 429 and not fault.drop_connection:
                    self.throttled += 1
        if fault is not None:
            if fault.after_forward:
                try:
                    self._dispatch(_Req(method, raw_path, query, headers, body, op))
                except _ApiError:
                    pass
            if fault.drop_connection:
                return None
            extra = [] if fault.retry_after is None else [("Retry-After", _fmt_seconds(fault.retry_after))]
            return _error(fault.status, fault.error_type, fault.message, extra)
        wait = self._quota_wait(op)
        if wait is not None:
            return _error(429, "TooManyRequestsException", "Too Many Requests",
                          [("Retry-After", _fmt_seconds(wait))])
        req = _Req(method, raw_path, query, headers, body, op)
        try:
            return self._dispatch(req)
        except _ApiError as err:
            return _error(err.status, err.error_type, err.message)

    def _quota_wait(self, op: str) -> float | None:
        with self._lock:
            if self._quota is None:
                return None
            now = time.monotonic()
            buckets = [self._quota["*"]] + ([self._quota[op]] if op in self._quota else [])
            wait = max(b.wait(now) for b in buckets)
            if wait > 0:
                self.throttled += 1
                return wait
            for b in buckets:
                b.take()
            return None

    def _dispatch(self, req: _Req) -> _Resp:
        op = req.operation
        if op == "GetUsage":
            return self._get_usage(req)
        if op in ("GetUsagePlans", "GetApiKeys", "GetUsagePlanKeys", "GetRestApis"):
            return self._paged_list(req)
        if op in ("TagResource", "UntagResource", "GetTags"):
            arn = unquote(req.raw_path[len("/tags/"):])
            m = _ARN_RE.match(arn)
            if m:
                return self._tags_op(req, m.group(2), m.group(3))
            return self._forward(req)
        if op == "CreateUsagePlan":
            doc = self._body_json(req)
            for stage in doc.get("apiStages") or []:
                self._check_stage(req, stage.get("apiId", ""), stage.get("stage", ""), doc.get("name", ""))
            return self._forward(req)
        if op == "UpdateUsagePlan":
            plan_id = req.segments[1]
            for patch in self._body_json(req).get("patchOperations") or []:
                if patch.get("op") == "add" and patch.get("path") == "/apiStages":
                    api_id, _, stage = str(patch.get("value", "")).partition(":")
                    self._check_stage(req, api_id, stage, plan_id)
            return self._with_tags(self._forward(req), "usageplans")
        if op == "CreateUsagePlanKey":
            return self._create_plan_key(req)
        if op in ("DeleteUsagePlan", "DeleteApiKey"):
            kind = "usageplans" if op == "DeleteUsagePlan" else "apikeys"
            self._require(req, f"/{kind}/{quote(req.segments[1], safe='')}")
            resp = self._forward(req)
            if resp.status < 300:
                with self._lock:
                    self._tags.pop((kind, req.segments[1]), None)
            return resp
        resp = self._forward(req)
        if op in ("GetUsagePlan", "GetApiKey", "UpdateApiKey"):
            return self._with_tags(resp, "usageplans" if op == "GetUsagePlan" else "apikeys")
        return resp

    # ----------------------------------------------------------------- moto access
    def _moto_request(self, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> _Resp:
        conn = http.client.HTTPConnection(*self._moto_addr, timeout=30)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            out["x-moto-account-id"] = self.account_id
            out["Host"] = f"{self._moto_addr[0]}:{self._moto_addr[1]}"
            if body or method in ("POST", "PUT", "PATCH"):
                out["Content-Length"] = str(len(body))
            conn.request(method, target, body=body or None, headers=out)
            r = conn.getresponse()
            data = r.read()
            resp_headers = [(k, v) for k, v in r.getheaders() if k.lower() not in _HOP_BY_HOP
                            and k.lower() not in ("content-type", "access-control-allow-origin")]
            ctype = "application/json" if data[:1] in (b"{", b"[") else (r.getheader("Content-Type") or "")
            if ctype:
                resp_headers.append(("Content-Type", ctype))
            return _Resp(r.status, resp_headers, data)
        finally:
            conn.close()

    def _forward(self, req: _Req, query: list[tuple[str, str]] | None = None) -> _Resp:
        q = req.query if query is None else query
        target = req.raw_path + ("?" + urlencode(q) if q else "")
        return self._moto_request(req.method, target, req.headers, req.body)

    def _internal_headers(self, req: _Req) -> dict[str, str]:
        auth = req.headers.get("Authorization") or req.headers.get("authorization")
        if not auth:
            auth = (f"AWS4-HMAC-SHA256 Credential=testing/20200101/{self.region}/apigateway/aws4_request, "
                    "SignedHeaders=host, Signature=0")
        return {"Authorization": auth, "Accept": "application/json"}

    def _moto_get(self, req: _Req, target: str) -> tuple[int, Any]:
        resp = self._moto_request("GET", target, self._internal_headers(req))
        try:
            doc = json.loads(resp.body) if resp.body else {}
        except ValueError:
            doc = {}
        return resp.status, doc

    def _require(self, req: _Req, target: str) -> Any:
        """GET target from moto; raise its 4xx as ours. Returns the decoded body."""
        status, doc = self._moto_get(req, target)
        if status >= 400:
            raise _ApiError(status, str(doc.get("__type") or _DEFAULT_ERROR.get(status, ("Error",))[0]),
                            str(doc.get("message") or "Error"))
        return doc

    @staticmethod
    def _body_json(req: _Req) -> dict[str, Any]:
        try:
            doc = json.loads(req.body or b"{}")
        except ValueError as exc:
            raise _ApiError(400, "BadRequestException", "Invalid JSON in request body") from exc
        return doc if isinstance(doc, dict) else {}

    # ----------------------------------------------------------------- behaviours
    def _check_stage(self, req: _Req, api_id: str, stage: str, plan: str) -> None:
        message = f"Invalid API Stage {{api: {api_id}, stage: {stage}}} specified for usageplan {plan}"
        if not api_id or not stage:
            raise _ApiError(400, "BadRequestException", message)
        status, _ = self._moto_get(req, f"/restapis/{quote(api_id, safe='')}")
        if status == 404:
            raise _ApiError(400, "BadRequestException", message)
        status, _ = self._moto_get(req, f"/restapis/{quote(api_id, safe='')}/stages/{quote(stage, safe='')}")
        if status == 404:
            raise _ApiError(400, "BadRequestException", message)

    def _page_params(self, req: _Req) -> tuple[int, int]:
        raw_limit = req.q("limit")
        limit = DEFAULT_PAGE
        if raw_limit not in (None, ""):
            try:
                limit = int(raw_limit)
            except ValueError as exc:
                raise _ApiError(400, "BadRequestException", "Invalid limit parameter") from exc
            if not 1 <= limit <= MAX_PAGE:
                raise _ApiError(400, "BadRequestException",
                                f"Invalid limit: {limit}. The limit must be between 1 and {MAX_PAGE}")
        position = req.q("position")
        return limit, (_decode_position(position) if position else 0)

    def _paged_list(self, req: _Req) -> _Resp:
        limit, start = self._page_params(req)
        if req.operation == "GetUsagePlanKeys":  # moto answers [] for an unknown plan; AWS says 404
            self._require(req, f"/usageplans/{quote(req.segments[1], safe='')}")
        fwd = [(k, v) for k, v in req.query if k not in ("limit", "position", "customerId")]
        resp = self._forward(req, fwd)
        if resp.status != 200:
            return resp
        items = json.loads(resp.body).get("item") or []
        customer = req.q("customerId")
        if req.operation == "GetApiKeys" and customer:
            items = [i for i in items if i.get("customerId") == customer]
        kind = {"GetUsagePlans": "usageplans", "GetApiKeys": "apikeys"}.get(req.operation)
        if kind:
            items = [self._merge_tags(kind, i) for i in items]
        out: dict[str, Any] = {"item": items[start:start + limit]}
        if start + limit < len(items):
            out["position"] = _encode_position(start + limit)
        return _json(200, out)

    def _merge_tags(self, kind: str, item: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            tags = self._tags.get((kind, str(item.get("id"))))
        if tags is not None:
            item = dict(item)
            if tags:
                item["tags"] = dict(tags)
            else:
                item.pop("tags", None)
        return item

    def _with_tags(self, resp: _Resp, kind: str) -> _Resp:
        if resp.status >= 300:
            return resp
        try:
            doc = json.loads(resp.body)
        except ValueError:
            return resp
        if not isinstance(doc, dict) or "id" not in doc:
            return resp
        return _Resp(resp.status, resp.headers, json.dumps(self._merge_tags(kind, doc)).encode())

    def _tags_op(self, req: _Req, kind: str, res_id: str) -> _Resp:
        current = self._require(req, f"/{kind}/{quote(res_id, safe='')}")
        with self._lock:
            tags = self._tags.setdefault((kind, res_id), dict(current.get("tags") or {}))
            if req.operation == "GetTags":
                return _json(200, {"tags": dict(tags)})
            if req.operation == "UntagResource":
                for key, value in req.query:
                    if key == "tagKeys":
                        tags.pop(value, None)
                return _Resp(204, [], b"")
            new = self._body_json(req).get("tags")
            if not isinstance(new, dict) or not new:
                raise _ApiError(400, "BadRequestException", "tags must not be empty")
            for key, value in new.items():
                if not 1 <= len(key) <= 128 or len(str(value)) > 256:
                    raise _ApiError(400, "BadRequestException", f"Invalid tag: {key}")
                if key.lower().startswith("aws:"):
                    raise _ApiError(400, "BadRequestException",
                                    "Tag keys beginning with 'aws:' are reserved for system use")
            if len({**tags, **new}) > MAX_TAGS:
                raise _ApiError(400, "BadRequestException",
                                f"A resource can have at most {MAX_TAGS} tags")
            tags.update({k: str(v) for k, v in new.items()})
        return _Resp(204, [], b"")

    def _create_plan_key(self, req: _Req) -> _Resp:
        slot = "*" if self.plan_key_conflict_scope == "region" else req.segments[1]
        with self._lock:
            if slot in self._plan_keys_in_flight:
                return _error(409, "ConflictException", _CONFLICT_MESSAGE)
            self._plan_keys_in_flight.add(slot)
        try:
            if self.plan_key_hold > 0:
                time.sleep(self.plan_key_hold)
            return self._forward(req)
        finally:
            with self._lock:
                self._plan_keys_in_flight.discard(slot)

    def _get_usage(self, req: _Req) -> _Resp:
        plan_id = req.segments[1]
        start_s, end_s = req.q("startDate") or "", req.q("endDate") or ""
        try:
            if not (_DATE_RE.match(start_s) and _DATE_RE.match(end_s)):
                raise ValueError
            start, end = date.fromisoformat(start_s), date.fromisoformat(end_s)
        except ValueError as exc:
            raise _ApiError(400, "BadRequestException",
                            "Invalid date format: startDate and endDate must be YYYY-MM-DD") from exc
        plan = self._require(req, f"/usageplans/{quote(plan_id, safe='')}")
        if end < start:
            raise _ApiError(400, "BadRequestException", "The end date must not be before the start date")
        days = (end - start).days + 1
        if days > MAX_USAGE_DAYS:
            raise _ApiError(400, "BadRequestException",
                            f"The usage data range cannot exceed {MAX_USAGE_DAYS} days")
        limit, offset = self._page_params(req)
        attached = [k["id"] for k in self._require(req, f"/usageplans/{quote(plan_id, safe='')}/keys")
                    .get("item") or []]
        with self._lock:
            seeded = {k: dict(v) for k, v in self._usage.get(plan_id, {}).items()}
        key_ids = sorted(set(attached) | set(seeded))
        key_filter = req.q("keyId")
        if key_filter:
            if key_filter not in key_ids:
                status, _ = self._moto_get(req, f"/apikeys/{quote(key_filter, safe='')}")
                if status == 404:
                    raise _ApiError(404, "NotFoundException", "Invalid Key identifier specified")
            key_ids = [k for k in key_ids if k == key_filter]
        default_remaining = int((plan.get("quota") or {}).get("limit") or 0)
        values = {}
        for key_id in key_ids[offset:offset + limit]:
            per_day = seeded.get(key_id, {})
            values[key_id] = [list(per_day.get(start + timedelta(days=i), (0, default_remaining)))
                              for i in range(days)]
        out: dict[str, Any] = {"usagePlanId": plan_id, "startDate": start_s, "endDate": end_s}
        if offset + limit < len(key_ids):
            out["position"] = _encode_position(offset + limit)
        out["values"] = values
        return _json(200, out)

    # ----------------------------------------------------------------- admin endpoints (standalone use)
    def _admin(self, method: str, raw_path: str, body: bytes) -> _Resp:
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            return _error(400, "BadRequestException", "invalid JSON")
        name = raw_path[len("/__fake__/"):].strip("/")
        try:
            if name == "usage" and method == "POST":
                for row in doc if isinstance(doc, list) else [doc]:
                    self.set_usage(row["usagePlanId"], row["keyId"], row["day"], row["used"],
                                   row["remaining"])
                return _json(200, {})
            if name == "inject" and method == "POST":
                self.inject(doc["match"], status=int(doc.get("status", 429)),
                            times=int(doc.get("times", 1)), retry_after=doc.get("retryAfter"),
                            body_error_type=doc.get("errorType"),
                            drop_connection=bool(doc.get("dropConnection", False)),
                            message=doc.get("message"))
                return _json(200, {})
            if name == "faults" and method == "DELETE":
                self.clear_faults()
                return _json(200, {})
            if name == "quotas" and method == "POST":
                self.enforce_quotas(**doc)
                return _json(200, {})
            if name == "quotas" and method == "DELETE":
                self.disable_quotas()
                return _json(200, {})
            if name == "requests" and method == "GET":
                with self._lock:
                    return _json(200, {"requests": [list(r) for r in self.requests],
                                       "counts": dict(self.counts), "throttled": self.throttled})
            if name == "reset_counts" and method == "POST":
                self.reset_counts()
                return _json(200, {})
            if name == "rest_api" and method == "POST":
                api_id = self.add_rest_api(doc.get("name", "api"), doc.get("stages", ["prod"]))
                return _json(200, {"id": api_id})
            if name == "info" and method == "GET":
                return _json(200, {"endpointUrl": self.endpoint_url, "motoUrl": self.moto_url,
                                   "region": self.region, "accountId": self.account_id})
        except (KeyError, TypeError, ValueError) as exc:
            return _error(400, "BadRequestException", f"bad admin request: {exc!r}")
        return _error(404, "NotFoundException", f"no admin endpoint {method} {raw_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Local fake of the AWS API Gateway control plane (moto + front)")
    parser.add_argument("--port", type=int, default=0, help="front port on 127.0.0.1 (0: ephemeral)")
    parser.add_argument("--region", default=DEFAULT_REGION)
    parser.add_argument("--account-id", default=None)
    parser.add_argument("--enforce-quotas", action="store_true",
                        help="throttle like AWS's control-plane quotas")
    parser.add_argument("--scale", type=float, default=1.0, help="time scale for --enforce-quotas")
    parser.add_argument("--plan-key-hold", type=float, default=0.0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    fake = AwsFake(region=args.region, port=args.port, account_id=args.account_id,
                   plan_key_hold=args.plan_key_hold, verbose=args.verbose).start()
    if args.enforce_quotas:
        fake.enforce_quotas(scale=args.scale)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(fake.endpoint_url, flush=True)
    print(json.dumps({"motoUrl": fake.moto_url, "region": fake.region, "accountId": fake.account_id}),
          file=sys.stderr, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
