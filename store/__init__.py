"""Event store: append-only streams per locker bank, projections, plain tables."""

from store.base import (
    ConcurrencyError,
    EventStore,
    NewEvent,
    Projection,
    Snapshot,
    SqlTx,
    StoredEvent,
    StoreUnavailable,
)

__all__ = [
    "ConcurrencyError",
    "EventStore",
    "NewEvent",
    "Projection",
    "Snapshot",
    "SqlTx",
    "StoreUnavailable",
    "StoredEvent",
]
