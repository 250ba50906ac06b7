"""What the key commands read from a gateway and what they did, provider-neutral (never a key's value)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

ACTIVE = "active"
ROTATING_OUT = "rotating-out"
REVOKED = "revoked"


def last4(value: str) -> str:
    return value[-4:] if value else ""


@dataclass(frozen=True)
class KeyInfo:
    """One key of a subscriber as the gateway holds it: an id (the gateway's, or the last 4 characters where
    the gateway has no id), its last 4 characters, when it was made, when it stops working, its state."""

    id: str
    last4: str
    created: datetime | None
    expires: datetime | None
    state: str  # ACTIVE | ROTATING_OUT | REVOKED

    def as_json(self) -> dict:
        return {"id": self.id, "last4": self.last4,
                "created": self.created.isoformat() if self.created else None,
                "expires": self.expires.isoformat() if self.expires else None, "state": self.state}


@dataclass
class Rotated:
    """What ``rotate_key`` did: the new key (its value only for ``--reveal``/``--out``), the key(s) now
    rotating out, and whether an interrupted rotation was completed rather than a new one started."""

    subscriber: str
    new: KeyInfo
    value: str | None
    old: list[KeyInfo] = field(default_factory=list)
    resumed: bool = False
    ends: datetime | None = None
    overlap: timedelta | None = None


@dataclass(frozen=True)
class KeyAction:
    """One thing done to a key (for the report, the audit log and events)."""

    subscriber: str
    action: str  # created | rotated | revoked | expired (finished)
    last4: str
    detail: str = ""
