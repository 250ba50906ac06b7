"""Gateway throughput benchmark. Run: ``.venv/bin/python benchmarks/gateway.py [--rounds 3] [--duration 10]``.

Measures requests/s, p50/p99 latency and CPU time per request of a small GET (a ~40-byte JSON body) with
`wrk` (another process, 2 threads, 32 keep-alive connections, 10 s after a 2 s warm-up), for every target
in every round (rounds interleave the targets, so machine load hits them alike):

  upstream               straight to the upstream
  bare aiohttp proxy     a bare aiohttp pass-through proxy (defined below: no keys, limits or metering; the
                         ceiling for a one-process Python proxy, built like the gateway: low-level aiohttp
                         server, a ClientSession with a keep-alive pool, streamed bodies, the same event
                         loop as the gateway: uvloop when installed)
  apimon gateway         `apimon gateway serve` with a product whose rate limit and quota are far above the
                         load (both code paths run) and metering on
  gateway (asyncio loop) the same with APIMON_GATEWAY_UVLOOP=0: what uvloop brings
  nginx proxy_pass       the reference (one nginx process, upstream keep-alive), where nginx is installed

Printed: each round's figures (with the load average), then per target the median (min–max) over the
rounds, and the gateway's ratio to each ceiling computed within each round, median (min–max). The targets
are checked on the medians. The upstream is nginx serving a fixed response when nginx is installed (one
process, little CPU), else examples/upstream.py (aiohttp; then it takes a core of its own and caps every
row). Every target gets the same request, x-api-key header included. On a 2-core machine wrk, the proxy and
the upstream share the cores.

Targets (2-core machine): the gateway keeps >= 80 % of the bare proxy's requests/s, >= 4,500 req/s,
p99 <= 15 ms (medians). Exit status 1 if a target is missed, 2 if wrk is missing.
Needs `wrk` (Debian/Ubuntu: ``apt-get install -y wrk``); nginx is optional (``apt-get install -y nginx-light``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchstats import load, spread

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BODY = '{"id": 2, "name": "Tom", "tag": "cat"}'
TARGETS = {"ratio": 0.80, "rps": 4500.0, "p99_ms": 15.0}


# ---------------------------------------------------------------- the bare proxy (run in a child process)


def bare_proxy(port: int, upstream: str) -> None:
    """A minimal correct pass-through proxy: hop-by-hop headers dropped, bodies streamed."""
    import aiohttp
    from aiohttp import web
    from multidict import CIMultiDict
    from yarl import URL

    hop = frozenset(
        {
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "host",
        }
    )

    async def main() -> None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=30),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            headers = CIMultiDict()
            for k, v in request.headers.items():
                if k.lower() not in hop:
                    headers.add(k, v)
            try:
                up = await session.request(
                    request.method,
                    URL(upstream + request.raw_path, encoded=True),
                    headers=headers,
                    allow_redirects=False,
                    data=request.content if request.body_exists else None,
                )
            except (aiohttp.ClientError, OSError, TimeoutError):
                return web.Response(status=502)
            try:
                out = CIMultiDict()
                for k, v in up.headers.items():
                    if k.lower() not in hop:
                        out.add(k, v)
                if up.content_length is not None and up.content_length <= 65536:
                    return web.Response(status=up.status, reason=up.reason, body=await up.read(), headers=out)
                resp = web.StreamResponse(status=up.status, reason=up.reason, headers=out)
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
            finally:
                up.release()

        runner = web.ServerRunner(web.Server(handle, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        gc.collect()
        gc.freeze()  # as the gateway does: long-lived objects out of full GC collections
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()
        await session.close()

    try:  # the same event loop as the gateway's (apimon_cli.gateway.lifecycle.loop_factory)
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ok(url: str, key: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            req = urllib.request.Request(url, headers={"x-api-key": key})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: {url} did not answer 200 within {timeout:.0f} s")
        time.sleep(0.1)


def nginx_conf(workdir: Path, name: str, server_block: str, upstreams: str = "") -> Path:
    d = workdir / name
    d.mkdir()
    temp = " ".join(f"{t}_temp_path {d}/{t};" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = d / "nginx.conf"
    conf.write_text(f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {temp}
  keepalive_requests 1000000;
  {upstreams}
  server {{ {server_block} }}
}}
""")
    return conf


