"""A command's bounds on waiting for a gateway, and what it says while it waits (issue 18.2, issue 11 ``-v``).

* Every HTTP call has a connect and a read timeout (``TIMEOUTS``); a call made when the command's deadline is
  near gets what is left of it (``timeouts()``).
* The command's retries share one budget (``RETRY_BUDGET`` seconds of failed attempts and retry waits, all
  calls together); once it is spent, or the deadline has passed, a failing call fails instead of retrying
  (``may_retry()``).
* ``--timeout SECONDS`` / ``APIMON_TIMEOUT``: the deadline. A call that runs into it ends with
  ``CommandTimeout`` naming the endpoint, the call and its last failure; a backstop ends the process 2 s
  after the deadline with that message if something blocks where no timeout reaches (a DNS lookup, a
  credential helper), exit 1.
* After ``NOTICE_AFTER`` (2 s) of waiting for a call apimon says on stderr what it is waiting for, whether
  retries are going on and why, and repeats it every ``NOTICE_EVERY`` seconds while the wait goes on.
* ``APIMON_LOG=debug`` (``-v``): one line per HTTP call on stderr: provider, method, path, status, ms, retry
  count. Paths pass through ``redact`` (the plan's secrets, key values, query values of credential-like
  names); headers and bodies are never logged.

Providers use it through ``track(...)``; this module imports no SDK.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from ...security.redact import add_secrets, redact  # noqa: F401 - add_secrets: for providers
from ..base import ProviderError
from . import TIMEOUTS, Timeouts

NOTICE_AFTER = 2.0
NOTICE_EVERY = 10.0
RETRY_BUDGET = 60.0  # seconds of failed attempts and retry waits per command, all calls together
BACKSTOP_GRACE = 2.0
TIMEOUT_ENV = "APIMON_TIMEOUT"
LOG_ENV = "APIMON_LOG"


class CommandTimeout(ProviderError):
    """The command's deadline (--timeout / APIMON_TIMEOUT) passed while waiting for a gateway."""


# ---------------------------------------------------------------- redaction

_SENSITIVE_QUERY = re.compile(r"(key|token|secret|signature|sig|password|code|credential)", re.I)


def redact_path(url_or_path: str) -> str:
    """A URL's path and query as safe to print: secrets masked, credential-like query values dropped."""
    parts = urlsplit(url_or_path)
    path = parts.path or "/"
    if parts.query:
        query = [(k, "***" if _SENSITIVE_QUERY.search(k) else v) for k, v in parse_qsl(parts.query, True)]
        path += "?" + urlencode(query, safe="*/:$,")
    return redact(path)


