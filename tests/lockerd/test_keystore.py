"""The master key kept in the store: created once, the same for every process."""

from __future__ import annotations

from typing import cast

import trio

from domain.keys import Keyring
from lockerd.keystore import create_key_table, load_keyring
from store.base import Tables
from tests.store.conftest import StoreOpener, store_opener

__all__ = ["store_opener"]  # the fixture, shared with the store tests


def fingerprint(keyring: Keyring) -> str:
    return keyring.hash("probe", "value")


async def test_a_configured_key_wins_over_the_kept_one(store_opener: StoreOpener) -> None:
    async with store_opener() as store:
        await cast(Tables, store).write(create_key_table)
        configured = await load_keyring(cast(Tables, store), "configured-secret")
        kept = await load_keyring(cast(Tables, store), None)
    assert fingerprint(configured) == fingerprint(Keyring(b"configured-secret"))
    assert fingerprint(kept) != fingerprint(configured)


async def test_processes_starting_at_once_on_an_empty_database_share_one_key(
    store_opener: StoreOpener,
) -> None:
    # the race of two nodes started together without LOCKERD_SECRET_KEY: both may find no
    # key; neither may fail, and both must end up with the same one
    found: list[str] = []
    async with store_opener() as first, store_opener() as second:
        # as the service does: the plain tables first (one node at a time), then the key
        await cast(Tables, first).write(create_key_table)

        async def load(store: Tables) -> None:
            found.append(fingerprint(await load_keyring(store, None)))

        async with trio.open_nursery() as nursery:
            for store in (first, second, first, second):
                nursery.start_soon(load, cast(Tables, store))
    assert len(found) == 4
    assert len(set(found)) == 1
    async with store_opener() as later:
        assert fingerprint(await load_keyring(cast(Tables, later), None)) == found[0]
