"""Shared test helpers: run the real CLI as a subprocess, write plans into tmp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, cwd: str | Path | None = None, env: dict | None = None, input: str | None = None,
            timeout: float = 120) -> Result:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "APIMON_"))}
    full_env.update({"NO_COLOR": "1", "COLUMNS": "200", "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_EC2_METADATA_DISABLED": "true"})  # never probe 169.254.169.254
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "apimon_cli.cli", *args], cwd=cwd, env=full_env,
                          input=input, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)


def load_example_upstream():
    """examples/upstream.py (the quick start's sample upstream) as a module, for in-process servers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("apimon_example_upstream", ROOT / "examples" / "upstream.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def allow_endpoints(*urls: str) -> dict[str, str]:
    """APIMON_ALLOW_ENDPOINTS listing exactly these fakes' host:port (a plan may send credentials to a
    loopback address only when it is listed outside the plan: README "Security")."""
    from urllib.parse import urlsplit

    return {"APIMON_ALLOW_ENDPOINTS": ",".join(f"{urlsplit(u).hostname}:{urlsplit(u).port}" for u in urls)}


def write_plan(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def cli():
    return run_cli


# --- billing platform fakes (tests/fakes/stripe_fake.py, lago_fake.py, openmeter_fake.py) ---------------

@pytest.fixture
def stripe_fake():
    from fakes.stripe_fake import StripeFake
    from push_helpers import STRIPE_KEY

    with StripeFake(api_key=STRIPE_KEY, meters={"api_requests": "mtr_api"}) as fake:
        yield fake


@pytest.fixture
def lago_fake():
    from fakes.lago_fake import LagoFake
    from push_helpers import LAGO_KEY

    with LagoFake(api_key=LAGO_KEY) as fake:
        yield fake


@pytest.fixture
def openmeter_fake():
    from fakes.openmeter_fake import OpenMeterFake
    from push_helpers import OM_TOKEN

    with OpenMeterFake(token=OM_TOKEN) as fake:
        yield fake


@pytest.fixture
def fakes(stripe_fake, lago_fake, openmeter_fake):
    return {"stripe": stripe_fake, "lago": lago_fake, "openmeter": openmeter_fake}


@pytest.fixture
def allow(fakes):
    """APIMON_ALLOW_ENDPOINTS for the three fakes (loopback is allowed only when listed)."""
    return ",".join(f.hostport for f in fakes.values())


# --- services: PostgreSQL and Redis on 127.0.0.1 (issue 13) ------------------------------------------
# One rule for every service test: the URL comes from APIMON_TEST_POSTGRES_URL / APIMON_TEST_REDIS_URL
# (defaults below); when the service cannot be reached the test fails under CI and skips otherwise.

POSTGRES_URL = os.environ.get("APIMON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("APIMON_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_unavailable(what: str, reason: object) -> None:
    message = f"{what} unreachable: {str(reason).strip().splitlines()[0] if str(reason).strip() else reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: a service test that cannot connect fails)", pytrace=False)
    pytest.skip(message)


def _unique(prefix: str) -> str:
    import uuid

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
    return f"{prefix}_{worker}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture
def postgres_db():
    """A fresh PostgreSQL database of its own (unique per test and xdist worker), dropped afterwards: its URL."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - a test dependency
        service_unavailable("PostgreSQL (psycopg not installed)", exc)
    import time

    name = _unique("apimon_test")
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as admin:
            for attempt in range(20):  # xdist workers creating databases at once may collide on template1
                try:
                    admin.execute(f'CREATE DATABASE "{name}"')
                    break
                except psycopg.errors.ObjectInUse:
                    if attempt == 19:
                        raise
                    time.sleep(0.1 * (attempt + 1))
    except psycopg.OperationalError as exc:
        service_unavailable(f"PostgreSQL at {POSTGRES_URL}", exc)
    try:
        yield _with_database(POSTGRES_URL, name)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_prefix():
    """(url, a key prefix unique to this test); every key under the prefix is deleted afterwards."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover
        service_unavailable("Redis (redis-py not installed)", exc)
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at {REDIS_URL}", exc)
    prefix = _unique("apimon_test") + ":"
    try:
        yield REDIS_URL, prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request, tmp_path):
    """Where a ledger lives, on each back end: a file path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "ledger.db"
    return request.getfixturevalue("postgres_db")
