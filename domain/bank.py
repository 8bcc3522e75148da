"""A locker bank's behaviour: ``decide(state, command, now) -> events``, ``evolve(state, event)``.

Both are pure: no clock, no randomness, no I/O. ``decide`` either returns the events that the
command causes (possibly none: a duplicate changes nothing) or raises
:class:`~domain.commands.CommandRejected`. ``evolve`` never fails for an event that
``decide`` produced.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import reduce
from typing import Any

from pyrsistent import PMap, pmap

from domain import commands as c
from domain import events as e
from domain.actor import Actor
from domain.alerts import RAISED_BY, RESOLVED_BY, alert_id
from domain.config_hash import entries_hash
from domain.lifecycle import (
    LIFECYCLE_COMMANDS,
    LIFECYCLE_EVENTS,
    apply_config_request,
    config_push,
    decide_lifecycle,
    lifecycle_changes,
)
from domain.state import (
    DEDUP_WINDOW,
    MAX_REMEMBERED,
    BankChanges,
    BankState,
    Compartment,
    Transaction,
    copy_with,
    opens_the_door,
)

# A device that lost its provisioning reply may redeem the same token with the same client id
# again within this window, until its issued credentials have been seen in use.
PROVISIONING_REPLY_GRACE = timedelta(minutes=15)
# At most one ProvisioningFailed per bank per this interval is stored; the refusals in between
# are answered all the same (contract §2).
PROVISIONING_FAILURE_RECORD_INTERVAL = timedelta(minutes=1)


def decide(state: BankState, command: c.BankCommand, now: datetime) -> list[e.Event]:
    """The events ``command`` causes at the moment ``now`` (possibly none).

    Deadlines that are already due at ``now`` fire first, so every command is decided on the
    state as it is at ``now``, whether or not the timer's tick has been handled yet. Raises
    :class:`~domain.commands.CommandRejected` for a command that is invalid for this bank.
    """
    match command:
        case c.CreateBank():
            return _create(state, command, now)
        case c.Tick():
            if not state.exists:
                raise c.CommandRejected("not_found", "unknown locker bank")
            return _tick(state, now)
    if not state.exists:
        raise c.CommandRejected("not_found", "unknown locker bank")
    due = _tick(state, now)
    if due:
        state = fold(state, due)
    return due + _decide_now(state, command, now)


# Device messages that a revoked session could have sent while its credentials may still pass
# the broker's cache (docs/broker-auth.md): not applied during the revocation window.
_DEVICE_MESSAGES = (c.RecordHeartbeat, c.RecordAnswer, c.RecordDeviceEvent, c.RecordLastWill)
# What a decommissioned bank refuses (409) besides device messages and lifecycle changes:
# anything that would give it a token, a device or a command. Opens are refused as opens
# (a recorded refusal, reason ``decommissioned``); grants may still be revoked.
_REFUSED_WHEN_DECOMMISSIONED = (
    c.IssueProvisioningToken,
    c.RequestApplyConfig,
    c.GrantAccess,
    c.GrantGroupAccess,
)


def _decide_now(state: BankState, command: c.BankCommand, now: datetime) -> list[e.Event]:
    if isinstance(command, _DEVICE_MESSAGES) and state.decommissioned:
        raise c.CommandRejected(
            "revoked_session",
            "the locker bank is decommissioned: its device credentials are revoked and"
            " nothing it publishes is applied",
        )
    if isinstance(command, _REFUSED_WHEN_DECOMMISSIONED) and state.decommissioned:
        raise c.CommandRejected("conflict", "the locker bank is decommissioned")
    if isinstance(command, LIFECYCLE_COMMANDS):
        return decide_lifecycle(state, command, now)
    if isinstance(command, _DEVICE_MESSAGES) and state.revocation_pending(now):
        raise c.CommandRejected(
            "revoked_session",
            "the bank's previous device credentials were revoked and the broker may still"
            f" honour them until {_iso(state.revocation_window_ends_at)}: MQTT cannot tell"
            " their messages from the new device's, so none is applied until then",
        )
    match command:
        case c.IssueProvisioningToken():
            return [
                e.ProvisioningTokenIssued(
                    token_hash=command.token_hash,
                    expires_at=command.expires_at,
                    issued_at=now,
                    actor=command.actor,
                )
            ]
        case c.Provision():
            return _provision(state, command, now)
        case c.RecordProvisioningReplyFailed():
            return [
                e.ProvisioningReplyFailed(
                    client_id=command.client_id,
                    mqtt_user=command.mqtt_user,
                    reason=command.reason,
                    at=now,
                )
            ]
        case c.NoteCredentialsUsed():
            if state.mqtt_user != command.mqtt_user or state.credentials_seen_in_use:
                return []
            return [e.DeviceCredentialsUsed(mqtt_user=command.mqtt_user, at=now)]
        case c.GrantAccess():
            return _grant(state, command, now)
        case c.RevokeAccess():
            return _revoke(state, command, now)
        case c.GrantGroupAccess():
            return _grant_group(state, command, now)
        case c.RevokeGroupAccess():
            return _revoke_group(state, command, now)
        case c.RequestOpen():
            return _request_open(state, command, now)
        case c.RequestOperatorOpen():
            return _operator_open(state, command, now)
        case c.RequestApplyConfig():
            if state.revocation_pending(now):
                raise c.CommandRejected(
                    "revocation_pending",
                    "the bank's previous device credentials were revoked and may still reach"
                    f" the device's commands until {_iso(state.revocation_window_ends_at)};"
                    " the configuration is pushed by itself when the bank comes online after"
                    " that, or ask again then",
                )
            if state.pending_config() is not None:
                raise c.CommandRejected("conflict", "an apply_config command is still pending")
            return [
                apply_config_request(
                    state,
                    command.transaction_id,
                    now,
                    command.command_timeout_seconds,
                    command.requested_by,
                    command.actor,
                )
            ]
        case c.MarkDispatched():
            tx = state.transactions.get(command.transaction_id)
            if tx is None or tx.dispatched:
                return []
            return [e.CommandDispatched(transaction_id=tx.transaction_id, dispatched_at=now)]
        case c.RecordAnswer():
            return _answer(state, command, now)
        case c.RecordHeartbeat():
            return _heartbeat(state, command, now)
        case c.RecordLastWill():
            return _last_will(state, command, now)
        case c.RecordDeviceEvent():
            return _device_event(state, command, now)
        case c.RecordActorFailed():
            if state.actor_failed:
                return []
            kind = None if command.error_type is None else command.error_type[:100]
            return [e.BankActorFailed(restarts=command.restarts, error_type=kind, at=now)]
        case c.RecordActorRestarted():
            # an operator's restart is recorded even when the failure could not be (the store
            # was down then): the restart is an operator action (contract §5)
            if not state.actor_failed and command.actor is None:
                return []
            return [e.BankActorRestarted(at=now, actor=command.actor)]
        case c.AcknowledgeAlert():
            alert_type = state.open_alerts.get(command.alert_id)
            if alert_type is None:
                raise c.CommandRejected(
                    "conflict", "the alert is not open (acknowledged or resolved already)"
                )
            return [
                e.AlertAcknowledged(
                    alert_id=command.alert_id, alert_type=alert_type, at=now, actor=command.actor
                )
            ]
    raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover


def _create(state: BankState, command: c.CreateBank, now: datetime) -> list[e.Event]:
    if state.exists:
        raise c.CommandRejected("conflict", "locker bank already exists")
    numbers = [spec.number for spec in command.compartments]
    if not numbers:
        raise c.CommandRejected("invalid", "a locker bank needs at least one compartment")
    if len(set(numbers)) != len(numbers):
        raise c.CommandRejected("invalid", "compartment numbers must be unique")
    if any(n <= 0 for n in numbers):
        raise c.CommandRejected("invalid", "compartment numbers must be positive")
    modbus = [(spec.slave_id, spec.address) for spec in command.compartments]
    if len(set(modbus)) != len(modbus):
        raise c.CommandRejected("invalid", "slave_id and address must be unique per bank")
    if not 1 <= command.heartbeat_interval_seconds <= 3600:
        raise c.CommandRejected("invalid", "heartbeat_interval_seconds must be 1-3600")
    return [
        e.LockerBankCreated(
            bank_id=command.bank_id,
            name=command.name,
            location=command.location,
            heartbeat_interval_seconds=command.heartbeat_interval_seconds,
            compartments=command.compartments,
            created_at=now,
            actor=command.actor,
            config_hash=entries_hash(
                ((spec.number, spec.slave_id, spec.address) for spec in command.compartments),
                command.heartbeat_interval_seconds,
            ),
        ),
        e.ProvisioningTokenIssued(
            token_hash=command.token_hash,
            expires_at=command.token_expires_at,
            issued_at=now,
            actor=command.actor,
        ),
    ]


def _provision(state: BankState, command: c.Provision, now: datetime) -> list[e.Event]:
    def failed(reason: str) -> list[e.Event]:
        last = state.last_provisioning_failure_at
        if last is not None and now - last < PROVISIONING_FAILURE_RECORD_INTERVAL:
            return [e.RegistrationRefused(client_id=command.client_id, reason=reason, at=now)]
        return [e.ProvisioningFailed(client_id=command.client_id, reason=reason, at=now)]

    if command.token_hash == state.token_hash:
        assert state.token_expires_at is not None
        if now >= state.token_expires_at:
            return failed("token_expired")
    elif command.token_hash == state.used_token_hash:
        if not _may_redeem_again(state, command, now):
            return failed("token_used")
    else:
        return failed("token_unknown")
    window_ends: datetime | None = None
    if state.mqtt_user is not None and command.revocation_window_seconds > 0:
        # the previous credentials are revoked now; cached allows for them may outlive this
        # moment by the broker's cache time: wait that out before talking to the bank again
        window_ends = now + timedelta(seconds=command.revocation_window_seconds)
        if state.revocation_window_ends_at is not None:
            window_ends = max(window_ends, state.revocation_window_ends_at)
    return [
        e.LockerBankProvisioned(
            client_id=command.client_id,
            mqtt_user=command.new_mqtt_user,
            credential_hash=command.new_credential_hash,
            token_hash=command.token_hash,
            provisioned_at=now,
            previous_mqtt_user=state.mqtt_user,
            revocation_window_ends_at=window_ends,
        )
    ]


def _may_redeem_again(state: BankState, command: c.Provision, now: datetime) -> bool:
    """The lost-reply rule: same device, credentials never used, still within the grace."""
    return (
        state.provisioned_client_id == command.client_id
        and not state.credentials_seen_in_use
        and state.provisioned_at is not None
        and now < state.provisioned_at + PROVISIONING_REPLY_GRACE
    )


def _check_grantable(
    state: BankState, compartment_id: str, expires_at: datetime | None, now: datetime
) -> None:
    """Raises :class:`CommandRejected` unless the compartment exists and the expiry is ahead.

    The same for a user's grant and a group's.
    """
    if state.compartment_by_id(compartment_id) is None:
        raise c.CommandRejected("not_found", "unknown compartment")
    if expires_at is not None and expires_at <= now:
        raise c.CommandRejected("invalid", "expires_at must be in the future")


def _grant(state: BankState, command: c.GrantAccess, now: datetime) -> list[e.Event]:
    _check_grantable(state, command.compartment_id, command.expires_at, now)
    return [
        e.CompartmentAccessGranted(
            compartment_id=command.compartment_id,
            user_id=command.user_id,
            expires_at=command.expires_at,
            granted_at=now,
            actor=command.actor,
        )
    ]


def _revoke(state: BankState, command: c.RevokeAccess, now: datetime) -> list[e.Event]:
    if command.user_id not in state.grants.get(command.compartment_id, pmap()):
        raise c.CommandRejected("not_found", "no such grant")
    return [
        e.CompartmentAccessRevoked(
            compartment_id=command.compartment_id,
            user_id=command.user_id,
            revoked_at=now,
            actor=command.actor,
        )
    ]


def _grant_group(state: BankState, command: c.GrantGroupAccess, now: datetime) -> list[e.Event]:
    _check_grantable(state, command.compartment_id, command.expires_at, now)
    return [
        e.CompartmentGroupAccessGranted(
            compartment_id=command.compartment_id,
            group_id=command.group_id,
            expires_at=command.expires_at,
            granted_at=now,
            actor=command.actor,
        )
    ]


def _revoke_group(state: BankState, command: c.RevokeGroupAccess, now: datetime) -> list[e.Event]:
    if command.group_id not in state.group_grants.get(command.compartment_id, pmap()):
        raise c.CommandRejected("not_found", "no such grant")
    return [
        e.CompartmentGroupAccessRevoked(
            compartment_id=command.compartment_id,
            group_id=command.group_id,
            revoked_at=now,
            actor=command.actor,
        )
    ]


def _open_refusal(
    state: BankState,
    compartment: Compartment,
    user_id: str,
    now: datetime,
    group_ids: frozenset[str] = frozenset(),
) -> str | None:
    """Why an open must be refused, in the contract's order of precedence; None to allow.

    A grant is the user's own or one of a group the user is a member of (``group_ids``)."""
    if not (
        state.grant_valid(compartment.id, user_id, now)
        or state.group_grant_valid(compartment.id, group_ids, now)
    ):
        return "no_grant"
    return _state_refusal(state, compartment, now)


