"""The usage ledger: window replacement, crash safety, schema migrations, queries."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date

import pytest

from apimon_cli.ledger import SCHEMA_VERSION, Ledger, LedgerError, LedgerRow, UsageChange, UsageRevision
from apimon_cli.model import UsageRow

JAN = (date(2026, 1, 1), date(2026, 1, 31))
DEC = (date(2025, 12, 1), date(2025, 12, 31))


def row(sub: str, day: str, count: int, metric: str = "success", product: str = "gold") -> UsageRow:
    return UsageRow(subscriber=sub, product=product, day=day, metric=metric, count=count)


def stored(ledger: Ledger, start: date | None = None, end: date | None = None) -> list[tuple]:
    return [r[:7] for r in ledger.iter_rows(start, end)]  # without pulled_at


@pytest.fixture
def ledger(ledger_location):  # every test using it runs on SQLite and on PostgreSQL
    with Ledger.open(ledger_location) as opened:
        yield opened


# --- opening ---------------------------------------------------------------------------------------
def test_open_creates_parent_dirs_and_schema(tmp_path):
    path = tmp_path / "a" / "b" / "ledger.db"
    with Ledger.open(str(path)) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        assert list(ledger.iter_rows()) == []
    assert path.is_file()
    with Ledger.open(path) as again:  # reopening an existing ledger is a no-op
        assert again.schema_version == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def _create_v1(path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version VALUES (1);
        CREATE TABLE usage (
            provider TEXT NOT NULL, target TEXT NOT NULL, product TEXT NOT NULL, subscriber TEXT NOT NULL,
            day TEXT NOT NULL, metric TEXT NOT NULL, count INTEGER NOT NULL,
            PRIMARY KEY (provider, target, product, subscriber, day, metric)
        );
        INSERT INTO usage VALUES ('aws', 'acct', 'gold', 'acme', '2026-01-02', 'success', 10);
        INSERT INTO usage VALUES ('aws', 'acct', 'gold', 'acme', '2026-01-03', 'blocked', 2);
        INSERT INTO usage VALUES ('azure', 'svc', 'free', 'bob', '2025-12-30', 'success', 7);
        """
    )
    conn.commit()
    conn.close()


