"""Plan what a billing platform lacks, record it ahead, send it, record what it acknowledged.

Exactly once, in four rules:

1. **Deterministic keys.** Every event's idempotency key (Stripe ``identifier`` + ``Idempotency-Key``, Lago
   ``transaction_id``, OpenMeter CloudEvent ``id``) is derived from vendor, sink, ledger row (provider, target,
   day, subscriber, product, metric) and the row's revision (1 for the first event, 2 for the first
   correction, ...). Sending the same change twice sends the same key, which the vendor deduplicates.
2. **Write-ahead.** Before sending, the event (key, value, resulting count) is committed to the sync table as
   *pending*, claimed only if the row is unchanged since it was read (so two pushes at once never plan two
   different events for one row). A crash leaves it pending; the next push first re-sends pending events
   exactly as recorded (same key, same value), then plans again from the ledger.
3. **Only the difference.** A row's event carries ``ledger count - what the vendor holds`` (or, on Stripe
   within 24 h of the last event, a cancel of that event and a replacement), so the vendor's total for a
   row always converges to the ledger's.
4. **Acknowledge by key.** A pending event becomes acknowledged only under its own key: a late, repeated or
   concurrent acknowledgement changes nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit

from ...ledger.store import Ledger
from ...ledger.sync import Claim, PushSync, RowKey, billable_rows
from ...model import DesiredState, PushSink

DAY_S = 86_400
STRIPE_PAST_LIMIT_S = 35 * DAY_S  # meter event timestamps: within the past 35 calendar days...
STRIPE_SAFETY_S = 3_600  # ...minus an hour of margin for clock drift and slow pushes
STRIPE_CANCEL_WINDOW_S = 23 * 3_600  # Stripe cancels events received within 24 h; keep an hour of margin
STRIPE_DEDUP_WINDOW_S = 23 * 3_600  # identifiers are unique within a rolling 24 h
ACK_FLUSH_EVERY = 2_000  # acknowledgements committed at least this often (rows)...
ACK_FLUSH_S = 0.5  # ...or seconds; a crash before a flush only means a harmless resend

DESTINATION_WHAT = {"stripe": "Stripe customer id", "lago": "Lago subscription", "openmeter": "OpenMeter subject"}


class PushAborted(Exception):
    """The vendor refused every request (bad credentials, no such meter): stop, nothing more can succeed."""


@dataclass
class Op:
    """One event (and, on Stripe, possibly a cancel first) for one ledger row."""

    row: RowKey
    destination: str
    kind: str  # "new" | "correction"
    event_key: str
    value: int  # the event's value (a difference, or a replacement after a cancel)
    count: int  # what the vendor holds for the row once this is acknowledged
    base_count: int  # what the vendor holds for the row now
    revision: int  # acknowledged revision this op builds on
    timestamp: int  # Unix seconds, inside the row's day
    cancel: str | None = None  # Stripe: identifier of the event to cancel first
    cancel_value: int = 0  # that event's value
    replay: bool = False  # a pending event of an earlier (crashed) push, sent again as recorded

    @property
    def day(self) -> str:
        return self.row[2]

    @property
    def subscriber(self) -> str:
        return self.row[3]

    @property
    def product(self) -> str:
        return self.row[4]


@dataclass
class Outcome:
    op: Op
    status: str  # "acked" | "already" (the vendor had the key) | "cancelled" (Stripe: cancel only) | "failed"
    value: int = 0  # value of the event the vendor now holds under op.event_key
    count: int = 0  # what the vendor holds for the row
    detail: str | None = None
    permanent: bool = True  # a failure that a resend cannot fix (the pending record is dropped)

    @classmethod
    def ok(cls, op: Op, status: str = "acked") -> Outcome:
        return cls(op, status, op.value, op.count)


@dataclass
class NotPushable:
    row: RowKey
    count: int
    reason: str
    removed: bool = False  # a subscriber no longer in the plan, never pushed: nobody is billed for it


@dataclass
class PushPlan:
    vendor: str
    sink: str
    ops: list[Op] = field(default_factory=list)  # fresh events (not yet claimed)
    replays: list[Op] = field(default_factory=list)  # pending events of an earlier push
    in_doubt: list[tuple[Op, str]] = field(default_factory=list)  # pending too long to resend safely
    not_pushable: list[NotPushable] = field(default_factory=list)
    pushed_rows: int = 0  # rows the vendor holds the ledger's count for
    pushed_total: int = 0


@dataclass
class VendorReport:
    vendor: str
    sink: str
    sent: int = 0  # new rows acknowledged
    corrected: int = 0  # corrections acknowledged
    already: int = 0  # the vendor already had the event (a resend after a crash, or another push)
    skipped: int = 0  # claimed by another push running at the same time
    failed: list[tuple[Op, str]] = field(default_factory=list)
    not_pushable: list[NotPushable] = field(default_factory=list)
    in_doubt: list[tuple[Op, str]] = field(default_factory=list)
    not_attempted: int = 0
    requests: int = 0
    aborted: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.failed or self.in_doubt or self.aborted or self.not_attempted)


def sink_id(sink: PushSink) -> str:
    """The vendor account's meter, as the sync table names it: ``<meter>@<host[:port][/path]>``."""
    parts = urlsplit(sink.endpoint)
    return f"{sink.meter}@{(parts.netloc + parts.path.rstrip('/')).lower()}"


