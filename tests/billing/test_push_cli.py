"""`apimon billing push|status` as a user runs them (subprocess), against the contract fakes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date

import pytest
from conftest import ROOT
from push_helpers import ENV, LAGO_KEY, OM_TOKEN, STRIPE_KEY, days_back, fill, local_target, write_plan

from apimon_cli.ledger import Ledger


def cli_env(allow: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")}
    env.update(ENV, APIMON_ALLOW_ENDPOINTS=allow, NO_COLOR="1", COLUMNS="200")
    return env


def run(*args, allow: str, timeout: float = 120):
    proc = subprocess.run([sys.executable, "-m", "apimon_cli.cli", *args], env=cli_env(allow), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert "Traceback" not in proc.stderr, proc.stderr
    for secret in (STRIPE_KEY, LAGO_KEY, OM_TOKEN):
        assert secret not in proc.stdout + proc.stderr
    return proc


@pytest.fixture
def world(tmp_path, fakes):
    days = days_back(4)
    rows = {(f"s{i:03d}", "pro", d): 1 + i + j for i in range(3) for j, d in enumerate(days)}
    with Ledger.open(tmp_path / "ledger.db") as book:
        fill(book, rows, days[0], days[-1], target=local_target(tmp_path))
    subscribers = {f"s{i:03d}": "pro" for i in range(3)}
    plan = write_plan(tmp_path, fakes, subscribers=subscribers)
    return plan, tmp_path / "ledger.db", days[0], days[-1], sum(rows.values())


def test_dry_run_sends_nothing_then_push_then_status(world, fakes, allow):
    plan, ledger, d0, d1, total = world
    window = ["--from", d0, "--to", d1, "--ledger", str(ledger)]
    dry = run("billing", "push", str(plan), "--dry-run", *window, allow=allow)
    assert dry.returncode == 0, dry.stderr
    assert "would send 12 events" in dry.stdout and "nothing was sent" in dry.stdout
    assert all(f.request_count == 0 for f in fakes.values())
    dry_json = json.loads(run("billing", "push", str(plan), "--dry-run", "--json", "--to", "lago", *window,
                              allow=allow).stdout)
    assert [v["vendor"] for v in dry_json["vendors"]] == ["lago"] and len(dry_json["vendors"][0]["would_send"]) == 12
    pushed = run("billing", "push", str(plan), *window, allow=allow)
    assert pushed.returncode == 0, pushed.stderr
    assert "stripe: 12 sent, 0 corrected, 0 already there, 0 not pushable" in pushed.stdout
    assert "lago: 12 sent" in pushed.stdout and "openmeter: 12 sent" in pushed.stdout
    assert sum(fakes["lago"].totals().values()) == total == sum(fakes["stripe"].totals().values())
    status = json.loads(run("billing", "status", str(plan), "--json", *window, allow=allow).stdout)
    assert [(v["vendor"], v["pushed_rows"], v["pushed_total"], len(v["pending"])) for v in status["vendors"]] == [
        ("stripe", 12, total, 0), ("lago", 12, total, 0), ("openmeter", 12, total, 0)]
    again = run("billing", "push", str(plan), "--json", *window, allow=allow)
    assert [(v["sent"], v["requests"]) for v in json.loads(again.stdout)["vendors"]] == [(0, 0)] * 3


def test_bad_input_is_one_located_line(world, fakes, allow):
    plan, ledger, d0, d1, _ = world
    r = run("billing", "push", str(plan), "--to", "paypal", "--ledger", str(ledger), allow=allow)
    assert r.returncode == 1 and "neither a vendor" in r.stderr
    r = run("billing", "push", str(plan), "--from", d0, "--ledger", str(ledger), allow=allow)
    assert r.returncode == 1 and "--from and --to DATE together" in r.stderr
    # the endpoint is not allowed without APIMON_ALLOW_ENDPOINTS: a located validation error, nothing sent
    r = run("billing", "push", str(plan), "--ledger", str(ledger), allow="")
    assert r.returncode == 1 and f"{plan}:" in r.stderr and "APIMON_ALLOW_ENDPOINTS" in r.stderr
    assert all(f.request_count == 0 for f in fakes.values())
    env = cli_env(allow)
    del env["LAGO_API_KEY"]
    proc = subprocess.run([sys.executable, "-m", "apimon_cli.cli", "billing", "push", str(plan), "--to", "lago",
                           "--ledger", str(ledger)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "LAGO_API_KEY is not set" in proc.stderr and f"{plan}:" in proc.stderr


def test_a_subscriber_without_the_customer_field_is_a_located_error(tmp_path, fakes, allow):
    plan = write_plan(tmp_path, fakes, subscribers={"acme": "pro"})
    plan.write_text(plan.read_text() + "  bare: {product: pro}\n")
    r = run("validate", str(plan), allow=allow)
    assert r.returncode == 1
    assert "subscribers.bare: has no metadata.stripe_customer_id" in r.stderr
    assert "subscribers.bare: has no metadata.lago_subscription_id" in r.stderr


@pytest.mark.parametrize("vendor", ["lago", "stripe"])
def test_kill_9_in_the_middle_then_rerun_vendor_totals_equal_the_ledger(tmp_path, fakes, allow, vendor):
    days = days_back(30)
    n_subs = 40 if vendor == "lago" else 6
    rows = {(f"s{i:03d}", "pro", d): 1 + (i * 7 + j) % 13 for i in range(n_subs) for j, d in enumerate(days)}
    ledger = tmp_path / "ledger.db"
    with Ledger.open(ledger) as book:
        fill(book, rows, days[0], days[-1], target=local_target(tmp_path))
    plan = write_plan(tmp_path, fakes, subscribers={f"s{i:03d}": "pro" for i in range(n_subs)})
    fake = fakes[vendor]
    fake.latency = 0.05 if vendor == "lago" else 0.01
    args = [sys.executable, "-m", "apimon_cli.cli", "billing", "push", str(plan), "--to", vendor,
            "--from", days[0], "--to", days[-1], "--ledger", str(ledger)]
    proc = subprocess.Popen(args, env=cli_env(allow), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    stored = (lambda: len(fake.batch_sizes)) if vendor == "lago" else (lambda: len(fake.events))
    deadline = time.monotonic() + 60
    while stored() < (3 if vendor == "lago" else 40) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = sum(fake.totals().values())
    assert 0 < partial < sum(rows.values())  # killed in the middle
    fake.latency = 0
    again = run("billing", "push", str(plan), "--to", vendor, "--from", days[0], "--to", days[-1],
                "--ledger", str(ledger), "--json", allow=allow)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)["vendors"][0]
    assert report["ok"]
    expected: dict[str, int] = {}
    for (sub, _prod, _day), n in rows.items():
        key = ("cus_" if vendor == "stripe" else "sub_") + sub
        expected[key] = expected.get(key, 0) + n
    assert fake.totals() == expected  # exactly the ledger: nothing lost, nothing doubled
    third = json.loads(run("billing", "push", str(plan), "--to", vendor, "--from", days[0], "--to", days[-1],
                           "--ledger", str(ledger), "--json", allow=allow).stdout)["vendors"][0]
    assert third["sent"] == third["corrected"] == third["requests"] == 0
    assert date.fromisoformat(days[0])  # the window is a real one


def test_removed_subscriber_never_pushed_fails_unless_allowed(world, fakes, allow):
    plan, ledger, d0, d1, _ = world
    window = ["--from", d0, "--to", d1, "--ledger", str(ledger), "--to", "lago"]
    # s002 leaves the plan before its usage was ever pushed: nobody would be billed for it
    write_plan(plan.parent, fakes, subscribers={"s000": "pro", "s001": "pro"})
    r = run("billing", "push", str(plan), *window, allow=allow)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "lago: 8 sent" in r.stdout and "4 not pushable" in r.stdout
    assert "no longer in the plan (s002)" in r.stderr and "--allow-unpriced" in r.stderr
    r = run("billing", "push", str(plan), *window, "--allow-unpriced", allow=allow)
    assert r.returncode == 0, r.stderr
    assert "not pushable" in r.stderr  # still reported, never dropped


def test_a_missing_credential_stops_before_anything_is_sent_with_a_located_json_error(world, fakes, allow):
    # the last vendor's token is unset: nothing may go to the other two (no half-done push without a summary)
    plan, ledger, *_ = world
    env = cli_env(allow)
    del env["OPENMETER_TOKEN"]
    proc = subprocess.run([sys.executable, "-m", "apimon_cli.cli", "billing", "push", str(plan), "--json",
                           "--ledger", str(ledger)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert all(f.request_count == 0 for f in fakes.values())
    [err] = json.loads(proc.stdout)["errors"]
    assert err["file"] == str(plan) and isinstance(err["line"], int) and isinstance(err["column"], int)
    assert err["field"] == "billing.push.openmeter.token" and "OPENMETER_TOKEN is not set" in err["message"]
    assert f"{plan}:" in proc.stderr and "OPENMETER_TOKEN is not set" in proc.stderr