def _state_refusal(state: BankState, compartment: Compartment, now: datetime) -> str | None:
    """Why the bank cannot open the compartment now, whoever asks; None when it can."""
    if state.decommissioned:
        return "decommissioned"
    if compartment.out_of_service:
        return "out_of_service"
    if state.revocation_pending(now):
        return "revocation_pending"
    if state.presence != "online":
        return "offline"
    if state.pending_for(compartment.number) is not None:
        return "command_pending"
    return None


def _request_open(state: BankState, command: c.RequestOpen, now: datetime) -> list[e.Event]:
    compartment = state.compartment_by_id(command.compartment_id)
    if compartment is None:
        raise c.CommandRejected("not_found", "unknown compartment")
    return _decided_opening(
        compartment,
        _open_refusal(state, compartment, command.user_id, now, command.group_ids),
        transaction_id=command.transaction_id,
        user_id=command.user_id,
        timeout=command.command_timeout_seconds,
        now=now,
    )


def _operator_open(
    state: BankState, command: c.RequestOperatorOpen, now: datetime
) -> list[e.Event]:
    """An operator's open: no grant needed, refused (and recorded) like a user's otherwise."""
    compartment = state.compartment_by_id(command.compartment_id)
    if compartment is None:
        raise c.CommandRejected("not_found", "unknown compartment")
    return _decided_opening(
        compartment,
        _state_refusal(state, compartment, now),
        transaction_id=command.transaction_id,
        user_id=command.user_id,
        timeout=command.command_timeout_seconds,
        now=now,
        via="operator",
        actor=command.actor,
        reason=command.reason,
    )