def event_key(vendor: str, sink: str, row: RowKey, revision: int) -> str:
    digest = hashlib.sha256("\x1f".join((vendor, sink, *row, str(revision))).encode()).hexdigest()[:32]
    return f"apimon-{digest}-r{revision}"


def event_timestamp(day: str, now: float) -> int:
    """Noon UTC of the day (inside it whatever the vendor's time zone handling), never in the future."""
    start = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())
    return max(start, min(start + DAY_S // 2, int(now) - 1))


def _age_s(iso: str | None, now: float) -> float:
    if not iso:
        return float("inf")
    return now - datetime.fromisoformat(iso).timestamp()


def plan_push(book: Ledger, desired: DesiredState, sink: PushSink, provider: str, target: str,
              start: date, end: date, now: datetime) -> PushPlan:
    """What ``sink`` lacks of the ledger's billable usage in [start, end]. Reads only."""
    vendor, sid = sink.vendor, sink_id(sink)
    metric = desired.billing.metric
    now_s = now.timestamp()
    sync = PushSync(book, vendor, sid)
    plan = PushPlan(vendor, sid)
    want: dict[RowKey, int] = {
        (provider, target, day, sub, prod, metric): n
        for day, sub, prod, n in billable_rows(book, start, end, metric, provider, target)
    }
    have = {r.key: r for r in sync.rows(start, end, provider, target)}
    remembered: dict[str, str] | None = None
    for key in sorted(want.keys() | have.keys(), key=lambda k: (k[2], k[3], k[4], k[5])):
        count = want.get(key, 0)
        s = have.get(key)
        if s is not None and s.pending_key is not None:
            op = Op(key, s.pending_destination or "", "correction" if s.revision else "new", s.pending_key,
                    s.pending_value or 0, s.pending_count or 0, s.acked_count, s.revision,
                    event_timestamp(key[2], now_s), s.pending_cancel,
                    s.last_value if s.pending_cancel else 0, replay=True)
            if vendor == "stripe" and _age_s(s.pending_at, now_s) > STRIPE_DEDUP_WINDOW_S:
                plan.in_doubt.append((op, f"pending since {s.pending_at}, longer than Stripe's 24 h identifier "
                                          "window: check the customer's meter usage in Stripe before resending"))
            else:
                plan.replays.append(op)
            continue
        acked = s.acked_count if s is not None else 0
        if count == acked:
            if s is not None and s.revision:
                plan.pushed_rows += 1
                plan.pushed_total += acked
            continue
        ts = event_timestamp(key[2], now_s)
        if vendor == "stripe" and ts < now_s - STRIPE_PAST_LIMIT_S + STRIPE_SAFETY_S:
            plan.not_pushable.append(NotPushable(key, count - acked, "older than Stripe's 35-day meter event "
                                                 "window; bill it by hand (an invoice item)"))
            continue
        destination = s.destination if s is not None and s.revision else None
        sub = desired.subscribers.get(key[3])
        if destination is None and sub is not None:
            destination = sink.destination_of(sub)
            if destination is None:
                plan.not_pushable.append(NotPushable(key, count - acked, f"subscriber {key[3]} has no "
                                                     f"metadata.{sink.destination} ({DESTINATION_WHAT[vendor]})"))
                continue
        if destination is None:
            if remembered is None:
                remembered = sync.destinations(provider, target)
            destination = remembered.get(key[3])
        if destination is None:
            plan.not_pushable.append(NotPushable(key, count - acked, f"subscriber {key[3]} is not in the plan and "
                                                 f"was never pushed: no {DESTINATION_WHAT[vendor]} known",
                                                 removed=True))
            continue
        revision = s.revision if s is not None else 0
        cancel, cancel_value, value = None, 0, count - acked
        if (vendor == "stripe" and s is not None and s.last_key and s.last_value
                and _age_s(s.acked_at, now_s) < STRIPE_CANCEL_WINDOW_S):
            cancel, cancel_value = s.last_key, s.last_value
            value = count - (acked - s.last_value)
        plan.ops.append(Op(key, destination, "correction" if revision else "new",
                           event_key(vendor, sid, key, revision + 1), value, count, acked, revision, ts,
                           cancel, cancel_value))
    return plan


class _Acks:
    """Acknowledgements collected and committed in batches (see ACK_FLUSH_*)."""

    def __init__(self, sync: PushSync) -> None:
        self.sync = sync
        self.acks: list = []
        self.releases: list = []
        self.last = time.monotonic()

    def add(self, out: Outcome, at: str) -> None:
        if out.status == "failed":
            if out.permanent:
                self.releases.append((out.op.row, out.op.event_key))
        else:
            self.acks.append((out.op.row, out.op.event_key, out.count, out.value, at))
        if len(self.acks) + len(self.releases) >= ACK_FLUSH_EVERY or time.monotonic() - self.last > ACK_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        self.sync.acknowledge(self.acks)
        self.sync.release(self.releases)
        self.acks, self.releases = [], []
        self.last = time.monotonic()


def _iso(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="seconds")


def run_push(book: Ledger, desired: DesiredState, sink: PushSink, provider: str, target: str,
             start: date, end: date, client, *, now: datetime | None = None,
             progress=None) -> VendorReport:
    """Send what ``sink`` lacks (see the module docstring). ``client`` is a ``vendors`` client; ``progress``
    is called with the number of rows settled so far."""
    clock = (lambda: now) if now is not None else (lambda: datetime.now(UTC))
    sync = PushSync(book, sink.vendor, sink_id(sink))
    report = VendorReport(sink.vendor, sink_id(sink))
    settled = 0

    def send(ops: list[Op]) -> None:
        nonlocal settled
        acks = _Acks(sync)
        done = 0
        try:
            for out in client.send(ops):
                done += 1
                settled += 1
                acks.add(out, _iso(clock()))
                _count(report, out)
                if progress is not None and settled % 100 == 0:
                    progress(settled)
        except PushAborted as exc:
            report.aborted = str(exc)
            report.not_attempted += len(ops) - done
        finally:
            acks.flush()
            report.requests = getattr(client, "requests", 0)

    first = plan_push(book, desired, sink, provider, target, start, end, clock())
    report.in_doubt = first.in_doubt
    if first.replays:
        send(first.replays)
        if report.aborted:
            report.not_pushable = first.not_pushable
            return report
        first = plan_push(book, desired, sink, provider, target, start, end, clock())
    report.not_pushable = first.not_pushable
    owned = _claim(sync, first.ops, _iso(clock()))
    report.skipped = len(first.ops) - len(owned)
    if owned:
        send(owned)
    return report


def _claim(sync: PushSync, ops: list[Op], at: str, chunk: int = 20_000) -> list[Op]:
    owned: list[Op] = []
    for i in range(0, len(ops), chunk):
        part = ops[i : i + chunk]
        by_row = {op.row: op for op in part}
        claims = sync.claim((Claim(op.row, op.revision, op.event_key, op.value, op.count, op.cancel, op.destination)
                             for op in part), at)
        owned.extend(by_row[c.key] for c in claims)
    return owned


def _count(report: VendorReport, out: Outcome) -> None:
    if out.status == "failed":
        report.failed.append((out.op, out.detail or "failed"))
    elif out.status == "already":
        report.already += 1
    elif out.op.kind == "new":
        report.sent += 1
    else:
        report.corrected += 1


def backoff_delays(attempts: int = 8, base: float = 0.25, cap: float = 8.0) -> Iterator[float]:
    """Exponential backoff with full jitter (what Stripe recommends for 429s)."""
    import random

    for i in range(attempts):
        yield random.uniform(0, min(cap, base * 2**i)) + base / 2


def window_days(start: date, end: date) -> Iterable[date]:
    d = start
    while d <= end:
        yield d
        d += timedelta(days=1)
