"""The one writer behind every ``--out``: atomic, owner-only, and never replacing what it should not.

Rules (README, "Output files"):

- A regular file (new or existing) is written to a temporary file in the same directory, flushed to disk and
  then renamed over the target, so a reader sees the old file or the new one, never half of one. The result
  is readable by its owner only (0600), also when it replaces an existing file with a wider mode.
- A target that exists and is not a regular file (a FIFO, a character device such as ``/dev/null`` or
  ``/dev/stdout``) is written *into*: opened for writing, never truncated by rename, never replaced.
- A symlink is resolved on purpose: apimon writes through it to the file it points to (by the rules above,
  so the target is replaced atomically and the symlink stays a symlink). A dangling symlink or a loop is
  refused: apimon never creates a file where a symlink points.
- A directory, a missing directory, a read-only directory, or a full disk (ENOSPC, EDQUOT, or a file size
  limit) is an :class:`OutFileError` naming the path; on a full disk the previous file is left as it was
  and no empty or partial file is left behind.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class OutFileError(Exception):
    """A file could not be written; the message names the path and what to do."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _resolve(path: str) -> tuple[str, os.stat_result | None]:
    """(where to write, its stat or None when it does not exist yet), or OutFileError."""
    target = path
    if os.path.islink(path):
        target = os.path.realpath(path)
        try:
            st = os.stat(path)  # follows the link
        except FileNotFoundError:
            raise OutFileError(f"cannot write {path}: it is a symlink to {target}, which does not exist; "
                               "apimon writes through a symlink only to an existing file") from None
        except OSError as exc:
            raise OutFileError(f"cannot write {path}: {_reason(exc)}") from None
        if not stat.S_ISREG(st.st_mode):
            return path, st  # a FIFO or device behind the link (/dev/stdout -> a pipe): opened through it
        return target, st
    try:
        return target, os.stat(target)
    except FileNotFoundError:
        return target, None
    except OSError as exc:
        raise OutFileError(f"cannot write {path}: {_reason(exc)}") from None


def _write_error(path: str, exc: OSError, existed: bool | None) -> OutFileError:
    """``existed``: None for a FIFO or device (written into: there is no previous file to keep)."""
    if exc.errno in _FULL:
        kept = {True: "; the previous file is unchanged", False: "; no file was written", None: ""}[existed]
        return OutFileError(f"cannot write {path}: {_reason(exc)} (the disk or a size limit is full){kept}")
    if exc.errno == errno.EPIPE:
        return OutFileError(f"cannot write {path}: its reader closed it before the end")
    return OutFileError(f"cannot write {path}: {_reason(exc)}")


class _Guarded:
    """A text stream whose write errors become OutFileError (so an OSError while *reading* what is being
    written, e.g. from a ledger, is not reported as a write error)."""

    def __init__(self, fh: TextIO, path: str, existed: bool | None) -> None:
        self._fh, self._path, self._existed = fh, path, existed

    def write(self, text: str) -> int:
        try:
            return self._fh.write(text)
        except OSError as exc:
            raise _write_error(self._path, exc, self._existed) from None

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as exc:
            raise _write_error(self._path, exc, self._existed) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


@contextmanager
def open_out(path: str | os.PathLike, *, newline: str | None = None, encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text stream onto ``path`` by the module's rules; the file appears (or is replaced) only when the
    ``with`` block ends without an exception."""
    path = os.fspath(path)
    target, st = _resolve(path)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutFileError(f"cannot write {path}: it is a directory; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        yield from _into_special(path, target, newline, encoding)
        return
    directory = os.path.dirname(os.path.abspath(target)) or "."
    if not os.path.isdir(directory):
        raise OutFileError(f"cannot write {path}: the directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".apimon-tmp", dir=directory)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutFileError(f"cannot write {path}: the directory {directory} is not writable "
                               f"({_reason(exc)})") from None
        raise _write_error(path, exc, st is not None) from None
    existed = st is not None
    try:
        os.fchmod(fd, 0o600)
        fh = os.fdopen(fd, "w", encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        yield _Guarded(fh, path, existed)  # type: ignore[misc]
        try:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(tmp, target)
        except OSError as exc:
            raise _write_error(path, exc, existed) from None
    except BaseException:
        _close_quietly(fh)  # a full disk fails the close's flush again: the first error is the one to report
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _sync_dir(directory)


def _into_special(path: str, target: str, newline: str | None, encoding: str) -> Iterator[TextIO]:
    """Write into a FIFO or a device: it stays what it is (never truncated, chmod-ed or replaced)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise OutFileError(f"cannot write {path}: {_reason(exc)}") from None
    fh = os.fdopen(fd, "w", encoding=encoding, newline=newline)
    try:
        yield _Guarded(fh, path, None)  # type: ignore[misc]
        try:
            fh.flush()
        except OSError as exc:
            raise _write_error(path, exc, None) from None
    finally:
        _close_quietly(fh)


def _close_quietly(fh) -> None:
    try:
        fh.close()
    except OSError:
        pass


def _sync_dir(directory: str) -> None:
    """Make the rename durable (best effort: not every file system lets a directory be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_out(path: str | os.PathLike, text: str, *, newline: str | None = None) -> None:
    """Write ``text`` to ``path`` by the module's rules."""
    with open_out(path, newline=newline) as fh:
        fh.write(text)
