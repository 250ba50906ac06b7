"""A reader that stops early (``apimon plan | head``) ends apimon quietly: no traceback, exit 141.

Python ignores SIGPIPE, so writing to a closed pipe raises ``BrokenPipeError`` wherever the write happens
(rich, csv, json). Left alone, click turns it into exit 1 (``plan | head`` would read as an error), rich
exits 1 itself (``render.output`` makes its consoles raise instead), and the final flush of stdout prints
"Exception ignored ...". Handled once, here: the command group turns the error into ``StdoutClosed``
(which click does not catch), ``main`` points stdout at /dev/null (so nothing is flushed into the closed
pipe at exit) and exits 141, what a shell reports for a process ended by SIGPIPE (128 + 13). The output
was cut short by its reader, which is not an apimon error.
"""

from __future__ import annotations

import errno
import os
import sys

from typer.core import TyperGroup

EXIT_BROKEN_PIPE = 128 + 13  # 141, as for a process ended by SIGPIPE


class StdoutClosed(Exception):
    """stdout's reader went away (a broken pipe)."""


def is_broken_pipe(exc: BaseException) -> bool:
    return isinstance(exc, StdoutClosed) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE)


class QuietPipeGroup(TyperGroup):
    """apimon's command group: a broken pipe in any command becomes ``StdoutClosed`` (click would exit 1)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise StdoutClosed() from None
            raise


def exit_quietly() -> None:
    """stdout is a closed pipe: point it at /dev/null so nothing more is written to it, and exit 141."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    sys.exit(EXIT_BROKEN_PIPE)
