"""Test helpers for events: an independent consumer (aiokafka, not apimon's code) and a webhook receiver."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def event(self) -> dict:
        return json.loads(self.value)


def read_topic(bootstrap: str, topic: str, *, expect: int | None = None, idle: float = 2.0,
               timeout: float = 60.0) -> list[Message]:
    """Every message of ``topic`` from the beginning, read with aiokafka (a client apimon does not use).
    Stops when ``expect`` messages arrived, or after ``idle`` seconds without one."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def main() -> list[Message]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", request_timeout_ms=10000)
        await consumer.start()
        try:
            parts = None
            deadline = time.monotonic() + timeout
            while not parts and time.monotonic() < deadline:
                parts = consumer.partitions_for_topic(topic)
                if not parts:
                    await consumer.force_metadata_update()
                    parts = consumer.partitions_for_topic(topic)
                if not parts:
                    await asyncio.sleep(0.2)
            if not parts:
                return []
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            out: list[Message] = []
            last = time.monotonic()
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200, max_records=10000)
                for tp, msgs in batch.items():
                    for m in msgs:
                        out.append(Message(tp.topic, tp.partition, m.offset, m.key, m.value, dict(m.headers)))
                if batch:
                    last = time.monotonic()
                if expect is not None and len(out) >= expect:
                    # a little longer: more than expected would be a defect the test must see
                    extra = await consumer.getmany(timeout_ms=500, max_records=10000)
                    for tp, msgs in extra.items():
                        for m in msgs:
                            out.append(Message(tp.topic, tp.partition, m.offset, m.key, m.value, dict(m.headers)))
                    return out
                if expect is None and time.monotonic() - last > idle:
                    return out
            return out
        finally:
            await consumer.stop()

    return asyncio.run(main())


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """An HTTP endpoint on 127.0.0.1 that answers with the next status of ``statuses`` (then 200)."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    delay: float = 0.0

    def __post_init__(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class UpstreamThread:
    """examples/upstream.py on its own event loop in a thread (so a test can stay synchronous)."""

    def __init__(self):
        from conftest import load_example_upstream

        module = load_example_upstream()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner, self.port = self.loop.run_until_complete(module.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class GatewayProcess:
    """`apimon gateway serve` in a child process; the bound URL is read from its 'listening on' line."""

    def __init__(self, plan, env: dict | None = None, args: tuple[str, ...] = (), ready_timeout: float = 20):
        import os
        import subprocess
        import sys

        full_env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")} | {"NO_COLOR": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apimon_cli.cli", "gateway", "serve", str(plan), "--listen", "127.0.0.1:0", *args],
            env=full_env | (env or {}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                if "listening on" in line:
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        assert ready.wait(ready_timeout) and self.proc.poll() is None, "".join(self.lines)
        self.url = next(w for line in self.lines for w in line.split() if w.startswith("http://"))

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM; returns how long it took to exit."""
        import signal

        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.code = self.proc.wait(timeout=timeout)
        took = time.monotonic() - started
        self.reader.join(timeout=5)
        self.stderr = "".join(self.lines)
        assert "Traceback" not in self.stderr, self.stderr
        return took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
