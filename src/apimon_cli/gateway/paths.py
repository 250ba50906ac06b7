"""Request targets -> (API, path below the API's upstream base path), refusing anything that could climb out.

The gateway forwards ``/{api}/{rest}`` to ``{upstream base}/{rest}`` with ``rest`` as the client sent it
(percent-encoding kept, so the upstream sees the same bytes). Upstreams decode and normalise paths in their
own ways (nginx decodes ``%2F`` and then resolves ``..``; Tomcat reads ``..;`` as ``..``), so the check runs
on the *decoded* path and refuses, with ``400 bad_path``:

- a request target that is not a path (absolute-form ``http://host/...``, authority-form, ``*``);
- ``\\`` or a NUL anywhere in the path, raw or percent-encoded;
- an encoded slash (``%2F``) or backslash (``%5C``), and their double-encoded forms (``%252F``);
- a ``.`` or ``..`` segment after decoding (``..``, ``%2e%2e``, ``.%2E``, ``%252e%252e``), also with a
  ``;parameter`` (``..;``).

What passes cannot leave the base path: with no ``/`` hidden in a segment and no dot segment, removing dot
segments (RFC 3986 5.2.4) changes nothing. ``confined`` states that property; the tests check it.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import unquote

# decoded once, these still hide a dot, slash, backslash or NUL (double encoding)
_ENCODED = re.compile(r"%(?:2[eEfF]|5[cC]|00)")


class PathRefused(ValueError):
    """The path could leave the upstream's base path; the message says why (for the 400 body)."""


def split_target(target: str) -> tuple[str, str] | None:
    """``/api/rest?query`` -> (``api``, ``/rest?query``); None if the target is not a path."""
    if target[:1] != "/" or target[:2] == "//":
        return None
    slash = target.find("/", 1)
    query = target.find("?", 1)
    if slash == -1 or (query != -1 and query < slash):
        end = len(target) if query == -1 else query
        return target[1:end], "/" + target[end:]
    return target[1:slash], target[slash:]


def check_rest(rest: str) -> None:
    """Raise PathRefused if forwarding ``rest`` below a base path could climb out of it."""
    path = rest.split("?", 1)[0]
    if "%" not in path and "." not in path and "\\" not in path and "\x00" not in path:
        return  # the hot path: nothing to decode, no dot segment possible
    if "#" in path:
        raise PathRefused("a fragment (#) is not part of a request target")
    if "\\" in path or "\x00" in path:
        raise PathRefused("backslashes and NUL bytes are not allowed in the path")
    once = unquote(path, encoding="latin-1") if "%" in path else path  # bytes as chars: never fails
    if "\\" in once or "\x00" in once:
        raise PathRefused("encoded backslashes (%5C) and NUL bytes (%00) are not allowed in the path")
    if once.count("/") != path.count("/"):
        raise PathRefused("encoded slashes (%2F) are not allowed in the path")
    if _ENCODED.search(once):
        raise PathRefused("double-encoded dots, slashes or backslashes are not allowed in the path")
    for segment in once.split("/"):
        if segment.split(";", 1)[0] in (".", ".."):
            raise PathRefused("'.' and '..' path segments are not allowed (also encoded, e.g. %2e%2e)")


def confined(base_path: str, forwarded_path: str) -> bool:
    """True if ``forwarded_path``, decoded (repeatedly) and with dot segments removed, stays at or below
    ``base_path``: what an upstream that decodes and normalises would serve."""
    path = forwarded_path.split("?", 1)[0]
    for _ in range(3):
        path = unquote(path, encoding="latin-1").replace("\\", "/")
    parts = [p.split(";", 1)[0] for p in path.split("/")]
    normal = posixpath.normpath("/" + "/".join(parts).lstrip("/"))
    base = posixpath.normpath("/" + base_path.strip("/")) if base_path.strip("/") else "/"
    return base == "/" or normal == base or normal.startswith(base + "/")
