"""Banks hashed into a fixed number of shards, and which live node should own each shard.

A shard, not a bank, is the unit of ownership: one advisory lock per shard keeps the lock count
small and fixed whatever the fleet size. The desired owner of a shard is chosen by rendezvous
(highest random weight) hashing over the live node ids: every node computes the same answer
from the same membership, and when a node joins or leaves only the shards it gains or loses
move (about 1/N of them), never a reshuffle of the rest.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

#: Shards of the bank space. Fixed for the life of a database: changing it moves every bank.
SHARD_COUNT: Final = 128


@lru_cache(maxsize=65536)
def shard_of(bank_id: str) -> int:
    """The shard of a bank (stable across processes and versions: CRC-32 of the id)."""
    return zlib.crc32(bank_id.encode()) % SHARD_COUNT


def _weight(shard: int, node_id: str) -> int:
    digest = hashlib.blake2b(f"{shard}/{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def desired_owner(shard: int, live_nodes: Iterable[str]) -> str | None:
    """The node that should own ``shard`` among ``live_nodes`` (None when there is none)."""
    best: tuple[int, str] | None = None
    for node in live_nodes:
        candidate = (_weight(shard, node), node)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


def desired_shards(node_id: str, live_nodes: Iterable[str]) -> frozenset[int]:
    """The shards ``node_id`` should own when ``live_nodes`` (which include it) are up."""
    nodes = sorted(set(live_nodes) | {node_id})
    return frozenset(s for s in range(SHARD_COUNT) if desired_owner(s, nodes) == node_id)
