"""OAuth 2.0 client credentials and JWT bearer tokens on the local gateway, over real sockets.

The state is made by `apimon apply`; tokens come from the gateway's own POST /oauth2/token or are signed
by a test identity provider (keys made here, JWKS served on 127.0.0.1). A corpus of bad credentials, each
with the status and error the gateway must answer."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web
from conftest import load_example_upstream, run_cli, write_plan
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from apimon_cli.gateway import FakeClock, Gateway, GatewayConfig
from apimon_cli.gateway.clock import windows_at

upstream = load_example_upstream()
SECRET = "acme-client-secret-0123456789"
OTHER_SECRET = "gone-client-secret-0123456789"

PLAN = """
apimon: 1
target:
  provider: local
  local:
    state_dir: state
    upstreams: {{petstore: "{up}", other: "{up}", keyed: "{up}"}}
products:
  pro:
    display_name: Pro
    apis: [petstore]
    auth: [api_key, {{oauth2: {{token_ttl: 15m}}}}]
    scopes: [read]
    rate_limit: {{rate: 1000, burst: 1000}}
    pricing: {{model: free}}
  wide:
    display_name: Wide
    apis: [petstore, other]
    auth: [oauth2]
    scopes: [read, write]
    pricing: {{model: free}}
  partner:
    display_name: Partner
    apis: [petstore]
    auth:
      - jwt: {{issuer: "{idp}/", jwks_uri: "{idp}/jwks", audience: "api://petstore", subscriber_claim: azp}}
    scopes: [orders.read]
    pricing: {{model: free}}
  keys:
    display_name: Keys only
    apis: [petstore, keyed]
    pricing: {{model: free}}
subscribers:
  acme: {{product: pro, client_secret: {{from_env: ACME_SECRET}}}}
  gone: {{product: pro, enabled: false, client_secret: {{from_env: GONE_SECRET}}}}
  wideco: {{product: wide, client_secret: {{from_env: ACME_SECRET}}}}
  partnerco: {{product: partner}}
  keyco: {{product: keys}}
  newco: {{product: wide}}
