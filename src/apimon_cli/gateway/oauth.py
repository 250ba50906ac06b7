"""The gateway's own OAuth 2.0 endpoints (answered by the gateway, never proxied, never metered):

- ``POST /oauth2/token`` — the client credentials grant (RFC 6749 §4.4). The client (a subscriber id) and
  its secret come in HTTP Basic (§2.3.1, form-urlencoded then base64) or as ``client_id`` /
  ``client_secret`` form fields, not both. Answers a JWT access token (``gateway/tokens.py``) with
  ``token_type: Bearer``, ``expires_in`` (the product's ``oauth2.token_ttl``, default 3600 s) and ``scope``,
  with ``Cache-Control: no-store`` (§5.1). Errors per §5.2: ``invalid_request``, ``invalid_client`` (401,
  with ``WWW-Authenticate: Basic`` when Basic was tried; also for a disabled subscriber),
  ``unauthorized_client`` (the product does not accept oauth2), ``unsupported_grant_type``,
  ``invalid_scope``.
- ``GET /.well-known/jwks.json`` — the public keys that validate the gateway's tokens (RFC 7517).
- ``GET /.well-known/oauth-authorization-server`` — RFC 8414 metadata.

Client secrets are checked against their hash off the event loop (scrypt), a few at a time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web

from ..security.secrets import verify_secret
from . import tokens
from .auth import GatewayAuth
from .limits import KeyState

MAX_FORM = 8 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json",
                        headers={**NO_STORE, **(headers or {})})


def _oauth_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"error": error, "error_description": description}, headers)


def _closing(resp: web.Response) -> web.Response:
    """The body was not read to its end: the connection cannot carry another request."""
    resp.force_close()
    return resp


class OAuthEndpoints:
    def __init__(self, auth: GatewayAuth, clock, *, issuer: callable, concurrency: int = 4,  # type: ignore[valid-type]
                 body_timeout: float = 30.0):
        self.auth = auth
        self.body_timeout = body_timeout  # the whole form must arrive within this (a slow client: 408)
        self.clock = clock
        self.issuer = issuer  # () -> the iss of issued tokens
        self._checks = asyncio.Semaphore(concurrency)
        self.issued = 0

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if path == "/oauth2/token":
            if request.method != "POST":
                return _oauth_error(405, "invalid_request", "use POST", {"Allow": "POST"})
            return await self.token(request)
        if path in ("/.well-known/jwks.json", "/.well-known/oauth-authorization-server"):
            if request.method not in ("GET", "HEAD"):
                return web.Response(status=405, headers={"Allow": "GET, HEAD"})
            if path.endswith("jwks.json"):
                return web.Response(body=json.dumps(self.auth.jwks()).encode(), content_type="application/json",
                                    headers={"Cache-Control": "public, max-age=60"})
            return web.Response(body=json.dumps(self.metadata()).encode(), content_type="application/json",
                                headers={"Cache-Control": "public, max-age=300"})
        return web.Response(status=404, body=json.dumps({"error": "not_found", "message": f"no such endpoint {path}"})
                            .encode(), content_type="application/json")

    def metadata(self) -> dict:
        base = self.issuer()
        scopes = sorted({s for ks in self.auth.subscribers.values() for s in ks.slot.limits.scopes})
        return {
            "issuer": base,
            "token_endpoint": base.rstrip("/") + "/oauth2/token",
            "jwks_uri": base.rstrip("/") + "/.well-known/jwks.json",
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": [],  # no authorization endpoint: client credentials only
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": scopes,
            "token_endpoint_auth_signing_alg_values_supported": sorted({k.alg for k in self.auth.signing}) or ["RS256"],
        }

    async def token(self, request: web.BaseRequest) -> web.StreamResponse:
        ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request", "send the request as application/x-www-form-urlencoded")
        if request.content_length is not None and request.content_length > MAX_FORM:
            return _closing(_oauth_error(413, "invalid_request", f"the request body is larger than {MAX_FORM} bytes"))
        expect = request.headers.get("Expect")
        if expect and expect.lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # the whole body, however it is split into packets: at most MAX_FORM bytes within body_timeout
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > MAX_FORM:
                        return _closing(_oauth_error(413, "invalid_request",
                                                     f"the request body is larger than {MAX_FORM} bytes"))
                    chunks.append(chunk)
        except TimeoutError:
            return _closing(_oauth_error(408, "invalid_request",
                                         f"the request body was not complete within {self.body_timeout:g} s"))
        body = b"".join(chunks)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            return _oauth_error(400, "invalid_request", "the request body is not a valid form")
        form: dict[str, str] = {}
        for name, value in pairs:
            if name in form:  # RFC 6749 §3.2: parameters must not be repeated
                return _oauth_error(400, "invalid_request", f"the parameter {name} is repeated")
            form[name] = value

        basic = False
        client_id = client_secret = None
        authorization = request.headers.get("Authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "basic":
                return _oauth_error(401, "invalid_client", "authenticate the client with HTTP Basic or the "
                                    "client_id and client_secret parameters",
                                    {"WWW-Authenticate": 'Basic realm="apimon"'})
            basic = True
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return self._invalid_client(True, "the Basic credentials are not valid base64")
            user, sep, password = decoded.partition(":")
            if not sep:
                return self._invalid_client(True, "the Basic credentials must be client_id:client_secret")
            client_id, client_secret = unquote_plus(user), unquote_plus(password)
            if "client_secret" in form:
                return _oauth_error(400, "invalid_request", "use one client authentication method, not HTTP Basic "
                                    "and client_secret together")
        else:
            client_id, client_secret = form.get("client_id"), form.get("client_secret")

        grant = form.get("grant_type")
        if not grant:
            return _oauth_error(400, "invalid_request", "grant_type is missing (use client_credentials)")
        if not client_id or client_secret is None:
            return self._invalid_client(basic, "client authentication is missing: send client_id and client_secret")
        if "client_id" in form and basic and form["client_id"] != client_id:
            return _oauth_error(400, "invalid_request", "client_id differs from the Basic credentials")

        ks = await self._client(client_id, client_secret)
        if ks is None:
            return self._invalid_client(basic, "the client is unknown, disabled, or the secret is wrong")
        if grant != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "this gateway issues tokens for the "
                                "client_credentials grant only")
        lim = ks.slot.limits
        if "oauth2" not in lim.auth:
            return _oauth_error(400, "unauthorized_client", f"the product {ks.product} does not accept oauth2 tokens")
        requested = form.get("scope")
        if requested is None or not requested.strip():
            scopes = sorted(lim.scopes)
        else:
            wanted = requested.split()
            unknown = sorted(set(wanted) - lim.scopes)
            if unknown:
                return _oauth_error(400, "invalid_scope", f"the product {ks.product} has no scope "
                                    f"{' '.join(unknown)} (its scopes: {' '.join(sorted(lim.scopes)) or 'none'})")
            scopes = sorted(set(wanted))
        key = self.auth.signer
        if key is None:
            return _oauth_error(503, "temporarily_unavailable", "the gateway has no signing key yet; retry shortly",
                                {"Retry-After": "1"})
        now = self.clock()
        ttl = lim.token_ttl
        token = tokens.issue(key, issuer=self.issuer(), subscriber=ks.subscriber, audience=sorted(lim.apis),
                             scopes=scopes, ttl=ttl, now=now)
        self.issued += 1
        body = {"access_token": token, "token_type": "Bearer", "expires_in": ttl}
        if scopes:
            body["scope"] = " ".join(scopes)
        return _json(200, body)

    async def _client(self, client_id: str, secret: str) -> KeyState | None:
        ks = self.auth.subscribers.get(client_id)
        hashed = self.auth.secrets.get(client_id)
        if ks is None or hashed is None or not ks.enabled:
            # the same work as a real check, so an unknown client id cannot be told by the time it takes
            hashed, ks = _DUMMY_HASH, None
        async with self._checks:
            ok = await asyncio.get_running_loop().run_in_executor(None, verify_secret, secret, hashed)
        return ks if ok and ks is not None else None

    @staticmethod
    def _invalid_client(basic: bool, description: str) -> web.Response:
        return _oauth_error(401, "invalid_client", description,
                            {"WWW-Authenticate": 'Basic realm="apimon"'} if basic else None)


# a hash nothing verifies against (made once, at import): unknown clients cost the same scrypt as known ones
_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
