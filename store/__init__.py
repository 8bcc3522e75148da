"""Event store: append-only streams per locker bank, projections, plain tables.

:func:`open_store` is the one entry point the service uses: it picks the backend from the
database URL, so the rest of the code only ever sees :class:`Store` (the :class:`EventStore`
and :class:`Tables` protocols of ``store.base``).

Imports: ``domain.records`` (the record types) and the standard library; the backends import
their drivers only when chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import assert_never

from store.base import (
    ConcurrencyError,
    EventStore,
    NewEvent,
    Projection,
    Snapshot,
    SqlTx,
    Store,
    StoredEvent,
    StoreUnavailable,
    Tables,
)
from store.url import DatabaseUrl, parse_database_url

__all__ = [
    "ConcurrencyError",
    "DatabaseUrl",
    "EventStore",
    "NewEvent",
    "Projection",
    "Snapshot",
    "SqlTx",
    "Store",
    "StoreUnavailable",
    "StoredEvent",
    "Tables",
    "open_store",
    "parse_database_url",
]


def open_store(
    database_url: str, projections: Sequence[Projection] = ()
) -> AbstractAsyncContextManager[Store]:
    """Open the event store named by ``database_url`` for an ``async with`` block.

    ``sqlite:///relative.db`` (relative to the working directory), ``sqlite:////abs/path.db``;
    ``postgresql://...`` / ``postgres://...`` (a libpq URL; see docs/postgres.md). Raises
    ``ValueError`` for a URL that names no supported backend, before anything is opened.

    Backends are imported only when chosen, so running on SQLite never imports the PostgreSQL
    driver and vice versa. To add a backend: teach :func:`parse_database_url` its scheme and add
    a branch here.
    """
    url = parse_database_url(database_url)
    if url.kind == "sqlite":
        from store.sqlite import open_sqlite_store

        assert url.path is not None
        return open_sqlite_store(url.path, projections)
    if url.kind == "postgresql":
        from store.postgres import open_postgres_store

        return open_postgres_store(url.url, projections)
    assert_never(url.kind)
