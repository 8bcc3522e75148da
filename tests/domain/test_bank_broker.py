"""What the broker's delivery semantics ask of the pure domain (issue 13).

* **Revocation with a caching broker.** After re-provisioning, go-auth may still serve cached
  allows to the old credentials for up to the cache time. MQTT 3.1.1 cannot tell which session
  published, so during the revocation window nothing from the bank is applied and nothing is
  sent to it; after the window the broker asks lockerd again and denies the old credentials.
* **Reboot detection in QoS 1 redelivery order.** A heartbeat that was in flight when the
  device was cut off may be redelivered after newer ones; it must not look like a reboot.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from domain import commands as c
from domain import events as e
from domain.snapshot import decode_snapshot, encode_snapshot
from domain.state import BankState
from tests.domain._bank import (
    CLIENT,
    T0,
    TIMEOUT,
    Timed,
    answer,
    apply,
    at,
    comp_id,
    decide,
    device_event,
    grant,
    heartbeat,
    online_bank,
    open_cmd,
    provisioned,
    secs,
    step,
)

T_ONLINE = T0 + secs(120)
T_REPROV = T0 + secs(600)
WINDOW = 35  # e.g. 30 s go-auth cache + 3 s jitter + 2 s margin


def rotate_and_reprovision(
    state: BankState, now: datetime = T_REPROV, window: int = WINDOW, user: str = "mqtt-user-2"
) -> BankState:
    state = apply(
        state,
        at(c.IssueProvisioningToken(token_hash="token-2", expires_at=now + secs(3600)), now),
    )
    return apply(
        state,
        at(
            c.Provision(
                token_hash="token-2",
                client_id=CLIENT,
                new_mqtt_user=user,
                new_credential_hash=f"cred-of-{user}",
                revocation_window_seconds=window,
            ),
            now,
        ),
    )


def hb(now: datetime, uptime: int | None, session: str | None, device: datetime | None) -> Timed:
    return at(
        c.RecordHeartbeat(
            uptime_seconds=uptime,
            session_id=session,
            spare_transaction_id="spare",
            command_timeout_seconds=TIMEOUT,
            device_time=device,
        ),
        now,
    )


# ---------------------------------------------------------------------------------------------
# revocation window


def fresh_online_bank() -> BankState:
    """Online, heartbeating right up to the re-provisioning (so no heartbeat timeout fires)."""
    return apply(online_bank(), heartbeat(T_REPROV - secs(1), uptime=580))


def test_reprovisioning_opens_a_window_of_the_given_length_and_resets_presence() -> None:
    state = fresh_online_bank()
    after, events = step(
        apply(
            state,
            at(c.IssueProvisioningToken(token_hash="t2", expires_at=T_REPROV + secs(60)), T_REPROV),
        ),
        at(
            c.Provision(
                token_hash="t2",
                client_id="box",
                new_mqtt_user="mqtt-user-2",
                new_credential_hash="h2",
                revocation_window_seconds=WINDOW,
            ),
            T_REPROV,
        ),
    )
    assert events == [
        e.LockerBankProvisioned(
            client_id="box",
            mqtt_user="mqtt-user-2",
            credential_hash="h2",
            token_hash="t2",
            provisioned_at=T_REPROV,
            previous_mqtt_user="mqtt-user-1",
            revocation_window_ends_at=T_REPROV + secs(WINDOW),
        )
    ]
    assert after.credentials_revoked_at == T_REPROV
    assert after.revocation_window_ends_at == T_REPROV + secs(WINDOW)
    # the old session's liveness says nothing about the new device
    assert (after.presence, after.session_id, after.uptime_seconds) == ("unknown", None, None)
    assert after.revocation_pending(T_REPROV + secs(WINDOW - 0.001))
    assert not after.revocation_pending(T_REPROV + secs(WINDOW))


def test_first_provisioning_revokes_nothing_and_opens_no_window() -> None:
    state = provisioned()  # no previous credentials
    assert state.revocation_window_ends_at is None
    assert state.credentials_revoked_at is None
    assert not state.revocation_pending(T0)


def test_without_a_broker_cache_revocation_opens_no_window() -> None:
    state = rotate_and_reprovision(fresh_online_bank(), window=0)
    assert state.credentials_revoked_at == T_REPROV
    assert state.revocation_window_ends_at is None
    after, events = step(state, heartbeat(T_REPROV + secs(1), uptime=1, session="new"))
    assert after.presence == "online"
    assert any(isinstance(ev, e.LockerBankCameOnline) for ev in events)


DEVICE_MESSAGES = [
    pytest.param(lambda now: heartbeat(now, uptime=1, session="s-new"), id="heartbeat"),
    pytest.param(lambda now: answer("tx-1", now), id="answer"),
    pytest.param(
        lambda now: device_event(
            "door_state_changed", {"compartment_number": 1, "state": "open"}, now
        ),
        id="event",
    ),
    pytest.param(lambda now: at(c.RecordLastWill(session_id=None), now), id="last_will"),
]


@pytest.mark.parametrize("message", DEVICE_MESSAGES)
def test_nothing_the_bank_publishes_is_applied_during_the_window(message: object) -> None:
    state = rotate_and_reprovision(fresh_online_bank())
    for offset in (0.0, 1.0, WINDOW - 0.5):
        with pytest.raises(c.CommandRejected) as rejected:
            decide(state, message(T_REPROV + secs(offset)))  # type: ignore[operator]
        assert rejected.value.code == "revoked_session"
        assert "revoked" in rejected.value.message


def test_after_the_window_the_new_device_comes_online() -> None:
    state = rotate_and_reprovision(fresh_online_bank())
    after, events = step(state, heartbeat(T_REPROV + secs(WINDOW), uptime=7, session="s-new"))
    assert after.presence == "online"
    assert e.LockerBankCameOnline(at=T_REPROV + secs(WINDOW), session_id="s-new") in events
    # uptime history of the revoked session does not count: no DeviceRebooted
    assert not any(isinstance(ev, e.DeviceRebooted) for ev in events)


def test_opens_are_refused_revocation_pending_and_recorded() -> None:
    state = rotate_and_reprovision(fresh_online_bank())
    after, events = step(state, open_cmd(T_REPROV + secs(3)))
    assert events == [
        e.CompartmentOpeningDenied(
            user_id="user-1",
            compartment_id=comp_id(1),
            reason="revocation_pending",
            at=T_REPROV + secs(3),
        )
    ]
    assert after.version == state.version + 1  # the refusal is recorded


def test_no_grant_still_wins_over_revocation_pending() -> None:
    state = rotate_and_reprovision(fresh_online_bank())
    events = decide(state, open_cmd(T_REPROV + secs(3), user="stranger"))
    assert [ev.reason for ev in events if isinstance(ev, e.CompartmentOpeningDenied)] == [
        "no_grant"
    ]


def test_apply_config_is_refused_until_the_window_ends() -> None:
    state = rotate_and_reprovision(fresh_online_bank())
    request = c.RequestApplyConfig(transaction_id="cfg-1", command_timeout_seconds=TIMEOUT)
    with pytest.raises(c.CommandRejected) as rejected:
        decide(state, at(request, T_REPROV + secs(1)))
    assert rejected.value.code == "revocation_pending"
    events = decide(state, at(request, T_REPROV + secs(WINDOW)))
    assert [type(ev) for ev in events] == [e.ConfigApplyRequested]


def test_a_qr_scan_during_the_window_opens_nothing() -> None:
    state = rotate_and_reprovision(fresh_online_bank())
    scan = device_event("qr_scanned", {"qr_payload": "x"}, T_REPROV + secs(2))
    with pytest.raises(c.CommandRejected) as rejected:
        decide(state, scan)
    assert rejected.value.code == "revoked_session"


def test_a_second_reprovisioning_never_shortens_the_window() -> None:
    state = rotate_and_reprovision(fresh_online_bank(), window=WINDOW)
    again = rotate_and_reprovision(state, now=T_REPROV + secs(1), window=2, user="mqtt-user-3")
    assert again.revocation_window_ends_at == T_REPROV + secs(WINDOW)
    later = rotate_and_reprovision(state, now=T_REPROV + secs(10), window=WINDOW, user="u4")
    assert later.revocation_window_ends_at == T_REPROV + secs(10 + WINDOW)


def test_the_window_survives_a_restart_and_a_snapshot() -> None:
    state = rotate_and_reprovision(fresh_online_bank())
    rebuilt = decode_snapshot(encode_snapshot(state)).rehydrated()
    assert rebuilt.revocation_window_ends_at == state.revocation_window_ends_at
    assert rebuilt.credentials_revoked_at == T_REPROV
    with pytest.raises(c.CommandRejected):
        decide(rebuilt, heartbeat(T_REPROV + secs(5), uptime=1, session="x"))


def test_pending_commands_still_time_out_during_the_window() -> None:
    state = apply(fresh_online_bank(), open_cmd(T_REPROV - secs(1)))
    state = rotate_and_reprovision(state)
    events = decide(state, at(c.Tick(), T_REPROV - secs(1) + secs(TIMEOUT)))
    assert [type(ev) for ev in events] == [e.CommandTimedOut]


# ---------------------------------------------------------------------------------------------
# reboot detection and QoS 1 redelivery order


def beating(*beats: Timed) -> tuple[BankState, list[e.Event]]:
    state = grant(provisioned())
    events: list[e.Event] = []
    for beat in beats:
        state, decided = step(state, beat)
        events.extend(decided)
    return state, events


def device(seconds: float) -> datetime:
    return T0 + secs(seconds)


def test_a_redelivered_older_heartbeat_of_the_previous_connection_is_no_reboot() -> None:
    # s-1 sent uptime 100 at device time 100, was cut off before the PUBACK; the device
    # reconnected (s-2) and beat at uptime 130; then the broker handed over the old one
    state, events = beating(
        hb(T_ONLINE, 90, "s-1", device(90)),
        hb(T_ONLINE + secs(40), 130, "s-2", device(130)),
        hb(T_ONLINE + secs(41), 100, "s-1", device(100)),
    )
    assert not any(isinstance(ev, e.DeviceRebooted) for ev in events)
    # the latest heartbeat is still the newest one: its session decides about last wills
    assert (state.session_id, state.uptime_seconds, state.heartbeat_device_time) == (
        "s-2",
        130,
        device(130),
    )
    assert state.last_seen == T_ONLINE + secs(41)  # still a sign of life (receive time)
    later = decide(state, at(c.RecordLastWill(session_id="s-2"), T_ONLINE + secs(42)))
    assert later == [e.LockerBankWentOffline(at=T_ONLINE + secs(42), reason="last_will")]


def test_the_next_heartbeat_after_a_redelivered_one_is_no_reboot_either() -> None:
    _, events = beating(
        hb(T_ONLINE, 130, "s-2", device(130)),
        hb(T_ONLINE + secs(1), 100, "s-1", device(100)),  # redelivered, older
        hb(T_ONLINE + secs(10), 140, "s-2", device(140)),
    )
    assert not any(isinstance(ev, e.DeviceRebooted) for ev in events)


def test_after_a_lockerd_restart_the_redelivered_heartbeat_is_no_reboot() -> None:
    state, _ = beating(hb(T_ONLINE, 90, "s-1", device(90)))
    state = state.rehydrated()  # lockerd restarted: live knowledge is gone
    state, events = step(state, hb(T_ONLINE + secs(30), 130, "s-2", device(130)))
    state, more = step(state, hb(T_ONLINE + secs(31), 100, "s-1", device(100)))
    assert not any(isinstance(ev, e.DeviceRebooted) for ev in events + more)


def test_a_real_reboot_is_still_detected() -> None:
    _, events = beating(
        hb(T_ONLINE, 5000, "s-1", device(5000)),
        hb(T_ONLINE + secs(60), 3, "s-2", device(5060)),
    )
    assert (
        e.DeviceRebooted(at=T_ONLINE + secs(60), previous_uptime_seconds=5000, uptime_seconds=3)
        in events
    )


def test_a_reboot_without_device_timestamps_is_detected_by_a_new_session() -> None:
    _, events = beating(
        hb(T_ONLINE, 5000, "s-1", None),
        hb(T_ONLINE + secs(60), 3, "s-2", None),
    )
    assert any(isinstance(ev, e.DeviceRebooted) for ev in events)


def test_within_one_connection_a_lower_uptime_is_a_redelivery_even_without_a_clock() -> None:
    state, events = beating(
        hb(T_ONLINE, 120, "s-1", None),
        hb(T_ONLINE + secs(1), 110, "s-1", None),
    )
    assert not any(isinstance(ev, e.DeviceRebooted) for ev in events)
    assert state.uptime_seconds == 120


def test_a_duplicate_of_the_latest_heartbeat_changes_nothing_but_last_seen() -> None:
    first, _ = beating(hb(T_ONLINE, 120, "s-1", device(120)))
    state, events = step(first, hb(T_ONLINE + secs(2), 120, "s-1", device(120)))
    assert not any(isinstance(ev, e.DeviceRebooted) for ev in events)
    assert (state.uptime_seconds, state.session_id) == (120, "s-1")
    assert state.last_seen == T_ONLINE + secs(2)


def test_an_out_of_order_heartbeat_brings_an_offline_bank_online_with_the_known_session() -> None:
    state, _ = beating(hb(T_ONLINE, 130, "s-2", device(130)))
    state = apply(state, at(c.Tick(), T_ONLINE + secs(31)))  # 3 intervals: offline
    assert state.presence == "offline"
    after, events = step(state, hb(T_ONLINE + secs(40), 100, "s-1", device(100)))
    assert after.presence == "online"
    assert e.LockerBankCameOnline(at=T_ONLINE + secs(40), session_id="s-2") in events
