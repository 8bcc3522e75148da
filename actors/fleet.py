"""The live status of every bank actor, for the dashboard and for presence in the API.

Bank actors write here after every change; readers (HTTP handlers, the dashboard websocket)
read plain dictionaries. Change notification is a set of dirty bank ids per subscriber plus a
wake-up event, so a slow subscriber costs the actors nothing: rapid updates of one bank
coalesce into one entry, and the subscriber reads the latest status when it gets round to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio

from domain.events import Presence
from domain.wiretime import iso


@dataclass(slots=True)
class BankStatus:
    id: str
    name: str
    location: str | None = None
    presence: Presence = "unknown"
    last_seen: datetime | None = None
    pending_commands: int = 0
    mailbox: int = 0
    restarts: int = 0
    supervision: str = "idle"
    doors: dict[int, str] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    config_hash: str | None = None
    applied_config_hash: str | None = None
    last_error: str | None = None
    decommissioned: bool = False
    #: the numbers of the compartments out of service
    out_of_service: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "location": self.location,
            "presence": self.presence,
            "last_seen": None if self.last_seen is None else iso(self.last_seen),
            "pending_commands": self.pending_commands,
            "mailbox": self.mailbox,
            "restarts": self.restarts,
            "supervision": self.supervision,
            "doors": {str(k): v for k, v in sorted(self.doors.items())},
            "alerts": self.alerts[-20:],
            "config_hash": self.config_hash,
            "applied_config_hash": self.applied_config_hash,
            "last_error": self.last_error,
            "decommissioned": self.decommissioned,
            "out_of_service": list(self.out_of_service),
        }


class FleetSubscription:
    def __init__(self, fleet: FleetView) -> None:
        self._fleet = fleet
        self.dirty: set[str] = set()
        self._wake = trio.Event()

    def notify(self, bank_id: str) -> None:
        self.dirty.add(bank_id)
        self._wake.set()

    async def changes(self) -> set[str]:
        """Wait for at least one change; return the ids changed since the last call."""
        await self._wake.wait()
        self._wake = trio.Event()
        changed, self.dirty = self.dirty, set()
        return changed

    def close(self) -> None:
        self._fleet._subscribers.discard(self)


class FleetView:
    def __init__(self) -> None:
        self.banks: dict[str, BankStatus] = {}
        self._subscribers: set[FleetSubscription] = set()

    def status(self, bank_id: str, name: str = "") -> BankStatus:
        status = self.banks.get(bank_id)
        if status is None:
            status = self.banks[bank_id] = BankStatus(id=bank_id, name=name)
        return status

    def changed(self, bank_id: str) -> None:
        for subscriber in self._subscribers:
            subscriber.notify(bank_id)

    def subscribe(self) -> FleetSubscription:
        subscription = FleetSubscription(self)
        self._subscribers.add(subscription)
        return subscription

    def snapshot(self) -> list[dict[str, Any]]:
        return [status.to_json() for status in self.banks.values()]
