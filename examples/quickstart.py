"""apimon's quick start: the whole monetization loop on the local target, no cloud account needed.

    sample upstream -> apimon apply plans/local.yaml -> apimon gateway serve -> traffic with three
    subscribers' keys (one within its limits, one over its rate limit, one exhausting its quota) and one
    subscriber's OAuth 2.0 access token (client credentials)
    -> apimon usage pull -> apimon invoice (table, and CSV in out/)

Run it with `make quickstart`. It keeps everything in one folder, plans/.apimon/ beside the plan (the local
gateway's state and the usage ledger, where later commands find them without options), starts it fresh
every time and stops the processes it started on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
PLAN = "plans/local.yaml"
STATE = ROOT / "plans" / ".apimon"  # the state and the ledger, together
APIMON = [sys.executable, "-m", "apimon_cli.cli"]


def upstream_port() -> int:
    """The sample upstream's port: where the plan says petstore is (target.local.upstreams.petstore)."""
    import yaml

    url = yaml.safe_load((ROOT / PLAN).read_text())["target"]["local"]["upstreams"]["petstore"]
    return urlsplit(url).port or 80

started: list[subprocess.Popen] = []


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def apimon(*args: str, check: bool = True, codes: tuple[int, ...] = (0,)) -> None:
    print("$ apimon " + " ".join(args), flush=True)
    code = subprocess.run([*APIMON, *args], cwd=ROOT).returncode
    if check and code not in codes:
        raise SystemExit(f"quickstart: `apimon {' '.join(args)}` exited {code}")


