"""Schema 4: counts fed from the event stream, with offsets and event ids in the same transaction."""

from __future__ import annotations

import sqlite3
from datetime import date

import pytest

from apimon_cli.ledger import SCHEMA_VERSION, Ledger
from apimon_cli.ledger.stream import stream_target
from apimon_cli.model import UsageRow

TOPIC = "apimon.events"


def item(p, off, eid, sub="acme", metric="success", day="2026-11-30"):
    return (p, off, eid, day, sub, "pro", metric)


def counts(ledger, target=stream_target(TOPIC)):
    return {(r.day, r.subscriber, r.metric): r.count for r in ledger.iter_rows(target=target)}


def test_a_schema_3_ledger_gains_the_stream_tables(tmp_path):
    path = tmp_path / "v3.db"
    with Ledger.open(path):
        pass
    conn = sqlite3.connect(path)  # make it look like schema 3: drop what 4 added
    conn.executescript("DROP TABLE stream_offsets; DROP TABLE stream_event_ids; UPDATE schema_version SET version = 3;")
    conn.commit()
    conn.close()
    with Ledger.open(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        assert ledger.stream_offsets(TOPIC) == {}


def test_offsets_and_ids_make_ingest_exactly_once(ledger_location):
    with Ledger.open(ledger_location) as ledger:
        batch = [item(0, 0, "a"), item(0, 1, "b", metric="blocked"), item(1, 0, "c"), item(1, 1, None)]
        assert ledger.ingest_stream(TOPIC, batch, {0: 2, 1: 2}) == (3, 0, 0)
        want = {("2026-11-30", "acme", "success"): 2, ("2026-11-30", "acme", "blocked"): 1,
                ("2026-11-30", "acme", "total"): 3}
        assert counts(ledger) == want
        assert ledger.stream_offsets(TOPIC) == {0: 2, 1: 2}
        # the same messages again (a re-read from the start): skipped by offset
        assert ledger.ingest_stream(TOPIC, batch, {0: 2, 1: 2}) == (0, 0, 4)
        # a producer retry: the same event id at a new offset, counted once
        assert ledger.ingest_stream(TOPIC, [item(0, 2, "a"), item(0, 3, "d")], {0: 4}) == (1, 1, 0)
        assert counts(ledger)[("2026-11-30", "acme", "total")] == 4
        # a duplicate inside one batch
        assert ledger.ingest_stream(TOPIC, [item(1, 2, "e"), item(1, 3, "e")], {1: 4}) == (1, 1, 0)
        assert ledger.stream_offsets(TOPIC) == {0: 4, 1: 4}


def test_a_failed_ingest_changes_nothing(ledger_location):
    with Ledger.open(ledger_location) as ledger:
        ledger.ingest_stream(TOPIC, [item(0, 0, "a")], {0: 1})
        with pytest.raises(sqlite3.Error):  # a row the usage table rejects (NULL subscriber) fails the batch
            ledger.ingest_stream(TOPIC, [item(0, 1, "b"), (0, 2, "c", "2026-11-30", None, "pro", "success")], {0: 3})
        assert ledger.stream_offsets(TOPIC) == {0: 1}
        assert counts(ledger)[("2026-11-30", "acme", "total")] == 1


def test_pulls_and_stream_rows_never_touch_each_other(ledger_location):
    with Ledger.open(ledger_location) as ledger:
        ledger.ingest_stream(TOPIC, [item(0, 0, "a"), item(0, 1, "b")], {0: 2})
        # a pull of the same provider, day and subscriber replaces only its own target's window
        report = ledger.replace_window("local", "/srv/state", date(2026, 11, 1), date(2026, 11, 30),
                                       [UsageRow("acme", "pro", "2026-11-30", "success", 7)])
        assert report.new_count == 1 and report.removed_count == 0
        assert counts(ledger)[("2026-11-30", "acme", "success")] == 2
        ledger.replace_window("local", "/srv/state", date(2026, 11, 1), date(2026, 11, 30), [])
        assert counts(ledger)[("2026-11-30", "acme", "success")] == 2
        assert counts(ledger, "/srv/state") == {}


def test_old_event_ids_are_pruned_by_event_time(ledger_location):
    with Ledger.open(ledger_location) as ledger:
        ledger.ingest_stream(TOPIC, [item(0, 0, "old", day="2026-11-01"), item(0, 1, "new", day="2026-11-20")],
                             {0: 2})
        assert ledger.prune_stream_ids() == 1  # 19 days before the newest event day
        assert ledger.prune_stream_ids() == 0
