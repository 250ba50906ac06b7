"""TLS and mutual TLS on the local gateway: a test CA, server and client certificates made here, real
handshakes with verification on."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import sqlite3
import ssl
from pathlib import Path

import aiohttp
import pytest
from conftest import load_example_upstream, run_cli, write_plan
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apimon_cli.gateway import Gateway, GatewayConfig, GatewayError

upstream = load_example_upstream()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, cn: str, *, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


def _write(tmp: Path, name: str, key, cert) -> tuple[Path, Path]:
    c, k = tmp / f"{name}.pem", tmp / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def _fingerprint(cert) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


def test_mutual_tls_admits_the_subscriber_whose_certificate_it_is(tmp_path):
    ca_key, ca_cert = _ca("apimon test CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "localhost", server=True)
    acme_key, acme_cert = _leaf(ca_key, ca_cert, "acme", server=False)
    ann_key, ann_cert = _leaf(ca_key, ca_cert, "ann", server=False)
    rogue_ca_key, rogue_ca = _ca("rogue CA")
    rogue_key, rogue_cert = _leaf(rogue_ca_key, rogue_ca, "acme", server=False)
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_files = _write(tmp_path, "server", server_key, server_cert)
    acme_files = _write(tmp_path, "acme", acme_key, acme_cert)
    ann_files = _write(tmp_path, "ann", ann_key, ann_cert)
    rogue_files = _write(tmp_path, "rogue", rogue_key, rogue_cert)

    async def body():
        up, up_port = await upstream.start()
        plan = write_plan(tmp_path / "plan.yaml", f"""
apimon: 1
target: {{provider: local, local: {{state_dir: state, upstreams: {{petstore: "http://127.0.0.1:{up_port}"}}}}}}
products:
  secure: {{display_name: Secure, apis: [petstore], auth: [mtls], pricing: {{model: free}}}}
  open: {{display_name: Open, apis: [petstore], pricing: {{model: free}}}}
subscribers:
  acme: {{product: secure, client_cert_sha256: "{_fingerprint(acme_cert)}"}}
  ann: {{product: open, client_cert_sha256: "{_fingerprint(ann_cert)}"}}
  keyco: {{product: open}}
""")
        r = run_cli("apply", str(plan), "--auto-approve")
        assert r.code == 0, r.output
        with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
            key = conn.execute("SELECT api_key FROM subscribers WHERE id = 'keyco'").fetchone()[0]
        gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{up_port}"}, port=0,
                                   tls_cert=server_files[0], tls_key=server_files[1], client_ca=ca_path))
        await gw.start()
        url = f"https://localhost:{gw.port}/petstore/pets"

        def client(files=None) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(ca_path))
            if files:
                ctx.load_cert_chain(str(files[0]), str(files[1]))
            return ctx

        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(url, ssl=client(acme_files)) as resp:
                    assert resp.status == 200
                async with s.get(url, ssl=client()) as resp:  # no certificate: asked for, not required
                    assert resp.status == 403 and (await resp.json())["error"] == "missing_key"
                async with s.get(url, ssl=client(), headers={"x-api-key": key}) as resp:
                    assert resp.status == 200  # a product without mtls serves a client without a certificate
                async with s.get(url, ssl=client(ann_files)) as resp:  # ann's product does not accept mtls
                    assert resp.status == 403 and (await resp.json())["error"] == "scheme_not_accepted"
                with pytest.raises(aiohttp.ClientError):  # another CA: the handshake fails
                    async with s.get(url, ssl=client(rogue_files)) as resp:
                        pass
                with pytest.raises(aiohttp.ClientError):  # plain HTTP on the TLS port
                    async with s.get(f"http://localhost:{gw.port}/petstore/pets", headers={"x-api-key": key}) as resp:
                        assert resp.status >= 400
                        raise aiohttp.ClientError("refused")
            assert gw.url.startswith("https://")
        finally:
            await gw.stop()
            await up.cleanup()
        assert gw.meter.requests == 2  # the two admitted calls; refusals at authentication are not metered

    asyncio.run(body())


def test_a_certificate_that_cannot_be_loaded_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    from apimon_cli.gateway.lifecycle import tls_context

    cfg = GatewayConfig(tmp_path / "state", {}, tls_cert=bad, tls_key=bad)
    with pytest.raises(GatewayError, match="not a certificate"):
        tls_context(cfg)
    with pytest.raises(GatewayError, match="go together"):
        tls_context(GatewayConfig(tmp_path / "state", {}, tls_cert=bad))
