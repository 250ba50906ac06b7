"""The ledger on PostgreSQL (issue 13): the same commands give the same results, to the row and the cent,
concurrent pulls neither double count nor deadlock, and the password never shows."""

from __future__ import annotations

import multiprocessing
import re
import socket
from datetime import date
from pathlib import Path

import pytest
from conftest import run_cli, write_plan

from apimon_cli.ledger import Ledger
from apimon_cli.model import UsageRow

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
billing: {currency: USD, metric: total}
products:
  starter:
    display_name: Starter
    pricing: {model: per_unit, fee: "29.00", included: 10000, unit_price: "0.001", setup_fee: "10.00"}
  pro:
    display_name: Pro
    pricing:
      model: graduated
      fee: "199.00"
      tiers:
        - {up_to: 1000000, unit_price: "0.0008"}
        - {up_to: inf, unit_price: "0.0005"}
subscribers:
  acme: {product: pro}
  globex: {product: starter}
  initech: {product: starter}
"""

SECRET = "s3cret-Pa55word"


def with_password(url: str) -> str:
    # trust authentication ignores the password; it is there to prove it is never printed
    return url.replace("postgres@", f"postgres:{SECRET}@", 1)


def seed(tmp_path: Path, rows: list[tuple]) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.execute("DELETE FROM usage")
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)", rows)


def test_the_same_commands_give_the_same_rows_and_invoices_on_both(tmp_path, postgres_db):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    pg_url = with_password(postgres_db)
    ledgers = {"sqlite": str(tmp_path / "l.db"), "postgresql": pg_url}
    answers = [
        [("acme", "pro", "2026-11-02", "success", 1_200_000), ("acme", "pro", "2026-11-02", "blocked", 40),
         ("acme", "pro", "2026-11-02", "total", 1_200_040), ("globex", "starter", "2026-11-03", "total", 15_001),
         ("initech", "starter", "2026-11-04", "total", 3)],
        # revised: a count changes, a row disappears, a day is added
        [("acme", "pro", "2026-11-02", "success", 1_200_100), ("acme", "pro", "2026-11-02", "total", 1_200_140),
         ("globex", "starter", "2026-11-03", "total", 15_001), ("globex", "starter", "2026-11-05", "total", 9),
         ("initech", "starter", "2026-11-04", "total", 3)],
    ]
    outputs: dict[str, list[str]] = {k: [] for k in ledgers}
    for answer in answers:
        seed(tmp_path, answer)
        for kind, where in ledgers.items():
            r = run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30", "--ledger", where)
            assert r.code == 0, r.output
            outputs[kind].append(r.stdout.replace(str(tmp_path / "l.db"), "LEDGER").replace(
                postgres_db.replace("postgres@", "postgres:***@"), "LEDGER"))
    env = {"APIMON_LEDGER": pg_url}  # the environment variable names a PostgreSQL ledger too
    for kind, where in ledgers.items():
        for args in (["invoice", str(plan), "--period", "2026-11", "--format", "csv"],
                     ["usage", "export", "--format", "csv"],
                     ["usage", "show", str(plan), "--period", "2026-11"]):
            r = run_cli(*args, "--ledger", where) if kind == "sqlite" else run_cli(*args, env=env)
            assert r.code == 0, r.output
            outputs[kind].append(re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", "PULLED_AT", r.stdout))
    assert outputs["sqlite"] == outputs["postgresql"]
    # the HTML report and the portal read a PostgreSQL ledger too (the portal's tokens file: beside the plan)
    r = run_cli("report", str(plan), "--period", "2026-11", "--out", str(tmp_path / "r.html"), env=env)
    assert r.code == 0 and "acme" in (tmp_path / "r.html").read_text(), r.output
    r = run_cli("portal", "build", str(plan), "--period", "2026-11", "--out", str(tmp_path / "site"), env=env)
    assert r.code == 0, r.output
    assert SECRET not in r.output
    assert "~ 2026-11-02 acme pro success: 1200000 -> 1200100" in outputs["postgresql"][1]
    invoice_csv = outputs["postgresql"][2]
    assert "acme" in invoice_csv and "initech" in invoice_csv
    assert SECRET not in "".join(outputs["postgresql"])
    assert "postgres:***@" in outputs["postgresql"][0] or "LEDGER" in outputs["postgresql"][0]


def test_a_missing_ledger_and_an_unreachable_server_are_one_line_errors_with_the_password_masked(postgres_db):
    r = run_cli("usage", "export", "--ledger", with_password(postgres_db))
    assert r.code == 1
    assert "no ledger at postgresql://postgres:***@" in r.stderr and SECRET not in r.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("usage", "export", "--ledger", f"postgresql://bob:{SECRET}@127.0.0.1:{port}/x?password={SECRET}")
    assert r.code == 1 and "cannot open ledger postgresql://bob:***@127.0.0.1" in r.stderr, r.output
    assert SECRET not in r.output and len(r.stderr.strip().splitlines()) == 1


def test_a_foreign_database_is_refused_untouched(postgres_db):
    import psycopg

    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int)")
    from apimon_cli.ledger import LedgerError

    with pytest.raises(LedgerError, match="not an apimon ledger"):
        Ledger.open(postgres_db)
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"orders"}


WINDOWS = [(date(2026, 1, 1), date(2026, 1, 20)), (date(2026, 1, 10), date(2026, 1, 31))]


def _answer(start: date, end: date, factor: int) -> list[UsageRow]:
    return [UsageRow(f"s{i:03d}", "gold", date(2026, 1, d).isoformat(), "total", factor * (i + d))
            for d in range(start.day, end.day + 1) for i in range(200)]


def _puller(url: str, which: int, rounds: int, queue) -> None:
    try:
        with Ledger.open(url, timeout=20) as ledger:
            for n in range(rounds):
                ledger.replace_window("local", "gw", *WINDOWS[which], _answer(*WINDOWS[which], 1 + (n % 2)))
        queue.put("ok")
    except BaseException as exc:  # reported to the test
        queue.put(repr(exc))


def test_two_processes_pulling_overlapping_windows_never_double_count_nor_deadlock(postgres_db):
    with Ledger.open(postgres_db):
        pass  # created once, so both processes open an existing ledger
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_puller, args=(postgres_db, w, 6, queue)) for w in (0, 1)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert results == ["ok", "ok"]
    with Ledger.open(postgres_db) as ledger:
        rows = list(ledger.iter_rows())
    # every day holds exactly one answer per row: 31 days x 200 subscribers, never two counts added
    assert len(rows) == 31 * 200
    by_day: dict[str, set[int]] = {}
    for r in rows:
        i, d = int(r.subscriber[1:]), int(r.day[-2:])
        factor, rest = divmod(r.count, i + d) if i + d else (1, 0)
        assert rest == 0 and factor in (1, 2), r  # the last pull's counts (factor 2), never a sum
        by_day.setdefault(r.day, set()).add(factor)
    assert all(len(f) == 1 for f in by_day.values())  # one pull's answer per day, not a mix


def test_push_sync_and_billable_rows_are_the_same_on_both(ledger_location):
    from apimon_cli.ledger.sync import Claim, PushSync, billable_rows

    with Ledger.open(ledger_location) as ledger:
        ledger.replace_window("local", "gw", date(2026, 1, 1), date(2026, 1, 31), [
            UsageRow("a", "p", "2026-01-02", "total", 10), UsageRow("a", "p", "2026-01-02", "blocked", 3),
            UsageRow("b", "p", "2026-01-02", "total", 2), UsageRow("b", "p", "2026-01-02", "blocked", 5)])
        assert sorted(billable_rows(ledger, date(2026, 1, 1), date(2026, 1, 31), "total", "local", "gw")) == [
            ("2026-01-02", "a", "p", 7), ("2026-01-02", "b", "p", 0)]
        sync = PushSync(ledger, "lago", "meter@lago.test")
        key = ("local", "gw", "2026-01-02", "a", "p", "total")
        assert len(sync.claim([Claim(key, 0, "k1", 7, 7, None, "cus_1")], "T1")) == 1
        assert sync.claim([Claim(key, 0, "k1b", 7, 7, None, "cus_1")], "T1") == []  # claimed already
        sync.acknowledge([(key, "k1", 7, 7, "T2")])
        (row,) = sync.rows(None, None, "local", "gw")
        assert (row.destination, row.acked_count, row.revision, row.last_key, row.pending_key) == \
            ("cus_1", 7, 1, "k1", None)
        assert sync.destinations("local", "gw") == {"a": "cus_1"}