"""
ENV = {"ACME_SECRET": SECRET, "GONE_SECRET": OTHER_SECRET}


class Idp:
    """A test identity provider: an RSA and an EC key, a JWKS on 127.0.0.1, tokens signed with them."""

    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.fetches = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    def jwks(self) -> dict:
        r = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        e = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        return {"keys": [{**r, "kid": "idp-rsa", "use": "sig"}, {**e, "kid": "idp-ec", "use": "sig"}]}

    async def start(self, handler=None) -> None:
        """Serve the JWKS on 127.0.0.1 (``handler``: another answer for GET /jwks)."""
        async def jwks(_request):
            self.fetches += 1
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/jwks", handler or jwks)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    def token(self, claims: dict | None = None, *, kid: str = "idp-rsa", alg: str = "RS256", key=None,
              drop: tuple[str, ...] = ()) -> str:
        now = int(time.time())
        body = {"iss": self.url + "/", "aud": "api://petstore", "azp": "partnerco", "sub": "someone",
                "scp": "orders.read", "iat": now, "exp": now + 600, **(claims or {})}
        for name in drop:
            body.pop(name, None)
        signer = key if key is not None else (self.ec if alg.startswith("ES") else self.rsa)
        return jwt.encode(body, signer, algorithm=alg, headers={"kid": kid})


def _state(tmp_path: Path, up_url: str, idp_url: str) -> dict[str, str]:
    plan = write_plan(tmp_path / "plan.yaml", PLAN.format(up=up_url, idp=idp_url))
    r = run_cli("apply", str(plan), "--auto-approve", env=ENV)
    assert r.code == 0, r.output
    assert SECRET not in r.output and OTHER_SECRET not in r.output
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        return dict(conn.execute("SELECT id, api_key FROM subscribers"))


def _basic(client: str, secret: str) -> dict[str, str]:
    """HTTP Basic client authentication (RFC 6749 §2.3.1: each part form-urlencoded first)."""
    from urllib.parse import quote_plus

    raw = f"{quote_plus(client)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def _token(s: aiohttp.ClientSession, base: str, client: str = "acme", secret: str = SECRET, **form):
    async with s.post(f"{base}/oauth2/token", data={"grant_type": "client_credentials", **form},
                      headers=_basic(client, secret)) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def _call(s: aiohttp.ClientSession, url: str, token: str | None = None, headers: dict | None = None):
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    async with s.get(url, headers=h) as resp:
        body = await resp.read()
        return resp.status, dict(resp.headers), json.loads(body) if body[:1] == b"{" else body


def _forge(token: str, **changes) -> str:
    """The token with its payload changed and the original signature kept (tampered)."""
    head, payload, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"


def _unsigned(claims: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}."


def _hs256_with_public_key(idp: Idp, claims: dict) -> str:
    """The classic key-confusion attack: HS256 with the RSA public key (PEM) as the HMAC secret."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    pem = idp.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    signing_input = f"{enc({'alg': 'HS256', 'typ': 'JWT', 'kid': 'idp-rsa'})}.{enc(claims)}"
    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def test_client_credentials_token_calls_the_api_with_the_same_limits_and_metering(tmp_path):
    async def body():
        up, up_port = await upstream.start()
        idp = Idp()
        await idp.start()
        keys = _state(tmp_path, f"http://127.0.0.1:{up_port}", idp.url)
        gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{up_port}",
                                                         "other": f"http://127.0.0.1:{up_port}"}, port=0))
        await gw.start()
        try:
            base = gw.url
            async with aiohttp.ClientSession() as s:
                status, headers, tok = await _token(s, base)
                assert status == 200, tok
                assert headers["Cache-Control"] == "no-store"
                assert tok["token_type"] == "Bearer" and tok["expires_in"] == 900 and tok["scope"] == "read"
                # the token is a JWT signed by a key published in the JWKS
                async with s.get(f"{base}/.well-known/jwks.json") as resp:
                    jwks = await resp.json()
                header = jwt.get_unverified_header(tok["access_token"])
                assert header["alg"] == "RS256" and header["typ"] == "at+jwt"
                (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
                assert "d" not in jwk  # public only
                claims = jwt.decode(tok["access_token"], RSAAlgorithm.from_jwk(json.dumps(jwk)), algorithms=["RS256"],
                                    audience="petstore", issuer=base)
                assert claims["sub"] == "acme" and claims["scope"] == "read" and claims["exp"] - claims["iat"] == 900
                assert claims["jti"]
                async with s.get(f"{base}/.well-known/oauth-authorization-server") as resp:
                    meta = await resp.json()
                assert meta["issuer"] == base and meta["token_endpoint"] == f"{base}/oauth2/token"
                assert meta["jwks_uri"] == f"{base}/.well-known/jwks.json"
                assert meta["grant_types_supported"] == ["client_credentials"]
                assert {"read", "write"} <= set(meta["scopes_supported"])
                # the token calls the API; so does the key; both count for acme
                status, _, _ = await _call(s, f"{base}/petstore/pets", tok["access_token"])
                assert status == 200
                status, _, _ = await _call(s, f"{base}/petstore/pets", headers={"x-api-key": keys["acme"]})
                assert status == 200
                # form-field client authentication works too
                async with s.post(f"{base}/oauth2/token", data={"grant_type": "client_credentials",
                                                                "client_id": "acme", "client_secret": SECRET}) as resp:
                    assert resp.status == 200
            await gw.flush()
            with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
                usage = dict(((s_, m), c) for s_, m, c in conn.execute(
                    "SELECT subscriber, metric, count FROM usage WHERE day = ?", (windows_at(time.time()).day,)))
            assert usage[("acme", "success")] == 2 and usage[("acme", "total")] == 2
        finally:
            await gw.stop()
            await up.cleanup()
            await idp.runner.cleanup()
        assert SECRET not in "".join(gw.log.lines if hasattr(gw.log, "lines") else [])

    asyncio.run(body())


def test_rate_limits_apply_to_token_callers_in_the_same_bucket(tmp_path):
    async def body():
        up, up_port = await upstream.start()
        idp = Idp()
        await idp.start()
        text = PLAN.format(up=f"http://127.0.0.1:{up_port}", idp=idp.url).replace(
            "rate_limit: {rate: 1000, burst: 1000}", "rate_limit: {rate: 1, burst: 4}")
        run = run_cli("apply", str(write_plan(tmp_path / "plan.yaml", text)), "--auto-approve", env=ENV)
        assert run.code == 0, run.output
        with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
            key = conn.execute("SELECT api_key FROM subscribers WHERE id = 'acme'").fetchone()[0]
        gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{up_port}"}, port=0))
        await gw.start()
        try:
            async with aiohttp.ClientSession() as s:
                _, _, tok = await _token(s, gw.url)
                statuses = []
                for i in range(6):  # key and token alternate: one bucket of 4
                    if i % 2:
                        st, _, _ = await _call(s, f"{gw.url}/petstore/pets", tok["access_token"])
                    else:
                        st, _, _ = await _call(s, f"{gw.url}/petstore/pets", headers={"x-api-key": key})
                    statuses.append(st)
                assert statuses.count(200) == 4 and statuses.count(429) == 2, statuses
        finally:
            await gw.stop()
            await up.cleanup()
            await idp.runner.cleanup()

    asyncio.run(body())


def test_external_issuer_tokens_are_checked_against_its_jwks(tmp_path):
    async def body():
        up, up_port = await upstream.start()
        idp = Idp()
        await idp.start()
        _state(tmp_path, f"http://127.0.0.1:{up_port}", idp.url)
        gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{up_port}"}, port=0))
        await gw.start()
        try:
            async with aiohttp.ClientSession() as s:
                url = f"{gw.url}/petstore/pets"
                for _ in range(3):
                    st, _, got = await _call(s, url, idp.token())
                    assert st == 200, got
                st, _, got = await _call(s, url, idp.token(kid="idp-ec", alg="ES256"))
                assert st == 200, got
                assert idp.fetches == 1  # fetched once, then cached
                # an unknown kid makes the gateway look again, but not more than once per 30 s
                for _ in range(3):
                    st, _, got = await _call(s, url, idp.token(kid="rotated-away"))
                    assert st == 401 and got["check"] == "kid"
                assert idp.fetches == 1  # the JWKS was fetched moments ago
                (cache,) = gw.auth._jwks.values()
                cache.fetched -= 31  # as if 31 s had passed
                for _ in range(3):
                    st, _, got = await _call(s, url, idp.token(kid="rotated-away"))
                    assert st == 401 and got["check"] == "kid"
                assert idp.fetches == 2  # one more look, not three
        finally:
            await gw.stop()
            await up.cleanup()
            await idp.runner.cleanup()

    asyncio.run(body())


def _corpus(idp: Idp, own: dict, base: str, keys: dict) -> list[tuple[str, dict, int, str, str | None]]:
    """(name, request headers, status, error, check) — every credential here must be refused."""
    now = int(time.time())
    t = own["acme"]
    wide = own["wideco"]
    bearer = lambda tok: {"Authorization": f"Bearer {tok}"}  # noqa: E731
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return [
        ("no credentials", {}, 403, "missing_key", None),
        ("unknown API key", {"x-api-key": "not-a-key-at-all-0123456789"}, 403, "invalid_key", None),
        ("API key on an oauth2-only product", {"x-api-key": keys["wideco"]}, 401, "scheme_not_accepted", None),
        ("Basic instead of Bearer", {"Authorization": "Basic YWNtZTpzZWNyZXQ="}, 401, "invalid_request", None),
        ("Bearer without a token", {"Authorization": "Bearer "}, 401, "invalid_request", None),
        ("not a JWT", bearer("hello"), 401, "invalid_token", "format"),
        ("truncated token", bearer(t[: len(t) // 2]), 401, "invalid_token", "format"),
        ("signature cut off", bearer(t.rsplit(".", 1)[0] + "."), 401, "invalid_token", "signature"),
        ("tampered payload (subscriber)", bearer(_forge(t, sub="wideco")), 401, "invalid_token", "signature"),
        ("tampered payload (scope)", bearer(_forge(t, scope="read write")), 401, "invalid_token", "signature"),
        ("tampered payload (exp)", bearer(_forge(t, exp=now + 10**6)), 401, "invalid_token", "signature"),
        ("alg none", bearer(_unsigned({"iss": base, "sub": "acme", "aud": "petstore", "exp": now + 60})),
         401, "invalid_token", "alg"),
        ("alg none from the external issuer", bearer(_unsigned({"iss": idp.url + "/", "azp": "partnerco",
                                                               "aud": "api://petstore", "exp": now + 60})),
         401, "invalid_token", "alg"),
        ("HS256 signed with the RSA public key", bearer(_hs256_with_public_key(idp, {
            "iss": idp.url + "/", "azp": "partnerco", "aud": "api://petstore", "scp": "orders.read",
            "exp": now + 600})), 401, "invalid_token", "alg"),
        ("RS256 header on the EC key", bearer(idp.token(kid="idp-ec", alg="RS256")), 401, "invalid_token", "alg"),
        ("expired", bearer(idp.token({"exp": now - 120})), 401, "invalid_token", "exp"),
        ("not yet valid", bearer(idp.token({"nbf": now + 600})), 401, "invalid_token", "nbf"),
        ("no exp", bearer(idp.token(drop=("exp",))), 401, "invalid_token", "exp"),
        ("wrong issuer", bearer(idp.token({"iss": "https://evil.example/"})), 401, "invalid_token", "iss"),
        ("wrong audience", bearer(idp.token({"aud": "api://other"})), 401, "invalid_token", "aud"),
        ("no subscriber claim", bearer(idp.token(drop=("azp",))), 401, "invalid_token", "subscriber"),
        ("unknown subscriber", bearer(idp.token({"azp": "nobody"})), 401, "invalid_token", "subscriber"),
        ("external token for a subscriber of an oauth2 product", bearer(idp.token({"azp": "acme"})),
         401, "invalid_token", "scheme"),
        ("unknown kid", bearer(idp.token(kid="nope")), 401, "invalid_token", "kid"),
        ("signed by another key under a known kid", bearer(idp.token(key=other_rsa)), 401, "invalid_token",
         "signature"),
        ("missing scope (external)", bearer(idp.token({"scp": "orders.write"})), 403, "insufficient_scope", "scope"),
        ("missing scope (own token)", bearer(own["acme-noscope"]), 403, "insufficient_scope", "scope"),
        ("a valid token for another API", bearer(wide), 401, "invalid_token", "aud"),
        ("own token signed by a key the gateway does not have", bearer(jwt.encode(
            {"iss": base, "sub": "acme", "aud": "petstore", "scope": "read", "exp": now + 600}, other_rsa,
            algorithm="RS256", headers={"kid": jwt.get_unverified_header(t)["kid"]})), 401, "invalid_token",
         "signature"),
        ("own token with an unknown kid", bearer(jwt.encode(
            {"iss": base, "sub": "acme", "aud": "petstore", "scope": "read", "exp": now + 600}, other_rsa,
            algorithm="RS256", headers={"kid": "made-up"})), 401, "invalid_token", "kid"),
        ("a disabled subscriber's token", bearer(own["gone"]), 401, "invalid_token", "enabled"),
    ]


def test_bad_credentials_corpus(tmp_path):
    async def body():
        up, up_port = await upstream.start()
        idp = Idp()
        await idp.start()
        keys = _state(tmp_path, f"http://127.0.0.1:{up_port}", idp.url)
        gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{up_port}",
                                                         "other": f"http://127.0.0.1:{up_port}"}, port=0))
        await gw.start()
        try:
            async with aiohttp.ClientSession() as s:
                own = {}
                _, _, got = await _token(s, gw.url)
                own["acme"] = got["access_token"]
                _, _, got = await _token(s, gw.url, "wideco", SECRET)  # APIs petstore and other...
                # ...a token for the wide product's APIs, used on the pro product's subscriber's API: below
                own["wideco"] = got["access_token"]
                # a token asked for without scopes: the product requires read
                async with s.post(f"{gw.url}/oauth2/token", data={"grant_type": "client_credentials",
                                                                  "scope": "read"},
                                  headers=_basic("acme", SECRET)) as resp:
                    assert resp.status == 200
                # gone's token: issue one while enabled is impossible (invalid_client), so sign it with the
                # gateway's own key from the state, as a token issued before the subscriber was disabled
                with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
                    kid, pem = conn.execute("SELECT kid, private_pem FROM signing_keys").fetchone()
                now = int(time.time())
                own["gone"] = jwt.encode({"iss": gw.url, "sub": "gone", "aud": "petstore", "scope": "read",
                                          "exp": now + 600}, pem, algorithm="RS256", headers={"kid": kid})
                own["acme-noscope"] = jwt.encode({"iss": gw.url, "sub": "acme", "aud": "petstore", "exp": now + 600},
                                                 pem, algorithm="RS256", headers={"kid": kid})
                cases = _corpus(idp, own, gw.url, keys)
                assert len(cases) >= 30
                for name, headers, status, error, check in cases:
                    # wide's token names APIs petstore and other; called on /keyed/ (not among them)
                    api = "keyed" if name == "a valid token for another API" else "petstore"
                    url = f"{gw.url}/{api}/pets"
                    st, resp_headers, got = await _call(s, url, headers=headers)
                    assert st == status, (name, st, got)
                    assert isinstance(got, dict) and got["error"] == error, (name, got)
                    if check is not None:
                        assert got.get("check") == check, (name, got)
                    if status == 401 and error == "invalid_token":
                        assert resp_headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"'), name
                    if error == "insufficient_scope":
                        assert 'error="insufficient_scope"' in resp_headers["WWW-Authenticate"], name
                assert gw.meter.requests == 0  # nothing refused was metered, nothing reached the upstream
        finally:
            await gw.stop()
            await up.cleanup()
            await idp.runner.cleanup()

    asyncio.run(body())


TOKEN_ERRORS = [
    ("wrong client secret", {"grant_type": "client_credentials"}, ("acme", "wrong-secret-0123456789"), 401,
     "invalid_client"),
    ("unknown client", {"grant_type": "client_credentials"}, ("nobody", SECRET), 401, "invalid_client"),
    ("disabled subscriber", {"grant_type": "client_credentials"}, ("gone", OTHER_SECRET), 401, "invalid_client"),
    ("subscriber without a secret", {"grant_type": "client_credentials"}, ("keyco", SECRET), 401, "invalid_client"),
    ("no grant_type", {}, ("acme", SECRET), 400, "invalid_request"),
    ("password grant", {"grant_type": "password", "username": "a", "password": "b"}, ("acme", SECRET), 400,
     "unsupported_grant_type"),
    ("unknown scope", {"grant_type": "client_credentials", "scope": "admin"}, ("acme", SECRET), 400, "invalid_scope"),
    ("no client authentication", {"grant_type": "client_credentials"}, None, 401, "invalid_client"),
]


@pytest.mark.parametrize("name,form,auth,status,error", TOKEN_ERRORS, ids=[c[0] for c in TOKEN_ERRORS])
def test_token_endpoint_errors_follow_rfc_6749(tmp_path, name, form, auth, status, error):
    async def body():
        up, up_port = await upstream.start()
        keys = _state(tmp_path, f"http://127.0.0.1:{up_port}", "http://127.0.0.1:9")
        gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{up_port}"}, port=0))
        await gw.start()
        try:
            headers = _basic(*auth) if auth else {}
            async with aiohttp.ClientSession() as s, s.post(f"{gw.url}/oauth2/token", data=form,
                                                             headers=headers) as resp:
                got = await resp.json()
                assert resp.status == status and got["error"] == error, got
                assert resp.headers["Cache-Control"] == "no-store"
                if status == 401 and auth:
                    assert resp.headers["WWW-Authenticate"].startswith("Basic")
                assert "access_token" not in got and SECRET not in json.dumps(got)
        finally:
            await gw.stop()
            await up.cleanup()
        assert keys

    asyncio.run(body())


def test_rotate_signing_key_keeps_old_tokens_until_their_end_then_removes_the_key(tmp_path):
    async def body():
        up, up_port = await upstream.start()
        _state(tmp_path, f"http://127.0.0.1:{up_port}", "http://127.0.0.1:9")
        clock = FakeClock(time.time())
        gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{up_port}"}, port=0,
                                   poll_interval=0.05), clock=clock)
        await gw.start()
        try:
            async with aiohttp.ClientSession() as s:
                _, _, old = await _token(s, gw.url)
                old_kid = jwt.get_unverified_header(old["access_token"])["kid"]
                with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
                    pem = conn.execute("SELECT private_pem FROM signing_keys").fetchone()[0]
                r = run_cli("gateway", "rotate-signing-key", str(tmp_path / "plan.yaml"), env=ENV)
                assert r.code == 0 and "New signing key" in r.output and old_kid in r.output, r.output
                assert "BEGIN" not in r.output  # no private key printed
                for _ in range(100):
                    async with s.get(f"{gw.url}/.well-known/jwks.json") as resp:
                        kids = [k["kid"] for k in (await resp.json())["keys"]]
                    if len(kids) == 2:
                        break
                    await asyncio.sleep(0.05)
                assert len(kids) == 2 and old_kid in kids
                _, _, new = await _token(s, gw.url)
                assert jwt.get_unverified_header(new["access_token"])["kid"] != old_kid
                st, _, _ = await _call(s, f"{gw.url}/petstore/pets", old["access_token"])
                assert st == 200  # the old key still validates its tokens
                # a long-lived token signed with the old key (as an attacker holding it would make one)
                forged = jwt.encode({"iss": gw.url, "sub": "acme", "aud": "petstore", "scope": "read",
                                     "exp": int(time.time()) + 10 * 86400}, pem, algorithm="RS256",
                                    headers={"kid": old_kid})
                clock.advance(3600 + 60 + 5)  # past the plan's longest token_ttl (wide: 1h) plus the leeway
                await gw.reload()
                st, _, got = await _call(s, f"{gw.url}/petstore/pets", forged)
                assert st == 401 and got["check"] == "kid", got
                st, _, got = await _call(s, f"{gw.url}/petstore/pets", new["access_token"])
                assert st == 401 and got["check"] == "exp", got  # its 15 minutes are over too
                _, _, fresh = await _token(s, gw.url)
                assert jwt.get_unverified_header(fresh["access_token"])["kid"] == jwt.get_unverified_header(
                    new["access_token"])["kid"]
                st, _, got = await _call(s, f"{gw.url}/petstore/pets", fresh["access_token"])
                assert st == 200, got
        finally:
            await gw.stop()
            await up.cleanup()
        # the next rotation removes the expired key from the state
        import apimon_cli.gateway.store as store

        with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
            key, _retired, removed = store.rotate_signing_key(conn, "ES256", 960, now=time.time() + 4000)
            assert removed == [old_kid] and key.alg == "ES256"

    asyncio.run(body())


