"""Key lifecycle on the local target (``apimon keys rotate|finish|list|revoke``).

The current key is ``subscribers.api_key``; a rotated-out key is a row of ``subscriber_keys`` with an
``expires_at``, which the gateway accepts (for the same subscriber: same buckets, same quota counters) until
then. A rotation is one transaction (the new key becomes current, the old one gets its end), so it is never
half done; ``finish`` deletes the rows whose end has passed. Revoking every key replaces the current one with
a value nobody is ever shown (``REVOKED`` prefix): the subscriber has no usable key until the next rotation.
"""

from __future__ import annotations

import secrets
import sqlite3
from datetime import UTC, datetime

from ...keys.model import ACTIVE, REVOKED, ROTATING_OUT, KeyAction, KeyInfo, Rotated, last4
from ...security.secrets import generate_secret, hash_generated
from ..base import ProviderError
from .state import OWNER

REVOKED_PREFIX = "revoked:"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def new_key_value() -> str:
    return secrets.token_urlsafe(30)


class LocalKeys:
    """The key half of the local provider (``self.conn``, ``self._transaction``, ``self.exists``)."""

    conn: sqlite3.Connection

    def _owned_subscriber(self, conn: sqlite3.Connection, sid: str) -> tuple[str, str]:
        row = conn.execute("SELECT owner, api_key, updated_at FROM subscribers WHERE id = ?", (sid,)).fetchone()
        if row is None:
            raise ProviderError(f"subscriber {sid} is not on the local gateway (apply the plan first?)")
        if row[0] != OWNER:
            raise ProviderError(f"subscriber {sid} is not managed by apimon; apimon manages only the keys it owns")
        return row[1], row[2]

    def _keys_of(self, conn: sqlite3.Connection, sid: str, now: datetime) -> list[tuple[str, KeyInfo]]:
        """(value, info) for each key of ``sid``, oldest first; the values stay in this module."""
        current, updated = self._owned_subscriber(conn, sid)
        rows = conn.execute("SELECT api_key, created_at, expires_at FROM subscriber_keys WHERE subscriber = ? "
                            "ORDER BY expires_at IS NULL, created_at, api_key", (sid,)).fetchall()
        out: list[tuple[str, KeyInfo]] = []
        if not any(value == current for value, _, _ in rows):  # a key made before keys had dates
            rows.append((current, updated, None))
        for value, created, expires in rows:
            if value == current:
                dead = value.startswith(REVOKED_PREFIX)
                tail = "" if dead else last4(value)
                out.append((value, KeyInfo(tail, tail, _when(created), None, REVOKED if dead else ACTIVE)))
            else:
                ends = _when(expires)
                state = ROTATING_OUT if ends and ends > now else REVOKED
                out.append((value, KeyInfo(last4(value), last4(value), _when(created), ends, state)))
        return out

    def list_keys(self, subscriber_ids: list[str]) -> dict[str, list[KeyInfo]]:
        if not self.exists:  # type: ignore[attr-defined]
            raise ProviderError("no local gateway state yet; run `apimon apply` first")
        now = datetime.now(UTC)
        return {sid: [info for _, info in self._keys_of(self.conn, sid, now)] for sid in subscriber_ids
                if self.conn.execute("SELECT 1 FROM subscribers WHERE id = ? AND owner = ?", (sid, OWNER)).fetchone()}

    def rotate_key(self, sid: str, ends: datetime) -> Rotated:
        now = datetime.now(UTC)

        def rotate(conn: sqlite3.Connection) -> Rotated:
            current, updated = self._owned_subscriber(conn, sid)
            busy = conn.execute("SELECT api_key, expires_at FROM subscriber_keys WHERE subscriber = ? AND "
                                "api_key <> ? AND expires_at > ?", (sid, current, _iso(now))).fetchall()
            if busy:
                raise ProviderError(
                    f"subscriber {sid} is already rotating: its key ...{last4(busy[0][0])} works until "
                    f"{busy[0][1]}; run `apimon keys finish` after that, or `apimon keys revoke {sid} --key "
                    f"{last4(busy[0][0])}` to end it now")
            value = new_key_value()
            old: list[KeyInfo] = []
            if not current.startswith(REVOKED_PREFIX):
                conn.execute("INSERT INTO subscriber_keys (api_key, subscriber, created_at, expires_at) "
                             "VALUES (?, ?, ?, ?) ON CONFLICT(api_key) DO UPDATE SET expires_at = excluded.expires_at",
                             (current, sid, updated or _iso(now), _iso(ends)))
                created = conn.execute("SELECT created_at FROM subscriber_keys WHERE api_key = ?",
                                       (current,)).fetchone()[0]
                old.append(KeyInfo(last4(current), last4(current), _when(created), ends, ROTATING_OUT))
            else:
                conn.execute("DELETE FROM subscriber_keys WHERE api_key = ?", (current,))
            conn.execute("UPDATE subscribers SET api_key = ? WHERE id = ?", (value, sid))
            conn.execute("INSERT INTO subscriber_keys (api_key, subscriber, created_at, expires_at) "
                         "VALUES (?, ?, ?, NULL)", (value, sid, _iso(now)))
            return Rotated(sid, KeyInfo(last4(value), last4(value), now, None, ACTIVE), value, old, ends=ends)

        return self._transaction(rotate)  # type: ignore[attr-defined]

    def finish_rotations(self, subscriber_ids: list[str] | None = None, live=None) -> list[KeyAction]:
        if not self.exists:  # type: ignore[attr-defined]
            return []
        now = _iso(datetime.now(UTC))
        due = self.conn.execute(
            "SELECT k.api_key, k.subscriber FROM subscriber_keys k JOIN subscribers s ON s.id = k.subscriber "
            "WHERE s.owner = ? AND k.api_key <> s.api_key AND k.expires_at IS NOT NULL AND k.expires_at <= ? "
            "ORDER BY k.subscriber", (OWNER, now)).fetchall()
        if subscriber_ids is not None:
            wanted = set(subscriber_ids)
            due = [d for d in due if d[1] in wanted]
        if not due:
            return []

        def finish(conn: sqlite3.Connection) -> list[KeyAction]:
            conn.executemany("DELETE FROM subscriber_keys WHERE api_key = ?", [(k,) for k, _ in due])
            return [KeyAction(sid, "expired", last4(k), "overlap ended: old key removed") for k, sid in due]

        return self._transaction(finish)  # type: ignore[attr-defined]

    def new_client_secret(self, sid: str) -> str:
        """A generated client secret (256 random bits; the state keeps its SHA-256 only), replacing the
        subscriber's previous one in one transaction; a running gateway picks it up within a second."""
        if not self.exists:  # type: ignore[attr-defined]
            raise ProviderError(f"subscriber {sid} is not on the local gateway (apply the plan first?)")
        value = generate_secret()

        def issue(conn: sqlite3.Connection) -> str:
            self._owned_subscriber(conn, sid)
            conn.execute("INSERT INTO subscriber_credentials (subscriber, client_secret) VALUES (?, ?) "
                         "ON CONFLICT (subscriber) DO UPDATE SET client_secret = excluded.client_secret",
                         (sid, hash_generated(value)))
            return "issued"

        self._transaction(issue)  # type: ignore[attr-defined]
        return value

    def revoke_key(self, sid: str, key: str | None, revoke_all: bool) -> list[KeyAction]:
        now = datetime.now(UTC)

        def revoke(conn: sqlite3.Connection) -> list[KeyAction]:
            pairs = [(v, k) for v, k in self._keys_of(conn, sid, now) if k.state in (ACTIVE, ROTATING_OUT)]
            if revoke_all:
                targets = pairs
            elif key:
                targets = [(v, k) for v, k in pairs if k.last4 == key]
                if not targets:
                    have = ", ".join(f"...{k.last4} ({k.state})" for _, k in pairs) or "none"
                    raise ProviderError(f"subscriber {sid} has no working key ending in {key!r} (its keys: {have})")
            else:
                targets = [(v, k) for v, k in pairs if k.state == ROTATING_OUT]
                if not targets:
                    raise ProviderError(
                        f"subscriber {sid} has one key: revoking it would leave {sid} without a key. Rotate "
                        f"first (`apimon keys rotate {sid}`), or pass --all to revoke it anyway")
            if not revoke_all and not any(k.state == ACTIVE for v, k in pairs if (v, k) not in targets):
                raise ProviderError(
                    f"revoking ...{targets[0][1].last4} would leave {sid} without a working key; rotate first, "
                    "or pass --all")
            actions = []
            for value, k in targets:
                conn.execute("DELETE FROM subscriber_keys WHERE api_key = ?", (value,))
                if k.state == ACTIVE:  # the current key: replaced by a value nobody is ever shown
                    conn.execute("UPDATE subscribers SET api_key = ? WHERE id = ?",
                                 (REVOKED_PREFIX + new_key_value(), sid))
                actions.append(KeyAction(sid, "revoked", k.last4, "revoked now"))
            return actions

        return self._transaction(revoke)  # type: ignore[attr-defined]
