"""Authentication: the step that says who is calling, as a ``KeyState`` (subscriber, product, limits).

``Authenticator.authenticate(request)`` returns the caller's ``KeyState`` or a ``Denial`` (403, not
metered: a request without a known identity belongs to no subscriber). It runs on the event loop for every
request and must not block or wait: an implementation that needs remote data (a JWKS, token introspection)
keeps it in memory and refreshes it in the background. ``install(keys)`` hands it the key table of a new
state revision (called on the event loop, after the table was built off it).

``ApiKeyAuth`` reads the ``x-api-key`` header and looks the value up in the table. ``GatewayAuth`` (what
``apimon gateway serve`` uses) adds the other schemes of ``products.<id>.auth``: bearer tokens the gateway
issued (oauth2) or an external issuer signed (jwt), and client certificates (mtls); each maps its credential
to a subscriber and returns that subscriber's ``KeyState`` from the same table (``by_subscriber``), so rate
limits, quotas and metering are the same whatever the credential. ``authenticate`` may return an awaitable
when it must wait (an external issuer's JWKS not fetched yet); the pipeline awaits it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from aiohttp import web

from .limits import KeyState


class Denial:
    """Why a request has no identity: status (403, or 401 for a bad bearer token), error code and message
    for the JSON body, response headers (``WWW-Authenticate``), and extra body fields (which check failed)."""

    __slots__ = ("code", "message", "status", "headers", "extra")

    def __init__(self, code: str, message: str, status: int = 403, headers: dict[str, str] | None = None,
                 extra: dict | None = None):
        self.code = code
        self.message = message
        self.status = status
        self.headers = headers
        self.extra = extra


MISSING_KEY = Denial("missing_key", "missing API key: send it in the x-api-key header")
INVALID_KEY = Denial("invalid_key", "the API key is not valid")
EXPIRED_KEY = Denial("expired_key", "the API key has been rotated out and no longer works; use the new key")
MISSING_CREDENTIAL = Denial("missing_key", "missing API key: send it in the x-api-key header, or an access "
                            "token in Authorization: Bearer, or a client certificate (the product's auth)")


class Authenticator(ABC):
    keys: dict[str, KeyState]
    #: rotated-out keys -> when they stop working (POSIX seconds, the gateway's wall clock ``clock``)
    expiring: dict[str, float] = {}
    clock: Callable[[], float] = staticmethod(time.time)

    def install(self, keys: dict[str, KeyState], expiring: dict[str, float] | None = None) -> None:
        """A new key table (api key -> KeyState) and the ends of rotated-out keys: swapped in as a whole."""
        self.keys = keys
        self.expiring = expiring or {}

    def by_subscriber(self) -> dict[str, KeyState]:
        """subscriber id -> KeyState, for schemes whose credential names a subscriber (built on demand)."""
        return {ks.subscriber: ks for ks in self.keys.values()}

    @abstractmethod
    def authenticate(self, request: web.BaseRequest) -> KeyState | Denial: ...


class ApiKeyAuth(Authenticator):
    """The subscriber's key in the ``x-api-key`` header."""

    header = "x-api-key"

    def __init__(self) -> None:
        self.keys = {}

    def authenticate(self, request: web.BaseRequest) -> KeyState | Denial:
        key = request.headers.get("x-api-key")
        if not key:
            return MISSING_KEY
        ks = self.keys.get(key)
        if ks is None:
            return INVALID_KEY
        if self.expiring:  # only during a rotation's overlap
            ends = self.expiring.get(key)
            if ends is not None and ends <= self.clock():
                return EXPIRED_KEY
        return ks


_KEYS_ONLY = frozenset({"api_key"})


def _bearer_denial(problem) -> Denial:
    """RFC 6750 §3: 401 + WWW-Authenticate error="invalid_token", or 403 error="insufficient_scope"."""
    desc = str(problem).replace('"', "'")
    if problem.error == "insufficient_scope":
        header = f'Bearer error="insufficient_scope", error_description="{desc}", scope="{problem.scope}"'
        return Denial("insufficient_scope", str(problem), 403, {"WWW-Authenticate": header},
                      {"check": problem.check})
    header = f'Bearer error="invalid_token", error_description="{desc}"'
    return Denial("invalid_token", str(problem), 401, {"WWW-Authenticate": header}, {"check": problem.check})


