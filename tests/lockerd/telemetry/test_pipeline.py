"""The ingestion actor (lockerd.telemetry.pipeline) against a real SQLite store, without MQTT.

No test sleeps: the writer is held with a blocking ``store.write`` where points must pile up,
``trio.testing.wait_all_tasks_blocked`` tells when every task is parked, and outcomes are
awaited through ``MetricsPipeline.wait_until``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import trio
import trio.testing

from domain.keys import Keyring
from lockerd.metrics import Metrics
from lockerd.telemetry.agents import Agent, AgentDirectory, UnknownTenant
from lockerd.telemetry.pipeline import MetricsPipeline, PipelineStats, PipelineUnavailable
from lockerd.telemetry.points import MetricPoint, Rejected
from lockerd.telemetry.schema import create_tables, max_seq, to_us
from store import EventStore, SqlTx, open_store
from store.base import StoreUnavailable
from tests.support import postgres

T = TypeVar("T")
NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
DEADLINE = 20


class FlakyStore:
    """The real store, whose ``write`` can be made to fail AFTER the function has run, as a
    store that is down does (``StoreUnavailable``)."""

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner
        self.fail = False

    async def write(self, fn: Callable[[SqlTx], T]) -> T:
        if not self.fail:
            return await self.inner.write(fn)

        def half_then_fail(tx: SqlTx) -> T:
            fn(tx)  # the inserts happen, then the savepoint must undo them
            raise StoreUnavailable("disk on fire")

        return await self.inner.write(half_then_fail)

    async def read(self, fn: Callable[[SqlTx], T]) -> T:
        return await self.inner.read(fn)


@dataclass
class Rig:
    store: EventStore
    flaky: FlakyStore
    agents: AgentDirectory
    metrics: Metrics
    pipeline: MetricsPipeline
    tenant: str
    agent: Agent
    other_agent: Agent  # another tenant's
    nursery: trio.Nursery

    def topic(
        self, metric: str = "temp", *, tenant: str | None = None, agent: str | None = None
    ) -> tuple[str, str, str]:
        """(tenant id, agent id, metric) as the gateway takes them from the topic."""
        return (tenant or self.tenant, agent or self.agent.agent_id, metric)

    async def wait(self, predicate: Callable[[PipelineStats], bool]) -> None:
        with trio.fail_after(DEADLINE):
            await self.pipeline.wait_until(predicate)

    async def rows(self) -> list[tuple[Any, ...]]:
        return await self.store.read(
            lambda tx: tx.query(
                "SELECT seq, agent_id, metric, value, ts_us, dedupe_id FROM metric_points"
                " ORDER BY seq"
            )
        )

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def dropped(self, reason: str) -> float:
        return self.counter("lockerd_dropped_messages_total", kind="metric", reason=reason)

    def processed(self) -> float:
        return self.counter("lockerd_inbound_messages_total", kind="metric", outcome="processed")


BACKENDS = ["sqlite", *(["postgresql"] if postgres.server_url() else [])]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a private PostgreSQL schema when one is configured."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 't.db'}"
    base = postgres.server_url()
    assert base is not None
    schema = postgres.create_schema(base)
    request.addfinalizer(lambda: postgres.drop_schema(base, schema))
    return postgres.url_with_search_path(base, schema)


@asynccontextmanager
async def rig_at(url: str, **options: Any) -> AsyncIterator[Rig]:
    async with open_store(url) as store:
        await store.write(create_tables)
        keyring = Keyring(b"test-key")
        agents = AgentDirectory()
        await store.read(agents.load)
        if not agents.tenants:
            tenant = await agents.create_tenant(store, "acme", NOW)
            await agents.create_agent(store, keyring, tenant.tenant_id, "probe", NOW)
            other = await agents.create_tenant(store, "globex", NOW)
            await agents.create_agent(store, keyring, other.tenant_id, "spy", NOW)
        by_name = {a.name: a for a in agents.agents.values()}
        flaky = FlakyStore(store)
        metrics = Metrics()
        pipeline = MetricsPipeline(
            cast(EventStore, flaky),
            agents,
            metrics,
            lambda: NOW,
            next_seq=await store.read(max_seq) + 1,
            **options,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(pipeline.run)
            yield Rig(
                store,
                flaky,
                agents,
                metrics,
                pipeline,
                by_name["probe"].tenant_id,
                by_name["probe"],
                by_name["spy"],
                nursery,
            )
            nursery.cancel_scope.cancel()


@pytest.fixture
async def rig(db_url: str) -> AsyncIterator[Rig]:
    async with rig_at(db_url) as found:
        yield found


@asynccontextmanager
async def writer_held(store: EventStore) -> AsyncIterator[None]:
    """Keep the store's writer busy until the block exits, so that work piles up behind it."""
    entered = threading.Event()
    release = threading.Event()

    def hold(tx: SqlTx) -> None:
        entered.set()
        release.wait(DEADLINE)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.write, hold)
        await trio.to_thread.run_sync(entered.wait, DEADLINE)
        try:
            yield
        finally:
            release.set()