def _decided_opening(
    compartment: Compartment,
    refusal: str | None,
    *,
    transaction_id: str,
    user_id: str,
    timeout: int,
    now: datetime,
    via: e.Via = "app",
    actor: Actor | None = None,
    reason: str | None = None,
    qr_nonce: str | None = None,
    event_id: str | None = None,
) -> list[e.Event]:
    """An open decided: the refusal recorded (``refusal`` names why), or the request.

    The one place that builds both events, whoever opens (a user, an operator, a QR code):
    ``reason`` is the operator's reason for opening, ``qr_nonce`` the code's nonce, ``event_id``
    the device event that carried it.
    """
    if refusal is not None:
        return [
            e.CompartmentOpeningDenied(
                user_id=user_id,
                compartment_id=compartment.id,
                reason=refusal,
                at=now,
                via=via,
                event_id=event_id,
                actor=actor,
                request_reason=reason,
            )
        ]
    return [
        e.CompartmentOpeningRequested(
            transaction_id=transaction_id,
            compartment_id=compartment.id,
            compartment_number=compartment.number,
            user_id=user_id,
            requested_at=now,
            expires_at=now + timedelta(seconds=timeout),
            via=via,
            qr_nonce=qr_nonce,
            event_id=event_id,
            actor=actor,
            reason=reason,
        )
    ]


