"""Scale benchmark (issues 19 and 21). Run: ``.venv/bin/python benchmarks/scale.py [--large 1000000]
[--apply 100000] [--runs 3] [--keep DIR]``.

Every measure runs ``--runs`` times in a fresh process (min / median / max of wall time; CPU time and peak
RSS of the median run), at 10,000 subscribers and at the large size, printed side by side so growth is
visible, each beside its ceiling from the same run:

- validate, subscribers from CSV: large <= 20 s and <= 1 GB RSS;
- plan on a converged local target: large <= 60 s;
- plan text vs ``plan --json`` on a new target (30,000 and 90,000 creations, issue 21): text <= 1.3x JSON;
- apply of creations on the local target: ``--apply`` subscribers <= 2 ms per subscriber;
- usage pull of a window, repeated vs fresh (10,000 subscribers x 31 days x 2 metrics = 620,000 rows):
  repeated <= 1.1x fresh.

The converged state is built by applying a 10,000-subscriber plan and writing the remaining subscribers'
rows the way apply writes them (setup, not measured). Usage rows are written into the state as the gateway
would. Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

PRODUCTS = 4
BASE = 10_000
APIMON = [sys.executable, "-m", "apimon_cli.cli"]


def write_plan(d: Path, subscribers: int) -> Path:
    """A local-target plan with its subscribers in subscribers.csv."""
    d.mkdir(parents=True, exist_ok=True)
    lines = ["apimon: 1", "target: {provider: local, local: {state_dir: state}}",
             "billing: {currency: USD, period: month}", "products:"]
    for i in range(PRODUCTS):
        lines += [f"  p{i}:", f"    display_name: Product {i}", "    apis: [petstore]",
                  "    rate_limit: {rate: 10, burst: 20}", "    pricing: {model: free}"]
    lines += ["subscribers_from:", "  - csv: subscribers.csv"]
    (d / "plan.yaml").write_text("\n".join(lines) + "\n")
    with open(d / "subscribers.csv", "w") as fh:
        fh.write("id,product,email,enabled,metadata.tier\n")
        for i in range(subscribers):
            fh.write(f"s{i:07d},p{i % PRODUCTS},s{i}@example.com,true,t{i % 3}\n")
    return d / "plan.yaml"


def run(args: list[str], cwd: Path, stdout=subprocess.DEVNULL) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS MB) of one apimon run in a fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")}
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([*APIMON, *args], cwd=cwd, env=env, stdout=stdout, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in (0, 2):
            err.seek(0)
            raise SystemExit(f"apimon {' '.join(args)} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024


class Figure:
    def __init__(self, samples: list[tuple[float, float, int]]):
        self.samples = samples
        walls = [s[0] for s in samples]
        self.min, self.median, self.max = min(walls), statistics.median(walls), max(walls)
        mid = sorted(samples)[len(samples) // 2]
        self.cpu, self.rss = mid[1], max(s[2] for s in samples)

    def __str__(self) -> str:
        return f"{self.min:.2f} / {self.median:.2f} / {self.max:.2f} s (cpu {self.cpu:.2f} s, {self.rss} MB)"


def measure(runs: int, setup, args: list[str], cwd: Path) -> Figure:
    out = []
    for _ in range(runs):
        if setup is not None:
            setup()
        out.append(run(args, cwd))
    return Figure(out)


def fill_state(plan_dir: Path, first: int, last: int) -> None:
    """Subscribers first..last-1 written into the state as apply writes them (owner, a generated key,
    metadata as sorted JSON), one transaction."""
    conn = sqlite3.connect(plan_dir / "state" / "state.db")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO subscribers (id, owner, product, email, enabled, api_key, metadata, updated_at) "
        "VALUES (?, 'apimon', ?, ?, 1, ?, ?, ?)",
        ((f"s{i:07d}", f"p{i % PRODUCTS}", f"s{i}@example.com", secrets.token_urlsafe(30),
          json.dumps({"tier": f"t{i % 3}"}, sort_keys=True), now) for i in range(first, last)))
    conn.execute("COMMIT")
    conn.close()


def fill_usage(plan_dir: Path, subscribers: int, start: date, days: int) -> None:
    conn = sqlite3.connect(plan_dir / "state" / "state.db")
    conn.execute("BEGIN")
    conn.executemany("INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?, ?)", (
        (f"s{s:07d}", f"p{s % PRODUCTS}", (start + timedelta(days=d)).isoformat(), metric, (s * 7 + d) % 1000)
        for d in range(days) for s in range(subscribers) for metric in ("total", "success")))
    conn.execute("COMMIT")
    conn.close()


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--large", type=int, default=1_000_000, help="the large size (validate, converged plan)")
    ap.add_argument("--apply", type=int, default=100_000, help="subscribers created by the apply measure")
    ap.add_argument("--render", type=int, nargs="*", default=[30_000, 90_000], help="sizes of the text/JSON measure")
    ap.add_argument("--pull", type=int, default=10_000, help="subscribers x 31 days of usage for the pull measure")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", help="build the data here and keep it (default: a temporary directory)")
    ap.add_argument("--only", nargs="*", default=["validate", "plan", "render", "apply", "pull"])
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="apimon-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(f"apimon scale benchmark: {os.cpu_count()} cores, load average {load:.1f}, {args.runs} runs each; "
          "figures are min / median / max wall s (CPU s and peak RSS of the runs)", flush=True)
    missed: list[str] = []
    try:
        dirs = {}

        def plan_dir(n: int) -> Path:
            if n not in dirs:
                dirs[n] = root / f"n{n}"
                write_plan(dirs[n], n)
            return dirs[n]

        def converged(n: int) -> Path:
            d = plan_dir(n)
            if not (d / "state" / "state.db").exists():
                small = root / f"seed{n}"
                write_plan(small, min(n, BASE))
                run(["apply", "--auto-approve", "plan.yaml"], small)
                shutil.copytree(small / "state", d / "state")
                shutil.rmtree(small)
                if n > BASE:
                    fill_state(d, BASE, n)
            return d

        if "validate" in args.only:
            small = measure(args.runs, None, ["validate", "plan.yaml"], plan_dir(BASE))
            large = measure(args.runs, None, ["validate", "plan.yaml"], plan_dir(args.large))
            print(f"validate from CSV     {BASE:>9,}: {small}\n"
                  f"                      {args.large:>9,}: {large}  ({ratio(large.median, small.median)} for "
                  f"{args.large // BASE}x the subscribers; target <= 20 s, <= 1,024 MB)", flush=True)
            if large.median > 20 or large.rss > 1024:
                missed.append("validate")

        if "plan" in args.only:
            small = measure(args.runs, None, ["plan", "plan.yaml"], converged(BASE))
            large = measure(args.runs, None, ["plan", "plan.yaml"], converged(args.large))
            print(f"plan, converged       {BASE:>9,}: {small}\n"
                  f"                      {args.large:>9,}: {large}  ({ratio(large.median, small.median)}; "
                  "target <= 60 s)", flush=True)
            if large.median > 60:
                missed.append("converged plan")

        if "render" in args.only:
            for n in args.render:
                d = plan_dir(n)
                text = measure(args.runs, None, ["plan", "--full", "plan.yaml"], d)
                summary = measure(args.runs, None, ["plan", "plan.yaml"], d)
                js = measure(args.runs, None, ["plan", "--json", "plan.yaml"], d)
                print(f"plan, new target      {n:>9,}: text --full {text}; summarised {summary}; --json {js}  "
                      f"(text/JSON {ratio(text.median, js.median)}, summarised/JSON "
                      f"{ratio(summary.median, js.median)}; target <= 1.3x)", flush=True)
                if text.median > 1.3 * js.median:
                    missed.append(f"text/JSON at {n}")

        if "apply" in args.only:
            figures = {}
            for n in (BASE, args.apply):
                d = plan_dir(n)

                def fresh(d=d):
                    shutil.rmtree(d / "state", ignore_errors=True)

                figures[n] = measure(args.runs, fresh, ["apply", "--auto-approve", "plan.yaml"], d)
                shutil.rmtree(d / "state", ignore_errors=True)
            per = {n: f.median / (n + PRODUCTS) * 1000 for n, f in figures.items()}
            print(f"apply, creations      {BASE:>9,}: {figures[BASE]}  {per[BASE]:.3f} ms/subscriber\n"
                  f"                      {args.apply:>9,}: {figures[args.apply]}  {per[args.apply]:.3f} "
                  "ms/subscriber (target <= 2 ms)", flush=True)
            if per[args.apply] > 2:
                missed.append("apply")

        if "pull" in args.only:
            d = root / "pull"
            write_plan(d, args.pull)
            run(["apply", "--auto-approve", "plan.yaml"], d)
            first_day = date(2026, 1, 1)
            fill_usage(d, args.pull, first_day - timedelta(days=62), 62 + 31)  # history before the window
            window = ["usage", "pull", "plan.yaml", "--from", first_day.isoformat(), "--to",
                      (first_day + timedelta(days=30)).isoformat(), "--ledger"]
            fresh_runs, again_runs = [], []
            for i in range(args.runs):
                ledger = str(d / f"ledger{i}.db")
                fresh_runs.append(run([*window, ledger], d))
                again_runs.append(run([*window, ledger], d))
            fresh, again = Figure(fresh_runs), Figure(again_runs)
            rows = args.pull * 31 * 2
            print(f"usage pull ({rows:,} rows of {args.pull * 93 * 2:,}): fresh {fresh}; repeated {again}  "
                  f"(repeated/fresh {ratio(again.median, fresh.median)}; target <= 1.1x)", flush=True)
            if again.median > 1.1 * fresh.median:
                missed.append("repeated pull")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if missed:
        print("targets missed: " + ", ".join(missed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
