"""Access tokens: the gateway's signing keys, the tokens it issues, and bearer-token validation (RFC 6750).

Signing keys live in the local state (``signing_keys``: kid, alg, private key PEM, public JWK, created,
retired, expires). The newest key that is not retired signs; every key that has not expired validates and is
published at ``/.well-known/jwks.json``. ``apimon gateway rotate-signing-key`` retires the current key with
an end one longest token lifetime (plus the leeway) away, so no token it signed outlives it.

Issued tokens are JWT access tokens (RFC 9068: header ``typ: at+jwt``) with ``iss``, ``sub`` and
``client_id`` (the subscriber), ``aud`` (the product's APIs), ``scope``, ``iat``, ``exp`` and ``jti``.

Validation (``BearerValidator``): the signature against the key named by ``kid`` (own keys, or the JWKS of a
product's ``jwt.jwks_uri``, fetched and cached, refreshed on an unknown ``kid`` at most once per
``JWKS_MIN_REFRESH`` seconds), the algorithm from a per-key-type allow-list (never ``none``, never HMAC:
a public key is never used as an HMAC secret), ``exp``/``nbf`` with ``LEEWAY`` seconds against the gateway's
clock, ``iss``, ``aud``, the product's scopes, the subscriber known and enabled on a product that accepts
the scheme. A token that passed is remembered (bounded) until it expires, so a client reusing its token
costs a dictionary lookup; the remembered facts are re-checked against the current key table each time.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LEEWAY = 60  # seconds of clock skew allowed on exp / nbf
JWKS_MIN_REFRESH = 30.0  # seconds between two fetches of one JWKS (unknown kid)
JWKS_MAX_AGE = 3600.0  # a JWKS is fetched again after this long, whatever happens
JWKS_MAX_BYTES = 1 << 20
CACHE_SIZE = 100_000  # tokens remembered after a full check
SIGNING_ALGS = ("RS256", "ES256")
#: algorithms accepted per key type (JWK kty); HMAC and none are never accepted
ALLOWED_ALGS = {"RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
                "EC": ("ES256", "ES384", "ES512"), "OKP": ("EdDSA",)}


class TokenProblem(Exception):
    """Why a bearer token is refused: ``error`` (invalid_token | insufficient_scope), ``check`` (which
    check failed) and a message for the JSON body."""

    def __init__(self, check: str, message: str, error: str = "invalid_token", scope: str = ""):
        super().__init__(message)
        self.check = check
        self.error = error
        self.scope = scope


# ---------------------------------------------------------------- signing keys
@dataclass
class SigningKey:
    kid: str
    alg: str
    private_pem: str = field(repr=False)
    public_jwk: dict
    created_at: float
    retired_at: float | None = None
    expires_at: float | None = None
    _private: Any = field(default=None, repr=False)
    _public: Any = field(default=None, repr=False)

    @property
    def private(self):
        if self._private is None:
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            self._private = load_pem_private_key(self.private_pem.encode(), password=None)
        return self._private

    @property
    def public(self):
        if self._public is None:
            self._public = _jwk_key(self.public_jwk)
        return self._public


def new_signing_key(alg: str = "RS256", *, now: float | None = None) -> SigningKey:
    """A new key pair: RSA 2048 for RS256, P-256 for ES256; kid is its RFC 7638 thumbprint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    elif alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    else:
        raise ValueError(f"signing algorithm must be one of {', '.join(SIGNING_ALGS)}; got {alg!r}")
    kid = thumbprint(jwk)
    jwk.update({"kid": kid, "use": "sig", "alg": alg})
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return SigningKey(kid, alg, pem, jwk, time.time() if now is None else now)


def thumbprint(jwk: dict) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    import base64
    import hashlib

    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _jwk_key(jwk: dict):
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    kty = jwk.get("kty")
    text = json.dumps(jwk)
    if kty == "RSA":
        return RSAAlgorithm.from_jwk(text)
    if kty == "EC":
        return ECAlgorithm.from_jwk(text)
    if kty == "OKP":
        return OKPAlgorithm.from_jwk(text)
    raise ValueError(f"unsupported key type {kty!r}")


def issue(key: SigningKey, *, issuer: str, subscriber: str, audience: list[str], scopes: list[str], ttl: int,
          now: float) -> str:
    import jwt

    claims: dict[str, Any] = {"iss": issuer, "sub": subscriber, "client_id": subscriber,
                              "aud": audience[0] if len(audience) == 1 else audience,
                              "iat": int(now), "exp": int(now) + ttl, "jti": uuid.uuid4().hex}
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"})


