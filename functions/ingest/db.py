"""PostgreSQL connections: one blocking pool per database, and the one place driver errors are translated.

Connections come from one pool per database URL, created on first use and
shared by threads (``replay`` calls in from N workers). A database restart or
failover kills every pooled connection at once; the first step that finds
its connection dead invalidates the whole pool (every connection opened
before that moment is discarded when next checked out, SQLAlchemy-style),
and :func:`run` runs that step once more on a fresh connection. So a restart
costs each instance a reconnect, not a failed event.

Driver errors come out as the product's errors, by SQLSTATE class
(:func:`translate`):

* ``08`` connection exception, ``57`` operator intervention (shutdown, crash,
  cancelled statement), ``40`` transaction rollback, ``53`` insufficient
  resources, ``55`` lock not available, a missing table or privilege, and
  anything without an SQLSTATE: :class:`~ingest.errors.TransientError` (retry;
  nothing is lost while someone fixes it);
* ``22`` data exception, ``54`` program limit exceeded (``total size of jsonb
  object elements exceeds the maximum``) and an internal error on the size of
  a value (``invalid memory alloc request size``): the value is at fault,
  retrying cannot help: :class:`~ingest.errors.Rejected` with a reason a person
  understands.

Messages are one line and never quote the connection string or its password.

Example::

    state = run(settings, lambda conn: store.read_state(conn, settings, ref))
    with connection(settings) as conn:        # no retry: for steps that are not idempotent
        ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ingest.errors import IngestError, Rejected, TransientError

if TYPE_CHECKING:
    from ingest.config import Settings

T = TypeVar("T")

_PROBE_AFTER_IDLE_S = 30.0
_pools: dict[tuple[str | None, int, int], _BlockingPool] = {}
_pools_lock = threading.Lock()

# SQLSTATEs whose connection is gone: admin shutdown, crash shutdown, cannot connect now.
_LOST_CODES = frozenset({"57P01", "57P02", "57P03"})


class ConnectionLost(TransientError):
    """A pooled connection died under a step (restart, failover): the step may run again on a fresh one."""


@dataclasses.dataclass
class _Lease:
    conn: Any
    reused: bool  # the connection served an earlier step (it may have died since)
    lost: bool = False  # it failed at the connection level under this step


class _BlockingPool:
    """psycopg2's ThreadedConnectionPool raises when exhausted; this waits instead,
    and can be invalidated as a whole.

    Every connection remembers the pool's *epoch* when it was opened;
    :meth:`invalidate` starts a new epoch, and a connection from an older one
    is closed instead of handed out (checked out ones when they come back).
    """

    def __init__(self, dsn: str | None, size: int, connect_timeout: int) -> None:
        from psycopg2.pool import ThreadedConnectionPool

        self._slots = threading.BoundedSemaphore(size)
        self._idle_since: dict[int, float] = {}
        self._epoch_of: dict[int, int] = {}
        self._epoch = 0
        self._lock = threading.Lock()
        self.invalidations = 0
        self._pool = ThreadedConnectionPool(
            0,  # nothing opened up front: the first event opens what it needs
            size,
            dsn=dsn or "",  # '' = libpq's PG* variables
            connect_timeout=connect_timeout,
            application_name="metrics-ingest",
            # A stuck lock or query fails the event (retried) instead of hanging it.
            options="-c lock_timeout=10s -c statement_timeout=60s",
        )
        # psycopg2 closes a returned connection when more than ``minconn`` are
        # idle; raised after construction, connections still open lazily but
        # stay open for the next event (a connect costs more than the query).
        self._pool.minconn = size

    @contextlib.contextmanager
    def get(self) -> Iterator[_Lease]:
        self._slots.acquire()
        lease: _Lease | None = None
        try:
            lease = self._checked_out()
            yield lease
        except BaseException as exc:
            if lease is not None and _connection_lost(exc, lease.conn):
                lease.lost = True
                self._invalidate_from(lease.conn)
            raise
        finally:
            if lease is not None:
                self._give_back(lease.conn, close=lease.lost or bool(lease.conn.closed) or self._stale(lease.conn))
            self._slots.release()

    def invalidate(self) -> None:
        """Discard every connection opened so far (idle ones at their next checkout)."""
        with self._lock:
            self._epoch += 1
            self.invalidations += 1

    def _invalidate_from(self, conn: Any) -> None:
        # Only the first connection to die starts a new epoch: the others of
        # the same burst are already stale, and connections the retries open
        # meanwhile must not be thrown away again.
        with self._lock:
            if self._epoch_of.get(id(conn), -1) == self._epoch:
                self._epoch += 1
                self.invalidations += 1

    def _stale(self, conn: Any) -> bool:
        return self._epoch_of.get(id(conn), -1) < self._epoch

    def _give_back(self, conn: Any, *, close: bool) -> None:
        if close:
            self._epoch_of.pop(id(conn), None)
            self._idle_since.pop(id(conn), None)
        else:
            self._idle_since[id(conn)] = time.monotonic()
        self._pool.putconn(conn, close=close)

    def _checked_out(self) -> _Lease:
        """A live-looking connection: stale or closed ones are discarded; one idle
        for a while is probed first (a round trip only after long idleness)."""
        import psycopg2

        while True:
            conn = self._pool.getconn()
            if id(conn) not in self._epoch_of:  # opened just now
                with self._lock:
                    self._epoch_of[id(conn)] = self._epoch
                return _Lease(conn, reused=False)
            idle_since = self._idle_since.pop(id(conn), None)
            if conn.closed or self._stale(conn):
                self._give_back(conn, close=True)
                continue
            if idle_since is not None and time.monotonic() - idle_since > _PROBE_AFTER_IDLE_S:
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                    conn.rollback()
                except psycopg2.Error as exc:
                    if _connection_lost(exc, conn):
                        self._invalidate_from(conn)
                    self._give_back(conn, close=True)
                    continue
            return _Lease(conn, reused=True)

    def close(self) -> None:
        self._pool.closeall()


def pool(settings: Settings) -> _BlockingPool:
    """The process's pool for ``settings``' database (created on first use)."""
    key = (settings.database_url, settings.db_pool_size, settings.db_connect_timeout)
    found = _pools.get(key)
    if found is not None:
        return found
    with _pools_lock:
        if key not in _pools:
            _pools[key] = _BlockingPool(settings.database_url, settings.db_pool_size, settings.db_connect_timeout)
        return _pools[key]


def close_pools() -> None:
    """Close every pooled connection (tests, and a CLI before exiting)."""
    with _pools_lock:
        for p in _pools.values():
            p.close()
        _pools.clear()


@contextlib.contextmanager
def connection(settings: Settings) -> Iterator[Any]:
    """A pooled connection; driver errors come out as the product's errors (see :func:`translate`).

    A pooled connection that died under the block raises :class:`ConnectionLost`
    (a TransientError) after invalidating the pool; :func:`run` retries on it.
    """
    import psycopg2

    lease: _Lease | None = None
    try:
        with pool(settings).get() as lease:
            yield lease.conn
    except psycopg2.Error as exc:
        error = translate(exc, settings)
        if lease is not None and lease.lost and lease.reused and isinstance(error, TransientError):
            error = ConnectionLost(str(error))
        raise error from exc


def run(settings: Settings, step: Callable[[Any], T]) -> T:
    """``step(conn)`` on a pooled connection, run once more on a fresh connection
    when the pooled one turned out dead (restart, failover).

    Only for idempotent steps: reads, and writes whose second run changes
    nothing that the first one did (the generation-guarded write: a commit
    whose acknowledgement was lost is found on the retry and recorded
    ``duplicate``). A connection that cannot be opened at all is not retried
    here: that is an outage, and the event's own redelivery retries it.

    Example::

        state = run(settings, lambda conn: store.read_state(conn, settings, ref))
    """
    try:
        with connection(settings) as conn:
            return step(conn)
    except ConnectionLost as exc:
        from ingest.logs import log_event

        # Not an event's outcome (the step is retried now): a line for the
        # operator, who may want to know the database restarted.
        log_event("WARNING", f"pooled database connection lost, retrying on a fresh one: {exc}",
                  outcome="reconnect")
        with connection(settings) as conn:
            return step(conn)


def _connection_lost(exc: BaseException, conn: Any) -> bool:
    """Whether ``exc`` means the connection itself is unusable (not just the statement failed)."""
    import psycopg2

    if conn is not None and conn.closed:
        return True
    if not isinstance(exc, psycopg2.Error):
        return False
    code = exc.pgcode or ""
    if code.startswith("08") or code in _LOST_CODES:
        return True
    return isinstance(exc, psycopg2.InterfaceError) or (isinstance(exc, psycopg2.OperationalError) and not code)


def translate(exc: Exception, settings: Settings | None = None) -> IngestError:
    """The product's error for a psycopg2 error, decided by its SQLSTATE class.

    Example::

        try:
            cur.execute(...)
        except psycopg2.Error as exc:
            raise translate(exc, settings) from exc
    """
    import psycopg2

    code = getattr(exc, "pgcode", None) or ""
    first = _first_line(exc, settings)
    if code in ("42P01", "42703", "3F000"):
        # Configuration (QUICKTEST_TABLE, migrations not applied): retrying
        # until someone fixes it loses no event; acknowledging would.
        return TransientError(
            f"database schema problem (run `metrics-ingest migrate`, check QUICKTEST_TABLE): {first}"
        )
    if code == "42501":
        return TransientError(
            f"database permission problem (grant with `metrics-ingest migrate --function-role`): {first}"
        )
    if code.startswith("22"):
        return Rejected(f"PostgreSQL cannot store the document: a value it refuses ({first})")
    if code.startswith("54"):
        return Rejected(f"PostgreSQL cannot store the document: it exceeds a PostgreSQL limit ({first})")
    if code == "XX000" and "memory alloc request size" in first:
        return Rejected(f"PostgreSQL cannot store the document: a value too large for it to process ({first})")
    if not code and isinstance(exc, psycopg2.ProgrammingError) and "dsn" in str(exc).lower():
        # libpq's own parse error quotes the string, password included.
        return TransientError("DATABASE_URL is not a valid connection string (not shown: it may hold a password)")
    what = f"{type(exc).__name__} {code}" if code else type(exc).__name__
    return TransientError(f"database error ({what}): {first}")


def _first_line(exc: BaseException, settings: Settings | None) -> str:
    """The driver's message, one line, with any password it might echo masked."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    for secret in _secrets(settings):
        line = line.replace(secret, "***")
    return line


def _secrets(settings: Settings | None) -> list[str]:
    from ingest.redact import dsn_secrets

    found = [os.environ.get("PGPASSWORD") or ""]
    url = settings.database_url if settings is not None else None
    # Every secret libpq takes (password, sslpassword, ...: ingest.redact's rule). An
    # unparsable URL yields none: libpq never connected with it, so no message can
    # hold its password; Settings refuses such a URL before this.
    found += dsn_secrets(url)
    return [s for s in found if len(s) >= 3]