def test_v1_ledger_is_upgraded_in_place_keeping_rows(tmp_path):
    path = tmp_path / "old.db"
    _create_v1(path)
    with Ledger.open(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        assert list(ledger.iter_rows()) == [
            LedgerRow("azure", "svc", "2025-12-30", "bob", "free", "success", 7, None),
            LedgerRow("aws", "acct", "2026-01-02", "acme", "gold", "success", 10, None),
            LedgerRow("aws", "acct", "2026-01-03", "acme", "gold", "blocked", 2, None),
        ]
        # and the upgraded ledger works like a new one: the re-pull revises the migrated row
        report = ledger.replace_window("aws", "acct", *JAN, [row("acme", "2026-01-02", 11)])
        assert report.revised == [UsageRevision("acme", "gold", "2026-01-02", "success", 10, 11)]
        assert report.removed == [UsageChange("acme", "gold", "2026-01-03", "blocked", 2)]
    cols = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(usage)")]
    assert "pulled_at" in cols


def test_a_failing_migration_leaves_the_old_ledger_as_it_was(tmp_path, monkeypatch):
    from apimon_cli.ledger import store

    def half_then_fail(conn):
        store._migrate_1_to_2(conn)  # the rebuild has happened inside the transaction...
        raise RuntimeError("disk on fire")  # ...and then the migration dies

    path = tmp_path / "old.db"
    _create_v1(path)
    monkeypatch.setattr(store, "MIGRATIONS", [half_then_fail])
    with pytest.raises(RuntimeError):
        Ledger.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    assert conn.execute("SELECT count(*) FROM usage").fetchone() == (3,)
    assert "pulled_at" not in [r[1] for r in conn.execute("PRAGMA table_info(usage)")]
    conn.close()
    monkeypatch.undo()
    with Ledger.open(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION and len(list(ledger.iter_rows())) == 3


def test_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "new.db"
    with Ledger.open(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(LedgerError) as err:
        Ledger.open(path)
    assert str(err.value) == (
        f"ledger {path} was written by a newer apimon (schema {SCHEMA_VERSION + 1}; this apimon knows up to "
        f"{SCHEMA_VERSION}); upgrade apimon"
    )
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before


def test_non_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("subscriber,count\nacme,3\n" * 100)
    with pytest.raises(LedgerError, match="not a SQLite database"):
        Ledger.open(path)
    assert path.read_text().startswith("subscriber,count")


def test_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="not an apimon ledger"):
        Ledger.open(path)


def test_directory_is_refused(tmp_path):
    with pytest.raises(LedgerError, match="directory"):
        Ledger.open(tmp_path)


# --- replace_window ----------------------------------------------------------------------------------
def test_same_window_twice_never_adds(ledger):
    rows = [row("acme", "2026-01-01", 5), row("acme", "2026-01-02", 7), row("bob", "2026-01-02", 3)]
    first = ledger.replace_window("aws", "acct", *JAN, rows)
    assert first.new_count == 3 and not first.truncated
    before = ledger.totals(*JAN, "success")
    second = ledger.replace_window("aws", "acct", *JAN, iter(rows))
    assert ledger.totals(*JAN, "success") == before == {("acme", "gold"): 12, ("bob", "gold"): 3}
    assert (second.new, second.revised, second.removed, second.unchanged) == ([], [], [], 3)
    assert not second.changed


def test_revision_reports_old_and_new(ledger):
    ledger.replace_window("aws", "acct", *JAN, [row("acme", "2026-01-01", 5), row("acme", "2026-01-02", 7)])
    report = ledger.replace_window(
        "aws", "acct", *JAN, [row("acme", "2026-01-01", 5), row("acme", "2026-01-02", 9)], pulled_at="T2"
    )
    assert report.revised == [UsageRevision("acme", "gold", "2026-01-02", "success", 7, 9)]
    assert (report.new_count, report.revised_count, report.removed_count, report.unchanged) == (0, 1, 0, 1)
    assert ledger.totals(*JAN, "success") == {("acme", "gold"): 14}
    assert {r.pulled_at for r in ledger.iter_rows()} == {"T2"}  # the latest answer confirmed every row


def test_rows_missing_from_the_new_answer_are_removed_only_inside_the_window(ledger):
    ledger.replace_window("aws", "acct", *DEC, [row("acme", "2025-12-31", 4)])
    ledger.replace_window("aws", "other", *JAN, [row("acme", "2026-01-05", 8)])
    ledger.replace_window("azure", "acct", *JAN, [row("acme", "2026-01-05", 9)])
    ledger.replace_window(
        "aws", "acct", *JAN, [row("acme", "2026-01-05", 1), row("bob", "2026-01-06", 2, metric="blocked")]
    )
    report = ledger.replace_window("aws", "acct", *JAN, [row("acme", "2026-01-05", 1), row("carol", "2026-01-07", 3)])
    assert report.removed == [UsageChange("bob", "gold", "2026-01-06", "blocked", 2)]
    assert report.new == [UsageChange("carol", "gold", "2026-01-07", "success", 3)]
    assert stored(ledger) == [
        ("aws", "acct", "2025-12-31", "acme", "gold", "success", 4),
        ("aws", "acct", "2026-01-05", "acme", "gold", "success", 1),
        ("aws", "other", "2026-01-05", "acme", "gold", "success", 8),
        ("azure", "acct", "2026-01-05", "acme", "gold", "success", 9),
        ("aws", "acct", "2026-01-07", "carol", "gold", "success", 3),
    ]
    # an empty answer empties the window, and only the window
    report = ledger.replace_window("aws", "acct", date(2026, 1, 7), date(2026, 1, 7), [])
    assert report.removed_count == 1
    assert ("aws", "acct", "2026-01-05", "acme", "gold", "success", 1) in stored(ledger)


@pytest.mark.parametrize(
    "bad, message",
    [
        (row("acme", "2026-02-01", 1), "inside the pulled window"),
        (row("acme", "2025-12-31", 1), "inside the pulled window"),
        (row("acme", "2026-1-05", 1), "inside the pulled window"),
        (row("acme", "yesterday", 1), "inside the pulled window"),
        (row("acme", "2026-01-05", 1, metric="errors"), "unknown metric"),
        (row("acme", "2026-01-05", -1), "integer >= 0"),
        (row("acme", "2026-01-05", 1.5), "integer >= 0"),  # type: ignore[arg-type]
        (row("acme", "2026-01-05", True), "integer >= 0"),  # type: ignore[arg-type]
        (row("acme", "2026-01-01", 99), "twice"),
    ],
)
@pytest.mark.parametrize("occupied", [False, True], ids=["empty-window", "stored-window"])
def test_invalid_rows_are_rejected_and_nothing_is_written(ledger, bad, message, occupied):
    if occupied:
        ledger.replace_window("aws", "acct", *JAN, [row("old", "2026-01-09", 1)])
    before = list(ledger.iter_rows())
    good = [row("acme", "2026-01-01", 1), row("acme", "2026-01-02", 2)]
    with pytest.raises(ValueError, match=message):
        ledger.replace_window("aws", "acct", *JAN, [*good, bad])
    assert list(ledger.iter_rows()) == before
    assert ledger.replace_window("aws", "acct", *JAN, good).new_count == 2  # still usable


def test_bad_windows_are_rejected(ledger):
    with pytest.raises(ValueError, match="before its start"):
        ledger.replace_window("aws", "acct", date(2026, 1, 2), date(2026, 1, 1), [])
    with pytest.raises(ValueError, match="non-empty"):
        ledger.replace_window("aws", "", *JAN, [])


def test_quotes_in_provider_and_target_are_stored_verbatim(ledger):
    ledger.replace_window("local", "it's; DROP TABLE usage; --", *JAN, [row("acme", "2026-01-01", 1)])
    assert [r.target for r in ledger.iter_rows()] == ["it's; DROP TABLE usage; --"]



ODD = ["tab\there", "new\nline", "cr\rhere", "back\\slash", r"\N", "\\.", "50% off %s", "naïve 日本", "{0}"]


@pytest.mark.parametrize("target", ["acct", "t\\a\tb%s"])
@pytest.mark.parametrize("occupied", [False, True], ids=["empty-window", "stored-window"])
def test_any_text_in_names_is_stored_verbatim(ledger, occupied, target):
    # PostgreSQL: such chunks (or all, for such a target) leave the preformatted COPY path for psycopg's
    # escaping: the same rows either way
    if occupied:
        ledger.replace_window("local", target, *JAN, [row("old", "2026-01-09", 1)])
    plain = [row(f"s{i:04d}", "2026-01-02", i) for i in range(5000)]  # more than one chunk, all plain
    odd = [row(name, "2026-01-03", i, product=name) for i, name in enumerate(ODD)]
    report = ledger.replace_window("local", target, *JAN, [*plain, *odd])
    assert report.new_count == len(plain) + len(odd)
    got = {(r.target, r.subscriber, r.product, r.count) for r in ledger.iter_rows()}
    assert got == {(target, r.subscriber, r.product, r.count) for r in [*plain, *odd]}
    assert ledger.first_seen("local", target)[("back\\slash", "back\\slash")] == (date(2026, 1, 3), "ledger")


def test_report_details_are_capped_but_counts_exact(ledger):
    rows = [row(f"s{i:03d}", "2026-01-01", i) for i in range(50)]
    report = ledger.replace_window("aws", "acct", *JAN, rows, detail_limit=10)
    assert report.new_count == 50 and len(report.new) == 10 and report.truncated
    assert report.new[0] == UsageChange("s000", "gold", "2026-01-01", "success", 0)
    report = ledger.replace_window("aws", "acct", *JAN, [r for r in rows if r.count % 2], detail_limit=10)
    assert report.removed_count == 25 and len(report.removed) == 10


# --- queries -------------------------------------------------------------------------------------
@pytest.fixture
def filled(ledger):
    ledger.replace_window(
        "aws",
        "acct",
        *JAN,
        [
            row("acme", "2026-01-03", 10),
            row("acme", "2026-01-03", 4, metric="blocked"),
            row("acme", "2026-01-04", 5, product="free"),
            row("bob", "2026-01-20", 0),
            row("bob", "2026-01-21", 6),
        ],
    )
    ledger.replace_window("azure", "svc", *DEC, [row("acme", "2025-12-30", 100)])
    return ledger


def test_totals(filled):
    assert filled.totals(*JAN, "success") == {("acme", "gold"): 10, ("acme", "free"): 5, ("bob", "gold"): 6}
    assert filled.totals(*JAN, "blocked") == {("acme", "gold"): 4}
    assert filled.totals(date(2025, 12, 1), date(2026, 1, 3), "success") == {("acme", "gold"): 110}
    assert filled.totals(date(2025, 12, 1), date(2026, 1, 3), "success", provider="azure") == {("acme", "gold"): 100}
    assert filled.totals(*JAN, "success", target="nope") == {}
    with pytest.raises(ValueError, match="unknown metric"):
        filled.totals(*JAN, "calls")


def test_first_days(filled):
    assert filled.first_days() == {"acme": date(2025, 12, 30), "bob": date(2026, 1, 21)}
    assert filled.first_days(provider="aws") == {"acme": date(2026, 1, 3), "bob": date(2026, 1, 21)}


def test_iter_rows_order_and_bounds(filled):
    rows = list(filled.iter_rows(date(2026, 1, 3), date(2026, 1, 20)))
    assert [(r.day, r.subscriber, r.product, r.metric) for r in rows] == [
        ("2026-01-03", "acme", "gold", "blocked"),
        ("2026-01-03", "acme", "gold", "success"),
        ("2026-01-04", "acme", "free", "success"),
        ("2026-01-20", "bob", "gold", "success"),
    ]
    assert next(filled.iter_rows(None, None)).day == "2025-12-30"


def test_iter_rows_streams_in_batches(ledger):
    rows = [row(f"s{i:05d}", "2026-01-01", i) for i in range(5000)]
    ledger.replace_window("aws", "acct", *JAN, rows)
    it = ledger.iter_rows()
    assert next(it).count == 0  # lazy: a generator, rows fetched in batches
    assert sum(1 for _ in it) == 4999


def test_pull_while_iterating_the_same_ledger(ledger):
    ledger.replace_window("aws", "acct", *DEC, [row(f"s{i:05d}", "2025-12-01", i) for i in range(3000)])
    it = ledger.iter_rows()
    next(it)  # a cursor of this connection stays open
    for _ in range(2):  # fast path, then diff path
        ledger.replace_window("aws", "acct", *JAN, [row("acme", "2026-01-01", 1)])
    # SQLite leaves it undefined whether a cursor sees its own connection's later writes; what matters
    # is that neither side fails
    assert sum(1 for _ in it) in (2999, 3000)
    assert len(list(ledger.iter_rows())) == 3001


def test_summary(filled):
    by_sub = filled.summary(*JAN, by="subscriber")
    assert by_sub == [
        ("acme", {"success": 15, "blocked": 4, "failed": 0, "other": 0, "total": 0}),
        ("bob", {"success": 6, "blocked": 0, "failed": 0, "other": 0, "total": 0}),
    ]
    assert filled.summary(None, None, by="product", metric="success") == [
        ("free", {"success": 5}),
        ("gold", {"success": 116}),
    ]
    assert [k for k, _ in filled.summary(*JAN, by="day")] == [
        "2026-01-03",
        "2026-01-04",
        "2026-01-20",
        "2026-01-21",
    ]
    with pytest.raises(ValueError):
        filled.summary(*JAN, by="metric")


# --- concurrency ---------------------------------------------------------------------------------
def test_a_pull_waits_for_another_writer(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO usage VALUES ('2026-01-02', 'aws', 'x', 's', 'p', 'success', 1, NULL)")
        threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
        t0 = time.monotonic()
        report = ledger.replace_window("aws", "acct", *JAN, [row("acme", "2026-01-01", 1)])
        assert time.monotonic() - t0 >= 0.4  # it waited for the lock instead of failing
        assert report.new_count == 1
        assert len(list(ledger.iter_rows())) == 2
        other.close()


def test_a_writer_holding_the_lock_too_long_gives_a_clear_error(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger.open(path, timeout=0.2) as ledger:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(LedgerError, match="is busy"):
            ledger.replace_window("aws", "acct", *JAN, [row("acme", "2026-01-01", 1)])
        other.execute("ROLLBACK")
        other.close()
        assert ledger.replace_window("aws", "acct", *JAN, [row("acme", "2026-01-01", 1)]).new_count == 1


PULL_SCRIPT = textwrap.dedent(
    """
    import sys
    from datetime import date
    from apimon_cli.ledger import Ledger
    from apimon_cli.model import UsageRow
    path, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rows = (UsageRow(f"s{i:06d}", "gold", f"2026-01-{i % 28 + 1:02d}", "success", i) for i in range(n))
    with Ledger.open(path) as ledger:
        ledger.replace_window("aws", target, date(2026, 1, 1), date(2026, 1, 31), rows)
    """
)


def test_two_processes_pulling_at_once(tmp_path):
    path = tmp_path / "ledger.db"
    procs = [
        subprocess.Popen([sys.executable, "-c", PULL_SCRIPT, str(path), target, "40000"], stderr=subprocess.PIPE)
        for target in ("east", "west")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    with Ledger.open(path) as ledger:
        expected = sum(range(40000))
        assert sum(ledger.totals(*JAN, "success", target="east").values()) == expected
        assert sum(ledger.totals(*JAN, "success", target="west").values()) == expected


# --- crash safety --------------------------------------------------------------------------------
KILLED_PULL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from datetime import date
    from apimon_cli.ledger import Ledger
    from apimon_cli.model import UsageRow
    path, mode = sys.argv[1], sys.argv[2]
    ledger = Ledger.open(path)
    ledger._conn.execute("PRAGMA cache_size = 20")  # tiny cache: the pull's pages spill to disk early
    if mode == "apply":  # say when the stored window starts being rewritten
        def trace(sql, said=[]):
            if not said and (sql.startswith("DELETE FROM usage") or sql.startswith("INSERT INTO usage")):
                said.append(1)
                print("WRITING", flush=True)
        ledger._conn.set_trace_callback(trace)
    def rows():
        for i in range(150_000):
            yield UsageRow(f"s{i:06d}", "gold", f"2026-01-{i % 28 + 1:02d}", "success", 1000 + i)
        if mode == "block":
            print("WRITING", flush=True)
            time.sleep(600)
    ledger.replace_window("aws", "acct", date(2026, 1, 1), date(2026, 1, 31), rows())
    print("COMMITTED", flush=True)
    """
)


def _kill_mid_pull(path, mode: str, delay: float = 0.0, while_blocked=None) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PULL_SCRIPT, str(path), mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        time.sleep(delay)
        if while_blocked:
            while_blocked()
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # a pull that finished before the signal landed is fine for the old-or-new test ("COMMITTED")
    assert proc.returncode == -signal.SIGKILL or (mode == "apply" and "COMMITTED" in out)
    return out


@pytest.mark.parametrize("stored_window", [False, True], ids=["empty-window", "stored-window"])
def test_pull_killed_mid_way_leaves_the_old_window(tmp_path, stored_window):
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        ledger.replace_window("aws", "acct", *DEC, [row("acme", "2025-12-31", 4)])
        if stored_window:
            ledger.replace_window("aws", "acct", *JAN, [row("acme", "2026-01-05", 1), row("bob", "2026-01-06", 2)])
        old = list(ledger.iter_rows())

    def other_pull_meanwhile():
        # 150,000 rows are in and the source is stuck (a slow gateway): the ledger is not locked
        with Ledger.open(path, timeout=2) as other:
            other.replace_window("azure", "svc", *JAN, [row("dave", "2026-01-08", 5)], pulled_at="T")

    _kill_mid_pull(path, "block", while_blocked=other_pull_meanwhile)
    with Ledger.open(path) as ledger:
        assert ledger._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert list(ledger.iter_rows(provider="aws")) == old
        assert [r[:7] for r in ledger.iter_rows(provider="azure")] == [
            ("azure", "svc", "2026-01-08", "dave", "gold", "success", 5)
        ]
        # and the ledger still takes pulls
        assert ledger.replace_window("aws", "acct", *JAN, [row("carol", "2026-01-07", 3)]).new_count == 1


@pytest.mark.parametrize("delay", [0.0, 0.1])
@pytest.mark.parametrize("stored_window", [False, True], ids=["empty-window", "stored-window"])
def test_pull_killed_while_applying_leaves_old_or_new_never_a_mix(tmp_path, delay, stored_window):
    path = tmp_path / "ledger.db"
    old_rows = [row(f"s{i:06d}", f"2026-01-{i % 28 + 1:02d}", i) for i in range(0, 200_000, 2)]
    with Ledger.open(path) as ledger:
        ledger.replace_window("aws", "acct", *DEC, [row("acme", "2025-12-31", 4)])
        if stored_window:  # the child goes down the diff path, else the fast path
            ledger.replace_window("aws", "acct", *JAN, old_rows)
        old = stored(ledger, *JAN)
    out = _kill_mid_pull(path, "apply", delay)
    with Ledger.open(path) as ledger:
        assert ledger._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        now = stored(ledger, *JAN)
        assert stored(ledger, *DEC) == [("aws", "acct", "2025-12-31", "acme", "gold", "success", 4)]
    new_total = sum(1000 + i for i in range(150_000))
    if "COMMITTED" in out or now != old:
        assert len(now) == 150_000 and sum(r[6] for r in now) == new_total
    else:
        assert now == old


def test_v2_ledger_gains_the_push_sync_table_keeping_its_rows(tmp_path):
    path = tmp_path / "v2.db"
    with Ledger.open(path) as ledger:
        ledger.replace_window("aws", "acct", *JAN, [row("acme", "2026-01-02", 11)])
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE push_sync")
    conn.execute("UPDATE schema_version SET version = 2")
    conn.commit()
    conn.close()
    with Ledger.open(path) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION
        assert [r.count for r in ledger.iter_rows()] == [11]
    tables = {n for (n,) in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "push_sync" in tables


def test_first_seen_record_of_a_pull_is_its_rows_earliest_day_with_usage(ledger):
    # gathered from the answer while it streams in: the same as min(day) over the stored rows, count > 0
    days = [f"2026-01-{d:02d}" for d in (17, 3, 9, 28, 5, 12)]  # not in order
    rows = [row(f"s{i:03d}", day, (i * 7 + j) % 3, product=("gold", "silver")[i % 2])
            for j, day in enumerate(days) for i in range(700)]  # more than a chunk (4096 rows)

    def recorded() -> dict:
        return {(s, p): (d, src) for s, p, d, src in ledger._conn.execute(
            "SELECT subscriber, product, first_day, source FROM first_seen WHERE provider = 'aws'")}

    def from_rows() -> dict:
        return {(s, p): (d, "ledger") for s, p, d in ledger._conn.execute(
            "SELECT subscriber, product, min(day) FROM usage WHERE count > 0 GROUP BY subscriber, product")}

    ledger.replace_window("aws", "acct", *JAN, rows)
    assert recorded() == from_rows() and len(recorded()) == 700
    # a re-pull with usage earlier for some, later (only) for others: dates move earlier, never later
    moved = [row(r.subscriber, "2026-01-02" if r.subscriber < "s100" else "2026-01-30", 1, product=r.product)
             for r in rows[:700]]
    before = recorded()
    ledger.replace_window("aws", "acct", *JAN, moved)
    after = recorded()
    assert all(after[k][0] == "2026-01-02" for k in after if k[0] < "s100")
    assert all(after[k] == before[k] for k in after if k[0] >= "s100")
