"""PyMySQL connections from the settings: one long-lived connection, or a small pool."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import ClassVar, Protocol, Self, TypeAlias, TypeVar

import pymysql
from pymysql.connections import Connection
from pymysql.cursors import Cursor

from roadwatch.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# A refused or black-holed server should turn into a 503 quickly, not hang a request.
CONNECT_TIMEOUT_S = 5.0
# Long enough for a batch of 1000 events or a slow report query; a dead peer is noticed after it.
READ_TIMEOUT_S = 60.0
WRITE_TIMEOUT_S = 60.0
# How long a request waits for a free pooled connection before it is told the store is busy.
POOL_WAIT_S = 10.0

# Client error codes meaning the session is gone: can't connect (2003), server gone away (2006),
# lost during query (2013), lost in handshake (2055), server shutting down (1053),
# connection killed (1927), idle session closed by the server (4031).
_CONNECTION_LOST = frozenset({2003, 2006, 2013, 2055, 1053, 1927, 4031})
# The transaction was rolled back by the server and may simply be run again.
_TRANSACTION_ABORTED = frozenset({1205, 1213})

# PyMySQL classes are generic only in their stubs, so the alias stays a string at run time.
DbConnection: TypeAlias = "Connection[Cursor]"


class StoreError(Exception):
    """The event store failed."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or the session to it was lost."""


def error_code(exc: BaseException) -> int | None:
    """Return the MySQL error number carried by a PyMySQL exception, if any."""
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def is_connection_lost(exc: BaseException) -> bool:
    """Tell whether `exc` means the session is unusable and a new connection is needed."""
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, pymysql.err.OperationalError) and error_code(exc) in _CONNECTION_LOST


def is_transaction_aborted(exc: BaseException) -> bool:
    """Tell whether the server rolled the transaction back (deadlock, lock wait timeout)."""
    return isinstance(exc, pymysql.err.OperationalError) and error_code(exc) in _TRANSACTION_ABORTED


def connect(
    settings: Settings,
    *,
    autocommit: bool = False,
    database: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> DbConnection:
    """Open one utf8mb4 session to the RoadWatch database as the application user."""
    try:
        return pymysql.connect(
            host=settings.mysql_host,
            port=settings.mysql_port,
            user=settings.mysql_user,
            password=settings.mysql_password.get_secret_value(),
            database=database or settings.mysql_database,
            charset="utf8mb4",
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            read_timeout=READ_TIMEOUT_S,
            write_timeout=WRITE_TIMEOUT_S,
            # The server default is UTC already; a session that says so cannot drift from it.
            init_command="SET time_zone = '+00:00'",
        )
    except pymysql.err.MySQLError as exc:
        raise StoreUnavailable(
            f"cannot connect to MySQL at {settings.mysql_host}:{settings.mysql_port}: {exc}"
        ) from exc


def _close_quietly(conn: DbConnection) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def _rollback_or_close(conn: DbConnection) -> bool:
    """Roll back after a failed unit of work; return False if the session had to be dropped."""
    try:
        conn.rollback()
    except Exception:
        _close_quietly(conn)
        return False
    return True


class ConnectionSource(Protocol):
    """Something that lends a live connection for one unit of work."""

    def connection(self) -> contextlib.AbstractContextManager[DbConnection]:
        """Lend a connection; a session broken inside the block is dropped, not reused."""
        ...

    def close(self) -> None:
        """Close every connection held."""
        ...


class SingleConnection:
    """One long-lived session, opened on first use and reopened after it is lost.

    Suits a single writer such as the collector; a lock serialises callers from several threads.
    """

    def __init__(self, settings: Settings, *, autocommit: bool = False) -> None:
        self._settings = settings
        self._autocommit = autocommit
        self._conn: DbConnection | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self) -> Iterator[DbConnection]:
        """Lend the session, connecting first if there is none."""
        with self._lock:
            if self._conn is None:
                self._conn = connect(self._settings, autocommit=self._autocommit)
            conn = self._conn
            try:
                yield conn
            except BaseException as exc:
                if is_connection_lost(exc) or not _rollback_or_close(conn):
                    _close_quietly(conn)
                    self._conn = None
                raise

    def close(self) -> None:
        """Close the session if open."""
        with self._lock:
            if self._conn is not None:
                _close_quietly(self._conn)
                self._conn = None


class ConnectionPool:
    """A small thread-safe pool of sessions for a threaded server such as the API.

    At most `size` sessions exist; idle ones are reused newest first so that surplus ones age
    out on the server side instead of every session going stale together.
    """

    def __init__(self, settings: Settings, size: int = 8, *, autocommit: bool = True) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self._settings = settings
        self._autocommit = autocommit
        self._slots = threading.BoundedSemaphore(size)
        self._idle: queue.LifoQueue[DbConnection] = queue.LifoQueue()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[DbConnection]:
        """Lend a pooled session (opening one if none is idle) for one unit of work."""
        if self._closed:
            raise StoreUnavailable("connection pool is closed")
        if not self._slots.acquire(timeout=POOL_WAIT_S):
            raise StoreUnavailable(f"no free database connection after {POOL_WAIT_S:.0f} s")
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = connect(self._settings, autocommit=self._autocommit)
            try:
                yield conn
            except BaseException as exc:
                if is_connection_lost(exc):
                    _close_quietly(conn)
                    # A lost session usually means a restarted server: its idle siblings are
                    # stale too, and the retry must not pick one of them.
                    self._drain()
                elif _rollback_or_close(conn) and not self._closed:
                    self._idle.put(conn)
                raise
            if self._closed:
                _close_quietly(conn)
            else:
                self._idle.put(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle sessions; sessions in use are closed when they come back."""
        self._closed = True
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            _close_quietly(conn)


class SourceStore:
    """A store whose every method is one unit of work over a connection source.

    A session lost in the middle of a unit is reopened and the work run once more, as is a
    transaction the server rolled back; subclasses keep their writes idempotent for that.
    """

    # Retries are logged under the subclass's own module.
    _log: ClassVar[logging.Logger] = log

    def __init__(self, source: ConnectionSource) -> None:
        self._source = source

    @classmethod
    def connect(cls, settings: Settings) -> Self:
        """Return a store over one long-lived session (opened on first use)."""
        return cls(SingleConnection(settings))

    def close(self) -> None:
        """Close the connections of this store."""
        self._source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, work: Callable[[Cursor], T], what: str, *, transaction: bool) -> T:
        """Run `work` in one transaction, retrying once on a fresh session if it was lost."""
        for attempt in (1, 2):
            try:
                with self._source.connection() as conn:
                    if transaction and conn.get_autocommit():
                        conn.begin()
                    with conn.cursor() as cur:
                        result = work(cur)
                    # Also ends the read snapshot of a session without autocommit, so the
                    # next read sees newer commits.
                    if transaction or not conn.get_autocommit():
                        conn.commit()
                    return result
            except (pymysql.err.MySQLError, OSError) as exc:
                lost = is_connection_lost(exc)
                if attempt == 1 and (lost or is_transaction_aborted(exc)):
                    self._log.warning("%s: retrying once after %s", what, exc)
                    continue
                if lost:
                    raise StoreUnavailable(f"{what}: database unavailable: {exc}") from exc
                raise StoreError(f"{what} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover
