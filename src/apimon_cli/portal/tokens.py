"""Statement tokens: the unguessable path of each subscriber's statement (``s/<token>/``).

A token is 128 random bits (``secrets.token_hex(16)``: lower-case hex, so a case-insensitive web server or
file system cannot merge two of them), made once per subscriber and kept in ``portal-tokens.json`` beside
the ledger, so a statement keeps its address across rebuilds and CI runs that keep the ledger. It is never
derived from the API key or the subscriber id. The file is readable by its owner only, written atomically,
under a lock (two builds at once agree on the tokens). Deleting the file, or ``--rotate SUBSCRIBER``, gives
new addresses; the old ones stop working at the next publish.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

FILE_NAME = "portal-tokens.json"
_TOKEN = re.compile(r"[0-9a-f]{32}")


class TokenError(Exception):
    pass


def tokens_path(ledger: Path) -> Path:
    return Path(ledger).parent / FILE_NAME


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise TokenError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TokenError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}); restore it or delete it "
                         "(every statement then gets a new address)") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise TokenError(f"{path}: not an apimon portal tokens file (expected version 1)")
    tokens = data.get("tokens")
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _TOKEN.fullmatch(v) for k, v in tokens.items()
    ):
        raise TokenError(f"{path}: tokens must map subscriber ids to 32 lower-case hex digits")
    if len(set(tokens.values())) != len(tokens):
        raise TokenError(f"{path}: two subscribers share a token")
    return dict(tokens)


def _write(path: Path, tokens: dict[str, str]) -> None:
    text = json.dumps({"version": 1, "tokens": dict(sorted(tokens.items()))}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".portal-tokens-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def statement_tokens(path: Path, subscribers: Iterable[str], rotate: Iterable[str] = ()) -> dict[str, str]:
    """subscriber -> token for every subscriber given: existing tokens kept, new ones made (and those in
    ``rotate`` replaced), the file updated when anything changed. Tokens of subscribers no longer given are
    kept in the file (a subscriber added back gets its old address)."""
    path = Path(path)
    wanted = list(subscribers)
    rotate = set(rotate)
    try:
        with _locked(path):
            tokens = _read(path)
            changed = False
            used = set(tokens.values())
            for sid in wanted:
                if sid in tokens and sid not in rotate:
                    continue
                token = secrets.token_hex(16)
                while token in used:  # pragma: no cover - 128 random bits
                    token = secrets.token_hex(16)
                tokens[sid] = token
                used.add(token)
                changed = True
            if changed:
                _write(path, tokens)
    except OSError as exc:
        raise TokenError(f"cannot update {path}: {exc.strerror or exc}") from None
    return {sid: tokens[sid] for sid in wanted}
