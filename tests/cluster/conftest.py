"""Cluster tests need PostgreSQL (contract §7: more than one node only with PostgreSQL).

As ``tests/store/test_postgres_store.py`` does, they are marked ``needs_postgres``: skipped
with that reason when ``LOCKERD_TEST_POSTGRES_URL`` is not set. ``scripts/test.sh`` exports it
whenever a server answers on 127.0.0.1:5432, so CI (which has PostgreSQL) runs them all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import create_schema, drop_schema, server_url, url_with_search_path

needs_postgres = pytest.mark.skipif(
    server_url() is None, reason="LOCKERD_TEST_POSTGRES_URL is not set (no PostgreSQL to test)"
)


@pytest.fixture
def cluster_database() -> Iterator[str]:
    """A database URL on an empty schema of its own, shared by every node of the test."""
    base = server_url()
    assert base is not None
    schema = create_schema(base)
    try:
        yield url_with_search_path(base, schema)
    finally:
        drop_schema(base, schema)
