"""The gateway's side of events: a bounded in-process queue, quota alerts, and an events process that owns
the outbox and the delivery threads.

The hot path (``request``) appends one tuple to a list: no I/O, no serialisation, no lock. Every
``flush_interval`` (0.1 s) the event loop swaps the list out and a writer thread hands it, marshalled in one
C call, through a pipe to the gateway's **events process** (``python -m apimon_cli.events.worker``, a child
started with the gateway and ended by it). That process turns each batch into CloudEvents and appends them
to the outbox (``<state_dir>/events-gateway.db``) in one transaction; one thread per sink delivers from the
outbox (``delivery.KafkaPump`` / ``WebhookPump``). None of that runs under the gateway's GIL, so neither the
serialisation, SQLite nor librdkafka's Python side take time from the event loop, and a slow or dead
broker or webhook never reaches it: the gateway keeps its latency, the outbox grows on disk, and delivery
resumes where it stopped. ``events: delivery to kafka stalled`` is logged once when nothing was
acknowledged for ``STALL_AFTER`` seconds while events wait, ``... resumed`` once when acknowledgements come
back.

If the events process cannot keep up (the disk stalls) the pipe fills, the writer thread waits, and the
queue stops at ``queue_limit`` events: further events are dropped, counted, and logged once; the gateway
itself never waits. On SIGTERM the queue goes to the events process, the gateway closes the pipe, and the
events process writes it to the outbox, gives the sinks ``drain_timeout`` to acknowledge what is in flight
and exits; everything else stays in the outbox: the next ``gateway serve`` delivers it first (outbox
order). The events process ignores SIGINT/SIGTERM/SIGHUP (a Ctrl-C reaches the whole process group): it
ends when its pipe closes, also when the gateway was killed, after writing what it received. It inherits
the outbox lock, so ``apimon events flush`` leaves the outbox alone until both have exited.

Quota alerts: when a counted call takes a subscriber's quota window to or past a threshold (``quota_alerts``
percent of the limit), one ``com.apimon.quota.threshold`` is raised, once per subscriber, window and
threshold: the thresholds already raised are kept in the outbox file, so a restart does not raise them again.
"""

from __future__ import annotations

import asyncio
import json
import marshal
import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

from ..render.words import count
from . import types as T
from .cloudevent import IdSequence, _dumps, _q, gateway_source, quota_threshold_data, request_body, rfc3339
from .config import EventsConfig
from .delivery import KafkaPump, WebhookPump, pending_bits
from .outbox import GATEWAY_OUTBOX, Outbox, OutboxError, OutboxLock, gateway_outbox_name

STALL_AFTER = 5.0
_OUTCOMES = ("success", "blocked", "failed", "other")
_METRIC_BY_STATUS: tuple[int, ...] = ()
_FRAME = struct.Struct("!I")  # the length before each frame on the pipe to the events process


def _metric_table() -> tuple[int, ...]:
    from ..gateway.metering import METRIC_BY_STATUS

    return METRIC_BY_STATUS


def window_bounds(window: str) -> tuple[str, str]:
    """"day:2026-11-30" / "week:2026-W49" / "month:2026-11" -> (first day, first day after), ISO dates."""
    kind, _, ident = window.partition(":")
    if kind == "day":
        d = date.fromisoformat(ident)
        return d.isoformat(), (d + timedelta(days=1)).isoformat()
    if kind == "week":
        year, week = ident.split("-W")
        d = date.fromisocalendar(int(year), int(week), 1)
        return d.isoformat(), (d + timedelta(days=7)).isoformat()
    y, m = (int(x) for x in ident.split("-"))
    return date(y, m, 1).isoformat(), date(y + (m == 12), m % 12 + 1, 1).isoformat()