def start_nginx(conf: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["nginx", "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def parse_wrk(text: str) -> dict:
    def ms(value: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": ms(p50.group(1)) if p50 else float("nan"),
        "p99": ms(p99.group(1)) if p99 else float("nan"),
        "requests": int(total.group(1)) if total else 0,
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0),
    }


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process and its live children (the gateway's events process), Linux /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        kids = [int(k) for t in os.listdir(f"/proc/{pid}/task")
                for k in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        kids = []
    for kid in kids:
        cpu = cpu_seconds(kid)
        if cpu == cpu:  # not NaN: a child that just exited counts nothing
            total += cpu
    return total


def run_wrk(url: str, key: str, duration: int, connections: int, threads: int, pid: int | None) -> dict:
    base = ["wrk", f"-t{threads}", f"-c{connections}", "-H", f"x-api-key: {key}", "--latency", url]
    warm = subprocess.run(base[:1] + ["-d2s"] + base[1:], capture_output=True, text=True, check=True)
    cpu0 = cpu_seconds(pid) if pid else float("nan")
    out = subprocess.run(base[:1] + [f"-d{duration}s"] + base[1:], capture_output=True, text=True, check=True)
    result = parse_wrk(out.stdout)
    result["warm_requests"] = parse_wrk(warm.stdout)["requests"]
    cpu = (cpu_seconds(pid) - cpu0) if pid else float("nan")
    # CPU time the process under test spent per request: a figure that other load on the machine
    # disturbs much less than requests/s
    result["cpu_us"] = cpu / result["requests"] * 1e6 if result["requests"] else float("nan")
    return result


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- the run


def main() -> int:
    parser = argparse.ArgumentParser(description="apimon gateway throughput benchmark (needs wrk)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--upstream", choices=["auto", "nginx", "aiohttp"], default="auto")
    parser.add_argument("--rounds", "--runs", type=int, default=3, dest="rounds",
                        help="repeat all targets N times (>= 3 for the README)")
    parser.add_argument("--only", help="comma-separated subset: upstream,bare,gateway,asyncio,nginx (default: all)")
    parser.add_argument("--_bare-proxy", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._bare_proxy:
        bare_proxy(int(args._bare_proxy[0]), args._bare_proxy[1])
        return 0
    if not shutil.which("wrk"):
        print(
            "benchmark: wrk is not installed. Install it with `apt-get install -y wrk` (Debian/Ubuntu) or "
            "`brew install wrk` (macOS), then run this again.",
            file=sys.stderr,
        )
        return 2
    have_nginx = shutil.which("nginx") is not None
    use_nginx_upstream = args.upstream == "nginx" or (args.upstream == "auto" and have_nginx)
    if args.upstream == "nginx" and not have_nginx:
        print("benchmark: nginx is not installed (`apt-get install -y nginx`)", file=sys.stderr)
        return 2

    procs: list[subprocess.Popen] = []
    rows: list[tuple[str, dict | None, str]] = []
    with tempfile.TemporaryDirectory(prefix="apimon-bench-") as tmp:
        work = Path(tmp)
        try:
            up_port = free_port()
            if use_nginx_upstream:
                conf = nginx_conf(
                    work,
                    "upstream",
                    f"listen 127.0.0.1:{up_port} reuseport; location / {{ "
                    f"default_type application/json; return 200 '{BODY}'; }}",
                )
                procs.append(start_nginx(conf))
                upstream_desc = "nginx fixed response (1 process)"
            else:
                procs.append(
                    subprocess.Popen(
                        [PYTHON, str(ROOT / "examples" / "upstream.py"), "--port", str(up_port)],
                        stdout=subprocess.DEVNULL,
                    )
                )
                upstream_desc = "examples/upstream.py (aiohttp, 1 process)"
            upstream = f"http://127.0.0.1:{up_port}"

            # the gateway's state: one product with limits far above the load, one subscriber
            plan = work / "plan.yaml"
            plan.write_text(f"""apimon: 1
target:
  provider: local
  local: {{state_dir: state, upstreams: {{petstore: "{upstream}"}}}}
products:
  bench:
    display_name: Bench
    apis: [petstore]
    rate_limit: {{rate: 1000000, burst: 1000000}}
    quota: {{limit: 1000000000, period: month}}
    pricing: {{model: free}}
subscribers:
  loadgen: {{product: bench}}
""")
            env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")}
            subprocess.run(
                [PYTHON, "-m", "apimon_cli.cli", "apply", str(plan), "--auto-approve"],
                env=env,
                check=True,
                capture_output=True,
            )
            with sqlite3.connect(work / "state" / "state.db") as conn:
                key = conn.execute("SELECT api_key FROM subscribers WHERE id = 'loadgen'").fetchone()[0]

            bare_port, gw_port, ngx_port = free_port(), free_port(), free_port()
            targets: list[tuple[str, str, subprocess.Popen | None]] = [("upstream", f"{upstream}/pets/2", procs[0])]
            bare = subprocess.Popen([PYTHON, __file__, "--_bare-proxy", str(bare_port), upstream])
            procs.append(bare)
            targets.append(("bare aiohttp proxy", f"http://127.0.0.1:{bare_port}/pets/2", bare))
            gw = subprocess.Popen(
                [PYTHON, "-m", "apimon_cli.cli", "gateway", "serve", str(plan), "--listen", f"127.0.0.1:{gw_port}"],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(gw)
            targets.append(("apimon gateway", f"http://127.0.0.1:{gw_port}/petstore/pets/2", gw))
            # the same gateway on asyncio's own loop needs its own state (one gateway per SQLite state)
            plan2 = work / "asyncio" / "plan.yaml"
            plan2.parent.mkdir()
            plan2.write_text(plan.read_text())
            subprocess.run([PYTHON, "-m", "apimon_cli.cli", "apply", str(plan2), "--auto-approve"], env=env, check=True,
                           capture_output=True)
            with sqlite3.connect(plan2.parent / "state" / "state.db") as conn:
                conn.execute("UPDATE subscribers SET api_key = ? WHERE id = 'loadgen'", (key,))
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
            gw_asyncio_port = free_port()
            gw_asyncio = subprocess.Popen(
                [PYTHON, "-m", "apimon_cli.cli", "gateway", "serve", str(plan2), "--listen",
                 f"127.0.0.1:{gw_asyncio_port}"],
                env=env | {"APIMON_GATEWAY_UVLOOP": "0"},
                stderr=subprocess.DEVNULL,
            )
            procs.append(gw_asyncio)
            targets.append(("gateway (asyncio loop)", f"http://127.0.0.1:{gw_asyncio_port}/petstore/pets/2",
                            gw_asyncio))
            if have_nginx:
                conf = nginx_conf(
                    work,
                    "proxy",
                    f"listen 127.0.0.1:{ngx_port}; location / {{ proxy_pass http://up; "
                    'proxy_http_version 1.1; proxy_set_header Connection ""; }',
                    upstreams=f"upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}",
                )
                ngx = start_nginx(conf)
                procs.append(ngx)
                targets.append(("nginx proxy_pass", f"http://127.0.0.1:{ngx_port}/pets/2", ngx))

            print(
                f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s (after a 2 s warm-up), small GET; "
                f"upstream: {upstream_desc}; {os.cpu_count()} CPUs",
                flush=True,
            )
            short = {"upstream": "upstream", "bare aiohttp proxy": "bare", "apimon gateway": "gateway",
                     "gateway (asyncio loop)": "asyncio", "nginx proxy_pass": "nginx"}
            if args.only:
                wanted = {w.strip() for w in args.only.split(",")}
                targets = [t for t in targets if short[t[0]] in wanted]
            for round_no in range(1, args.rounds + 1):
                print(f"round {round_no}/{args.rounds} ({load()})", flush=True)
                for name, url, proc in targets:
                    wait_ok(url, key)
                    result = run_wrk(url, key, args.duration, args.connections, args.threads,
                                     proc.pid if proc else None)
                    result["round"] = round_no
                    rows.append((name, result, ""))
                    print(
                        f"  {name:<22} {result['rps']:>9,.0f} req/s   p50 {result['p50']:6.2f} ms   "
                        f"p99 {result['p99']:6.2f} ms   {result['cpu_us']:6.1f} CPU us/req   "
                        f"errors {result['errors']}",
                        flush=True,
                    )
            if not have_nginx:
                print("  nginx proxy_pass     skipped: nginx is not installed (`apt-get install -y nginx`)")

            stop(gw)  # SIGTERM: the gateway writes its last counts
            gw_err = gw.stderr.read() if gw.stderr else ""
            if gw.returncode != 0:
                print(f"benchmark: the gateway exited with {gw.returncode}:\n{gw_err}", file=sys.stderr)
            with sqlite3.connect(work / "state" / "state.db") as conn:
                metered = conn.execute("SELECT COALESCE(SUM(count), 0) FROM usage WHERE metric = 'total'").fetchone()[0]
        finally:
            for p in reversed(procs):
                stop(p, signal.SIGQUIT if p.args and p.args[0] == "nginx" else signal.SIGTERM)

    names = list(dict.fromkeys(name for name, _, _ in rows))
    by: dict[str, dict[str, float]] = {}
    print(f"\nover {args.rounds} rounds: median (min–max); {load()}")
    for name in names:
        rs = [r for n, r, _ in rows if n == name]
        med = {f: statistics.median(r[f] for r in rs) for f in ("rps", "p50", "p99", "cpu_us")}
        by[name] = med | {"errors": sum(r["errors"] for r in rs)}

        def mmm(field: str, fmt: str, rs=rs) -> str:
            return spread([r[field] for r in rs], fmt)

        print(f"  {name:<22} {mmm('rps', ',.0f')} req/s   p99 {mmm('p99', '.2f')} ms   "
              f"CPU {mmm('cpu_us', '.1f')} us/req")

    def ratios(num: str, den: str) -> list[float]:
        out = []
        for round_no in range(1, args.rounds + 1):
            a = [r for n, r, _ in rows if n == num and r["round"] == round_no]
            b = [r for n, r, _ in rows if n == den and r["round"] == round_no]
            if a and b and b[0]["rps"]:
                out.append(a[0]["rps"] / b[0]["rps"])
        return sorted(out)

    ratio_median = 0.0
    for num, den in (("apimon gateway", "bare aiohttp proxy"), ("apimon gateway", "nginx proxy_pass"),
                     ("apimon gateway", "gateway (asyncio loop)")):
        rs = ratios(num, den)
        if rs:
            if den == "bare aiohttp proxy":
                ratio_median = statistics.median(rs)
            print(f"  {num} / {den}: {spread(rs, '.0%')} (same-round ratios)")
    if "Traceback" in gw_err:
        print(gw_err, file=sys.stderr)
    if "apimon gateway" in by:
        sent = sum(r["requests"] + r["warm_requests"] for name, r, _ in rows if name == "apimon gateway")
        print(
            f"\nthe gateway metered {metered:,} calls into the usage table; wrk completed {sent:,} through it "
            "(warm-ups included; the difference is the readiness check and requests in flight when wrk stopped)"
        )
    if "apimon gateway" not in by or "bare aiohttp proxy" not in by:
        return 0
    g = by["apimon gateway"]
    checks = [
        (f"gateway / bare proxy throughput (median) {ratio_median:.0%} >= {TARGETS['ratio']:.0%}",
         ratio_median >= TARGETS["ratio"]),
        (f"gateway {g['rps']:,.0f} req/s (median) >= {TARGETS['rps']:,.0f}", g["rps"] >= TARGETS["rps"]),
        (f"gateway p99 {g['p99']:.2f} ms (median) <= {TARGETS['p99_ms']:.0f} ms", g["p99"] <= TARGETS["p99_ms"]),
        ("no errors (non-2xx or socket) through the gateway", g["errors"] == 0),
    ]
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
