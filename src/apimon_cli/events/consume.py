"""``apimon events consume``: request events from the topic -> the ledger's daily counts, exactly once.

The consumer assigns itself every partition of the topic at the offsets stored in the ledger (no consumer
group: the ledger is the offset store, committed in the same transaction as the counts; see
``ledger.stream``). It reads in batches (up to ``batch`` messages or ``interval`` seconds), turns each
``com.apimon.request`` event into one count of its outcome (and of ``total``) on its UTC day, and hands the
batch to the ledger, which skips what its offsets say was consumed and what its event ids say was counted.
Other event types and messages that are not apimon CloudEvents only move the offsets (a malformed message
never blocks the stream; they are counted in the report).

``once``: read until every partition reported its end (``enable.partition.eof``; Tansu's ListOffsets
cannot be trusted for the end), ingest, exit. Otherwise run until ``stop()`` says so (SIGTERM).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import KafkaConfig
from .types import REQUEST

_METRICS = frozenset({"success", "blocked", "failed", "other"})
PRUNE_EVERY = 3600.0


@dataclass
class ConsumeReport:
    messages: int = 0
    counted: int = 0
    duplicates: int = 0  # dropped by event id (a producer's retry)
    replayed: int = 0  # skipped by offset (consumed before)
    other: int = 0  # other event types
    ignored: int = 0  # not an apimon CloudEvent
    partitions: int = 0
    topic_missing: bool = False


class ConsumeError(Exception):
    """The broker cannot be read (with a message for the user)."""


# The request events apimon's gateway writes all start the same way (cloudevent.request_body): read the five
# fields with one regular expression; any other layout (another producer, an escape in a string) is parsed as
# JSON. Strings matched here hold no quote or backslash, so they are exactly what a JSON parser would read.
_FAST = re.compile(
    r'\{"specversion":"1\.0","id":"([^"\\]+)","source":"[^"\\]*","type":"com\.apimon\.request",'
    r'"time":"([0-9]{4}-[0-9]{2}-[0-9]{2})T[^"\\]*","subject":"[^"\\]*","datacontenttype":"application/json",'
    r'"data":\{"subscriber":"([^"\\]+)","product":"([^"\\]+)","api":(?:null|"[^"\\]*"),"method":"[^"\\]*",'
    r'"status":[0-9]+,"outcome":"(success|blocked|failed|other)"'
).match
_decode = json.JSONDecoder().decode


def parse(value: bytes | None) -> tuple[str, str, str, str, str] | None | bool:
    """A request event as (id, day, subscriber, product, metric); False for another apimon event type;
    None for a message that is not an apimon CloudEvent."""
    if value is None:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    m = _FAST(text)
    if m is not None:
        return m.groups()  # type: ignore[return-value]
    try:
        doc = _decode(text)
        if doc["type"] != REQUEST:
            return False if isinstance(doc["type"], str) and doc["type"].startswith("com.apimon.") else None
        data = doc["data"]
        eid, day, sub, prod, metric = doc["id"], doc["time"][:10], data["subscriber"], data["product"], data["outcome"]
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, UnicodeDecodeError):
        return None
    if metric not in _METRICS or not (type(eid) is type(sub) is type(prod) is str and eid and sub and prod):
        return None
    if len(day) != 10 or day[4] != "-" or day[7] != "-":
        return None
    return eid, day, sub, prod, metric


def _consumer(config: KafkaConfig):
    from confluent_kafka import Consumer

    from .sinks import _QUIET

    return Consumer(config.client_config() | {
        "group.id": "apimon-events-consume",  # required by librdkafka; no group protocol is used (assign)
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 65536,
        "logger": _QUIET,
        "client.id": "apimon-consume",
    })


def _partitions(consumer, config: KafkaConfig, timeout: float = 10.0) -> list[int] | None:
    """The topic's partitions; None if it does not exist (yet)."""
    from confluent_kafka import KafkaException

    try:
        md = consumer.list_topics(config.topic, timeout=timeout)
    except KafkaException as exc:
        raise ConsumeError(
            f"cannot read the topic {config.topic} from {config.bootstrap_servers}: {exc.args[0].str()}"
        ) from None
    t = md.topics.get(config.topic)
    if t is None or t.error is not None or not t.partitions:
        return None
    return sorted(t.partitions)


