"""The narrow interface every event store backend implements.

Actors and the HTTP front end only ever see :class:`EventStore`; SQLite and PostgreSQL are
interchangeable behind it. Read models (projections) and plain tables (users, tokens, metric
points) are reached through :meth:`EventStore.read` and :meth:`EventStore.write`, which run a
synchronous function against the backend's connection inside one transaction, on the store's
own thread, so no SQL ever runs on the Trio loop.

SQL handed to ``read``/``write`` and projection DDL is written once, portable between SQLite and
PostgreSQL: ``?`` placeholders (the PostgreSQL backend rewrites them), ``INSERT ... ON CONFLICT``
upserts, types TEXT / BIGINT / DOUBLE PRECISION / BOOLEAN stored as INTEGER 0/1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event not yet stored: its type name and JSON-ready data."""

    type: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the store keeps it.

    ``position`` is the global order (strictly increasing, gaps allowed), ``version`` the
    1-based position inside its stream.
    """

    position: int
    stream_id: str
    version: int
    type: str
    data: Mapping[str, Any]
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    stream_id: str
    version: int
    state: bytes


class ConcurrencyError(Exception):
    """An append found the stream at another version than the writer expected."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id}: expected version {expected}, found {actual}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


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

    async def save_snapshot(self, snapshot: Snapshot) -> None: ...

    async def load_snapshot(self, stream_id: str) -> Snapshot | None: ...

    async def read(self, fn: Callable[[SqlTx], T]) -> T: ...

    async def write(self, fn: Callable[[SqlTx], T]) -> T: ...

    async def rebuild_projections(self) -> int:
        """Drop and refill every projection's tables from the events; returns events replayed."""
        ...

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` if the backend does not answer."""
        ...