def _answer(state: BankState, command: c.RecordAnswer, now: datetime) -> list[e.Event]:
    tx = state.transactions.get(command.transaction_id)
    if tx is None:
        raise c.CommandRejected("unknown_transaction", "answer for an unknown transaction")
    if command.action != tx.action:
        raise c.CommandRejected(
            "invalid", f"answer action {command.action!r} does not match {tx.action!r}"
        )
    if tx.status == "timeout":
        if tx.has_late_answer:
            return []
        return [
            e.LateAnswerReceived(
                transaction_id=tx.transaction_id,
                result=command.result,
                error_code=command.error_code,
                received_at=now,
            )
        ]
    if tx.status != "pending":
        return []
    if command.result == "error":
        return [
            e.CommandFailed(
                transaction_id=tx.transaction_id,
                action=tx.action,
                error_code=command.error_code,
                message=command.message,
                received_at=now,
            )
        ]
    if tx.action == "apply_config":
        applied: list[e.Event] = [
            e.ConfigApplied(
                transaction_id=tx.transaction_id,
                applied_config_hash=command.applied_config_hash,
                message=command.message,
                received_at=now,
            )
        ]
        if not command.spare_transaction_id:
            return applied
        # the configuration changed while this one was pending: push the new one now
        return applied + config_push(
            fold(state, applied), command.spare_transaction_id, now, command.command_timeout_seconds
        )
    assert tx.compartment_number is not None
    return [
        e.CompartmentOpened(
            transaction_id=tx.transaction_id,
            compartment_number=tx.compartment_number,
            message=command.message,
            received_at=now,
        )
    ]


