"""The apply lock: an exclusive ``flock`` held from the moment `apply` reads the gateway until it has finished
writing, so two applies never interleave and the second one plans against what the first one left.

The local target keeps its lock file in the state directory (every apimon that writes that state sees it).
A cloud gateway has no lock apimon can take on it, so its lock is a file on this machine, one per target
(``APIMON_LOCK_DIR``, default ``$XDG_CACHE_HOME/apimon/locks``): applies from one machine (a CI runner, a
laptop) queue behind each other; against applies from another machine the engine re-reads the gateway under
the lock and refuses the apply if it moved ("the gateway changed while you were planning").
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .base import ProviderError

DEFAULT_WAIT_SECONDS = 60.0


def lock_wait_seconds() -> float:
    """How long a second apply waits for the lock: ``APIMON_LOCK_TIMEOUT`` (seconds), default 60."""
    raw = os.environ.get("APIMON_LOCK_TIMEOUT")
    if raw is None or raw.strip() == "":
        return DEFAULT_WAIT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ProviderError(f"APIMON_LOCK_TIMEOUT={raw!r} is not a number of seconds") from None
    if not 0 <= value <= 86400:
        raise ProviderError(f"APIMON_LOCK_TIMEOUT={raw!r} must be between 0 and 86400 seconds")
    return value


def host_lock_path(provider: str, settings: dict) -> Path:
    """This machine's lock file for one cloud target (named by a digest of the target's settings)."""
    base = os.environ.get("APIMON_LOCK_DIR")
    if base:
        root = Path(base)
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(cache) / "apimon" / "locks"
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return root / f"{provider}-{digest}.lock"


@contextmanager
def exclusive(path: Path, *, what: str, wait: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; wait up to ``wait`` seconds (default ``lock_wait_seconds()``) for
    another holder, then fail with a message naming ``what`` is locked."""
    wait = lock_wait_seconds() if wait is None else wait
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ProviderError(f"cannot create the apply lock {path}: {exc.strerror or exc}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ProviderError(
                        f"another apimon apply holds the lock on {what} (waited {wait:.0f} s, "
                        "APIMON_LOCK_TIMEOUT); try again when it has finished") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