def base_of(url: str) -> str:
    """scheme://host[:port] of a URL (where a call goes, without path or credentials)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{p.scheme}://{host}{':' + str(p.port) if p.port else ''}"


# ---------------------------------------------------------------- the command's bounds


@dataclass
class _State:
    started: float = field(default_factory=time.monotonic)
    timeout: float | None = None
    deadline: float | None = None
    retry_spent: float = 0.0
    last_failure: str = ""
    last_call: str = ""
    backstop: threading.Thread | None = None


_state = _State()
_lock = threading.Lock()


def configure(timeout: float | None = None, *, start: float | None = None) -> None:
    """Set the command's deadline (``timeout`` seconds from ``start``, default now); None reads APIMON_TIMEOUT.
    The CLI calls it once per command; a bad APIMON_TIMEOUT raises ProviderError."""
    global _state
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if raw:
            try:
                timeout = float(raw)
            except ValueError:
                raise ProviderError(f"{TIMEOUT_ENV} must be a number of seconds; got {raw!r}") from None
            if not timeout > 0:
                raise ProviderError(f"{TIMEOUT_ENV} must be above 0; got {raw!r}")
    t0 = time.monotonic() if start is None else start
    with _lock:
        _state = _State(started=t0, timeout=timeout, deadline=None if timeout is None else t0 + timeout)
    if timeout is not None:
        _start_backstop()


def reset_budget() -> None:
    """A new provider run (one per command): its retries start with the whole budget."""
    with _lock:
        _state.retry_spent = 0.0
        _state.last_failure = _state.last_call = ""


def remaining() -> float | None:
    """Seconds left before the deadline (None: no deadline)."""
    d = _state.deadline
    return None if d is None else d - time.monotonic()


def expired() -> bool:
    left = remaining()
    return left is not None and left <= 0


def timeouts(base: Timeouts | None = None) -> tuple[float, float]:
    """(connect, read) for the next call: the per-call timeouts, at most what is left of the deadline."""
    b = base or TIMEOUTS
    left = remaining()
    if left is None:
        return b.connect, b.read
    left = max(0.05, left)
    return min(b.connect, left), min(b.read, left)


def spend_retry(seconds: float) -> None:
    with _lock:
        _state.retry_spent += max(0.0, seconds)


def may_retry() -> bool:
    """Whether a failed call may be tried again: the deadline has not passed and the retry budget is not spent."""
    return not expired() and _state.retry_spent < RETRY_BUDGET


def capped_wait(seconds: float) -> float:
    """A retry wait, at most what is left of the deadline."""
    left = remaining()
    return seconds if left is None else max(0.0, min(seconds, left))


def note_failure(call: str, failure: str) -> None:
    with _lock:
        _state.last_call, _state.last_failure = call, failure


def timeout_error(where: str, failure: str | None = None) -> CommandTimeout:
    """The error of a call that ran into the deadline: the endpoint and call, the bound, the last failure."""
    last = failure or _state.last_failure or "no answer"
    return CommandTimeout(f"gave up waiting for {where} after {_elapsed():.0f} s (--timeout / {TIMEOUT_ENV} "
                          f"{_state.timeout:g} s); last failure: {last}")


def budget_note() -> str:
    """Why a call stopped retrying, for its error message ("" if it did not stop for the budget)."""
    if expired():
        return f"; the command's --timeout of {_state.timeout:g} s has passed"
    if _state.retry_spent >= RETRY_BUDGET:
        return f"; the command's retry budget of {RETRY_BUDGET:g} s is spent"
    return ""


def _elapsed() -> float:
    return time.monotonic() - _state.started


def _start_backstop() -> None:
    state = _state

    def run() -> None:
        while True:
            left = (state.deadline or 0) + BACKSTOP_GRACE - time.monotonic()
            if state is not _state:
                return  # reconfigured
            if left <= 0:
                break
            time.sleep(min(left, 0.5))
        waiting = _oldest()
        where = waiting.describe() if waiting else (state.last_call or "the command to finish")
        msg = (f"error: gave up waiting for {where} after {_elapsed():.0f} s (--timeout / {TIMEOUT_ENV} "
               f"{state.timeout:g} s)" + (f"; last failure: {state.last_failure}" if state.last_failure else ""))
        try:
            _write(msg)
            sys.stdout.flush()
        finally:
            os._exit(1)

    state.backstop = threading.Thread(target=run, name="apimon-deadline", daemon=True)
    state.backstop.start()


# ---------------------------------------------------------------- calls in flight, notices, debug lines


@dataclass
class Call:
    """One logical gateway call (its retries included), as tracked while it runs."""

    provider: str  # "AWS", "Azure", "Apigee"
    url: str  # as sent (never printed as is: ``endpoint`` and ``path`` are)
    method: str
    label: str = ""  # shown instead of the path until the URL is known (AWS: the operation)
    started: float = field(default_factory=time.monotonic)
    retries: int = 0
    last_failure: str = ""
    retry_until: float = 0.0  # monotonic time the current retry wait ends (0: not waiting to retry)
    noticed: float = 0.0
    status: int | str = ""
    mark: float = field(default_factory=time.monotonic)  # the start of the current attempt

    def since_mark(self) -> float:
        """Seconds since the current attempt started (and start the next one now)."""
        now = time.monotonic()
        spent, self.mark = now - self.mark, now
        return spent

    @property
    def endpoint(self) -> str:
        """scheme://host[:port]"""
        return base_of(self.url)

    @property
    def path(self) -> str:
        """The URL's path and query, redacted (computed when printed: most calls never are)."""
        return redact_path(self.url) if self.url and not self.label else redact(self.label or "/")

    def describe(self) -> str:
        return f"{self.provider} at {self.endpoint} ({self.method} {self.path})"

    def retrying(self, failure: str, wait: float) -> None:
        """Called before a retry wait: the failure that caused it and how long apimon waits."""
        self.retries += 1
        self.last_failure = failure
        self.retry_until = time.monotonic() + wait
        note_failure(self.describe(), failure)

    def failed(self, failure: str) -> None:
        self.last_failure = failure
        note_failure(self.describe(), failure)


