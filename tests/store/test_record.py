"""``Tables.record``: a plain-table change and the events that record it, in one transaction,
at the end of the stream, projections applied; nothing of either when the function raises."""

from __future__ import annotations

from typing import Any

import pytest

from store import NewEvent, SqlTx, StoredEvent, open_store
from tests.store.conftest import StoreOpener


class Counted:
    """A projection that counts events per type (to see it applied in the same transaction)."""

    name = "counted"
    ddl = ("CREATE TABLE IF NOT EXISTS counted (type TEXT PRIMARY KEY, n BIGINT NOT NULL)",)
    tables = ("counted",)

    def apply(self, tx: SqlTx, event: StoredEvent) -> None:
        tx.execute(
            "INSERT INTO counted (type, n) VALUES (?, 1)"
            " ON CONFLICT (type) DO UPDATE SET n = counted.n + 1",
            (event.type,),
        )


def setup(tx: SqlTx) -> None:
    tx.execute("CREATE TABLE IF NOT EXISTS things (id TEXT PRIMARY KEY)")


async def test_record_writes_tables_and_events_together(store_opener: StoreOpener) -> None:
    async with open_store(store_opener.url, [Counted()]) as store:
        await store.write(setup)

        def add(thing: str) -> Any:
            def fn(tx: SqlTx) -> tuple[str, list[NewEvent]]:
                tx.execute("INSERT INTO things (id) VALUES (?)", (thing,))
                return thing, [NewEvent("ThingAdded", {"id": thing})]

            return fn

        result, stored = await store.record("thing:a", add("a"))
        assert result == "a"
        assert [(e.stream_id, e.version, e.type) for e in stored] == [("thing:a", 1, "ThingAdded")]
        _, stored = await store.record("thing:a", add("b"))
        assert stored[0].version == 2  # at the end of the stream, whatever its version

        def fails(tx: SqlTx) -> tuple[None, list[NewEvent]]:
            tx.execute("INSERT INTO things (id) VALUES ('c')")
            raise LookupError("no")

        with pytest.raises(LookupError):
            await store.record("thing:a", fails)

        def nothing(tx: SqlTx) -> tuple[int, list[NewEvent]]:
            return 7, []

        assert await store.record("thing:b", nothing) == (7, [])

        things = await store.read(lambda tx: tx.query("SELECT id FROM things ORDER BY id"))
        assert [row[0] for row in things] == ["a", "b"]
        assert [e.version for e in await store.read_stream("thing:a")] == [1, 2]
        assert await store.read_stream("thing:b") == []
        counted = await store.read(lambda tx: tx.query("SELECT type, n FROM counted"))
        assert [tuple(row) for row in counted] == [("ThingAdded", 2)]
        with pytest.raises(ValueError):
            await store.record("", nothing)
