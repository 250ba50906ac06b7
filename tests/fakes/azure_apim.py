"""A local HTTP fake of the Azure API Management ARM endpoints apimon uses.

Serves, on 127.0.0.1 only, the control-plane paths under
``/subscriptions/{sid}/resourceGroups/{rg}/providers/Microsoft.ApiManagement/service/{service}/``
that ``azure-mgmt-apimanagement`` (api-version 2024-05-01) calls for apis, products, product policies,
product-API links, tags, subscriptions and reports, with the wire behaviour of the real service:
ARM error bodies, quoted ETags that change on every write, If-Match, ``nextLink`` paging, keys only on
PUT/PATCH/listSecrets, scope/ownerId returned as full ARM ids, re-formatted policy XML, 15-minute usage
buckets.

In-process::

    with AzureApimFake(subscription_id="sub-1", resource_group="rg", service="apim") as fake:
        fake.add_api("petstore", "Petstore", "petstore")
        client = fake.client()
        client.product.get("rg", "apim", "gold")

Standalone (prints the base URL on stdout, serves until SIGINT/SIGTERM)::

    python tests/fakes/azure_apim.py --port 0 --seed-apis petstore,orders

In standalone mode the fake can be driven over HTTP (no auth, no api-version) under ``/_fake/``:
``POST /_fake/apis`` ``{"api_id", "display_name", "path"}``, ``POST /_fake/usage``
``{"subscription_name", "product_id", "when" (ISO 8601), "success", "blocked", "failed", "other"}``,
``POST /_fake/inject`` (same keywords as :meth:`AzureApimFake.inject`), ``POST /_fake/latency``
``{"seconds"}``, ``GET``/``DELETE /_fake/requests``.

Not implemented paths answer 501 ``FakeNotImplemented`` so that a gap in the fake is never mistaken
for a real-service error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlencode, urlsplit
from xml.dom import minidom
from xml.parsers.expat import ExpatError

SDK_API_VERSION = "2024-05-01"
SUPPORTED_API_VERSIONS = frozenset(
    {
        "2021-08-01",
        "2022-08-01",
        "2023-03-01-preview",
        "2023-05-01-preview",
        "2023-09-01-preview",
        "2024-05-01",
        "2024-06-01-preview",
    }
)
BUCKET = dt.timedelta(minutes=15)
DEFAULT_PAGE_SIZE = 100

_PROVIDER = "Microsoft.ApiManagement"
_SID_NAME_RE = re.compile(r"^[^*#&+:<>?]{1,256}$")
_DURATION_RE = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_SUB_STATES = ("suspended", "active", "expired", "submitted", "rejected", "cancelled")
_PRODUCT_STATES = ("notPublished", "published")


# --------------------------------------------------------------------------------------------------
# errors


class ApiError(Exception):
    """An ARM error response: ``{"error": {"code", "message", "details"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def _not_found(what: str) -> ApiError:
    return ApiError(404, "ResourceNotFound", f"{what} not found.")


def _validation(message: str, target: str | None = None) -> ApiError:
    if target is None:
        return ApiError(400, "ValidationError", message)
    return ApiError(
        400,
        "ValidationError",
        "One or more fields contain incorrect values:",
        [{"code": "ValidationError", "target": target, "message": message}],
    )


def _fake_gap(what: str) -> ApiError:
    return ApiError(501, "FakeNotImplemented", f"The Azure APIM fake does not implement {what}.")


_STATUS_CODES = {
    400: "BadRequest",
    401: "AuthenticationFailed",
    403: "AuthorizationFailed",
    404: "ResourceNotFound",
    409: "Conflict",
    412: "PreconditionFailed",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


# --------------------------------------------------------------------------------------------------
# small helpers


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _iso(value: dt.datetime) -> str:
    value = _utc(value)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _floor(value: dt.datetime, step: dt.timedelta) -> dt.datetime:
    value = _utc(value)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    secs = int((value - epoch).total_seconds())
    size = int(step.total_seconds())
    return epoch + dt.timedelta(seconds=secs - secs % size)


def _parse_datetime(text: str) -> dt.datetime:
    text = text.strip()
    # .NET style 7-digit fractions: trim to microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    return _utc(dt.datetime.fromisoformat(text))


def parse_duration(text: str) -> dt.timedelta:
    """Parse an ISO 8601 duration (days and smaller, as the service accepts) or raise ValueError."""
    m = _DURATION_RE.match(text or "")
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    return dt.timedelta(
        weeks=parts["w"], days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"]
    )


def _new_etag() -> str:
    return '"' + secrets.token_hex(8) + '"'


def _new_key() -> str:
    return secrets.token_hex(16)


def _etag_matches(if_match: str, etag: str | None) -> bool:
    """RFC 7232 If-Match against a stored quoted ETag; ``*`` matches any existing entity."""
    if etag is None:
        return False
    want = etag.strip().strip('"')
    for part in if_match.split(","):
        part = part.strip()
        if part == "*":
            return True
        part = part.removeprefix("W/")
        if part.strip('"') == want:
            return True
    return False


def _bool_param(value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ApiError(400, "InvalidParameter", f"'{value}' is not a valid boolean value.")


# --------------------------------------------------------------------------------------------------
# policy XML: parse and re-format like the service does


def _xml_escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml_escape_attr(text: str) -> str:
    return (
        _xml_escape_text(text)
        .replace('"', "&quot;")
        .replace("\n", "&#xA;")
        .replace("\r", "&#xD;")
        .replace("\t", "&#x9;")
    )


def _inline(node: minidom.Node) -> str:
    if node.nodeType == node.TEXT_NODE:
        return _xml_escape_text(node.data)
    if node.nodeType == node.CDATA_SECTION_NODE:
        return f"<![CDATA[{node.data}]]>"
    if node.nodeType == node.COMMENT_NODE:
        return f"<!--{node.data}-->"
    if node.nodeType == node.ELEMENT_NODE:
        attrs = "".join(f' {k}="{_xml_escape_attr(v)}"' for k, v in node.attributes.items())
        if not node.childNodes:
            return f"<{node.tagName}{attrs} />"
        inner = "".join(_inline(c) for c in node.childNodes)
        return f"<{node.tagName}{attrs}>{inner}</{node.tagName}>"
    return ""


def _format_node(node: minidom.Node, depth: int, out: list[str]) -> None:
    pad = "\t" * depth
    if node.nodeType == node.COMMENT_NODE:
        out.append(f"{pad}<!--{node.data}-->")
        return
    if node.nodeType != node.ELEMENT_NODE:
        return
    attrs = "".join(f' {k}="{_xml_escape_attr(v)}"' for k, v in node.attributes.items())
    children = [
        c for c in node.childNodes if not (c.nodeType == c.TEXT_NODE and not c.data.strip())
    ]
    if not children:
        out.append(f"{pad}<{node.tagName}{attrs} />")
    elif any(c.nodeType in (c.TEXT_NODE, c.CDATA_SECTION_NODE) for c in children):
        inner = "".join(_inline(c) for c in node.childNodes)
        out.append(f"{pad}<{node.tagName}{attrs}>{inner}</{node.tagName}>")
    else:
        out.append(f"{pad}<{node.tagName}{attrs}>")
        for child in children:
            _format_node(child, depth + 1, out)
        out.append(f"{pad}</{node.tagName}>")


def format_policy_xml(value: str) -> str:
    """Validate a policy document and re-format it the way APIM returns it.

    XML declaration dropped, tab indentation, CRLF line ends, ``<x />`` for empty elements, comments
    kept, quotes in attribute values escaped. Raises ApiError 400 ValidationError when malformed.
    """
    try:
        doc = minidom.parseString(value.strip())
    except (ExpatError, ValueError) as exc:
        raise ApiError(400, "ValidationError", f"The policy XML is not well formed: {exc}") from exc
    root = doc.documentElement
    if root.tagName != "policies":
        raise ApiError(
            400,
            "ValidationError",
            f"'{root.tagName}' is not a valid policy document root element; expected 'policies'.",
        )
    for section in _elements_of(root):
        for el in section.getElementsByTagName("validate-jwt"):
            _check_validate_jwt(el, section.tagName)
    out: list[str] = []
    for node in doc.childNodes:
        _format_node(node, 0, out)
    return "\r\n".join(out)


def _elements_of(node: minidom.Node) -> list[minidom.Element]:
    return [c for c in node.childNodes if c.nodeType == c.ELEMENT_NODE]


def _policy_error(el: minidom.Element, message: str) -> ApiError:
    # ASSUMED wording; the real service names the element and its position the same way
    return ApiError(400, "ValidationError", f"Error in element '{el.tagName}': {message}")


_JWT_CHILDREN = ("openid-config", "issuer-signing-keys", "decryption-keys", "audiences", "issuers", "required-claims")
_JWT_BOOLS = ("require-expiration-time", "require-signed-tokens")


def _check_validate_jwt(el: minidom.Element, section: str) -> None:
    """The validate-jwt policy reference: inbound only; exactly one token source; elements in the order of
    the policy statement; openid-config with an absolute URL; audiences/issuers/required-claims holding
    their own sub-elements."""
    if section != "inbound":
        raise _policy_error(el, f"the policy is not allowed in section '{section}'; it is allowed in inbound only")
    sources = [a for a in ("header-name", "query-parameter-name", "token-value") if el.hasAttribute(a)]
    if len(sources) != 1:
        raise _policy_error(el, "exactly one of 'header-name', 'query-parameter-name' or 'token-value' must be "
                                f"specified (got {', '.join(sources) or 'none'})")
    code = el.getAttribute("failed-validation-httpcode")
    if el.hasAttribute("failed-validation-httpcode") and not (code.isdigit() and 100 <= int(code) <= 599):
        raise _policy_error(el, f"'{code}' is not a valid value of 'failed-validation-httpcode'")
    skew = el.getAttribute("clock-skew")
    if el.hasAttribute("clock-skew") and not skew.isdigit():
        raise _policy_error(el, f"'{skew}' is not a valid value of 'clock-skew' (seconds)")
    for name in _JWT_BOOLS:
        if el.hasAttribute(name) and el.getAttribute(name) not in ("true", "false"):
            raise _policy_error(el, f"'{el.getAttribute(name)}' is not a valid value of '{name}'")
    position = -1
    for child in _elements_of(el):
        if child.tagName not in _JWT_CHILDREN:
            raise _policy_error(child, "the element is not expected in 'validate-jwt'")
        at = _JWT_CHILDREN.index(child.tagName)
        if at < position or (at == position and child.tagName != "openid-config"):
            raise _policy_error(child, "the element is out of order or repeated in 'validate-jwt'")
        position = at
        if child.tagName == "openid-config":
            url = urlsplit(child.getAttribute("url"))
            if url.scheme not in ("http", "https") or not url.netloc:
                raise _policy_error(child, "the 'url' attribute must be an absolute http(s) URL")
        elif child.tagName in ("audiences", "issuers"):
            item = child.tagName[:-1]
            items = _elements_of(child)
            if not items or any(i.tagName != item or not "".join(
                    t.data for t in i.childNodes if t.nodeType == t.TEXT_NODE).strip() for i in items):
                raise _policy_error(child, f"expected one or more non-empty '{item}' elements")
        elif child.tagName == "required-claims":
            for claim in _elements_of(child):
                if claim.tagName != "claim" or not claim.getAttribute("name"):
                    raise _policy_error(claim, "expected 'claim' elements with a 'name' attribute")
                if claim.hasAttribute("match") and claim.getAttribute("match") not in ("all", "any"):
                    raise _policy_error(claim, f"'{claim.getAttribute('match')}' is not a valid value of 'match'")
                if any(v.tagName != "value" for v in _elements_of(claim)):
                    raise _policy_error(claim, "expected 'value' elements")
        elif child.tagName in ("issuer-signing-keys", "decryption-keys"):
            for key in _elements_of(child):
                has_text = any(t.nodeType == t.TEXT_NODE and t.data.strip() for t in key.childNodes)
                if key.tagName != "key" or not (has_text or key.hasAttribute("certificate-id")
                                                or (key.hasAttribute("n") and key.hasAttribute("e"))):
                    raise _policy_error(key, "a key needs its Base64 value, a certificate-id, or n and e")


# --------------------------------------------------------------------------------------------------
# OData $filter subset: and/or/not, eq ne gt ge lt le, startswith/endswith/contains/substringof


_TOKEN_RE = re.compile(
    r"\s*(?:(?P<dt>datetime'(?:[^']|'')*')|(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)"
    r"|(?P<punct>[(),])|(?P<word>[A-Za-z_][\w/.]*))"
)


class FilterError(ValueError):
    pass


def _tokenize(text: str) -> list[tuple[str, Any]]:
    pos, out = 0, []
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"Invalid $filter near position {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group("dt"):
            raw = m.group("dt")[9:-1].replace("''", "'")
            try:
                out.append(("lit", _parse_datetime(raw)))
            except ValueError as exc:
                raise FilterError(f"Invalid datetime literal {raw!r}") from exc
        elif m.group("str") is not None:
            out.append(("lit", m.group("str")[1:-1].replace("''", "'")))
        elif m.group("num"):
            num = m.group("num")
            out.append(("lit", float(num) if "." in num else int(num)))
        elif m.group("punct"):
            out.append((m.group("punct"), None))
        else:
            word = m.group("word")
            low = word.lower()
            if low in ("true", "false"):
                out.append(("lit", low == "true"))
            elif low == "null":
                out.append(("lit", None))
            elif low in ("and", "or", "not", "eq", "ne", "gt", "ge", "lt", "le"):
                out.append((low, None))
            else:
                out.append(("name", word))
    return out


_FUNCS = ("startswith", "endswith", "contains", "substringof")


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None) -> tuple[str, Any]:
        if self.i >= len(self.toks):
            raise FilterError("Unexpected end of $filter")
        tok = self.toks[self.i]
        if kind and tok[0] != kind:
            raise FilterError(f"Expected {kind} in $filter, got {tok[1] or tok[0]!r}")
        self.i += 1
        return tok

    def parse(self) -> tuple:
        node = self.or_expr()
        if self.i != len(self.toks):
            raise FilterError(f"Unexpected token in $filter: {self.toks[self.i][1] or self.toks[self.i][0]!r}")
        return node

    def or_expr(self) -> tuple:
        node = self.and_expr()
        while self.peek() == "or":
            self.take()
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self) -> tuple:
        node = self.unary()
        while self.peek() == "and":
            self.take()
            node = ("and", node, self.unary())
        return node

    def unary(self) -> tuple:
        if self.peek() == "not":
            self.take()
            return ("not", self.unary())
        if self.peek() == "(":
            self.take()
            node = self.or_expr()
            self.take(")")
            return node
        _, name = self.take("name")
        if name.lower() in _FUNCS and self.peek() == "(":
            self.take("(")
            args = [self.operand()]
            while self.peek() == ",":
                self.take(",")
                args.append(self.operand())
            self.take(")")
            return ("func", name.lower(), args)
        op = self.take()[0]
        if op not in ("eq", "ne", "gt", "ge", "lt", "le"):
            raise FilterError(f"Unsupported operator {op!r} in $filter")
        _, value = self.take("lit")
        return ("cmp", op, _field(name), value)

    def operand(self) -> tuple:
        kind, value = self.take()
        if kind == "name":
            return ("field", _field(value))
        if kind == "lit":
            return ("lit", value)
        raise FilterError(f"Unexpected {kind!r} in $filter function call")


def _field(name: str) -> str:
    return name[len("properties/"):] if name.lower().startswith("properties/") else name


def parse_filter(text: str | None) -> tuple | None:
    if text is None or not text.strip():
        return None
    return _Parser(text).parse()


def _fields_of(node: tuple | None) -> list[tuple[str, str, Any]]:
    """(field, op, value) for every comparison in the tree (functions give op=func name)."""
    if node is None:
        return []
    if node[0] in ("and", "or"):
        return _fields_of(node[1]) + _fields_of(node[2])
    if node[0] == "not":
        return _fields_of(node[1])
    if node[0] == "cmp":
        return [(node[2], node[1], node[3])]
    fields = [a[1] for a in node[2] if a[0] == "field"]
    lits = [a[1] for a in node[2] if a[0] == "lit"]
    return [(f, node[1], lits[0] if lits else None) for f in fields]


def _norm(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _id_equal(actual: Any, wanted: Any) -> bool:
    """Ids compare loosely: full ARM id, relative id (/products/x) or bare name all match."""
    if actual is None or wanted is None:
        return actual is wanted
    a, w = str(actual).lower(), str(wanted).lower()
    if a == w:
        return True
    service = r"^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.apimanagement/service/[^/]+"
    a_rel = re.sub(service, "", a)
    w_rel = re.sub(service, "", w)
    if a_rel == w_rel:
        return True
    if "/" not in w:
        return a_rel.rsplit("/", 1)[-1] == w
    return False


def evaluate_filter(
    node: tuple | None, record: dict[str, Any], known: set[str], id_fields: set[str] = frozenset()
) -> bool:
    if node is None:
        return True
    kind = node[0]
    if kind == "and":
        return evaluate_filter(node[1], record, known, id_fields) and evaluate_filter(
            node[2], record, known, id_fields
        )
    if kind == "or":
        return evaluate_filter(node[1], record, known, id_fields) or evaluate_filter(
            node[2], record, known, id_fields
        )
    if kind == "not":
        return not evaluate_filter(node[1], record, known, id_fields)

    def lookup(name: str) -> Any:
        for k in known:
            if k.lower() == name.lower():
                return record.get(k)
        raise FilterError(f"Field '{name}' is not supported in $filter.")

    def canon(name: str) -> str:
        return next(k for k in known if k.lower() == name.lower())

    if kind == "cmp":
        _, op, field, wanted = node
        actual = lookup(field)
        if canon(field) in id_fields and op in ("eq", "ne"):
            same = _id_equal(actual, wanted)
            return same if op == "eq" else not same
        a, w = _norm(actual), _norm(wanted)
        if isinstance(a, dt.datetime) and isinstance(w, str):
            w = _parse_datetime(w)
        if op == "eq":
            return a == w
        if op == "ne":
            return a != w
        if a is None or w is None:
            return False
        try:
            return {"gt": a > w, "ge": a >= w, "lt": a < w, "le": a <= w}[op]
        except TypeError as exc:
            raise FilterError(f"Cannot compare field '{field}' with {wanted!r}") from exc
    _, func, args = node
    vals = [lookup(a[1]) if a[0] == "field" else a[1] for a in args]
    if len(vals) != 2:
        raise FilterError(f"{func} takes two arguments")
    vals = [(v or "").lower() if isinstance(v, str) or v is None else str(v).lower() for v in vals]
    if func == "startswith":
        return vals[0].startswith(vals[1])
    if func == "endswith":
        return vals[0].endswith(vals[1])
    if func == "contains":
        return vals[1] in vals[0]
    return vals[0] in vals[1]  # substringof('needle', field)


# --------------------------------------------------------------------------------------------------
# HTTP plumbing


class _Request:
    def __init__(self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.raw_body = body

    def json(self) -> dict:
        if not self.raw_body:
            raise ApiError(400, "InvalidRequestContent", "The request content was empty.")
        try:
            data = json.loads(self.raw_body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(
                400, "InvalidRequestContent", f"The request content was invalid and could not be deserialized: {exc}"
            ) from exc
        if not isinstance(data, dict):
            raise ApiError(400, "InvalidRequestContent", "The request content must be a JSON object.")
        return data

    def properties(self) -> dict:
        props = self.json().get("properties")
        if props is None:
            return {}
        if not isinstance(props, dict):
            raise ApiError(400, "InvalidRequestContent", "'properties' must be a JSON object.")
        return props

    @property
    def if_match(self) -> str | None:
        return self.headers.get("If-Match")


class _Response:
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AzureApimFake/1.0"
    disable_nagle_algorithm = True
    wbufsize = -1  # buffer headers + body; handle_one_request flushes once per response
    fake: AzureApimFake  # set on the per-instance subclass

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        req = _Request(self.command, split.path, query, self.headers, body)
        resp = self.fake._dispatch(req)
        payload = b""
        headers = {"x-ms-request-id": str(uuid.uuid4()), **resp.headers}
        if resp.body is not None:
            payload = json.dumps(resp.body).encode("utf-8")
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        self.send_response(resp.status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST = do_HEAD = _handle


def _auth_policy_class() -> type:
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class StaticBearerPolicy(SansIOHTTPPolicy):
        """Sets ``Authorization: Bearer <token>`` and nothing else (works over plain http)."""

        def __init__(self, token: str | None) -> None:
            super().__init__()
            self._token = token

        def on_request(self, request: Any) -> None:
            if self._token:
                request.http_request.headers["Authorization"] = f"Bearer {self._token}"

    return StaticBearerPolicy


class StubCredential:
    """A TokenCredential stand-in; never used for auth when the static policy is installed."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("fake-token", int(time.time()) + 3600)

    def close(self) -> None:
        return

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *args: object) -> None:
        return


# --------------------------------------------------------------------------------------------------
# the fake


class _Fault:
    def __init__(self, method: str | None, path_regex: str | None, status: int, times: int | None,
                 retry_after: float | None, code: str | None, message: str | None) -> None:
        self.method = method.upper() if method else None
        self.pattern = re.compile(path_regex) if path_regex else None
        self.status = status
        self.times = times
        self.retry_after = retry_after
        self.code = code or _STATUS_CODES.get(status, "Error")
        self.message = message or f"Injected fault ({status})."

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        return not (self.pattern and not self.pattern.search(path))


Handler = Callable[..., _Response]


class AzureApimFake:
    """In-memory Azure API Management (one service) behind a local ARM-shaped HTTP server."""

    def __init__(
        self,
        subscription_id: str = "sub-1",
        resource_group: str = "rg",
        service: str = "apim",
        *,
        port: int = 0,
        page_size: int = DEFAULT_PAGE_SIZE,
        latency: float = 0.0,
    ) -> None:
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.service = service
        self.port = port
        self.page_size = page_size
        self.latency = latency
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.RLock()
        self._faults: list[_Fault] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # state (raw; read it in tests, change it through the HTTP API or the seeding helpers)
        self.apis: dict[str, dict] = {}
        self.products: dict[str, dict] = {}  # pid -> {"props", "etag"}
        self.policies: dict[str, dict] = {}  # pid -> {"value", "format", "etag"}
        self.product_apis: dict[str, list[str]] = {}  # pid -> [api ids] (insertion order)
        self.tags: dict[str, dict] = {}  # tag id -> {"props", "etag"}
        self.product_tags: dict[str, dict[str, str]] = {}  # pid -> {tag id: link id}
        self.subscriptions: dict[str, dict] = {}  # sid -> {"props", "keys", "etag"}
        self.usage: dict[tuple[str, str, dt.datetime], dict[str, int]] = {}
        self._routes = self._build_routes()

    # ---------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("fake not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def service_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{_PROVIDER}/service/{self.service}"
        )

    def start(self) -> AzureApimFake:
        handler = type("BoundHandler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", self.port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="azure-apim-fake",
                                        daemon=True)
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

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- SDK client

    def client(self, token: str | None = "fake-token", **kwargs: Any) -> Any:
        """A real ``ApiManagementClient`` pointed at this fake (retry_total=0, polling_interval=0)."""
        from azure.mgmt.apimanagement import ApiManagementClient

        return ApiManagementClient(self._credential(), self.subscription_id, **self._client_kwargs(token, kwargs))

    def async_client(self, token: str | None = "fake-token", **kwargs: Any) -> Any:
        """``azure.mgmt.apimanagement.aio.ApiManagementClient`` pointed at this fake (needs aiohttp)."""
        from azure.mgmt.apimanagement.aio import ApiManagementClient

        return ApiManagementClient(self._credential(), self.subscription_id, **self._client_kwargs(token, kwargs))

    def _credential(self) -> StubCredential:
        return StubCredential()

    def _client_kwargs(self, token: str | None, kwargs: dict) -> dict:
        opts: dict[str, Any] = {
            "base_url": self.base_url,
            "authentication_policy": _auth_policy_class()(token),
            "retry_total": 0,
            "polling_interval": 0,
            "use_env_settings": False,
        }
        opts.update(kwargs)
        return opts

    # ---------------------------------------------------------------- seeding and test controls

    def add_api(
        self,
        api_id: str,
        display_name: str | None = None,
        path: str | None = None,
        *,
        service_url: str | None = None,
        protocols: tuple[str, ...] = ("https",),
    ) -> dict:
        with self._lock:
            props = {
                "displayName": display_name or api_id,
                "apiRevision": "1",
                "serviceUrl": service_url or f"https://backend.example.com/{path or api_id}",
                "path": path if path is not None else api_id,
                "protocols": list(protocols),
                "subscriptionKeyParameterNames": {"header": "Ocp-Apim-Subscription-Key", "query": "subscription-key"},
                "isCurrent": True,
                "type": "http",
            }
            self.apis[api_id] = {"props": props, "etag": _new_etag()}
            return props

    def record_calls(
        self,
        subscription_name: str,
        product_id: str,
        when: dt.datetime,
        success: int = 0,
        blocked: int = 0,
        failed: int = 0,
        other: int = 0,
        bandwidth: int = 0,
    ) -> None:
        """Add gateway traffic for a subscription on a product, aggregated in 15-minute buckets."""
        key = (subscription_name, product_id, _floor(when, BUCKET))
        with self._lock:
            row = self.usage.setdefault(key, {"success": 0, "blocked": 0, "failed": 0, "other": 0, "bandwidth": 0})
            row["success"] += success
            row["blocked"] += blocked
            row["failed"] += failed
            row["other"] += other
            row["bandwidth"] += bandwidth

    def inject(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        status: int = 429,
        times: int | None = 1,
        retry_after: float | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests (None = forever) with an ARM error ``status``."""
        with self._lock:
            self._faults.append(_Fault(method, path_regex, status, times, retry_after, code, message))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self, req: _Request) -> _Response:
        if req.path.startswith("/_fake/"):
            try:
                return self._control(req)
            except (KeyError, TypeError, ValueError) as exc:
                return _Response(400, {"error": {"code": "BadRequest", "message": str(exc)}})
        with self._lock:
            self.requests.append((req.method, req.path, dict(req.query)))
        if self.latency:
            time.sleep(self.latency)
        try:
            with self._lock:
                self._check_fault(req)
                self._check_auth(req)
                self._check_api_version(req)
                return self._route(req)
        except ApiError as err:
            return _Response(err.status, err.body(), err.headers)
        except FilterError as err:
            return _Response(400, ApiError(400, "InvalidFilterParameter", str(err)).body())
        except Exception as exc:
            return _Response(500, ApiError(500, "FakeInternalError", f"{type(exc).__name__}: {exc}").body())

    def _check_fault(self, req: _Request) -> None:
        for fault in list(self._faults):
            if fault.matches(req.method, req.path):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                raise ApiError(fault.status, fault.code, fault.message, headers=headers)

    def _check_auth(self, req: _Request) -> None:
        auth = req.headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or not auth[len("Bearer "):].strip():
            reason = "missing" if not auth else "malformed"
            raise ApiError(
                401,
                "AuthenticationFailed",
                f"Authentication failed. The 'Authorization' header is {reason}.",
                headers={
                    "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common", '
                    'error="invalid_token", error_description="The authentication failed because of missing '
                    "'Authorization' header.\""
                },
            )

    def _check_api_version(self, req: _Request) -> None:
        version = req.query.get("api-version")
        if not version:
            raise ApiError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if version not in SUPPORTED_API_VERSIONS:
            raise ApiError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid. The supported versions are "
                f"'{','.join(sorted(SUPPORTED_API_VERSIONS))}'.",
            )

    def _route(self, req: _Request) -> _Response:
        m = re.match(
            r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.ApiManagement/service/([^/]+)(/.*)?$",
            req.path,
            re.IGNORECASE,
        )
        if not m:
            raise ApiError(404, "InvalidResourceType", f"The resource path '{req.path}' is not supported.")
        sid, rg, svc, rest = (unquote(g) if g else g for g in m.groups())
        if sid != self.subscription_id:
            raise ApiError(404, "SubscriptionNotFound", f"The subscription '{sid}' could not be found.")
        if rg.lower() != self.resource_group.lower():
            raise ApiError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        if svc.lower() != self.service.lower():
            raise ApiError(
                404,
                "ResourceNotFound",
                f"The Resource '{_PROVIDER}/service/{svc}' under resource group '{rg}' was not found.",
            )
        segments = [unquote(s) for s in (rest or "/").strip("/").split("/") if s != ""]
        for pattern, methods in self._routes:
            if len(pattern) != len(segments):
                continue
            args = []
            for pat, seg in zip(pattern, segments, strict=False):
                if pat == "*":
                    args.append(seg)
                elif pat.lower() != seg.lower():
                    break
            else:
                handler = methods.get(req.method)
                if handler is None:
                    raise ApiError(405, "MethodNotAllowed",
                                   f"The method '{req.method}' is not allowed on '{req.path}'.")
                return handler(req, *args)
        raise _fake_gap(f"{req.method} {rest}")

    def _build_routes(self) -> list[tuple[list[str], dict[str, Handler]]]:
        r = [
            ("", {"GET": self._get_service}),
            ("apis", {"GET": self._list_apis}),
            ("apis/*", {"GET": self._get_api, "HEAD": self._get_api}),
            ("apis/*/products", {"GET": self._list_api_products}),
            ("products", {"GET": self._list_products}),
            ("productsByTags", {"GET": self._list_products_by_tags}),
            ("products/*", {
                "GET": self._get_product, "HEAD": self._get_product, "PUT": self._put_product,
                "PATCH": self._patch_product, "DELETE": self._delete_product,
            }),
            ("products/*/policies", {"GET": self._list_policies}),
            ("products/*/policies/*", {
                "GET": self._get_policy, "HEAD": self._get_policy, "PUT": self._put_policy,
                "DELETE": self._delete_policy,
            }),
            ("products/*/apis", {"GET": self._list_product_apis}),
            ("products/*/apis/*", {
                "HEAD": self._head_product_api, "PUT": self._put_product_api, "DELETE": self._delete_product_api,
            }),
            ("products/*/tags", {"GET": self._list_product_tags}),
            ("products/*/tags/*", {
                "GET": self._get_product_tag, "HEAD": self._get_product_tag, "PUT": self._put_product_tag,
                "DELETE": self._delete_product_tag,
            }),
            ("products/*/subscriptions", {"GET": self._list_product_subscriptions}),
            ("tags", {"GET": self._list_tags}),
            ("tags/*", {
                "GET": self._get_tag, "HEAD": self._get_tag, "PUT": self._put_tag, "PATCH": self._patch_tag,
                "DELETE": self._delete_tag,
            }),
            ("tags/*/productLinks", {"GET": self._list_tag_product_links}),
            ("tags/*/productLinks/*", {
                "GET": self._get_tag_product_link, "PUT": self._put_tag_product_link,
                "DELETE": self._delete_tag_product_link,
            }),
            ("subscriptions", {"GET": self._list_subscriptions}),
            ("subscriptions/*", {
                "GET": self._get_subscription, "HEAD": self._get_subscription, "PUT": self._put_subscription,
                "PATCH": self._patch_subscription, "DELETE": self._delete_subscription,
            }),
            ("subscriptions/*/listSecrets", {"POST": self._list_secrets}),
            ("subscriptions/*/regeneratePrimaryKey", {"POST": lambda req, sid: self._regenerate(sid, 0)}),
            ("subscriptions/*/regenerateSecondaryKey", {"POST": lambda req, sid: self._regenerate(sid, 1)}),
            ("reports/bySubscription", {"GET": self._report_by_subscription}),
            ("reports/byProduct", {"GET": self._report_by_product}),
            ("reports/byTime", {"GET": self._report_by_time}),
        ]
        return [(p.split("/") if p else [], m) for p, m in r]

    # ---------------------------------------------------------------- shared helpers

    def _arm_id(self, *parts: str) -> str:
        return self.service_id + "/" + "/".join(parts)

    def _page(self, req: _Request, items: list[dict]) -> _Response:
        try:
            top = int(req.query["$top"]) if "$top" in req.query else self.page_size
            skip = int(req.query.get("$skip", "0") or 0)
        except ValueError as exc:
            raise ApiError(400, "InvalidParameter", f"$top/$skip must be integers: {exc}") from exc
        if top < 1 or skip < 0:
            raise ApiError(400, "InvalidParameter", "$top must be >= 1 and $skip must be >= 0.")
        body: dict[str, Any] = {"value": items[skip:skip + top], "count": len(items)}
        if skip + top < len(items):
            params = {k: v for k, v in req.query.items() if k not in ("$top", "$skip")}
            params["$top"] = str(top)
            params["$skip"] = str(skip + top)
            body["nextLink"] = f"{self.base_url}{req.path}?{urlencode(params)}"
        return _Response(200, body)

    @staticmethod
    def _filter(req: _Request, records: list[tuple[dict, dict]], known: set[str],
                id_fields: set[str] = frozenset()) -> list[dict]:
        """records: (filter view, wire item). Returns wire items passing $filter."""
        node = parse_filter(req.query.get("$filter"))
        for field, _, _ in _fields_of(node):
            if field.lower() not in {k.lower() for k in known}:
                raise FilterError(f"Field '{field}' is not supported in $filter.")
        return [item for view, item in records if evaluate_filter(node, view, known, id_fields)]

    def _precondition(self, req: _Request, etag: str | None, *, required: bool) -> None:
        if_match = req.if_match
        if if_match is None:
            if required:
                raise ApiError(400, "ValidationError", "If-Match header is required for this operation.")
            return
        if not _etag_matches(if_match, etag):
            raise ApiError(
                412,
                "PreconditionFailed",
                "Resource was modified since last retrieval. Refresh entity and try again.",
            )

    # ---------------------------------------------------------------- apis

    def _api_wire(self, api_id: str) -> dict:
        return {
            "id": self._arm_id("apis", api_id),
            "type": f"{_PROVIDER}/service/apis",
            "name": api_id,
            "properties": dict(self.apis[api_id]["props"]),
        }

    def _api_view(self, api_id: str) -> dict:
        p = self.apis[api_id]["props"]
        return {"name": api_id, "displayName": p["displayName"], "description": p.get("description"),
                "serviceUrl": p["serviceUrl"], "path": p["path"], "isCurrent": True}

    _API_FIELDS = frozenset({"name", "displayName", "description", "serviceUrl", "path", "isCurrent"})

    def _list_apis(self, req: _Request) -> _Response:
        if req.query.get("tags"):
            raise _fake_gap("apis?tags=")
        records = [(self._api_view(a), self._api_wire(a)) for a in self.apis]
        return self._page(req, self._filter(req, records, self._API_FIELDS))

    def _require_api(self, api_id: str) -> None:
        if api_id not in self.apis:
            raise _not_found("API")

    def _get_service(self, req: _Request) -> _Response:
        """ApiManagementService_Get: the service resource (a Developer SKU of capacity 1)."""
        sid, rg, svc = self.subscription_id, self.resource_group, self.service
        return _Response(200, {
            "id": f"/subscriptions/{sid}/resourceGroups/{rg}/providers/{_PROVIDER}/service/{svc}",
            "name": svc, "type": f"{_PROVIDER}/service", "location": "West Europe", "etag": "AAAAAAAAAAA=",
            "sku": {"name": "Developer", "capacity": 1},
            "properties": {"publisherEmail": "apis@example.com", "publisherName": "Example",
                           "provisioningState": "Succeeded", "gatewayUrl": f"https://{svc}.azure-api.net"},
        })

    def _get_api(self, req: _Request, api_id: str) -> _Response:
        self._require_api(api_id)
        return _Response(200, self._api_wire(api_id), {"ETag": self.apis[api_id]["etag"]})

    def _list_api_products(self, req: _Request, api_id: str) -> _Response:
        self._require_api(api_id)
        pids = [p for p, apis in self.product_apis.items() if api_id in apis]
        records = [(self._product_view(p), self._product_wire(p)) for p in pids]
        return self._page(req, self._filter(req, records, self._PRODUCT_FIELDS))

    # ---------------------------------------------------------------- products

    _PRODUCT_FIELDS = frozenset({"name", "displayName", "description", "terms", "state"})

    def _product_wire(self, pid: str) -> dict:
        return {
            "id": self._arm_id("products", pid),
            "type": f"{_PROVIDER}/service/products",
            "name": pid,
            "properties": dict(self.products[pid]["props"]),
        }

    def _product_view(self, pid: str) -> dict:
        return {"name": pid, **self.products[pid]["props"]}

    def _require_product(self, pid: str) -> dict:
        if pid not in self.products:
            raise _not_found("Product")
        return self.products[pid]

    def _list_products(self, req: _Request) -> _Response:
        pids = list(self.products)
        if req.query.get("tags"):
            wanted = {t.strip().lower() for t in req.query["tags"].split(",") if t.strip()}
            pids = [p for p in pids if wanted & {t.lower() for t in self.product_tags.get(p, {})}]
        records = [(self._product_view(p), self._product_wire(p)) for p in pids]
        return self._page(req, self._filter(req, records, self._PRODUCT_FIELDS))

    def _list_products_by_tags(self, req: _Request) -> _Response:
        if req.query.get("$filter"):
            raise _fake_gap("productsByTags?$filter=")
        include_untagged = _bool_param(req.query.get("includeNotTaggedProducts")) or False
        items = []
        for pid in self.products:
            product = {"id": f"/products/{pid}", "name": self.products[pid]["props"].get("displayName"),
                       **{k: v for k, v in self.products[pid]["props"].items() if k != "displayName"}}
            tags = self.product_tags.get(pid, {})
            for tag_id in tags:
                items.append({"tag": {"id": f"/tags/{tag_id}", "name": self.tags[tag_id]["props"]["displayName"]},
                              "product": product})
            if not tags and include_untagged:
                items.append({"product": product})
        return self._page(req, items)

    def _get_product(self, req: _Request, pid: str) -> _Response:
        entry = self._require_product(pid)
        return _Response(200, self._product_wire(pid), {"ETag": entry["etag"]})

    @staticmethod
    def _check_product_props(props: dict) -> None:
        display = props.get("displayName")
        if not isinstance(display, str) or not display.strip():
            raise _validation("Display name is required and must not be empty.", "displayName")
        if len(display) > 300:
            raise _validation("Display name must not exceed 300 characters.", "displayName")
        if props.get("state") not in _PRODUCT_STATES:
            raise _validation(f"'{props.get('state')}' is not a valid product state.", "state")
        for key in ("subscriptionRequired", "approvalRequired"):
            if key in props and not isinstance(props[key], bool):
                raise _validation(f"'{key}' must be a boolean.", key)
        limit = props.get("subscriptionsLimit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise _validation("'subscriptionsLimit' must be a non-negative integer.", "subscriptionsLimit")
        if props.get("subscriptionRequired") is False and (
            props.get("approvalRequired") or props.get("subscriptionsLimit") is not None
        ):
            raise _validation(
                "Subscription approval and limits can only be set when subscriptionRequired is true.",
                "approvalRequired",
            )

    @staticmethod
    def _product_defaults(props: dict) -> dict:
        out = {k: v for k, v in props.items() if v is not None}
        out.setdefault("subscriptionRequired", True)
        if out["subscriptionRequired"]:
            out.setdefault("approvalRequired", False)
        out.setdefault("state", "notPublished")
        return out

    _PRODUCT_KEYS = ("displayName", "description", "terms", "subscriptionRequired", "approvalRequired",
                     "subscriptionsLimit", "state")

    def _put_product(self, req: _Request, pid: str) -> _Response:
        if not (1 <= len(pid) <= 256):
            raise _validation("Product id must be 1 to 256 characters.", "productId")
        existing = self.products.get(pid)
        self._precondition(req, existing["etag"] if existing else None, required=False)
        props = {k: v for k, v in req.properties().items() if k in self._PRODUCT_KEYS}
        props = self._product_defaults(props)
        self._check_product_props(props)
        self.products[pid] = {"props": props, "etag": _new_etag()}
        return _Response(200 if existing else 201, self._product_wire(pid), {"ETag": self.products[pid]["etag"]})

    def _patch_product(self, req: _Request, pid: str) -> _Response:
        entry = self._require_product(pid)
        self._precondition(req, entry["etag"], required=True)
        changes = {k: v for k, v in req.properties().items() if k in self._PRODUCT_KEYS}
        props = dict(entry["props"])
        for key, value in changes.items():
            if value is None:
                props.pop(key, None)
            else:
                props[key] = value
        if props.get("subscriptionRequired") is False:
            if "approvalRequired" not in changes:
                props.pop("approvalRequired", None)
            if "subscriptionsLimit" not in changes:
                props.pop("subscriptionsLimit", None)
        props = self._product_defaults(props)
        self._check_product_props(props)
        entry["props"] = props
        entry["etag"] = _new_etag()
        return _Response(200, self._product_wire(pid), {"ETag": entry["etag"]})

    def _product_subscription_ids(self, pid: str) -> list[str]:
        scope = self._arm_id("products", pid).lower()
        return [s for s, e in self.subscriptions.items() if e["props"]["scope"].lower() == scope]

    def _delete_product(self, req: _Request, pid: str) -> _Response:
        entry = self.products.get(pid)
        if entry is None:
            if req.if_match is None:
                raise ApiError(400, "ValidationError", "If-Match header is required for this operation.")
            return _Response(204)
        self._precondition(req, entry["etag"], required=True)
        subs = self._product_subscription_ids(pid)
        if subs and not _bool_param(req.query.get("deleteSubscriptions")):
            raise ApiError(
                400,
                "ValidationError",
                "Product cannot be deleted since it has existing subscriptions. Delete subscriptions before "
                "deleting the product or pass in deleteSubscriptions=true as query param",
            )
        for sid in subs:
            del self.subscriptions[sid]
        del self.products[pid]
        self.policies.pop(pid, None)
        self.product_apis.pop(pid, None)
        self.product_tags.pop(pid, None)
        return _Response(200)

    # ---------------------------------------------------------------- product policy

    def _policy_wire(self, pid: str, fmt: str | None = None) -> dict:
        entry = self.policies[pid]
        props: dict[str, Any] = {"value": entry["value"]}
        if fmt and fmt != "xml":
            props["format"] = fmt
        return {
            "id": self._arm_id("products", pid, "policies", "policy"),
            "type": f"{_PROVIDER}/service/products/policies",
            "name": "policy",
            "properties": props,
        }

    @staticmethod
    def _check_policy_id(policy_id: str) -> None:
        if policy_id != "policy":
            raise ApiError(404, "ResourceNotFound", f"Policy '{policy_id}' not found; the only policy id is 'policy'.")

    def _list_policies(self, req: _Request, pid: str) -> _Response:
        self._require_product(pid)
        items = [self._policy_wire(pid)] if pid in self.policies else []
        return _Response(200, {"value": items, "count": len(items)})

    def _get_policy(self, req: _Request, pid: str, policy_id: str) -> _Response:
        self._require_product(pid)
        self._check_policy_id(policy_id)
        if pid not in self.policies:
            raise ApiError(404, "ResourceNotFound", "Policy configuration not found.")
        fmt = req.query.get("format", "xml")
        if fmt not in ("xml", "rawxml"):
            raise _validation(f"'{fmt}' is not a supported export format.", "format")
        return _Response(200, self._policy_wire(pid, fmt), {"ETag": self.policies[pid]["etag"]})

    def _put_policy(self, req: _Request, pid: str, policy_id: str) -> _Response:
        self._require_product(pid)
        self._check_policy_id(policy_id)
        existing = self.policies.get(pid)
        self._precondition(req, existing["etag"] if existing else None, required=False)
        props = req.properties()
        value = props.get("value")
        fmt = props.get("format") or "xml"
        if fmt in ("xml-link", "rawxml-link"):
            raise _fake_gap(f"policy format '{fmt}'")
        if fmt not in ("xml", "rawxml"):
            raise _validation(f"'{fmt}' is not a valid policy content format.", "format")
        if not isinstance(value, str) or not value.strip():
            raise _validation("Policy content is required.", "value")
        formatted = format_policy_xml(value)
        self.policies[pid] = {"value": formatted, "format": fmt, "etag": _new_etag()}
        return _Response(200 if existing else 201, self._policy_wire(pid), {"ETag": self.policies[pid]["etag"]})

    def _delete_policy(self, req: _Request, pid: str, policy_id: str) -> _Response:
        self._require_product(pid)
        self._check_policy_id(policy_id)
        existing = self.policies.get(pid)
        if existing is None:
            if req.if_match is None:
                raise ApiError(400, "ValidationError", "If-Match header is required for this operation.")
            return _Response(204)
        self._precondition(req, existing["etag"], required=True)
        del self.policies[pid]
        return _Response(200)

    # ---------------------------------------------------------------- product <-> api links

    def _list_product_apis(self, req: _Request, pid: str) -> _Response:
        self._require_product(pid)
        ids = [a for a in self.product_apis.get(pid, []) if a in self.apis]
        records = [(self._api_view(a), self._api_wire(a)) for a in ids]
        return self._page(req, self._filter(req, records, self._API_FIELDS))

    def _head_product_api(self, req: _Request, pid: str, api_id: str) -> _Response:
        self._require_product(pid)
        if api_id not in self.product_apis.get(pid, []):
            raise _not_found("API")
        return _Response(204)

    def _put_product_api(self, req: _Request, pid: str, api_id: str) -> _Response:
        self._require_product(pid)
        self._require_api(api_id)
        linked = self.product_apis.setdefault(pid, [])
        if api_id in linked:
            return _Response(200, self._api_wire(api_id))
        linked.append(api_id)
        return _Response(201, self._api_wire(api_id))

    def _delete_product_api(self, req: _Request, pid: str, api_id: str) -> _Response:
        self._require_product(pid)
        linked = self.product_apis.get(pid, [])
        if api_id not in linked:
            return _Response(204)
        linked.remove(api_id)
        return _Response(200)

    # ---------------------------------------------------------------- tags

    _TAG_FIELDS = frozenset({"name", "displayName"})

    def _tag_wire(self, tag_id: str) -> dict:
        return {
            "id": self._arm_id("tags", tag_id),
            "type": f"{_PROVIDER}/service/tags",
            "name": tag_id,
            "properties": dict(self.tags[tag_id]["props"]),
        }

    def _require_tag(self, tag_id: str) -> dict:
        if tag_id not in self.tags:
            raise _not_found("Tag")
        return self.tags[tag_id]

    def _tag_records(self, ids: list[str]) -> list[tuple[dict, dict]]:
        return [({"name": t, **self.tags[t]["props"]}, self._tag_wire(t)) for t in ids]

    def _list_tags(self, req: _Request) -> _Response:
        ids = list(self.tags)
        scope = req.query.get("scope")
        if scope:
            m = re.match(r"^/products/([^/]+)$", scope)
            if not m:
                raise _fake_gap(f"tags?scope={scope}")
            ids = [t for t in ids if t in self.product_tags.get(m.group(1), {})]
        return self._page(req, self._filter(req, self._tag_records(ids), self._TAG_FIELDS))

    def _get_tag(self, req: _Request, tag_id: str) -> _Response:
        entry = self._require_tag(tag_id)
        return _Response(200, self._tag_wire(tag_id), {"ETag": entry["etag"]})

    @staticmethod
    def _check_tag_display(display: Any) -> None:
        if not isinstance(display, str) or not (1 <= len(display) <= 160):
            raise _validation("Tag display name is required (1 to 160 characters).", "displayName")

    def _put_tag(self, req: _Request, tag_id: str) -> _Response:
        existing = self.tags.get(tag_id)
        self._precondition(req, existing["etag"] if existing else None, required=False)
        display = req.properties().get("displayName")
        self._check_tag_display(display)
        self.tags[tag_id] = {"props": {"displayName": display}, "etag": _new_etag()}
        return _Response(200 if existing else 201, self._tag_wire(tag_id), {"ETag": self.tags[tag_id]["etag"]})

    def _patch_tag(self, req: _Request, tag_id: str) -> _Response:
        entry = self._require_tag(tag_id)
        self._precondition(req, entry["etag"], required=True)
        display = req.properties().get("displayName", entry["props"]["displayName"])
        self._check_tag_display(display)
        entry["props"] = {"displayName": display}
        entry["etag"] = _new_etag()
        return _Response(200, self._tag_wire(tag_id), {"ETag": entry["etag"]})

    def _delete_tag(self, req: _Request, tag_id: str) -> _Response:
        entry = self.tags.get(tag_id)
        if entry is None:
            return _Response(204)
        self._precondition(req, entry["etag"], required=True)
        del self.tags[tag_id]
        for links in self.product_tags.values():
            links.pop(tag_id, None)
        return _Response(200)

    def _list_product_tags(self, req: _Request, pid: str) -> _Response:
        self._require_product(pid)
        ids = [t for t in self.product_tags.get(pid, {}) if t in self.tags]
        return self._page(req, self._filter(req, self._tag_records(ids), self._TAG_FIELDS))

    def _get_product_tag(self, req: _Request, pid: str, tag_id: str) -> _Response:
        self._require_product(pid)
        if tag_id not in self.product_tags.get(pid, {}) or tag_id not in self.tags:
            raise _not_found("Tag")
        return _Response(200, self._tag_wire(tag_id), {"ETag": self.tags[tag_id]["etag"]})

    def _put_product_tag(self, req: _Request, pid: str, tag_id: str) -> _Response:
        self._require_product(pid)
        self._require_tag(tag_id)
        links = self.product_tags.setdefault(pid, {})
        if tag_id in links:
            return _Response(200, self._tag_wire(tag_id))
        links[tag_id] = pid
        return _Response(201, self._tag_wire(tag_id))

    def _delete_product_tag(self, req: _Request, pid: str, tag_id: str) -> _Response:
        self._require_product(pid)
        links = self.product_tags.get(pid, {})
        if tag_id not in links:
            return _Response(204)
        del links[tag_id]
        return _Response(200)

    # tag -> product links (the newer TagProductLink API); shares state with products/{pid}/tags

    def _link_wire(self, tag_id: str, link_id: str, pid: str) -> dict:
        return {
            "id": self._arm_id("tags", tag_id, "productLinks", link_id),
            "type": f"{_PROVIDER}/service/tags/productLinks",
            "name": link_id,
            "properties": {"productId": self._arm_id("products", pid)},
        }

    def _tag_links(self, tag_id: str) -> list[tuple[str, str]]:
        return [(link, pid) for pid, links in self.product_tags.items() for t, link in links.items() if t == tag_id]

    def _list_tag_product_links(self, req: _Request, tag_id: str) -> _Response:
        self._require_tag(tag_id)
        records = [({"productId": self._arm_id("products", pid)}, self._link_wire(tag_id, link, pid))
                   for link, pid in self._tag_links(tag_id)]
        return self._page(req, self._filter(req, records, {"productId"}, {"productId"}))

    def _get_tag_product_link(self, req: _Request, tag_id: str, link_id: str) -> _Response:
        self._require_tag(tag_id)
        for link, pid in self._tag_links(tag_id):
            if link == link_id:
                return _Response(200, self._link_wire(tag_id, link, pid))
        raise _not_found("Tag product link")

    def _put_tag_product_link(self, req: _Request, tag_id: str, link_id: str) -> _Response:
        self._require_tag(tag_id)
        product_ref = req.properties().get("productId")
        if not isinstance(product_ref, str):
            raise _validation("productId is required.", "productId")
        pid = self._resolve_ref(product_ref, "products", "productId")
        self._require_product(pid)
        links = self.product_tags.setdefault(pid, {})
        created = tag_id not in links
        links[tag_id] = link_id
        return _Response(201 if created else 200, self._link_wire(tag_id, link_id, pid))

    def _delete_tag_product_link(self, req: _Request, tag_id: str, link_id: str) -> _Response:
        self._require_tag(tag_id)
        for link, pid in self._tag_links(tag_id):
            if link == link_id:
                del self.product_tags[pid][tag_id]
                return _Response(200)
        return _Response(204)

    # ---------------------------------------------------------------- subscriptions

    _SUB_FIELDS = frozenset({"name", "displayName", "stateComment", "ownerId", "scope", "userId", "productId", "state"})
    _SUB_ID_FIELDS = frozenset({"ownerId", "scope", "userId", "productId"})
    _SUB_KEYS = ("ownerId", "scope", "displayName", "state", "allowTracing", "stateComment", "expirationDate")

    def _resolve_ref(self, ref: str, collection: str, target: str) -> str:
        """'/products/x' or a full ARM id of this service -> 'x'."""
        rel = ref
        if ref.lower().startswith("/subscriptions/"):
            prefix = self.service_id.lower() + "/"
            if not ref.lower().startswith(prefix):
                raise _validation(f"'{ref}' does not belong to this API Management service.", target)
            rel = "/" + ref[len(prefix):]
        m = re.match(rf"^/{collection}/([^/]+)$", rel, re.IGNORECASE)
        if not m:
            raise _validation(f"'{ref}' is not a valid {collection[:-1]} identifier.", target)
        return m.group(1)

    def _normalize_scope(self, scope: Any) -> str:
        if not isinstance(scope, str) or not scope:
            raise _validation("Subscription scope is required.", "scope")
        rel = scope
        if scope.lower().startswith("/subscriptions/"):
            prefix = self.service_id.lower()
            if not scope.lower().startswith(prefix):
                raise _validation(f"Scope '{scope}' does not belong to this API Management service.", "scope")
            rel = scope[len(prefix):]
        if rel.lower() == "/apis":
            return self.service_id + "/apis"
        m = re.match(r"^/(products|apis)/([^/]+)$", rel, re.IGNORECASE)
        if not m:
            raise _validation(f"Scope '{scope}' is invalid; expected /products/{{id}}, /apis/{{id}} or /apis.", "scope")
        kind, ident = m.group(1).lower(), m.group(2)
        store = self.products if kind == "products" else self.apis
        if ident not in store:
            raise _validation(f"{'Product' if kind == 'products' else 'API'} '{ident}' not found.", "scope")
        return self._arm_id(kind, ident)

    def _normalize_owner(self, owner: Any) -> str:
        if not isinstance(owner, str):
            raise _validation("ownerId must be a string.", "ownerId")
        return self._arm_id("users", self._resolve_ref(owner, "users", "ownerId"))

    def _sub_wire(self, sid: str, *, keys: bool) -> dict:
        entry = self.subscriptions[sid]
        props = dict(entry["props"])
        if keys:
            props["primaryKey"], props["secondaryKey"] = entry["keys"]
        return {
            "id": self._arm_id("subscriptions", sid),
            "type": f"{_PROVIDER}/service/subscriptions",
            "name": sid,
            "properties": props,
        }

    def _sub_view(self, sid: str) -> dict:
        props = self.subscriptions[sid]["props"]
        scope = props["scope"]
        m = re.search(r"/products/([^/]+)$", scope)
        owner = props.get("ownerId")
        return {
            "name": sid,
            "displayName": props.get("displayName"),
            "stateComment": props.get("stateComment"),
            "ownerId": owner,
            "scope": scope,
            "userId": owner.rsplit("/", 1)[-1] if owner else None,
            "productId": m.group(1) if m else None,
            "state": props.get("state"),
        }

    def _require_sub(self, sid: str) -> dict:
        if sid not in self.subscriptions:
            raise _not_found("Subscription")
        return self.subscriptions[sid]

    def _list_subscriptions(self, req: _Request) -> _Response:
        records = [(self._sub_view(s), self._sub_wire(s, keys=False)) for s in self.subscriptions]
        return self._page(req, self._filter(req, records, self._SUB_FIELDS, self._SUB_ID_FIELDS))

    def _list_product_subscriptions(self, req: _Request, pid: str) -> _Response:
        self._require_product(pid)
        records = [(self._sub_view(s), self._sub_wire(s, keys=False)) for s in self._product_subscription_ids(pid)]
        return self._page(req, self._filter(req, records, self._SUB_FIELDS, self._SUB_ID_FIELDS))

    def _get_subscription(self, req: _Request, sid: str) -> _Response:
        entry = self._require_sub(sid)
        return _Response(200, self._sub_wire(sid, keys=False), {"ETag": entry["etag"]})

    def _apply_sub_props(self, props: dict, changes: dict) -> None:
        for key, value in changes.items():
            if key not in self._SUB_KEYS:
                continue
            if value is None:
                if key in ("scope", "displayName"):
                    continue
                props.pop(key, None)
            elif key == "scope":
                props["scope"] = self._normalize_scope(value)
            elif key == "ownerId":
                props["ownerId"] = self._normalize_owner(value)
            elif key == "state":
                if value not in _SUB_STATES:
                    raise _validation(f"'{value}' is not a valid subscription state.", "state")
                props["state"] = value
                if value == "active" and "startDate" not in props:
                    props["startDate"] = _iso(_floor(dt.datetime.now(dt.UTC), dt.timedelta(days=1)))
                if value == "cancelled":
                    props["endDate"] = _iso(_floor(dt.datetime.now(dt.UTC), dt.timedelta(days=1)))
            elif key == "displayName":
                if not isinstance(value, str) or not (1 <= len(value) <= 100):
                    raise _validation("Subscription display name must be 1 to 100 characters.", "displayName")
                props["displayName"] = value
            else:
                props[key] = value

    @staticmethod
    def _new_keys(changes: dict, old: tuple[str, str] | None) -> tuple[str, str]:
        keys = list(old or (_new_key(), _new_key()))
        for i, name in enumerate(("primaryKey", "secondaryKey")):
            value = changes.get(name)
            if value is not None:
                if not isinstance(value, str) or not (1 <= len(value) <= 256):
                    raise _validation(f"{name} must be 1 to 256 characters.", name)
                keys[i] = value
        return keys[0], keys[1]

    def _put_subscription(self, req: _Request, sid: str) -> _Response:
        if not _SID_NAME_RE.match(sid):
            raise _validation("Subscription id contains invalid characters or is too long.", "sid")
        existing = self.subscriptions.get(sid)
        self._precondition(req, existing["etag"] if existing else None, required=False)
        changes = req.properties()
        if not changes.get("scope"):
            raise _validation("Subscription scope is required.", "scope")
        if not changes.get("displayName"):
            raise _validation("Subscription display name is required.", "displayName")
        if existing:
            props = dict(existing["props"])
        else:
            props = {"createdDate": _iso(dt.datetime.now(dt.UTC)), "state": "submitted"}
        self._apply_sub_props(props, changes)
        keys = self._new_keys(changes, existing["keys"] if existing else None)
        self.subscriptions[sid] = {"props": props, "keys": keys, "etag": _new_etag()}
        return _Response(
            200 if existing else 201, self._sub_wire(sid, keys=True), {"ETag": self.subscriptions[sid]["etag"]}
        )

    def _patch_subscription(self, req: _Request, sid: str) -> _Response:
        entry = self._require_sub(sid)
        self._precondition(req, entry["etag"], required=True)
        changes = req.properties()
        props = dict(entry["props"])
        self._apply_sub_props(props, changes)
        entry["keys"] = self._new_keys(changes, entry["keys"])
        entry["props"] = props
        entry["etag"] = _new_etag()
        return _Response(200, self._sub_wire(sid, keys=True), {"ETag": entry["etag"]})

    def _delete_subscription(self, req: _Request, sid: str) -> _Response:
        entry = self.subscriptions.get(sid)
        if entry is None:
            if req.if_match is None:
                raise ApiError(400, "ValidationError", "If-Match header is required for this operation.")
            return _Response(204)
        self._precondition(req, entry["etag"], required=True)
        del self.subscriptions[sid]
        return _Response(200)

    def _list_secrets(self, req: _Request, sid: str) -> _Response:
        entry = self._require_sub(sid)
        primary, secondary = entry["keys"]
        return _Response(200, {"primaryKey": primary, "secondaryKey": secondary}, {"ETag": entry["etag"]})

    def _regenerate(self, sid: str, index: int) -> _Response:
        entry = self._require_sub(sid)
        keys = list(entry["keys"])
        keys[index] = _new_key()
        entry["keys"] = (keys[0], keys[1])
        entry["etag"] = _new_etag()
        return _Response(204)

    # ---------------------------------------------------------------- reports

    _REPORT_FIELDS = frozenset({"timestamp", "subscriptionId", "productId", "userId", "apiRegion", "apiId",
                                "operationId"})
    _REPORT_ID_FIELDS = frozenset({"subscriptionId", "productId", "userId", "apiId", "operationId"})

    def _report_filter(self, req: _Request) -> tuple[tuple, dt.datetime, dt.datetime]:
        text = req.query.get("$filter")
        if not text:
            raise ApiError(400, "ValidationError", "'$filter' query parameter is required and must specify "
                                                   "timestamp ge and timestamp le.")
        node = parse_filter(text)
        lower = upper = None
        for field, op, value in _fields_of(node):
            if field.lower() not in {f.lower() for f in self._REPORT_FIELDS}:
                raise FilterError(f"Field '{field}' is not supported in report $filter.")
            if field.lower() == "timestamp":
                if op not in ("ge", "le") or not isinstance(value, dt.datetime):
                    raise _validation("timestamp supports only 'ge' and 'le' with datetime'...' values.", "$filter")
                if op == "ge":
                    lower = value
                else:
                    upper = value
            elif op != "eq":
                raise _validation(f"'{field}' supports only the 'eq' operator.", "$filter")
        if lower is None or upper is None:
            raise _validation("$filter must contain 'timestamp ge datetime'...'' and "
                              "'timestamp le datetime'...''.", "$filter")
        return node, lower, upper

    def _sub_meta(self, sub_name: str) -> dict:
        entry = self.subscriptions.get(sub_name)
        if entry is None:
            return {}
        return entry["props"]

    def _usage_rows(self, node: tuple) -> list[tuple[str, str, dt.datetime, dict]]:
        rows = []
        for (sub, pid, when), counts in sorted(self.usage.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
            owner = self._sub_meta(sub).get("ownerId")
            view = {"timestamp": when, "subscriptionId": f"/subscriptions/{sub}", "productId": f"/products/{pid}",
                    "userId": f"/users/{owner.rsplit('/', 1)[-1]}" if owner else None,
                    "apiRegion": None, "apiId": None, "operationId": None}
            if evaluate_filter(node, view, self._REPORT_FIELDS, self._REPORT_ID_FIELDS):
                rows.append((sub, pid, when, counts))
        return rows

    @staticmethod
    def _counts(rows: list[dict]) -> dict:
        s = sum(r["success"] for r in rows)
        b = sum(r["blocked"] for r in rows)
        f = sum(r["failed"] for r in rows)
        o = sum(r["other"] for r in rows)
        return {
            "callCountSuccess": s, "callCountBlocked": b, "callCountFailed": f, "callCountOther": o,
            "callCountTotal": s + b + f + o, "bandwidth": sum(r["bandwidth"] for r in rows),
            "cacheHitCount": 0, "cacheMissCount": 0,
            "apiTimeAvg": 0.0, "apiTimeMin": 0.0, "apiTimeMax": 0.0,
            "serviceTimeAvg": 0.0, "serviceTimeMin": 0.0, "serviceTimeMax": 0.0,
        }

    def _report_by_subscription(self, req: _Request) -> _Response:
        node, lower, _ = self._report_filter(req)
        groups: dict[tuple[str, str], list[dict]] = {}
        for sub, pid, _when, counts in self._usage_rows(node):
            groups.setdefault((sub, pid), []).append(counts)
        # existing subscriptions without traffic still get a (zero) row, as the service does
        for sid in self.subscriptions:
            pid = self._sub_view(sid)["productId"] or ""
            if any(k[0] == sid for k in groups):
                continue
            owner = self._sub_meta(sid).get("ownerId")
            view = {"timestamp": lower, "subscriptionId": f"/subscriptions/{sid}",
                    "productId": f"/products/{pid}" if pid else None,
                    "userId": f"/users/{owner.rsplit('/', 1)[-1]}" if owner else None,
                    "apiRegion": None, "apiId": None, "operationId": None}
            if evaluate_filter(node, view, self._REPORT_FIELDS, self._REPORT_ID_FIELDS):
                groups[(sid, pid)] = []
        items = []
        for (sub, pid), rows in sorted(groups.items()):
            meta = self._sub_meta(sub)
            owner = meta.get("ownerId")
            item = {"name": meta.get("displayName") or ""}
            if owner:
                item["userId"] = f"/users/{owner.rsplit('/', 1)[-1]}"
            if pid:
                item["productId"] = f"/products/{pid}"
            item["subscriptionId"] = f"/subscriptions/{sub}"
            item.update(self._counts(rows))
            items.append(item)
        return self._page(req, items)

    def _report_by_product(self, req: _Request) -> _Response:
        node, _, _ = self._report_filter(req)
        groups: dict[str, list[dict]] = {pid: [] for pid in self.products}
        for _sub, pid, _when, counts in self._usage_rows(node):
            groups.setdefault(pid, []).append(counts)
        items = []
        for pid, rows in sorted(groups.items()):
            name = self.products[pid]["props"]["displayName"] if pid in self.products else ""
            items.append({"name": name, "productId": f"/products/{pid}", **self._counts(rows)})
        return self._page(req, items)

    def _report_by_time(self, req: _Request) -> _Response:
        raw = req.query.get("interval")
        if not raw:
            raise _validation("'interval' query parameter is required.", "interval")
        try:
            interval = parse_duration(raw)
        except ValueError as exc:
            raise _validation(f"Interval '{raw}' is not a valid ISO 8601 duration.", "interval") from exc
        secs = interval.total_seconds()
        if secs <= 0 or secs % BUCKET.total_seconds():
            raise _validation("Interval must be multiple of 15 minutes and may not be zero.", "interval")
        node, _, _ = self._report_filter(req)
        buckets: dict[dt.datetime, list[dict]] = {}
        for _sub, _pid, when, counts in self._usage_rows(node):
            buckets.setdefault(_floor(when, interval), []).append(counts)
        items = []
        for start in sorted(buckets):
            counts = self._counts(buckets[start])
            if counts["callCountTotal"] == 0:
                continue
            items.append({"timestamp": _iso(start), "interval": raw, **counts})
        return self._page(req, items)

    # ---------------------------------------------------------------- /_fake control API (standalone mode)

    def _control(self, req: _Request) -> _Response:
        path = req.path.rstrip("/")
        data = json.loads(req.raw_body or b"{}")
        if path == "/_fake/apis" and req.method == "POST":
            self.add_api(data["api_id"], data.get("display_name"), data.get("path"))
        elif path == "/_fake/usage" and req.method == "POST":
            self.record_calls(
                data["subscription_name"], data["product_id"], _parse_datetime(data["when"]),
                success=int(data.get("success", 0)), blocked=int(data.get("blocked", 0)),
                failed=int(data.get("failed", 0)), other=int(data.get("other", 0)),
                bandwidth=int(data.get("bandwidth", 0)),
            )
        elif path == "/_fake/inject" and req.method == "POST":
            self.inject(**data)
        elif path == "/_fake/latency" and req.method == "POST":
            self.latency = float(data["seconds"])
        elif path == "/_fake/requests" and req.method == "GET":
            with self._lock:
                return _Response(200, {"requests": [list(r) for r in self.requests]})
        elif path == "/_fake/requests" and req.method == "DELETE":
            self.reset_requests()
        else:
            return _Response(404, {"error": {"code": "NotFound", "message": f"no control endpoint {path}"}})
        return _Response(200, {"ok": True})


# --------------------------------------------------------------------------------------------------
# standalone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local fake of the Azure API Management ARM API")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = ephemeral)")
    parser.add_argument("--subscription-id", default="sub-1")
    parser.add_argument("--resource-group", default="rg")
    parser.add_argument("--service", default="apim")
    parser.add_argument("--seed-apis", default="", help="comma-separated API ids to create")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    args = parser.parse_args(argv)

    fake = AzureApimFake(args.subscription_id, args.resource_group, args.service, port=args.port,
                         page_size=args.page_size, latency=args.latency)
    for api_id in filter(None, (a.strip() for a in args.seed_apis.split(","))):
        fake.add_api(api_id, api_id.replace("-", " ").title(), api_id)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    fake.start()
    print(fake.base_url, flush=True)
    try:
        done.wait()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
