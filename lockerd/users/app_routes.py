"""App routes: sign in and out, me and my password, my compartments, open, QR codes, and
transaction status (with its long poll).

The hot reads (my compartments, a grant for a QR code, a transaction) are answered from the
in-memory :class:`~lockerd.banks.live.LiveModel`, never queued on the store's thread; only a
transaction old enough to have left memory is read from the store. The response models
document the answers in /openapi.json only (the handlers build them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import wraps
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import msgspec
from quart import Blueprint, request
from quart_schema import document_querystring

from domain.events import Action, DoorState, Presence
from domain.qr import issue_qr
from domain.state import TxStatus
from domain.wiretime import iso
from lockerd.banks import queries
from lockerd.http.asking import bank_of_compartment
from lockerd.http.auth import BOOTSTRAP_ADMIN_ID, bearer_token, require_user
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.ids import parse_id
from lockerd.http.openapi import IsoTime, documented
from lockerd.http.validation import json_body
from lockerd.users.hot_routes import MAX_WAIT_SECONDS, parse_wait, transaction_answer
from lockerd.users.opening import request_open
from lockerd.users.sessions import (
    AccountDisabled,
    InvalidCredentials,
    TooManyAttempts,
    WrongPassword,
)

blueprint = Blueprint("app_users", __name__)

P = ParamSpec("P")
R = TypeVar("R")

QR_LIFETIME = timedelta(seconds=120)


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(max_length=320)]
    password: Annotated[str, msgspec.Meta(max_length=1024)]


class PasswordChangeIn(msgspec.Struct, forbid_unknown_fields=True):
    current_password: Annotated[str, msgspec.Meta(max_length=1024)]
    new_password: Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]


class MeOut(msgspec.Struct):
    """The signed-in user (for the bootstrap admin token: id ``admin``, email null)."""

    id: str
    email: str | None
    name: str
    role: Literal["user", "admin"]


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
    out_of_service: Annotated[
        bool, msgspec.Meta(description="opens are refused (409 out_of_service) while true")
    ]


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
    except AccountDisabled:
        raise ApiError(401, "this account is disabled") from None
    except InvalidCredentials:
        raise ApiError(401, "invalid email or password") from None
    except TooManyAttempts as exc:
        raise _too_many(exc) from None
    return {"token": token}


def signed_in_first(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Check the token before the body (place it above ``json_body``): without a valid token
    a 401, whatever the body (contract §4: 401 first)."""

    @wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        await require_user()
        return await handler(*args, **kwargs)

    return wrapper


def _too_many(exc: TooManyAttempts) -> ApiError:
    return ApiError(
        429,
        f"too many failed attempts; try again in {exc.retry_after} s",
        retry_after=exc.retry_after,
    )


@blueprint.post("/api/logout")
@documented(204, 401)
async def logout() -> tuple[str, int]:
    """End this session (its token gets 401 from now on)."""
    await require_user()
    token = bearer_token()
    assert token is not None  # require_user() passed
    await ctx().sessions.logout(token)
    return "", 204


@blueprint.get("/api/me")
@documented((MeOut, 200), 401)
async def me() -> dict[str, Any]:
    """The signed-in user."""
    principal = await require_user()
    if principal.user_id == BOOTSTRAP_ADMIN_ID:
        return {"id": BOOTSTRAP_ADMIN_ID, "email": None, "name": "admin token", "role": "admin"}
    user = await ctx().sessions.user(principal.user_id)
    if user is None:  # deleted a moment ago; its sessions are ending
        raise ApiError(401, "missing or invalid bearer token")
    return {"id": user.id, "email": user.email, "name": user.name, "role": principal.role}