def _heartbeat_in_order(state: BankState, command: c.RecordHeartbeat) -> bool:
    """False for a heartbeat older than the latest one applied: QoS 1 redelivers a heartbeat
    that was in flight when the device (or lockerd) was cut off after newer ones.

    Older means an earlier device clock (``data.timestamp``), or, within one connection
    (``session_id``, new for every connection), a lower uptime: uptime only drops across a
    reboot, and a reboot is a new connection.
    """
    latest, sent = state.heartbeat_device_time, command.device_time
    if latest is not None and sent is not None and sent < latest:
        return False
    return not (
        command.session_id is not None
        and command.session_id == state.session_id
        and command.uptime_seconds is not None
        and state.uptime_seconds is not None
        and command.uptime_seconds < state.uptime_seconds
    )


def _heartbeat(state: BankState, command: c.RecordHeartbeat, now: datetime) -> list[e.Event]:
    in_order = _heartbeat_in_order(state, command)
    result: list[e.Event] = [
        e.HeartbeatReceived(
            received_at=now,
            uptime_seconds=command.uptime_seconds,
            session_id=command.session_id,
            device_time=command.device_time,
            in_order=in_order,
        )
    ]
    if (
        in_order
        and command.uptime_seconds is not None
        and state.uptime_seconds is not None
        and command.uptime_seconds < state.uptime_seconds
    ):
        result.append(
            e.DeviceRebooted(
                at=now,
                previous_uptime_seconds=state.uptime_seconds,
                uptime_seconds=command.uptime_seconds,
            )
        )
    if state.presence != "online":
        session = command.session_id if in_order else state.session_id
        result.append(e.LockerBankCameOnline(at=now, session_id=session))
        result += config_push(
            fold(state, result), command.spare_transaction_id, now, command.command_timeout_seconds
        )
    return result


def _last_will(state: BankState, command: c.RecordLastWill, now: datetime) -> list[e.Event]:
    stale = (
        command.session_id is not None
        and state.session_id is not None
        and command.session_id != state.session_id
    )
    if stale or state.presence == "offline":
        return []
    return [e.LockerBankWentOffline(at=now, reason="last_will")]


def _tick(state: BankState, now: datetime) -> list[e.Event]:
    result: list[e.Event] = [
        e.CommandTimedOut(transaction_id=tx.transaction_id, action=tx.action, timed_out_at=now)
        for tx in sorted(state.pending(), key=lambda tx: tx.expires_at)
        if tx.expires_at <= now
    ]
    deadline = state.heartbeat_deadline()
    if deadline is not None and deadline <= now:
        result.append(e.LockerBankWentOffline(at=now, reason="heartbeat_timeout"))
    offline = state.offline_alert_deadline()
    if offline is not None and offline <= now:
        assert state.offline_since is not None
        result.append(
            e.BankOfflineTooLong(
                went_offline_at=state.offline_since,
                heartbeat_interval_seconds=state.heartbeat_interval_seconds,
                at=now,
            )
        )
    return result


def _device_event(state: BankState, command: c.RecordDeviceEvent, now: datetime) -> list[e.Event]:
    if command.event_id is not None and command.event_id in state.seen_event_ids:
        return []
    if command.event == "door_state_changed":
        return _door_event(state, command, now)
    if command.event == "qr_scanned":
        return _qr_scanned(state, command, now)
    return [
        e.DeviceEventRecorded(
            event=command.event, event_id=command.event_id, data=command.data, at=now
        )
    ]


def _door_event(state: BankState, command: c.RecordDeviceEvent, now: datetime) -> list[e.Event]:
    number = command.data.get("compartment_number")
    door = command.data.get("state")
    if type(number) is not int or number not in state.compartments:
        raise c.CommandRejected("invalid", "door_state_changed needs a known compartment_number")
    if door not in ("open", "closed"):
        raise c.CommandRejected("invalid", "door state must be 'open' or 'closed'")
    result: list[e.Event] = [
        e.DoorStateChanged(compartment_number=number, state=door, at=now, event_id=command.event_id)
    ]
    previous = state.compartments[number].door_state
    if door == "open" and previous != "open" and not _open_expected(state, number, now):
        result.append(
            e.UncommandedDoorOpening(compartment_number=number, at=now, event_id=command.event_id)
        )
    return result


def _open_expected(state: BankState, number: int, now: datetime) -> bool:
    """A door may open while its open command is pending or shortly after it succeeded (or
    timed out: the door may have opened after all)."""
    pending = state.pending_for(number)
    if pending is not None and pending.action == "open_compartment":
        return True
    done = state.opens_done_at.get(number)
    return done is not None and now - done <= timedelta(minutes=2)


