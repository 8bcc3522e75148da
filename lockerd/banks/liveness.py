"""``last_seen`` kept across restarts: heartbeats coalesced into one write per bank per flush.

Heartbeats are ephemeral events (never stored), so the last moment a bank was seen would be
lost on restart; the flusher writes the fleet view's ``last_seen`` to ``bank_last_seen`` at
most once per bank every :data:`LAST_SEEN_FLUSH_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import trio

from actors.fleet import FleetView
from lockerd.banks import queries
from store.base import Tables

LAST_SEEN_FLUSH_SECONDS = 5.0


async def flush_last_seen(
    tables: Tables, fleet: FleetView, owned: Callable[[str], bool] | None = None
) -> None:
    """Persist ``last_seen`` coalesced, forever (a supervised child of the service).

    With several nodes, ``owned`` says which banks this node writes (those whose actor runs
    here): each row has one writer, so two nodes never write the same rows concurrently.
    Rows are written in bank id order, so concurrent writers cannot deadlock on them anyway.
    """
    written: dict[str, datetime] = {}
    while True:
        await trio.sleep(LAST_SEEN_FLUSH_SECONDS)
        rows = sorted(
            (bank_id, status.last_seen)
            for bank_id, status in fleet.banks.items()
            if status.last_seen is not None
            and written.get(bank_id) != status.last_seen
            and (owned is None or owned(bank_id))
        )
        if not rows:
            continue
        await tables.write(queries.save_last_seen(rows))
        for bank_id, last_seen in rows:
            written[bank_id] = last_seen


def fill_fleet(fleet: FleetView, start: queries.StartingPoint) -> None:
    """Show every bank in the fleet view before its actor runs (name, location, last seen)."""
    for row in start.banks:
        status = fleet.status(row.bank_id, row.name)
        status.location = row.location
        status.decommissioned = row.decommissioned
        if row.decommissioned:
            status.presence = "offline"  # it is not heard any more (docs/lifecycle.md)
        if row.last_seen is not None:
            status.last_seen = row.last_seen