def body(value: Any = 1, **fields: Any) -> bytes:
    return json.dumps({"value": value, **fields}).encode()


# -------------------------------------------------------------------------------- agents


async def test_directory_answers_credentials_and_reloads(db_url: str) -> None:
    async with rig_at(db_url) as rig:
        agent = rig.agent
        assert rig.agents.credential(agent.mqtt_user) == (
            agent.tenant_id,
            agent.agent_id,
            agent.credential_hash,
        )
        assert rig.agents.credential("nobody") is None
        assert rig.agents.belongs_to(agent.agent_id, rig.tenant)
        assert not rig.agents.belongs_to(rig.other_agent.agent_id, rig.tenant)
        with pytest.raises(UnknownTenant):
            await rig.agents.create_agent(rig.store, Keyring(b"k"), "no-such-tenant", "x", NOW)
        created = await rig.agents.create_agent(rig.store, Keyring(b"k"), rig.tenant, "new", NOW)
        assert created.mqtt_password not in created.agent.credential_hash
        assert Keyring(b"k").verify(
            "agent-password", created.mqtt_password, created.agent.credential_hash
        )
        assert (
            rig.agents.authenticate(Keyring(b"k"), created.agent.mqtt_user, created.mqtt_password)
            == created.agent
        )
        assert rig.agents.authenticate(Keyring(b"k"), created.agent.mqtt_user, "wrong") is None
        before = dict(rig.agents.agents)
    reloaded = AgentDirectory()
    async with open_store(db_url) as store:
        await store.read(reloaded.load)
    assert reloaded.agents == before
    assert reloaded.credential(agent.mqtt_user) == (
        agent.tenant_id,
        agent.agent_id,
        agent.credential_hash,
    )


# -------------------------------------------------------------------------------- MQTT path


async def test_mqtt_points_are_stored_counted_and_published(rig: Rig) -> None:
    live = rig.pipeline.subscribe()
    await rig.pipeline.mqtt_sink(*rig.topic("temp"), body(21.5, timestamp="2026-11-24T11:00:00Z"))
    await rig.pipeline.mqtt_sink(*rig.topic("hum"), body(40))
    await rig.wait(lambda s: s.stored == 2)
    rows = await rig.rows()
    assert [(r[2], r[3]) for r in rows] == [("temp", 21.5), ("hum", 40.0)]
    assert rows[0][4] == to_us(datetime(2026, 11, 24, 11, tzinfo=UTC))
    assert rows[1][4] == to_us(NOW)  # no timestamp: receive time
    assert rig.processed() == 2
    got = [live.receive_nowait(), live.receive_nowait()]
    assert [p.metric for p in got] == ["temp", "hum"]
    assert all(p.source == "mqtt" and p.tenant_id == rig.tenant for p in got)


