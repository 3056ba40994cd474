"""Whether an error means that a database went away (refused the connection, lost it, or is shutting down) rather
than that a statement failed: the one place that knows how each driver says so. The API answers such an error
503 database_unavailable; a job whose database went away is run again."""

from __future__ import annotations

import errno
import socket
import sqlite3

import adbc_driver_manager
import asyncpg
from sqlalchemy import exc

from exporter.errors import DatabaseUnavailable

# The types an outage arrives as, for an exception handler to look at with is_outage().
DRIVER_ERRORS: tuple[type[Exception], ...] = (OSError, exc.DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError,
                                              asyncpg.InternalClientError, adbc_driver_manager.Error)
# SQLSTATEs of a connection that is gone or refused (PostgreSQL, Appendix A): class 08, connection exceptions;
# 57P01 admin_shutdown (a fast stop, or pg_terminate_backend), 57P02 crash_shutdown (another backend crashed),
# 57P03 cannot_connect_now (starting up or shutting down).
SQLSTATES = ("08", "57P01", "57P02", "57P03")
NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN,
                            errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})


def is_outage(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from or while handling, says a database cannot be reached or
    went away. A disk's errors (ENOSPC, EACCES, ...) and a failed statement are not outages."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _says_gone(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _says_gone(error: BaseException) -> bool:
    if isinstance(error, DatabaseUnavailable | ConnectionError | socket.gaierror | adbc_driver_manager.OperationalError
                  | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return True
    sqlstate = getattr(error, "sqlstate", None)  # asyncpg's errors, and SQLAlchemy's and ADBC's wrappers of them
    if isinstance(sqlstate, str) and sqlstate.startswith(SQLSTATES):
        return True
    if isinstance(error, exc.DBAPIError):
        # SQLAlchemy's own verdict on the connection; SQLite's OperationalError is "no such table" or "locked".
        return error.connection_invalidated or (
            isinstance(error, exc.InterfaceError | exc.OperationalError) and not isinstance(error.orig, sqlite3.Error))
    if isinstance(error, OSError):
        # No errno: asyncio's "Multiple exceptions" when every address refused, and libpq's errors through ADBC's
        # Arrow stream ("[libpq] ... server closed the connection unexpectedly").
        return error.errno in NETWORK_ERRNOS or (type(error) is OSError and error.errno is None)
    return False


def outage_reason(error: BaseException) -> str:
    """The first line of the error's text, for a message."""
    if isinstance(error, DatabaseUnavailable):
        return error.message
    text = str(getattr(error, "orig", None) or error).strip() or type(error).__name__
    return text.splitlines()[0]
