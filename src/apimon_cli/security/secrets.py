"""Client secrets: generated like keys, kept only as password hashes, compared in constant time.

The hash is scrypt from the standard library (``hashlib.scrypt``, OpenSSL), written
``scrypt$N$r$p$SALT$HASH`` (base64url, no padding) with N=2^14, r=8, p=1 and a 16-byte random salt
(RFC 7914's interactive-login parameters: ~16 MiB and a few tens of milliseconds per check, so a stolen
state file does not give the secrets away cheaply). The gateway checks a presented secret off its event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from functools import lru_cache

N, R, P = 2**14, 8, 1
_DKLEN = 32
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_secret() -> str:
    """A new client secret: 32 random bytes, base64url (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=N, r=R, p=P, dklen=_DKLEN, maxmem=_MAXMEM)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def hash_generated(secret: str) -> str:
    """The hash of a secret made by ``generate_secret`` (high entropy: one SHA-256 is enough)."""
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


@lru_cache(maxsize=4096)
def verify_secret(secret: str, hashed: str) -> bool:
    """Whether ``secret`` is the one ``hashed`` was made from (constant-time compare of the digests). A hash
    in an unknown format never verifies."""
    if hashed.startswith("sha256$"):  # a generated 256-bit secret (hash_generated): it needs no
        # slow hash, nothing can be guessed
        expected_hex = hashed[7:]
        return hmac.compare_digest(hashlib.sha256(secret.encode()).hexdigest(), expected_hex)
    try:
        scheme, n, r, p, salt, digest = hashed.split("$")
        if scheme != "scrypt":
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        if not (2 <= n_ <= 2**20 and 1 <= r_ <= 32 and 1 <= p_ <= 16):
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(secret.encode(), salt=_unb64(salt), n=n_, r=r_, p=p_, dklen=len(expected),
                             maxmem=_MAXMEM)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)