async def test_each_bad_mqtt_input_is_dropped_with_its_reason(rig: Rig) -> None:
    unknown_tenant = "00000000-0000-4000-8000-000000000000"
    cases = [
        (rig.topic(tenant=unknown_tenant), body(), "unknown_tenant"),
        (rig.topic(agent="00000000-0000-4000-8000-00000000000a"), body(), "unknown_agent"),
        (rig.topic(agent=rig.other_agent.agent_id), body(), "agent_tenant_mismatch"),
        (rig.topic(), b'{"value": "hot"}', "invalid_value"),
        (rig.topic(), b"{}", "invalid_value"),
        (rig.topic(), b'{"value": NaN}', "invalid_value"),
        (rig.topic(), b'{"value": 1e999}', "invalid_value"),
        (rig.topic(), b"{not json", "malformed_payload"),
        (rig.topic(), body(timestamp="2027-01-01T00:00:00Z"), "future_timestamp"),
        (rig.topic(), body(timestamp="soon"), "invalid_timestamp"),
        (rig.topic("x" * 129), body(), "invalid_metric"),
        (rig.topic(), body(pad="x" * 17_000), "payload_too_large"),
    ]
    for topic, payload, _ in cases:
        await rig.pipeline.mqtt_sink(*topic, payload)
    assert rig.pipeline.stats.rejected == len(cases)
    for _, _, reason in cases:
        expected = sum(1 for case in cases if case[2] == reason)
        assert rig.dropped(reason) == expected, reason
    assert rig.counter("lockerd_inbound_messages_total", kind="metric", outcome="dropped") == len(
        cases
    )
    await rig.pipeline.mqtt_sink(*rig.topic(), body(1))
    await rig.wait(lambda s: s.stored == 1)
    assert len(await rig.rows()) == 1


# -------------------------------------------------------------------------------- batching


async def test_points_that_pile_up_are_written_in_one_transaction(rig: Rig) -> None:
    async with writer_held(rig.store):
        for n in range(500):
            await rig.pipeline.mqtt_sink(*rig.topic(), body(n))
        await trio.testing.wait_all_tasks_blocked()
    await rig.wait(lambda s: s.stored == 500)
    assert rig.pipeline.stats.batches == 1
    assert rig.pipeline.stats.largest_batch == 500
    assert [r[3] for r in await rig.rows()] == [float(n) for n in range(500)]
    assert rig.processed() == 500
    assert rig.counter("lockerd_metric_batch_points_count") == 1
    assert rig.counter("lockerd_metric_batch_points_sum") == 500


async def test_a_lone_point_does_not_wait_for_company(rig: Rig) -> None:
    async with writer_held(rig.store):
        await rig.pipeline.mqtt_sink(*rig.topic(), body(0))
        await trio.testing.wait_all_tasks_blocked()  # the actor took it and waits for the store
        for n in range(1, 100):
            await rig.pipeline.mqtt_sink(*rig.topic(), body(n))
        await trio.testing.wait_all_tasks_blocked()
    await rig.wait(lambda s: s.stored == 100)
    assert rig.pipeline.stats.batches == 2
    assert rig.pipeline.stats.largest_batch == 99


async def test_max_batch_bounds_a_transaction(db_url: str) -> None:
    async with rig_at(db_url, max_batch=100) as rig:
        async with writer_held(rig.store):
            for n in range(301):
                await rig.pipeline.mqtt_sink(*rig.topic(), body(n))
            await trio.testing.wait_all_tasks_blocked()
        await rig.wait(lambda s: s.stored == 301)
        assert rig.pipeline.stats.largest_batch == 100
        assert rig.pipeline.stats.batches == 4


async def test_a_full_channel_makes_senders_wait(db_url: str) -> None:
    async with rig_at(db_url, capacity=3, max_batch=10) as rig:
        sent = 0

        async def sender() -> None:
            nonlocal sent
            for n in range(10):
                await rig.pipeline.mqtt_sink(*rig.topic(), body(n))
                sent += 1

        async with writer_held(rig.store):
            rig.nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            # a batch waits for the store, the channel is full, the sender waits for room
            assert rig.pipeline.queued() == 3
            assert sent < 10
        await rig.wait(lambda s: s.stored == 10)
        assert sent == 10
        assert [r[3] for r in await rig.rows()] == [float(n) for n in range(10)]


# -------------------------------------------------------------------------------- dedupe