def test_keys_secret_issues_a_generated_secret_once_and_replaces_the_previous_one(tmp_path):
    """A subscriber without client_secret in the plan gets one from `apimon keys secret`: printed once (the
    state keeps a hash), it gets tokens from a running gateway; a second one replaces it."""
    async def body():
        up, up_port = await upstream.start()
        _state(tmp_path, f"http://127.0.0.1:{up_port}", "http://127.0.0.1:9")
        plan = str(tmp_path / "plan.yaml")
        gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{up_port}"}, port=0,
                                   poll_interval=0.05))
        await gw.start()
        try:
            async with aiohttp.ClientSession() as s:
                status, _, got = await _token(s, gw.url, client="keyco", secret="x" * 20)
                assert status == 401 and got["error"] == "invalid_client"
                # keyco's product accepts only keys: the secret is issued with a warning
                r = run_cli("keys", "secret", "keyco", "--plan", plan, env=ENV)
                assert r.code == 0 and "does not accept oauth2" in r.stderr, r.output
                r = run_cli("keys", "secret", "wideco", "--plan", plan, env=ENV)
                assert r.code == 1 and "from the plan" in r.output  # the plan's from_env one stays
                # a subscriber of the plan that is not on the gateway yet, a subscriber not in the plan
                r = run_cli("keys", "secret", "nobody", "--plan", plan, env=ENV)
                assert r.code == 1 and "not in the plan" in r.output
                first = run_cli("keys", "secret", "newco", "--plan", plan, "--json", env=ENV)
                assert first.code == 0, first.output
                first_secret = json.loads(first.stdout)["client_secret"]
                assert len(first_secret) >= 40
                with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
                    stored = conn.execute("SELECT client_secret FROM subscriber_credentials "
                                          "WHERE subscriber = 'newco'").fetchone()[0]
                assert first_secret not in stored and stored.startswith("sha256$")
                for _ in range(100):  # the running gateway picks the secret up
                    status, _, tok = await _token(s, gw.url, client="newco", secret=first_secret)
                    if status != 401:
                        break
                    await asyncio.sleep(0.05)
                assert status == 200, tok
                st, _, _ = await _call(s, f"{gw.url}/petstore/pets", tok["access_token"])
                assert st == 200
                # the plan still converges: a generated secret is not a difference
                assert run_cli("plan", plan, "--detailed-exitcode", env=ENV).code == 0
                second = run_cli("keys", "secret", "newco", "--plan", plan, env=ENV).stdout.strip()
                assert second != first_secret
                for _ in range(100):
                    status, _, got = await _token(s, gw.url, client="newco", secret=first_secret)
                    if status == 401:
                        break
                    await asyncio.sleep(0.05)
                assert status == 401 and got["error"] == "invalid_client"  # the previous secret stopped working
                status, _, got = await _token(s, gw.url, client="newco", secret=second)
                assert status == 200, got
                st, _, _ = await _call(s, f"{gw.url}/petstore/pets", tok["access_token"])
                assert st == 200  # a token already issued stays valid until it expires
                # partnerco's product accepts jwt only: its secret gets no token
                third = run_cli("keys", "secret", "partnerco", "--plan", plan, env=ENV)
                assert third.code == 0 and "does not accept oauth2" in third.stderr
                status, _, got = await _token(s, gw.url, client="partnerco", secret=third.stdout.strip())
                assert status in (400, 401) and got["error"] in ("unauthorized_client", "invalid_client"), got
        finally:
            await gw.stop()
            await up.cleanup()

    asyncio.run(body())