@blueprint.post("/api/me/password")
@documented(
    204,
    (400, "Invalid input (also a new password shorter than 8 characters)."),
    401,
    (403, "The current password is wrong (or the bootstrap admin token, which has none)."),
    413,
    (429, "Too many wrong passwords for this account or client: see `retry_after`."),
)
@signed_in_first
@json_body(PasswordChangeIn)
async def change_password(data: PasswordChangeIn) -> tuple[str, int]:
    """Change my password; every other session of mine ends, this one stays valid."""
    principal = await require_user()
    if principal.user_id == BOOTSTRAP_ADMIN_ID:
        raise ApiError(403, "the bootstrap admin token has no password to change")
    token = bearer_token()
    assert token is not None  # require_user() passed
    try:
        await ctx().sessions.change_password(
            principal.user_id, token, data.current_password, data.new_password, request.remote_addr
        )
    except WrongPassword:
        raise ApiError(403, "the current password is wrong") from None
    except TooManyAttempts as exc:
        raise _too_many(exc) from None
    return "", 204


@blueprint.get("/api/compartments")
@documented((list[MyCompartmentOut], 200), 401)
async def my_compartments() -> list[dict[str, Any]]:
    """The compartments the signed-in user may open."""
    principal = await require_user()
    service = ctx()
    return service.live.compartments_of(principal.user_id, service.clock())


@blueprint.post("/api/compartments/<compartment_id>/open")
@documented(
    (OpenOut, 202),
    401,
    (403, "No valid grant for this compartment (`reason` no_grant); the refusal is recorded."),
    404,
    (
        409,
        "The locker bank refused the open: `reason` says why (offline, command_pending,"
        " out_of_service, decommissioned, revocation_pending).",
    ),
    503,
)
async def open_compartment(compartment_id: str) -> tuple[dict[str, Any], int]:
    """Open a compartment the user has a grant for."""
    principal = await require_user()
    return await request_open(ctx(), principal, compartment_id), 202


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
    now = service.clock()
    if not service.live.may_open(principal.user_id, compartment_id, now):
        raise ApiError(403, "you have no valid grant for this compartment", reason="no_grant")
    expires_at = (now + QR_LIFETIME).replace(microsecond=0)
    payload = issue_qr(service.keyring, principal.user_id, compartment_id, expires_at)
    return {"qr_payload": payload, "expires_at": iso(expires_at)}, 201


class WaitQuery(msgspec.Struct):
    """The query string of ``GET /api/transactions/{id}`` (documentation only)."""

    wait: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=MAX_WAIT_SECONDS,
                description="seconds (1-30) to hold the answer while the transaction is"
                " pending; answered the moment its status changes",
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET


def _wait_seconds() -> int | None:
    """``?wait=`` as whole seconds 1-30, None when absent; 400 for anything else."""
    try:
        return parse_wait(request.args.getlist("wait"))
    except ValueError:
        raise ApiError(
            400, f"wait must be a whole number of seconds, 1-{MAX_WAIT_SECONDS}"
        ) from None


@blueprint.get("/api/transactions/<transaction_id>")
@documented(
    (TransactionOut, 200),
    (400, "`wait` is not a whole number of seconds from 1 to 30."),
    401,
    (404, "No such transaction, or not one of the caller's (admins read every one)."),
)
@document_querystring(WaitQuery)
async def get_transaction(transaction_id: str) -> dict[str, Any]:
    """A transaction, for the user who asked and for admins.

    With ``?wait=N`` (1-30) a pending transaction's answer is held until its status changes
    (answered at once when it does) or N seconds have passed; then it is answered as it stands.
    """
    principal = await require_user()
    wait = _wait_seconds()
    service = ctx()
    transaction_id = parse_id(transaction_id, "transaction")
    view = service.live.transaction(transaction_id)
    if view is None:  # finished long ago: no longer held in memory
        view = await service.tables.read(queries.transaction(transaction_id))
    if view is None or not (principal.is_admin or view.user_id == principal.user_id):
        raise ApiError(404, "no such transaction")
    return (await transaction_answer(service, view, wait)).to_json()