async def test_dedupe_across_paths_batches_and_agents(rig: Rig) -> None:
    assert (
        await rig.pipeline.submit_http(rig.agent, b'{"metric":"m","value":1,"dedupe_id":"a"}')
        == "stored"
    )
    await rig.pipeline.mqtt_sink(*rig.topic("m"), body(2, dedupe_id="a"))  # MQTT repeat
    assert (
        await rig.pipeline.submit_http(rig.agent, b'{"metric":"m","value":3,"dedupe_id":"a"}')
        == "duplicate"
    )
    async with writer_held(rig.store):  # a repeat inside one batch
        await rig.pipeline.mqtt_sink(*rig.topic("m"), body(4, dedupe_id="b"))
        await trio.testing.wait_all_tasks_blocked()
        await rig.pipeline.mqtt_sink(*rig.topic("m"), body(5, dedupe_id="c"))
        await rig.pipeline.mqtt_sink(*rig.topic("m"), body(6, dedupe_id="c"))
        await trio.testing.wait_all_tasks_blocked()
    # the same id from another agent is another point
    other_tenant_topic = rig.topic(
        "m", tenant=rig.other_agent.tenant_id, agent=rig.other_agent.agent_id
    )
    await rig.pipeline.mqtt_sink(*other_tenant_topic, body(7, dedupe_id="a"))
    await rig.wait(lambda s: s.stored == 4 and s.duplicates == 3)
    assert [r[3] for r in await rig.rows()] == [1.0, 4.0, 5.0, 7.0]
    assert rig.dropped("duplicate") == 2
    assert rig.processed() == 3


async def test_database_catches_repeats_the_memory_forgot(db_url: str) -> None:
    async with rig_at(db_url, recent_dedupe=1) as rig:
        await rig.pipeline.mqtt_sink(*rig.topic(), body(1, dedupe_id="x"))
        await rig.pipeline.mqtt_sink(*rig.topic(), body(2, dedupe_id="y"))  # evicts "x"
        await rig.wait(lambda s: s.stored == 2)
        await rig.pipeline.mqtt_sink(*rig.topic(), body(3, dedupe_id="x"))
        await rig.wait(lambda s: s.duplicates == 1)
        assert rig.dropped("duplicate") == 1
    # after a restart the memory is empty: the unique index still knows
    async with rig_at(db_url) as rig:
        outcome = await rig.pipeline.submit_http(
            rig.agent, b'{"metric":"temp","value":9,"dedupe_id":"y"}'
        )
        assert outcome == "duplicate"
        await rig.pipeline.mqtt_sink(*rig.topic(), body(4))
        await rig.wait(lambda s: s.stored == 1)
        rows = await rig.rows()
        assert [r[3] for r in rows] == [1.0, 2.0, 4.0]
        seqs = [r[0] for r in rows]
        assert seqs[:2] == [1, 2] and seqs[2] > 2  # seq continues after the restart


# -------------------------------------------------------------------------------- failures


async def test_a_failed_batch_stores_nothing_and_releases_its_dedupe_ids(rig: Rig) -> None:
    rig.flaky.fail = True
    async with writer_held(rig.store):
        await rig.pipeline.mqtt_sink(*rig.topic(), body(0))
        await trio.testing.wait_all_tasks_blocked()
        await rig.pipeline.mqtt_sink(*rig.topic(), body(1, dedupe_id="k"))
        await rig.pipeline.mqtt_sink(*rig.topic(), body(2, dedupe_id="k"))
        await rig.pipeline.mqtt_sink(*rig.topic(), body(3))
        await trio.testing.wait_all_tasks_blocked()
    await rig.wait(lambda s: s.failed == 4)
    with pytest.raises(PipelineUnavailable):
        await rig.pipeline.submit_http(rig.agent, b'{"metric":"m","value":5,"dedupe_id":"h"}')
    assert await rig.rows() == []
    assert rig.dropped("store_unavailable") == 4
    assert rig.processed() == 0
    rig.flaky.fail = False
    # the ids of the failed points were never stored, so a retry is not a duplicate
    await rig.pipeline.mqtt_sink(*rig.topic(), body(1, dedupe_id="k"))
    assert (
        await rig.pipeline.submit_http(rig.agent, b'{"metric":"m","value":5,"dedupe_id":"h"}')
        == "stored"
    )
    await rig.wait(lambda s: s.stored == 2)
    assert sorted(r[3] for r in await rig.rows()) == [1.0, 5.0]


