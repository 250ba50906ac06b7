"""Scale benchmark (issues 19 and 21). Run: ``.venv/bin/python benchmarks/scale.py [--large 1000000]
[--apply 100000] [--apply-fast 20000] [--runs 3] [--quick] [--keep DIR]``.

Every measure runs ``--runs`` times in a fresh process, the commands of one measure interleaved within a
run (so machine load hits them alike); printed: median (min–max) of wall time, CPU time, peak RSS, at
10,000 subscribers and at the large size side by side so growth is visible, each beside its ceiling from
the same run and the per-run ratio to it:

- validate, subscribers from CSV: large <= 20 s and <= 1 GB RSS (ceiling: a bare ``csv.reader`` pass over
  the same file in a fresh interpreter);
- plan on a converged local target: large <= 60 s (ceiling: ``validate`` of the same plan);
- plan text vs ``plan --json`` on a new target (30,000 and 90,000 creations, issue 21): text <= 1.3x JSON
  (the ceiling);
- apply of creations on the local target: ``--apply-fast`` (20,000) subscribers <= 3 s (issue 21) and
  ``--apply`` (100,000) <= 2 ms per subscriber (issue 19); ceiling: ``plan --json`` of the same plan;
- usage pull of a window, repeated vs fresh (the ceiling; 10,000 subscribers x 31 days x 2 metrics =
  620,000 rows): repeated <= 1.1x fresh.

``--quick`` shrinks the sizes (large 100,000, apply 20,000, render 30,000) for a fast check.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchstats import load, ratio_spread, spread

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


def run(args: list[str], cwd: Path, stdout=subprocess.DEVNULL, command=None) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS MB) of one apimon run (or ``command``) in a fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")}
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command or [*APIMON, *args], cwd=cwd, env=env, stdout=stdout, stderr=err)
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
        self.walls = [s[0] for s in samples]
        self.median = statistics.median(self.walls)
        self.cpus = [s[1] for s in samples]
        self.rss = max(s[2] for s in samples)

    def __str__(self) -> str:
        return f"{spread(self.walls, '.2f', ' s')} (cpu {spread(self.cpus, '.2f', ' s')}, {self.rss} MB)"

    def vs(self, ceiling: Figure) -> str:
        """The per-run ratio of this figure's wall time to its ceiling's."""
        return ratio_spread(self.walls, ceiling.walls)


def measure(runs: int, steps: list[tuple], cwd: Path | None = None) -> list[Figure]:
    """Each step (setup, args, cwd[, command]) once per run, interleaved: one Figure per step."""
    out: list[list] = [[] for _ in steps]
    for _ in range(runs):
        for i, step in enumerate(steps):
            setup, args, where, *command = step
            if setup is not None:
                setup()
            out[i].append(run(args, where or cwd, command=command[0] if command else None))
    return [Figure(o) for o in out]


def bare_csv(d: Path) -> tuple:
    """The ceiling of validate from CSV: one csv.reader pass over the file, in a fresh interpreter."""
    code = "import csv, sys; n = sum(1 for _ in csv.reader(open('subscribers.csv', newline='')))"
    return (None, [], d, [sys.executable, "-c", code])


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--large", type=int, default=1_000_000, help="the large size (validate, converged plan)")
    ap.add_argument("--apply", type=int, default=100_000, help="subscribers created by the apply measure")
    ap.add_argument("--apply-fast", type=int, default=20_000, help="the apply measure with the 3 s target")
    ap.add_argument("--quick", action="store_true", help="small sizes: a fast check, not README figures")
    ap.add_argument("--render", type=int, nargs="*", default=[30_000, 90_000], help="sizes of the text/JSON measure")
    ap.add_argument("--pull", type=int, default=10_000, help="subscribers x 31 days of usage for the pull measure")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", help="build the data here and keep it (default: a temporary directory)")
    ap.add_argument("--only", nargs="*", default=["validate", "plan", "render", "apply", "pull"])
    args = ap.parse_args()
    if args.quick:
        args.large, args.apply, args.render = min(args.large, 100_000), min(args.apply, 20_000), [30_000]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="apimon-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"apimon scale benchmark: {load()}, {args.runs} runs each; figures are median (min–max) wall s (CPU s, "
          "the largest peak RSS of the runs); ratios per run", flush=True)
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
            small, large, bare = measure(args.runs, [(None, ["validate", "plan.yaml"], plan_dir(BASE)),
                                                     (None, ["validate", "plan.yaml"], plan_dir(args.large)),
                                                     bare_csv(plan_dir(args.large))])
            print(f"validate from CSV     {BASE:>9,}: {small}\n"
                  f"                      {args.large:>9,}: {large}  ({large.vs(small)} the 10,000 figure for "
                  f"{args.large // BASE}x the subscribers; target <= 20 s, <= 1,024 MB)\n"
                  f"                      ceiling, bare csv.reader of the {args.large:,}-row file: {bare}: validate "
                  f"{large.vs(bare)} of it; {load()}", flush=True)
            if large.median > 20 or large.rss > 1024:
                missed.append("validate")

        if "plan" in args.only:
            small_d, large_d = converged(BASE), converged(args.large)
            small, large, ceiling = measure(args.runs, [(None, ["plan", "plan.yaml"], small_d),
                                                        (None, ["plan", "plan.yaml"], large_d),
                                                        (None, ["validate", "plan.yaml"], large_d)])
            print(f"plan, converged       {BASE:>9,}: {small}\n"
                  f"                      {args.large:>9,}: {large}  ({large.vs(small)} the 10,000 figure; "
                  f"target <= 60 s)\n"
                  f"                      ceiling, validate of the same plan: {ceiling}: plan {large.vs(ceiling)} of "
                  f"it; {load()}", flush=True)
            if large.median > 60:
                missed.append("converged plan")

        if "render" in args.only:
            for n in args.render:
                d = plan_dir(n)
                text, summary, js = measure(args.runs, [(None, ["plan", "--full", "plan.yaml"], d),
                                                        (None, ["plan", "plan.yaml"], d),
                                                        (None, ["plan", "--json", "plan.yaml"], d)])
                print(f"plan, new target      {n:>9,}: text --full {text}; summarised {summary}; --json (the "
                      f"ceiling) {js}; text/JSON {text.vs(js)}, summarised/JSON {summary.vs(js)} (target <= 1.3x); "
                      f"{load()}", flush=True)
                if text.median > 1.3 * js.median:
                    missed.append(f"text/JSON at {n}")

        if "apply" in args.only:
            figures, ceilings = {}, {}
            sizes = list(dict.fromkeys((BASE, args.apply_fast, args.apply)))
            for n in sizes:
                d = plan_dir(n)

                def fresh(d=d):
                    shutil.rmtree(d / "state", ignore_errors=True)

                figures[n], ceilings[n] = measure(args.runs, [(fresh, ["apply", "--auto-approve", "plan.yaml"], d),
                                                              (fresh, ["plan", "--json", "plan.yaml"], d)])
                shutil.rmtree(d / "state", ignore_errors=True)
            per = {n: f.median / (n + PRODUCTS) * 1000 for n, f in figures.items()}
            for n in sizes:
                target = []
                if n == args.apply_fast:
                    target.append("target <= 3 s")
                    if figures[n].median > 3:
                        missed.append(f"apply of {n:,} <= 3 s")
                if n == args.apply:
                    target.append("target <= 2 ms/subscriber")
                    if per[n] > 2:
                        missed.append("apply ms/subscriber")
                print(f"apply, creations      {n:>9,}: {figures[n]}  {per[n]:.3f} ms/subscriber; ceiling, plan --json "
                      f"of the same plan {ceilings[n]}: apply {figures[n].vs(ceilings[n])} of it"
                      f"{'; ' + ', '.join(target) if target else ''}; {load()}", flush=True)

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
            print(f"usage pull ({rows:,} rows of {args.pull * 93 * 2:,}): fresh (the ceiling) {fresh}; repeated "
                  f"{again}; repeated/fresh {again.vs(fresh)} (target <= 1.1x); {load()}", flush=True)
            if again.median > 1.1 * fresh.median:
                missed.append("repeated pull")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{load()} at the end")
    if missed:
        print("targets missed: " + ", ".join(missed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
