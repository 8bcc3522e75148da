"""Live fleet status shared between nodes, so dashboards on any node see every bank.

A bank's live status (presence, last seen, doors, pending commands, supervision) is known
where its actor runs. Each node sends the status of the banks it owns, coalesced, as JSON
NOTIFY payloads on :data:`~lockerd.cluster.link.CHANNEL_FLEET`; every other node writes them
into its own :class:`~actors.fleet.FleetView`, whose subscribers (the dashboard websocket) then
see the change as for a local bank.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Final

import structlog
import trio

from actors.fleet import BankStatus, FleetView

log = structlog.get_logger("lockerd.cluster.fleet")

#: NOTIFY payloads must stay below 8000 bytes.
MAX_PAYLOAD: Final = 7800
#: Seconds a node gathers status changes before it sends them.
COALESCE_SECONDS: Final = 0.2


def encode_batches(node_id: str, statuses: list[dict[str, Any]]) -> list[str]:
    """``statuses`` as JSON payloads of at most :data:`MAX_PAYLOAD` bytes each."""
    batches: list[str] = []
    current: list[str] = []
    size = 0
    head = json.dumps(node_id)
    for status in statuses:
        # a bank's alerts are not sent: every node's alert board follows every node's events
        status = {key: value for key, value in status.items() if key != "alerts"}
        text = json.dumps(status, separators=(",", ":"))
        if current and size + len(text) + 1 > MAX_PAYLOAD - 100:
            batches.append(f'{{"node":{head},"banks":[{",".join(current)}]}}')
            current, size = [], 0
        current.append(text)
        size += len(text) + 1
    if current:
        batches.append(f'{{"node":{head},"banks":[{",".join(current)}]}}')
    return batches


def apply_status(fleet: FleetView, data: dict[str, Any]) -> str:
    """Write one bank's status from another node into ``fleet``; returns the bank id."""
    status: BankStatus = fleet.status(str(data["id"]), str(data.get("name", "")))
    status.name = str(data.get("name", status.name))
    status.location = data.get("location")
    status.presence = data.get("presence", status.presence)
    last_seen = data.get("last_seen")
    status.last_seen = None if last_seen is None else datetime.fromisoformat(last_seen)
    status.pending_commands = int(data.get("pending_commands", 0))
    status.mailbox = int(data.get("mailbox", 0))
    status.restarts = int(data.get("restarts", 0))
    status.supervision = str(data.get("supervision", "idle"))
    status.doors = {int(k): str(v) for k, v in dict(data.get("doors", {})).items()}
    # status.alerts is this node's own: its alert board follows every node's events
    status.config_hash = data.get("config_hash")
    status.applied_config_hash = data.get("applied_config_hash")
    status.last_error = data.get("last_error")
    status.decommissioned = bool(data.get("decommissioned", False))
    status.out_of_service = [int(n) for n in data.get("out_of_service", [])]
    return status.id


class FleetSync:
    def __init__(
        self,
        node_id: str,
        fleet: FleetView,
        is_local: Callable[[str], bool],
        send: Callable[[str], Awaitable[None]],
    ) -> None:
        self.node_id = node_id
        self.fleet = fleet
        self.is_local = is_local
        self._send = send

    def bank_created(self, bank_id: str, data: Mapping[str, Any]) -> None:
        """A bank created on another node (the event feed): list it with its name now."""
        if bank_id in self.fleet.banks:
            return
        status = self.fleet.status(bank_id, str(data.get("name", "")))
        location = data.get("location")
        status.location = None if location is None else str(location)
        self.fleet.changed(bank_id)

    def received(self, payload: str) -> None:
        """A NOTIFY from another node (ours are ignored): apply every bank it owns."""
        try:
            message = json.loads(payload)
            if message.get("node") == self.node_id:
                return
            for data in message.get("banks", []):
                if not self.is_local(str(data.get("id"))):
                    self.fleet.changed(apply_status(self.fleet, data))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("fleet_status_ignored", error=repr(exc))

    async def run(self) -> None:
        subscription = self.fleet.subscribe()
        try:
            while True:
                changed = await subscription.changes()
                await trio.sleep(COALESCE_SECONDS)
                changed |= subscription.dirty
                subscription.dirty = set()
                await self.send_now(changed)
        finally:
            subscription.close()

    async def send_now(self, bank_ids: set[str]) -> None:
        """Send the status of those of ``bank_ids`` that this node owns."""
        statuses = [
            self.fleet.banks[b].to_json()
            for b in bank_ids
            if b in self.fleet.banks and self.is_local(b)
        ]
        for payload in encode_batches(self.node_id, statuses):
            try:
                await self._send(payload)
            except Exception as exc:  # the others catch up on the next change
                log.warning("fleet_status_not_sent", error=repr(exc))
