"""Gateway throughput by credential (issue 15): JWT bearer tokens vs API keys on the same wrk load, and
TLS vs plain HTTP.

One `apimon gateway serve` (plain) and one with `--tls-cert/--tls-key` (a self-signed certificate made here),
each over its own state of the same plan, in front of the sample upstream (examples/upstream.py). Each round
runs wrk (2 threads, 32 keep-alive connections, --duration s after a 2 s warm-up) with ``x-api-key``, then
with ``Authorization: Bearer`` (a token from the gateway's own /oauth2/token), then with the key over TLS;
the ratios are taken within each round (ceiling: the API-key figure of the same round). Targets: JWT >= 0.8x
of API keys; TLS is reported. Needs wrk (``apt-get install -y wrk``).

    .venv/bin/python benchmarks/credentials.py [--runs 3] [--duration 10]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchstats import load, ratio_spread, runs_arg, spread
from gateway import free_port, parse_wrk, stop

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SECRET = "bench-client-secret-0123456789"


def _cert(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    c, k = tmp / "server.pem", tmp / "server.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def _serve(plan: Path, port: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "BENCH_SECRET": SECRET, "NO_COLOR": "1"}
    proc = subprocess.Popen([PY, "-m", "apimon_cli.cli", "gateway", "serve", str(plan), "--listen",
                             f"127.0.0.1:{port}", *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "listening on" in line:
            return proc
    raise SystemExit("the gateway did not start")


def _wrk(url: str, header: str, duration: int) -> dict:
    base = ["wrk", "-t2", "-c32", "-H", header, "--latency", url]
    subprocess.run(base[:1] + ["-d2s"] + base[1:], capture_output=True, text=True, check=True)
    out = subprocess.run(base[:1] + [f"-d{duration}s"] + base[1:], capture_output=True, text=True, check=True)
    return parse_wrk(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runs_arg(parser)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("benchmark: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="apimon-bench-cred-"))
    up_port = free_port()
    upstream = subprocess.Popen([PY, str(ROOT / "examples" / "upstream.py"), "--port", str(up_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = f"""apimon: 1
target: {{provider: local, local: {{state_dir: state, upstreams: {{petstore: "http://127.0.0.1:{up_port}"}}}}}}
products:
  pro:
    display_name: Pro
    apis: [petstore]
    auth: [api_key, oauth2]
    scopes: [read]
    pricing: {{model: free}}
subscribers:
  acme: {{product: pro, client_secret: {{from_env: BENCH_SECRET}}}}
"""
    env = {**os.environ, "BENCH_SECRET": SECRET}
    # two states of the same plan (one gateway per SQLite state): one served plain, one over TLS, both up
    # the whole time so the rounds interleave the three measures
    plans, keys_of = [], []
    for name in ("plain", "tls"):
        (tmp / name).mkdir()
        plan = tmp / name / "plan.yaml"
        plan.write_text(text)
        subprocess.run([PY, "-m", "apimon_cli.cli", "apply", str(plan), "--auto-approve"], env=env, check=True,
                       capture_output=True)
        with sqlite3.connect(tmp / name / "state" / "state.db") as conn:
            keys_of.append(conn.execute("SELECT api_key FROM subscribers WHERE id = 'acme'").fetchone()[0])
        plans.append(plan)
    cert, cert_key = _cert(tmp)
    plain_port, tls_port = free_port(), free_port()
    time.sleep(0.5)
    gws: list[subprocess.Popen] = []
    try:
        gws.append(_serve(plans[0], plain_port))
        gws.append(_serve(plans[1], tls_port, "--tls-cert", str(cert), "--tls-key", str(cert_key)))
        basic = base64.b64encode(f"acme:{SECRET}".encode()).decode()
        req = urllib.request.Request(f"http://127.0.0.1:{plain_port}/oauth2/token",
                                     data=b"grant_type=client_credentials&scope=read",
                                     headers={"Authorization": f"Basic {basic}",
                                              "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            token = json.load(resp)["access_token"]
        keys, jwts, tls = [], [], []
        url = f"http://127.0.0.1:{plain_port}/petstore/pets"
        tls_url = f"https://localhost:{tls_port}/petstore/pets"
        for i in range(args.runs):
            k = _wrk(url, f"x-api-key: {keys_of[0]}", args.duration)
            j = _wrk(url, f"Authorization: Bearer {token}", args.duration)
            t = _wrk(tls_url, f"x-api-key: {keys_of[1]}", args.duration)
            keys.append(k["rps"])
            jwts.append(j["rps"])
            tls.append(t["rps"])
            print(f"round {i + 1}: key {k['rps']:,.0f} req/s (p99 {k['p99']:.1f} ms), JWT {j['rps']:,.0f} req/s "
                  f"(p99 {j['p99']:.1f} ms), TLS key {t['rps']:,.0f} req/s (p99 {t['p99']:.1f} ms), errors "
                  f"{k['errors'] + j['errors'] + t['errors']}; {load()}", flush=True)
        print()
        print(f"API key (ceiling)   {spread(keys)} req/s")
        print(f"JWT bearer          {spread(jwts)} req/s  = {ratio_spread(jwts, keys)} of API keys (target >= 0.8x)")
        print(f"API key over TLS    {spread(tls)} req/s  = {ratio_spread(tls, keys)} of plain HTTP "
              "(same rounds, same gateway settings)")
    finally:
        for g in gws:
            stop(g)
        upstream.terminate()
        upstream.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
