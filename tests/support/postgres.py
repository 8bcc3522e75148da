"""A private PostgreSQL schema per test, so runs never see (or leave) each other's tables.

The server comes from ``LOCKERD_TEST_POSTGRES_URL`` (e.g.
``postgresql://postgres@127.0.0.1:5432/test``). :func:`create_schema` makes an empty schema named
``lockerd_test_<random>``; :func:`url_with_search_path` points a URL at it through libpq's
``options=-csearch_path=...``, so everything lockerd creates lands in that schema;
:func:`drop_schema` removes it with everything inside. Schemas left behind by a killed run are
harmless (the names are random) and can be removed with::

    SELECT 'DROP SCHEMA ' || nspname || ' CASCADE;' FROM pg_namespace
    WHERE nspname LIKE 'lockerd\\_test\\_%';
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

POSTGRES_URL_ENV = "LOCKERD_TEST_POSTGRES_URL"
SCHEMA_PREFIX = "lockerd_test_"


def server_url() -> str | None:
    """The test server's URL, or None when PostgreSQL tests are not configured."""
    return os.environ.get(POSTGRES_URL_ENV) or None


def url_with_search_path(url: str, schema: str) -> str:
    """``url`` with ``-csearch_path=<schema>`` added to its libpq ``options``."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = [value for key, value in query if key == "options"]
    options.append(f"-csearch_path={schema}")
    query = [(key, value) for key, value in query if key != "options"]
    query.append(("options", " ".join(options)))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def create_schema(url: str) -> str:
    """Create an empty schema with a fresh random name; returns the name."""
    name = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    return name


def drop_schema(url: str, name: str) -> None:
    """Drop the schema and everything in it (waiting at most 10 s for locks)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
