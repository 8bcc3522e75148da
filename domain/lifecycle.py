"""A bank's lifecycle (contract §5): editing it, adding, editing and retiring compartments,
decommissioning; and the configuration push that follows a change (contract §2).

Pure, like :mod:`domain.bank`, which hands these commands here (``decide_lifecycle``) and
folds these events with :func:`lifecycle_changes`. Every event names its ``actor``.

The Modbus configuration is the heartbeat interval and every compartment's number, slave id
and address (:func:`domain.config_hash.config_hash`). A change of it gives the bank a new
``config_hash`` and, while the bank is online, an ``apply_config`` sent by itself
(:func:`config_push`, the same path as on coming online); ``out_of_service``, a name or a
location are not part of it and change no hash.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from domain import commands as c
from domain import events as e
from domain.actor import Actor
from domain.config_hash import config_compartments, config_hash, entries_hash
from domain.state import BankChanges, BankState, Compartment, copy_with

MAX_HEARTBEAT_INTERVAL = 3600

LIFECYCLE_COMMANDS = (
    c.EditBank,
    c.AddCompartment,
    c.EditCompartment,
    c.RetireCompartment,
    c.Decommission,
)
LIFECYCLE_EVENTS = (
    e.LockerBankEdited,
    e.CompartmentAdded,
    e.CompartmentEdited,
    e.CompartmentRetired,
    e.LockerBankDecommissioned,
)


def current_config_hash(state: BankState) -> str:
    """The hash of the configuration the state holds now."""
    return entries_hash(state.config_entries(), state.heartbeat_interval_seconds)


def apply_config_request(
    state: BankState,
    transaction_id: str,
    now: datetime,
    timeout: int,
    requested_by: str | None,
    actor: Actor | None = None,
) -> e.ConfigApplyRequested:
    compartments = config_compartments(state.config_entries())
    return e.ConfigApplyRequested(
        transaction_id=transaction_id,
        config_hash=config_hash(compartments, state.heartbeat_interval_seconds),
        heartbeat_interval_seconds=state.heartbeat_interval_seconds,
        compartments=tuple(compartments),
        requested_at=now,
        expires_at=now + timedelta(seconds=timeout),
        requested_by=requested_by,
        actor=actor,
    )


def config_push(
    state: BankState, transaction_id: str, now: datetime, timeout: int
) -> list[e.Event]:
    """The ``apply_config`` the backend sends by itself (contract §2), or nothing.

    Sent when the bank is online (``state`` is the state after the change or after coming
    online), not decommissioned, not within a revocation window, its ``config_hash`` differs
    from the applied one, and no ``apply_config`` is pending (at most one per bank: a change
    made while one is pending is pushed when the bank next comes online, or by an operator's
    apply-config once the pending one has ended).
    """
    if (
        state.presence != "online"
        or state.decommissioned
        or state.revocation_pending(now)
        or state.config_hash is None
        or state.config_hash == state.applied_config_hash
        or state.pending_config() is not None
    ):
        return []
    return [apply_config_request(state, transaction_id, now, timeout, None)]


def decide_lifecycle(state: BankState, command: c.BankCommand, now: datetime) -> list[e.Event]:
    """The events of a lifecycle command (one of :data:`LIFECYCLE_COMMANDS`)."""
    if state.decommissioned:
        raise c.CommandRejected("conflict", "the locker bank is decommissioned")
    match command:
        case c.Decommission():
            return [
                e.LockerBankDecommissioned(
                    revoked_mqtt_user=state.mqtt_user, actor=command.actor, at=now
                )
            ]
        case c.EditBank():
            change: e.Event | None = _edit_bank(state, command, now)
        case c.AddCompartment():
            change = _add_compartment(state, command, now)
        case c.EditCompartment():
            change = _edit_compartment(state, command, now)
        case c.RetireCompartment():
            change = _retire_compartment(state, command, now)
        case _:  # pragma: no cover
            raise AssertionError(f"not a lifecycle command: {command!r}")
    if change is None:
        return []  # nothing to change
    assert isinstance(command, c.ConfigChange)
    after = copy_with(state, **lifecycle_changes(state, change))  # its version is not counted
    return [
        change,
        *config_push(after, command.transaction_id, now, command.command_timeout_seconds),
    ]


def _edit_bank(state: BankState, command: c.EditBank, now: datetime) -> e.Event | None:
    interval = command.heartbeat_interval_seconds
    if interval is not None and not 1 <= interval <= MAX_HEARTBEAT_INTERVAL:
        raise c.CommandRejected("invalid", "heartbeat_interval_seconds must be 1-3600")
    if command.name is not None and not command.name.strip():
        raise c.CommandRejected("invalid", "name must not be empty")
    name = state.name if command.name is None else command.name
    location = command.location if command.set_location else state.location
    interval = state.heartbeat_interval_seconds if interval is None else interval
    if (name, location, interval) == (state.name, state.location, state.heartbeat_interval_seconds):
        return None
    new_hash = None
    if interval != state.heartbeat_interval_seconds:
        new_hash = current_config_hash(copy_with(state, heartbeat_interval_seconds=interval))
    return e.LockerBankEdited(
        name=name,
        location=location,
        heartbeat_interval_seconds=interval,
        config_hash=new_hash,
        actor=command.actor,
        at=now,
    )


def _modbus_taken(state: BankState, slave_id: int, address: int, but: str | None) -> bool:
    return any(
        (other.slave_id, other.address) == (slave_id, address) and other.id != but
        for other in state.compartments.values()
    )


def _add_compartment(state: BankState, command: c.AddCompartment, now: datetime) -> e.Event:
    if command.number <= 0:
        raise c.CommandRejected("invalid", "compartment numbers must be positive")
    if command.number in state.compartments:
        raise c.CommandRejected("conflict", f"compartment {command.number} exists already")
    if _modbus_taken(state, command.slave_id, command.address, None):
        raise c.CommandRejected(
            "conflict", "another compartment of this bank has that slave_id and address"
        )
    added = Compartment(command.compartment_id, command.number, command.slave_id, command.address)
    after = copy_with(state, compartments=state.compartments.set(added.number, added))
    return e.CompartmentAdded(
        compartment_id=added.id,
        number=added.number,
        slave_id=added.slave_id,
        address=added.address,
        config_hash=current_config_hash(after),
        actor=command.actor,
        at=now,
    )


def _known(state: BankState, compartment_id: str) -> Compartment:
    compartment = state.compartment_by_id(compartment_id)
    if compartment is None:
        raise c.CommandRejected("not_found", "unknown compartment")
    return compartment


def _edit_compartment(
    state: BankState, command: c.EditCompartment, now: datetime
) -> e.Event | None:
    old = _known(state, command.compartment_id)
    new = copy_with(
        old,
        slave_id=old.slave_id if command.slave_id is None else command.slave_id,
        address=old.address if command.address is None else command.address,
        out_of_service=(
            old.out_of_service if command.out_of_service is None else command.out_of_service
        ),
    )
    if new == old:
        return None
    modbus_changed = (new.slave_id, new.address) != (old.slave_id, old.address)
    if modbus_changed and _modbus_taken(state, new.slave_id, new.address, old.id):
        raise c.CommandRejected(
            "conflict", "another compartment of this bank has that slave_id and address"
        )
    new_hash = None
    if modbus_changed:
        new_hash = current_config_hash(
            copy_with(state, compartments=state.compartments.set(new.number, new))
        )
    return e.CompartmentEdited(
        compartment_id=new.id,
        number=new.number,
        slave_id=new.slave_id,
        address=new.address,
        out_of_service=new.out_of_service,
        config_hash=new_hash,
        actor=command.actor,
        at=now,
    )


def _retire_compartment(state: BankState, command: c.RetireCompartment, now: datetime) -> e.Event:
    compartment = _known(state, command.compartment_id)
    if state.pending_for(compartment.number) is not None:
        raise c.CommandRejected("conflict", "a command for this compartment is still pending")
    if len(state.compartments) == 1:
        raise c.CommandRejected("conflict", "a locker bank keeps at least one compartment")
    after = copy_with(state, compartments=state.compartments.discard(compartment.number))
    return e.CompartmentRetired(
        compartment_id=compartment.id,
        number=compartment.number,
        config_hash=current_config_hash(after),
        actor=command.actor,
        at=now,
    )


def lifecycle_changes(s: BankState, event: e.Event) -> BankChanges:
    """What one of :data:`LIFECYCLE_EVENTS` changes in ``s``, for :func:`domain.bank.evolve`
    (which also counts the version): a new dict each time."""
    match event:
        case e.LockerBankEdited():
            edited: BankChanges = {
                "name": event.name,
                "location": event.location,
                "heartbeat_interval_seconds": event.heartbeat_interval_seconds,
            }
            if event.config_hash is not None:
                edited["config_hash"] = event.config_hash
            return edited
        case e.CompartmentAdded():
            added = Compartment(event.compartment_id, event.number, event.slave_id, event.address)
            return {
                "compartments": s.compartments.set(event.number, added),
                "config_hash": event.config_hash,
            }
        case e.CompartmentEdited():
            old = s.compartments[event.number]
            new = copy_with(
                old,
                slave_id=event.slave_id,
                address=event.address,
                out_of_service=event.out_of_service,
            )
            changed: BankChanges = {"compartments": s.compartments.set(event.number, new)}
            if event.config_hash is not None:
                changed["config_hash"] = event.config_hash
            return changed
        case e.CompartmentRetired():
            return {
                "compartments": s.compartments.discard(event.number),
                "grants": s.grants.discard(event.compartment_id),
                "group_grants": s.group_grants.discard(event.compartment_id),
                "config_hash": event.config_hash,
            }
        case e.LockerBankDecommissioned():
            return {
                "decommissioned_at": event.at,
                "token_hash": None,
                "token_expires_at": None,
                "used_token_hash": None,
                "mqtt_user": None,
                "credential_hash": None,
                "credentials_revoked_at": event.at if event.revoked_mqtt_user else None,
                "presence": "offline",
                "session_id": None,
                "uptime_seconds": None,
                "heartbeat_device_time": None,
            }
    raise AssertionError(f"not a lifecycle event: {event!r}")  # pragma: no cover


__all__ = [
    "LIFECYCLE_COMMANDS",
    "LIFECYCLE_EVENTS",
    "apply_config_request",
    "config_push",
    "current_config_hash",
    "decide_lifecycle",
    "lifecycle_changes",
]