def unstorable(
    rig: Rig, value: float, *, dedupe_id: str | None = None, source: str = "mqtt"
) -> MetricPoint:
    """A point past the boundary's checks that no store can hold: its time does not fit in a
    BIGINT (SQLite: OverflowError on binding; PostgreSQL: bigint out of range, a DataError)."""
    return MetricPoint(
        tenant_id=rig.tenant,
        agent_id=rig.agent.agent_id,
        metric="temp",
        value=value,
        ts_us=2**70,
        dedupe_id=dedupe_id,
        source=source,
    )


async def test_a_point_the_store_refuses_fails_alone(rig: Rig) -> None:
    """Issue 14 finding 2: one bad point used to lose its whole batch (51 valid points of
    another tenant with it). The batch is split until the bad point is alone."""
    other_tenant = rig.other_agent.tenant_id
    async with writer_held(rig.store):
        for n in range(25):
            await rig.pipeline.mqtt_sink(*rig.topic(), body(n, dedupe_id=f"a{n}"))
        await rig.pipeline._send.send((unstorable(rig, -1.0, dedupe_id="bad"), None, None))
        for n in range(26):
            await rig.pipeline.mqtt_sink(
                other_tenant, rig.other_agent.agent_id, "temp", body(100 + n)
            )
        await rig.pipeline._send.send((unstorable(rig, -2.0), None, None))
        await trio.testing.wait_all_tasks_blocked()
    await rig.wait(lambda s: s.stored + s.failed == 53)
    assert rig.pipeline.stats.stored == 51
    assert rig.pipeline.stats.failed == 2
    rows = await rig.rows()
    assert sorted(r[3] for r in rows) == [float(n) for n in (*range(25), *range(100, 126))]
    assert rig.dropped("store_rejected") == 2
    assert rig.dropped("store_unavailable") == 0
    assert rig.processed() == 51
    # the refused point's dedupe id was not stored: a corrected retry is stored, not a repeat
    await rig.pipeline.mqtt_sink(*rig.topic(), body(7.5, dedupe_id="bad"))
    await rig.wait(lambda s: s.stored == 52)


async def test_an_http_point_the_store_refuses_is_a_rejection(rig: Rig) -> None:
    with pytest.raises(Rejected) as caught:
        await rig.pipeline.submit(unstorable(rig, 1.0, source="http"))
    assert caught.value.reason == "store_rejected"
    assert await rig.rows() == []


async def test_http_rejections_raise_and_store_nothing(rig: Rig) -> None:
    for raw, reason in [
        (b'{"metric":"m","value":"x"}', "invalid_value"),
        (b'{"metric":"a/b","value":1}', "invalid_metric"),
        (b'{"metric":"m","value":1,"timestamp":"2030-01-01T00:00:00Z"}', "future_timestamp"),
    ]:
        with pytest.raises(Rejected) as caught:
            await rig.pipeline.submit_http(rig.agent, raw)
        assert caught.value.reason == reason
    assert await rig.rows() == []
    assert rig.counter("lockerd_metric_points_total", source="http", outcome="rejected") == 3
    # HTTP points are not MQTT messages: the inbound counter is untouched
    assert rig.dropped("invalid_value") == 0


# -------------------------------------------------------------------------------- subscribers


async def test_slow_subscribers_are_dropped_and_others_keep_going(rig: Rig) -> None:
    slow = rig.pipeline.subscribe(buffer=2)
    fast = rig.pipeline.subscribe(buffer=100)
    mine = rig.pipeline.subscribe(tenant_id=rig.other_agent.tenant_id)
    gone = rig.pipeline.subscribe()
    await gone.aclose()
    for n in range(5):
        await rig.pipeline.mqtt_sink(*rig.topic(), body(n))
    await rig.wait(lambda s: s.stored == 5)
    assert rig.pipeline.subscriber_count == 2  # fast and mine
    assert rig.pipeline.stats.subscribers_dropped == 1
    received = [point.value async for point in _drain(slow)]
    assert received == [0.0, 1.0]  # what fitted, then the end of the channel
    with pytest.raises(trio.WouldBlock):
        mine.receive_nowait()  # other tenant's points only
    assert [fast.receive_nowait().value for _ in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]


async def _drain(channel: trio.MemoryReceiveChannel[MetricPoint]) -> AsyncIterator[MetricPoint]:
    with trio.fail_after(DEADLINE):
        async for point in channel:
            yield point
