"""A bank's lifecycle (contract §5): edit, add/edit/retire compartments, out of service,
decommission, operator opens and restarts; each a happy path and every refusal, plus a
property: whatever the changes, the config hash follows the configuration and at most one
apply_config is pending."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain import bank as b
from domain import commands as c
from domain import events as e
from domain.actor import Actor
from domain.config_hash import config_compartments, config_hash
from domain.lifecycle import current_config_hash
from domain.state import BankState
from tests.domain._bank import (
    T0,
    TIMEOUT,
    USER,
    answer,
    apply,
    at,
    comp_id,
    created,
    decide,
    heartbeat,
    online_bank,
    open_cmd,
    provisioned,
    secs,
    step,
)
from tests.domain.test_bank_properties import PROPERTY_SETTINGS

ADMIN = Actor.user("admin-user")
NOW = T0 + secs(200)


def edit_bank(**fields: Any) -> c.EditBank:
    return c.EditBank(
        actor=ADMIN, transaction_id="push-tx", command_timeout_seconds=TIMEOUT, **fields
    )


def add(
    number: int, slave_id: int = 2, address: int = 0, cid: str | None = None
) -> c.AddCompartment:
    return c.AddCompartment(
        actor=ADMIN,
        transaction_id="push-tx",
        command_timeout_seconds=TIMEOUT,
        compartment_id=cid or f"comp-{number}",
        number=number,
        slave_id=slave_id,
        address=address,
    )


def edit(number: int, **fields: Any) -> c.EditCompartment:
    return c.EditCompartment(
        actor=ADMIN,
        transaction_id="push-tx",
        command_timeout_seconds=TIMEOUT,
        compartment_id=comp_id(number),
        **fields,
    )


def retire(number: int) -> c.RetireCompartment:
    return c.RetireCompartment(
        actor=ADMIN,
        transaction_id="push-tx",
        command_timeout_seconds=TIMEOUT,
        compartment_id=comp_id(number),
    )


def operator_open(number: int = 1, tx: str = "op-tx") -> c.RequestOperatorOpen:
    return c.RequestOperatorOpen(
        compartment_id=comp_id(number),
        actor=ADMIN,
        user_id="admin-user",
        reason="item stuck",
        transaction_id=tx,
        command_timeout_seconds=TIMEOUT,
    )


def rejected(state: BankState, command: c.BankCommand, code: str) -> None:
    with pytest.raises(c.CommandRejected) as caught:
        b.decide(state, command, NOW)
    assert caught.value.code == code


def types(events: list[e.Event]) -> list[type[e.Event]]:
    return [type(ev) for ev in events]


# --- editing the bank ------------------------------------------------------------------------


def test_renaming_names_the_actor_and_changes_no_configuration() -> None:
    state = created()
    events = b.decide(state, edit_bank(name="Town hall", location=None, set_location=True), NOW)
    assert events == [
        e.LockerBankEdited(
            name="Town hall",
            location=None,
            heartbeat_interval_seconds=10,
            config_hash=None,
            actor=ADMIN,
            at=NOW,
        )
    ]
    after = b.fold(state, events)
    assert (after.name, after.location) == ("Town hall", None)
    assert after.config_hash == state.config_hash  # the configuration is as it was
    assert e.event_data(events[0])["actor"] == {"kind": "user", "id": "admin-user"}


def test_a_new_heartbeat_interval_is_a_new_config_pushed_while_online() -> None:
    state = online_bank(at=NOW - secs(1))
    events = b.decide(state, edit_bank(heartbeat_interval_seconds=30), NOW)
    assert types(events) == [e.LockerBankEdited, e.ConfigApplyRequested]
    edited, push = events
    assert isinstance(edited, e.LockerBankEdited) and isinstance(push, e.ConfigApplyRequested)
    assert edited.config_hash == config_hash(config_compartments(state.config_entries()), 30)
    assert push.config_hash == edited.config_hash
    assert push.heartbeat_interval_seconds == 30
    assert push.transaction_id == "push-tx"
    assert push.requested_by is None
    after = b.fold(state, events)
    assert after.config_hash == edited.config_hash
    assert after.pending_config() is not None


def test_a_config_change_while_offline_is_pushed_when_the_bank_comes_online() -> None:
    state = apply(provisioned(), at(edit_bank(heartbeat_interval_seconds=20), NOW))
    assert state.config_hash == current_config_hash(state)
    events = decide(state, heartbeat(NOW + secs(1), spare="online-push"))
    assert types(events) == [e.HeartbeatReceived, e.LockerBankCameOnline, e.ConfigApplyRequested]


def test_a_config_change_while_an_apply_config_is_pending_sends_no_second_one() -> None:
    state = online_bank(at=NOW - secs(1))
    state = apply(
        state, at(c.RequestApplyConfig(transaction_id="cfg", command_timeout_seconds=TIMEOUT), NOW)
    )
    events = b.decide(state, edit_bank(heartbeat_interval_seconds=30), NOW)
    assert types(events) == [e.LockerBankEdited]


def test_editing_nothing_changes_nothing() -> None:
    state = created()
    assert b.decide(state, edit_bank(name=state.name), NOW) == []


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"heartbeat_interval_seconds": 0}, "invalid"),
        ({"heartbeat_interval_seconds": 3601}, "invalid"),
        ({"name": "  "}, "invalid"),
    ],
)
def test_editing_the_bank_refused(fields: dict[str, object], code: str) -> None:
    rejected(created(), edit_bank(**fields), code)


# --- compartments ----------------------------------------------------------------------------


def test_adding_a_compartment_is_a_new_config() -> None:
    state = online_bank(at=NOW - secs(1))
    events = b.decide(state, add(4), NOW)
    assert types(events) == [e.CompartmentAdded, e.ConfigApplyRequested]
    after = b.fold(state, events)
    assert after.compartments[4].id == "comp-4"
    assert after.config_hash == current_config_hash(after) != state.config_hash
    push = events[1]
    assert isinstance(push, e.ConfigApplyRequested)
    assert {"id": 4, "slaveId": 2, "address": 0} in push.compartments


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (add(1), "conflict"),  # the number exists
        (add(0), "invalid"),
        (add(-3), "invalid"),
        (add(9, slave_id=1, address=0), "conflict"),  # compartment 1's Modbus address
    ],
)
def test_adding_a_compartment_refused(command: c.AddCompartment, code: str) -> None:
    rejected(created(), command, code)


def test_out_of_service_is_not_configuration_and_refuses_opens() -> None:
    state = online_bank(at=NOW - secs(1))
    events = b.decide(state, edit(1, out_of_service=True), NOW)
    assert events == [
        e.CompartmentEdited(
            compartment_id=comp_id(1),
            number=1,
            slave_id=1,
            address=0,
            out_of_service=True,
            config_hash=None,
            actor=ADMIN,
            at=NOW,
        )
    ]
    state = b.fold(state, events)
    denied = decide(state, open_cmd(NOW + secs(1)))
    assert isinstance(denied[0], e.CompartmentOpeningDenied)
    assert denied[0].reason == "out_of_service"
    refused = b.decide(state, operator_open(1), NOW + secs(1))
    assert isinstance(refused[0], e.CompartmentOpeningDenied)
    assert refused[0].reason == "out_of_service"
    # back in service: opens again
    state = apply(state, at(edit(1, out_of_service=False), NOW + secs(2)))
    assert types(decide(state, open_cmd(NOW + secs(3)))) == [e.CompartmentOpeningRequested]


def test_a_new_slave_id_is_a_new_config() -> None:
    state = online_bank(at=NOW - secs(1))
    events = b.decide(state, edit(2, slave_id=7, address=9), NOW)
    assert types(events) == [e.CompartmentEdited, e.ConfigApplyRequested]
    after = b.fold(state, events)
    assert (after.compartments[2].slave_id, after.compartments[2].address) == (7, 9)
    assert after.config_hash == current_config_hash(after)


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (
            c.EditCompartment(
                actor=ADMIN,
                transaction_id="t",
                command_timeout_seconds=1,
                compartment_id="nope",
                slave_id=3,
            ),
            "not_found",
        ),
        (edit(2, slave_id=1, address=0), "conflict"),  # compartment 1's Modbus address
    ],
)
def test_editing_a_compartment_refused(command: c.EditCompartment, code: str) -> None:
    rejected(created(), command, code)


def test_retiring_a_compartment_ends_its_grants_and_its_config() -> None:
    state = online_bank(at=NOW - secs(1))
    assert state.grant_valid(comp_id(2), USER, NOW)
    events = b.decide(state, retire(2), NOW)
    assert types(events) == [e.CompartmentRetired, e.ConfigApplyRequested]
    after = b.fold(state, events)
    assert 2 not in after.compartments
    assert not after.grant_valid(comp_id(2), USER, NOW)
    assert after.config_hash == current_config_hash(after)
    push = events[1]
    assert isinstance(push, e.ConfigApplyRequested)
    assert [entry["id"] for entry in push.compartments] == [1, 3]
    rejected(after, retire(2), "not_found")
    # the number may be used again
    assert types(b.decide(after, add(2, slave_id=5), NOW)) == [e.CompartmentAdded]


def test_retiring_refused_while_a_command_for_it_is_pending() -> None:
    state = apply(online_bank(at=NOW - secs(1)), open_cmd(NOW))
    rejected(state, retire(1), "conflict")
    state = apply(state, answer("tx-1", NOW + secs(1)))
    assert types(b.decide(state, retire(1), NOW + secs(2)))[0] is e.CompartmentRetired


def test_the_last_compartment_cannot_be_retired() -> None:
    state = apply(apply(created(), at(retire(1), NOW)), at(retire(2), NOW))
    rejected(state, retire(3), "conflict")


# --- operator opens --------------------------------------------------------------------------


def test_an_operator_opens_without_a_grant_and_the_request_names_actor_and_reason() -> None:
    state = apply(provisioned(), heartbeat(NOW - secs(1)))  # no grant for anyone
    events = b.decide(state, operator_open(1), NOW)
    assert len(events) == 1
    requested = events[0]
    assert isinstance(requested, e.CompartmentOpeningRequested)
    assert (requested.via, requested.actor, requested.reason) == ("operator", ADMIN, "item stuck")
    assert requested.expires_at == NOW + secs(TIMEOUT)
    assert b.fold(state, events).pending_for(1) is not None


@pytest.mark.parametrize(
    "situation", ["offline", "command_pending", "out_of_service", "decommissioned"]
)
def test_an_operator_open_is_refused_and_recorded(situation: str) -> None:
    state = online_bank(at=NOW - secs(1))
    if situation == "offline":
        state = provisioned()
    elif situation == "command_pending":
        state = apply(state, open_cmd(NOW))
    elif situation == "out_of_service":
        state = apply(state, at(edit(1, out_of_service=True), NOW))
    else:
        state = apply(state, at(c.Decommission(actor=ADMIN), NOW))
    events = b.decide(state, operator_open(1), NOW)
    assert events == [
        e.CompartmentOpeningDenied(
            user_id="admin-user",
            compartment_id=comp_id(1),
            reason=situation,
            at=NOW,
            via="operator",
            actor=ADMIN,
            request_reason="item stuck",
        )
    ]


def test_an_operator_open_of_an_unknown_compartment_is_not_found() -> None:
    rejected(online_bank(), operator_open(99), "not_found")


# --- decommissioning -------------------------------------------------------------------------


def test_decommissioning_revokes_the_device_voids_the_token_and_refuses_everything() -> None:
    state = online_bank(at=NOW - secs(1))
    events = b.decide(state, c.Decommission(actor=ADMIN), NOW)
    assert events == [
        e.LockerBankDecommissioned(revoked_mqtt_user="mqtt-user-1", actor=ADMIN, at=NOW)
    ]
    state = b.fold(state, events)
    assert state.decommissioned
    assert (state.mqtt_user, state.credential_hash, state.token_hash) == (None, None, None)
    assert state.presence == "offline"
    denied = decide(state, open_cmd(NOW))
    assert isinstance(denied[0], e.CompartmentOpeningDenied)
    assert denied[0].reason == "decommissioned"
    for device_message in (
        heartbeat(NOW).command,
        c.RecordLastWill(session_id=None),
        c.RecordDeviceEvent(event="x", event_id=None, data={}),
    ):
        rejected(state, device_message, "revoked_session")
    for change in (
        c.Decommission(actor=ADMIN),
        edit_bank(name="x"),
        add(7),
        edit(1, out_of_service=True),
        retire(1),
        c.IssueProvisioningToken(token_hash="t2", expires_at=NOW + secs(60)),
        c.RequestApplyConfig(transaction_id="cfg", command_timeout_seconds=TIMEOUT),
        c.GrantAccess(compartment_id=comp_id(1), user_id=USER, expires_at=None),
    ):
        rejected(state, change, "conflict")
    # the provisioning token is void
    provision = c.Provision(
        token_hash="token-hash-1", client_id="d", new_mqtt_user="u", new_credential_hash="h"
    )
    assert types(b.decide(state, provision, NOW)) == [e.ProvisioningFailed]


def test_pending_commands_of_a_decommissioned_bank_still_time_out() -> None:
    state = apply(online_bank(at=NOW - secs(1)), open_cmd(NOW))
    state = apply(state, at(c.Decommission(actor=ADMIN), NOW + secs(1)))
    events = b.decide(state, c.Tick(), NOW + secs(TIMEOUT))
    assert types(events) == [e.CommandTimedOut]


def test_an_operators_restart_is_recorded_with_its_actor() -> None:
    restart = c.RecordActorRestarted(actor=Actor.admin_token())
    events = b.decide(created(), restart, NOW)
    assert events == [e.BankActorRestarted(actor=Actor.admin_token(), at=NOW)]
    assert e.event_data(events[0])["actor"] == {"kind": "admin_token"}
    # without an operator, only a bank recorded as failed records one
    assert b.decide(created(), c.RecordActorRestarted(), NOW) == []


# --- a property ------------------------------------------------------------------------------

changes = st.one_of(
    st.builds(lambda n: edit_bank(heartbeat_interval_seconds=n), st.integers(1, 40)),
    st.builds(
        lambda n, s, a: add(n, s, a), st.integers(1, 6), st.integers(0, 3), st.integers(0, 3)
    ),
    st.builds(
        lambda n, s, a, o: edit(n, slave_id=s, address=a, out_of_service=o),
        st.integers(1, 6),
        st.integers(0, 3),
        st.integers(0, 3),
        st.booleans(),
    ),
    st.builds(retire, st.integers(1, 6)),
    st.just("answer"),
    st.just("offline"),
    st.just("online"),
)


@PROPERTY_SETTINGS
@given(st.lists(changes, max_size=25))
def test_the_config_hash_follows_every_change_and_one_apply_config_at_most(
    plan: list[object],
) -> None:
    state = initial = online_bank(at=NOW)
    stored: list[e.Event] = []
    now = NOW
    for index, item in enumerate(plan):
        now = now + secs(1)
        if item == "answer":
            pending = state.pending_config()
            if pending is None:
                continue
            reply = answer(
                pending.transaction_id,
                now,
                action="apply_config",
                applied_config_hash=pending.config_hash,
            ).command
            assert isinstance(reply, c.RecordAnswer)
            command: c.BankCommand = replace(reply, spare_transaction_id=f"answer-{index}")
        elif item == "offline":
            command = c.RecordLastWill(session_id=None)
        elif item == "online":
            command = heartbeat(now, spare=f"beat-{index}").command
        else:
            assert isinstance(item, c.ConfigChange)
            command = item
        try:
            state, events = step(state, at(command, now))
        except c.CommandRejected as exc:
            assert exc.code in ("conflict", "not_found", "invalid")
            continue
        stored += [ev for ev in events if e.is_durable(ev)]
        assert len([tx for tx in state.pending() if tx.action == "apply_config"]) <= 1
        if any(isinstance(ev, (e.CompartmentAdded, e.CompartmentRetired)) for ev in events):
            assert state.config_hash == current_config_hash(state)
        if state.presence == "online" and state.pending_config() is None:
            assert state.config_hash in (None, state.applied_config_hash)
    replayed = b.fold(initial, stored)
    assert replayed.config_hash == state.config_hash
    assert replayed.compartments == state.compartments


def test_a_snapshot_keeps_out_of_service_and_decommissioned() -> None:
    from domain.snapshot import decode_snapshot, encode_snapshot

    state = apply(online_bank(at=NOW - secs(1)), at(edit(2, out_of_service=True), NOW))
    state = apply(state, at(c.Decommission(actor=ADMIN), NOW + secs(1)))
    restored = decode_snapshot(encode_snapshot(state))
    assert restored.compartments[2].out_of_service
    assert restored.decommissioned_at == NOW + secs(1)
    assert restored == state.rehydrated()
