"""Schema 6: the persisted first-seen date per subscriber and product (the setup fee's "first recorded usage")."""

from __future__ import annotations

import sqlite3
from datetime import date

from apimon_cli.ledger import SCHEMA_VERSION, Ledger
from apimon_cli.ledger.stream import stream_target
from apimon_cli.ledger.sync import Claim, PushSync
from apimon_cli.model import UsageRow

NOV = (date(2026, 11, 1), date(2026, 11, 30))


def row(sub, day, count, product="pro", metric="success"):
    return UsageRow(sub, product, day, metric, count)


def test_a_schema_5_ledger_with_push_and_stream_rows_migrates_and_backfills(tmp_path):
    path = tmp_path / "v5.db"
    with Ledger.open(path) as book:
        book.replace_window("local", "gw", *NOV, [row("acme", "2026-11-03", 5), row("acme", "2026-11-09", 2),
                                                  row("zero", "2026-11-04", 0)])
        book.ingest_stream("t", [(0, 0, "e1", "2026-10-30", "beta", "basic", "success")], {0: 1})
        sync = PushSync(book, "lago", "m@h")
        key = ("local", "gw", "2026-11-03", "acme", "pro", "success")
        assert sync.claim([Claim(key, 0, "k1", 5, 5, None, "sub_acme")], "2026-11-04T00:00:00+00:00")
    conn = sqlite3.connect(path)  # make it look like schema 5: drop what 6 added
    conn.executescript("DROP TABLE first_seen; UPDATE schema_version SET version = 5;")
    conn.close()
    with Ledger.open(path) as book:
        assert book.schema_version == SCHEMA_VERSION
        assert book.first_seen("local", "gw") == {("acme", "pro"): (date(2026, 11, 3), "ledger")}
        assert book.first_seen("local", stream_target("t")) == {("beta", "basic"): (date(2026, 10, 30), "ledger")}
        assert book.stream_offsets("t") == {0: 1}  # the stream and push tables are untouched
        assert [r.pending_key for r in PushSync(book, "lago", "m@h").rows(None, None, "local", "gw")] == ["k1"]
    backfilled = sqlite3.connect(path).execute("SELECT subscriber, first_day, recorded_at FROM first_seen"
                                               " ORDER BY subscriber").fetchall()
    assert backfilled == [("acme", "2026-11-03", None), ("beta", "2026-10-30", None)]


def test_first_seen_survives_a_pull_that_removes_the_rows_and_only_moves_earlier(tmp_path):
    with Ledger.open(tmp_path / "l.db") as book:
        book.replace_window("aws", "acct", *NOV, [row("acme", "2026-11-03", 5)])
        # the gateway revised the window: the 3rd is gone, usage on the 20th
        book.replace_window("aws", "acct", *NOV, [row("acme", "2026-11-20", 1)])
        assert book.first_seen("aws", "acct") == {("acme", "pro"): (date(2026, 11, 3), "ledger")}
        assert book.seen_before(date(2026, 11, 10), "aws", "acct") == {"acme"}  # not from the rows: from the record
        assert book.first_days("aws", "acct") == {"acme": date(2026, 11, 3)}
        # the gateway's history knows older usage: it moves the date earlier, never later
        assert book.record_first_seen("aws", "acct", [("acme", "pro", "2026-09-14"), ("new", "pro", "2026-12-01")]) == 2
        assert book.record_first_seen("aws", "acct", [("acme", "pro", "2026-10-01")]) == 0
        assert book.first_seen("aws", "acct")[("acme", "pro")] == (date(2026, 9, 14), "gateway")
        assert book.has_history("aws", "acct") and not book.has_history("aws", "other")


def test_history_given_to_a_pull_is_committed_with_it(tmp_path):
    with Ledger.open(tmp_path / "l.db") as book:
        book.replace_window("local", "gw", *NOV, [row("acme", "2026-11-03", 5)],
                            history=[("acme", "pro", "2026-08-01"), ("acme", "basic", "2026-07-01")])
        assert book.first_seen("local", "gw") == {("acme", "pro"): (date(2026, 8, 1), "gateway"),
                                                  ("acme", "basic"): (date(2026, 7, 1), "gateway")}
        assert book.has_usage(None, date(2026, 10, 31), "local", "gw", first_seen=True)
        assert not book.has_usage(None, date(2026, 10, 31), "local", "gw")


def test_events_consume_records_first_seen_and_never_moves_it_later(tmp_path):
    target = stream_target("t")
    with Ledger.open(tmp_path / "l.db") as book:
        book.ingest_stream("t", [(0, 0, "e1", "2026-11-20", "acme", "pro", "success")], {0: 1})
        book.ingest_stream("t", [(0, 1, "e2", "2026-11-02", "acme", "pro", "success"),
                                 (0, 2, "e3", "2026-11-25", "beta", "pro", "success")], {0: 3})
        book.ingest_stream("t", [(0, 3, "e4", "2026-11-28", "acme", "pro", "success")], {0: 4})
        stored = book._conn.execute("SELECT subscriber, first_day FROM first_seen WHERE target = ?"
                                    " ORDER BY subscriber", (target,)).fetchall()
        assert stored == [("acme", "2026-11-02"), ("beta", "2026-11-25")]