class GatewayAuth(ApiKeyAuth):
    """Every scheme of ``products.<id>.auth``: ``x-api-key`` (api_key), ``Authorization: Bearer`` (oauth2
    tokens this gateway issued, jwt tokens of a product's issuer) and a verified client certificate (mtls).
    A credential is accepted only for a subscriber whose product lists its scheme."""

    def __init__(self, issuer: str = "", clock: Callable[[], float] | None = None,
                 fetch: Callable | None = None) -> None:
        super().__init__()
        from . import tokens

        self.issuer = issuer  # the iss of the tokens this gateway issues
        if clock is not None:
            self.clock = clock
        self.subscribers: dict[str, KeyState] = {}
        self.only_keys = True  # no product accepts another scheme: the messages of API keys alone
        self.signing: list = []  # tokens.SigningKey, newest first
        self._own_keys: dict[str, object] = {}  # kid -> SigningKey that still validates
        self.certs: dict[str, str] = {}  # client certificate sha256 -> subscriber
        self.secrets: dict[str, str] = {}  # subscriber -> client secret hash
        self.issuers: dict[str, list] = {}  # external iss -> [JwtIssuer of the products naming it]
        self._jwks: dict[str, tokens.JwksCache] = {}
        self._fetch = fetch
        self._verified: dict[str, object] = {}  # token -> tokens.Verified (bounded; cleared on key changes)
        self._tokens = tokens

    # ------------------------------------------------------------ tables (installed on the loop)
    def install(self, keys: dict[str, KeyState], expiring: dict[str, float] | None = None,
                subscribers: dict[str, KeyState] | None = None) -> None:
        super().install(keys, expiring)
        self.subscribers = subscribers if subscribers is not None else {ks.subscriber: ks for ks in keys.values()}
        issuers: dict[str, list] = {}
        for ks in self.subscribers.values():
            jwt_issuer = ks.slot.limits.jwt
            if jwt_issuer is not None and jwt_issuer not in issuers.get(jwt_issuer.issuer, ()):
                issuers.setdefault(jwt_issuer.issuer, []).append(jwt_issuer)
        self.issuers = issuers
        self.only_keys = all(ks.slot.limits.auth == _KEYS_ONLY for ks in self.subscribers.values())

    def install_credentials(self, secrets: dict[str, str], certs: dict[str, str], signing: list) -> None:
        now = self.clock()
        valid = [k for k in signing if k.expires_at is None or k.expires_at > now]
        if [k.kid for k in valid] != [k.kid for k in self.signing]:
            self._verified.clear()  # a key was removed: tokens it signed must be checked again
        self.secrets = secrets
        self.certs = certs
        self.signing = valid
        self._own_keys = {k.kid: k for k in valid}

    def by_subscriber(self) -> dict[str, KeyState]:
        return self.subscribers

    @property
    def signer(self):
        """The key that signs new tokens: the newest one not retired."""
        return next((k for k in self.signing if k.retired_at is None), None)

    def jwks(self) -> dict:
        return {"keys": [k.public_jwk for k in self.signing]}

    # ------------------------------------------------------------ the hot path
    def authenticate(self, request: web.BaseRequest):
        headers = request.headers
        key = headers.get("x-api-key")
        if key:
            ks = ApiKeyAuth.authenticate(self, request)
            if type(ks) is KeyState and "api_key" not in ks.slot.limits.auth:
                return Denial("scheme_not_accepted", f"the product {ks.product} does not accept API keys; "
                              f"it accepts {', '.join(sorted(ks.slot.limits.auth))}", 401)
            return ks
        authorization = headers.get("Authorization")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return Denial("invalid_request", "Authorization must be `Bearer TOKEN`", 401,
                              {"WWW-Authenticate": 'Bearer error="invalid_request"'})
            return self.bearer(request, token.strip())
        cert = self.peer_certificate(request)
        if cert is not None:
            return self.client_certificate(cert)
        return MISSING_KEY if self.only_keys else MISSING_CREDENTIAL

    # ------------------------------------------------------------ bearer tokens
    def bearer(self, request: web.BaseRequest, token: str):
        t = self._tokens
        now = self.clock()
        seen = self._verified.get(token)
        if seen is not None:
            try:
                return self._admit(seen, request, now)  # type: ignore[arg-type]
            except t.TokenProblem as problem:
                return _bearer_denial(problem)
        try:
            header, payload = t.split_token(token)
        except t.TokenProblem as problem:
            return _bearer_denial(problem)
        iss = payload.get("iss")
        if iss == self.issuer and self.issuer:
            try:
                key = self._own_keys.get(header.get("kid"))
                if key is None:
                    raise t.TokenProblem("kid", "the token was signed by a key this gateway does not have (unknown "
                                         "or removed kid)")
                claims = t.verify_signature(token, header, key.public_jwk["kty"], key.public, key.alg)
                v = t.facts(claims, issuer=iss, subscriber_claim="sub", own=True)
                return self._remember(token, v, request, now)
            except t.TokenProblem as problem:
                return _bearer_denial(problem)
        configured = self.issuers.get(iss) if isinstance(iss, str) else None
        if not configured:
            return _bearer_denial(t.TokenProblem("iss", "the token's issuer is not one this gateway accepts"))
        return self._external(token, header, iss, configured, request, now)

    async def _external(self, token: str, header: dict, iss: str, configured: list, request, now: float):
        t = self._tokens
        try:
            problem: Exception | None = None
            for issuer in configured:
                cache = self._jwks.get(issuer.jwks_uri)
                if cache is None:
                    cache = self._jwks[issuer.jwks_uri] = t.JwksCache(issuer.jwks_uri, self._fetch_json)
                found = await cache.key(header.get("kid"))
                if found is None:
                    problem = t.TokenProblem("kid", "the token's key (kid) is not in the issuer's JWKS")
                    continue
                kty, key = found
                claims = t.verify_signature(token, header, kty, key)
                if issuer.audience not in _audiences(claims):
                    problem = t.TokenProblem("aud", f"the token's audience does not include {issuer.audience}")
                    continue
                v = t.facts(claims, issuer=iss, subscriber_claim=issuer.subscriber_claim, own=False)
                return self._remember(token, v, request, now)
            raise problem or t.TokenProblem("iss", "the token's issuer is not one this gateway accepts")
        except t.TokenProblem as problem:
            return _bearer_denial(problem)

    def _remember(self, token: str, v, request, now: float):
        ks = self._admit(v, request, now)  # raises TokenProblem
        if len(self._verified) >= self._tokens.CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = v
        return ks

    def _admit(self, v, request, now: float) -> KeyState:
        """The checks that depend on time and on the current tables (run on every request)."""
        t = self._tokens
        t.check_time(v, now)
        ks = self.subscribers.get(v.subscriber)
        if ks is None:
            raise t.TokenProblem("subscriber", "the token's subscriber is not known to this gateway")
        lim = ks.slot.limits
        if v.own:
            if "oauth2" not in lim.auth:
                raise t.TokenProblem("scheme", f"the product {ks.product} does not accept oauth2 tokens")
            from .paths import split_target

            route = split_target(request.raw_path)
            api = route[0] if route else ""
            if api not in v.audiences:
                raise t.TokenProblem("aud", f"the token is not for the API {api!r} (its audience: "
                                     f"{', '.join(sorted(v.audiences)) or 'none'})")
        else:
            if "jwt" not in lim.auth or lim.jwt is None or lim.jwt.issuer != v.issuer:
                raise t.TokenProblem("scheme", f"the product {ks.product} does not accept tokens of this issuer")
        if not ks.enabled:
            raise t.TokenProblem("enabled", "the token's subscriber is disabled")
        missing = lim.scopes - v.scopes
        if missing:
            raise t.TokenProblem("scope", f"the token lacks the scope(s) {' '.join(sorted(missing))} this "
                                 "product requires", error="insufficient_scope", scope=" ".join(sorted(lim.scopes)))
        return ks

    async def _fetch_json(self, uri: str):
        if self._fetch is not None:
            return await self._fetch(uri)
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                uri, headers={"Accept": "application/json"}, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ValueError(f"JWKS answered {resp.status}")
            # to its end, however the IdP splits it (one read() is only what has arrived), at most 1 MiB
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > self._tokens.JWKS_MAX_BYTES:
                    raise ValueError("JWKS too large")
                chunks.append(chunk)
            body = b"".join(chunks)
            import json

            return json.loads(body)

    # ------------------------------------------------------------ client certificates (mtls)
    @staticmethod
    def peer_certificate(request: web.BaseRequest) -> bytes | None:
        """The client certificate (DER) the TLS handshake verified, if any."""
        transport = request.transport
        if transport is None:
            return None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        return ssl_object.getpeercert(binary_form=True) or None

    def client_certificate(self, der: bytes):
        import hashlib

        sid = self.certs.get(hashlib.sha256(der).hexdigest())
        ks = self.subscribers.get(sid) if sid else None
        if ks is None:
            return Denial("unknown_certificate", "the client certificate is not any subscriber's "
                          "client_cert_sha256", 403)
        if "mtls" not in ks.slot.limits.auth:
            return Denial("scheme_not_accepted", f"the product {ks.product} does not accept client certificates; "
                          f"it accepts {', '.join(sorted(ks.slot.limits.auth))}", 403)
        return ks


def _audiences(claims: dict) -> set[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return {aud}
    if isinstance(aud, list):
        return {a for a in aud if isinstance(a, str)}
    return set()
