"""The alerts live: every *active* alert in memory, followed from the stored events.

Active means open, or acknowledged while its condition lasts (a bank still offline, an actor
still failed: the types that resolve by themselves, ``domain.alerts.RESOLVED_BY``). An
acknowledged incident (a door, a failed or timed-out command) has been dealt with and nothing
will resolve it, so it leaves the board; the read model keeps it.

:class:`AlertBoard` is loaded from the read model at start, then fed by the stored-event
listeners (on every node: the cluster's event feed hands it other nodes' events too). Each
change (raised, acknowledged, resolved) is

* written into the bank's entry of the fleet view (``alerts``: its active alerts, newest
  last), which ``/dashboard``, the console and ``/ws/status`` show;
* handed to every subscriber (``/ws/status`` sends ``{"type":"alert","alert":{…}}``);
* announced to the ``on_change`` callbacks (the webhook sender wakes up).

The rules are those of the read model (:mod:`lockerd.alerts.projection`, ``domain.alerts``);
an alert here is the same dictionary ``GET /api/admin/alerts`` answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import trio

from actors.fleet import FleetView
from domain.alerts import ACKNOWLEDGED_BY, RAISED_BY, RESOLVED_BY, SELF_RESOLVING, alert_id
from domain.records import StoredEvent
from domain.wiretime import iso

Alert = dict[str, Any]

#: alert changes a subscriber may fall behind by; older ones are dropped (the client can
#: always list the alerts again)
SUBSCRIBER_BACKLOG: Final = 1000


class AlertSubscription:
    def __init__(self, board: AlertBoard) -> None:
        self._board = board
        self._pending: deque[Alert] = deque(maxlen=SUBSCRIBER_BACKLOG)
        self._wake = trio.Event()

    def notify(self, alert: Alert) -> None:
        self._pending.append(alert)
        self._wake.set()

    async def changes(self) -> list[Alert]:
        """Wait for at least one change; return the changed alerts, oldest first."""
        await self._wake.wait()
        self._wake = trio.Event()
        changed = list(self._pending)
        self._pending.clear()
        return changed

    def close(self) -> None:
        self._board._subscribers.discard(self)


class AlertBoard:
    def __init__(self, fleet: FleetView) -> None:
        self.fleet = fleet
        #: alert id -> alert, for every active alert (see the module doc)
        self.active: dict[str, Alert] = {}
        self.on_change: list[Callable[[], None]] = []
        self._subscribers: set[AlertSubscription] = set()

    def load(self, alerts: Iterable[Alert]) -> None:
        """Start from the read model's active alerts (oldest first)."""
        banks: set[str] = set()
        for alert in alerts:
            self.active[alert["id"]] = alert
            banks.add(alert["bank_id"])
        for bank_id in banks:
            self._show(bank_id)

    def subscribe(self) -> AlertSubscription:
        subscription = AlertSubscription(self)
        self._subscribers.add(subscription)
        return subscription

    def of_bank(self, bank_id: str) -> list[Alert]:
        return [alert for alert in self.active.values() if alert["bank_id"] == bank_id]

    def follow(self, bank_id: str, stored: Sequence[StoredEvent]) -> None:
        """A stored-event listener (see ``actors.ports.StoredEventListener``)."""
        changed: list[Alert] = []
        for event in stored:
            changed += self._apply(bank_id, event)
        if not changed:
            return
        self._show(bank_id)
        for alert in changed:
            for subscriber in self._subscribers:
                subscriber.notify(alert)
        for callback in self.on_change:
            callback()

    def _apply(self, bank_id: str, event: StoredEvent) -> list[Alert]:
        kind = event.type
        raised = RAISED_BY.get(kind)
        if raised is not None:
            alert: Alert = {
                "id": alert_id(bank_id, event.version),
                "bank_id": bank_id,
                "type": raised,
                "raised_at": iso(event.recorded_at),
                "state": "open",
                "data": dict(event.data),
            }
            self.active[alert["id"]] = alert
            return [dict(alert)]
        if kind == ACKNOWLEDGED_BY:
            found = self.active.get(str(event.data.get("alert_id")))
            if found is None or found["state"] != "open":
                return []
            found["state"] = "acknowledged"
            if found["type"] not in SELF_RESOLVING:
                del self.active[found["id"]]  # dealt with: nothing will resolve it
            return [dict(found)]
        resolved_type = RESOLVED_BY.get(kind)
        if resolved_type is None:
            return []
        ended = [
            alert
            for alert in self.active.values()
            if alert["bank_id"] == bank_id and alert["type"] == resolved_type
        ]
        for alert in ended:
            del self.active[alert["id"]]
        return [{**alert, "state": "resolved"} for alert in ended]

    def _show(self, bank_id: str) -> None:
        """The bank's active alerts (newest last) in its fleet entry."""
        self.fleet.status(bank_id).alerts = [dict(alert) for alert in self.of_bank(bank_id)]
        self.fleet.changed(bank_id)