def test_token_endpoint_reads_a_split_body_and_bounds_huge_and_slow_ones(tmp_path):
    """The form is read to its end however the client splits it into packets; a body over 8 KiB is 413
    (declared or streamed), one that stalls is 408 after the body timeout: hostile clients of the token
    endpoint are bounded like those of the APIs."""
    from gwutil import raw, status_of

    form = f"grant_type=client_credentials&client_id=acme&client_secret={SECRET}".encode()

    async def body():
        up, up_port = await upstream.start()
        _state(tmp_path, f"http://127.0.0.1:{up_port}", "http://127.0.0.1:9")
        gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{up_port}"}, port=0,
                                   body_timeout=1.0))
        await gw.start()
        head = (b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Connection: close\r\n")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(form) + form[:20])
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(form[20:])
            async with asyncio.timeout(10):
                answer = await reader.read()
            writer.close()
            assert status_of(answer) == 200 and b'"access_token"' in answer, answer[:300]

            declared = await raw(gw.port, head + b"Content-Length: 9000\r\n\r\n")
            assert status_of(declared) == 413 and b"invalid_request" in declared, declared[:300]
            chunk = b"a" * 4000
            streamed = await raw(gw.port, head + b"Transfer-Encoding: chunked\r\n\r\n"
                                 + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)))
            assert status_of(streamed) == 413 and b"8192" in streamed, streamed[:300]

            started = time.monotonic()
            stalled = await raw(gw.port, head + b"Content-Length: 100\r\n\r\ngrant_type=", read_timeout=10)
            assert status_of(stalled) == 408 and time.monotonic() - started < 5, stalled[:300]
        finally:
            await gw.stop()
            await up.cleanup()

    asyncio.run(body())


