"""PostgreSQL backend of :class:`store.base.EventStore`: owned thread, one connection, group commit.

It has the same shape and the same semantics as the SQLite reference backend (``store/sqlite.py``);
what differs is what a client/server database adds. docs/postgres.md explains the design.

Why this shape
--------------
* psycopg's ``AsyncConnection`` does not run under Trio (it calls asyncio's ``get_running_loop``,
  see ../shared/research/deps.md §3). So the store owns one named thread (``lockerd-postgres``)
  that holds one *sync* connection and runs every statement; the Trio side queues jobs and is
  woken through ``TrioToken.run_sync_soon``, exactly as in the SQLite backend.
* **Group commit.** Every write job already queued when the thread picks up work joins ONE
  transaction (up to :data:`MAX_BATCH` jobs), each inside its own ``SAVEPOINT``, so a job that fails
  (stale expected version, a raising projection or ``write`` function) is rolled back alone while
  its neighbours commit. Results are handed out only after ``COMMIT`` returned. Reads run after the
  writes, in ``REPEATABLE READ READ ONLY`` transactions (one snapshot per read function, and no
  read function can write).
* **Expected versions** are checked against ``MAX(version)`` and enforced by the
  ``UNIQUE (stream_id, version)`` constraint: under READ COMMITTED another store instance can
  insert the same version between our check and our insert, and then the constraint (which makes
  the second inserter wait for the first to commit) turns that race into a ConcurrencyError.
* **read_all never skips** (the high-water-mark problem): an identity column hands out positions
  in insert order, but transactions commit in any order, so a reader could see position 11 before
  10 becomes visible and page past 10 forever. Every INSERT into ``events`` therefore first takes a
  transaction-scoped advisory lock through a statement-level trigger (migration 1 in
  ``store/migrations/postgres.py``): positions are drawn by one transaction at a time and that
  transaction is visible before the next one may draw any. Inside one lockerd process this costs
  nothing (there is one writer thread anyway); several processes on one database take turns per
  batch.
* **Every call is bounded.** ``connect_timeout`` bounds connecting, ``statement_timeout`` bounds
  each statement on the server, TCP keepalives and ``tcp_user_timeout`` bound a dead network, and a
  client-side watchdog cuts the socket of a statement that has had no answer for
  ``statement_timeout + client_grace`` seconds (a server stuck on its disk cannot honour its own
  timeout). ``idle_in_transaction_session_timeout`` frees locks of a client that vanished mid-batch.
* **Connection loss** fails the batch in flight with :class:`StoreUnavailable` and drops the
  connection; the next call connects again. If the connection is lost during ``COMMIT`` the
  outcome is unknown and the error says so: as after a cancellation, the caller must reload the
  stream version instead of assuming either outcome.

SQL handed to ``read``/``write`` and projection DDL is the portable dialect of ``store/base.py``:
``?`` placeholders are rewritten to psycopg's ``%s`` and a literal ``%`` to ``%%`` (see
:func:`to_pyformat`); ``?`` inside quoted strings, quoted identifiers, dollar quotes and comments is
left alone, but PostgreSQL operators spelled with ``?`` (jsonb ``?``, ``?|``, ``?&``) cannot be
written: use ``jsonb_exists()`` and friends. NUMERIC results (``SUM`` of integers, ``AVG``) come
back as ``int`` when whole and ``float`` otherwise, as SQLite would return them, never as
``Decimal``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, cast

import psycopg
import psycopg.errors
import trio
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from store.base import (
    ConcurrencyError,
    Projection,
    StoredEvent,
    StoreUnavailable,
)
from store.migrations.postgres import (
    ADVISORY_LOCK_NAMESPACE,
    LATEST_VERSION,
    MIGRATIONS,
    MIGRATIONS_TABLE_DDL,
)
from store.threaded import Job, ThreadedEventStore
from store.threaded import unavailable as _unavailable

__all__ = [
    "DEFAULT_CLIENT_GRACE",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_STATEMENT_TIMEOUT",
    "MAX_BATCH",
    "SCHEMA_VERSION",
    "THREAD_NAME",
    "WATCHDOG_THREAD_NAME",
    "PostgresEventStore",
    "open_postgres_store",
    "to_pyformat",
]

logger = logging.getLogger(__name__)

THREAD_NAME: Final = "lockerd-postgres"
WATCHDOG_THREAD_NAME: Final = "lockerd-postgres-watchdog"
#: Most jobs (reads and writes together) taken from the queue per round, as in SQLite.
MAX_BATCH: Final = 500
SCHEMA_VERSION: Final = LATEST_VERSION
#: Events fetched per page when projections are rebuilt.
REBUILD_PAGE: Final = 1000
#: Seconds to wait for a connection (libpq's ``connect_timeout``; a URL may set its own).
DEFAULT_CONNECT_TIMEOUT: Final = 5
#: Seconds one statement may run on the server before it is cancelled (``statement_timeout``).
DEFAULT_STATEMENT_TIMEOUT: Final = 30.0
#: Extra seconds the client waits past ``statement_timeout`` before it gives up on the server.
DEFAULT_CLIENT_GRACE: Final = 5.0
#: Seconds a session may sit idle inside a transaction before the server ends it.
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT: Final = 60.0

_EVENT_COLUMNS: Final = "position, stream_id, version, type, data::text, recorded_at"
_EVENTS_LOCK_SQL: Final = (
    f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_NAMESPACE}, 'events'::regclass::oid::integer)"
)
_MIGRATION_LOCK_SQL: Final = (
    f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_NAMESPACE},"
    " hashtext('lockerd.migrate:' || coalesce(current_schema(), '')))"
)
_CHANGING_COMMANDS: Final = ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY")


# --------------------------------------------------------------------------- placeholders


@lru_cache(maxsize=2048)
def to_pyformat(sql: str) -> str:
    """Rewrite portable SQL (``?`` placeholders) for psycopg (``%s``), escaping ``%`` as ``%%``.

    ``?`` is a placeholder only outside ``'strings'``, ``"identifiers"``, dollar quotes
    (``$tag$ ... $tag$``) and comments; there it is kept. Every ``%`` is doubled, inside quotes
    too, because psycopg's placeholder parser does not look at SQL quoting. Statements always
    run with a parameter tuple (possibly empty), so psycopg turns ``%%`` back into ``%``.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char == "?":
            out.append("%s")
            i += 1
        elif char == "%":
            out.append("%%")
            i += 1
        elif char in "'\"":
            end = _quoted_end(sql, i, char)
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end + 1
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("/*", i):
            end = _block_comment_end(sql, i)
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif char == "$" and (tag := _dollar_tag(sql, i)) is not None:
            close = sql.find(tag, i + len(tag))
            end = n if close < 0 else close + len(tag)
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _quoted_end(sql: str, start: int, quote: str) -> int:
    """Index just past the quoted token starting at ``start`` (doubled quotes escape).

    ``E'...'`` strings may also escape a quote with a backslash.
    """
    backslash = quote == "'" and start > 0 and sql[start - 1] in "eE"
    i = start + 1
    while i < len(sql):
        if backslash and sql[i] == "\\":
            i += 2
            continue
        if sql[i] == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return len(sql)


