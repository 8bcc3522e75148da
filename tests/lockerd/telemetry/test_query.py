"""Time-ordered metric reads (lockerd.telemetry.query) on the real SQLite schema."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lockerd.telemetry.query import PointQuery, read_points, to_csv
from lockerd.telemetry.schema import create_tables
from store import EventStore, SqlTx, open_store
from tests.support import postgres

T1, T2 = "tenant-1", "tenant-2"
SECOND = 1_000_000
BASE = 1_795_000_000 * SECOND  # 2026-11-18


BACKENDS = ["sqlite", *(["postgresql"] if postgres.server_url() else [])]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'q.db'}"
    base = postgres.server_url()
    assert base is not None
    schema = postgres.create_schema(base)
    request.addfinalizer(lambda: postgres.drop_schema(base, schema))
    return postgres.url_with_search_path(base, schema)


ROWS = [
    # seq, tenant, agent, metric, value, ts
    (1, T1, "a1", "temp", 1.0, BASE + 3 * SECOND),
    (2, T1, "a1", "temp", 2.0, BASE + 1 * SECOND),  # arrives late, sorts earlier
    (3, T1, "a2", "temp", 3.0, BASE + 2 * SECOND),
    (4, T1, "a1", "hum", 4.0, BASE + 2 * SECOND),
    (5, T1, "a1", "temp", 5.0, BASE + 3 * SECOND),  # same time as seq 1
    (6, T2, "a9", "temp", 6.0, BASE + 2 * SECOND),
]


def fill(tx: SqlTx) -> None:
    create_tables(tx)
    tx.executemany(
        "INSERT INTO metric_points (seq, tenant_id, agent_id, metric, value, ts_us)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        ROWS,
    )


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[EventStore]:
    async with open_store(db_url) as opened:
        await opened.write(fill)
        yield opened


async def values(store: EventStore, query: PointQuery) -> list[float]:
    return [row.value for row in await store.read(read_points(query))]


async def test_time_order_with_arrival_order_for_ties(store: EventStore) -> None:
    assert await values(store, PointQuery(T1)) == [2.0, 3.0, 4.0, 1.0, 5.0]
    assert await values(store, PointQuery(T2)) == [6.0]
    assert await values(store, PointQuery("nobody")) == []


async def test_limit_keeps_the_newest_in_time_order(store: EventStore) -> None:
    assert await values(store, PointQuery(T1, limit=2)) == [1.0, 5.0]
    assert await values(store, PointQuery(T1, limit=3)) == [4.0, 1.0, 5.0]


async def test_filters_and_inclusive_since(store: EventStore) -> None:
    assert await values(store, PointQuery(T1, metric="temp")) == [2.0, 3.0, 1.0, 5.0]
    assert await values(store, PointQuery(T1, agent_id="a1")) == [2.0, 4.0, 1.0, 5.0]
    assert await values(store, PointQuery(T1, agent_id="a1", metric="temp")) == [2.0, 1.0, 5.0]
    assert await values(store, PointQuery(T1, since_us=BASE + 2 * SECOND)) == [3.0, 4.0, 1.0, 5.0]
    assert await values(store, PointQuery(T1, since_us=BASE + 3 * SECOND + 1)) == []


async def test_rows_render_as_the_contract_shape(store: EventStore) -> None:
    rows = await store.read(read_points(PointQuery(T2)))
    assert [row.as_json() for row in rows] == [
        {"agent_id": "a9", "metric": "temp", "value": 6.0, "timestamp": "2026-11-18T11:06:42.000Z"}
    ]
    parsed = list(csv.reader(io.StringIO(to_csv(rows))))
    assert parsed == [
        ["agent_id", "metric", "value", "timestamp"],
        ["a9", "temp", "6.0", "2026-11-18T11:06:42.000Z"],
    ]


async def test_sqlite_reads_walk_an_index_without_sorting(tmp_path: Path) -> None:
    """(SQLite's EXPLAIN QUERY PLAN; PostgreSQL picks its plans by table statistics.)"""
    async with open_store(f"sqlite:///{tmp_path / 'plan.db'}") as store:
        await store.write(fill)
        await _assert_index_walks(store)


async def _assert_index_walks(store: EventStore) -> None:
    for query in (PointQuery(T1, metric="temp"), PointQuery(T1), PointQuery(T1, since_us=BASE)):
        sql = "EXPLAIN QUERY PLAN SELECT agent_id, metric, value, ts_us FROM metric_points WHERE "
        where = ["tenant_id = ?"]
        params: list[object] = [query.tenant_id]
        if query.metric:
            where.append("metric = ?")
            params.append(query.metric)
        if query.since_us:
            where.append("ts_us >= ?")
            params.append(query.since_us)
        sql += " AND ".join(where) + " ORDER BY ts_us DESC, seq DESC LIMIT 10"

        def explain(tx: SqlTx, sql: str = sql, params: list[object] = params) -> list[Any]:
            return tx.query(sql, params)

        plan = " ".join(str(row[-1]) for row in await store.read(explain))
        assert "USING INDEX metric_points_by_" in plan, plan
        assert "TEMP B-TREE" not in plan, plan


def test_csv_quotes_awkward_metric_names() -> None:
    from lockerd.telemetry.query import PointRow

    text = to_csv([PointRow("a", 'disk "C:", free', 1.5, BASE)])
    assert list(csv.reader(io.StringIO(text)))[1][1] == 'disk "C:", free'
