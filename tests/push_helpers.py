"""Shared pieces of the billing push tests: a plan with all three sinks, a ledger filled with usage."""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from apimon_cli.ledger import Ledger
from apimon_cli.model import UsageRow
from apimon_cli.planfile.loader import load_plans

STRIPE_KEY = "sk_test_pushsecret0001"
LAGO_KEY = "lago_pushsecret_0002"
OM_TOKEN = "om_pushsecret_0003"
ENV = {"STRIPE_API_KEY": STRIPE_KEY, "LAGO_API_KEY": LAGO_KEY, "OPENMETER_TOKEN": OM_TOKEN}


def plan_text(stripe_url: str, lago_url: str, om_url: str, subscribers: dict[str, str] | None = None,
              metric: str = "success") -> str:
    subscribers = subscribers if subscribers is not None else {"acme": "pro", "initech": "pro", "hooli": "basic"}
    subs = "\n".join(
        f"  {sid}: {{product: {pid}, metadata: {{stripe_customer_id: cus_{sid}, lago_subscription_id: sub_{sid}}}}}"
        for sid, pid in subscribers.items())
    return textwrap.dedent(f"""\
        apimon: 1
        target: {{provider: local}}
        billing:
          metric: {metric}
          push:
            stripe:
              api_key: {{from_env: STRIPE_API_KEY}}
              event_name: api_requests
              customer: metadata.stripe_customer_id
              api_base: {stripe_url}
            lago:
              api_url: {lago_url}
              api_key: {{from_env: LAGO_API_KEY}}
              metric_code: api_requests
              subscription: metadata.lago_subscription_id
            openmeter:
              url: {om_url}
              token: {{from_env: OPENMETER_TOKEN}}
              type: api_requests
        products:
          pro: {{display_name: Pro, pricing: {{model: per_unit, unit_price: "0.001"}}}}
          basic: {{display_name: Basic, pricing: {{model: per_unit, unit_price: "0.002"}}}}
        subscribers:
        """) + subs + "\n"


def write_plan(tmp: Path, fakes, **kw) -> Path:
    path = tmp / "plan.yaml"
    path.write_text(plan_text(fakes["stripe"].url, fakes["lago"].url, fakes["openmeter"].url, **kw))
    return path


def load(path: Path, allow: str, env: dict | None = None):
    loaded = load_plans([str(path)], env={**ENV, "APIMON_ALLOW_ENDPOINTS": allow, **(env or {})})
    assert loaded.desired is not None, [str(d) for d in loaded.diagnostics]
    return loaded.desired


def today() -> date:
    return datetime.now(UTC).date()


def days_back(n: int) -> list[str]:
    t = today()
    return [(t - timedelta(days=i)).isoformat() for i in range(n, 0, -1)]


def fill(ledger: Ledger, rows: dict[tuple[str, str, str], int], start: str, end: str, blocked: int = 3,
         target: str = "local") -> None:
    """rows: (subscriber, product, day) -> success count; blocked calls are added and must never be pushed."""
    usage = []
    for (sub, prod, day), n in rows.items():
        usage.append(UsageRow(sub, prod, day, "success", n))
        usage.append(UsageRow(sub, prod, day, "blocked", blocked))
        usage.append(UsageRow(sub, prod, day, "total", n + blocked))
    ledger.replace_window("local", target, date.fromisoformat(start), date.fromisoformat(end), usage)


def local_target(plan_dir: Path) -> str:
    """The ledger's target id of the local target whose plan is in ``plan_dir`` (its resolved state dir)."""
    return str((plan_dir / ".apimon").resolve())
