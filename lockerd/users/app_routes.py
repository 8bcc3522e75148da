"""App routes: sign in and out, my compartments, open, QR codes, transaction status.

The response models document the answers in /openapi.json only (the handlers build them).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from quart import Blueprint, request

from domain import commands as c
from domain import events as e
from domain.events import Action, DoorState, Presence
from domain.qr import issue_qr
from domain.state import TxStatus
from domain.wiretime import iso
from lockerd.banks import queries
from lockerd.http.asking import ask_bank, bank_of_compartment
from lockerd.http.auth import bearer_token, require_user
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.ids import parse_id
from lockerd.http.openapi import IsoTime, documented
from lockerd.http.validation import json_body
from lockerd.users.sessions import InvalidCredentials, TooManyAttempts

blueprint = Blueprint("app_users", __name__)

QR_LIFETIME = timedelta(seconds=120)

# a refused open: HTTP status and message by the bank's reason
REFUSALS: dict[str, tuple[int, str]] = {
    "no_grant": (403, "you have no valid grant for this compartment"),
    "offline": (409, "the locker bank is not online"),
    "command_pending": (409, "a command for this compartment is still pending"),
    "revocation_pending": (
        409,
        "the locker bank's device was just provisioned anew; commands resume once the broker"
        " can no longer admit the old device (docs/broker-auth.md)",
    ),
}


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(max_length=320)]
    password: Annotated[str, msgspec.Meta(max_length=1024)]


class TokenOut(msgspec.Struct):
    """A session token: send it as ``Authorization: Bearer <token>``."""

    token: str


class MyCompartmentOut(msgspec.Struct):
    """A compartment the signed-in user may open."""

    id: str
    number: int
    locker_bank_id: str
    locker_bank_name: str
    presence: Presence
    door_state: DoorState


class OpenOut(msgspec.Struct):
    """The open has been requested; follow it at /api/transactions/{id}."""

    transaction_id: str
    status: Literal["pending"]


class QrOut(msgspec.Struct):
    """A short-lived, single-use code that opens the compartment when the bank scans it."""

    qr_payload: str
    expires_at: IsoTime


class LateAnswerOut(msgspec.Struct):
    """The device's answer that came after the transaction had timed out."""

    result: Literal["success", "error"]
    error_code: str | None
    received_at: IsoTime


class TransactionOut(msgspec.Struct):
    """A command's transaction."""

    transaction_id: str
    action: Action
    status: TxStatus
    error_code: str | None
    message: str | None
    requested_at: IsoTime
    completed_at: IsoTime | None
    late_answer: LateAnswerOut | None


@blueprint.post("/api/login")
@documented(
    (TokenOut, 200),
    400,
    (401, "Bad credentials, or a disabled account."),
    413,
    (429, "Too many failed attempts (per email address or client IP): see `retry_after`."),
)
@json_body(LoginIn)
async def login(data: LoginIn) -> dict[str, Any]:
    """Sign in with email and password."""
    try:
        token = await ctx().sessions.login(data.email, data.password, request.remote_addr)
    except InvalidCredentials:
        raise ApiError(401, "invalid email or password") from None
    except TooManyAttempts as exc:
        raise ApiError(
            429,
            f"too many login attempts; try again in {exc.retry_after} s",
            retry_after=exc.retry_after,
        ) from None
    return {"token": token}


@blueprint.post("/api/logout")
@documented(204, 401)
async def logout() -> tuple[str, int]:
    """End this session (its token gets 401 from now on)."""
    await require_user()
    token = bearer_token()
    assert token is not None  # require_user() passed
    await ctx().sessions.logout(token)
    return "", 204


def _grant_valid(expires_at: Any, now: datetime) -> bool:
    return expires_at is None or now < datetime.fromisoformat(str(expires_at))


@blueprint.get("/api/compartments")
@documented((list[MyCompartmentOut], 200), 401)
async def my_compartments() -> list[dict[str, Any]]:
    """The compartments the signed-in user may open."""
    principal = await require_user()
    service = ctx()
    rows = await service.tables.read(queries.granted_compartments(principal.user_id))
    now = service.clock()
    result = []
    for compartment_id, number, bank_id, bank_name, door_state, expires_at in rows:
        if not _grant_valid(expires_at, now):
            continue
        status = service.fleet.banks.get(bank_id)
        result.append(
            {
                "id": compartment_id,
                "number": number,
                "locker_bank_id": bank_id,
                "locker_bank_name": bank_name,
                "presence": "unknown" if status is None else status.presence,
                "door_state": door_state,
            }
        )
    return result


@blueprint.post("/api/compartments/<compartment_id>/open")
@documented(
    (OpenOut, 202),
    401,
    (403, "No valid grant for this compartment (`reason` no_grant); the refusal is recorded."),
    404,
    (
        409,
        "The locker bank refused the open: `reason` says why (offline, command_pending,"
        " revocation_pending).",
    ),
    503,
)
async def open_compartment(compartment_id: str) -> tuple[dict[str, Any], int]:
    """Open a compartment the user has a grant for."""
    principal = await require_user()
    service = ctx()
    bank_id = bank_of_compartment(compartment_id)
    transaction_id = str(uuid.uuid4())
    outcome = await ask_bank(
        bank_id,
        c.RequestOpen(
            compartment_id=parse_id(compartment_id, "compartment"),
            user_id=principal.user_id,
            transaction_id=transaction_id,
            command_timeout_seconds=service.settings.command_timeout,
        ),
    )
    for event in outcome.events:
        if isinstance(event, e.CompartmentOpeningDenied):
            status, message = REFUSALS.get(event.reason, (409, f"refused: {event.reason}"))
            raise ApiError(status, message, reason=event.reason)
        if isinstance(event, e.CompartmentOpeningRequested):
            return {"transaction_id": event.transaction_id, "status": "pending"}, 202
    raise ApiError(409, "the locker bank did not accept the request")


@blueprint.post("/api/compartments/<compartment_id>/qr")
@documented(
    (QrOut, 201),
    401,
    (403, "No valid grant for this compartment (`reason` no_grant)."),
    404,
)
async def issue_qr_code(compartment_id: str) -> tuple[dict[str, Any], int]:
    """Issue a QR code that opens the compartment once."""
    principal = await require_user()
    service = ctx()
    bank_of_compartment(compartment_id)
    compartment_id = parse_id(compartment_id, "compartment")
    exists, grant_expiry = await service.tables.read(
        queries.grant_expiry(compartment_id, principal.user_id)
    )
    now = service.clock()
    if not exists or not _grant_valid(grant_expiry, now):
        raise ApiError(403, "you have no valid grant for this compartment", reason="no_grant")
    expires_at = (now + QR_LIFETIME).replace(microsecond=0)
    payload = issue_qr(service.keyring, principal.user_id, compartment_id, expires_at)
    return {"qr_payload": payload, "expires_at": iso(expires_at)}, 201


@blueprint.get("/api/transactions/<transaction_id>")
@documented(
    (TransactionOut, 200),
    401,
    (404, "No such transaction, or not one of the caller's (admins read every one)."),
)
async def get_transaction(transaction_id: str) -> dict[str, Any]:
    """A transaction, for the user who asked and for admins."""
    principal = await require_user()
    view = await ctx().tables.read(queries.transaction(parse_id(transaction_id, "transaction")))
    if view is None or not (principal.is_admin or view.user_id == principal.user_id):
        raise ApiError(404, "no such transaction")
    return view.to_json()