def _qr_scanned(state: BankState, command: c.RecordDeviceEvent, now: datetime) -> list[e.Event]:
    claim = command.qr_claim
    if claim is None:
        return [
            e.CompartmentOpeningDenied(
                user_id="",
                compartment_id="",
                reason="qr_invalid",
                at=now,
                via="qr",
                event_id=command.event_id,
            )
        ]

    def denied(reason: str) -> list[e.Event]:
        return [
            e.CompartmentOpeningDenied(
                user_id=claim.user_id,
                compartment_id=claim.compartment_id,
                reason=reason,
                at=now,
                via="qr",
                event_id=command.event_id,
            )
        ]

    compartment = state.compartment_by_id(claim.compartment_id)
    if compartment is None:
        return denied("qr_wrong_bank")
    if now >= claim.expires_at:
        return denied("qr_expired")
    if claim.nonce in state.used_qr_nonces:
        return denied("qr_used")
    return _decided_opening(
        compartment,
        _open_refusal(state, compartment, claim.user_id, now, claim.group_ids),
        transaction_id=command.spare_transaction_id,
        user_id=claim.user_id,
        timeout=command.command_timeout_seconds,
        now=now,
        via="qr",
        qr_nonce=claim.nonce,
        event_id=command.event_id,
    )


# ---------------------------------------------------------------------------------------------
# evolve


def evolve(state: BankState, event: e.Event) -> BankState:
    """``state`` with ``event`` folded in (a new state; ``state`` is not modified).

    The event's changes (:func:`_changes`), the alerts it raises or resolves and, for a durable
    event, the version are gathered first and applied in one copy of the state: a copy of a
    ``BankState`` costs more than anything else an event does to it.
    """
    changes = _changes(state, event)
    _track_alerts(state, changes, event)
    if e.is_durable(event):
        changes["version"] = state.version + 1
    return copy_with(state, **changes) if changes else state


def _track_alerts(s: BankState, changes: BankChanges, event: e.Event) -> None:
    """Keep ``open_alerts`` (domain.alerts) in ``changes``, the event's changes to ``s``: as
    they are before the version is counted, so the raising event's stream version is
    ``s.version + 1``."""
    name = type(event).__name__
    raised = RAISED_BY.get(name)
    resolved = RESOLVED_BY.get(name)
    if raised is None and resolved is None:
        return
    open_alerts = changes.get("open_alerts", s.open_alerts)
    if raised is not None:
        bank_id = changes.get("bank_id", s.bank_id)
        changes["open_alerts"] = open_alerts.set(alert_id(bank_id, s.version + 1), raised)
    elif resolved in open_alerts.values():
        changes["open_alerts"] = pmap({k: v for k, v in open_alerts.items() if v != resolved})


def fold(state: BankState, events: list[e.Event]) -> BankState:
    return reduce(evolve, events, state)


