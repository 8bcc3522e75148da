"""Short-lived, single-use QR codes that open one compartment for one user.

The payload is ``v1.<base64url claims>.<base64url HMAC>``: the claims bind user, compartment,
expiry and a random nonce; the HMAC under a server subkey makes them unforgeable. Single use is
enforced by the bank, which remembers the nonces it has honoured.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from datetime import UTC, datetime

import msgspec

from domain.commands import QrClaim
from domain.keys import Keyring

PURPOSE = "qr-code"
MAX_PAYLOAD = 512


class _Claims(msgspec.Struct, array_like=True):
    user_id: str
    compartment_id: str
    expires_at: int  # unix seconds
    nonce: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_qr(keyring: Keyring, user_id: str, compartment_id: str, expires_at: datetime) -> str:
    claims = _Claims(user_id, compartment_id, int(expires_at.timestamp()), secrets.token_hex(8))
    body = _b64(msgspec.json.encode(claims))
    signature = _b64(keyring.sign(PURPOSE, body.encode()))
    return f"v1.{body}.{signature}"


def verify_qr(keyring: Keyring, payload: str) -> QrClaim | None:
    """The claims if the signature is valid (expiry is the bank's decision), else None."""
    if len(payload) > MAX_PAYLOAD:
        return None
    parts = payload.split(".")
    if len(parts) != 3 or parts[0] != "v1":
        return None
    try:
        expected = keyring.sign(PURPOSE, parts[1].encode())
        if not hmac.compare_digest(expected, _unb64(parts[2])):
            return None
        claims = msgspec.json.decode(_unb64(parts[1]), type=_Claims)
    except (ValueError, msgspec.DecodeError):
        return None
    return QrClaim(
        user_id=claims.user_id,
        compartment_id=claims.compartment_id,
        expires_at=datetime.fromtimestamp(claims.expires_at, UTC),
        nonce=claims.nonce,
    )
