"""A local HTTP fake of the Apigee X management API (``apigee.googleapis.com/v1``) for apimon's tests.

Routes, query parameters and request-body schemas come from the discovery document shipped with
google-api-python-client (``googleapiclient/discovery_cache/documents/apigee.v1.json``): every request
body is checked against the method's schema with proto3-JSON rules (unknown fields and wrong JSON types
give Google's 400 INVALID_ARGUMENT), unknown query parameters are refused like the Google front end does,
and every response follows proto3 JSON (int64 as strings, empty/default fields omitted).

Usage::

    with ApigeeFake(org="acme", environments=["prod"]) as fake:
        s = fake.session()                       # google.auth AuthorizedSession, token "test-token"
        s.get(f"{fake.endpoint}/v1/organizations/acme/apiproducts")

Standalone: ``python tests/fakes/apigee.py --port 8089 --org acme --env prod`` prints the URL.

Behaviour that is not documented by Apigee is marked "ASSUMED" below.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import datetime as dt
import json
import math
import os
import re
import secrets
import socket
import string
import threading
import time
import traceback
import uuid
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["ApiError", "ApigeeFake", "java_double", "load_discovery"]

MAX_STATS_DAYS = 92
MAX_ATTRIBUTES = 18
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)
_INT32 = (-(2**31), 2**31 - 1)
_UINT32 = (0, 2**32 - 1)


# --------------------------------------------------------------------------------------------------
# discovery document


def _discovery_path() -> str:
    env = os.environ.get("APIGEE_DISCOVERY_JSON")
    if env:
        return env
    import googleapiclient.discovery_cache as cache

    return os.path.join(os.path.dirname(cache.__file__), "documents", "apigee.v1.json")


_DISCOVERY: dict | None = None


def load_discovery() -> dict:
    """The parsed apigee.v1 discovery document (cached)."""
    global _DISCOVERY
    if _DISCOVERY is None:
        with open(_discovery_path(), encoding="utf-8") as fh:
            _DISCOVERY = json.load(fh)
    return _DISCOVERY


# --------------------------------------------------------------------------------------------------
# errors


class ApiError(Exception):
    """A Google-style error: ``{"error": {"code", "message", "status", "details"?}}``."""

    def __init__(self, code: int, status: str, message: str, details=None, headers=None):
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict:
        err = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            err["details"] = self.details
        return {"error": err}


def _bad_request(message: str, field: str | None = None) -> ApiError:
    details = None
    if field is not None:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }
        ]
    return ApiError(400, "INVALID_ARGUMENT", message, details)


def _precondition(message: str) -> ApiError:
    return ApiError(400, "FAILED_PRECONDITION", message)


def _not_found(message: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", message)


def _conflict(message: str) -> ApiError:
    return ApiError(409, "ALREADY_EXISTS", message)


_FAULT_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_FAULT_MESSAGE = {
    429: "Quota exceeded for quota metric 'Default requests' and limit 'Default requests per minute' "
    "of service 'apigee.googleapis.com'.",
    500: "Internal error encountered.",
    502: "Bad gateway.",
    503: "The service is currently unavailable.",
    504: "The request timed out.",
}


# --------------------------------------------------------------------------------------------------
# proto3 JSON helpers


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _proto_name(schema_id: str) -> str:
    for prefix, pkg in (
        ("GoogleCloudApigeeV1", "google.cloud.apigee.v1."),
        ("GoogleTypeMoney", "google.type.Money"),
        ("GoogleType", "google.type."),
        ("GoogleProtobuf", "google.protobuf."),
        ("GoogleLongrunning", "google.longrunning."),
        ("GoogleRpc", "google.rpc."),
        ("GoogleIamV1", "google.iam.v1."),
    ):
        if schema_id.startswith(prefix):
            return pkg + schema_id[len(prefix) :] if pkg.endswith(".") else pkg
    return schema_id


def _body_field(schema_id: str) -> str:
    """Name of the request-message field that carries the body, e.g. ``api_product``."""
    name = schema_id
    for prefix in ("GoogleCloudApigeeV1", "GoogleType", "GoogleProtobuf", "GoogleIamV1"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return _snake(name)


def _render(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _prune(obj):
    """Drop proto3 default values (None, "", 0, False, [], {}) from dicts, recursively."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            v = _prune(v)
            if v is None or v == "" or v is False or v == [] or v == {}:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0:
                continue
            out[k] = v
        return out
    if isinstance(obj, list):
        return [_prune(v) for v in obj]
    return obj


def java_double(value: float) -> str:
    """Format a number like Java's ``Double.toString`` ("39.0", "2.52056245E8")."""
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    if v == 0:
        return "0.0"
    if 1e-3 <= abs(v) < 1e7:
        return repr(v)  # Python's shortest repr is plain decimal in this range, like Java
    sign, digits, exp = Decimal(repr(v)).normalize().as_tuple()
    ds = "".join(map(str, digits))
    mantissa = ds[0] + "." + (ds[1:] or "0")
    return f"{'-' if sign else ''}{mantissa}E{len(ds) - 1 + exp}"


