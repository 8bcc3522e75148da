"""The device side of the MQTT contract (contract §2), written as a reference for firmware.

Everything a locker controller sends or parses lives here, as plain functions over bytes:
topics, the payloads of heartbeats, the last will, command responses and door events, the
command and provisioning-reply parsers, and the ``config_hash`` of an ``apply_config``.
``docs/firmware.md`` walks through them; :mod:`lockerd.device.simulated` uses them.

This module deliberately does not import the backend's own implementation (for example
``lockerd.domain.config_hash``): it is a second, independent reading of the contract, and the
tests check that both agree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

# Error codes a device puts in ``error_code`` of an error response.
DOOR_JAMMED: Final = "DOOR_JAMMED"
EXPIRED: Final = "EXPIRED"
UNKNOWN_COMPARTMENT: Final = "UNKNOWN_COMPARTMENT"
INVALID_COMMAND: Final = "INVALID_COMMAND"
INVALID_CONFIG: Final = "INVALID_CONFIG"
UNSUPPORTED_ACTION: Final = "UNSUPPORTED_ACTION"

OPEN_COMPARTMENT: Final = "open_compartment"
APPLY_CONFIG: Final = "apply_config"

SERVER_STATUS_TOPIC: Final = "server/status"

_encode = msgspec.json.encode


# ---------------------------------------------------------------------------------- topics


def register_topic(provisioning_token: str) -> str:
    return f"locker/register/{provisioning_token}"


def provisioning_reply_topic(client_id: str) -> str:
    return f"locker/provisioning/reply/{client_id}"


def command_topic(bank_id: str) -> str:
    return f"locker/{bank_id}/command"


def response_topic(bank_id: str) -> str:
    return f"locker/{bank_id}/response"


def event_topic(bank_id: str) -> str:
    return f"locker/{bank_id}/event"


def state_topic(bank_id: str) -> str:
    return f"locker/{bank_id}/state"


def valid_client_id(client_id: str) -> bool:
    """A client id doubles as a topic level: non-empty, no ``/``, ``+``, ``#``, at most 128."""
    return 0 < len(client_id) <= 128 and not any(ch in client_id for ch in "/+#\x00")


# ---------------------------------------------------------------------------------- time


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with ``Z`` and millisecond precision, e.g. ``2026-11-24T10:00:00.000Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 timestamp; one without an offset is taken as UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------- config hash


