"""Where a rotation is recorded when the gateway cannot record it itself (Azure subscriptions have no tags):
the ``key_rotations`` table of the ledger (``ledger/audit.py``), written before each step so an interrupted
rotation is found and completed by the next run. The key commands give it to the provider as
``provider.key_journal``."""

from __future__ import annotations

from pathlib import Path

from ..ledger import audit


class Journal:
    def __init__(self, path: Path, provider: str, target: str):
        self.path = path
        self.provider = provider
        self.target = target

    def _open(self):
        from ..ledger.store import Ledger

        return Ledger.open(self.path)

    def pending(self) -> dict[str, tuple[str, str | None]]:
        if not self.path.exists():
            return {}
        with self._open() as book:
            return audit.rotations(book._conn, self.provider, self.target)

    def put(self, sid: str, ends: str, new_key: str | None) -> None:
        with self._open() as book:
            audit.put_rotation(book._conn, self.provider, self.target, sid, ends, new_key)

    def drop(self, sid: str) -> None:
        with self._open() as book:
            audit.drop_rotation(book._conn, self.provider, self.target, sid)
