"""A seeded plan and ledger for report and portal tests: figures are checked against these numbers."""

from __future__ import annotations

import textwrap
from datetime import date, timedelta
from pathlib import Path

import pytest

from apimon_cli.ledger import Ledger
from apimon_cli.model import UsageRow

PROVIDER, TARGET = "local", "seed-target"

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
billing: {currency: USD, period: month, metric: success}
products:
  free:
    display_name: Free
    description: "Try the API, no card needed (R&D <beta>)"
    rate_limit: {rate: 5, burst: 10}
    quota: {limit: 1000, period: month}
    pricing: {model: free}
  trial:
    display_name: Trial
    rate_limit: {rate: 20, burst: 20}
    quota: {limit: 50, period: day}
    pricing: {model: flat, fee: "5.00"}
  starter:
    display_name: Starter
    rate_limit: {rate: 50, burst: 100}
    quota: {limit: 100000, period: month}
    pricing: {model: per_unit, fee: "29.00", included: 10000, unit_price: "0.001", setup_fee: "10.00"}
  pro:
    display_name: Pro
    rate_limit: {rate: 200, burst: 400}
    pricing:
      model: graduated
      fee: "199.00"
      tiers:
        - {up_to: 1000000, unit_price: "0.0008"}
        - {up_to: 5000000, unit_price: "0.0005"}
        - {up_to: inf, unit_price: "0.0003"}
      minimum: "250.00"
  enterprise:
    display_name: Enterprise (internal)
    public: false
    rate_limit: {rate: 1000, burst: 2000}
    pricing:
      model: volume
      fee: "999.00"
      tiers:
        - {up_to: 10000000, unit_price: "0.0002"}
        - {up_to: inf, unit_price: "0.0001"}
subscribers:
  acme: {product: pro, email: billing@acme.example, metadata: {customer_id: cus_123}}
  globex: {product: starter, email: ap@globex.example}
  initech: {product: free}
  hooli: {product: trial}
  umbrella: {product: starter, enabled: false}
  wayne: {product: pro}
"""


def days(start: date, end: date):
    d = start
    while d <= end:
        yield d
        d += timedelta(days=1)


def usage_rows(start: date, end: date) -> list[UsageRow]:
    """Deterministic traffic: acme grows into pro tier 2, globex passes its included units, initech runs into its
    monthly quota on the 20th, hooli into its daily quota every day, umbrella is disabled (blocked), wayne idle."""
    rows: list[UsageRow] = []

    def add(sub, prod, day, success=0, blocked=0, failed=0, other=0):
        total = success + blocked + failed + other
        for metric, n in (("success", success), ("blocked", blocked), ("failed", failed), ("other", other),
                          ("total", total)):
            if n:
                rows.append(UsageRow(sub, prod, day.isoformat(), metric, n))

    for d in days(start, end):
        i = d.day
        add("acme", "pro", d, success=40_000 + 1_000 * i, blocked=10 * (i % 3), failed=i)
        add("globex", "starter", d, success=500 + 10 * i, other=2)
        if i <= 20:  # initech: 50 a day until the free quota (1,000 / month) is used up on the 20th
            add("initech", "free", d, success=50)
        else:
            add("initech", "free", d, blocked=30)
        add("hooli", "trial", d, success=50, blocked=7)
        if i == 3:
            add("umbrella", "starter", d, blocked=12)
    return rows


def write_plan(directory: Path) -> Path:
    path = directory / "plan.yaml"
    path.write_text(textwrap.dedent(PLAN).lstrip())
    return path


def seed_ledger(path: Path) -> Path:
    with Ledger.open(path) as book:
        for start, end in ((date(2026, 10, 1), date(2026, 10, 31)), (date(2026, 11, 1), date(2026, 11, 30))):
            book.replace_window(PROVIDER, TARGET, start, end, usage_rows(start, end), "2026-12-01T00:00:00+00:00")
    return path


@pytest.fixture
def seeded(tmp_path):
    """(desired, ledger path, plan path) of the seeded plan and ledger (Oct and Nov 2026)."""
    from apimon_cli.planfile.loader import load_or_raise

    plan = write_plan(tmp_path)
    ledger = seed_ledger(tmp_path / "ledger.db")
    return load_or_raise([str(plan)]).desired, ledger, plan


@pytest.fixture
def make_report(seeded):
    from apimon_cli.billing.periods import parse_period
    from apimon_cli.ledger import Ledger
    from apimon_cli.report.source import gather

    desired, ledger, plan = seeded

    def make(period="2026-11", as_of=date(2026, 11, 30), compare=None, desired_=None):
        d = desired_ or desired
        with Ledger.open(ledger) as book:
            return gather(d, book, parse_period(period, d.billing.period), PROVIDER, TARGET, as_of=as_of,
                          plan_files=[plan.name], compare=compare)

    return make