def canonical_config(
    compartments: Sequence[Mapping[str, int]], heartbeat_interval_seconds: int
) -> bytes:
    """The exact bytes that ``config_hash`` is the SHA-256 of.

    ``compartments`` is ``[{"id": <compartment number>, "slaveId": <int>, "address": <int>}]``;
    it is sorted by ``id`` here, as the backend sends it. Keys are sorted at every level, no
    whitespace, ASCII only (the values are all integers anyway).
    """
    entries = sorted(
        (
            {"id": int(c["id"]), "slaveId": int(c["slaveId"]), "address": int(c["address"])}
            for c in compartments
        ),
        key=lambda entry: entry["id"],
    )
    document = {
        "compartments": entries,
        "heartbeat_interval_seconds": int(heartbeat_interval_seconds),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def config_hash(compartments: Sequence[Mapping[str, int]], heartbeat_interval_seconds: int) -> str:
    """Lowercase hex SHA-256 of :func:`canonical_config` (contract §2)."""
    return hashlib.sha256(canonical_config(compartments, heartbeat_interval_seconds)).hexdigest()


# ---------------------------------------------------------------------------------- payloads


def register_payload(client_id: str) -> bytes:
    return _encode({"client_id": client_id})


def heartbeat_payload(session_id: str, uptime_seconds: int, now: datetime) -> bytes:
    return _encode(
        {
            "type": "state",
            "state": "heartbeat",
            "session_id": session_id,
            "data": {"timestamp": iso(now), "uptime_seconds": uptime_seconds},
        }
    )


def offline_payload(session_id: str, now: datetime, reason: str = "mqtt_last_will") -> bytes:
    """The last will (``reason`` ``mqtt_last_will``), also sent by hand on a clean shutdown."""
    return _encode(
        {
            "type": "state",
            "state": "connection_lost",
            "status": "offline",
            "timestamp": iso(now),
            "reason": reason,
            "session_id": session_id,
        }
    )


def response_payload(
    action: str,
    transaction_id: str,
    result: str,
    now: datetime,
    *,
    message: str | None = None,
    error_code: str | None = None,
    applied_config_hash: str | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "type": "command_response",
        "action": action,
        "result": result,
        "transaction_id": transaction_id,
        "timestamp": iso(now),
    }
    if message is not None:
        body["message"] = message
    if error_code is not None:
        body["error_code"] = error_code
    if applied_config_hash is not None:
        body["applied_config_hash"] = applied_config_hash
    return _encode(body)


def door_event_payload(compartment_number: int, state: str, event_id: str, now: datetime) -> bytes:
    return _encode(
        {
            "type": "event",
            "event": "door_state_changed",
            "event_id": event_id,
            "timestamp": iso(now),
            "data": {"compartment_number": compartment_number, "state": state},
        }
    )


# ---------------------------------------------------------------------------------- parsing


class CommandError(ValueError):
    """A command that cannot be executed as sent. ``transaction_id`` is None when the device
    cannot even answer (no usable transaction id): such a command is logged and dropped."""

    def __init__(self, reason: str, transaction_id: str | None, action: str | None) -> None:
        super().__init__(reason)
        self.transaction_id = transaction_id
        self.action = action


@dataclass(frozen=True, slots=True)
class Command:
    action: str
    transaction_id: str
    timestamp: str | None
    expires_at: datetime | None
    data: Mapping[str, Any] = field(default_factory=dict)


def parse_command(payload: bytes) -> Command:
    try:
        body = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        raise CommandError("command is not JSON", None, None) from None
    if not isinstance(body, dict):
        raise CommandError("command is not a JSON object", None, None)
    transaction_id = body.get("transaction_id")
    if not isinstance(transaction_id, str) or not transaction_id:
        raise CommandError("command has no transaction_id", None, None)
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise CommandError("command has no action", transaction_id, None)
    data = body.get("data", {})
    if not isinstance(data, dict):
        raise CommandError("command data is not an object", transaction_id, action)
    expires_at: datetime | None = None
    raw_expiry = body.get("expires_at")
    if raw_expiry is not None:
        if not isinstance(raw_expiry, str):
            raise CommandError("expires_at is not a timestamp", transaction_id, action)
        try:
            expires_at = parse_time(raw_expiry)
        except ValueError:
            raise CommandError("expires_at is not ISO 8601", transaction_id, action) from None
    timestamp = body.get("timestamp")
    return Command(
        action=action,
        transaction_id=transaction_id,
        timestamp=timestamp if isinstance(timestamp, str) else None,
        expires_at=expires_at,
        data=data,
    )


@dataclass(frozen=True, slots=True)
class Credentials:
    bank_id: str
    mqtt_user: str
    mqtt_password: str


class ProvisioningRejected(Exception):
    """The backend answered the registration with ``{"status":"error","message":…}``."""


def parse_provisioning_reply(payload: bytes) -> Credentials:
    """Credentials from a success reply; raises ProvisioningRejected (error reply) or
    ValueError (not a valid reply at all)."""
    try:
        body = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        raise ValueError("provisioning reply is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("provisioning reply is not a JSON object")
    if body.get("status") == "error":
        raise ProvisioningRejected(str(body.get("message", "provisioning refused")))
    data = body.get("data")
    if body.get("status") != "success" or not isinstance(data, dict):
        raise ValueError("provisioning reply has no success data")
    fields = [data.get(key) for key in ("locker_bank_id", "mqtt_user", "mqtt_password")]
    if not all(isinstance(value, str) and value for value in fields):
        raise ValueError("provisioning reply lacks locker_bank_id, mqtt_user or mqtt_password")
    bank_id, user, password = (str(value) for value in fields)
    return Credentials(bank_id, user, password)


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    id: int
    slave_id: int
    address: int


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    heartbeat_interval_seconds: int
    compartments: tuple[ConfigEntry, ...]
    config_hash: str  # as computed by the device

    def as_wire(self) -> list[dict[str, int]]:
        return [
            {"id": c.id, "slaveId": c.slave_id, "address": c.address} for c in self.compartments
        ]


def parse_config(data: Mapping[str, Any]) -> DeviceConfig:
    """Validate an ``apply_config`` command's data; raises ValueError with the reason."""
    interval = data.get("heartbeat_interval_seconds")
    if type(interval) is not int or interval < 1:
        raise ValueError("heartbeat_interval_seconds must be a positive integer")
    raw = data.get("compartments")
    if not isinstance(raw, list) or not raw:
        raise ValueError("compartments must be a non-empty list")
    entries: list[ConfigEntry] = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("each compartment must be an object")
        values = [item.get(key) for key in ("id", "slaveId", "address")]
        if not all(type(value) is int for value in values):
            raise ValueError("compartment id, slaveId and address must be integers")
        number, slave_id, address = (int(value) for value in values)  # type: ignore[arg-type]
        entries.append(ConfigEntry(number, slave_id, address))
    entries.sort(key=lambda entry: entry.id)
    if len({entry.id for entry in entries}) != len(entries):
        raise ValueError("compartment ids must be unique")
    wire = [{"id": c.id, "slaveId": c.slave_id, "address": c.address} for c in entries]
    return DeviceConfig(interval, tuple(entries), config_hash(wire, interval))
