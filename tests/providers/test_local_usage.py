"""Issue 21: local usage pull reads a window through a day-first covering index (O(window), not O(history));
existing state files gain the index when opened."""

from __future__ import annotations

import sqlite3
from datetime import date

from apimon_cli.model import Billing, DesiredState, Target
from apimon_cli.providers.local.provider import LocalProvider
from apimon_cli.providers.local.state import SCHEMA_VERSION, connect_state

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE products (id TEXT PRIMARY KEY, owner TEXT, spec TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE subscribers (
    id TEXT PRIMARY KEY, owner TEXT, product TEXT NOT NULL, email TEXT, enabled INTEGER NOT NULL,
    api_key TEXT NOT NULL UNIQUE, metadata TEXT NOT NULL DEFAULT '{}', updated_at TEXT NOT NULL);
CREATE TABLE usage (
    subscriber TEXT NOT NULL, product TEXT NOT NULL, day TEXT NOT NULL, metric TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (subscriber, product, day, metric));
CREATE TABLE quota_counters (
    subscriber TEXT NOT NULL, window TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (subscriber, window));
INSERT INTO meta VALUES ('schema_version', '1'), ('revision', '7');
"""


def _v1_state(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / "state.db")
    conn.executescript(V1_SCHEMA)
    conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)",
                     [(f"s{s}", "gold", f"2026-{m:02d}-{d:02d}", metric, s * 100 + d)
                      for s in range(3) for m in (1, 2) for d in range(1, 29) for metric in ("success", "total")])
    conn.commit()
    conn.close()
    return state


def _provider(state) -> LocalProvider:
    desired = DesiredState(target=Target(provider="local", settings={"state_dir": str(state)},
                                         base_dir=str(state.parent)), billing=Billing(), products={}, subscribers={})
    return LocalProvider(desired)


def test_a_v1_state_file_gains_the_day_index_and_keeps_its_rows(tmp_path):
    state = _v1_state(tmp_path)
    conn = connect_state(state)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone() == ("7",)
    assert conn.execute("SELECT count(*) FROM usage").fetchone() == (3 * 2 * 28 * 2,)
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(usage)")}
    assert "usage_by_day" in indexes
    conn.close()
    connect_state(state).close()  # opening again migrates nothing more


def test_pull_reads_only_the_window_through_the_index_in_key_order(tmp_path):
    state = _v1_state(tmp_path)
    provider = _provider(state)
    try:
        rows = list(provider.pull_usage(date(2026, 2, 3), date(2026, 2, 4)))
        plan = " ".join(r[-1] for r in provider.conn.execute(
            "EXPLAIN QUERY PLAN SELECT subscriber, product, day, metric, count FROM usage INDEXED BY usage_by_day "
            "WHERE day BETWEEN ? AND ? ORDER BY day, subscriber, product, metric", ("2026-02-03", "2026-02-04")))
    finally:
        provider.close()
    assert "COVERING INDEX usage_by_day" in plan and "TEMP B-TREE" not in plan
    assert len(rows) == 2 * 3 * 2
    assert rows == sorted(rows, key=lambda r: (r.day, r.subscriber, r.product, r.metric))
    assert {r.day for r in rows} == {"2026-02-03", "2026-02-04"}
    first = rows[0]
    assert (first.subscriber, first.product, first.day, first.metric, first.count) == \
        ("s0", "gold", "2026-02-03", "success", 3)