def key_of(subscriber: str) -> str:
    """The subscriber's key, revealed on explicit request (used for traffic, never printed)."""
    out = subprocess.run([*APIMON, "keys", "show", subscriber, "--plan", PLAN], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def start(args: list[str], ready: re.Pattern | None = None, name: str = "",
          early: str = "") -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started.append(proc)
    line = ""
    if ready is not None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise SystemExit(f"quickstart: {name} exited early (code {proc.returncode}){early}")
            if ready.search(line):
                break
        else:
            raise SystemExit(f"quickstart: {name} did not start within 20 s")
    return proc, line


def call(url: str, key: str) -> str:
    req = urllib.request.Request(url, headers={"x-api-key": key})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return str(resp.status)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if exc.code == 429:
            return "429 quota" if "quota" in body.lower() else "429 rate limit"
        return str(exc.code)


def traffic(gateway: str) -> None:
    url = f"{gateway}/petstore/pets"
    plans = [
        ("acme", "pro (200/s, burst 400)", 150, 1, 0.0, "stays within its limits"),
        ("initech", "free (5/s, burst 10)", 40, 8, 0.0, "bursts 40 calls at once: over its rate limit"),
        ("hooli", "trial (quota 50/day)", 70, 1, 0.06, "calls steadily until its daily quota is gone"),
    ]
    rows = []
    for subscriber, product, n, parallel, pause, story in plans:
        key = key_of(subscriber)

        def one(_: int, key: str = key, pause: float = pause) -> str:
            result = call(url, key)
            time.sleep(pause)
            return result

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            results = Counter(pool.map(one, range(n)))
        rows.append((subscriber, product, n, results, story))
    print(f"{'subscriber':<10} {'product':<24} {'sent':>5}  {'200 ok':>7} {'429 rate':>9} {'429 quota':>10}  what")
    for subscriber, product, n, results, story in rows:
        print(f"{subscriber:<10} {product:<24} {n:>5}  {results['200']:>7} {results['429 rate limit']:>9} "
              f"{results['429 quota']:>10}  {story}")


def token_traffic(gateway: str, subscriber: str = "globex", n: int = 10) -> None:
    """One subscriber calls with a Bearer token instead of its key: a generated client secret (`apimon keys
    secret`, printed once; used here, never shown), exchanged at POST /oauth2/token (client credentials)."""
    import base64
    import json
    from urllib.parse import urlencode

    secret = subprocess.run([*APIMON, "keys", "secret", subscriber, "--plan", PLAN], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    print(f"$ apimon keys secret {subscriber} --plan {PLAN}   (the secret, printed once, is used below)")
    basic = base64.b64encode(f"{subscriber}:{secret}".encode()).decode()
    form = urlencode({"grant_type": "client_credentials"}).encode()
    req = urllib.request.Request(f"{gateway}/oauth2/token", data=form, headers={"Authorization": f"Basic {basic}"},
                                 method="POST")
    # a gateway picks a new secret up within a second: ask again briefly if it is not there yet
    for attempt in range(20):
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                token = json.load(resp)
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 401 or attempt == 19:
                raise SystemExit(f"quickstart: POST /oauth2/token answered {exc.code}") from None
            time.sleep(0.1)
    print(f"POST {gateway}/oauth2/token (grant_type=client_credentials) -> a {token['token_type']} token for "
          f"{subscriber}, expires in {token['expires_in']} s")
    results = Counter()
    for _ in range(n):
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        req = urllib.request.Request(f"{gateway}/petstore/pets", headers=bearer)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
                results[str(resp.status)] += 1
        except urllib.error.HTTPError as exc:
            results[str(exc.code)] += 1
    print(f"with a token: {subscriber} sent {n} calls, {results['200']} answered 200 (metered and limited like its "
          "key)")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    os.chdir(ROOT)
    # a fresh demo every run: one folder beside the plan holds the local gateway's state
    # (target.local.state_dir) and the ledger (.apimon/ledger.db beside the plan, the default), so later
    # commands find both without options
    shutil.rmtree(STATE, ignore_errors=True)
    today = datetime.now(UTC).date()
    period = today.strftime("%Y-%m")

    port = upstream_port()
    step(f"start the sample upstream (examples/upstream.py on 127.0.0.1:{port})")
    # wait for this upstream's own "listening" line: whatever else answers on the port is not it (another
    # program there, or another quick start, would answer first and then vanish mid-way)
    start([sys.executable, "examples/upstream.py", "--port", str(port)], ready=re.compile(r"listening on http://"),
          name="upstream", early=f"; is port {port} taken by another program?")

    step("validate, plan and apply plans/local.yaml to the local target")
    apimon("validate", PLAN)
    apimon("plan", PLAN, "--detailed-exitcode", codes=(2,))
    apimon("apply", PLAN, "--auto-approve")
    apimon("plan", PLAN, "--detailed-exitcode")

    step("serve the gateway")
    gateway, line = start([*APIMON, "gateway", "serve", PLAN, "--listen", "127.0.0.1:0"],
                          ready=re.compile(r"listening on (http://\S+)"), name="apimon gateway")
    url = re.search(r"listening on (http://\S+)", line).group(1)
    print(line.strip())

    step(f"send traffic through {url} with three subscribers' keys")
    traffic(url)

    step("call with an OAuth 2.0 access token instead of a key (client credentials)")
    token_traffic(url)

    step("stop the gateway (SIGTERM: it writes its last usage counts first)")
    stop(gateway)
    print((gateway.stdout.read() or "").strip())

    step("pull usage into the ledger, show it, invoice it")
    apimon("usage", "pull", PLAN, "--from", today.isoformat(), "--to", today.isoformat())
    apimon("usage", "show", PLAN, "--period", period)
    apimon("invoice", PLAN, "--period", period)
    Path("out").mkdir(exist_ok=True)
    csv = f"out/invoice-{period}.csv"
    apimon("invoice", PLAN, "--period", period, "--format", "csv", "--out", csv,
           "--with-metadata", "customer_id")
    print(f"\nThe gateway's state and the ledger are in {STATE.relative_to(ROOT)}/ (state.db, ledger.db).")
    print(f"The invoice CSV is {csv}. Next: `.venv/bin/apimon invoice {PLAN} --period {period}` shows the "
          f"invoices again; edit {PLAN} and run `.venv/bin/apimon plan {PLAN}` to see a change.")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\nquickstart: interrupted; stopping what it started", file=sys.stderr)
        sys.exit(130)
    finally:
        for proc in reversed(started):
            stop(proc)