_inflight: dict[int, Call] = {}
_current = threading.local()
_monitor: threading.Thread | None = None
_out_lock = threading.Lock()


def debug_enabled() -> bool:
    return os.environ.get(LOG_ENV, "").strip().lower() == "debug"


def _write(line: str) -> None:
    with _out_lock:
        try:
            sys.stderr.write(redact(line) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def current() -> Call | None:
    """The call this thread is making (retry policies report to it)."""
    return getattr(_current, "call", None)


@contextmanager
def track(provider: str, url: str, method: str) -> Iterator[Call]:
    """Track one call: notices while it waits, the debug line when it ends. Set ``call.status`` before
    leaving (an exception leaves the failure as its status)."""
    call = Call(provider, url, method.upper())
    key = id(call)
    previous = current()
    _current.call = call
    with _lock:
        _inflight[key] = call
    _ensure_monitor()
    try:
        yield call
    except BaseException as exc:
        if not call.status:
            call.status = call.last_failure or type(exc).__name__
        raise
    finally:
        _current.call = previous
        with _lock:
            _inflight.pop(key, None)
        if debug_enabled():
            ms = (time.monotonic() - call.started) * 1000
            _write(f"apimon: {call.provider} {call.method} {call.endpoint}{call.path} -> {call.status or '?'} "
                   f"{ms:.0f} ms, {call.retries} {'retry' if call.retries == 1 else 'retries'}")


def _oldest() -> Call | None:
    with _lock:
        calls = list(_inflight.values())
    return min(calls, key=lambda c: c.started) if calls else None


def _ensure_monitor() -> None:
    global _monitor
    if _monitor is not None and _monitor.is_alive():
        return
    with _lock:
        if _monitor is not None and _monitor.is_alive():
            return
        _monitor = threading.Thread(target=_watch, name="apimon-waiting", daemon=True)
        _monitor.start()


def _watch() -> None:
    idle_since = time.monotonic()
    last_line = 0.0
    while True:
        time.sleep(0.25)
        now = time.monotonic()
        with _lock:
            calls = list(_inflight.values())
        if not calls:
            if now - idle_since > 5:
                return  # restarted by the next call
            continue
        idle_since = now
        due = [c for c in calls if now - c.started >= NOTICE_AFTER
               and (not c.noticed or now - c.noticed >= NOTICE_EVERY)]
        if not due or (last_line and now - last_line < NOTICE_AFTER * 2):
            continue
        last_line = now
        oldest = min(due, key=lambda c: c.started)
        for c in calls:
            if now - c.started >= NOTICE_AFTER:
                c.noticed = now
        others = len(calls) - 1
        _write(notice(oldest, now) + (f" (and {others} other call{'s' if others != 1 else ''})" if others else ""))


def notice(call: Call, now: float | None = None) -> str:
    """The line said while waiting for ``call``."""
    now = time.monotonic() if now is None else now
    waited = now - call.started
    text = f"apimon: waiting for {call.describe()}: {waited:.0f} s so far"
    if call.retries:
        text += (f"; retrying ({call.retries} {'retry' if call.retries == 1 else 'retries'} so far, last failure: "
                 f"{call.last_failure})")
        if call.retry_until > now:
            text += f", next attempt in {call.retry_until - now:.0f} s"
    left = remaining()
    if left is not None:
        text += f"; --timeout in {max(0.0, left):.0f} s"
    return text


# ---------------------------------------------------------------- error bodies


def excerpt(body: str | bytes | None, content_type: str | None = None, limit: int = 160) -> str:
    """A non-JSON error body (an HTML page from a proxy or load balancer) as one short line: the page's
    title or its first text, tags and whitespace removed."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    looks_html = "html" in (content_type or "").lower() or re.search(r"<\s*(html|!doctype|head|body|title)\b",
                                                                     text[:2000], re.I)
    if looks_html:
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        text = title.group(1) if title else re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.I | re.S)
        text = re.sub(r"<[^>]+>", " ", text)
        import html

        text = html.unescape(text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
