"""Fixtures that open an event store, parametrized over every backend under test.

Tests written against :class:`store.EventStore` take ``event_store`` (an open, empty store) or
``store_opener`` (to open the same database several times, e.g. with projections or to check
that data survives a reopen). Both run once per backend in :func:`backends`, so the PostgreSQL
backend will inherit the whole suite unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from store import EventStore, Projection, open_store
from tests.support.postgres import (
    POSTGRES_URL_ENV,
    create_schema,
    drop_schema,
    server_url,
    url_with_search_path,
)

__all__ = ["POSTGRES_URL_ENV", "StoreOpener", "backends"]


def backends() -> list[str]:
    """Backends the store tests run against.

    When ``LOCKERD_TEST_POSTGRES_URL`` is set, every store test also runs against that server,
    each test in a schema of its own (see :func:`store_opener`).
    """
    found = ["sqlite"]
    if server_url():
        found.append("postgresql")
    return found


@dataclass(frozen=True)
class StoreOpener:
    """Opens the test's database; each call is a fresh connection to the same data."""

    backend: str
    url: str

    def __call__(
        self, projections: Sequence[Projection] = ()
    ) -> AbstractAsyncContextManager[EventStore]:
        return open_store(self.url, projections)


@pytest.fixture(params=backends())
def store_opener(request: pytest.FixtureRequest, tmp_path: Path) -> StoreOpener:
    backend: str = request.param
    if backend == "sqlite":
        # An absolute path, so this also exercises the sqlite://// URL form end to end.
        return StoreOpener(backend, f"sqlite:///{tmp_path / 'events.db'}")
    if backend == "postgresql":
        # Every test gets an EMPTY schema of its own (search_path in the URL's options), dropped
        # with everything in it when the test is done, so no run sees another's tables.
        base = server_url()
        assert base is not None
        schema = create_schema(base)
        request.addfinalizer(lambda: drop_schema(base, schema))
        return StoreOpener(backend, url_with_search_path(base, schema))
    raise AssertionError(f"unknown backend {backend!r}")


@pytest.fixture
async def event_store(store_opener: StoreOpener) -> AsyncIterator[EventStore]:
    async with store_opener() as store:
        yield store