def _changes(s: BankState, event: e.Event) -> BankChanges:
    """What ``event`` changes in ``s`` (the version and ``open_alerts`` are :func:`evolve`'s):
    a new dict each time, which :func:`evolve` may add to; empty when nothing changes."""
    if isinstance(event, LIFECYCLE_EVENTS):
        return lifecycle_changes(s, event)
    match event:
        case e.LockerBankCreated():
            return {
                "bank_id": event.bank_id,
                "name": event.name,
                "location": event.location,
                "heartbeat_interval_seconds": event.heartbeat_interval_seconds,
                "compartments": pmap(
                    {
                        spec.number: Compartment(spec.id, spec.number, spec.slave_id, spec.address)
                        for spec in event.compartments
                    }
                ),
                "config_hash": event.config_hash
                or entries_hash(
                    ((spec.number, spec.slave_id, spec.address) for spec in event.compartments),
                    event.heartbeat_interval_seconds,
                ),
            }
        case e.ProvisioningTokenIssued():
            # a new token voids every earlier one, the used one too (no lost-reply redemption)
            return {
                "token_hash": event.token_hash,
                "token_expires_at": event.expires_at,
                "used_token_hash": None,
            }
        case e.LockerBankProvisioned():
            return {
                "token_hash": None,
                "token_expires_at": None,
                "used_token_hash": event.token_hash,
                "provisioned_client_id": event.client_id,
                "provisioned_at": event.provisioned_at,
                "mqtt_user": event.mqtt_user,
                "credential_hash": event.credential_hash,
                "credentials_seen_in_use": False,
                **_revoked(s, event),
            }
        case e.CompartmentAccessGranted():
            users = s.grants.get(event.compartment_id, pmap())
            return {
                "grants": s.grants.set(
                    event.compartment_id, users.set(event.user_id, event.expires_at)
                )
            }
        case e.CompartmentAccessRevoked():
            users = s.grants.get(event.compartment_id, pmap()).discard(event.user_id)
            return {"grants": s.grants.set(event.compartment_id, users)}
        case e.CompartmentGroupAccessGranted():
            groups = s.group_grants.get(event.compartment_id, pmap())
            return {
                "group_grants": s.group_grants.set(
                    event.compartment_id, groups.set(event.group_id, event.expires_at)
                )
            }
        case e.CompartmentGroupAccessRevoked():
            groups = s.group_grants.get(event.compartment_id, pmap()).discard(event.group_id)
            return {"group_grants": s.group_grants.set(event.compartment_id, groups)}
        case e.CompartmentOpeningRequested():
            tx = Transaction(
                transaction_id=event.transaction_id,
                action="open_compartment",
                status="pending",
                requested_at=event.requested_at,
                expires_at=event.expires_at,
                compartment_number=event.compartment_number,
                user_id=event.user_id,
            )
            used = s.used_qr_nonces
            if event.qr_nonce is not None:
                used = _remember(used, event.qr_nonce, event.requested_at)
            return {
                **_put_tx(s, tx, prune_at=event.requested_at),
                "used_qr_nonces": used,
                **_seen(s, event.event_id, event.requested_at),
            }
        case e.ConfigApplyRequested():
            tx = Transaction(
                transaction_id=event.transaction_id,
                action="apply_config",
                status="pending",
                requested_at=event.requested_at,
                expires_at=event.expires_at,
                user_id=event.requested_by,
                config_hash=event.config_hash,
            )
            return {**_put_tx(s, tx, prune_at=event.requested_at), "config_hash": event.config_hash}
        case e.CommandDispatched():
            return _update_tx(s, event.transaction_id, dispatched=True)
        case e.CompartmentOpened():
            return _update_tx(
                s, event.transaction_id, status="success", completed_at=event.received_at
            )
        case e.CommandFailed():
            return _update_tx(
                s, event.transaction_id, status="error", completed_at=event.received_at
            )
        case e.ConfigApplied():
            return {
                **_update_tx(
                    s, event.transaction_id, status="success", completed_at=event.received_at
                ),
                "applied_config_hash": event.applied_config_hash,
            }
        case e.CommandTimedOut():
            return _update_tx(
                s, event.transaction_id, status="timeout", completed_at=event.timed_out_at
            )
        case e.LateAnswerReceived():
            return _update_tx(s, event.transaction_id, has_late_answer=True)
        case e.HeartbeatReceived():
            if not event.in_order:  # a sign of life, but not the latest heartbeat
                return {
                    "presence": "online",
                    "last_seen": event.received_at,
                    "credentials_seen_in_use": True,
                }
            return {
                "presence": "online",
                "last_seen": event.received_at,
                "session_id": event.session_id if event.session_id is not None else s.session_id,
                "uptime_seconds": event.uptime_seconds,
                "heartbeat_device_time": event.device_time,
                "credentials_seen_in_use": True,
            }
        case e.DeviceCredentialsUsed():
            return {"credentials_seen_in_use": True}
        case e.LockerBankCameOnline():
            # when replayed from the store (no live heartbeat before it) the heartbeat deadline
            # still runs from the moment it came online, so it cannot stay online forever
            return {
                "presence": "online",
                "last_seen": s.last_seen or event.at,
                "credentials_seen_in_use": True,
                "offline_since": None,
                "offline_alerted": False,
            }
        case e.LockerBankWentOffline():
            if s.offline_since is not None:  # the same outage (a last will after a restart)
                return {"presence": "offline"}
            return {"presence": "offline", "offline_since": event.at, "offline_alerted": False}
        case e.BankOfflineTooLong():
            return {"offline_alerted": True}
        case e.BankActorFailed():
            return {"actor_failed": True}
        case e.BankActorRestarted():
            return {"actor_failed": False}
        case e.AlertAcknowledged():
            return {"open_alerts": s.open_alerts.discard(event.alert_id)}
        case e.DoorStateChanged():
            compartment = s.compartments[event.compartment_number]
            return {
                "compartments": s.compartments.set(
                    compartment.number, copy_with(compartment, door_state=event.state)
                ),
                **_seen(s, event.event_id, event.at),
            }
        case e.UncommandedDoorOpening():
            return {"alerts": s.alerts + 1}
        case e.DeviceEventRecorded():
            return _seen(s, event.event_id, event.at)
        case e.CompartmentOpeningDenied():
            return _seen(s, event.event_id, event.at)
        case e.ProvisioningFailed():
            return {"last_provisioning_failure_at": event.at}
        case e.ProvisioningReplyFailed() | e.DeviceRebooted() | e.RegistrationRefused():
            return {}
    raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover


