"""What the backend tells devices, as typed values (the gateway turns them into MQTT).

Bank actors decide *what* to say (a command, a provisioning answer); the gateway owns *how*
it is said (topics, JSON payloads, QoS). Keeping these as values means an actor never builds a
topic string or a payload, and tests of an actor can assert on intents instead of bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

from domain.config_hash import config_compartments
from domain.events import Action
from domain.state import BankState, Transaction


@dataclass(frozen=True, slots=True)
class DeviceCommand:
    """A command for a bank's device (``locker/{bank_id}/command``)."""

    bank_id: str
    action: Action
    transaction_id: str
    requested_at: datetime
    expires_at: datetime
    data: Mapping[str, Any]

    kind: ClassVar[str] = "command"


@dataclass(frozen=True, slots=True)
class ProvisioningGranted:
    """The success reply to a registration; carries the one plaintext copy of the password."""

    client_id: str
    bank_id: str
    mqtt_user: str
    mqtt_password: str

    kind: ClassVar[str] = "provisioning_reply"


ProvisioningReason = Literal[
    "token_unknown", "token_expired", "token_used", "rate_limited", "invalid_client_id"
]


@dataclass(frozen=True, slots=True)
class ProvisioningRefused:
    """The error reply to a registration, by machine reason (the gateway words it)."""

    client_id: str
    reason: str

    kind: ClassVar[str] = "provisioning_reply"


DeviceMessage = DeviceCommand | ProvisioningGranted | ProvisioningRefused


def device_command(state: BankState, tx: Transaction) -> DeviceCommand:
    """The command that carries pending transaction ``tx`` of ``state`` to the device.

    ``open_compartment`` names the compartment; ``apply_config`` carries the bank's current
    Modbus configuration and the hash it was requested with (contract §2).
    """
    data: dict[str, Any]
    if tx.action == "open_compartment":
        data = {"compartment_number": tx.compartment_number}
    else:
        data = {
            "heartbeat_interval_seconds": state.heartbeat_interval_seconds,
            "compartments": config_compartments(state.config_entries()),
            "config_hash": tx.config_hash,
        }
    return DeviceCommand(
        bank_id=state.bank_id,
        action=tx.action,
        transaction_id=tx.transaction_id,
        requested_at=tx.requested_at,
        expires_at=tx.expires_at,
        data=data,
    )
