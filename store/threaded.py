"""What the SQLite and PostgreSQL backends share: one owned thread, a job queue, the public API.

Both backends have the same shape (see the module docstring of ``store/sqlite.py``): the store
owns one named thread that holds the only connection and runs every statement; the Trio side
queues :class:`Job` objects on a :class:`queue.SimpleQueue` and is woken through
``TrioToken.run_sync_soon``. :class:`ThreadedEventStore` implements that plumbing and every
public method of :class:`store.base.EventStore` once, against the portable :class:`SqlTx`
interface (``?`` placeholders). A backend supplies what really differs, as overrides:

* opening and closing its connection on the thread (:meth:`ThreadedEventStore._t_open`,
  :meth:`ThreadedEventStore._t_close`) and handing out the live one
  (:meth:`ThreadedEventStore._t_session`);
* the group commit itself (:meth:`ThreadedEventStore._t_write_batch`,
  :meth:`ThreadedEventStore._t_read_batch`) and the append
  (:meth:`ThreadedEventStore._t_append`);
* how events are selected and decoded (:attr:`ThreadedEventStore._event_columns`,
  :meth:`ThreadedEventStore._decode_recorded_at`);
* names for messages and the logger to write to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar, Generic, TypeVar, cast

import trio

from store.base import NewEvent, Projection, Snapshot, SqlTx, StoredEvent, StoreUnavailable

__all__ = [
    "Job",
    "Kind",
    "ThreadedEventStore",
    "decode_event",
    "encode_data",
    "json_default",
    "quote_identifier",
    "unavailable",
]

T = TypeVar("T")
TxT = TypeVar("TxT", bound=SqlTx)


# --------------------------------------------------------------------------- helpers


def encode_data(data: Mapping[str, Any]) -> str:
    """Compact, key-sorted JSON, so equal data always gives byte-equal rows in either backend.

    NaN/Infinity are rejected because they are not JSON and PostgreSQL refuses them.
    Non-dict mappings (e.g. frozen views) are accepted and stored as objects. PostgreSQL keeps
    the text in a ``json`` column (verbatim), not ``jsonb``, which would rewrite numbers
    (``1e300`` becomes a 301-digit integer) and refuse ``\\u0000``.
    """
    return json.dumps(
        data, separators=(",", ":"), sort_keys=True, allow_nan=False, default=json_default
    )


def json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"event data value of type {type(value).__name__} is not JSON serializable")


def decode_event(row: Sequence[Any], decode_recorded_at: Callable[[Any], datetime]) -> StoredEvent:
    """A row of ``position, stream_id, version, type, data, recorded_at`` as a StoredEvent.

    ``data`` is JSON text; ``recorded_at`` is whatever the backend stores, turned into an aware
    UTC datetime by ``decode_recorded_at``.
    """
    position, stream_id, version, type_, data, recorded_at = row
    return StoredEvent(
        position=position,
        stream_id=stream_id,
        version=version,
        type=type_,
        data=json.loads(data),
        recorded_at=decode_recorded_at(recorded_at),
    )


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def unavailable(reason: str, cause: BaseException | None) -> StoreUnavailable:
    error = StoreUnavailable(reason if cause is None else f"{reason}: {cause}")
    error.__cause__ = cause
    return error


# --------------------------------------------------------------------------- jobs


class Kind(Enum):
    READ = "read"
    WRITE = "write"


class Job(Generic[TxT, T]):
    """One unit of work for the store thread and the slot its outcome comes back in.

    The thread fills ``value``/``error`` and only then asks the loop to set ``done``; the Trio
    side reads them only after ``done`` is set, so the two sides never touch a field at once.
    ``locks_events`` says the job needs the events table's position lock (PostgreSQL takes it
    for the whole batch; SQLite, whose write transaction already excludes every other writer,
    ignores it).
    """

    __slots__ = ("done", "error", "fn", "is_append", "kind", "locks_events", "value")

    def __init__(
        self, kind: Kind, fn: Callable[[TxT], T], *, is_append: bool, locks_events: bool
    ) -> None:
        self.kind = kind
        self.fn = fn
        self.is_append = is_append
        self.locks_events = locks_events
        self.done = trio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.value = None
        self.error = error

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        return cast(T, self.value)


# --------------------------------------------------------------------------- the store


class ThreadedEventStore(Generic[TxT]):
    """The public API and thread plumbing shared by the backends; never instantiated directly.

    Observability counters are plain ints written by the store thread and safe to read from the
    loop at any time: ``appends`` (append calls committed), ``batches`` (write transactions
    committed), ``last_batch_size`` (write jobs in the last committed transaction). Set
    ``on_append_latency`` to receive, on the Trio side, the seconds each append took from
    submission to its result (successful or not; cancelled callers report nothing).
    """

    #: Backend name used in messages ("the SQLite event store is closed").
    _backend: ClassVar[str]
    #: The backend module's logger, so log records keep their logger name.
    _logger: ClassVar[logging.Logger]
    #: The six columns :func:`decode_event` reads, as the backend selects them.
    _event_columns: ClassVar[str]
    #: Most jobs (reads and writes together) taken from the queue per round.
    _max_batch: ClassVar[int]
    #: Events fetched per page when projections are rebuilt.
    _rebuild_page: ClassVar[int]
    #: One row, one column: the version of the backend's own schema after migration.
    _schema_version_sql: ClassVar[str]

    def __init__(
        self,
        projections: Sequence[Projection],
        trio_token: trio.lowlevel.TrioToken,
        *,
        thread_name: str,
    ) -> None:
        self._projections: tuple[Projection, ...] = tuple(projections)
        self._token = trio_token
        self._jobs: queue.SimpleQueue[Job[TxT, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._t_main, name=thread_name, daemon=True)
        self._started = trio.Event()
        self._stopped = trio.Event()
        self._start_error: BaseException | None = None
        self._broken: BaseException | None = None
        self._closed = False
        self.appends = 0
        self.batches = 0
        self.last_batch_size = 0
        self.on_append_latency: Callable[[float], None] | None = None

    # ------------------------------------------------------------------ backend hooks

    @staticmethod
    def _decode_recorded_at(value: Any) -> datetime:
        """The stored ``recorded_at`` as an aware UTC datetime."""
        raise NotImplementedError

    def _open_error_reason(self) -> str:
        """Message prefix for a start failure that is not already a StoreUnavailable."""
        raise NotImplementedError

    def _t_open(self) -> None:
        """Connect (and migrate) on the store thread; raising fails :meth:`_start`."""
        raise NotImplementedError

    def _t_close(self) -> None:
        """Close whatever connection is open; also called after :meth:`_t_open` failed."""
        raise NotImplementedError

    def _t_session(self, jobs: list[Job[TxT, Any]]) -> TxT | None:
        """The transaction object to run ``jobs`` on; None after failing every one of them."""
        raise NotImplementedError

    def _t_write_batch(self, tx: TxT, writes: list[Job[TxT, Any]]) -> None:
        raise NotImplementedError

    def _t_read_batch(self, tx: TxT, reads: list[Job[TxT, Any]]) -> None:
        raise NotImplementedError

    def _t_append(
        self,
        tx: TxT,
        stream_id: str,
        expected_version: int,
        rows: Sequence[tuple[str, str, Any]],
    ) -> list[StoredEvent]:
        raise NotImplementedError

    # ------------------------------------------------------------------ public API (Trio side)

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[StoredEvent]:
        """Append ``events`` if the stream is at ``expected_version``; see :class:`EventStore`.

        Data is encoded (and decoded back) here, on the loop, so a value that is not JSON
        raises ``TypeError``/``ValueError`` in the caller before anything is queued, and the
        events handed to projections and returned are exactly what a later read returns.
        """
        if not stream_id:
            raise ValueError("stream_id must not be empty")
        if expected_version < 0:
            raise ValueError(f"expected_version must be >= 0, got {expected_version}")
        rows = []
        for event in events:
            text = encode_data(event.data)
            rows.append((event.type, text, json.loads(text)))

        def job(tx: TxT) -> list[StoredEvent]:
            return self._t_append(tx, stream_id, expected_version, rows)

        started = time.perf_counter()
        done = await self._run(Kind.WRITE, job, is_append=True, locks_events=True)
        self._report_latency(time.perf_counter() - started)
        return done.unwrap()

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[StoredEvent]:
        def job(tx: TxT) -> list[StoredEvent]:
            rows = tx.query(
                f"SELECT {self._event_columns} FROM events"
                " WHERE stream_id = ? AND version > ? ORDER BY version",
                (stream_id, after_version),
            )
            return [self._decode_event(row) for row in rows]

        return (await self._run(Kind.READ, job)).unwrap()

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Events with ``position > after_position`` in position order, at most ``limit``.

        Paging by the last position returned cannot skip events. SQLite has a single writer
        and assigns positions inside it, and a reader only ever sees whole committed
        transactions. PostgreSQL draws positions only under the events table's advisory lock,
        which a transaction keeps until it is visible (see ``store/postgres.py``), so a snapshot
        that shows some position shows every smaller position that will ever exist.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")

        def job(tx: TxT) -> list[StoredEvent]:
            rows = tx.query(
                f"SELECT {self._event_columns} FROM events"
                " WHERE position > ? ORDER BY position LIMIT ?",
                (after_position, limit),
            )
            return [self._decode_event(row) for row in rows]

        return (await self._run(Kind.READ, job)).unwrap()

    async def stream_version(self, stream_id: str) -> int:
        def job(tx: TxT) -> int:
            return self._t_stream_version(tx, stream_id)

        return (await self._run(Kind.READ, job)).unwrap()

    async def stream_ids(self) -> list[str]:
        """Every stream that has at least one event, sorted; actors are started from this.

        PostgreSQL sorts by code point (the column is ``COLLATE "C"``), as SQLite does.
        """

        def job(tx: TxT) -> list[str]:
            return [row[0] for row in tx.query("SELECT DISTINCT stream_id FROM events ORDER BY 1")]

        return (await self._run(Kind.READ, job)).unwrap()

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store or replace the stream's snapshot (it rides along in the next group commit)."""

        def job(tx: TxT) -> None:
            tx.execute(
                "INSERT INTO snapshots (stream_id, version, state) VALUES (?, ?, ?)"
                " ON CONFLICT (stream_id) DO UPDATE"
                " SET version = excluded.version, state = excluded.state",
                (snapshot.stream_id, snapshot.version, bytes(snapshot.state)),
            )

        (await self._run(Kind.WRITE, job)).unwrap()

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        def job(tx: TxT) -> Snapshot | None:
            rows = tx.query(
                "SELECT version, state FROM snapshots WHERE stream_id = ?", (stream_id,)
            )
            if not rows:
                return None
            version, state = rows[0]
            return Snapshot(stream_id=stream_id, version=version, state=bytes(state))

        return (await self._run(Kind.READ, job)).unwrap()

    async def read(self, fn: Callable[[SqlTx], T]) -> T:
        """Run ``fn`` on the store thread in a read-only transaction (one snapshot).

        SQLite switches the connection to ``query_only`` meanwhile; PostgreSQL runs ``fn`` in a
        ``REPEATABLE READ READ ONLY`` transaction. Either way a statement that tries to write
        fails loudly instead of writing outside the group-commit machinery.
        """
        return (await self._run(Kind.READ, fn)).unwrap()

    async def write(self, fn: Callable[[SqlTx], T]) -> T:
        """Run ``fn`` on the store thread inside the next group commit, in its own savepoint.

        If ``fn`` raises, its changes are rolled back and the exception is re-raised here;
        other jobs in the same transaction are unaffected. On PostgreSQL ``fn`` must not
        swallow database errors (see ``store.postgres.SwallowedDatabaseError``).
        """
        return (await self._run(Kind.WRITE, fn)).unwrap()

    async def record(
        self, stream_id: str, fn: Callable[[SqlTx], tuple[T, Sequence[NewEvent]]]
    ) -> tuple[T, list[StoredEvent]]:
        """Run ``fn`` and append the events it returns to the end of ``stream_id``, as one job.

        For streams with no actor of their own (operator changes to users, groups, tenants):
        ``fn`` writes plain tables and says which events record what it did (none: nothing is
        appended). Both share the job's savepoint in the next group commit, so the change and
        its events commit together or not at all, projections included. The stream's current
        version is read inside the write transaction, which excludes every other appender
        (SQLite's write lock, PostgreSQL's position lock), so there is no version to expect.
        """
        if not stream_id:
            raise ValueError("stream_id must not be empty")

        def job(tx: TxT) -> tuple[T, list[StoredEvent]]:
            result, events = fn(tx)
            if not events:
                return result, []
            rows = []
            for event in events:
                text = encode_data(event.data)
                rows.append((event.type, text, json.loads(text)))
            version = self._t_stream_version(tx, stream_id)
            return result, self._t_append(tx, stream_id, version, rows)

        return (await self._run(Kind.WRITE, job, is_append=True, locks_events=True)).unwrap()

    async def rebuild_projections(self) -> int:
        """Empty every projection table and replay all events into them, in one transaction.

        Readers never see a half-rebuilt read model: the deletes and the replay commit together.
        On PostgreSQL the events table's position lock is held throughout, so no other store
        instance can append (and project) meanwhile.
        """
        return (await self._run(Kind.WRITE, self._t_rebuild, locks_events=True)).unwrap()

    async def schema_version(self) -> int:
        """The version of the backend's own schema (events, snapshots) after migration."""

        def job(tx: TxT) -> int:
            return int(tx.query(self._schema_version_sql)[0][0])

        return (await self._run(Kind.READ, job)).unwrap()

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` if the backend does not answer."""

        def job(tx: TxT) -> None:
            tx.query("SELECT 1")

        (await self._run(Kind.READ, job)).unwrap()

    # ------------------------------------------------------------------ Trio-side plumbing

    async def _run(
        self,
        kind: Kind,
        fn: Callable[[TxT], T],
        *,
        is_append: bool = False,
        locks_events: bool = False,
    ) -> Job[TxT, T]:
        """Queue a job and wait until the thread has finished it; returns the finished job.

        An already-cancelled caller queues nothing. A caller cancelled while waiting leaves the
        job to complete on its own (see the module docstring of ``store/sqlite.py``).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise StoreUnavailable(f"the {self._backend} event store is closed")
        if self._broken is not None:
            raise unavailable(f"the {self._backend} store thread failed", self._broken)
        job = Job(kind, fn, is_append=is_append, locks_events=locks_events)
        self._jobs.put(job)
        await job.done.wait()
        return job

    def _report_latency(self, seconds: float) -> None:
        hook = self.on_append_latency
        if hook is None:
            return
        try:
            hook(seconds)
        except Exception:
            # The append has committed; a broken metrics hook must not make it look failed.
            self._logger.exception("on_append_latency hook raised")

    async def _start(self) -> None:
        self._thread.start()
        # Shielded: the thread is connecting and must be allowed to report back, or we could
        # not tell whether there is a connection to close.
        with trio.CancelScope(shield=True):
            await self._started.wait()
        if self._start_error is not None:
            await self._stop()
            error = self._start_error
            if isinstance(error, StoreUnavailable):
                raise error
            raise unavailable(self._open_error_reason(), error)

    async def _stop(self) -> None:
        """Let the thread finish every job already queued, then close the connection and join.

        Shielded, because leaving while the thread still runs would leave an orphan thread with
        an open connection behind, which is the one thing this context manager promises not to do.
        """
        self._closed = True
        self._jobs.put(None)
        with trio.CancelScope(shield=True):
            await self._stopped.wait()
        # The thread's last action was to schedule that wake-up, so this returns at once.
        self._thread.join()

    # ------------------------------------------------------------------ store thread

    def _decode_event(self, row: Sequence[Any]) -> StoredEvent:
        return decode_event(row, self._decode_recorded_at)

    def _t_notify(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # nobody is left to wake
            self._token.run_sync_soon(fn)

    def _t_main(self) -> None:
        try:
            try:
                self._t_open()
            except BaseException as exc:
                self._start_error = exc
                self._t_close()
                return
            finally:
                self._t_notify(self._started.set)
            try:
                self._t_serve()
            finally:
                self._t_close()
        except BaseException:
            self._logger.exception("%s store thread failed", self._backend)
        finally:
            self._t_notify(self._stopped.set)

    def _t_serve(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch: list[Job[TxT, Any]] = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            try:
                self._t_run_batch(batch)
            except BaseException as exc:
                # A bug in the store, not in a job: fail this batch and everything after it,
                # but keep draining the queue so that no caller waits forever.
                self._logger.exception(
                    "%s store thread crashed; failing all further jobs", self._backend
                )
                self._broken = exc
                for job in batch:
                    job.fail(unavailable(f"the {self._backend} store thread failed", exc))
                self._t_wake(batch)
                if not stop:
                    self._t_fail_until_stopped(exc)
                return
            self._t_wake(batch)
            if stop:
                return

    def _t_fail_until_stopped(self, cause: BaseException) -> None:
        while (job := self._jobs.get()) is not None:
            job.fail(unavailable(f"the {self._backend} store thread failed", cause))
            self._t_wake([job])

    def _t_wake(self, jobs: list[Job[TxT, Any]]) -> None:
        """One loop callback per batch, not per job: the loop wakes once for the whole batch."""

        def wake() -> None:
            for job in jobs:
                job.done.set()

        self._t_notify(wake)

    def _t_run_batch(self, batch: list[Job[TxT, Any]]) -> None:
        # Every job in a batch was queued before any of them got a result, so they are all
        # concurrent and any execution order is a valid one. Writes go first, in one
        # transaction; reads follow outside it, so they never see uncommitted data.
        writes = [job for job in batch if job.kind is Kind.WRITE]
        reads = [job for job in batch if job.kind is Kind.READ]
        if writes and (tx := self._t_session(writes)) is not None:
            self._t_write_batch(tx, writes)
        if reads and (tx := self._t_session(reads)) is not None:
            self._t_read_batch(tx, reads)

    def _t_stream_version(self, tx: TxT, stream_id: str) -> int:
        rows = tx.query(
            "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream_id = ?", (stream_id,)
        )
        return int(rows[0][0])

    def _t_project(self, tx: TxT, event: StoredEvent) -> None:
        """Apply every projection to ``event``, inside the current write transaction."""
        for projection in self._projections:
            projection.apply(tx, event)

    def _t_rebuild(self, tx: TxT) -> int:
        for projection in self._projections:
            for table in projection.tables:
                tx.execute(f"DELETE FROM {quote_identifier(table)}")
        replayed = 0
        after = 0
        while True:
            rows = tx.query(
                f"SELECT {self._event_columns} FROM events"
                " WHERE position > ? ORDER BY position LIMIT ?",
                (after, self._rebuild_page),
            )
            if not rows:
                return replayed
            for row in rows:
                self._t_project(tx, self._decode_event(row))
            replayed += len(rows)
            after = rows[-1][0]
