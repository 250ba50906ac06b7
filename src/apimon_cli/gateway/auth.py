"""Authentication: the step that says who is calling, as a ``KeyState`` (subscriber, product, limits).

``Authenticator.authenticate(request)`` returns the caller's ``KeyState`` or a ``Denial`` (403, not
metered: a request without a known identity belongs to no subscriber). It runs on the event loop for every
request and must not block or wait: an implementation that needs remote data (a JWKS, token introspection)
keeps it in memory and refreshes it in the background. ``install(keys)`` hands it the key table of a new
state revision (called on the event loop, after the table was built off it).

``ApiKeyAuth`` (the default) reads the ``x-api-key`` header and looks the value up in the table. Other
schemes (OAuth bearer tokens, JWT, mutual TLS) map their credential to a subscriber and return that
subscriber's ``KeyState`` from the same table (``by_subscriber``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from aiohttp import web

from .limits import KeyState


class Denial:
    """Why a request has no identity: an error code and message for the 403 body."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message


MISSING_KEY = Denial("missing_key", "missing API key: send it in the x-api-key header")
INVALID_KEY = Denial("invalid_key", "the API key is not valid")
EXPIRED_KEY = Denial("expired_key", "the API key has been rotated out and no longer works; use the new key")


class Authenticator(ABC):
    keys: dict[str, KeyState]
    #: rotated-out keys -> when they stop working (POSIX seconds, the gateway's wall clock ``clock``)
    expiring: dict[str, float] = {}
    clock: Callable[[], float] = staticmethod(time.time)

    def install(self, keys: dict[str, KeyState], expiring: dict[str, float] | None = None) -> None:
        """A new key table (api key -> KeyState) and the ends of rotated-out keys: swapped in as a whole."""
        self.keys = keys
        self.expiring = expiring or {}

    def by_subscriber(self) -> dict[str, KeyState]:
        """subscriber id -> KeyState, for schemes whose credential names a subscriber (built on demand)."""
        return {ks.subscriber: ks for ks in self.keys.values()}

    @abstractmethod
    def authenticate(self, request: web.BaseRequest) -> KeyState | Denial: ...


class ApiKeyAuth(Authenticator):
    """The subscriber's key in the ``x-api-key`` header."""

    header = "x-api-key"

    def __init__(self) -> None:
        self.keys = {}

    def authenticate(self, request: web.BaseRequest) -> KeyState | Denial:
        key = request.headers.get("x-api-key")
        if not key:
            return MISSING_KEY
        ks = self.keys.get(key)
        if ks is None:
            return INVALID_KEY
        if self.expiring:  # only during a rotation's overlap
            ends = self.expiring.get(key)
            if ends is not None and ends <= self.clock():
                return EXPIRED_KEY
        return ks