def consume(
    config: KafkaConfig,
    ledger,
    *,
    once: bool,
    stop: Callable[[], bool] = lambda: False,
    log: Callable[[str], None] = lambda s: None,
    batch: int = 20_000,
    interval: float = 0.5,
    wait_for_topic: float = 10.0,
) -> ConsumeReport:
    from confluent_kafka import KafkaError, TopicPartition

    report = ConsumeReport()
    topic = config.topic
    consumer = _consumer(config)
    try:
        parts = _partitions(consumer, config)
        deadline = time.monotonic() + wait_for_topic
        while parts is None and not once and not stop():
            if time.monotonic() > deadline:
                log(f"events consume: the topic {topic} does not exist yet; waiting for it")
                deadline = float("inf")
            time.sleep(1.0)
            parts = _partitions(consumer, config)
        if parts is None:
            report.topic_missing = True
            return report
        report.partitions = len(parts)
        stored = ledger.stream_offsets(topic)
        consumer.assign([TopicPartition(topic, p, stored.get(p, -2)) for p in parts])  # -2: OFFSET_BEGINNING
        ledger.prune_stream_ids()
        pruned_at = last_meta = time.monotonic()
        eof: set[int] = set()
        items: list = []
        next_offsets: dict[int, int] = {}
        first_offsets: dict[int, int] = {}  # partition -> its first offset in the pending batch
        warned_behind: set[int] = set()  # warned once about offsets below the stored ones
        flushed = time.monotonic()
        eof_code = KafkaError._PARTITION_EOF
        while True:
            msgs = consumer.consume(num_messages=min(batch, 10_000), timeout=0.1)
            append = items.append
            seen_parts: dict[int, int] = {}  # partition -> last offset in this poll
            got = 0
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == eof_code:
                        p = m.partition()
                        if p in seen_parts:  # its messages came first in this poll: record them
                            next_offsets[p] = seen_parts.pop(p) + 1
                        eof.add(p)
                        continue
                    if err.fatal():
                        raise ConsumeError(f"reading {topic} failed: {err.str()}")
                    continue  # transient (broker down, rebalancing leaders): librdkafka retries
                p, off = m.partition(), m.offset()
                if p not in first_offsets:
                    first_offsets[p] = off
                seen_parts[p] = off
                got += 1
                parsed = parse(m.value())
                if type(parsed) is tuple:
                    append((p, off, *parsed))
                else:
                    if parsed is None:
                        report.ignored += 1
                    else:
                        report.other += 1
                    append((p, off, None, "", "", "", ""))
            report.messages += got
            for p, last in seen_parts.items():
                eof.discard(p)
                next_offsets[p] = last + 1

            now = time.monotonic()
            done = once and len(eof) == len(parts)
            if items and (len(items) >= batch or now - flushed >= interval or done or stop()):
                counted, dups, replayed = ledger.ingest_stream(topic, items, next_offsets, first_offsets)
                report.counted += counted
                report.duplicates += dups
                report.replayed += replayed
                if replayed and not warned_behind:  # assigned at the stored offsets, the broker sent older ones
                    warned_behind.add(0)
                    log(f"events consume: {topic} sent messages below the offsets stored in the ledger (was the "
                        "topic recreated, or its log reset?); they count as consumed and are skipped")
                for p, o in next_offsets.items():
                    stored[p] = max(stored.get(p, 0), o)
                items, next_offsets, first_offsets, flushed = [], {}, {}, now
            if done or stop():
                return report
            if not once and now - pruned_at > PRUNE_EVERY:
                ledger.prune_stream_ids()
                pruned_at = now
            if not once and now - last_meta > 30.0:  # partitions added to the topic
                last_meta = now
                fresh = _partitions(consumer, config) or parts
                if fresh != parts:
                    added = [p for p in fresh if p not in parts]
                    consumer.incremental_assign([TopicPartition(topic, p, stored.get(p, -2)) for p in added])
                    parts = fresh
                    report.partitions = len(parts)
    finally:
        consumer.close()
