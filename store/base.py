"""The narrow interfaces every store backend implements.

Two protocols, because two kinds of caller need two kinds of access:

* :class:`EventStore` is what bank actors and the event-sourcing tools see: streams of events
  appended with an expected version, snapshots, the global order, projection rebuilds. Nothing
  else. SQLite and PostgreSQL are interchangeable behind it.
* :class:`Tables` is what the application's capabilities see for their plain tables (users,
  sessions, tenants, metric points, keys) and for reading read models: ``read(fn)`` and
  ``write(fn)`` run a synchronous function against the backend's connection inside one
  transaction, on the store's own thread, so no SQL ever runs on the Trio loop.

A backend implements both (:class:`Store`); the composition root hands each part only the
protocol it needs.

SQL handed to ``read``/``write`` and projection DDL is written once, portable between SQLite and
PostgreSQL: ``?`` placeholders (the PostgreSQL backend rewrites them), ``INSERT ... ON CONFLICT``
upserts, types TEXT / BIGINT / DOUBLE PRECISION / BOOLEAN stored as INTEGER 0/1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from domain.records import ConcurrencyError, NewEvent, Snapshot, StoredEvent

__all__ = [
    "ConcurrencyError",
    "EventStore",
    "NewEvent",
    "Projection",
    "Snapshot",
    "SqlTx",
    "Store",
    "StoreUnavailable",
    "StoredEvent",
    "Tables",
]

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The backend cannot be reached or failed in a way that is not the caller's fault."""


class SqlTx(Protocol):
    """A transaction handed to ``read``/``write`` functions and to projections."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


class Projection(Protocol):
    """A read model kept up to date inside the same transaction as the append.

    ``apply`` must be deterministic and depend only on the events (and the tables it owns), so
    that :meth:`EventStore.rebuild_projections` gives the same tables as live operation.
    """

    name: str
    ddl: Sequence[str]
    tables: Sequence[str]

    def apply(self, tx: SqlTx, event: StoredEvent) -> None: ...


class EventStore(Protocol):
    """Event streams with optimistic concurrency, snapshots and the global order."""

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[StoredEvent]:
        """Append atomically if the stream is at ``expected_version`` (0 = new stream).

        Raises :class:`ConcurrencyError` otherwise and writes nothing. Appends that arrive
        together share one database transaction (group commit); each still succeeds or fails
        on its own.
        """
        ...

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[StoredEvent]: ...

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Events in global order with ``position > after_position``.

        Never skips an event that a later call could still return below the last position
        returned (the PostgreSQL backend holds back positions of uncommitted transactions).
        """
        ...

    async def stream_version(self, stream_id: str) -> int: ...

    async def stream_ids(self) -> list[str]:
        """Every stream that has at least one event, sorted by code point."""
        ...

    async def save_snapshot(self, snapshot: Snapshot) -> None: ...

    async def load_snapshot(self, stream_id: str) -> Snapshot | None: ...

    async def rebuild_projections(self) -> int:
        """Drop and refill every projection's tables from the events; returns events replayed."""
        ...

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` if the backend does not answer."""
        ...

    async def schema_version(self) -> int:
        """The version of the backend's own schema (events, snapshots), after migration."""
        ...


class Tables(Protocol):
    """Plain tables and read models: a function run in one transaction on the store thread."""

    async def read(self, fn: Callable[[SqlTx], T]) -> T:
        """Run ``fn`` in a read-only transaction (one snapshot); a write in it fails loudly."""
        ...

    async def write(self, fn: Callable[[SqlTx], T]) -> T:
        """Run ``fn`` inside the next group commit, in its own savepoint.

        If ``fn`` raises, its changes are rolled back and the exception is re-raised here;
        other jobs in the same transaction are unaffected.
        """
        ...

    async def record(
        self, stream_id: str, fn: Callable[[SqlTx], tuple[T, Sequence[NewEvent]]]
    ) -> tuple[T, list[StoredEvent]]:
        """Run ``fn`` like :meth:`write` and append the events it returns to ``stream_id``
        (at its end, projections applied) in the same transaction; returns ``fn``'s result
        and the stored events. For operator changes to plain tables (users, groups, tenants),
        whose streams have no actor: see ``domain/streams.py``."""
        ...


class Store(EventStore, Tables, Protocol):
    """What a backend is: both views over one database."""
