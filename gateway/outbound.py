"""What the backend publishes, exactly as the contract spells it (topics and JSON payloads).

:func:`encode` turns a :mod:`domain.outbound` message into its topic and payload;
:class:`MqttOutbox` is the dispatcher's :class:`~actors.ports.DevicePublisher` over the MQTT
client (QoS 1, so ``publish`` returns once the broker has the message).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import msgspec

from domain.outbound import DeviceCommand, DeviceMessage, ProvisioningGranted, ProvisioningRefused
from domain.wiretime import iso
from gateway import topics

_encoder = msgspec.json.Encoder()

PROVISIONING_ERRORS = {
    "token_unknown": "Invalid or expired provisioning token.",
    "token_expired": "Invalid or expired provisioning token.",
    "token_used": "Provisioning token has already been used.",
    "rate_limited": "Too many provisioning attempts; try again later.",
    "invalid_client_id": "client_id must be a non-empty MQTT client id without '/', '+' or '#'.",
    "malformed": 'Malformed registration payload: expected {"client_id": "..."}.',
}


def command_payload(
    action: str,
    transaction_id: str,
    requested_at: datetime,
    expires_at: datetime,
    data: Any,
) -> bytes:
    return _encoder.encode(
        {
            "action": action,
            "transaction_id": transaction_id,
            "timestamp": iso(requested_at),
            "expires_at": iso(expires_at),
            "data": data,
        }
    )


def provisioning_success(bank_id: str, mqtt_user: str, mqtt_password: str) -> bytes:
    return _encoder.encode(
        {
            "status": "success",
            "data": {
                "locker_bank_id": bank_id,
                "mqtt_user": mqtt_user,
                "mqtt_password": mqtt_password,
            },
        }
    )


def provisioning_error(reason: str) -> bytes:
    message = PROVISIONING_ERRORS.get(reason, "Provisioning failed.")
    return _encoder.encode({"status": "error", "message": message})


def server_status(online: bool) -> bytes:
    return _encoder.encode({"status": "online" if online else "offline"})


def encode(message: DeviceMessage) -> tuple[str, bytes]:
    """The topic and payload that carry ``message``."""
    match message:
        case DeviceCommand():
            return topics.command_topic(message.bank_id), command_payload(
                message.action,
                message.transaction_id,
                message.requested_at,
                message.expires_at,
                dict(message.data),
            )
        case ProvisioningGranted():
            return topics.provisioning_reply_topic(message.client_id), provisioning_success(
                message.bank_id, message.mqtt_user, message.mqtt_password
            )
        case ProvisioningRefused():
            return topics.provisioning_reply_topic(message.client_id), provisioning_error(
                message.reason
            )


class Publishing(Protocol):
    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None: ...


class MqttOutbox:
    """Publishes device messages with QoS 1 over an MQTT client."""

    def __init__(self, mqtt: Publishing) -> None:
        self._mqtt = mqtt

    async def publish(self, message: DeviceMessage) -> None:
        topic, payload = encode(message)
        await self._mqtt.publish(topic, payload, qos=1)