def _block_comment_end(sql: str, start: int) -> int:
    depth, i = 0, start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(sql)


def _dollar_tag(sql: str, start: int) -> str | None:
    """The ``$tag$`` opening a dollar quote at ``start``, or None (``$1``, ``a$b``, lone ``$``)."""
    if start > 0 and (sql[start - 1].isalnum() or sql[start - 1] in "_$"):
        return None
    end = start + 1
    while end < len(sql) and (sql[end].isalnum() or sql[end] == "_"):
        end += 1
    if end >= len(sql) or sql[end] != "$":
        return None
    tag = sql[start : end + 1]
    if len(tag) > 2 and tag[1].isdigit():
        return None
    return tag


# --------------------------------------------------------------------------- result types, messages


class _NumberLoader(Loader):
    """NUMERIC as ``int`` when whole, else ``float`` (what SQLite returns for the same query)."""

    def load(self, data: Buffer) -> int | float:
        value = Decimal(bytes(data).decode())
        if value == value.to_integral_value():
            return int(value)
        return float(value)


def _describe(url: str) -> str:
    """Where the URL points, without user or password (for messages and logs)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "PostgreSQL (unparsable URL)"
    host = info.get("host") or "local socket"
    return f"PostgreSQL at {host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


# --------------------------------------------------------------------------- watchdog


class _Watchdog:
    """Cuts the connection's socket when a statement has had no answer for ``limit`` seconds.

    The server's ``statement_timeout`` cannot help when the server itself is stuck (a hung disk,
    a stopped process) and TCP keeps acknowledging; psycopg's sync calls have no client-side
    timeout. Shutting the socket down wakes the blocked call with an error, the connection is
    then broken and dropped, and the next call connects again.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        #: Set when the watchdog cut the connection; stays set until the next connection, so
        #: every error that follows on the dead connection is explained by it.
        self.fired = False
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._fd: int | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=WATCHDOG_THREAD_NAME, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    @contextlib.contextmanager
    def guard(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        fd: int | None = None
        with contextlib.suppress(psycopg.Error):
            fd = conn.pgconn.socket
        with self._cond:
            self._fd = fd
            self._deadline = time.monotonic() + self.limit
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = None
                self._fd = None

    def _run(self) -> None:
        with self._cond:
            while not self._closing:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._deadline = None
                self.fired = True
                if self._fd is not None:
                    logger.warning("PostgreSQL did not answer within %.1f s; cutting", self.limit)
                    _shutdown_socket(self._fd)


def _shutdown_socket(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


# --------------------------------------------------------------------------- transaction


class _VersionClash(Exception):
    """The UNIQUE (stream_id, version) constraint fired: another writer got there first."""

    def __init__(self, stream_id: str, expected: int) -> None:
        super().__init__(f"stream {stream_id}: version taken concurrently")
        self.stream_id = stream_id
        self.expected = expected


class SwallowedDatabaseError(Exception):
    """A write function caught a database error and carried on.

    PostgreSQL aborts a transaction (here: the job's savepoint) at the first failed statement,
    unlike SQLite, so the function's work cannot be kept. Portable write functions avoid
    expected failures instead (``INSERT ... ON CONFLICT``) rather than catching them.
    """


class _PgTx:
    """:class:`SqlTx` over the store's connection; only ever used on the store thread.

    The public methods take portable SQL (``?``); ``run``/``command`` take psycopg SQL (``%s``)
    and are for this module's own statements. Every statement runs under the watchdog.
    """

    __slots__ = ("conn", "watchdog")

    def __init__(self, conn: psycopg.Connection[Any], watchdog: _Watchdog) -> None:
        self.conn = conn
        self.watchdog = watchdog

    # SqlTx
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.watchdog.guard(self.conn), self.conn.cursor() as cur:
            cur.execute(to_pyformat(sql), tuple(params))
            status = cur.statusmessage or ""
            return max(cur.rowcount, 0) if status.startswith(_CHANGING_COMMANDS) else 0

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self.watchdog.guard(self.conn), self.conn.cursor() as cur:
            cur.executemany(to_pyformat(sql), [tuple(row) for row in rows])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.run(to_pyformat(sql), tuple(params))

    # internal
    def run(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.watchdog.guard(self.conn), self.conn.cursor() as cur:
            cur.execute(cast(Any, sql), params)
            return cur.fetchall() if cur.description is not None else []

    def command(self, sql: str) -> None:
        with self.watchdog.guard(self.conn):
            self.conn.execute(cast(Any, sql))

    @property
    def status(self) -> TransactionStatus:
        return TransactionStatus(self.conn.info.transaction_status)

    @property
    def usable(self) -> bool:
        return not self.conn.closed and not self.conn.broken

    def rollback_quietly(self) -> None:
        if not self.usable or self.status == TransactionStatus.IDLE:
            return
        try:
            self.command("ROLLBACK")
        except psycopg.Error:
            logger.warning("ROLLBACK failed; dropping the connection", exc_info=True)


# --------------------------------------------------------------------------- the store


class PostgresEventStore(ThreadedEventStore[_PgTx]):
    """The PostgreSQL event store. Obtain one with :func:`open_postgres_store`, never directly.

    Counters and hook as in the SQLite backend: ``appends`` (append calls committed),
    ``batches`` (write transactions committed), ``last_batch_size`` (write jobs in the last
    committed transaction), ``connects`` (connections opened, the first included), and
    ``on_append_latency`` (seconds from submission to result of each append, on the Trio side).

    The public API and the thread plumbing live in :class:`store.threaded.ThreadedEventStore`;
    this class supplies the connection (with reconnects and the watchdog), migrations, the
    group commit with its position lock, and the append.
    """

    _backend = "PostgreSQL"
    _logger = logger
    _event_columns = _EVENT_COLUMNS
    _max_batch = MAX_BATCH
    _rebuild_page = REBUILD_PAGE
    _schema_version_sql = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"

    def __init__(
        self,
        url: str,
        projections: Sequence[Projection],
        trio_token: trio.lowlevel.TrioToken,
        *,
        connect_timeout: int,
        statement_timeout: float,
        client_grace: float,
        idle_in_transaction_timeout: float,
    ) -> None:
        if connect_timeout < 1 or statement_timeout <= 0 or client_grace < 0:
            raise ValueError("timeouts must be positive")
        super().__init__(projections, trio_token, thread_name=THREAD_NAME)
        self._url = url
        self._where = _describe(url)
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._idle_timeout = max(idle_in_transaction_timeout, statement_timeout)
        self._watchdog = _Watchdog(statement_timeout + client_grace)
        self._tx: _PgTx | None = None
        self.connects = 0

    # ------------------------------------------------------------------ hooks

    @staticmethod
    def _decode_recorded_at(value: Any) -> datetime:
        """psycopg returns ``timestamptz`` as an aware datetime; events carry it in UTC."""
        return cast(datetime, value).astimezone(UTC)

    def _open_error_reason(self) -> str:
        return f"cannot open the event store in {self._where}"

    async def _start(self) -> None:
        self._watchdog.start()
        await super()._start()

    async def _stop(self) -> None:
        """Let the thread finish every job already queued, then close the connection and join."""
        await super()._stop()
        self._watchdog.stop()

    # ------------------------------------------------------------------ store thread

    def _t_open(self) -> None:
        self._tx = self._t_connect()
        self._t_migrate(self._tx)

    def _t_close(self) -> None:
        self._t_discard()

    def _t_connect(self) -> _PgTx:
        """Open a session: bounded connect, autocommit (this module issues BEGIN/COMMIT), UTC."""
        given = conninfo_to_dict(self._url)
        limit_ms = int(self._watchdog.limit * 1000)
        defaults: dict[str, Any] = {
            "connect_timeout": self._connect_timeout,
            "application_name": "lockerd",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": limit_ms,
        }
        options = {key: value for key, value in defaults.items() if key not in given}
        conn = psycopg.connect(self._url, autocommit=True, **options)
        self._watchdog.fired = False
        try:
            conn.adapters.register_loader("numeric", _NumberLoader)
            tx = _PgTx(conn, self._watchdog)
            tx.command(
                "SET TIME ZONE 'UTC';"
                f" SET statement_timeout = {int(self._statement_timeout * 1000)};"
                f" SET idle_in_transaction_session_timeout = {int(self._idle_timeout * 1000)}"
            )
        except BaseException:
            conn.close()
            raise
        self.connects += 1
        return tx

    def _t_migrate(self, tx: _PgTx) -> None:
        """Bring the schema up to date and create projection tables, in one transaction.

        An advisory lock per schema makes concurrent openers (several processes starting at
        once) take turns; ``CREATE TABLE IF NOT EXISTS`` alone races in PostgreSQL.
        """
        tx.command("BEGIN")
        try:
            tx.run(_MIGRATION_LOCK_SQL)
            tx.command(MIGRATIONS_TABLE_DDL)
            current = int(tx.run("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0][0])
            if current > LATEST_VERSION:
                raise StoreUnavailable(
                    f"the database in {self._where} has schema version {current}, newer than "
                    f"this lockerd understands ({LATEST_VERSION}); refusing to touch it"
                )
            for migration in MIGRATIONS[current:]:
                for statement in migration.statements:
                    tx.command(statement)
                tx.run(
                    "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )
                logger.info(
                    "applied PostgreSQL migration %d: %s", migration.version, migration.description
                )
            for projection in self._projections:
                for statement in projection.ddl:
                    tx.execute(statement)
            tx.command("COMMIT")
        except BaseException:
            tx.rollback_quietly()
            raise

    def _t_discard(self) -> None:
        tx, self._tx = self._tx, None
        if tx is not None:
            with contextlib.suppress(Exception):
                tx.conn.close()

    def _t_session(self, jobs: list[Job[_PgTx, Any]]) -> _PgTx | None:
        """The live session, connecting again if the last one was lost; None fails ``jobs``."""
        if self._tx is not None and (
            not self._tx.usable or self._tx.status != TransactionStatus.IDLE
        ):
            self._t_discard()
        if self._tx is None:
            try:
                self._tx = self._t_connect()
            except Exception as exc:
                for job in jobs:
                    job.fail(_unavailable(f"cannot connect to {self._where}", exc))
                return None
        return self._tx

    def _translate(self, exc: Exception) -> Exception:
        """Connection-level failures become StoreUnavailable; the caller's errors stay as is."""
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            if self._watchdog.fired:
                return _unavailable(
                    f"{self._where} did not answer within {self._watchdog.limit:g} s", exc
                )
            if isinstance(exc, psycopg.errors.QueryCanceled):
                return _unavailable(f"statement cancelled after {self._statement_timeout:g} s", exc)
            return _unavailable(f"{self._where} failed", exc)
        return exc

    def _t_write_batch(self, tx: _PgTx, writes: list[Job[_PgTx, Any]]) -> None:
        committing = False
        try:
            # Statements without a result of interest ride along with the next SAVEPOINT in one
            # round trip: BEGIN (and the position lock) before the first job, RELEASE of the
            # previous job's savepoint before each later one. COMMIT releases the last one.
            prefix = "BEGIN"
            if any(job.locks_events for job in writes):
                # Take the position lock before any job can take a row lock: a batch then never
                # waits for it while holding rows that another process's batch, which holds the
                # lock, may want (no deadlock). Taken outside the savepoints, it is kept to COMMIT
                # even when the job that needed it is rolled back (harmless: the trigger would
                # take it again anyway).
                prefix += f"; {_EVENTS_LOCK_SQL}"
            for job in writes:
                tx.command(f"{prefix}; SAVEPOINT job")
                prefix = "RELEASE SAVEPOINT job"
                try:
                    job.value = job.fn(tx)
                    if tx.status == TransactionStatus.INERROR:
                        raise SwallowedDatabaseError(
                            "a statement failed inside the write function and the error was"
                            " caught there; PostgreSQL aborted the function's work"
                        )
                except Exception as exc:
                    tx.command("ROLLBACK TO SAVEPOINT job")
                    error = exc
                    if isinstance(exc, _VersionClash):
                        actual = self._t_stream_version(tx, exc.stream_id)
                        error = ConcurrencyError(exc.stream_id, exc.expected, actual)
                        error.__cause__ = exc.__cause__
                    job.fail(self._translate(error))
                if tx.status != TransactionStatus.INTRANS:
                    # A write fn ran COMMIT or ROLLBACK itself: what got committed is unknown.
                    raise psycopg.OperationalError("the write transaction ended unexpectedly")
            committing = True
            tx.command("COMMIT")
        except psycopg.Error as exc:
            lost = not tx.usable
            tx.rollback_quietly()
            if committing and lost:
                reason = "the connection was lost during COMMIT; the outcome is unknown"
            else:
                reason = "write transaction failed; nothing was committed"
            if self._watchdog.fired:
                reason += f" ({self._where} did not answer within {self._watchdog.limit:g} s)"
            for job in writes:
                job.fail(_unavailable(reason, exc))
            return
        self.appends += sum(1 for job in writes if job.is_append and job.error is None)
        self.last_batch_size = len(writes)
        self.batches += 1

    def _t_read_batch(self, tx: _PgTx, reads: list[Job[_PgTx, Any]]) -> None:
        """All reads of a round share one read-only snapshot; a failure starts a fresh one."""
        try:
            for job in reads:
                try:
                    if tx.status == TransactionStatus.INERROR:
                        tx.command("ROLLBACK")
                    if tx.status == TransactionStatus.IDLE:
                        tx.command("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    job.value = job.fn(tx)
                except Exception as exc:
                    job.fail(self._translate(exc))
        finally:
            tx.rollback_quietly()

    def _t_append(
        self,
        tx: _PgTx,
        stream_id: str,
        expected_version: int,
        rows: Sequence[tuple[str, str, Any]],
    ) -> list[StoredEvent]:
        """The append, inside the job's savepoint of the current write transaction.

        The INSERT inserts nothing unless ``MAX(version)`` equals the expected version (which
        also refuses a version beyond the end); then a ConcurrencyError reports the version
        found. A writer that bypasses the position lock could still insert between the check
        and the insert; the UNIQUE constraint then makes our INSERT wait for its transaction and
        fail, which :meth:`_t_write_batch` turns into a ConcurrencyError as well.
        """
        if not rows:
            actual = self._t_stream_version(tx, stream_id)
            if actual != expected_version:
                raise ConcurrencyError(stream_id, expected_version, actual)
            return []
        recorded_at = datetime.now(UTC)
        values = ", ".join(["(%s::bigint, %s::text, %s::text)"] * len(rows))
        params: list[Any] = [stream_id, recorded_at]
        for offset, (type_, text, _) in enumerate(rows, start=1):
            params += [expected_version + offset, type_, text]
        params += [stream_id, expected_version]
        try:
            # Check and insert in one round trip: no row is inserted unless the stream is at
            # the expected version. Rows are inserted (and positions drawn) in version order.
            returned = tx.run(
                "INSERT INTO events (stream_id, version, type, data, recorded_at)"
                " SELECT %s::text, v.version, v.type, v.data::json, %s::timestamptz"
                f" FROM (VALUES {values}) AS v (version, type, data)"
                " WHERE (SELECT COALESCE(MAX(version), 0) FROM events WHERE stream_id = %s)"
                " = %s ORDER BY v.version RETURNING version, position",
                params,
            )
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "events_stream_version":
                raise _VersionClash(stream_id, expected_version) from exc
            raise
        if not returned:
            actual = self._t_stream_version(tx, stream_id)
            raise ConcurrencyError(stream_id, expected_version, actual)
        positions = dict(returned)
        stored: list[StoredEvent] = []
        for offset, (type_, _, data) in enumerate(rows, start=1):
            version = expected_version + offset
            event = StoredEvent(
                position=positions[version],
                stream_id=stream_id,
                version=version,
                type=type_,
                data=data,
                recorded_at=recorded_at,
            )
            self._t_project(tx, event)
            stored.append(event)
        return stored


@asynccontextmanager
async def open_postgres_store(
    url: str,
    projections: Sequence[Projection] = (),
    *,
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    client_grace: float = DEFAULT_CLIENT_GRACE,
    idle_in_transaction_timeout: float = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT,
) -> AsyncIterator[PostgresEventStore]:
    """Open the PostgreSQL event store named by ``url`` for the ``async with`` body.

    Connects (within ``connect_timeout`` seconds, unless the URL sets ``connect_timeout``),
    applies pending migrations and projection DDL, and raises :class:`StoreUnavailable` if any
    of that fails. The schema is the first one on the session's ``search_path`` (choose another
    with ``?options=-csearch_path%3Dname`` in the URL). On exit every job already submitted still
    runs, then the connection is closed and the threads joined.
    """
    store = PostgresEventStore(
        url,
        projections,
        trio.lowlevel.current_trio_token(),
        connect_timeout=connect_timeout,
        statement_timeout=statement_timeout,
        client_grace=client_grace,
        idle_in_transaction_timeout=idle_in_transaction_timeout,
    )
    await store._start()
    try:
        yield store
    finally:
        await store._stop()
