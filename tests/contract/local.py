"""The local target: its state database is the fake."""

from __future__ import annotations

import json
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

from . import Harness


class LocalHarness(Harness):
    name = "local"

    tmp_path: Path

    @property
    def state(self) -> Path:
        return Path(self.tmp_path) / "state"

    def target(self, tmp_path: Any) -> str:
        return f"{{provider: local, local: {{state_dir: {Path(tmp_path) / 'state'}}}}}"

    def _db(self) -> sqlite3.Connection:
        from apimon_cli.providers.local import connect_state

        return connect_state(self.state)

    def seed_unmanaged(self) -> None:
        conn = self._db()
        conn.execute("INSERT INTO products VALUES ('legacy', NULL, ?, '2026-01-01')",
                     (json.dumps({"display_name": "Legacy", "apis": [], "pricing": {"model": "free"}}),))
        conn.execute("INSERT INTO subscribers VALUES ('ops', 'ops-team', 'legacy', NULL, 1, 'ops-key-0123456789', "
                     "'{}', '2026-01-01')")
        conn.close()

    def unmanaged_state(self) -> Any:
        conn = self._db()
        rows = (conn.execute("SELECT * FROM products WHERE id = 'legacy'").fetchall(),
                conn.execute("SELECT * FROM subscribers WHERE id = 'ops'").fetchall())
        conn.close()
        return rows

    def change_description(self, product: str, text: str) -> None:
        conn = self._db()
        spec = json.loads(conn.execute("SELECT spec FROM products WHERE id = ?", (product,)).fetchone()[0])
        conn.execute("UPDATE products SET spec = ? WHERE id = ?", (json.dumps({**spec, "description": text}), product))
        conn.close()

    def record_usage(self, subscriber: str, product: str, day: date, count: int) -> None:
        conn = self._db()
        conn.execute("INSERT INTO usage VALUES (?, ?, ?, 'total', ?)", (subscriber, product, day.isoformat(), count))
        conn.close()


HARNESS = LocalHarness()
