"""Alerts in the pure domain (contract §5): which events raise them, the offline deadline in
virtual time (3 heartbeat intervals after going offline, resolved by coming back), the actor
failure record, and acknowledging."""

from __future__ import annotations

from domain import commands as c
from domain import events as e
from domain.actor import Actor
from domain.alerts import alert_id
from domain.snapshot import decode_snapshot, encode_snapshot
from domain.state import BankState
from tests.domain._bank import (
    BANK_ID,
    INTERVAL,
    T0,
    TIMEOUT,
    answer,
    apply,
    at,
    decide,
    device_event,
    heartbeat,
    online_bank,
    open_cmd,
    secs,
    step,
)

T_ONLINE = T0 + secs(120)
T_OFF = T_ONLINE + secs(5)
ADMIN = Actor.admin_token()


def went_offline() -> BankState:
    return apply(online_bank(), at(c.RecordLastWill(session_id="session-1"), T_OFF))


def test_offline_alert_fires_three_intervals_after_going_offline() -> None:
    state = went_offline()
    deadline = T_OFF + secs(3 * INTERVAL)
    assert state.offline_since == T_OFF
    assert state.next_deadline() == deadline
    assert decide(state, at(c.Tick(), deadline - secs(0.001))) == []
    state, events = step(state, at(c.Tick(), deadline))
    assert events == [
        e.BankOfflineTooLong(
            went_offline_at=T_OFF, heartbeat_interval_seconds=INTERVAL, at=deadline
        )
    ]
    assert list(state.open_alerts.values()) == ["bank_offline"]
    assert state.next_deadline() is None  # raised once per outage
    assert decide(state, at(c.Tick(), deadline + secs(1000))) == []


def test_offline_after_a_heartbeat_timeout_counts_from_going_offline() -> None:
    state = online_bank()
    gone = T_ONLINE + secs(3 * INTERVAL)
    state, events = step(state, at(c.Tick(), gone))
    assert events == [e.LockerBankWentOffline(at=gone, reason="heartbeat_timeout")]
    assert state.next_deadline() == gone + secs(3 * INTERVAL)


def test_coming_back_in_time_raises_nothing() -> None:
    state = apply(went_offline(), heartbeat(T_OFF + secs(3 * INTERVAL - 1), session="session-2"))
    assert state.presence == "online"
    assert state.offline_since is None
    assert state.open_alerts == {}
    assert [
        ev
        for ev in decide(state, at(c.Tick(), T_OFF + secs(100)))
        if isinstance(ev, e.BankOfflineTooLong)
    ] == []


def test_coming_back_resolves_the_offline_alert() -> None:
    state = apply(went_offline(), at(c.Tick(), T_OFF + secs(3 * INTERVAL)))
    assert len(state.open_alerts) == 1
    state, events = step(state, heartbeat(T_OFF + secs(200), session="session-2"))
    assert any(isinstance(ev, e.LockerBankCameOnline) for ev in events)
    assert state.open_alerts == {}
    assert state.offline_since is None


def test_a_heartbeat_after_the_deadline_raises_then_resolves() -> None:
    """The deadline is due before the heartbeat is decided: the outage was long enough."""
    state, events = step(went_offline(), heartbeat(T_OFF + secs(500), session="session-2"))
    types = [type(ev) for ev in events]
    assert types.index(e.BankOfflineTooLong) < types.index(e.LockerBankCameOnline)
    assert state.open_alerts == {}


def test_the_offline_deadline_survives_a_snapshot_and_a_restart() -> None:
    state = went_offline()
    rebuilt = decode_snapshot(encode_snapshot(state)).rehydrated()
    assert rebuilt.presence == "unknown"
    assert rebuilt.offline_since == T_OFF
    assert rebuilt.next_deadline() == T_OFF + secs(3 * INTERVAL)
    events = decide(rebuilt, at(c.Tick(), T_OFF + secs(3 * INTERVAL)))
    assert [type(ev) for ev in events] == [e.BankOfflineTooLong]


def test_a_repeated_last_will_does_not_move_the_deadline() -> None:
    state = went_offline().rehydrated()  # a restart: presence unknown, the outage remembered
    state = apply(state, at(c.RecordLastWill(session_id=None), T_OFF + secs(20)))
    assert state.offline_since == T_OFF