# ---------------------------------------------------------------- external issuers' keys
class JwksCache:
    """The keys of one ``jwks_uri``: fetched on first use, again on an unknown kid (at most once per
    ``JWKS_MIN_REFRESH`` s) and after ``JWKS_MAX_AGE``. A failed fetch keeps the keys it had."""

    def __init__(self, uri: str, fetch: Callable[[str], Any]):
        self.uri = uri
        self._fetch = fetch
        self.keys: dict[str, tuple[str, Any]] = {}  # kid -> (kty, key)
        self.fetched = 0.0  # monotonic time of the last attempt
        self.loaded = False
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> tuple[str, Any] | None:
        found = self._lookup(kid)
        stale = time.monotonic() - self.fetched > JWKS_MAX_AGE
        if found is not None and not stale:
            return found
        if self.loaded and not stale and time.monotonic() - self.fetched < JWKS_MIN_REFRESH:
            return found
        async with self._lock:
            if time.monotonic() - self.fetched >= JWKS_MIN_REFRESH or not self.loaded:
                await self.refresh()
        return self._lookup(kid)

    def _lookup(self, kid: str | None) -> tuple[str, Any] | None:
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    async def refresh(self) -> None:
        self.fetched = time.monotonic()
        try:
            doc = await self._fetch(self.uri)
            keys: dict[str, tuple[str, Any]] = {}
            for i, jwk in enumerate(doc.get("keys", []) if isinstance(doc, dict) else []):
                if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ALLOWED_ALGS:
                    continue  # encryption keys, symmetric keys (kty oct) and the unknown are never used
                try:
                    keys[str(jwk.get("kid", i))] = (jwk["kty"], _jwk_key(jwk))
                except Exception:
                    continue
        except Exception:
            return  # unreachable or not a JWKS: keep the keys we had (the next unknown kid tries again)
        self.keys = keys
        self.loaded = True


# ---------------------------------------------------------------- validation
@dataclass(frozen=True)
class Verified:
    """What a checked token says: who, until when, for which audiences and scopes, from which issuer."""

    subscriber: str
    exp: float
    nbf: float | None
    audiences: frozenset[str]
    scopes: frozenset[str]
    issuer: str
    own: bool  # issued by this gateway (oauth2) or by a product's external issuer (jwt)


def split_token(token: str) -> tuple[dict, dict]:
    """Header and payload, unverified (to choose the key); TokenProblem if it is not a JWS compact JWT."""
    import jwt

    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenProblem("format", "the bearer token is not a well-formed JWT") from None
    if not isinstance(payload, dict):
        raise TokenProblem("format", "the bearer token's payload is not a JSON object")
    alg = header.get("alg")
    if not any(alg in algs for algs in ALLOWED_ALGS.values()):
        raise TokenProblem("alg", f"the token's algorithm {str(alg)[:20]!r} is never accepted (none and HMAC "
                           "algorithms are refused; use RS256, ES256 or another asymmetric algorithm)")
    return header, payload


def verify_signature(token: str, header: dict, kty: str, key: Any, key_alg: str | None = None) -> dict:
    import jwt

    alg = header.get("alg")
    allowed = ALLOWED_ALGS.get(kty, ())
    if key_alg:
        allowed = tuple(a for a in allowed if a == key_alg)
    if alg not in allowed:
        raise TokenProblem("alg", f"the token's algorithm {alg!r} is not accepted for this key "
                           f"(allowed: {', '.join(allowed) or 'none'}; never none or HMAC)")
    try:
        return jwt.decode(token, key, algorithms=[alg],
                          options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                   "verify_aud": False, "verify_iss": False, "require": []})
    except jwt.InvalidSignatureError:
        raise TokenProblem("signature", "the token's signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise TokenProblem("signature", f"the token could not be verified ({type(exc).__name__})") from None


def facts(claims: dict, *, issuer: str, subscriber_claim: str, own: bool) -> Verified:
    def number(name: str) -> float | None:
        value = claims.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TokenProblem(name, f"the token's {name} claim is not a number")
        return float(value)

    exp = number("exp")
    if exp is None:
        raise TokenProblem("exp", "the token has no exp (expiry) claim")
    aud = claims.get("aud")
    audiences = frozenset([aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)]
                          if isinstance(aud, list) else [])
    scopes: set[str] = set()
    for name in ("scope", "scp"):  # RFC 8693 scope (space-separated); Entra ID / Okta scp (string or list)
        value = claims.get(name)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(v for v in value if isinstance(v, str))
    sub = claims.get(subscriber_claim)
    if not isinstance(sub, str) or not sub:
        raise TokenProblem("subscriber", f"the token has no {subscriber_claim} claim naming the subscriber")
    return Verified(sub, exp, number("nbf"), audiences, frozenset(scopes), issuer, own)


def check_time(v: Verified, now: float) -> None:
    if now > v.exp + LEEWAY:
        raise TokenProblem("exp", "the token has expired")
    if v.nbf is not None and now + LEEWAY < v.nbf:
        raise TokenProblem("nbf", "the token is not valid yet (nbf)")


def expires_in(v: Verified, now: float) -> float:
    return v.exp + LEEWAY - now
