"""Admin routes for people: create users, grant and revoke access to compartments.

The response models document the answers in /openapi.json only (the handlers build them).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from quart import Blueprint

from domain import commands as c
from domain.wiretime import iso
from lockerd.http.asking import ask_bank, bank_of_compartment
from lockerd.http.auth import admin_first, require_admin
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.ids import parse_id
from lockerd.http.openapi import IsoTime, documented
from lockerd.http.validation import json_body
from lockerd.users.sessions import EmailTaken

blueprint = Blueprint("admin_users", __name__)

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class CreateUserIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[
        str, msgspec.Meta(min_length=3, max_length=254, description="unique, case-insensitive")
    ]
    password: Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    role: Literal["user", "admin"] = "user"


class GrantIn(msgspec.Struct, forbid_unknown_fields=True):
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    expires_at: (
        Annotated[datetime, msgspec.Meta(tz=True, description="ISO 8601 with a UTC offset")] | None
    ) = None


class CreatedUserOut(msgspec.Struct):
    """The created user."""

    id: str


class GrantOut(msgspec.Struct):
    """The grant as recorded."""

    compartment_id: str
    user_id: str
    expires_at: Annotated[IsoTime | None, msgspec.Meta(description="null: no expiry")]


@blueprint.post("/api/admin/users")
@documented(
    (CreatedUserOut, 201),
    400,
    401,
    403,
    (409, "A user with this email already exists."),
    413,
)
@admin_first
@json_body(CreateUserIn)
async def create_user(data: CreateUserIn) -> tuple[dict[str, Any], int]:
    """Create a user (role user or admin)."""
    email = data.email.strip()
    if not EMAIL.match(email):
        raise ApiError(400, "email must be an e-mail address like name@example.org")
    name = data.name.strip()
    if not name:
        raise ApiError(400, "name must not be blank")
    try:
        user_id = await ctx().sessions.create_user(email, data.password, name, data.role)
    except EmailTaken:
        raise ApiError(409, "a user with this email already exists") from None
    return {"id": user_id}, 201


@blueprint.post("/api/admin/compartments/<compartment_id>/grants")
@documented(
    (GrantOut, 201),
    (400, "Invalid input (also an expires_at that is not in the future)."),
    401,
    403,
    (404, "No such compartment or user."),
    413,
    503,
)
@admin_first
@json_body(GrantIn)
async def grant(compartment_id: str, data: GrantIn) -> tuple[dict[str, Any], int]:
    """Let a user open a compartment (until expires_at, if given)."""
    bank_id = bank_of_compartment(compartment_id)
    compartment_id = parse_id(compartment_id, "compartment")
    user_id = parse_id(data.user_id, "user")
    if not await ctx().sessions.user_exists(user_id):
        raise ApiError(404, "no such user")
    expires_at = None if data.expires_at is None else data.expires_at.astimezone(UTC)
    await ask_bank(
        bank_id,
        c.GrantAccess(
            compartment_id=compartment_id,
            user_id=user_id,
            expires_at=expires_at,
        ),
    )
    return {
        "compartment_id": compartment_id,
        "user_id": user_id,
        "expires_at": None if expires_at is None else iso(expires_at),
    }, 201


@blueprint.delete("/api/admin/compartments/<compartment_id>/grants/<user_id>")
@documented(204, 401, 403, (404, "No such compartment, or no such grant."), 503)
async def revoke(compartment_id: str, user_id: str) -> tuple[str, int]:
    """End a user's grant for a compartment."""
    await require_admin()
    bank_id = bank_of_compartment(compartment_id)
    await ask_bank(
        bank_id,
        c.RevokeAccess(
            compartment_id=parse_id(compartment_id, "compartment"),
            user_id=parse_id(user_id, "grant"),
        ),
    )
    return "", 204
