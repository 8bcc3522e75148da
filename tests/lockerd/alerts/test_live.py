"""The live alert board: active alerts in the fleet view, changes to subscribers and the
webhook's wake-up, from stored events as the listeners get them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from actors.fleet import FleetView
from domain.alerts import alert_id
from domain.records import StoredEvent
from lockerd.alerts.live import AlertBoard

BANK = "0b6d3c8e-5a1f-4c2b-9d7e-1f2a3b4c5d6e"
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def stored(version: int, type_: str, **data: Any) -> StoredEvent:
    return StoredEvent(version, BANK, version, type_, data, AT)


def test_the_board_follows_raised_acknowledged_and_resolved_alerts() -> None:
    fleet = FleetView()
    board = AlertBoard(fleet)
    woken: list[int] = []
    board.on_change.append(lambda: woken.append(1))
    subscription = board.subscribe()
    board.follow(BANK, [stored(5, "UncommandedDoorOpening", compartment_number=2)])
    board.follow(BANK, [stored(6, "BankOfflineTooLong", heartbeat_interval_seconds=10)])
    door, offline = alert_id(BANK, 5), alert_id(BANK, 6)
    assert [a["id"] for a in fleet.banks[BANK].alerts] == [door, offline]
    assert fleet.banks[BANK].alerts[0] == {
        "id": door,
        "bank_id": BANK,
        "type": "uncommanded_door_opening",
        "raised_at": "2026-03-01T12:00:00.000Z",
        "state": "open",
        "data": {"compartment_number": 2},
    }
    # acknowledged: the incident is over, the outage lasts until the bank is back
    board.follow(BANK, [stored(7, "AlertAcknowledged", alert_id=door)])
    board.follow(BANK, [stored(8, "AlertAcknowledged", alert_id=offline)])
    assert [(a["id"], a["state"]) for a in fleet.banks[BANK].alerts] == [(offline, "acknowledged")]
    board.follow(BANK, [stored(9, "HeartbeatIgnored"), stored(10, "LockerBankCameOnline")])
    assert fleet.banks[BANK].alerts == []
    assert board.active == {}
    assert len(woken) == 5  # once per stored batch that changed an alert
    changes = subscription._pending
    assert [(a["id"], a["state"]) for a in changes] == [
        (door, "open"),
        (offline, "open"),
        (door, "acknowledged"),
        (offline, "acknowledged"),
        (offline, "resolved"),
    ]
    # a second acknowledgement (never decided, but harmless) changes nothing
    board.follow(BANK, [stored(11, "AlertAcknowledged", alert_id=door)])
    assert len(woken) == 5


def test_the_board_starts_from_the_read_models_active_alerts() -> None:
    fleet = FleetView()
    board = AlertBoard(fleet)
    alert = {
        "id": alert_id(BANK, 3),
        "bank_id": BANK,
        "type": "bank_actor_failed",
        "raised_at": "2026-03-01T12:00:00.000Z",
        "state": "acknowledged",
        "data": {"restarts": 5, "error_type": "StoreUnavailable"},
    }
    board.load([alert])
    assert fleet.banks[BANK].alerts == [alert]
    board.follow(BANK, [stored(4, "BankActorRestarted")])
    assert fleet.banks[BANK].alerts == []