class GatewayEvents:
    """In the gateway process: the queue, the alerts, the events process."""

    def __init__(
        self,
        config: EventsConfig,
        state_dir: Path,
        *,
        log: Callable[[str], None] | None = None,
        queue_limit: int = 200_000,
        flush_interval: float = 0.1,
        drain_timeout: float = 2.0,
        worker: int = 0,
    ):
        self.config = config
        self.path = Path(state_dir) / gateway_outbox_name(worker)
        self.alerts_path = Path(state_dir) / GATEWAY_OUTBOX  # shared by the workers of --workers N
        self.log = log or (lambda msg: sys.stderr.write(f"apimon gateway: {msg}\n"))
        self.queue_limit = queue_limit
        self.flush_interval = flush_interval
        self.drain_timeout = drain_timeout
        self.source = "apimon/gateway"
        self.dropped = 0
        self._buf: list[tuple] = []
        self._alerts: list[tuple] = []
        self._fired: set[tuple[str, str, int]] = set()
        self._thresholds = tuple(sorted(config.quota_alerts))
        self._lock = OutboxLock(self.path)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apimon-events-writer")
        self._proc: subprocess.Popen | None = None
        self._spawned = 0.0
        self._task: asyncio.Task | None = None
        self._write_lock = asyncio.Lock()
        self.written = 0  # events handed to the events process
        self.delivered = {"kafka": 0, "webhook": 0}
        self.waiting = {"kafka": 0, "webhook": 0}

    # ---------------------------------------------------------------- lifecycle
    def open(self, windows: list[str]) -> None:
        """Take the outbox (one gateway per state), load the alerts already raised. Raises OutboxError."""
        if not self._lock.acquire():
            raise OutboxError(f"{self.path} is in use by another `apimon gateway serve` on the same state")
        try:
            Outbox(self.path, synchronous="NORMAL").close()  # a file that cannot be used stops the start
            outbox = Outbox(self.alerts_path, synchronous="NORMAL")
            try:
                outbox.forget_alerts(windows)
                self._fired = outbox.alerts(windows)
            finally:
                outbox.close()
        except BaseException:
            self._lock.release()
            raise

    def start(self, host: str, port: int) -> None:
        self.source = gateway_source(host, port)
        self._spawn()
        self._task = asyncio.get_running_loop().create_task(self._flusher())

    def _spawn(self) -> None:
        """Start the events process; its first frame (the configuration, secrets included) goes through the
        pipe, never through argv or the environment."""
        lock_fd = self._lock.fileno()
        self._spawned = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "apimon_cli.events.worker", str(lock_fd)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, pass_fds=(lock_fd,) if lock_fd is not None else (), bufsize=0,
        )
        self._send(pickle.dumps({"config": self.config, "path": str(self.path), "source": self.source,
                                 "drain_timeout": self.drain_timeout, "alerts_path": str(self.alerts_path)}))

    def _send(self, frame: bytes) -> None:
        """Write one frame to the events process (blocks while its pipe is full: on the writer thread)."""
        assert self._proc is not None and self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        view = memoryview(_FRAME.pack(len(frame)) + frame)
        while view:
            view = view[os.write(fd, view):]

    async def stop(self) -> None:
        """Hand over what is queued; the events process writes it, gives the sinks ``drain_timeout`` and
        keeps the rest in the outbox."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.write()
        except Exception as exc:
            self.log(f"events: writing {count(len(self._buf), 'queued event')} to {self.path} failed: {exc}")
        stats = await asyncio.get_running_loop().run_in_executor(self._writer, self._finish)
        self._writer.shutdown(wait=True)
        self._lock.release()
        if stats:
            self.delivered.update(stats.get("delivered", {}))
            self.waiting.update(stats.get("waiting", {}))
        if self.dropped:
            self.log(f"events: {count(self.dropped, 'event')} dropped: the outbox could not keep up")
        waiting = max(self.waiting[s] for s in self.config.sinks) if self.config.sinks else 0
        if waiting:
            self.log(f"events: {count(waiting, 'event')} waiting in {self.path}; the next `apimon gateway serve` "
                     "delivers them first (or `apimon events flush`)")

    def _finish(self) -> dict:
        """Close the pipe, wait for the events process to write, drain and exit; its figures (one JSON line)."""
        proc = self._proc
        if proc is None:
            return {}
        try:
            out, _ = proc.communicate(timeout=self.drain_timeout + 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        lines = (out or b"").decode(errors="replace").strip().splitlines()
        try:
            return json.loads(lines[-1]) if lines else {}
        except ValueError:
            return {}

    # ---------------------------------------------------------------- the hot path
    def request(self, now: float, subscriber: str, product: str, api: str | None, method: str, status: int,
                quota: tuple | None, rate_limit: str, latency_ms: float, request_bytes: int,
                response_bytes: int) -> None:
        """One answered, metered request. ``quota``: (outcome, limit, used, period, window) or None."""
        buf = self._buf
        if len(buf) >= self.queue_limit:
            self._drop()
            return
        buf.append((now, subscriber, product, api, method, status, quota, rate_limit, latency_ms, request_bytes,
                    response_bytes))
        if quota is not None and quota[0] == "counted" and self._thresholds:
            limit, used = quota[1], quota[2]
            if used * 100 >= self._thresholds[0] * limit:
                self._check_alerts(now, subscriber, product, limit, used, quota[3], quota[4])

    def _check_alerts(self, now, subscriber, product, limit, used, period, window) -> None:
        for pct in self._thresholds:
            if used < math.ceil(limit * pct / 100):
                break
            key = (subscriber, window, pct)
            if key not in self._fired:
                self._fired.add(key)
                self._alerts.append((now, subscriber, product, limit, used, period, window, pct))

    def _drop(self) -> None:
        if not self.dropped:
            self.log(f"events: the queue is full ({self.queue_limit} events): the outbox {self.path} does not keep "
                     "up; events are dropped until it does")
        self.dropped += 1

    # ---------------------------------------------------------------- queue -> events process
    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await asyncio.shield(self.write())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the events process is gone: keep the events queued, start another
                self.log(f"events: writing to {self.path} failed ({exc}); will retry")

    async def write(self) -> None:
        async with self._write_lock:
            if not self._buf and not self._alerts:
                return
            batch, alerts = self._buf, self._alerts
            self._buf, self._alerts = [], []
            try:
                await asyncio.get_running_loop().run_in_executor(self._writer, self._hand_over, batch, alerts)
            except BaseException:
                self._buf = batch + self._buf
                self._alerts = alerts + self._alerts
                raise
            self.written += len(batch) + len(alerts)

    def _hand_over(self, batch: list[tuple], alerts: list[tuple]) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            if time.monotonic() - self._spawned < 1.0:  # at most one a second; the batch stays queued
                raise OSError("the events process exited")
            code = None if proc is None else proc.returncode
            self.log(f"events: the events process exited (code {code}); starting another")
            self._spawn()
        self._send(marshal.dumps((batch, alerts)))


class EventsWriter:
    """In the events process: batches from the gateway -> CloudEvents -> the outbox; the delivery threads."""

    def __init__(self, config: EventsConfig, path: Path, source: str, *, log: Callable[[str], None],
                 drain_timeout: float = 2.0, alerts_path: Path | None = None):
        self.config = config
        self.path = Path(path)
        self.source = source
        self.log = log
        self.drain_timeout = drain_timeout
        self._ids = IdSequence()
        self._outbox = Outbox(self.path, synchronous="NORMAL")
        # where alerts are claimed: this outbox, or worker 0's (``--workers N``: one claim for all workers)
        self._alerts_db = (self._outbox if alerts_path is None or Path(alerts_path) == self.path
                           else Outbox(Path(alerts_path), synchronous="NORMAL"))
        self._stop = threading.Event()
        self._wake_kafka = threading.Event()
        self._wake_webhook = threading.Event()
        self._threads: list[threading.Thread] = []
        self.written = 0
        self.delivered = {"kafka": 0, "webhook": 0}
        self.waiting = {"kafka": 0, "webhook": 0}

    def start(self) -> None:
        global _METRIC_BY_STATUS
        _METRIC_BY_STATUS = _metric_table()
        if self.config.kafka is not None:
            self._threads.append(threading.Thread(target=self._kafka_loop, name="apimon-events-kafka", daemon=True))
        if self.config.webhook is not None:
            self._threads.append(threading.Thread(target=self._webhook_loop, name="apimon-events-webhook",
                                                  daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """The sinks get ``drain_timeout`` for what is in flight; the rest stays in the outbox."""
        self._stop.set()
        self._wake_kafka.set()
        self._wake_webhook.set()
        for t in self._threads:
            t.join(self.drain_timeout + 10)
        if self._alerts_db is not self._outbox:
            self._alerts_db.close()
        self._outbox.close()

    def _write(self, batch: list[tuple], alerts: list[tuple]) -> None:
        assert self._outbox is not None
        config, source, ids = self.config, self.source, self._ids
        bits = pending_bits(config, T.REQUEST)
        metric = _METRIC_BY_STATUS
        rows = []
        if bits:
            src = _q(source)
            append = rows.append
            for (now, sub, prod, api, method, status, quota, rate, latency, rq, rs) in batch:
                eid = ids()
                when = rfc3339(now)
                outcome = _OUTCOMES[metric[status] if 0 <= status < 1000 else 3]
                body = request_body(eid, src, when, sub, prod, api, method, status, outcome, quota, rate, latency,
                                    rq, rs)
                append((eid, T.REQUEST, source, when, sub, body, bits))
        if alerts:
            fresh = self._alerts_db.claim_alerts([(a[1], a[6], a[7]) for a in alerts])
            abits = pending_bits(config, T.QUOTA_THRESHOLD)
            for (now, sub, prod, limit, used, period, window, pct) in alerts:
                if (sub, window, pct) not in fresh or not abits:
                    continue
                start, end = window_bounds(window)
                eid = ids()
                when = rfc3339(now)
                body = _dumps({
                    "specversion": "1.0", "id": eid, "source": source, "type": T.QUOTA_THRESHOLD, "time": when,
                    "subject": sub, "datacontenttype": "application/json",
                    "data": quota_threshold_data(sub, prod, period, start, end, limit, used, pct),
                }).encode()
                rows.append((eid, T.QUOTA_THRESHOLD, source, when, sub, body, abits))
        if rows:
            self._outbox.add(rows)
            self.written += len(rows)
            self._wake_kafka.set()
            self._wake_webhook.set()

    # ---------------------------------------------------------------- delivery threads
    def _kafka_loop(self) -> None:
        from .sinks import KafkaSink

        outbox = Outbox(self.path, synchronous="NORMAL")
        pump = KafkaPump(outbox, KafkaSink(self.config.kafka))
        stalled_at: float | None = None
        busy_since: float | None = None
        try:
            while not self._stop.is_set():
                # read the outbox when the writer added rows (or a retry is due), else only serve acks
                refill = self._wake_kafka.is_set()
                if refill:  # cleared before reading: rows committed after the read set it again
                    self._wake_kafka.clear()
                acked = pump.step(0.05, fill=refill)
                now = time.monotonic()
                busy = bool(pump.inflight)  # librdkafka holds what the broker has not acknowledged yet
                if acked:
                    self.delivered["kafka"] += acked
                    busy_since = now
                    if stalled_at is not None:
                        self.log(f"events: delivery to kafka resumed after {now - stalled_at:.0f} s; "
                                 f"{count(pump.waiting(), 'event')} still in the outbox")
                        stalled_at = None
                elif busy:
                    busy_since = busy_since or now
                    if stalled_at is None and now - busy_since > STALL_AFTER:
                        stalled_at = now
                        why = pump.last_error or f"no acknowledgement for {STALL_AFTER:g} s"
                        self.log(f"events: delivery to kafka stalled ({why}); events wait in {self.path} "
                                 f"({pump.waiting()} now), the gateway keeps serving")
                else:
                    busy_since = None
                    self._wake_kafka.wait(0.2)
                for note in pump.sink.notes:
                    self.log(f"events: {note}")
                pump.sink.notes.clear()
        except Exception as exc:  # pragma: no cover - a bug: say so, the events stay in the outbox
            self.log(f"events: the kafka delivery thread stopped ({type(exc).__name__}: {exc}); events stay in "
                     f"{self.path} for the next start or `apimon events flush`")
        finally:
            try:  # shutting down: what the outbox holds gets ``drain_timeout`` to reach a healthy broker
                deadline = time.monotonic() + (self.drain_timeout if stalled_at is None else 0.5)
                while time.monotonic() < deadline and (pump.inflight or pump.waiting()):
                    pump.step(0.05)
            finally:
                pump.close()
                self.delivered["kafka"] = pump.delivered
                self.waiting["kafka"] = pump.waiting()
                outbox.close()

    def _webhook_loop(self) -> None:
        from .sinks import WebhookSink

        outbox = Outbox(self.path, synchronous="NORMAL")
        pump = WebhookPump(outbox, WebhookSink(self.config.webhook), self.log)
        stalled_at: float | None = None
        try:
            while not self._stop.is_set():
                res = pump.step(stop=self._stop.is_set)
                if res.delivered and stalled_at is not None:
                    self.log(f"events: delivery to the webhook resumed after {time.monotonic() - stalled_at:.0f} s")
                    stalled_at = None
                elif res.retried and not res.delivered and stalled_at is None:
                    stalled_at = time.monotonic()
                    self.log(f"events: delivery to the webhook {self.config.webhook.url} stalled ({pump.last_error});"
                             " retrying with backoff")
                due = pump.next_due()
                wait = 1.0 if due is None else max(0.0, min(1.0, due - time.time()))
                if wait > 0:
                    self._wake_webhook.wait(wait)
                    self._wake_webhook.clear()
        finally:
            try:  # shutting down: the rows due now get ``drain_timeout`` to reach a healthy webhook (as Kafka's)
                deadline = time.monotonic() + (self.drain_timeout if stalled_at is None else 0.0)
                while time.monotonic() < deadline and pump.waiting():
                    res = pump.step(stop=lambda: time.monotonic() >= deadline)
                    if not res.delivered:  # nothing due, or the webhook fails: the rest stays in the outbox
                        break
            finally:
                pump.close()
                self.delivered["webhook"] = pump.delivered
                self.waiting["webhook"] = pump.waiting()
                outbox.close()



def worker_main(argv: list[str] | None = None) -> int:
    """``python -m apimon_cli.events.worker``: the gateway's events process. Reads frames from stdin (the
    first: the configuration; then marshalled batches) until EOF, then drains and prints its figures."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the gateway ends this process by closing the pipe
    stdin = sys.stdin.buffer
    out_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing but the final figures on the pipe back

    def log(msg: str) -> None:
        sys.stderr.write(f"apimon gateway: {msg}\n")
        sys.stderr.flush()

    def frame() -> bytes | None:
        head = stdin.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return None
        (n,) = _FRAME.unpack(head)
        data = stdin.read(n)
        return data if len(data) == n else None

    first = frame()
    if first is None:
        return 0
    setup = pickle.loads(first)
    try:
        writer = EventsWriter(setup["config"], Path(setup["path"]), setup["source"], log=log,
                              drain_timeout=setup["drain_timeout"], alerts_path=setup.get("alerts_path"))
    except OutboxError as exc:
        log(f"events: {exc}")
        return 1
    writer.start()
    try:
        while (data := frame()) is not None:
            batch, alerts = marshal.loads(data)
            while True:
                try:
                    writer._write(batch, alerts)
                    break
                except Exception as exc:  # the disk: keep the batch and try again (the pipe fills meanwhile)
                    log(f"events: writing to {writer.path} failed ({exc}); will retry")
                    time.sleep(0.5)
    finally:
        writer.stop()
        try:  # the gateway reads them; a gateway that was killed reads nothing
            os.write(out_fd, (json.dumps({"written": writer.written, "delivered": writer.delivered,
                                          "waiting": writer.waiting}) + "\n").encode())
        except OSError:
            pass
    return 0


