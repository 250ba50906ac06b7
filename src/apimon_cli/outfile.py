"""The one writer behind every ``--out``: atomic, owner-only, and never replacing what it should not.

Rules (README, "Output files"):

- A regular file (new or existing) is written to a temporary file in the same directory, flushed to disk and
  then renamed over the target, so a reader sees the old file or the new one, never half of one. The result
  is readable by its owner only (0600), also when it replaces an existing file with a wider mode.
- A target that exists and is not a regular file (a FIFO, a character device such as ``/dev/null`` or
  ``/dev/stdout``) is written *into*: opened for writing, never truncated by rename, never replaced.
- A symlink is resolved on purpose and never replaced: to a FIFO or character device, apimon writes into
  it (``/dev/stdout``); to a regular file in the link's own directory or below (``latest.csv ->
  2026/11.csv``), apimon writes through it (the target replaced atomically as above, the link kept). A link
  to a file elsewhere (``report.csv -> /etc/passwd`` planted in a checkout), a dangling link or a loop is
  refused: apimon never replaces a file outside the directory it was pointed at, nor creates one where a
  link points. Block devices are refused, directly or through a link.
- A directory, a missing directory, a read-only directory, or a full disk (ENOSPC, EDQUOT, or a file size
  limit) is an :class:`OutFileError` naming the path; on a full disk the previous file is left as it was
  and no empty or partial file is left behind.
"""

from __future__ import annotations

import errno
import os
import re
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


def _resolve(path: str) -> tuple[str, os.stat_result | None, bool]:
    """(where to write, its stat or None when it does not exist yet, whether to write into it rather than
    replace it), or OutFileError."""
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
        if stat.S_ISBLK(st.st_mode):
            raise OutFileError(f"cannot write {path}: it is a symlink to the block device {target}; apimon never "
                               "writes onto a disk")
        if not stat.S_ISREG(st.st_mode) or _names_a_descriptor(path):
            # a FIFO or character device behind the link, or an open descriptor (/dev/stdout, also when the
            # shell redirected it to a file): written into, appended to, never replaced
            return path, st, not stat.S_ISDIR(st.st_mode)
        home = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        if os.path.commonpath([target, home]) != home:
            # a link planted in a checkout (report.csv -> /etc/passwd) must not make a CI job replace a file
            # elsewhere: through a link, only files in the link's own directory or below
            raise OutFileError(f"cannot write {path}: it is a symlink to {target}, outside {home}; apimon writes "
                               "through a symlink only to a file in the link's directory or below (give the "
                               "target's own path to write it)")
        return target, st, False
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target, None, False
    except OSError as exc:
        raise OutFileError(f"cannot write {path}: {_reason(exc)}") from None
    if stat.S_ISBLK(st.st_mode):
        raise OutFileError(f"cannot write {path}: it is a block device; apimon never writes onto a disk")
    return target, st, not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)


_DESCRIPTOR = re.compile(r"/(?:proc/(?:self|thread-self|[0-9]+)|dev)/fd/[0-9]+")


def _names_a_descriptor(path: str) -> bool:
    """Whether ``path`` or a link on the way names an open file descriptor (``/dev/stdout``)."""
    hop = os.path.abspath(path)
    for _ in range(40):
        if _DESCRIPTOR.fullmatch(os.path.normpath(hop)):
            return True
        if not os.path.islink(hop):
            return False
        try:
            hop = os.path.join(os.path.dirname(hop), os.readlink(hop))
        except OSError:
            return False
    return False


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
    target, st, into = _resolve(path)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutFileError(f"cannot write {path}: it is a directory; give a file name")
    if into:
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
        # O_APPEND: a regular file behind /dev/stdout is the shell's redirection, never truncated by apimon
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
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
