"""The gateway's stderr: one line per problem, never one per request or connection, never a traceback.

``warn_once`` reports a problem once (until ``clear``); ``warn_every`` at most once per ``interval`` per
kind, saying how many more happened meanwhile. ``capture`` routes aiohttp's and asyncio's own log records
and the event loop's exception handler (e.g. ``accept()`` failing with EMFILE) into ``warn_every`` while the
gateway runs; ``APIMON_DEBUG=1`` adds tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

PREFIX = "apimon gateway: "


class GatewayLog:
    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self._once: set[str] = set()
        self._last: dict[str, float] = {}
        self._more: dict[str, int] = {}
        self.debug = bool(os.environ.get("APIMON_DEBUG"))

    def write(self, line: str) -> None:
        try:
            sys.stderr.write(PREFIX + line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or a broken pipe: never take the gateway down
            pass

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._once:
            self._once.add(key)
            self.write(f"warning: {message}")

    def clear(self, key: str) -> None:
        self._once.discard(key)

    def warn_every(self, key: str, message: str, interval: float | None = None) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        every = self.interval if interval is None else interval
        if last is not None and now - last < every:
            self._more[key] = self._more.get(key, 0) + 1
            return
        more = self._more.pop(key, 0)
        self._last[key] = now
        self.write(f"warning: {message}" + (f" ({more} more like it since the last report)" if more else ""))

    # ---------------------------------------------------------------- other libraries' logging
    @contextmanager
    def capture(self, loop) -> Iterator[None]:
        handler = _Bridge(self)
        loggers = [logging.getLogger(name) for name in ("aiohttp", "asyncio")]
        saved = [(lg, lg.propagate, lg.level) for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            lg.propagate = False
            if lg.level == logging.NOTSET or lg.level > logging.WARNING:
                lg.setLevel(logging.WARNING)
        old_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        try:
            yield
        finally:
            loop.set_exception_handler(old_handler)
            for lg, propagate, level in saved:
                lg.removeHandler(handler)
                lg.propagate = propagate
                lg.setLevel(level)

    def _loop_exception(self, loop, context: dict) -> None:
        exc = context.get("exception")
        message = context.get("message") or "event loop error"
        if isinstance(exc, OSError) and exc.errno is not None:
            key = f"loop:{message}:{exc.errno}"
            text = f"{message}: {exc.strerror or exc} (errno {exc.errno})"
            if exc.errno in (24, 23):  # EMFILE, ENFILE
                text += "; the open-file limit is exhausted: raise `ulimit -n` or lower the connection limit"
        else:
            key = f"loop:{message}:{type(exc).__name__}"
            text = message + (f": {type(exc).__name__}: {exc}" if exc is not None else "")
        self.warn_every(key, text)
        if self.debug and exc is not None:
            import traceback

            traceback.print_exception(exc)


class _Bridge(logging.Handler):
    def __init__(self, log: GatewayLog):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            text += f": {type(exc).__name__}: {exc}"
        self.log.warn_every(f"log:{record.name}:{record.msg}", f"{record.name}: {text}")
        if self.log.debug and record.exc_info:
            import traceback

            traceback.print_exception(*record.exc_info)