def metered_observer(events: GatewayEvents) -> Callable:
    """The gateway's observer hook (``Gateway.add_observer``) -> ``events.request``. Everything comes from
    ``metering.MeteredRequest``, which never holds the key or a body; ``api`` is kept only when the request
    passed the product's API check (it reached the limits check), so a path's first segment a caller made
    up never reaches an event."""
    record = events.request

    def observe(ev) -> None:
        lim = ev.limits
        q = ev.quota
        quota = None
        if q is not None:
            if lim == "admitted":
                quota = ("counted", q[0], q[1] or 0, q[2], q[3])
            elif lim == "quota_exceeded":
                quota = ("exceeded", q[0], q[1] or 0, q[2], q[3])
        rate = "limited" if lim == "rate_limited" else ("allowed" if lim else "none")
        record(ev.time, ev.subscriber, ev.product, ev.api if lim else None, ev.method, ev.status, quota, rate,
               ev.latency * 1000.0, ev.bytes_in, ev.bytes_out)

    return observe


def prepare(gateway) -> GatewayEvents:
    """The events pipeline of a gateway whose config has an events block, before it listens: the outbox
    taken (raises OutboxError), the observer added (requests before ``start`` wait in the queue).
    ``Gateway.start`` calls it and then ``events.start(host, port)``; ``Gateway.stop`` ends it after the
    drain, so the last requests' events are written and delivered."""
    from ..gateway.clock import windows_at

    events = GatewayEvents(gateway.config.events, gateway.config.state_dir,
                           log=lambda m: sys.stderr.write(f"apimon gateway: {m}\n"), worker=gateway.config.worker)
    events.open(list(windows_at(gateway.clock()).window.values()))
    gateway.add_observer(metered_observer(events))
    return events
