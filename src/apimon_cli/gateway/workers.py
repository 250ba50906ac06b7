"""``apimon gateway serve --workers N``: N gateway processes on one port.

Each worker is a whole gateway (its own event loop, key table, upstream pools) whose listener sets
``SO_REUSEPORT``: the kernel spreads new connections over the N listening sockets. What they share lives
outside them: products and keys in the state (each polls its revision, so an apply reaches all of them within
a second), usage counts in the state (each adds its own deltas), rate-limit buckets and quota counters in
Redis (``target.local.limits.backend: redis``). With the memory back end each process would keep buckets
and quotas of its own, N times the configured limits, so more than one worker is refused. With an events
block each worker has its own events process and outbox (worker 0 ``events-gateway.db``, worker i
``events-gateway-<i>.db``); the quota alerts already raised are kept in ``events-gateway.db`` for all of
them, so an alert still fires once per subscriber, window and threshold.

The parent reserves the port (a bound, non-listening socket with ``SO_REUSEPORT``: port 0 becomes a real
port every worker then binds), starts the workers (``spawn``), prints one line once all listen, restarts a
worker that dies, and on SIGINT/SIGTERM stops them all (each drains and writes its counts) and adds up their
summaries.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_mod
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .config import GatewayConfig, GatewayError, Summary

READY_TIMEOUT_S = 60.0


@dataclass
class WorkersInfo:
    """What the CLI prints once every worker listens."""

    url: str
    workers: int
    keys: int
    upstreams: dict[str, str]
    loop_name: str


def check_workers(config: GatewayConfig, workers: int) -> None:
    if workers < 1:
        raise GatewayError(f"--workers must be 1 or more; got {workers}")
    if workers == 1:
        return
    backend = (config.limits or {}).get("backend", "memory")
    if backend == "memory":
        raise GatewayError(
            f"--workers {workers} needs shared limits: with target.local.limits.backend memory (the default) each "
            f"process would keep its own rate-limit buckets and quota counters, so the limits would not be shared "
            f"(each subscriber would get {workers} times its rate and quota); set target.local.limits: "
            "{backend: redis, url: \"redis://HOST:6379/0\"} or run one worker"
        )


def _worker(config: GatewayConfig, index: int, ready, done) -> None:
    from . import GatewayError as Error
    from . import serve

    def on_ready(gw) -> None:
        ready.put(("ready", index, gw.url, len(gw.keys), dict(gw.upstreams), gw.loop_name))

    try:
        summary = serve(config, on_ready=on_ready)
    except Error as exc:
        ready.put(("error", index, str(exc)))
        return
    except KeyboardInterrupt:
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopped already: a late SIGTERM must not lose the summary
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    done.put((index, summary))


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve_workers(config: GatewayConfig, workers: int, *, on_ready: Callable[[WorkersInfo], None] | None = None,
                  on_note: Callable[[str], None] | None = None) -> Summary:
    """Run ``workers`` gateway processes on config's port until SIGINT/SIGTERM; returns their summed summary."""
    check_workers(config, workers)
    holder = _reserve(config.host, config.port)
    port = holder.getsockname()[1]
    config = replace(config, port=port, reuse_port=True)
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Queue(), ctx.Queue()
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    stop = False

    def on_signal(signum, frame) -> None:
        nonlocal stop
        stop = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(i: int):
        p = ctx.Process(target=_worker, args=(replace(config, worker=i), i, ready, done), name=f"apimon-gateway-{i}",
                        daemon=False)
        p.start()
        procs[i] = p
        return p

    summaries: dict[int, list[Summary]] = {}
    seen: dict[int, tuple] = {}  # the workers that listen
    errored: set[int] = set()  # the workers that could not start (they end by themselves)
    try:
        for i in range(workers):
            start(i)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(seen) < workers:
            if stop:
                break
            try:
                msg = ready.get(timeout=0.2)
            except queue_mod.Empty:
                if time.monotonic() > deadline:
                    raise GatewayError(f"the gateway workers did not start within {READY_TIMEOUT_S:.0f} s") from None
                dead = [i for i, p in procs.items() if p.exitcode is not None and i not in seen]
                if dead:
                    raise GatewayError(f"gateway worker {dead[0]} exited while starting (exit code "
                                       f"{procs[dead[0]].exitcode})") from None
                continue
            if msg[0] == "error":
                errored.add(msg[1])
                raise GatewayError(msg[2])
            seen[msg[1]] = msg
        if not stop and on_ready is not None:
            first = seen[0]
            on_ready(WorkersInfo(first[2], workers, first[3], first[4], first[5]))
        while not stop:
            time.sleep(0.2)
            _drain_done(done, summaries)
            for i, p in list(procs.items()):
                if p.exitcode is not None and not stop:
                    if on_note is not None:
                        on_note(f"gateway worker {i} exited (exit code {p.exitcode}); starting it again")
                    start(i)
    finally:
        # a worker that reported an error ends by itself: let it, for a SIGTERM while its queue's feeder thread
        # holds the queue's lock (just after sending the error) leaves the lock held, and the other workers then
        # hang at exit (the gateway took 60 s to fail when the state could not be opened)
        for i in errored:
            procs[i].join(5)
        for p in procs.values():
            if p.exitcode is None:
                p.terminate()  # SIGTERM: the worker drains and writes its counts
        for i, p in procs.items():
            p.join(60 if i in seen else 5)  # one that never listened has no counts to write
            if p.exitcode is None:
                p.kill()
                p.join(5)
        _drain_done(done, summaries, wait=0.5)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        holder.close()
    total = Summary()
    for parts in summaries.values():
        for s in parts:
            total.requests += s.requests
            total.unauthenticated += s.unauthenticated
            total.seconds = max(total.seconds, s.seconds)
            total.lost += s.lost
            total.lost_quota += s.lost_quota
            total.refused += s.refused
            total.limits_errors += s.limits_errors
    return total


def _drain_done(done, summaries: dict[int, list[Summary]], wait: float = 0.0) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            index, summary = done.get(timeout=max(0.01, deadline - time.monotonic()) if wait else 0.01)
        except queue_mod.Empty:
            if time.monotonic() >= deadline:
                return
            continue
        summaries.setdefault(index, []).append(summary)
