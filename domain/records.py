"""What an event store keeps of a stream: recorded events and snapshots, as plain values.

These are the records exchanged between the bank actors (which fold them) and the store
backends (which persist them); they live here so that both can use them while neither
imports the other. ``ConcurrencyError`` is the optimistic-concurrency verdict of an append.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event not yet stored: its type name and JSON-ready data."""

    type: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the store keeps it.

    ``position`` is the global order (strictly increasing, gaps allowed), ``version`` the
    1-based position inside its stream.
    """

    position: int
    stream_id: str
    version: int
    type: str
    data: Mapping[str, Any]
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    stream_id: str
    version: int
    state: bytes


class ConcurrencyError(Exception):
    """An append found the stream at another version than the writer expected."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id}: expected version {expected}, found {actual}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
