"""Payloads the backend publishes, exactly as the contract spells them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from actors.fleet import iso

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
    data: dict[str, Any],
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
