"""apimon billing push, in process: the engine and the real vendor clients against the contract fakes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from push_helpers import days_back, fill, load, today, write_plan

from apimon_cli.billing.push import run_push
from apimon_cli.billing.push.vendors import make_client
from apimon_cli.ledger import Ledger

VENDORS = ("stripe", "lago", "openmeter")


def totals(fakes, vendor: str) -> dict[str, int]:
    """Vendor totals keyed by subscriber id."""
    if vendor == "stripe":
        raw = fakes["stripe"].totals("api_requests")
        return {k.removeprefix("cus_"): v for k, v in raw.items() if v}
    if vendor == "lago":
        return {k.removeprefix("sub_"): v for k, v in fakes["lago"].totals("api_requests", "requests").items() if v}
    return {k: v for k, v in fakes["openmeter"].totals("api_requests", "requests").items() if v}


def ledger_totals(book: Ledger, start: date, end: date) -> dict[str, int]:
    out: dict[str, int] = {}
    for (sub, _prod), n in book.totals(start, end, "success", "local", "local").items():
        if n:
            out[sub] = out.get(sub, 0) + n
    return out


def push(book, desired, vendor, start, end, now=None):
    sink = desired.billing.sink(vendor)
    return run_push(book, desired, sink, "local", "local", start, end, make_client(sink), now=now)


@pytest.fixture
def setup(tmp_path, fakes, allow):
    days = days_back(5)
    rows = {(sub, prod, d): 10 * (i + 1) + j for j, (sub, prod) in enumerate(
        [("acme", "pro"), ("initech", "pro"), ("hooli", "basic")]) for i, d in enumerate(days)}
    book = Ledger.open(tmp_path / "ledger.db")
    fill(book, rows, days[0], days[-1])
    desired = load(write_plan(tmp_path, fakes), allow)
    yield book, desired, date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    book.close()


@pytest.mark.parametrize("vendor", VENDORS)
def test_push_twice_nothing_doubles_and_blocked_calls_are_never_sent(setup, fakes, vendor):
    book, desired, start, end = setup
    first = push(book, desired, vendor, start, end)
    assert first.ok and first.sent == 15 and first.corrected == 0
    assert totals(fakes, vendor) == ledger_totals(book, start, end)  # success only: blocked (3 a row) never
    second = push(book, desired, vendor, start, end)
    assert second.ok and second.sent == second.corrected == second.already == 0 and second.requests == 0
    assert totals(fakes, vendor) == ledger_totals(book, start, end)


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_revised_day_up_and_down_is_corrected_never_double_counted(setup, fakes, vendor):
    book, desired, start, end = setup
    push(book, desired, vendor, start, end)
    day = start.isoformat()
    fill(book, {("acme", "pro", day): 500, ("initech", "pro", day): 1}, day, day)  # hooli's day gone: 0
    report = push(book, desired, vendor, start, end)
    assert report.ok and report.corrected == 3 and report.sent == 0
    assert totals(fakes, vendor) == ledger_totals(book, start, end)
    fill(book, {("acme", "pro", day): 7, ("initech", "pro", day): 1, ("hooli", "basic", day): 2}, day, day)
    report = push(book, desired, vendor, start, end)
    assert report.ok and report.corrected == 2
    assert totals(fakes, vendor) == ledger_totals(book, start, end)


def test_stripe_corrects_within_24h_by_cancel_and_after_by_difference(setup, fakes):
    book, desired, start, end = setup
    stripe = fakes["stripe"]
    push(book, desired, "stripe", start, end)
    day = start.isoformat()
    fill(book, {("acme", "pro", day): 99}, day, day)
    push(book, desired, "stripe", start, end)
    assert len(stripe.adjustments) == 3  # acme's revised day and the two that disappeared: cancelled, not added
    cancelled = [e for e in stripe.events.values() if e.canceled]
    assert {e.customer for e in cancelled} == {"cus_acme", "cus_initech", "cus_hooli"}
    assert totals(fakes, "stripe") == ledger_totals(book, start, end)
    # 25 hours later Stripe cannot cancel any more: the correction is the difference, as a (negative) event
    later = datetime.now(UTC) + timedelta(hours=25)
    stripe.clock_offset = 25 * 3600
    fill(book, {("acme", "pro", day): 40}, day, day)
    report = push(book, desired, "stripe", start, end, now=later)
    assert report.ok and report.corrected == 1 and len(stripe.adjustments) == 3
    assert any(e.value == -59 for e in stripe.events.values())
    assert totals(fakes, "stripe") == ledger_totals(book, start, end)


def test_stripe_rows_older_than_35_days_are_reported_not_pushable(tmp_path, fakes, allow):
    old = (today() - timedelta(days=40)).isoformat()
    recent = (today() - timedelta(days=2)).isoformat()
    with Ledger.open(tmp_path / "l.db") as book:
        fill(book, {("acme", "pro", old): 5, ("acme", "pro", recent): 6}, old, recent)
        desired = load(write_plan(tmp_path, fakes), allow)
        s, e = date.fromisoformat(old), date.fromisoformat(recent)
        report = push(book, desired, "stripe", s, e)
        assert report.sent == 1 and [(n.row[2], n.count) for n in report.not_pushable] == [(old, 5)]
        assert "35-day" in report.not_pushable[0].reason
        assert fakes["stripe"].total("cus_acme") == 6
        lago = push(book, desired, "lago", s, e)  # Lago has no such window
        assert lago.sent == 2 and not lago.not_pushable


def test_subscriber_moved_to_another_product_and_removed_subscriber_are_pushed(tmp_path, fakes, allow):
    d1, d2, d3 = days_back(3)
    with Ledger.open(tmp_path / "l.db") as book:
        fill(book, {("acme", "basic", d1): 5, ("acme", "pro", d2): 7, ("gone", "pro", d1): 4}, d1, d2)
        plan = write_plan(tmp_path, fakes, subscribers={"acme": "pro", "gone": "pro"})
        desired = load(plan, allow)
        s, e = date.fromisoformat(d1), date.fromisoformat(d3)
        for vendor in VENDORS:
            assert push(book, desired, vendor, s, e).sent == 3
        # "gone" leaves the plan; its revised day still goes to the customer it was pushed to
        desired = load(write_plan(tmp_path, fakes, subscribers={"acme": "pro"}), allow)
        fill(book, {("acme", "basic", d1): 5, ("acme", "pro", d2): 7, ("gone", "pro", d1): 9}, d1, d2)
        for vendor in VENDORS:
            report = push(book, desired, vendor, s, e)
            assert report.corrected == 1 and not report.not_pushable
            assert totals(fakes, vendor) == {"acme": 12, "gone": 9}
        # a removed subscriber never pushed before has no known customer: reported, not dropped
        fill(book, {("acme", "basic", d1): 5, ("acme", "pro", d2): 7, ("gone", "pro", d1): 9,
                    ("ghost", "pro", d2): 3}, d1, d2)
        report = push(book, desired, "lago", s, e)
        assert [n.row[3] for n in report.not_pushable] == ["ghost"]
        assert "not in the plan" in report.not_pushable[0].reason


def test_vendor_totals_equal_invoice_quantities_for_every_subscriber(setup, fakes):
    from apimon_cli.billing.periods import window_of
    from apimon_cli.cli.billing import invoices_for

    book, desired, start, end = setup
    window = window_of(end, "month")
    for vendor in VENDORS:
        push(book, desired, vendor, window.start, window.end)
    invoices = invoices_for(desired, window, book, "local", "local")
    quantities = {inv.subscriber: sum(line.quantity or 0 for line in inv.lines if line.line_type == "usage")
                  for inv in invoices}
    start_ts = int(datetime.combine(window.start, datetime.min.time(), UTC).timestamp())
    end_ts = int(datetime.combine(window.end + timedelta(days=1), datetime.min.time(), UTC).timestamp())
    for sub, qty in quantities.items():
        assert fakes["stripe"].total(f"cus_{sub}", "api_requests", start_ts, end_ts) == qty
        assert fakes["lago"].total(f"sub_{sub}", "api_requests", "requests", start_ts, end_ts) == qty
        assert fakes["openmeter"].total(sub) == qty


def test_a_duplicate_in_a_lago_batch_does_not_block_the_rest(setup, fakes):
    book, desired, start, end = setup
    lago = fakes["lago"]
    # an event the vendor already has (a crashed push's batch was stored, its acknowledgement was lost):
    # Lago rejects the whole batch with value_already_exist at that index; apimon counts it as delivered
    from apimon_cli.billing.push.engine import event_key, sink_id

    sink = desired.billing.sink("lago")
    day = start.isoformat()
    key = event_key("lago", sink_id(sink), ("local", "local", day, "acme", "pro", "success"), 1)
    lago.events[("sub_acme", key)] = {"transaction_id": key, "code": "api_requests",
                                      "external_subscription_id": "sub_acme", "properties": {"requests": 10},
                                      "_ts": 0}
    report = push(book, desired, "lago", start, end)
    assert report.ok and report.already == 1 and report.sent == 14
    assert lago.rejected_batches == 1 and lago.batch_sizes == [14]
    assert totals(fakes, "lago") == ledger_totals(book, start, end)


def test_an_invalid_lago_event_is_reported_and_the_rest_pushed(setup, fakes):
    book, desired, start, end = setup
    fakes["lago"].subscriptions = {"sub_initech", "sub_hooli"}  # acme's subscription does not exist in Lago
    report = push(book, desired, "lago", start, end)
    assert len(report.failed) == 5 and {op.subscriber for op, _ in report.failed} == {"acme"}
    assert "external_subscription_id: subscription_not_found" in report.failed[0][1]
    assert report.sent == 10 and not report.ok
    assert totals(fakes, "lago") == {k: v for k, v in ledger_totals(book, start, end).items() if k != "acme"}
    fakes["lago"].subscriptions = None  # fixed in Lago: the next push sends acme's days
    again = push(book, desired, "lago", start, end)
    assert again.ok and again.sent == 5 and totals(fakes, "lago") == ledger_totals(book, start, end)


def test_stripe_429s_are_retried_and_one_request_per_customer_at_a_time(setup, fakes):
    book, desired, start, end = setup
    stripe = fakes["stripe"]
    stripe.latency = 0.01
    stripe.fail_next_429 = 2
    report = push(book, desired, "stripe", start, end)
    assert report.ok and report.sent == 15 and stripe.rejected_429 == 2
    assert stripe.max_in_flight <= 3  # three customers, at most one call each at a time
    assert totals(fakes, "stripe") == ledger_totals(book, start, end)


def test_wrong_credentials_abort_with_nothing_recorded_as_sent(setup, fakes):
    from dataclasses import replace

    book, desired, start, end = setup
    for vendor in VENDORS:
        sink = replace(desired.billing.sink(vendor), secret="wrong-secret-value")
        report = run_push(book, desired, sink, "local", "local", start, end, make_client(sink))
        assert report.aborted and report.sent == 0 and not report.ok
    for vendor in VENDORS:  # the pending events of the aborted pushes go out with the right key
        report = push(book, desired, vendor, start, end)
        assert report.ok and report.sent == 15
        assert totals(fakes, vendor) == ledger_totals(book, start, end)


@pytest.mark.parametrize("vendor", VENDORS)
def test_two_pushes_at_once_never_double_count(tmp_path, setup, fakes, vendor):
    import threading

    book, desired, start, end = setup
    fakes[vendor].latency = 0.02
    reports = []

    def one():
        with Ledger.open(book.path) as own:  # one connection per thread, as two processes would have
            reports.append(push(own, desired, vendor, start, end))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not r.failed for r in reports), [r.failed[:2] for r in reports]
    assert sum(r.sent + r.already for r in reports) >= 15
    assert totals(fakes, vendor) == ledger_totals(book, start, end)
    assert push(book, desired, vendor, start, end).requests == 0


def test_a_stripe_event_pending_longer_than_the_identifier_window_is_in_doubt_not_resent(setup, fakes):
    from dataclasses import replace

    book, desired, start, end = setup
    sink = replace(desired.billing.sink("stripe"), secret="wrong-secret-value")
    aborted = run_push(book, desired, sink, "local", "local", start, end, make_client(sink))
    assert aborted.aborted  # its events stay pending
    later = datetime.now(UTC) + timedelta(hours=25)
    fakes["stripe"].clock_offset = 25 * 3600
    report = push(book, desired, "stripe", start, end, now=later)
    assert len(report.in_doubt) == 15 and report.sent == 0 and not report.ok
    assert "24 h identifier window" in report.in_doubt[0][1]
    assert fakes["stripe"].totals() == {}
