"""Ending a failed transaction without hiding why it failed."""

from __future__ import annotations

import sqlite3


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, for a caller that is already raising an error.

    Never replaces that error: SQLite may have rolled back on its own (``SQLITE_FULL``, an I/O error: then
    ``in_transaction`` is false, or ``ROLLBACK`` fails with "no transaction is active"), and Ctrl-C may land
    before ``BEGIN`` ran. A ROLLBACK that fails is ignored; the original exception propagates.
    """
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass
