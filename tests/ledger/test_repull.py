"""Issue 19: a repeated pull of an unchanged window writes nothing (the window's digest), and revisions stay
exact: a changed answer, or a window another pull changed since, goes through the full merge."""

from __future__ import annotations

import sqlite3
from datetime import date

from apimon_cli.ledger import Ledger, UsageRevision
from apimon_cli.model import UsageRow

FEB = (date(2026, 2, 1), date(2026, 2, 28))
T1, T2, T3, T4 = "2026-03-01T00:00:00+00:00", "2026-03-02T00:00:00+00:00", "2026-03-03T00:00:00+00:00", \
    "2026-03-04T00:00:00+00:00"


def answer(changed: dict[tuple[str, str], int] | None = None, drop: set[tuple[str, str]] = frozenset()):
    rows = []
    for d in range(1, 29):
        day = f"2026-02-{d:02d}"
        for s in range(30):
            sub = f"s{s:03d}"
            if (sub, day) in drop:
                continue
            rows.append(UsageRow(sub, "gold", day, "success", (changed or {}).get((sub, day), s + d)))
    return rows


def pulled_ats(path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT DISTINCT pulled_at FROM usage")}
    finally:
        conn.close()


def test_a_repeated_pull_of_an_unchanged_window_writes_nothing(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        first = ledger.replace_window("local", "t", *FEB, answer(), pulled_at=T1)
        assert first.new_count == 840
        again = ledger.replace_window("local", "t", *FEB, answer(), pulled_at=T2)
        assert (again.new_count, again.revised_count, again.removed_count, again.unchanged) == (0, 0, 0, 840)
        assert not again.changed
    assert pulled_ats(path) == {T1}  # no row rewritten
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT pulled_at, rows FROM pull_windows").fetchall() == [(T2, 840)]


def test_a_revised_answer_is_merged_with_exact_revisions(tmp_path):
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        ledger.replace_window("local", "t", *FEB, answer(), pulled_at=T1)
        revised = ledger.replace_window("local", "t", *FEB, answer({("s007", "2026-02-10"): 1000},
                                                                     drop={("s001", "2026-02-02")}), pulled_at=T2)
        assert revised.revised == [UsageRevision("s007", "gold", "2026-02-10", "success", 17, 1000)]
        assert (revised.revised_count, revised.removed_count, revised.unchanged) == (1, 1, 838)
        stored = {(r.subscriber, r.day): r.count for r in ledger.iter_rows(*FEB)}
        assert stored[("s007", "2026-02-10")] == 1000 and ("s001", "2026-02-02") not in stored
        # the same revised answer again: the shortcut
        same = ledger.replace_window("local", "t", *FEB, answer({("s007", "2026-02-10"): 1000},
                                                                  drop={("s001", "2026-02-02")}), pulled_at=T3)
        assert (same.revised_count, same.new_count, same.removed_count, same.unchanged) == (0, 0, 0, 839)


def test_a_window_changed_by_an_overlapping_pull_is_merged_again(tmp_path):
    # Feb pulled; the gateway revises Feb 10 and only Feb 10 is pulled; the gateway reverts it: the Feb
    # answer is byte for byte the first one, but the ledger holds the revision: it must be merged back
    day = (date(2026, 2, 10), date(2026, 2, 10))
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        ledger.replace_window("local", "t", *FEB, answer(), pulled_at=T1)
        ten = [r for r in answer({("s003", "2026-02-10"): 99}) if r.day == "2026-02-10"]
        assert ledger.replace_window("local", "t", *day, ten, pulled_at=T2).revised_count == 1
        back = ledger.replace_window("local", "t", *FEB, answer(), pulled_at=T3)
        assert back.revised == [UsageRevision("s003", "gold", "2026-02-10", "success", 99, 13)]
        assert {(r.subscriber, r.day): r.count for r in ledger.iter_rows(*day)}[("s003", "2026-02-10")] == 13
        # another target's windows are not affected
        assert ledger.replace_window("local", "other", *FEB, answer(), pulled_at=T3).new_count == 840
        assert ledger.replace_window("local", "t", *FEB, answer(), pulled_at=T4).unchanged == 840