def test_incidents_raise_alerts_with_ids_from_the_stream_version() -> None:
    state = online_bank()
    version = state.version
    state, events = step(
        state,
        device_event("door_state_changed", {"compartment_number": 2, "state": "open"}, T_ONLINE),
    )
    assert any(isinstance(ev, e.UncommandedDoorOpening) for ev in events)
    # DoorStateChanged is version + 1, the uncommanded opening version + 2
    assert dict(state.open_alerts) == {alert_id(BANK_ID, version + 2): "uncommanded_door_opening"}
    state = apply(state, open_cmd(T_ONLINE + secs(1), number=1, tx="tx-jam"))
    state = apply(
        state, answer("tx-jam", T_ONLINE + secs(2), result="error", error_code="DOOR_JAMMED")
    )
    state = apply(state, open_cmd(T_ONLINE + secs(3), number=3, tx="tx-late"))
    state = apply(state, at(c.Tick(), T_ONLINE + secs(3 + TIMEOUT)))
    assert sorted(state.open_alerts.values()) == [
        "command_failed",
        "command_timeout",
        "uncommanded_door_opening",
    ]


def test_acknowledging_an_open_alert_records_the_actor() -> None:
    state = apply(went_offline(), at(c.Tick(), T_OFF + secs(3 * INTERVAL)))
    (the_id,) = state.open_alerts
    state, events = step(state, at(c.AcknowledgeAlert(the_id, ADMIN), T_OFF + secs(40)))
    assert events == [
        e.AlertAcknowledged(
            alert_id=the_id, alert_type="bank_offline", at=T_OFF + secs(40), actor=ADMIN
        )
    ]
    assert state.open_alerts == {}
    assert e.event_data(events[0])["actor"] == {"kind": "admin_token"}


def test_acknowledging_twice_or_an_unknown_alert_is_a_conflict() -> None:
    state = apply(went_offline(), at(c.Tick(), T_OFF + secs(3 * INTERVAL)))
    (the_id,) = state.open_alerts
    state = apply(state, at(c.AcknowledgeAlert(the_id, ADMIN), T_OFF + secs(40)))
    for alert in (the_id, "no-such-alert"):
        try:
            decide(state, at(c.AcknowledgeAlert(alert, ADMIN), T_OFF + secs(41)))
        except c.CommandRejected as rejection:
            assert rejection.code == "conflict"
        else:
            raise AssertionError("acknowledged a second time")


def test_actor_failure_is_recorded_once_and_resolved_by_the_restart() -> None:
    state = online_bank()
    failed = c.RecordActorFailed(restarts=5, error_type="X" * 900)
    state, events = step(state, at(failed, T_ONLINE))
    assert len(events) == 1 and isinstance(events[0], e.BankActorFailed)
    assert events[0].error_type == "X" * 100
    assert state.actor_failed
    assert list(state.open_alerts.values()) == ["bank_actor_failed"]
    assert decide(state, at(c.RecordActorFailed(restarts=5, error_type=None), T_ONLINE)) == []
    state, events = step(state, at(c.RecordActorRestarted(), T_ONLINE + secs(1)))
    assert events == [e.BankActorRestarted(at=T_ONLINE + secs(1))]
    assert not state.actor_failed
    assert state.open_alerts == {}
    assert decide(state, at(c.RecordActorRestarted(), T_ONLINE + secs(2))) == []


def test_open_alerts_survive_a_snapshot() -> None:
    state = apply(online_bank(), at(c.RecordActorFailed(restarts=5, error_type=None), T_ONLINE))
    rebuilt = decode_snapshot(encode_snapshot(state))
    assert rebuilt.open_alerts == state.open_alerts
    assert rebuilt.actor_failed


def test_a_decommissioned_bank_raises_no_offline_alert_and_resolves_its_own() -> None:
    state = apply(went_offline(), at(c.Decommission(actor=ADMIN), T_OFF + secs(1)))
    assert state.next_deadline() is None
    assert decide(state, at(c.Tick(), T_OFF + secs(3 * INTERVAL))) == []

    raised = apply(went_offline(), at(c.Tick(), T_OFF + secs(3 * INTERVAL)))
    assert list(raised.open_alerts.values()) == ["bank_offline"]
    state = apply(raised, at(c.Decommission(actor=ADMIN), T_OFF + secs(40)))
    assert state.open_alerts == {}