def test_a_jwks_sent_in_pieces_is_read_whole_and_a_huge_one_is_refused(tmp_path):
    """Identity providers' JWKS are several KiB (Entra ID's carries x5c chains) and arrive in several
    packets: the gateway reads the document to its end (at most 1 MiB) before parsing it."""

    async def body():
        up, up_port = await upstream.start()
        idp = Idp()
        huge = {"on": False}

        async def jwks(request):
            idp.fetches += 1
            doc = idp.jwks()
            # padding keys of other ids, as a provider with many rotated keys publishes
            doc["keys"] = [{"kty": "oct", "kid": f"old-{i}", "k": "A" * 200} for i in range(40)] + doc["keys"]
            data = json.dumps(doc).encode()
            if huge["on"]:
                data = b'{"keys": [' + b'{"kty": "oct", "kid": "x", "k": "AAAA"},' * 40_000 + b"{}]}"
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            for i in range(0, len(data), 1500):
                await resp.write(data[i:i + 1500])
                if i < 6000:
                    await asyncio.sleep(0.05)
            await resp.write_eof()
            return resp

        await idp.start(jwks)
        _state(tmp_path, f"http://127.0.0.1:{up_port}", idp.url)
        gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{up_port}"}, port=0))
        await gw.start()
        try:
            async with aiohttp.ClientSession() as s:
                url = f"{gw.url}/petstore/pets"
                st, _, got = await _call(s, url, idp.token())
                assert st == 200, got
                huge["on"] = True
                (cache,) = gw.auth._jwks.values()
                cache.fetched -= 31
                st, _, got = await _call(s, url, idp.token(kid="rotated-away"))
                assert st == 401 and got["check"] == "kid", got  # the huge JWKS is refused, the old keys kept
                assert idp.fetches == 2
                st, _, got = await _call(s, url, idp.token())
                assert st == 200, got
        finally:
            await gw.stop()
            await up.cleanup()
            await idp.runner.cleanup()

    asyncio.run(body())
