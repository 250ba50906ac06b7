"""`apimon doctor` on the local target: its state directory, or its PostgreSQL database
(``target.local.database``), and the Redis of ``target.local.limits`` (read-only: a connection and a PING)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ..diagnose import INFO, OK, PROBLEM, Check


def checks(provider: Any) -> Iterator[Check]:
    yield Check("credentials", INFO, "the local target needs no credentials")
    yield from (_database(provider.database) if provider.database else _state_dir(provider.state_dir))
    limits = provider.desired.target.settings.get("limits") or {}
    if limits.get("backend") == "redis" and limits.get("url"):
        yield _redis(limits["url"], float(limits.get("timeout") or 0.25))


def _database(url: str) -> Iterator[Check]:
    """The state in PostgreSQL: reachable, and its schema version, read without creating or migrating."""
    import sqlite3

    from ...ledger.pg import PgConnection, mask_url
    from .state import SCHEMA_VERSION

    name = mask_url(url)
    try:
        conn = PgConnection(url, timeout=5)
    except sqlite3.Error as exc:
        yield Check("endpoint", PROBLEM, f"cannot open local gateway state {name}: {exc}")
        return
    try:
        if not conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]:
            yield Check("endpoint", INFO, f"state database {name} holds no state yet (`apimon apply` creates it)")
            return
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error as exc:
        yield Check("endpoint", PROBLEM, f"state database {name} cannot be read: {exc}")
        return
    finally:
        conn.close()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        yield Check("endpoint", PROBLEM, f"state database {name} was written by a newer apimon (schema {version}); "
                                         "upgrade apimon")
        return
    yield Check("endpoint", OK, f"state database {name}, schema version {version}")


def _redis(url: str, timeout: float) -> Check:
    """The limits back end answers a PING (with the URL's password and database), within the gateway's timeout."""
    from ...ledger.pg import mask_url

    name = mask_url(url)
    try:
        import redis
    except ImportError:
        return Check("limits", PROBLEM, "backend redis needs the redis extra: pip install 'apimon-cli[redis]'")
    try:
        client = redis.Redis.from_url(url, socket_timeout=max(timeout, 1.0), socket_connect_timeout=max(timeout, 1.0))
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check("limits", PROBLEM, f"Redis at {name} does not answer: {detail}")
    return Check("limits", OK, f"Redis at {name} answers")


def _state_dir(state) -> Iterator[Check]:
    if not state.exists():
        parent = next((p for p in state.parents if p.exists()), None)
        if parent is not None and not os.access(parent, os.W_OK):
            yield Check("endpoint", PROBLEM, f"state directory {state} does not exist and {parent} is not writable")
        else:
            yield Check("endpoint", INFO, f"state directory {state} does not exist yet (`apimon apply` creates it)")
        return
    if not os.access(state, os.R_OK | os.W_OK):
        yield Check("permissions", PROBLEM, f"state directory {state} is not readable and writable")
        return
    yield Check("endpoint", OK, f"state directory {state}")
