"""Several store instances (separate connections, as separate processes would have) on one database.

Written for PostgreSQL, where several lockerd processes may share a database, but it runs on
every backend of ``conftest.py``: SQLite must give the same guarantees to several connections.

Checked: no event lost or duplicated, per-stream versions without gaps, conflicts reported as
ConcurrencyError with a truthful ``actual``, and a reader paging through ``read_all`` *while* the
writers run ends up with exactly the log, in order (the high-water-mark problem).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import trio

from store import ConcurrencyError, EventStore, NewEvent, StoredEvent
from tests.store.conftest import StoreOpener

DEADLINE = 60
INSTANCES = 3
TASKS_PER_INSTANCE = 4
EVENTS_PER_TASK = 12
SHARED_BANKS = ("bank-shared-a", "bank-shared-b")


def ev(**data: Any) -> NewEvent:
    return NewEvent(type="Happened", data=data)


async def test_writers_on_shared_and_own_banks_from_several_instances(
    store_opener: StoreOpener,
) -> None:
    conflicts: list[ConcurrencyError] = []
    paged: list[StoredEvent] = []
    writers_done = trio.Event()

    async def shared_writer(store: EventStore, instance: int, task: int) -> None:
        """Append to a shared bank, retrying on conflict like a bank actor would."""
        for i in range(EVENTS_PER_TASK):
            bank = SHARED_BANKS[i % len(SHARED_BANKS)]
            while True:
                version = await store.stream_version(bank)
                try:
                    await store.append(bank, version, [ev(instance=instance, task=task, i=i)])
                    break
                except ConcurrencyError as exc:
                    conflicts.append(exc)

    async def own_writer(store: EventStore, instance: int, task: int) -> None:
        """Append to a bank nobody else writes: never a conflict, two events at a time."""
        bank = f"bank-{instance}-{task}"
        for i in range(0, EVENTS_PER_TASK, 2):
            await store.append(bank, i, [ev(i=i), ev(i=i + 1)])

    async def reader(store: EventStore) -> None:
        """Page through the log while it grows, as a projector or an export would."""
        after = 0
        while True:
            finished = writers_done.is_set()
            page = await store.read_all(after_position=after, limit=7)
            paged.extend(page)
            if page:
                after = page[-1].position
            elif finished:
                return

    with trio.fail_after(DEADLINE):
        async with AsyncExitStack() as stack:
            writers = [await stack.enter_async_context(store_opener()) for _ in range(INSTANCES)]
            watcher = await stack.enter_async_context(store_opener())
            async with trio.open_nursery() as outer:
                outer.start_soon(reader, watcher)
                async with trio.open_nursery() as nursery:
                    for instance, store in enumerate(writers):
                        for task in range(TASKS_PER_INSTANCE):
                            nursery.start_soon(shared_writer, store, instance, task)
                            nursery.start_soon(own_writer, store, instance, task)
                writers_done.set()
            everything = await watcher.read_all(limit=100_000)

    writers_total = INSTANCES * TASKS_PER_INSTANCE
    assert len(everything) == 2 * writers_total * EVENTS_PER_TASK
    # The reader that paged during the writes saw exactly the log: nothing skipped, no repeats.
    assert paged == everything
    positions = [e.position for e in everything]
    assert positions == sorted(set(positions))

    for bank in SHARED_BANKS:
        events = [e for e in everything if e.stream_id == bank]
        assert [e.version for e in events] == list(range(1, len(events) + 1))
    shared = [e for e in everything if e.stream_id in SHARED_BANKS]
    keys = [(e.data["instance"], e.data["task"], e.data["i"]) for e in shared]
    assert sorted(keys) == [
        (instance, task, i)
        for instance in range(INSTANCES)
        for task in range(TASKS_PER_INSTANCE)
        for i in range(EVENTS_PER_TASK)
    ]
    for instance in range(INSTANCES):  # each writer's own events stay in its order
        for task in range(TASKS_PER_INSTANCE):
            mine = [k[2] for k in keys if k[:2] == (instance, task)]
            assert mine == list(range(EVENTS_PER_TASK))

    for instance in range(INSTANCES):
        for task in range(TASKS_PER_INSTANCE):
            own = [e for e in everything if e.stream_id == f"bank-{instance}-{task}"]
            assert [(e.version, e.data["i"]) for e in own] == [
                (v, v - 1) for v in range(1, EVENTS_PER_TASK + 1)
            ]

    assert conflicts, "the shared-bank writers never raced"
    for conflict in conflicts:
        assert conflict.stream_id in SHARED_BANKS
        assert conflict.actual > conflict.expected


async def test_one_version_one_winner_across_instances(store_opener: StoreOpener) -> None:
    """The same expected version from every instance at once: exactly one append lands."""
    async with AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(store_opener()) for _ in range(INSTANCES)]
        for round_ in range(5):
            won: list[int] = []
            lost: list[ConcurrencyError] = []

            async def attempt(
                n: int,
                store: EventStore,
                round_: int = round_,
                won: list[int] = won,
                lost: list[ConcurrencyError] = lost,
            ) -> None:
                try:
                    await store.append("contested", round_, [ev(n=n)])
                except ConcurrencyError as exc:
                    lost.append(exc)
                else:
                    won.append(n)

            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:
                    for n in range(10 * INSTANCES):
                        nursery.start_soon(attempt, n, stores[n % INSTANCES])
            assert len(won) == 1
            assert len(lost) == 10 * INSTANCES - 1
            assert {(e.expected, e.actual) for e in lost} == {(round_, round_ + 1)}
        events = await stores[0].read_stream("contested")
        assert [e.version for e in events] == [1, 2, 3, 4, 5]
