"""Fixtures that open an event store, parametrized over every backend under test.

Tests written against :class:`store.EventStore` take ``event_store`` (an open, empty store) or
``store_opener`` (to open the same database several times, e.g. with projections or to check
that data survives a reopen). Both run once per backend in :func:`backends`, so the PostgreSQL
backend will inherit the whole suite unchanged.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from store import EventStore, Projection, open_store

POSTGRES_URL_ENV = "LOCKERD_TEST_POSTGRES_URL"


def backends() -> list[str]:
    """Backends the store tests run against.

    HOOK for PostgreSQL: when ``LOCKERD_TEST_POSTGRES_URL`` is set, every store test also runs
    against that server (nothing is skipped: until the backend exists, ``open_store`` raises
    NotImplementedError and those runs fail loudly). See the "postgresql" branch of
    :func:`store_opener` for what remains to be done there.
    """
    found = ["sqlite"]
    if os.environ.get(POSTGRES_URL_ENV):
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
        # TODO(postgresql backend): every test needs an EMPTY database. Create a fresh schema
        # per test here (e.g. CREATE SCHEMA test_<uuid>, then point the URL at it with
        # options=-csearch_path%3Dtest_<uuid>) and drop it in a finalizer.
        return StoreOpener(backend, os.environ[POSTGRES_URL_ENV])
    raise AssertionError(f"unknown backend {backend!r}")


@pytest.fixture
async def event_store(store_opener: StoreOpener) -> AsyncIterator[EventStore]:
    async with store_opener() as store:
        yield store
