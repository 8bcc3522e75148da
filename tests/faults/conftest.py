"""Fixtures of the fault and fuzz suite: every test runs on SQLite, and on PostgreSQL too when
``LOCKERD_TEST_POSTGRES_URL`` is set (issue 14's findings 1-4 were PostgreSQL-only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockerd.config import Settings
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import RunningLockerd, database_url_for, lockerd, test_settings

BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def settings_for(
    broker: MosquittoBroker, tmp_path: Path, backend: str, **overrides: str
) -> Settings:
    """The same tmp_path and backend give the same database (a restart keeps the data)."""
    return test_settings(
        broker.url,
        tmp_path / "unused.db",
        LOCKERD_DATABASE=database_url_for(tmp_path, backend),
        **overrides,
    )


@pytest.fixture
async def svc(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> AsyncIterator[RunningLockerd]:
    """lockerd in-process on the backend under test, against a private mosquitto."""
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as running:
        yield running