def _revoked(s: BankState, event: e.LockerBankProvisioned) -> BankChanges:
    """What revoking the previous credentials changes: their session's liveness says nothing
    about the new device (presence is ``unknown`` until its first heartbeat), and the window
    during which the broker may still honour them."""
    if event.previous_mqtt_user is None:
        return {}
    return {
        "credentials_revoked_at": event.provisioned_at,
        "revocation_window_ends_at": event.revocation_window_ends_at,
        "presence": "unknown",
        "session_id": None,
        "uptime_seconds": None,
        "heartbeat_device_time": None,
    }


def _iso(moment: datetime | None) -> str:
    return "now" if moment is None else moment.isoformat(timespec="milliseconds")


def _update_tx(s: BankState, transaction_id: str, **changes: Any) -> BankChanges:
    tx = s.transactions.get(transaction_id)
    if tx is None:  # pruned long ago: nothing to update
        return {}
    return _put_tx(s, copy_with(tx, **changes))


def _put_tx(s: BankState, tx: Transaction, *, prune_at: datetime | None = None) -> BankChanges:
    """The changes that remember ``tx`` and keep the derived indexes (``pending_ids``,
    ``opens_done_at``)."""
    transactions = s.transactions.set(tx.transaction_id, tx)
    if prune_at is not None and len(transactions) > MAX_REMEMBERED:
        pruned = copy_with(s, transactions=_prune(transactions, prune_at)).reindexed()
        return {
            "transactions": pruned.transactions,
            "pending_ids": pruned.pending_ids,
            "opens_done_at": pruned.opens_done_at,
        }
    if tx.status == "pending":
        pending = s.pending_ids.add(tx.transaction_id)
    else:
        pending = s.pending_ids.discard(tx.transaction_id)
    done = s.opens_done_at
    if opens_the_door(tx) and tx.completed_at is not None:
        number = tx.compartment_number
        assert number is not None
        previous = done.get(number)
        if previous is None or previous < tx.completed_at:
            done = done.set(number, tx.completed_at)
    return {"transactions": transactions, "pending_ids": pending, "opens_done_at": done}


def _seen(s: BankState, event_id: str | None, at: datetime) -> BankChanges:
    if event_id is None:
        return {}
    return {"seen_event_ids": _remember(s.seen_event_ids, event_id, at)}


def _low_water() -> int:
    """What pruning keeps at most: three quarters of the cap, so that the next prune (a scan
    of everything remembered) comes only after a quarter of the cap more (domain.state)."""
    return MAX_REMEMBERED * 3 // 4


def _remember(seen: PMap[str, datetime], key: str, at: datetime) -> PMap[str, datetime]:
    seen = seen.set(key, at)
    if len(seen) <= MAX_REMEMBERED:
        return seen
    horizon = at - DEDUP_WINDOW
    kept = [(k, t) for k, t in seen.items() if t >= horizon]
    if len(kept) > _low_water():
        kept = sorted(kept, key=lambda item: item[1])[-_low_water() :]
    return pmap(dict(kept))


def _prune(txs: PMap[str, Transaction], now: datetime) -> PMap[str, Transaction]:
    """Forget finished transactions once the cap is exceeded (they stay in the read model):
    those older than the window, then, if more than the low water mark are left, the oldest
    finished ones. Pending transactions are never forgotten."""
    if len(txs) <= MAX_REMEMBERED:
        return txs
    horizon = now - DEDUP_WINDOW
    pending = {k: tx for k, tx in txs.items() if tx.status == "pending"}
    finished = [
        tx
        for tx in txs.values()
        if tx.status != "pending" and (tx.completed_at or tx.requested_at) >= horizon
    ]
    room = max(0, _low_water() - len(pending))
    if len(finished) > room:
        finished = sorted(finished, key=lambda tx: tx.completed_at or tx.requested_at)
        finished = finished[len(finished) - room :] if room else []
    return pmap({**pending, **{tx.transaction_id: tx for tx in finished}})
