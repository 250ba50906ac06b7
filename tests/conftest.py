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
