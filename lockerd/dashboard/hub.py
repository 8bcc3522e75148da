"""The operators' live fleet stream behind the ``/ws/status`` websocket.

Every websocket is one subscriber of the :class:`~actors.fleet.FleetView`. Bank actors only
mark a bank dirty in each subscriber's set (O(1), never blocking), so the actors never wait for
a browser. The connection is served by :class:`lockerd.http.websocket.LiveStreams` (bounded
queue, slow clients dropped with 1013, 1001 on shutdown, TCP reset of a client that stopped
reading; see there); this module only says what is sent: a snapshot of every bank, then the
latest status of each bank that changed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
import structlog
import trio
from prometheus_client import CollectorRegistry

from actors.fleet import FleetView
from domain.wiretime import iso
from lockerd.alerts.live import AlertBoard, AlertSubscription
from lockerd.http.websocket import (
    CLOSE_TIMEOUT_SECONDS,
    QUEUE_SIZE,
    SEND_TIMEOUT_SECONDS,
    LiveStreams,
    Outgoing,
    StreamMetrics,
    StreamSession,
    Transport,
)

log = structlog.get_logger("lockerd.dashboard")

_encode = msgspec.json.Encoder().encode


def encode(message: dict[str, Any]) -> str:
    return _encode(message).decode()


def snapshot_message(fleet: FleetView, now: datetime) -> str:
    banks = sorted(fleet.snapshot(), key=lambda bank: (str(bank["name"]).casefold(), bank["id"]))
    return encode({"type": "snapshot", "server_time": iso(now), "banks": banks})


def bank_message(bank: dict[str, Any]) -> str:
    return encode({"type": "bank", "bank": bank})


def alert_message(alert: dict[str, Any]) -> str:
    """An alert raised or changed (as ``GET /api/admin/alerts`` lists it; docs/alerts.md)."""
    return encode({"type": "alert", "alert": alert})


def dashboard_metrics(registry: CollectorRegistry) -> StreamMetrics:
    """``lockerd_dashboard_clients`` and ``lockerd_dashboard_disconnects_total{reason}``."""
    return StreamMetrics.register(registry, "lockerd_dashboard", "dashboard")


class StatusHub(LiveStreams):
    """Serves the status websockets of one running service."""

    def __init__(
        self,
        *,
        fleet: FleetView,
        alerts: AlertBoard,
        shutdown: trio.Event,
        clock: Callable[[], datetime],
        metrics: StreamMetrics,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        close_timeout: float = CLOSE_TIMEOUT_SECONDS,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        super().__init__(
            "status",
            shutdown,
            metrics,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            queue_size=queue_size,
        )
        self.fleet = fleet
        self.alerts = alerts
        self.clock = clock

    async def stream(self, transport: Transport) -> None:
        """Stream the fleet to one accepted websocket until it ends, then close it."""
        await self.run(transport, self._feed)

    async def _feed(self, session: StreamSession, outgoing: Outgoing) -> None:
        """Subscribes before taking the snapshot, so no change between the two is lost (a
        bank may be sent twice; the later message is always the newer status). Alert changes
        go out as they happen, beside the banks' statuses."""
        subscription = self.fleet.subscribe()
        alerts = self.alerts.subscribe()
        session.on_finish.append(subscription.close)
        session.on_finish.append(alerts.close)
        try:
            await outgoing.send(snapshot_message(self.fleet, self.clock()))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_alerts, alerts, outgoing)
                while True:
                    changed = await subscription.changes()
                    for bank_id in sorted(changed):
                        status = self.fleet.banks.get(bank_id)
                        if status is not None:
                            await outgoing.send(bank_message(status.to_json()))
        finally:
            subscription.close()
            alerts.close()

    @staticmethod
    async def _send_alerts(alerts: AlertSubscription, outgoing: Outgoing) -> None:
        while True:
            for alert in await alerts.changes():
                await outgoing.send(alert_message(alert))
