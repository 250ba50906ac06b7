"""Start-up benchmark. Run: ``.venv/bin/python benchmarks/startup.py [--runs 15] [--keep DIR]``.

Prints the wall time (and CPU time), median (min–max) of ``--runs`` runs, of ``python -c pass`` (the floor,
the ceiling of any Python CLI's start-up), ``apimon --help`` and ``apimon validate`` on a generated plan with
1,000 products and 10,000 subscribers, each run in a fresh process, the three interleaved within a run, and
each apimon figure's ratio to the floor of the same run, and checks that neither command imports a cloud
SDK (boto3, botocore, azure, google), via
``python -X importtime``. Targets (issue, 2-core machine): --help <= 0.20 s; validate <= 1.0 s.
Exit status 1 if a target is missed or a cloud SDK is imported.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchstats import load, ratio_spread, spread

PRODUCTS = 1_000
SUBSCRIBERS = 10_000
CLOUD_SDKS = ("boto3", "botocore", "azure", "google")
TARGETS = {"apimon --help": 0.20, "apimon validate": 1.0}


def generate_plan(path: Path, products: int = PRODUCTS, subscribers: int = SUBSCRIBERS) -> Path:
    """A valid local-target plan using every pricing model."""
    lines = ["apimon: 1", "target:", "  provider: local", "billing: {currency: USD, period: month}", "products:"]
    for i in range(products):
        lines += [
            f"  p{i:04d}:",
            f"    display_name: Product {i}",
            f"    description: Generated product {i}",
            "    apis: [petstore, orders]",
            f"    rate_limit: {{rate: {10 + i}, burst: {20 + 2 * i}}}",
            "    quota: {limit: 100000, period: month}",
            "    pricing:",
        ]
        kind = i % 4
        if kind == 0:
            lines += ["      model: free"]
        elif kind == 1:
            lines += [
                '      fee: "29.00"',
                "      included: 10000",
                "      model: per_unit",
                '      unit_price: "0.001"',
            ]
        elif kind == 2:
            lines += [
                '      fee: "199.00"',
                "      model: graduated",
                "      tiers:",
                '        - {up_to: 1000000, unit_price: "0.0008"}',
                '        - {up_to: 5000000, unit_price: "0.0005"}',
                '        - {up_to: inf, unit_price: "0.0003"}',
                '      minimum: "250.00"',
            ]
        else:
            lines += ["      model: package", '      package: {size: 1000, price: "0.50", round: up}']
    lines.append("subscribers:")
    for i in range(subscribers):
        lines += [
            f"  s{i:05d}:",
            f"    product: p{i % products:04d}",
            f"    email: billing{i}@example.com",
            f"    metadata: {{customer_id: cus_{i}}}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def apimon_command() -> list[str]:
    exe = Path(sys.executable).parent / "apimon"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("apimon")
    return [found] if found else [sys.executable, "-m", "apimon_cli.cli"]


def timed(cmd: list[str], env: dict, expect: int = 0) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of ``cmd`` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != expect:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def imported_modules(args: list[str], env: dict) -> set[str]:
    """Top-level modules imported by ``apimon ARGS``, read from ``python -X importtime``."""
    code = "import sys; from apimon_cli.cli import main; sys.argv = ['apimon', *sys.argv[1:]]; main()"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                names.add(name.split(".")[0])
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--keep", help="write the generated plan into this directory and keep it")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")}
    env.update({"NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "0"})
    apimon = apimon_command()

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="apimon-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    plan = generate_plan(tmp / "big.yaml")
    try:
        size_mb = plan.stat().st_size / 1e6
        print(
            f"plan: {PRODUCTS:,} products, {SUBSCRIBERS:,} subscribers, {size_mb:.1f} MB; "
            f"median (min–max) of {args.runs} runs, wall clock; {os.cpu_count()} CPUs"
        )
        # warm the OS cache and the .pyc files once
        subprocess.run([*apimon, "validate", str(plan)], env=env, capture_output=True)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "apimon --help": [*apimon, "--help"],
            "apimon validate": [*apimon, "validate", str(plan)],
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved: the floor and the commands under the same load
            for name, cmd in commands.items():
                results[name].append(timed(cmd, env))
        floor = [w for w, _ in results["python -c pass"]]
        ok = True
        for name, samples in results.items():
            walls, cpus = [w for w, _ in samples], [c for _, c in samples]
            wall = statistics.median(walls)
            target = TARGETS.get(name)
            verdict = "" if target is None else f"  target <= {target:.2f} s: {'ok' if wall <= target else 'MISSED'}"
            vs = "" if name == "python -c pass" else f"  {ratio_spread(walls, floor)} the floor"
            ok &= target is None or wall <= target
            print(f"{name:<18} wall {spread(walls, '.3f', ' s')}   cpu {spread(cpus, '.3f', ' s')}{vs}{verdict}")
        print(load())
        if any(statistics.median(w for w, _ in v) > 1.3 * statistics.median(c for _, c in v)
               for v in results.values()):
            print(
                f"note: wall time well above CPU time ({load()}): other work is competing, rerun on a quiet machine"
            )
        for label, cmd_args, must in (
            ("apimon --help", ["--help"], "typer"),
            ("apimon validate", ["validate", str(plan)], "yaml"),
        ):
            modules = imported_modules(cmd_args, env)
            if must not in modules:  # the check itself must see the imports, or it proves nothing
                sys.exit(f"could not read the imports of {label}")
            sdks = sorted(modules & set(CLOUD_SDKS))
            ok &= not sdks
            print(
                f"cloud SDKs imported by {label}: {', '.join(sdks) if sdks else 'none'} ({len(modules)} top-level "
                "modules checked with python -X importtime)"
            )
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
