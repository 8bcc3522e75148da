"""Event store behaviour.

The first part is written against :class:`store.EventStore` only and runs once per backend (see
``conftest.py``). Tests that inspect SQLite specifics (the thread, the file, the raw rows) use
:func:`open_sqlite_store` directly and sit in the second part, followed by the URL parser tests.

No test sleeps: where a test needs jobs to pile up behind a busy writer it holds the writer with
:func:`writer_held` and uses ``trio.testing.wait_all_tasks_blocked`` to know that every task has
queued its job.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import (
    ConcurrencyError,
    EventStore,
    NewEvent,
    Snapshot,
    SqlTx,
    StoredEvent,
    StoreUnavailable,
    open_store,
    parse_database_url,
)
from store.sqlite import SCHEMA_VERSION, THREAD_NAME, SqliteEventStore, open_sqlite_store
from tests.store.conftest import StoreOpener

# Generous upper bound so that a bug shows up as a failure rather than a hung test run.
DEADLINE = 30


def ev(type_: str = "Happened", **data: Any) -> NewEvent:
    return NewEvent(type=type_, data=data)


def counter(store: EventStore, name: str) -> int:
    """Observability counters are not in the protocol, but every backend must have them."""
    value = getattr(store, name)
    assert isinstance(value, int)
    return value


@asynccontextmanager
async def writer_held(store: EventStore) -> AsyncIterator[None]:
    """Keep the store's writer busy inside a ``write`` function until the block exits.

    Writes submitted meanwhile must queue up; when the block exits they are released together,
    which makes group-commit batches deterministic.
    """
    entered = threading.Event()
    release = threading.Event()

    def hold(tx: SqlTx) -> None:
        entered.set()
        assert release.wait(DEADLINE), "writer_held was never released"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.write, hold)
        assert await trio.to_thread.run_sync(entered.wait, DEADLINE)
        try:
            yield
        finally:
            release.set()


async def stream_ids(store: EventStore) -> list[str]:
    """``stream_ids`` is not in the protocol yet, but every backend provides it."""
    result: list[str] = await cast(Any, store).stream_ids()
    return result


# --------------------------------------------------------------------------- projections


class ProjectionBoom(Exception):
    pass


class StreamStats:
    """Per stream: event count, last type and last position. Deterministic, so rebuildable."""

    name: str = "stream_stats"
    tables: Sequence[str] = ("proj_stream_stats",)
    ddl: Sequence[str] = (
        "CREATE TABLE IF NOT EXISTS proj_stream_stats ("
        " stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL,"
        " last_type TEXT NOT NULL, last_position BIGINT NOT NULL)",
    )

    def apply(self, tx: SqlTx, event: StoredEvent) -> None:
        tx.execute(
            "INSERT INTO proj_stream_stats (stream_id, events, last_type, last_position)"
            " VALUES (?, 1, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET"
            " events = proj_stream_stats.events + 1,"
            " last_type = excluded.last_type, last_position = excluded.last_position",
            (event.stream_id, event.type, event.position),
        )


class TypeLog:
    """One row per event of interest; raises on ``Boom`` events, after StreamStats has run."""

    name: str = "type_log"
    tables: Sequence[str] = ("proj_type_log",)
    ddl: Sequence[str] = (
        "CREATE TABLE IF NOT EXISTS proj_type_log ("
        " position BIGINT PRIMARY KEY, stream_id TEXT NOT NULL, type TEXT NOT NULL)",
    )

    def apply(self, tx: SqlTx, event: StoredEvent) -> None:
        if event.type == "Boom":
            raise ProjectionBoom(f"cannot project {event.type} at version {event.version}")
        tx.execute(
            "INSERT INTO proj_type_log (position, stream_id, type) VALUES (?, ?, ?)",
            (event.position, event.stream_id, event.type),
        )


PROJECTIONS = (StreamStats(), TypeLog())


async def projection_rows(store: EventStore) -> dict[str, list[tuple[Any, ...]]]:
    def fetch(tx: SqlTx) -> dict[str, list[tuple[Any, ...]]]:
        return {
            "stats": tx.query("SELECT * FROM proj_stream_stats ORDER BY stream_id"),
            "log": tx.query("SELECT * FROM proj_type_log ORDER BY position"),
        }

    return await store.read(fetch)


# =========================================================================== backend-agnostic


async def test_append_read_round_trip(event_store: EventStore) -> None:
    before = datetime.now(UTC)
    data = {"nested": {"list": [1, 2.5, "x", None, True]}, "b": "ü€", "a": 0}
    stored = await event_store.append("bank-1", 0, [ev("Created", **data), ev("Renamed", name="n")])
    after = datetime.now(UTC)

    assert [(e.stream_id, e.version, e.type) for e in stored] == [
        ("bank-1", 1, "Created"),
        ("bank-1", 2, "Renamed"),
    ]
    assert stored[0].data == data
    assert stored[0].position < stored[1].position
    for event in stored:
        assert event.recorded_at.tzinfo is not None
        assert event.recorded_at.utcoffset() == UTC.utcoffset(None)
        assert before <= event.recorded_at <= after

    assert await event_store.read_stream("bank-1") == stored
    assert await event_store.read_all() == stored
    assert await event_store.stream_version("bank-1") == 2
    assert await event_store.read_stream("bank-1", after_version=1) == stored[1:]
    assert await event_store.read_stream("bank-1", after_version=2) == []


async def test_versions_continue_and_streams_are_independent(event_store: EventStore) -> None:
    assert await event_store.stream_version("nobody") == 0
    assert await event_store.read_stream("nobody") == []
    await event_store.append("a", 0, [ev(n=1)])
    await event_store.append("b", 0, [ev(n=1), ev(n=2)])
    third = await event_store.append("a", 1, [ev(n=2), ev(n=3)])
    assert [e.version for e in third] == [2, 3]
    assert await event_store.stream_version("a") == 3
    assert await event_store.stream_version("b") == 2
    assert [e.data["n"] for e in await event_store.read_stream("a")] == [1, 2, 3]


async def test_expected_version_conflict_writes_nothing(event_store: EventStore) -> None:
    await event_store.append("s", 0, [ev(n=1), ev(n=2)])
    snapshot_before = await event_store.read_all()

    for stale in (0, 1, 3, 7):
        with pytest.raises(ConcurrencyError) as caught:
            await event_store.append("s", stale, [ev(n=99), ev(n=100)])
        assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == (
            "s",
            stale,
            2,
        )
        assert "expected version" in str(caught.value)

    assert await event_store.read_all() == snapshot_before
    assert await event_store.stream_version("s") == 2


async def test_append_rejects_bad_arguments_before_queueing(event_store: EventStore) -> None:
    with pytest.raises(ValueError):
        await event_store.append("s", -1, [ev()])
    with pytest.raises(TypeError):
        await event_store.append("s", 0, [ev(when=datetime.now(UTC))])
    with pytest.raises(ValueError):
        await event_store.append("s", 0, [ev(x=float("nan"))])
    assert await event_store.read_all() == []


async def test_empty_append_checks_version_only(event_store: EventStore) -> None:
    assert await event_store.append("s", 0, []) == []
    with pytest.raises(ConcurrencyError):
        await event_store.append("s", 1, [])
    assert await event_store.stream_version("s") == 0


async def test_racing_appenders_exactly_one_wins_each_version(event_store: EventStore) -> None:
    winners: list[int] = []
    for version in range(5):
        won: list[int] = []
        lost: list[ConcurrencyError] = []

        async def attempt(
            i: int,
            version: int = version,
            won: list[int] = won,
            lost: list[ConcurrencyError] = lost,
        ) -> None:
            try:
                await event_store.append("race", version, [ev(i=i, round=version)])
            except ConcurrencyError as exc:
                lost.append(exc)
            else:
                won.append(i)

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(attempt, i)

        assert len(won) == 1
        assert len(lost) == 49
        assert {(e.expected, e.actual) for e in lost} == {(version, version + 1)}
        winners.append(won[0])

    events = await event_store.read_stream("race")
    assert [e.version for e in events] == [1, 2, 3, 4, 5]
    assert [e.data["i"] for e in events] == winners
    assert [e.data["round"] for e in events] == [0, 1, 2, 3, 4]


async def test_racing_appenders_with_retry_lose_and_duplicate_nothing(
    event_store: EventStore,
) -> None:
    tasks, per_task = 20, 10
    conflicts = 0

    async def writer(task: int) -> None:
        nonlocal conflicts
        for i in range(per_task):
            while True:
                version = await event_store.stream_version("shared")
                try:
                    await event_store.append("shared", version, [ev(task=task, i=i)])
                    break
                except ConcurrencyError:
                    conflicts += 1

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for task in range(tasks):
                nursery.start_soon(writer, task)

    events = await event_store.read_stream("shared")
    assert [e.version for e in events] == list(range(1, tasks * per_task + 1))
    pairs = [(e.data["task"], e.data["i"]) for e in events]
    assert sorted(pairs) == [(t, i) for t in range(tasks) for i in range(per_task)]
    for task in range(tasks):  # each writer's own events stay in its order
        assert [i for t, i in pairs if t == task] == list(range(per_task))
    assert conflicts > 0  # the test did race


async def test_concurrent_appenders_on_different_streams(event_store: EventStore) -> None:
    streams, per_stream = 50, 10

    async def writer(n: int) -> None:
        for version in range(per_stream):
            await event_store.append(f"bank-{n:02d}", version, [ev(n=n, v=version + 1)])

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for n in range(streams):
                nursery.start_soon(writer, n)

    everything = await event_store.read_all(limit=10_000)
    assert len(everything) == streams * per_stream
    positions = [e.position for e in everything]
    assert positions == sorted(set(positions))
    for n in range(streams):
        events = await event_store.read_stream(f"bank-{n:02d}")
        assert [(e.version, e.data["v"]) for e in events] == [(v, v) for v in range(1, 11)]
    assert await stream_ids(event_store) == sorted(f"bank-{n:02d}" for n in range(streams))


async def test_group_commit_batches_concurrent_appends(event_store: EventStore) -> None:
    batches_before = counter(event_store, "batches")

    async def one(n: int) -> None:
        await event_store.append(f"gc-{n}", 0, [ev(n=n)])

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(one, n)

    assert counter(event_store, "batches") - batches_before < 200
    stored = await event_store.read_all(limit=1000)
    assert sorted(e.data["n"] for e in stored) == list(range(200))


async def test_queued_appends_share_exactly_one_transaction(event_store: EventStore) -> None:
    batches_before = counter(event_store, "batches")
    appends_before = counter(event_store, "appends")

    async def one(n: int) -> None:
        await event_store.append(f"gc-{n}", 0, [ev(n=n)])

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery, writer_held(event_store):
            for n in range(200):
                nursery.start_soon(one, n)
            await trio.testing.wait_all_tasks_blocked()

    # One transaction for the held write, exactly one for all 200 appends.
    assert counter(event_store, "batches") - batches_before == 2
    assert counter(event_store, "last_batch_size") == 200
    assert counter(event_store, "appends") - appends_before == 200
    assert len(await event_store.read_all(limit=1000)) == 200


async def test_failing_jobs_in_a_batch_do_not_affect_the_others(
    store_opener: StoreOpener,
) -> None:
    async with store_opener(PROJECTIONS) as store:
        await store.write(lambda tx: tx.execute("CREATE TABLE notes (body TEXT NOT NULL)"))
        await store.append("stale", 0, [ev(n=1)])
        batches_before = counter(store, "batches")
        outcomes: dict[str, object] = {}

        async def run(name: str, make: Any) -> None:
            try:
                outcomes[name] = await make()
            except Exception as exc:
                outcomes[name] = exc

        def half_write_then_fail(tx: SqlTx) -> None:
            tx.execute("INSERT INTO notes (body) VALUES ('half')")
            raise RuntimeError("write fn gave up")

        jobs: list[tuple[str, Any]] = [
            ("ok-1", lambda: store.append("fresh-1", 0, [ev(n=1)])),
            ("conflict", lambda: store.append("stale", 0, [ev(n=2)])),
            ("bad-write", lambda: store.write(half_write_then_fail)),
            ("boom", lambda: store.append("fresh-2", 0, [ev(n=1), ev("Boom")])),
            ("note", lambda: store.write(lambda tx: tx.execute("INSERT INTO notes VALUES ('ok')"))),
            ("snap", lambda: store.save_snapshot(Snapshot("fresh-1", 1, b"s"))),
            ("ok-2", lambda: store.append("fresh-3", 0, [ev(n=1)])),
        ]
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery, writer_held(store):
                for name, make in jobs:
                    nursery.start_soon(run, name, make)
                await trio.testing.wait_all_tasks_blocked()

        assert counter(store, "batches") - batches_before == 2  # the held write + all of these
        assert counter(store, "last_batch_size") == len(jobs)
        assert isinstance(outcomes["conflict"], ConcurrencyError)
        assert isinstance(outcomes["bad-write"], RuntimeError)
        assert isinstance(outcomes["boom"], ProjectionBoom)
        assert outcomes["note"] == 1
        assert outcomes["snap"] is None
        for name in ("ok-1", "ok-2"):
            assert isinstance(outcomes[name], list)

        assert await stream_ids(store) == ["fresh-1", "fresh-3", "stale"]
        assert await store.stream_version("stale") == 1
        assert await store.stream_version("fresh-2") == 0
        assert await store.read(lambda tx: tx.query("SELECT body FROM notes")) == [("ok",)]
        assert await store.load_snapshot("fresh-1") == Snapshot("fresh-1", 1, b"s")
        rows = await projection_rows(store)
        assert [r[0] for r in rows["stats"]] == ["fresh-1", "fresh-3", "stale"]


async def test_read_all_orders_and_pages(event_store: EventStore) -> None:
    for n in range(7):
        await event_store.append(f"s{n % 3}", 2 * (n // 3), [ev(n=n), ev(n=n + 100)])
    everything = await event_store.read_all()
    assert len(everything) == 14
    assert [e.position for e in everything] == sorted({e.position for e in everything})

    paged: list[StoredEvent] = []
    after = 0
    while page := await event_store.read_all(after_position=after, limit=3):
        assert len(page) <= 3
        paged.extend(page)
        after = page[-1].position
    assert paged == everything
    assert await event_store.read_all(after_position=everything[-1].position) == []
    middle = await event_store.read_all(after_position=everything[4].position, limit=2)
    assert middle == everything[5:7]
    with pytest.raises(ValueError):
        await event_store.read_all(limit=0)


async def test_snapshots_save_load_overwrite(event_store: EventStore) -> None:
    assert await event_store.load_snapshot("bank") is None
    await event_store.save_snapshot(Snapshot("bank", 3, b"\x00state\xff"))
    assert await event_store.load_snapshot("bank") == Snapshot("bank", 3, b"\x00state\xff")
    await event_store.save_snapshot(Snapshot("bank", 9, b"newer"))
    assert await event_store.load_snapshot("bank") == Snapshot("bank", 9, b"newer")
    assert await event_store.load_snapshot("other") is None


async def test_projection_applied_in_the_same_transaction(store_opener: StoreOpener) -> None:
    async with store_opener(PROJECTIONS) as store:
        first = await store.append("p", 0, [ev("Opened"), ev("Closed")])
        rows = await projection_rows(store)
        assert rows["stats"] == [("p", 2, "Closed", first[1].position)]
        assert rows["log"] == [(e.position, "p", e.type) for e in first]

        # StreamStats has already counted "Boom" when TypeLog raises: that must be undone too.
        with pytest.raises(ProjectionBoom):
            await store.append("p", 2, [ev("Opened"), ev("Boom")])
        assert await projection_rows(store) == rows
        assert await store.stream_version("p") == 2
        assert await store.read_all() == first


async def test_rebuild_projections_reproduces_tables(store_opener: StoreOpener) -> None:
    async with store_opener(PROJECTIONS) as store:
        for n in range(30):
            await store.append(f"s{n % 4}", n // 4, [ev(f"T{n % 3}", n=n)])
        live = await projection_rows(store)
        assert len(live["log"]) == 30

        def vandalize(tx: SqlTx) -> None:
            tx.execute("DELETE FROM proj_type_log WHERE position % 2 = 0")
            tx.execute("UPDATE proj_stream_stats SET events = 0, last_type = 'garbage'")
            tx.execute("INSERT INTO proj_stream_stats VALUES ('ghost', 1, 'x', 0)")

        await store.write(vandalize)
        assert await projection_rows(store) != live
        assert await store.rebuild_projections() == 30
        assert await projection_rows(store) == live


async def test_rebuild_with_no_events_empties_tables(store_opener: StoreOpener) -> None:
    async with store_opener(PROJECTIONS) as store:
        await store.write(
            lambda tx: tx.execute("INSERT INTO proj_stream_stats VALUES ('x', 1, 'y', 1)")
        )
        assert await store.rebuild_projections() == 0
        assert await projection_rows(store) == {"stats": [], "log": []}


async def test_write_and_read_functions(event_store: EventStore) -> None:
    def setup(tx: SqlTx) -> int:
        # Booleans are stored as integers 0/1 (portable SQL, see store/base.py).
        tx.execute("CREATE TABLE users (name TEXT PRIMARY KEY, admin BIGINT NOT NULL)")
        tx.executemany("INSERT INTO users VALUES (?, ?)", [("ann", 1), ("bob", 0), ("cy", 0)])
        return tx.execute("UPDATE users SET admin = 1 WHERE admin = 0")

    assert await event_store.write(setup) == 2
    assert await event_store.read(
        lambda tx: tx.query("SELECT name, admin FROM users WHERE name > ? ORDER BY name", ["a"])
    ) == [("ann", 1), ("bob", 1), ("cy", 1)]

    def insert_then_fail(tx: SqlTx) -> None:
        tx.execute("INSERT INTO users VALUES ('dan', 0)")
        raise LookupError("changed my mind")

    with pytest.raises(LookupError):
        await event_store.write(insert_then_fail)

    # A read function cannot write, however it tries.
    with pytest.raises(Exception):  # noqa: B017 - the error type is the backend's own
        await event_store.read(lambda tx: tx.execute("INSERT INTO users VALUES ('eve', 0)"))

    names = await event_store.read(lambda tx: [r[0] for r in tx.query("SELECT name FROM users")])
    assert sorted(names) == ["ann", "bob", "cy"]
    # And after a rejected read, writes still work.
    deleted = await event_store.write(lambda tx: tx.execute("DELETE FROM users WHERE name = 'cy'"))
    assert deleted == 1


async def test_ping(event_store: EventStore) -> None:
    await event_store.ping()


async def test_everything_survives_reopen(store_opener: StoreOpener) -> None:
    async with store_opener(PROJECTIONS) as store:
        await store.append("a", 0, [ev("Created", n=1), ev("Renamed", n=2)])
        await store.append("b", 0, [ev("Created", n=3)])
        await store.save_snapshot(Snapshot("a", 2, b"snap"))
        await store.write(lambda tx: tx.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"))
        await store.write(lambda tx: tx.execute("INSERT INTO kv VALUES ('k', 'v')"))
        events = await store.read_all()
        projected = await projection_rows(store)

    async with store_opener(PROJECTIONS) as store:
        assert await store.read_all() == events
        assert await store.load_snapshot("a") == Snapshot("a", 2, b"snap")
        assert await projection_rows(store) == projected
        assert await store.read(lambda tx: tx.query("SELECT k, v FROM kv")) == [("k", "v")]
        assert await stream_ids(store) == ["a", "b"]
        more = await store.append("a", 2, [ev("Closed")])
        assert more[0].version == 3
        assert more[0].position > events[-1].position
        with pytest.raises(ConcurrencyError):
            await store.append("b", 0, [ev()])


async def test_cancelled_waiter_does_not_corrupt_anything(event_store: EventStore) -> None:
    scope = trio.CancelScope()

    async def impatient() -> None:
        with scope:
            await event_store.append("c", 0, [ev(n=1)])

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery, writer_held(event_store):
            nursery.start_soon(impatient)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # the append is queued behind the held writer
            await trio.testing.wait_all_tasks_blocked()
    assert scope.cancelled_caught

    # The queued job still ran to completion; only its result was dropped.
    assert await event_store.stream_version("c") == 1
    await event_store.append("c", 1, [ev(n=2)])
    assert [e.data["n"] for e in await event_store.read_stream("c")] == [1, 2]


async def test_already_cancelled_caller_queues_nothing(event_store: EventStore) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await event_store.append("never", 0, [ev()])
    assert scope.cancelled_caught
    assert await event_store.stream_version("never") == 0


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 4), st.integers(0, 3)), max_size=25
    ),
)
async def test_appends_match_a_simple_model(
    store_opener: StoreOpener, ops: list[tuple[str, int, int]]
) -> None:
    """Any sequence of appends with guessed versions behaves like a dict of version counters."""
    prefix = f"{uuid.uuid4()}-"  # the fixture's database is shared by all examples
    model: dict[str, int] = {}
    expected_events: list[tuple[str, int, int]] = []
    async with store_opener() as store:
        for n, (name, expected, count) in enumerate(ops):
            stream = prefix + name
            current = model.get(stream, 0)
            events = [ev(op=n, k=k) for k in range(count)]
            if expected == current:
                stored = await store.append(stream, expected, events)
                assert [e.version for e in stored] == list(range(current + 1, current + count + 1))
                model[stream] = current + count
                expected_events += [(stream, current + k + 1, n) for k in range(count)]
            else:
                with pytest.raises(ConcurrencyError) as caught:
                    await store.append(stream, expected, events)
                assert caught.value.actual == current
        everything = await store.read_all(limit=100_000)
        mine = [(e.stream_id, e.version, e.data["op"]) for e in everything]
        assert [m for m in mine if m[0].startswith(prefix)] == expected_events
        for stream, version in model.items():
            assert await store.stream_version(stream) == version


# =========================================================================== SQLite specifics


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


async def test_one_named_thread_lives_exactly_as_long_as_the_store(tmp_path: Path) -> None:
    before = set(store_threads())
    async with open_sqlite_store(str(tmp_path / "t.db")) as store:
        mine = [t for t in store_threads() if t not in before]
        assert len(mine) == 1
        assert mine[0].is_alive()
        await store.append("s", 0, [ev()])
        assert [t for t in store_threads() if t not in before] == mine  # still just one
    assert not mine[0].is_alive()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.append("s", 1, [ev()])


async def test_jobs_queued_before_close_still_complete(tmp_path: Path) -> None:
    results: list[int] = []

    async def late(store: SqliteEventStore, n: int) -> None:
        stored = await store.append(f"late-{n}", 0, [ev(n=n)])
        results.append(stored[0].version)

    with trio.fail_after(DEADLINE):
        async with (
            trio.open_nursery() as nursery,
            open_sqlite_store(str(tmp_path / "c.db")) as store,
            writer_held(store),
        ):
            for n in range(20):
                nursery.start_soon(late, store, n)
            await trio.testing.wait_all_tasks_blocked()
            # Leaving releases the writer, then closes the store with the 20 appends still
            # queued: they must be answered all the same.
    assert results == [1] * 20
    async with open_sqlite_store(str(tmp_path / "c.db")) as store:
        assert len(await store.read_all()) == 20


async def test_unopenable_path_raises_and_leaves_no_thread(tmp_path: Path) -> None:
    before = set(store_threads())
    with pytest.raises(StoreUnavailable):
        async with open_sqlite_store(str(tmp_path / "no-such-dir" / "x.db")):
            pass  # pragma: no cover
    assert all(not t.is_alive() for t in store_threads() if t not in before)


async def test_schema_is_versioned_and_newer_schema_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "v.db")
    async with open_sqlite_store(path) as store:
        assert await store.read(lambda tx: tx.query("PRAGMA user_version")) == [(SCHEMA_VERSION,)]
        assert await store.read(lambda tx: tx.query("PRAGMA journal_mode")) == [("wal",)]
        assert await store.read(lambda tx: tx.query("PRAGMA foreign_keys")) == [(1,)]
        assert await store.read(lambda tx: tx.query("PRAGMA synchronous")) == [(2,)]  # FULL
    async with open_sqlite_store(path):  # opening again is harmless
        pass
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreUnavailable, match="newer"):
        async with open_sqlite_store(path):
            pass  # pragma: no cover


async def test_failed_commit_fails_the_whole_batch_and_commits_nothing(tmp_path: Path) -> None:
    """Results are only handed out after COMMIT; a deferred foreign key makes COMMIT fail."""
    async with open_sqlite_store(str(tmp_path / "fk.db")) as store:

        def schema(tx: SqlTx) -> None:
            tx.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            tx.execute(
                "CREATE TABLE child (parent_id INTEGER"
                " REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )

        await store.write(schema)
        batches_before = store.batches
        outcomes: dict[str, object] = {}

        async def run(name: str, make: Any) -> None:
            try:
                outcomes[name] = await make()
            except Exception as exc:
                outcomes[name] = exc

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery, writer_held(store):
                nursery.start_soon(run, "append", lambda: store.append("s", 0, [ev()]))
                nursery.start_soon(
                    run,
                    "orphan",
                    lambda: store.write(lambda tx: tx.execute("INSERT INTO child VALUES (42)")),
                )
                await trio.testing.wait_all_tasks_blocked()

        assert isinstance(outcomes["append"], StoreUnavailable)
        assert isinstance(outcomes["orphan"], StoreUnavailable)
        assert store.batches - batches_before == 1  # only the held write committed
        assert await store.stream_version("s") == 0
        assert await store.read(lambda tx: tx.query("SELECT * FROM child")) == []
        # The store carries on normally afterwards.
        assert (await store.append("s", 0, [ev()]))[0].version == 1


async def test_internal_failure_fails_callers_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only this store's thread counts: a store thread of another test in this process (a
    # service test's, say) may legitimately still be alive while this one runs.
    before = set(store_threads())
    async with open_sqlite_store(str(tmp_path / "x.db")) as store:

        def broken(*args: object) -> None:
            raise RuntimeError("bug in the store thread")

        monkeypatch.setattr(store, "_t_write_batch", broken)
        with trio.fail_after(DEADLINE):
            with pytest.raises(StoreUnavailable):
                await store.append("s", 0, [ev()])
            with pytest.raises(StoreUnavailable):
                await store.ping()
    assert not [t for t in store_threads() if t not in before and t.is_alive()]


async def test_data_is_compact_sorted_json_and_time_is_utc_text(tmp_path: Path) -> None:
    async with open_sqlite_store(str(tmp_path / "j.db")) as store:
        stored = await store.append("s", 0, [ev(b=[1, {"d": 2, "c": 3}], a="x")])
        ((data, recorded_at),) = await store.read(
            lambda tx: tx.query("SELECT data, recorded_at FROM events")
        )
    assert data == '{"a":"x","b":[1,{"c":3,"d":2}]}'
    assert recorded_at.endswith("Z")
    assert datetime.fromisoformat(recorded_at) == stored[0].recorded_at
    assert len(recorded_at) == len("2026-01-01T00:00:00.000000Z")


async def test_counters_and_latency_hook(tmp_path: Path) -> None:
    async with open_sqlite_store(str(tmp_path / "m.db")) as store:
        latencies: list[float] = []
        store.on_append_latency = latencies.append
        await store.append("s", 0, [ev()])
        with pytest.raises(ConcurrencyError):
            await store.append("s", 0, [ev()])
        await store.append("s", 1, [ev(), ev()])
        assert store.appends == 2  # the failed append is not counted
        assert store.last_batch_size == 1
        assert len(latencies) == 3
        assert all(0 <= seconds < DEADLINE for seconds in latencies)

        def broken_hook(seconds: float) -> None:
            raise RuntimeError("metrics are down")

        store.on_append_latency = broken_hook
        stored = await store.append("s", 3, [ev()])  # a broken hook must not fail the append
        assert stored[0].version == 4


async def test_open_store_relative_url_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    async with open_store("sqlite:///data/rel.db") as store:
        await store.append("s", 0, [ev()])
    assert (tmp_path / "data" / "rel.db").is_file()


async def test_open_store_dispatches_postgresql_and_rejects_unknown_schemes() -> None:
    # Nothing is opened (and the PostgreSQL driver is not contacted) until the block is entered.
    opener = open_store("postgresql://lockerd:secret@localhost/lockerd")
    assert hasattr(opener, "__aenter__")
    with pytest.raises(ValueError, match="'mysql'"):
        open_store("mysql://u:p@h/db")


# =========================================================================== parse_database_url


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///lockerd.db", "lockerd.db"),
        ("sqlite:///var/data/lockerd.db", "var/data/lockerd.db"),
        ("sqlite:////var/lib/lockerd/events.db", "/var/lib/lockerd/events.db"),
        ("SQLite:///upper.db", "upper.db"),
        ("sqlite:///with%20space.db", "with space.db"),
        ("sqlite:///./here.db", "./here.db"),
    ],
)
def test_parse_sqlite_urls(url: str, path: str) -> None:
    parsed = parse_database_url(url)
    assert (parsed.kind, parsed.path, parsed.url) == ("sqlite", path, url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://lockerd:hunter2@db.example:5432/lockerd?sslmode=require",
        "postgres://lockerd:hunter2@localhost/lockerd",
        "postgresql:///lockerd",
    ],
)
def test_parse_postgresql_urls(url: str) -> None:
    parsed = parse_database_url(url)
    assert (parsed.kind, parsed.path, parsed.url) == ("postgresql", None, url)
    assert "hunter2" not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("lockerd.db", "no scheme"),
        ("/abs/lockerd.db", "no scheme"),
        ("mysql://root:hunter2@localhost/db", "'mysql'"),
        ("http://example.com/x.db", "'http'"),
        ("sqlite:lockerd.db", "sqlite:///"),
        ("sqlite://", "no database file"),
        ("sqlite:///", "no database file"),
        ("sqlite:///data/", "no database file"),
        ("sqlite://host/lockerd.db", "host"),
        ("sqlite:///lockerd.db?mode=ro", "query"),
        ("sqlite:///lockerd.db#frag", "fragment"),
        ("sqlite:///:memory:", "in-memory"),
    ],
)
def test_parse_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_database_url(url)
    assert "hunter2" not in str(caught.value)


@given(
    st.lists(
        st.text(alphabet="abcXYZ019_-. ", min_size=1, max_size=8).filter(
            lambda part: part not in {".", ".."}
        ),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_parse_sqlite_path_round_trip(parts: list[str], absolute: bool) -> None:
    path = ("/" if absolute else "") + "/".join(parts)
    assert parse_database_url(f"sqlite:///{path}").path == path