class _Schemas:
    """proto3-JSON validation + canonicalisation driven by the discovery schemas."""

    def __init__(self, discovery: dict):
        self.schemas = discovery["schemas"]

    # ---- labels used in Google's "Invalid value at 'x' (LABEL), value" messages
    def _label(self, prop: dict) -> str:
        if "$ref" in prop:
            return "type.googleapis.com/" + _proto_name(prop["$ref"])
        t, f = prop.get("type"), prop.get("format")
        if t == "array":
            return self._label(prop.get("items", {}))
        if "enum" in prop:
            return "TYPE_ENUM"
        return {
            ("string", "int64"): "TYPE_INT64",
            ("string", "uint64"): "TYPE_UINT64",
            ("integer", "int32"): "TYPE_INT32",
            ("integer", "uint32"): "TYPE_UINT32",
            ("integer", None): "TYPE_INT32",
            ("boolean", None): "TYPE_BOOL",
            ("number", "double"): "TYPE_DOUBLE",
            ("number", "float"): "TYPE_FLOAT",
            ("number", None): "TYPE_DOUBLE",
            ("string", "byte"): "TYPE_BYTES",
            ("string", "google-datetime"): "type.googleapis.com/google.protobuf.Timestamp",
            ("string", "google-duration"): "type.googleapis.com/google.protobuf.Duration",
            ("string", "google-fieldmask"): "type.googleapis.com/google.protobuf.FieldMask",
        }.get((t, f), "TYPE_STRING")

    def _invalid(self, path: str, prop: dict, value) -> ApiError:
        msg = f"Invalid value at '{path}' ({self._label(prop)}), {_render(value)}"
        return _bad_request(msg, path)

    def convert_body(self, value, schema_id: str, path: str) -> dict:
        if not isinstance(value, dict):
            raise _bad_request(
                'Invalid JSON payload received. Unknown name "": Root element must be a message.', path
            )
        return self._message(value, self.schemas[schema_id], path)

    def _message(self, value: dict, schema: dict, path: str) -> dict:
        props = schema.get("properties", {})
        out: dict = {}
        for key, raw in value.items():
            if key in props:
                name = key
            elif "_" in key and _camel(key) in props:
                name = _camel(key)
            else:
                where = f" at '{path}'" if path else ""
                msg = f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.'
                raise _bad_request(msg, path)
            if raw is None:
                continue
            sub = f"{path}.{_snake(name)}" if path else _snake(name)
            conv = self._value(raw, props[name], sub)
            if self._is_default(conv, props[name]):
                continue
            out[name] = conv
        return out

    @staticmethod
    def _is_default(value, prop: dict) -> bool:
        if "$ref" in prop:
            return False  # a set sub-message is kept even when empty
        if value in ("", [], {}) or value is False:
            return True
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            return True
        if prop.get("type") == "string" and prop.get("format") in ("int64", "uint64") and value == "0":
            return True
        return bool("enum" in prop and value == prop["enum"][0])

    def _value(self, value, prop: dict, path: str):
        if "$ref" in prop:
            if not isinstance(value, dict):
                raise self._invalid(path, prop, value)
            return self._message(value, self.schemas[prop["$ref"]], path)
        t, fmt = prop.get("type"), prop.get("format")
        if t == "array":
            if not isinstance(value, list):
                raise self._invalid(path, prop, value)
            items = prop.get("items", {})
            out = []
            for i, item in enumerate(value):
                if item is None and (items.get("type") or "$ref" in items):
                    raise self._invalid(f"{path}[{i}]", items, item)
                out.append(self._value(item, items, f"{path}[{i}]"))
            return out
        if t == "object":
            if not isinstance(value, dict):
                raise self._invalid(path, prop, value)
            if "additionalProperties" in prop:
                ap = prop["additionalProperties"]
                return {k: self._value(v, ap, f"{path}[{k!r}]") for k, v in value.items()}
            if "properties" in prop:
                return self._message(value, prop, path)
            return value  # google.protobuf.Struct
        if t is None:
            return value  # google.protobuf.Value ("any")
        if t == "boolean":
            if not isinstance(value, bool):
                raise self._invalid(path, prop, value)
            return value
        if t == "string" and "enum" in prop:
            enum = prop["enum"]
            if isinstance(value, str) and value in enum:
                return value
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(enum):
                return enum[value]
            raise self._invalid(path, prop, value)
        if t == "string" and fmt in ("int64", "uint64"):
            n = self._integer(value, path, prop, _INT64 if fmt == "int64" else _UINT64)
            return str(n)
        if t == "integer":
            bounds = _UINT32 if fmt == "uint32" else _INT32
            return self._integer(value, path, prop, bounds)
        if t == "number":
            if isinstance(value, bool):
                raise self._invalid(path, prop, value)
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                if value in ("NaN", "Infinity", "-Infinity"):
                    return float(value.replace("Infinity", "inf"))
                try:
                    return float(value)
                except ValueError:
                    pass
            raise self._invalid(path, prop, value)
        if t == "string":
            if not isinstance(value, str):
                raise self._invalid(path, prop, value)
            if fmt == "byte":
                try:
                    padded = value + "=" * (-len(value) % 4)
                    base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
                except (binascii.Error, ValueError):
                    raise self._invalid(path, prop, value) from None
            return value
        return value

    def _integer(self, value, path: str, prop: dict, bounds) -> int:
        n = None
        if isinstance(value, bool):
            n = None
        elif isinstance(value, int):
            n = value
        elif isinstance(value, float) and value.is_integer():
            n = int(value)
        elif isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            n = int(value.strip())
        if n is None or not bounds[0] <= n <= bounds[1]:
            raise self._invalid(path, prop, value)
        return n


# --------------------------------------------------------------------------------------------------
# routing


class _Route:
    def __init__(self, method: dict):
        self.id = method["id"]
        self.http_method = method["httpMethod"]
        self.flat_path = method.get("flatPath") or method["path"]
        self.request = (method.get("request") or {}).get("$ref")
        self.parameters = method.get("parameters", {})
        pattern = "^/"
        pos = 0
        names = []
        for m in re.finditer(r"\{([^}]+)\}", self.flat_path):
            pattern += re.escape(self.flat_path[pos : m.start()])
            pattern += f"(?P<{m.group(1)}>[^/:]+)"
            names.append(m.group(1))
            pos = m.end()
        pattern += re.escape(self.flat_path[pos:]) + "$"
        self.regex = re.compile(pattern)
        self.param_names = names
        self.sort_key = (len(names), -len(self.flat_path))


def _collect_routes(discovery: dict) -> list[_Route]:
    routes: list[_Route] = []

    def walk(resources: dict):
        for res in resources.values():
            for m in res.get("methods", {}).values():
                routes.append(_Route(m))
            walk(res.get("resources", {}))

    walk(discovery["resources"])
    routes.sort(key=lambda r: r.sort_key)
    return routes


class _Ctx:
    def __init__(self, route, params, query, body, headers):
        self.route = route
        self.params = params
        self.query = query
        self.body = body
        self.headers = headers

    def q(self, name: str, default=None):
        if name in self.query:
            return self.query[name]
        snake = _snake(name)
        return self.query.get(snake, default)

    def qbool(self, name: str) -> bool:
        return (self.q(name) or "false") == "true"


def _now_ms() -> str:
    return str(int(time.time() * 1000))


def _day_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


_KEY_CHARS = string.ascii_letters + string.digits


def _random_key(n: int) -> str:
    return "".join(secrets.choice(_KEY_CHARS) for _ in range(n))


# --------------------------------------------------------------------------------------------------
# the fake


