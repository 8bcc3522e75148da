"""Everything that can happen to a locker bank, as immutable typed values.

Each event is a tagged msgspec Struct: the tag is the event's ``type`` in the store and in the
history API, the fields are its ``data``. Every event that concerns a command carries
``transaction_id``. *Ephemeral* events are folded into the actor's state (or acted on) but never
stored: ``HeartbeatReceived``, so 10,000 banks beating every 10 s do not flood the store, and
``RegistrationRefused``, so failed registrations cannot grow a history without bound.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from domain.actor import Actor

DoorState = Literal["open", "closed", "unknown"]
Presence = Literal["unknown", "online", "offline"]
Action = Literal["open_compartment", "apply_config"]
#: how an open was asked for: the app, a QR code scanned at the bank, an operator
Via = Literal["app", "qr", "operator"]


class Event(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Base of all bank events; the class name is the stored ``type``."""


class CompartmentSpec(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    number: int
    slave_id: int
    address: int


class LockerBankCreated(Event, frozen=True, kw_only=True):
    bank_id: str
    name: str
    location: str | None
    heartbeat_interval_seconds: int
    compartments: tuple[CompartmentSpec, ...]
    created_at: datetime
    #: who created it (contract §5); None in events recorded before actors were
    actor: Actor | None = None
    #: the hash of the configuration it was created with (contract §2: a bank's configuration
    #: exists from its creation); None in events recorded before it was kept, whose state
    #: computes the same hash from the compartments (:func:`domain.config_hash.entries_hash`)
    config_hash: str | None = None


class ProvisioningTokenIssued(Event, frozen=True, kw_only=True):
    token_hash: str
    expires_at: datetime
    issued_at: datetime
    actor: Actor | None = None


class LockerBankProvisioned(Event, frozen=True, kw_only=True):
    client_id: str
    mqtt_user: str
    credential_hash: str
    token_hash: str
    provisioned_at: datetime
    previous_mqtt_user: str | None = None
    # set when previous credentials were revoked while the broker may cache its answers:
    # until then nothing is sent to the bank and nothing from it is applied
    revocation_window_ends_at: datetime | None = None


class ProvisioningFailed(Event, frozen=True, kw_only=True):
    client_id: str
    reason: str
    at: datetime


class RegistrationRefused(Event, frozen=True, kw_only=True):
    """Ephemeral: a failed registration within a minute of the bank's last
    ``ProvisioningFailed``; answered like one, but never stored, so that unauthenticated
    input cannot grow a bank's history without bound (contract §2)."""

    client_id: str
    reason: str
    at: datetime


class ProvisioningReplyFailed(Event, frozen=True, kw_only=True):
    client_id: str
    mqtt_user: str
    reason: str
    at: datetime


class CompartmentAccessGranted(Event, frozen=True, kw_only=True):
    compartment_id: str
    user_id: str
    expires_at: datetime | None
    granted_at: datetime
    #: who granted it (contract §5); None in events recorded before actors were
    actor: Actor | None = None


class CompartmentAccessRevoked(Event, frozen=True, kw_only=True):
    compartment_id: str
    user_id: str
    revoked_at: datetime
    actor: Actor | None = None


class CompartmentGroupAccessGranted(Event, frozen=True, kw_only=True):
    """Every member of the group may open the compartment, while a member."""

    compartment_id: str
    group_id: str
    expires_at: datetime | None
    granted_at: datetime
    actor: Actor | None = None


class CompartmentGroupAccessRevoked(Event, frozen=True, kw_only=True):
    compartment_id: str
    group_id: str
    revoked_at: datetime
    actor: Actor | None = None


class CompartmentOpeningRequested(Event, frozen=True, kw_only=True):
    transaction_id: str
    compartment_id: str
    compartment_number: int
    user_id: str
    requested_at: datetime
    expires_at: datetime
    via: Via = "app"
    qr_nonce: str | None = None
    event_id: str | None = None
    #: an operator's open (``via="operator"``, contract §5): who, and why they open it
    actor: Actor | None = None
    reason: str | None = None


class CompartmentOpeningDenied(Event, frozen=True, kw_only=True):
    user_id: str
    compartment_id: str
    #: why the bank refused (no_grant, offline, command_pending, out_of_service, ...)
    reason: str
    at: datetime
    via: Via = "app"
    event_id: str | None = None
    #: an operator's open: who asked, and the reason they gave for opening
    actor: Actor | None = None
    request_reason: str | None = None


class ConfigApplyRequested(Event, frozen=True, kw_only=True):
    transaction_id: str
    config_hash: str
    heartbeat_interval_seconds: int
    compartments: tuple[dict[str, int], ...]
    requested_at: datetime
    expires_at: datetime
    requested_by: str | None = None
    #: the operator who asked; None for the apply_config the bank sends by itself
    actor: Actor | None = None


class CommandDispatched(Event, frozen=True, kw_only=True):
    transaction_id: str
    dispatched_at: datetime


class CompartmentOpened(Event, frozen=True, kw_only=True):
    transaction_id: str
    compartment_number: int
    message: str | None
    received_at: datetime


class CommandFailed(Event, frozen=True, kw_only=True):
    transaction_id: str
    action: Action
    error_code: str | None
    message: str | None
    received_at: datetime


class ConfigApplied(Event, frozen=True, kw_only=True):
    transaction_id: str
    applied_config_hash: str | None
    message: str | None
    received_at: datetime


class CommandTimedOut(Event, frozen=True, kw_only=True):
    transaction_id: str
    action: Action
    timed_out_at: datetime


class LateAnswerReceived(Event, frozen=True, kw_only=True):
    transaction_id: str
    result: Literal["success", "error"]
    error_code: str | None
    received_at: datetime


class HeartbeatReceived(Event, frozen=True, kw_only=True):
    """Ephemeral: folded into the live state, never stored.

    ``in_order`` is False for a heartbeat older than the latest one applied (a QoS 1
    redelivery): it is still a sign of life, but it does not replace the latest heartbeat's
    session, uptime and device time.
    """

    received_at: datetime
    uptime_seconds: int | None
    session_id: str | None
    device_time: datetime | None = None
    in_order: bool = True


class DeviceCredentialsUsed(Event, frozen=True, kw_only=True):
    """The device authenticated with its issued credentials: its provisioning reply arrived."""

    mqtt_user: str
    at: datetime


class LockerBankCameOnline(Event, frozen=True, kw_only=True):
    at: datetime
    session_id: str | None


class LockerBankWentOffline(Event, frozen=True, kw_only=True):
    at: datetime
    reason: Literal["last_will", "heartbeat_timeout"]


class DeviceRebooted(Event, frozen=True, kw_only=True):
    at: datetime
    previous_uptime_seconds: int
    uptime_seconds: int


class DoorStateChanged(Event, frozen=True, kw_only=True):
    compartment_number: int
    state: Literal["open", "closed"]
    at: datetime
    event_id: str | None = None


class UncommandedDoorOpening(Event, frozen=True, kw_only=True):
    compartment_number: int
    at: datetime
    event_id: str | None = None


class DeviceEventRecorded(Event, frozen=True, kw_only=True):
    """A well-formed device event of a type this backend does not know: kept, not dropped."""

    event: str
    event_id: str | None
    data: dict[str, Any]
    at: datetime


# --- lifecycle (contract §5): every one names the operator who made the change -------------
# A configuration change carries the bank's new ``config_hash``; ``config_hash`` is None when
# the change leaves the Modbus configuration as it was (a name, a location, out of service).


class LockerBankEdited(Event, frozen=True, kw_only=True):
    """The bank's name, location and heartbeat interval after the change."""

    name: str
    location: str | None
    heartbeat_interval_seconds: int
    config_hash: str | None
    actor: Actor
    at: datetime


class CompartmentAdded(Event, frozen=True, kw_only=True):
    compartment_id: str
    number: int
    slave_id: int
    address: int
    config_hash: str
    actor: Actor
    at: datetime


class CompartmentEdited(Event, frozen=True, kw_only=True):
    """The compartment after the change."""

    compartment_id: str
    number: int
    slave_id: int
    address: int
    out_of_service: bool
    config_hash: str | None
    actor: Actor
    at: datetime


class CompartmentRetired(Event, frozen=True, kw_only=True):
    """The compartment is gone from the bank and its configuration; its grants end."""

    compartment_id: str
    number: int
    config_hash: str
    actor: Actor
    at: datetime


class LockerBankDecommissioned(Event, frozen=True, kw_only=True):
    """The device credentials (``revoked_mqtt_user``) are revoked, the provisioning token
    void; from now on nothing is sent to the bank and nothing from it is applied."""

    revoked_mqtt_user: str | None
    actor: Actor
    at: datetime


class BankOfflineTooLong(Event, frozen=True, kw_only=True):
    """The bank went offline at ``went_offline_at`` and has not come back within 3 heartbeat
    intervals (raises the ``bank_offline`` alert; ``LockerBankCameOnline`` resolves it)."""

    went_offline_at: datetime
    heartbeat_interval_seconds: int
    at: datetime


class BankActorFailed(Event, frozen=True, kw_only=True):
    """The bank's actor crashed past its restart budget (raises ``bank_actor_failed``).

    Recorded by the failed bank's deadlines-only incarnation; ``error_type`` is the kind of the
    last crash (its exception's class name). Its text may hold internal detail (addresses of
    servers), so it stays in the log and the fleet view's ``last_error``, for admins only: this
    event reaches the audit log and the alert webhook."""

    restarts: int
    error_type: str | None
    at: datetime


class BankActorRestarted(Event, frozen=True, kw_only=True):
    """The actor of a bank that had failed runs again (resolves ``bank_actor_failed``);
    ``actor``: the operator who restarted it (``POST …/restart``), None when it was not."""

    at: datetime
    actor: Actor | None = None


class AlertAcknowledged(Event, frozen=True, kw_only=True):
    """An operator acknowledged the bank's alert ``alert_id``."""

    alert_id: str
    alert_type: str
    at: datetime
    actor: Actor


AnyEvent = (
    LockerBankCreated
    | ProvisioningTokenIssued
    | LockerBankProvisioned
    | ProvisioningFailed
    | RegistrationRefused
    | ProvisioningReplyFailed
    | CompartmentAccessGranted
    | CompartmentAccessRevoked
    | CompartmentGroupAccessGranted
    | CompartmentGroupAccessRevoked
    | CompartmentOpeningRequested
    | CompartmentOpeningDenied
    | ConfigApplyRequested
    | CommandDispatched
    | CompartmentOpened
    | CommandFailed
    | ConfigApplied
    | CommandTimedOut
    | LateAnswerReceived
    | HeartbeatReceived
    | DeviceCredentialsUsed
    | LockerBankCameOnline
    | LockerBankWentOffline
    | DeviceRebooted
    | DoorStateChanged
    | UncommandedDoorOpening
    | DeviceEventRecorded
    | LockerBankEdited
    | CompartmentAdded
    | CompartmentEdited
    | CompartmentRetired
    | LockerBankDecommissioned
    | BankOfflineTooLong
    | BankActorFailed
    | BankActorRestarted
    | AlertAcknowledged
)

EPHEMERAL: frozenset[type[Event]] = frozenset({HeartbeatReceived, RegistrationRefused})


def is_durable(event: Event) -> bool:
    return type(event) not in EPHEMERAL


def event_type(event: Event) -> str:
    return type(event).__name__


def event_data(event: Event) -> dict[str, Any]:
    """The JSON-ready ``data`` of an event (its fields, timestamps as ISO 8601 strings)."""
    data: dict[str, Any] = msgspec.to_builtins(event)
    data.pop("type", None)
    return data


_CLASSES: dict[str, type[Event]] = {cls.__name__: cls for cls in AnyEvent.__args__}


def event_from_stored(type_name: str, data: dict[str, Any]) -> Event:
    """Rebuild an event from its stored type and data; raises ``ValueError`` if unknown."""
    if type_name not in _CLASSES:
        raise ValueError(f"unknown event type {type_name!r}")
    result: Event = msgspec.convert({**data, "type": type_name}, AnyEvent)
    return result
