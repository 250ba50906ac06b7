from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from seed import PROVIDER, TARGET, seed_ledger, write_plan


@pytest.fixture
def seeded(tmp_path):
    """(desired, ledger path, plan path) of the seeded plan and ledger (Oct and Nov 2026)."""
    from apimon_cli.plan.loader import load_or_raise

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