class ApigeeFake:
    """In-process Apigee X management API fake served over HTTP on 127.0.0.1."""

    def __init__(
        self,
        org: str = "acme",
        environments=("prod",),
        *,
        monetization: bool = True,
        proxies=(),
        port: int = 0,
        valid_tokens=None,
    ):
        self.org = org
        self.environments: list[str] = list(environments)
        self.proxies: list[str] = list(proxies)
        self.monetization = monetization
        self.valid_tokens = set(valid_tokens) if valid_tokens is not None else None
        self.port = port
        self.requests: list[tuple[str, str, dict]] = []
        # state (read freely in tests; mutate through the helpers)
        self.products: dict[str, dict] = {}
        self.rate_plans: dict[str, dict[str, dict]] = {}
        self.developers: dict[str, dict] = {}
        self.apps: dict[str, dict[str, dict]] = {}
        self.traffic: dict[tuple[str, str, str, dt.date], int] = {}
        self._key_owner: dict[str, tuple[str, str]] = {}
        self._faults: list[dict] = []
        self._lock = threading.RLock()
        self._created_at = _now_ms()
        discovery = load_discovery()
        self._schemas = _Schemas(discovery)
        self._std_params = set(discovery.get("parameters", {}))
        self._routes = _collect_routes(discovery)
        self._handlers = self._handler_table()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> ApigeeFake:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="ApigeeFake", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def session(self, token: str = "test-token"):
        """A ``google.auth.transport.requests.AuthorizedSession`` with a static bearer token."""
        from google.auth.transport.requests import AuthorizedSession
        from google.oauth2.credentials import Credentials

        return AuthorizedSession(Credentials(token=token))

    # ---------------------------------------------------------------- test helpers
    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def inject(self, method=None, path_regex=None, status=429, times=1, retry_after=None, message=None):
        """Make the next ``times`` matching requests fail with ``status`` (before auth is checked)."""
        with self._lock:
            self._faults.append(
                {
                    "method": method.upper() if method else None,
                    "regex": re.compile(path_regex) if path_regex else None,
                    "status": int(status),
                    "times": int(times),
                    "retry_after": retry_after,
                    "message": message,
                }
            )

    def add_environment(self, name: str) -> None:
        with self._lock:
            if name not in self.environments:
                self.environments.append(name)

    def add_proxy(self, name: str) -> None:
        with self._lock:
            if name not in self.proxies:
                self.proxies.append(name)

    def add_product(self, name: str, **fields) -> dict:
        """Insert a product directly (no validation). Fields are camelCase API fields."""
        with self._lock:
            now = _now_ms()
            product = {"name": name, "displayName": name, "approvalType": "auto", **fields}
            product.setdefault("createdAt", now)
            product.setdefault("lastModifiedAt", now)
            self.products[name] = product
            self.rate_plans.setdefault(name, {})
            return product

    def add_rate_plan(self, product: str, **fields) -> dict:
        """Insert a rate plan directly (no validation); returns it (``name`` is a UUID)."""
        with self._lock:
            now = _now_ms()
            plan = {"name": str(uuid.uuid4()), "apiproduct": product, "state": "DRAFT", **fields}
            plan.setdefault("createdAt", now)
            plan.setdefault("lastModifiedAt", now)
            self.rate_plans.setdefault(product, {})[plan["name"]] = plan
            return plan

    def add_developer(self, email: str, firstName="Test", lastName="Developer", userName=None, **fields):
        with self._lock:
            now = _now_ms()
            dev = {
                "email": email,
                "firstName": firstName,
                "lastName": lastName,
                "userName": userName or email.split("@")[0],
                "developerId": str(uuid.uuid4()),
                "organizationName": self.org,
                "status": "active",
                "createdAt": now,
                "lastModifiedAt": now,
                **fields,
            }
            self.developers[email] = dev
            self.apps.setdefault(email, {})
            return dev

    def add_app(
        self, email: str, name: str, api_products=(), consumer_key=None, consumer_secret=None, **fields
    ) -> dict:
        """Insert a developer app with one credential (generated unless consumer_key is given)."""
        with self._lock:
            if email not in self.developers:
                self.add_developer(email)
            app = self._new_app(self.developers[email], {"name": name, **fields})
            cred = self._new_credential(list(api_products), "-1", consumer_key, consumer_secret)
            app["credentials"].append(cred)
            self._key_owner[cred["consumerKey"]] = (email, name)
            self.apps[email][name] = app
            return app

    def record_traffic(self, env: str, product: str, app_name: str, day: dt.date, count: int) -> None:
        """Add ``count`` calls on ``day`` (UTC) for (product, app) to the stats of ``env``."""
        if isinstance(day, dt.datetime):
            day = day.astimezone(dt.UTC).date() if day.tzinfo else day.date()
        with self._lock:
            k = (env, product, app_name, day)
            self.traffic[k] = self.traffic.get(k, 0) + int(count)

    def find_key(self, consumer_key: str):
        """(developer email, app name, credential dict) owning ``consumer_key``, or None."""
        with self._lock:
            owner = self._key_owner.get(consumer_key)
            if not owner:
                return None
            app = self.apps[owner[0]][owner[1]]
            for cred in app["credentials"]:
                if cred["consumerKey"] == consumer_key:
                    return owner[0], owner[1], cred
            return None

    # ---------------------------------------------------------------- dispatch
    def _take_fault(self, method: str, path: str):
        with self._lock:
            for fault in self._faults:
                if fault["method"] and fault["method"] != method:
                    continue
                if fault["regex"] and not fault["regex"].search(path):
                    continue
                fault["times"] -= 1
                if fault["times"] <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def dispatch(self, method: str, target: str, headers, raw: bytes):
        """Handle one request; returns (status, json body or None, extra headers)."""
        split = urlsplit(target)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        with self._lock:
            self.requests.append((method, path, query))
        fault = self._take_fault(method, path)
        if fault:
            st = fault["status"]
            err = ApiError(
                st,
                _FAULT_STATUS.get(st, "UNKNOWN"),
                fault["message"] or _FAULT_MESSAGE.get(st, "Injected fault."),
            )
            extra = {"Retry-After": str(fault["retry_after"])} if fault["retry_after"] is not None else {}
            return st, err.body(), extra
        try:
            status, body = self._dispatch(method, path, query, headers, raw)
            return status, body, {}
        except ApiError as e:
            return e.code, e.body(), e.headers
        except Exception as e:
            tb = traceback.format_exc()
            return 500, ApiError(500, "INTERNAL", f"ApigeeFake bug: {e!r}\n{tb}").body(), {}

    def _dispatch(self, method, path, query, headers, raw):
        auth = headers.get("Authorization") or ""
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not token or (self.valid_tokens is not None and token not in self.valid_tokens):
            raise ApiError(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                "cookie or other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project.",
            )
        route, params = None, None
        path_matched = False
        for r in self._routes:
            m = r.regex.match(path)
            if not m:
                continue
            path_matched = True
            if r.http_method == method:
                route, params = r, {k: unquote(v) for k, v in m.groupdict().items()}
                break
        if route is None:
            if path_matched:
                raise ApiError(405, "UNIMPLEMENTED", f"Method {method} is not allowed on {path}.")
            raise _not_found(f"The requested URL {path} was not found on this server.")
        org = params.get("organizationsId")
        if org is not None and org != self.org:
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                f'Permission denied on resource "organizations/{org}" (or it may not exist).',
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "IAM_PERMISSION_DENIED",
                        "domain": "apigee.googleapis.com",
                        "metadata": {"resource": f"organizations/{org}"},
                    }
                ],
            )
        self._check_query(route, query)
        body = None
        ctype = (headers.get("Content-Type") or "").lower()
        if route.request and raw and raw.strip() and "octet-stream" not in ctype:
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise _bad_request(f"Invalid JSON payload received. {e.msg}.") from None
            body = self._schemas.convert_body(parsed, route.request, _body_field(route.request))
        handler = self._handlers.get(route.id)
        if handler is None:
            raise ApiError(501, "UNIMPLEMENTED", f"{route.id} is not implemented by ApigeeFake.")
        ctx = _Ctx(route, params, query, body, headers)
        with self._lock:
            return handler(ctx)

    def _check_query(self, route: _Route, query: dict) -> None:
        for key, value in query.items():
            if key in self._std_params:
                continue
            name = key if key in route.parameters else _camel(key)
            spec = route.parameters.get(name)
            if spec is None or spec.get("location") != "query":
                raise _bad_request(
                    f'Invalid JSON payload received. Unknown name "{key}": Cannot bind query parameter. '
                    f"Field '{key}' could not be found in request message.",
                    key,
                )
            t = spec.get("type")
            if t == "boolean" and value not in ("true", "false"):
                raise _bad_request(
                    f"Invalid value at '{_snake(name)}' (TYPE_BOOL), \"{value}\"", _snake(name)
                )
            if t == "integer" and not re.fullmatch(r"-?\d+", value):
                raise _bad_request(
                    f"Invalid value at '{_snake(name)}' (TYPE_INT32), \"{value}\"", _snake(name)
                )

    def _handler_table(self) -> dict:
        p = "apigee.organizations."
        return {
            p + "get": self._org_get,
            p + "environments.get": self._env_get,
            p + "apis.list": self._apis_list,
            p + "apis.get": self._apis_get,
            p + "apiproducts.create": self._product_create,
            p + "apiproducts.list": self._product_list,
            p + "apiproducts.get": self._product_get,
            p + "apiproducts.update": self._product_update,
            p + "apiproducts.delete": self._product_delete,
            p + "apiproducts.attributes": self._attrs_replace("product"),
            p + "apiproducts.attributes.list": self._attrs_list("product"),
            p + "apiproducts.attributes.get": self._attr_get("product"),
            p + "apiproducts.attributes.delete": self._attr_delete("product"),
            p + "apiproducts.attributes.updateApiProductAttribute": self._attr_update("product"),
            p + "apiproducts.rateplans.create": self._plan_create,
            p + "apiproducts.rateplans.list": self._plan_list,
            p + "apiproducts.rateplans.get": self._plan_get,
            p + "apiproducts.rateplans.update": self._plan_update,
            p + "apiproducts.rateplans.delete": self._plan_delete,
            p + "developers.create": self._dev_create,
            p + "developers.list": self._dev_list,
            p + "developers.get": self._dev_get,
            p + "developers.update": self._dev_update,
            p + "developers.delete": self._dev_delete,
            p + "developers.setDeveloperStatus": self._dev_status,
            p + "developers.attributes": self._attrs_replace("developer"),
            p + "developers.attributes.list": self._attrs_list("developer"),
            p + "developers.attributes.get": self._attr_get("developer"),
            p + "developers.attributes.delete": self._attr_delete("developer"),
            p + "developers.attributes.updateDeveloperAttribute": self._attr_update("developer"),
            p + "developers.apps.create": self._app_create,
            p + "developers.apps.list": self._app_list,
            p + "developers.apps.get": self._app_get,
            p + "developers.apps.update": self._app_update,
            p + "developers.apps.delete": self._app_delete,
            p + "developers.apps.generateKeyPairOrUpdateDeveloperAppStatus": self._app_action,
            p + "developers.apps.attributes": self._attrs_replace("app"),
            p + "developers.apps.attributes.list": self._attrs_list("app"),
            p + "developers.apps.attributes.get": self._attr_get("app"),
            p + "developers.apps.attributes.delete": self._attr_delete("app"),
            p + "developers.apps.attributes.updateDeveloperAppAttribute": self._attr_update("app"),
            p + "developers.apps.keys.create": self._key_create,
            p + "developers.apps.keys.create.create": self._key_create,
            p + "developers.apps.keys.get": self._key_get,
            p + "developers.apps.keys.delete": self._key_delete,
            p + "developers.apps.keys.updateDeveloperAppKey": self._key_update,
            p + "developers.apps.keys.replaceDeveloperAppKey": self._key_replace,
            p + "developers.apps.keys.apiproducts.delete": self._key_product_delete,
            p + "developers.apps.keys.apiproducts.updateDeveloperAppKeyApiProduct": self._key_product_action,
            p + "environments.stats.get": self._stats,
        }

    # ---------------------------------------------------------------- organization
    def _org_get(self, ctx):
        org = {
            "name": self.org,
            "projectId": self.org,
            "runtimeType": "CLOUD",
            "billingType": "PAYG",
            "subscriptionType": "PAID",
            "state": "ACTIVE",
            "analyticsRegion": "us-central1",
            "environments": list(self.environments),
            "createdAt": self._created_at,
            "lastModifiedAt": self._created_at,
        }
        if self.monetization:
            org["addonsConfig"] = {"monetizationConfig": {"enabled": True}}
        return 200, _prune(org)

    def _env_get(self, ctx):
        env = ctx.params["environmentsId"]
        if env not in self.environments:
            raise _not_found(f'environment "{env}" not found in organization {self.org}')
        return 200, {"name": env, "state": "ACTIVE", "createdAt": self._created_at}

    def _apis_list(self, ctx):
        return 200, _prune({"proxies": [{"name": n} for n in sorted(self.proxies)]})

    def _apis_get(self, ctx):
        name = ctx.params["apisId"]
        if name not in self.proxies:
            raise _not_found(f'API proxy "{name}" not found in organization {self.org}')
        return 200, {"name": name, "revision": ["1"], "latestRevisionId": "1"}

    # ---------------------------------------------------------------- list helpers
    @staticmethod
    def _count(ctx, default: int, limit: int = 1000) -> int:
        raw = ctx.q("count")
        if raw in (None, ""):
            return default
        if not re.fullmatch(r"\d+", raw):
            raise _bad_request(f"Invalid value at 'count' (TYPE_INT64), \"{raw}\"", "count")
        n = int(raw)
        if n < 1 or n > limit:
            # ASSUMED: Apigee documents "the limit is 1000"; the fake refuses larger pages.
            raise _bad_request(f"count must be between 1 and {limit}, got {n}", "count")
        return n

    # ---------------------------------------------------------------- API products
    _PRODUCT_NAME = re.compile(r"[A-Za-z0-9._\-$ %]+")
    _TIME_UNITS = ("minute", "hour", "day", "month")

    def _product(self, name: str) -> dict:
        product = self.products.get(name)
        if product is None:
            raise _not_found(f"API product {name} not found in organization {self.org}")
        return product

    def _check_attributes(self, attrs, what: str) -> None:
        if len(attrs or []) > MAX_ATTRIBUTES:
            raise _bad_request(
                f"{what} can have at most {MAX_ATTRIBUTES} custom attributes, got {len(attrs)}"
            )
        for a in attrs or []:
            if not a.get("name"):
                raise _bad_request(f"{what} attribute name is required")

    def _check_product(self, body: dict) -> None:
        for env in body.get("environments", []):
            if env not in self.environments:
                # ASSUMED: unknown environments are refused; unknown proxies are accepted.
                raise _bad_request(f'Environment "{env}" does not exist in organization {self.org}')
        if "quota" in body and not re.fullmatch(r"\d+", body["quota"]):
            raise _bad_request(f"Invalid quota {body['quota']!r}: must be a non-negative integer", "quota")
        if "quotaInterval" in body and not re.fullmatch(r"\d+", body["quotaInterval"]):
            raise _bad_request(f"Invalid quotaInterval {body['quotaInterval']!r}", "quotaInterval")
        if "quotaTimeUnit" in body and body["quotaTimeUnit"] not in self._TIME_UNITS:
            raise _bad_request(
                f"Invalid quotaTimeUnit {body['quotaTimeUnit']!r}: valid values are minute, hour, day, month",
                "quotaTimeUnit",
            )
        if "approvalType" in body and body["approvalType"] not in ("auto", "manual"):
            raise _bad_request(f"Invalid approvalType {body['approvalType']!r}", "approvalType")
        self._check_attributes(body.get("attributes"), "API product")

    def _product_create(self, ctx):
        body = ctx.body or {}
        name = body.get("name", "")
        if not name:
            raise _bad_request("API product name is required", "name")
        if not self._PRODUCT_NAME.fullmatch(name):
            raise _bad_request(
                f"Invalid API product name {name!r}: allowed characters are A-Z0-9._-$ %", "name"
            )
        if name in self.products:
            raise _conflict(f"API product {name} already exists in organization {self.org}")
        self._check_product(body)
        now = _now_ms()
        product = {**body, "createdAt": now, "lastModifiedAt": now}
        self.products[name] = product
        self.rate_plans.setdefault(name, {})
        return 200, _prune(product)

    def _product_list(self, ctx):
        count = self._count(ctx, 1000)
        names = sorted(self.products)
        attr_name, attr_value = ctx.q("attributename"), ctx.q("attributevalue")
        if attr_name:
            names = [
                n
                for n in names
                if any(
                    a.get("name") == attr_name and (attr_value is None or a.get("value") == attr_value)
                    for a in self.products[n].get("attributes", [])
                )
            ]
        start = ctx.q("startKey")
        if start:
            names = [n for n in names if n >= start]  # inclusive: the page starts AT startKey
        page = names[:count]
        if ctx.qbool("expand"):
            items = [copy.deepcopy(self.products[n]) for n in page]
        else:
            items = [{"name": n} for n in page]
        return 200, _prune({"apiProduct": items})

    def _product_get(self, ctx):
        return 200, _prune(copy.deepcopy(self._product(ctx.params["apiproductsId"])))

    def _product_update(self, ctx):
        name = ctx.params["apiproductsId"]
        old = self._product(name)
        body = dict(ctx.body or {})
        body["name"] = name  # the internal name cannot be changed
        self._check_product(body)
        product = {**body, "createdAt": old.get("createdAt", _now_ms()), "lastModifiedAt": _now_ms()}
        self.products[name] = product
        return 200, _prune(copy.deepcopy(product))

    def _product_delete(self, ctx):
        name = ctx.params["apiproductsId"]
        product = self._product(name)
        del self.products[name]
        self.rate_plans.pop(name, None)
        return 200, _prune(product)

    # ---------------------------------------------------------------- attributes (generic)
    def _entity(self, kind: str, ctx) -> dict:
        if kind == "product":
            return self._product(ctx.params["apiproductsId"])
        dev = self._developer(ctx.params["developersId"])
        if kind == "developer":
            return dev
        return self._app(dev, ctx.params["appsId"])

    def _attrs_replace(self, kind: str):
        def handler(ctx):
            entity = self._entity(kind, ctx)
            attrs = (ctx.body or {}).get("attribute", [])
            self._check_attributes(attrs, kind)
            entity["attributes"] = copy.deepcopy(attrs)
            entity["lastModifiedAt"] = _now_ms()
            return 200, _prune({"attribute": attrs})

        return handler

    def _attrs_list(self, kind: str):
        def handler(ctx):
            return 200, _prune({"attribute": copy.deepcopy(self._entity(kind, ctx).get("attributes", []))})

        return handler

    @staticmethod
    def _find_attr(entity: dict, name: str) -> dict:
        for a in entity.get("attributes", []):
            if a.get("name") == name:
                return a
        raise _not_found(f"Attribute {name} not found")

    def _attr_get(self, kind: str):
        def handler(ctx):
            return 200, _prune(dict(self._find_attr(self._entity(kind, ctx), ctx.params["attributesId"])))

        return handler

    def _attr_delete(self, kind: str):
        def handler(ctx):
            entity = self._entity(kind, ctx)
            attr = self._find_attr(entity, ctx.params["attributesId"])
            entity["attributes"].remove(attr)
            return 200, _prune(dict(attr))

        return handler

    def _attr_update(self, kind: str):
        def handler(ctx):
            entity = self._entity(kind, ctx)
            name = ctx.params["attributesId"]
            value = (ctx.body or {}).get("value", "")
            for a in entity.setdefault("attributes", []):
                if a.get("name") == name:
                    a["value"] = value
                    break
            else:
                self._check_attributes(entity["attributes"] + [{"name": name}], kind)
                entity["attributes"].append({"name": name, "value": value})
            entity["lastModifiedAt"] = _now_ms()
            return 200, _prune({"name": name, "value": value})

        return handler

    # ---------------------------------------------------------------- rate plans
    def _require_monetization(self) -> None:
        if not self.monetization:
            # ASSUMED: Apigee does not document this error; 400 FAILED_PRECONDITION.
            raise _precondition(f"Monetization is not enabled for organization {self.org}.")

    def _plan_product(self, ctx) -> str:
        self._require_monetization()
        name = ctx.params["apiproductsId"]
        self._product(name)
        return name

    def _plan(self, product: str, plan_id: str) -> dict:
        plan = self.rate_plans.get(product, {}).get(plan_id)
        if plan is None:
            raise _not_found(f"Rate plan {plan_id} not found for API product {product}")
        return plan

    @staticmethod
    def _check_money(money: dict, path: str, currency: str | None) -> None:
        units = int(money.get("units", "0"))
        nanos = int(money.get("nanos", 0))
        if not -999_999_999 <= nanos <= 999_999_999:
            raise _bad_request(f"{path}.nanos must be between -999,999,999 and +999,999,999", path)
        if (units > 0 and nanos < 0) or (units < 0 and nanos > 0):
            raise _bad_request(f"{path}: units and nanos must have the same sign", path)
        if units < 0 or nanos < 0:
            raise _bad_request(f"{path}: fees cannot be negative", path)
        cc = money.get("currencyCode")
        if cc and not re.fullmatch(r"[A-Z]{3}", cc):
            raise _bad_request(f"{path}.currencyCode {cc!r} is not an ISO 4217 code", path)
        if cc and currency and cc != currency:
            raise _bad_request(
                f"{path}.currencyCode {cc} does not match the rate plan currency {currency}", path
            )

    def _check_plan(self, plan: dict) -> None:
        currency = plan.get("currencyCode")
        if currency and not re.fullmatch(r"[A-Z]{3}", currency):
            raise _bad_request(f"currencyCode {currency!r} is not an ISO 4217 code", "currencyCode")
        for field in ("setupFee", "fixedRecurringFee"):
            if field in plan:
                self._check_money(plan[field], field, currency)
        if plan.get("fixedFeeFrequency", 0) < 0:
            raise _bad_request("fixedFeeFrequency cannot be negative", "fixedFeeFrequency")
        ctype = plan.get("consumptionPricingType")
        rates = plan.get("consumptionPricingRates", [])
        if rates and not ctype:
            raise _bad_request("consumptionPricingType is required with consumptionPricingRates")
        if ctype and not rates:
            raise _bad_request(f"consumptionPricingRates are required for consumptionPricingType {ctype}")
        if ctype == "FIXED_PER_UNIT" and len(rates) != 1:
            raise _bad_request("FIXED_PER_UNIT pricing takes exactly one consumptionPricingRates entry")
        for i, rate in enumerate(rates):
            if "fee" in rate:
                self._check_money(rate["fee"], f"consumptionPricingRates[{i}].fee", currency)
            if ctype in ("BANDED", "TIERED", "STAIRSTEP"):
                start, end = int(rate.get("start", "0")), int(rate.get("end", "0"))
                prev_end = int(rates[i - 1].get("end", "0")) if i else 0
                if start != prev_end:
                    raise _bad_request(
                        f"consumptionPricingRates[{i}].start ({start}) must equal the previous range's "
                        f"end ({prev_end})"
                    )
                last = i == len(rates) - 1
                if not last and end <= start:
                    raise _bad_request(f"consumptionPricingRates[{i}].end must be greater than its start")
                if last and end and end <= start:
                    raise _bad_request(
                        f"consumptionPricingRates[{i}].end must be 0 or greater than its start"
                    )
        start_t, end_t = int(plan.get("startTime", "0")), int(plan.get("endTime", "0"))
        if start_t < 0 or end_t < 0:
            raise _bad_request("startTime and endTime must not be negative")
        if end_t and end_t <= start_t:
            raise _bad_request("endTime must be after startTime", "endTime")
        if plan.get("state") == "PUBLISHED" and not start_t:
            # ASSUMED: a published plan needs an activation time.
            raise _bad_request("startTime is required to publish a rate plan", "startTime")

    @staticmethod
    def _window(plan: dict) -> tuple[int, float]:
        end = int(plan.get("endTime", "0"))
        return int(plan.get("startTime", "0")), (end if end else math.inf)

    def _check_single_active(self, product: str, plan: dict) -> None:
        if plan.get("state") != "PUBLISHED":
            return
        s1, e1 = self._window(plan)
        for other in self.rate_plans.get(product, {}).values():
            if other["name"] == plan.get("name") or other.get("state") != "PUBLISHED":
                continue
            s2, e2 = self._window(other)
            if s1 < e2 and s2 < e1:
                raise _precondition(
                    f"Rate plan active period [{s1}, {e1 if e1 != math.inf else 'never'}) overlaps published "
                    f"rate plan {other['name']} of API product {product}: only one rate plan can be active "
                    "at any point of time."
                )

    def _plan_create(self, ctx):
        product = self._plan_product(ctx)
        if product == "-":
            raise _bad_request("A rate plan must be created under a specific API product")
        plan = dict(ctx.body or {})
        now = _now_ms()
        plan.update(name=str(uuid.uuid4()), apiproduct=product, createdAt=now, lastModifiedAt=now)
        plan.setdefault("state", "DRAFT")  # ASSUMED default
        self._check_plan(plan)
        self._check_single_active(product, plan)
        self.rate_plans.setdefault(product, {})[plan["name"]] = plan
        return 200, _prune(copy.deepcopy(plan))

    def _plan_list(self, ctx):
        self._require_monetization()
        product = ctx.params["apiproductsId"]
        if product == "-":
            plans = [p for ps in self.rate_plans.values() for p in ps.values()]
        else:
            self._product(product)
            plans = list(self.rate_plans.get(product, {}).values())
        state = ctx.q("state")
        if state:
            plans = [p for p in plans if p.get("state") == state]
        count = self._count(ctx, 100)
        start = ctx.q("startKey")
        if start:
            idx = next((i for i, p in enumerate(plans) if p["name"] == start), None)
            plans = plans[idx:] if idx is not None else []
        page, rest = plans[:count], plans[count:]
        items = (
            [copy.deepcopy(p) for p in page] if ctx.qbool("expand") else [{"name": p["name"]} for p in page]
        )
        out = {"ratePlans": items}
        if rest:
            out["nextStartKey"] = rest[0]["name"]
        return 200, _prune(out)

    def _plan_get(self, ctx):
        product = self._plan_product(ctx)
        return 200, _prune(copy.deepcopy(self._plan(product, ctx.params["rateplansId"])))

    def _plan_update(self, ctx):
        product = self._plan_product(ctx)
        old = self._plan(product, ctx.params["rateplansId"])
        plan = dict(ctx.body or {})
        plan.update(
            name=old["name"],
            apiproduct=product,
            createdAt=old.get("createdAt", _now_ms()),
            lastModifiedAt=_now_ms(),
        )
        plan.setdefault("state", "DRAFT")
        self._check_plan(plan)
        self._check_single_active(product, plan)
        self.rate_plans[product][old["name"]] = plan
        return 200, _prune(copy.deepcopy(plan))

    def _plan_delete(self, ctx):
        product = self._plan_product(ctx)
        plan = self._plan(product, ctx.params["rateplansId"])
        del self.rate_plans[product][plan["name"]]
        return 200, _prune(plan)

    # ---------------------------------------------------------------- developers
    def _developer(self, ident: str) -> dict:
        dev = self.developers.get(ident)
        if dev is None:
            dev = next((d for d in self.developers.values() if d.get("developerId") == ident), None)
        if dev is None:
            raise _not_found(f"Developer {ident} not found in organization {self.org}")
        return dev

    def _check_developer(self, body: dict) -> None:
        for field in ("email", "firstName", "lastName", "userName"):
            if not body.get(field):
                raise _bad_request(f"Developer {field} is required", field)
        email = body["email"]
        if email != email.lower():
            raise _bad_request(f"Developer email {email!r} must be lowercase", "email")
        if not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
            raise _bad_request(f"Invalid developer email {email!r}", "email")
        self._check_attributes(body.get("attributes"), "Developer")

    def _dev_view(self, dev: dict) -> dict:
        out = copy.deepcopy(dev)
        out["apps"] = sorted(self.apps.get(dev["email"], {}))
        return _prune(out)

    def _dev_create(self, ctx):
        body = dict(ctx.body or {})
        self._check_developer(body)
        if body["email"] in self.developers:
            raise _conflict(f"Developer with email {body['email']} already exists in organization {self.org}")
        now = _now_ms()
        body.pop("apps", None)
        dev = {
            **body,
            "developerId": str(uuid.uuid4()),
            "organizationName": self.org,
            "status": "active",
            "createdAt": now,
            "lastModifiedAt": now,
        }
        self.developers[dev["email"]] = dev
        self.apps.setdefault(dev["email"], {})
        return 200, self._dev_view(dev)

    def _dev_list(self, ctx):
        expand = ctx.qbool("expand")
        if expand and (ctx.q("count") is not None or ctx.q("startKey") is not None):
            # Documented: "expand ... is not valid if you use the count or startKey query parameters".
            raise _bad_request("expand is not valid with the count or startKey query parameters", "expand")
        devs = list(self.developers.values())  # insertion order (Apigee does not sort by email)
        ids = ctx.q("ids")
        if ids:
            wanted = {i.strip() for i in ids.split(",") if i.strip()}
            devs = [d for d in devs if d["email"] in wanted or d["developerId"] in wanted]
        app = ctx.q("app")
        if app:
            return 200, _prune(
                {
                    "developer": [
                        self._dev_view(d) if expand else {"email": d["email"]}
                        for d in devs
                        if app in self.apps.get(d["email"], {})
                    ]
                }
            )
        start = ctx.q("startKey")
        if start:
            idx = next((i for i, d in enumerate(devs) if d["email"] == start), None)
            devs = devs[idx:] if idx is not None else []
        devs = devs[: self._count(ctx, 1000)]
        items = [self._dev_view(d) if expand else {"email": d["email"]} for d in devs]
        return 200, _prune({"developer": items})

    def _dev_get(self, ctx):
        return 200, self._dev_view(self._developer(ctx.params["developersId"]))

    def _dev_update(self, ctx):
        dev = self._developer(ctx.params["developersId"])
        body = dict(ctx.body or {})
        body.setdefault("email", dev["email"])
        if body["email"] != dev["email"]:
            raise _bad_request("ApigeeFake does not support changing a developer's email", "email")
        self._check_developer(body)
        body.pop("apps", None)
        keep = {k: dev[k] for k in ("developerId", "organizationName", "status", "createdAt") if k in dev}
        new = {**body, **keep, "lastModifiedAt": _now_ms()}
        self.developers[dev["email"]] = new
        return 200, self._dev_view(new)

    def _dev_delete(self, ctx):
        dev = self._developer(ctx.params["developersId"])
        view = self._dev_view(dev)
        for app in self.apps.pop(dev["email"], {}).values():
            for cred in app["credentials"]:
                self._key_owner.pop(cred["consumerKey"], None)
        del self.developers[dev["email"]]
        return 200, view

    def _dev_status(self, ctx):
        dev = self._developer(ctx.params["developersId"])
        action = ctx.q("action")
        if action not in ("active", "inactive"):
            raise _bad_request(f"Invalid action {action!r}: valid values are active, inactive", "action")
        dev["status"] = action
        dev["lastModifiedAt"] = _now_ms()
        return 204, None

    # ---------------------------------------------------------------- apps and credentials
    def _app(self, dev: dict, name: str) -> dict:
        app = self.apps.get(dev["email"], {}).get(name)
        if app is None:
            raise _not_found(f"App {name} not found for developer {dev['email']}")
        return app

    def _product_refs(self, names) -> list[dict]:
        refs = []
        for n in names:
            if isinstance(n, dict):
                n = n.get("apiproduct", "")
            if not isinstance(n, str) or not n:
                raise _bad_request(f"Invalid API product reference {n!r}", "apiProducts")
            product = self.products.get(n)
            if product is None:
                # ASSUMED status/message for a reference to a missing product.
                raise _bad_request(
                    f"API product {n} does not exist in organization {self.org}", "apiProducts"
                )
            status = "pending" if product.get("approvalType") == "manual" else "approved"
            refs.append({"apiproduct": n, "status": status})
        return refs

    def _new_credential(self, products, expires_in_ms="-1", key=None, secret=None, validate=False) -> dict:
        now = _now_ms()
        refs = (
            self._product_refs(products)
            if validate
            else [{"apiproduct": p, "status": "approved"} for p in products]
        )
        expires = "-1"
        if expires_in_ms not in (None, "", "-1") and int(expires_in_ms) > 0:
            expires = str(int(now) + int(expires_in_ms))
        return {
            "consumerKey": key or _random_key(48),
            "consumerSecret": secret or _random_key(64),
            "apiProducts": refs,
            "attributes": [],
            "expiresAt": expires,
            "issuedAt": now,
            "status": "approved",
        }

    def _new_app(self, dev: dict, body: dict) -> dict:
        now = _now_ms()
        return {
            "name": body["name"],
            "appId": str(uuid.uuid4()),
            "developerId": dev["developerId"],
            "appFamily": "default",
            "status": "approved",
            "attributes": copy.deepcopy(body.get("attributes", [])),
            "callbackUrl": body.get("callbackUrl", ""),
            "scopes": list(body.get("scopes", [])),
            "createdAt": now,
            "lastModifiedAt": now,
            "credentials": [],
        }

    @staticmethod
    def _key_view(cred: dict) -> dict:
        return _prune(copy.deepcopy(cred))

    def _app_view(self, app: dict, shallow: bool = False) -> dict:
        out = copy.deepcopy(app)
        if shallow:
            out.pop("credentials", None)
        return _prune(out)

    def _app_create(self, ctx):
        dev = self._developer(ctx.params["developersId"])
        body = ctx.body or {}
        name = body.get("name", "")
        if not name:
            raise _bad_request("App name is required", "name")
        if name in self.apps.setdefault(dev["email"], {}):
            raise _conflict(f"App {name} already exists for developer {dev['email']}")
        self._check_attributes(body.get("attributes"), "App")
        products = body.get("apiProducts", [])
        cred = self._new_credential(products, body.get("keyExpiresIn", "-1"), validate=True)
        app = self._new_app(dev, body)
        if body.get("status") in ("approved", "revoked"):
            app["status"] = body["status"]
        app["credentials"].append(cred)
        self.apps[dev["email"]][name] = app
        self._key_owner[cred["consumerKey"]] = (dev["email"], name)
        return 200, self._app_view(app)

    def _app_list(self, ctx):
        dev = self._developer(ctx.params["developersId"])
        expand, shallow = ctx.qbool("expand"), ctx.qbool("shallowExpand")
        if expand and (ctx.q("count") is not None or ctx.q("startKey") is not None):
            raise _bad_request("expand is not valid with the count or startKey query parameters", "expand")
        names = sorted(self.apps.get(dev["email"], {}))
        start = ctx.q("startKey")
        if start:
            names = [n for n in names if n >= start]
        names = names[: self._count(ctx, 1000)]
        apps = [self.apps[dev["email"]][n] for n in names]
        if expand:
            items = [self._app_view(a) for a in apps]
        elif shallow:
            items = [self._app_view(a, shallow=True) for a in apps]
        else:
            items = [{"appId": a["appId"]} for a in apps]
        return 200, _prune({"app": items})

    def _app_get(self, ctx):
        dev = self._developer(ctx.params["developersId"])
        return 200, self._app_view(self._app(dev, ctx.params["appsId"]))

    def _app_update(self, ctx):
        dev = self._developer(ctx.params["developersId"])
        app = self._app(dev, ctx.params["appsId"])
        body = ctx.body or {}
        if body.get("name") and body["name"] != app["name"]:
            raise _bad_request("The app name cannot be changed", "name")
        self._check_attributes(body.get("attributes"), "App")
        existing = {r["apiproduct"] for c in app["credentials"] for r in c["apiProducts"]}
        new_products = [p for p in body.get("apiProducts", []) if p not in existing]
        if new_products:
            # Documented: adding products through UpdateDeveloperApp generates a new key for them.
            cred = self._new_credential(new_products, body.get("keyExpiresIn", "-1"), validate=True)
            app["credentials"].append(cred)
            self._key_owner[cred["consumerKey"]] = (dev["email"], app["name"])
        app["attributes"] = copy.deepcopy(body.get("attributes", []))
        app["callbackUrl"] = body.get("callbackUrl", "")
        if body.get("status") in ("approved", "revoked"):
            app["status"] = body["status"]
        app["lastModifiedAt"] = _now_ms()
        return 200, self._app_view(app)

    def _app_delete(self, ctx):
        dev = self._developer(ctx.params["developersId"])
        app = self._app(dev, ctx.params["appsId"])
        for cred in app["credentials"]:
            self._key_owner.pop(cred["consumerKey"], None)
        del self.apps[dev["email"]][app["name"]]
        return 200, self._app_view(app)

    def _app_action(self, ctx):
        dev = self._developer(ctx.params["developersId"])
        app = self._app(dev, ctx.params["appsId"])
        action = ctx.q("action")
        if action:
            if action not in ("approve", "revoke"):
                raise _bad_request(f"Invalid action {action!r}: valid values are approve, revoke", "action")
            app["status"] = "approved" if action == "approve" else "revoked"
            app["lastModifiedAt"] = _now_ms()
            return 204, None
        body = ctx.body or {}
        cred = self._new_credential(
            body.get("apiProducts", []), body.get("keyExpiresIn", "-1"), validate=True
        )
        app["credentials"].append(cred)
        self._key_owner[cred["consumerKey"]] = (dev["email"], app["name"])
        app["lastModifiedAt"] = _now_ms()
        return 200, self._app_view(app)

    def _credential(self, ctx) -> tuple[dict, dict, dict]:
        dev = self._developer(ctx.params["developersId"])
        app = self._app(dev, ctx.params["appsId"])
        key = ctx.params["keysId"]
        for cred in app["credentials"]:
            if cred["consumerKey"] == key:
                return dev, app, cred
        raise _not_found(f"Key {key} not found for app {app['name']}")

    _KEY_RE = re.compile(r"[A-Za-z0-9_-]+")

    def _key_create(self, ctx):
        dev = self._developer(ctx.params["developersId"])
        app = self._app(dev, ctx.params["appsId"])
        body = ctx.body or {}
        key, secret = body.get("consumerKey", ""), body.get("consumerSecret", "")
        if not key or not secret:
            raise _bad_request("consumerKey and consumerSecret are required", "consumerKey")
        for field, val in (("consumerKey", key), ("consumerSecret", secret)):
            if not self._KEY_RE.fullmatch(val):
                raise _bad_request(
                    f"{field} may contain only letters, numbers, underscores and hyphens", field
                )
            if len(val) > 2048:
                raise _bad_request(f"{field} must not exceed 2 KB", field)
        if key in self._key_owner:
            raise ApiError(
                409,
                "ABORTED",
                "ConsumerKey already exists",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.PreconditionFailure",
                        "violations": [
                            {
                                "type": "keymanagement.service.ConsumerKeyAlreadyExists",
                                "subject": key,
                                "description": "ConsumerKey already exists",
                            }
                        ],
                    }
                ],
            )
        expires_in = body.get("expiresInSeconds")
        expires_ms = str(int(expires_in) * 1000) if expires_in and int(expires_in) > 0 else "-1"
        # Documented: products in the body are NOT associated, and every key starts approved.
        cred = self._new_credential([], expires_ms, key, secret)
        cred["attributes"] = copy.deepcopy(body.get("attributes", []))
        cred["scopes"] = list(body.get("scopes", []))
        app["credentials"].append(cred)
        app["lastModifiedAt"] = _now_ms()
        self._key_owner[key] = (dev["email"], app["name"])
        return 200, self._key_view(cred)

    def _key_get(self, ctx):
        return 200, self._key_view(self._credential(ctx)[2])

    def _key_delete(self, ctx):
        _, app, cred = self._credential(ctx)
        app["credentials"].remove(cred)
        self._key_owner.pop(cred["consumerKey"], None)
        return 200, self._key_view(cred)

    def _key_update(self, ctx):
        _, app, cred = self._credential(ctx)
        action = ctx.q("action")
        if action:
            if action not in ("approve", "revoke"):
                raise _bad_request(f"Invalid action {action!r}: valid values are approve, revoke", "action")
            cred["status"] = "approved" if action == "approve" else "revoked"
            return 204, None
        body = ctx.body or {}
        have = {r["apiproduct"] for r in cred["apiProducts"]}
        for ref in self._product_refs(body.get("apiProducts", [])):
            if ref["apiproduct"] not in have:
                cred["apiProducts"].append(ref)
                have.add(ref["apiproduct"])
        # Documented: "replaces the existing attributes with those specified in the request".
        self._check_attributes(body.get("attributes"), "Key")
        cred["attributes"] = copy.deepcopy(body.get("attributes", []))
        app["lastModifiedAt"] = _now_ms()
        return 200, self._key_view(cred)

    def _key_replace(self, ctx):
        _, app, cred = self._credential(ctx)
        cred["scopes"] = list((ctx.body or {}).get("scopes", []))
        app["lastModifiedAt"] = _now_ms()
        return 200, self._key_view(cred)

    def _key_product_ref(self, ctx) -> tuple[dict, dict]:
        _, _, cred = self._credential(ctx)
        product = ctx.params["apiproductsId"]
        for ref in cred["apiProducts"]:
            if ref["apiproduct"] == product:
                return cred, ref
        raise _not_found(f"API product {product} is not associated with key {cred['consumerKey']}")

    def _key_product_delete(self, ctx):
        cred, ref = self._key_product_ref(ctx)
        cred["apiProducts"].remove(ref)
        return 200, self._key_view(cred)

    def _key_product_action(self, ctx):
        _, ref = self._key_product_ref(ctx)
        action = ctx.q("action")
        if action not in ("approve", "revoke"):
            raise _bad_request(f"Invalid action {action!r}: valid values are approve, revoke", "action")
        ref["status"] = "approved" if action == "approve" else "revoked"
        return 204, None

    # ---------------------------------------------------------------- stats
    _STATS_DIMS = ("api_product", "developer_app", "environment")
    _TIME_RE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2})")

    def _parse_time(self, text: str) -> dt.datetime:
        m = self._TIME_RE.fullmatch(text.strip())
        if not m:
            raise _bad_request(f"Invalid timeRange value {text!r}: expected MM/DD/YYYY HH:MM", "timeRange")
        mo, d, y, h, mi = map(int, m.groups())
        try:
            return dt.datetime(y, mo, d, h, mi, tzinfo=dt.UTC)
        except ValueError:
            raise _bad_request(f"Invalid timeRange value {text!r}", "timeRange") from None

    def _parse_filter(self, text: str):
        clauses = []
        inner = text.strip()
        if inner.startswith("(") and inner.endswith(")"):
            inner = inner[1:-1]
        for part in re.split(r"\s+and\s+", inner):
            m = re.fullmatch(r"\s*(\w+)\s+(eq|ne|in|notin)\s+(.+?)\s*", part)
            if not m or m.group(1) not in ("api_product", "developer_app"):
                raise _bad_request(
                    f"Invalid filter {text!r} (ApigeeFake supports eq/ne/in/notin on "
                    "api_product and developer_app joined with 'and')",
                    "filter",
                )
            values = [v.strip().strip("'\"") for v in m.group(3).split(",")]
            clauses.append((m.group(1), m.group(2), values))
        return clauses

    def _stats(self, ctx):
        env = ctx.params["environmentsId"]
        if env not in self.environments:
            raise _not_found(f'environment "{env}" not found in organization {self.org}')
        dims = [d for d in ctx.params["statsId"].split(",") if d]
        for d in dims:
            if d not in self._STATS_DIMS:
                raise _bad_request(
                    f"Invalid dimension {d!r} (ApigeeFake supports {', '.join(self._STATS_DIMS)})"
                )
        select = ctx.q("select") or ""
        metrics = [m.strip() for m in select.split(",") if m.strip()]
        if not metrics:
            raise _bad_request("select is required", "select")
        for m in metrics:
            if m != "sum(message_count)":
                raise _bad_request(f"Invalid metric {m!r} (ApigeeFake supports sum(message_count))", "select")
        tr = ctx.q("timeRange")
        if not tr or "~" not in tr:
            raise _bad_request("timeRange is required, as MM/DD/YYYY HH:MM~MM/DD/YYYY HH:MM", "timeRange")
        start_s, end_s = tr.split("~", 1)
        start, end = self._parse_time(start_s), self._parse_time(end_s)
        if end <= start:
            raise _bad_request("Invalid timeRange: the end must be after the start", "timeRange")
        if end - start > dt.timedelta(days=MAX_STATS_DAYS):
            raise _bad_request(
                f"Invalid timeRange: the maximum time range is {MAX_STATS_DAYS} days", "timeRange"
            )
        time_unit = ctx.q("timeUnit")
        if time_unit and time_unit != "day":
            raise _bad_request(f"ApigeeFake supports timeUnit=day only, got {time_unit!r}", "timeUnit")
        clauses = self._parse_filter(ctx.q("filter")) if ctx.q("filter") else []
        start_ms, end_ms = start.timestamp() * 1000, end.timestamp() * 1000
        days_in_range = []  # UTC days whose [00:00, 24:00) intersects [start, end)
        d = start.date()
        while _day_ms(d) < end_ms:
            if _day_ms(d) + 86_400_000 > start_ms:
                days_in_range.append(d)
            d += dt.timedelta(days=1)
        totals: dict[tuple, dict[dt.date, int]] = {}
        for (t_env, product, app, day), n in self.traffic.items():
            if t_env != env or day not in days_in_range or not n:
                continue
            row = {"api_product": product, "developer_app": app, "environment": env}
            if not all(self._match_clause(row, c) for c in clauses):
                continue
            key = tuple(row[dim] for dim in dims)
            bucket = totals.setdefault(key, {})
            bucket[day] = bucket.get(day, 0) + n
        ascending = ctx.qbool("tsAscending")

        def metric_values(per_day: dict[dt.date, int]):
            if not time_unit:
                return [java_double(sum(per_day.values()))]
            days = sorted(days_in_range, reverse=not ascending)
            return [{"timestamp": _day_ms(day), "value": java_double(per_day.get(day, 0))} for day in days]

        env_out: dict = {"name": env}
        if dims:
            rows = []
            for key in sorted(totals):
                entry = {
                    "metrics": [{"name": m, "values": metric_values(totals[key])} for m in metrics],
                    "name": ",".join(key),
                }
                if len(dims) > 1:
                    entry["individualNames"] = list(key)
                rows.append(entry)
            offset, limit = ctx.q("offset") or "0", ctx.q("limit") or "14400"
            if not (offset.isdigit() and limit.isdigit()):
                raise _bad_request("limit and offset must be non-negative integers", "limit")
            offset, limit = int(offset), int(limit)
            rows = rows[offset : offset + limit]
            if rows:
                env_out["dimensions"] = rows
        else:
            merged: dict[dt.date, int] = {}
            for per_day in totals.values():
                for day, n in per_day.items():
                    merged[day] = merged.get(day, 0) + n
            env_out["metrics"] = [{"name": m, "values": metric_values(merged)} for m in metrics]
        meta = {
            "errors": [],
            "notices": [
                "Source:Big Query",
                f"query served by:{uuid.uuid4()}",
                f"Table used: {self.org}.{env}.agg_api",
            ],
        }
        return 200, _prune({"environments": [env_out], "metaData": meta})

    @staticmethod
    def _match_clause(row: dict, clause) -> bool:
        dim, op, values = clause
        v = row[dim]
        if op == "eq":
            return v == values[0]
        if op == "ne":
            return v != values[0]
        if op == "in":
            return v in values
        return v not in values


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ApigeeFake/1.0"

    def setup(self):
        super().setup()
        # headers and body go out in two writes; without NODELAY, Nagle + delayed ACK add ~40 ms per call
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):
        pass

    def _handle(self):
        fake: ApigeeFake = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, body, extra = fake.dispatch(self.command, self.path, self.headers, raw)
        data = b"" if body is None else json.dumps(body, indent=2).encode("utf-8")
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if data:
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the ApigeeFake HTTP server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--org", default="acme")
    parser.add_argument("--env", action="append", dest="envs", help="environment (repeatable)")
    parser.add_argument("--proxy", action="append", dest="proxies", default=[])
    parser.add_argument("--no-monetization", action="store_true")
    args = parser.parse_args(argv)
    fake = ApigeeFake(
        org=args.org,
        environments=args.envs or ["prod"],
        proxies=args.proxies,
        monetization=not args.no_monetization,
        port=args.port,
    )
    fake.start()
    print(fake.endpoint, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
