"""Admin routes for people (contract §4, §5): users, grants (to users and to groups), groups.

Every change is an event naming its actor (``Principal.actor``): grants in the compartment's
bank stream, users and groups in their operator streams (:mod:`domain.operations`).
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
from lockerd.users import groups as g
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
    """Exactly one of ``user_id`` and ``group_id``."""

    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    group_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    expires_at: (
        Annotated[datetime, msgspec.Meta(tz=True, description="ISO 8601 with a UTC offset")] | None
    ) = None


class CreatedUserOut(msgspec.Struct):
    """The created user."""

    id: str


class GrantOut(msgspec.Struct, omit_defaults=True):
    """The grant as recorded (``user_id`` or ``group_id``)."""

    compartment_id: str
    expires_at: Annotated[IsoTime | None, msgspec.Meta(description="null: no expiry")]
    user_id: str | None = None
    group_id: str | None = None


class ActorOut(msgspec.Struct, omit_defaults=True):
    """Who made a change: ``{"kind":"user","id":…}`` or ``{"kind":"admin_token"}``."""

    kind: Literal["user", "admin_token"]
    id: str | None = None


class GrantListed(msgspec.Struct, omit_defaults=True):
    """A grant of the compartment: to a user (``user_id``) or to a group (``group_id``)."""

    expires_at: Annotated[IsoTime | None, msgspec.Meta(description="null: no expiry")]
    granted_at: IsoTime
    granted_by: Annotated[
        ActorOut | None, msgspec.Meta(description="null for grants recorded before actors")
    ]
    user_id: str | None = None
    group_id: str | None = None


class UserOut(msgspec.Struct):
    id: str
    email: str
    name: str
    role: Literal["user", "admin"]
    disabled: bool
    created_at: IsoTime


class UpdateUserIn(msgspec.Struct, forbid_unknown_fields=True):
    """At least one field. ``disabled: true`` ends every session of the user at once (on
    every node); a new ``password`` too."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    role: Literal["user", "admin"] | msgspec.UnsetType = msgspec.UNSET
    disabled: bool | msgspec.UnsetType = msgspec.UNSET
    password: Annotated[str, msgspec.Meta(min_length=8, max_length=1024)] | msgspec.UnsetType = (
        msgspec.UNSET
    )


class GroupIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[
        str, msgspec.Meta(min_length=1, max_length=200, description="unique, case-insensitive")
    ]


class CreatedGroupOut(msgspec.Struct):
    id: str


class GroupOut(msgspec.Struct):
    id: str
    name: str
    members: Annotated[list[str], msgspec.Meta(description="user ids")]


class MemberIn(msgspec.Struct, forbid_unknown_fields=True):
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


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
    principal = await require_admin()
    email = data.email.strip()
    if not EMAIL.match(email):
        raise ApiError(400, "email must be an e-mail address like name@example.org")
    name = data.name.strip()
    if not name:
        raise ApiError(400, "name must not be blank")
    try:
        user_id = await ctx().sessions.create_user(
            email, data.password, name, data.role, actor=principal.actor
        )
    except EmailTaken:
        raise ApiError(409, "a user with this email already exists") from None
    return {"id": user_id}, 201


# --------------------------------------------------------------------------- users


def _user_json(user: Any) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": user.created_at,
    }


@blueprint.get("/api/admin/users")
@documented((list[UserOut], 200), 401, 403)
async def list_users() -> list[dict[str, Any]]:
    """Every user, oldest first."""
    await require_admin()
    return [_user_json(user) for user in await ctx().sessions.users()]


@blueprint.patch("/api/admin/users/<user_id>")
@documented(
    (UserOut, 200),
    (400, "Invalid input (also: no field given, a blank name)."),
    401,
    403,
    (404, "No such user."),
    413,
)
@admin_first
@json_body(UpdateUserIn)
async def update_user(user_id: str, data: UpdateUserIn) -> dict[str, Any]:
    """Change a user's name, role, password or disabled flag (recorded with the actor).

    Disabling or a new password ends every session of the user at once, on every node
    (their tokens get 401, their live streams close); a role change applies to their next
    request.
    """
    principal = await require_admin()
    user_id = parse_id(user_id, "user")
    name = None if isinstance(data.name, msgspec.UnsetType) else data.name.strip()
    if name is not None and not name:
        raise ApiError(400, "name must not be blank")
    role = None if isinstance(data.role, msgspec.UnsetType) else data.role
    disabled = None if isinstance(data.disabled, msgspec.UnsetType) else data.disabled
    password = None if isinstance(data.password, msgspec.UnsetType) else data.password
    if name is None and role is None and disabled is None and password is None:
        raise ApiError(400, "give at least one of name, role, disabled, password")
    sessions = ctx().sessions
    found = await sessions.update_user(
        user_id,
        actor=principal.actor,
        name=name,
        role=role,
        disabled=disabled,
        password=password,
    )
    user = await sessions.listing(user_id) if found else None
    if user is None:
        raise ApiError(404, "no such user")
    return _user_json(user)


@blueprint.delete("/api/admin/users/<user_id>")
@documented(
    204,
    401,
    403,
    (404, "No such user."),
    (503, "A bank holding one of the user's grants did not answer: the user stays (disabled);"
     " try again."),
)  # fmt: skip
async def delete_user(user_id: str) -> tuple[str, int]:
    """Delete a user: their sessions end at once, their grants are revoked in each bank and
    their group memberships end (each recorded with the actor)."""
    principal = await require_admin()
    user_id = parse_id(user_id, "user")
    service = ctx()
    actor = principal.actor
    if not await service.sessions.user_exists(user_id):
        raise ApiError(404, "no such user")
    # disabled first: their sessions end now, whatever happens to the rest
    await service.sessions.update_user(user_id, actor=actor, disabled=True)
    for bank_id, compartment_id in await service.tables.read(g.grants_of_user(user_id)):
        try:
            await ask_bank(
                bank_id,
                c.RevokeAccess(compartment_id=compartment_id, user_id=user_id, actor=actor),
            )
        except ApiError as exc:
            if exc.status != 404:  # 404: revoked meanwhile, or its bank is gone
                raise
    await service.groups.leave_every_group(user_id, actor=actor)
    if not await service.sessions.delete_user(user_id, actor=actor):
        raise ApiError(404, "no such user")
    return "", 204


# --------------------------------------------------------------------------- grants


@blueprint.get("/api/admin/compartments/<compartment_id>/grants")
@documented((list[GrantListed], 200), 401, 403, (404, "No such compartment."))
async def list_grants(compartment_id: str) -> list[dict[str, Any]]:
    """Every grant of the compartment, to users and to groups, with who granted it."""
    await require_admin()
    bank_of_compartment(compartment_id)
    compartment_id = parse_id(compartment_id, "compartment")
    grants = await ctx().tables.read(g.grants_of_compartment(compartment_id))
    return [grant.to_json() for grant in grants]


@blueprint.post("/api/admin/compartments/<compartment_id>/grants")
@documented(
    (GrantOut, 201),
    (400, "Invalid input (also: not exactly one of user_id and group_id, an expires_at that"
     " is not in the future)."),
    401,
    403,
    (404, "No such compartment, user or group."),
    413,
    503,
)  # fmt: skip
@admin_first
@json_body(GrantIn)
async def grant(compartment_id: str, data: GrantIn) -> tuple[dict[str, Any], int]:
    """Let a user, or every member of a group while a member, open a compartment (until
    expires_at, if given)."""
    principal = await require_admin()
    if (data.user_id is None) == (data.group_id is None):
        raise ApiError(400, "give exactly one of user_id and group_id")
    bank_id = bank_of_compartment(compartment_id)
    compartment_id = parse_id(compartment_id, "compartment")
    expires_at = None if data.expires_at is None else data.expires_at.astimezone(UTC)
    service = ctx()
    command: c.BankCommand
    subject: dict[str, Any]
    if data.user_id is not None:
        user_id = parse_id(data.user_id, "user")
        if not await service.sessions.user_exists(user_id):
            raise ApiError(404, "no such user")
        command = c.GrantAccess(compartment_id=compartment_id, user_id=user_id,
                                expires_at=expires_at, actor=principal.actor)  # fmt: skip
        subject = {"user_id": user_id}
    else:
        assert data.group_id is not None
        group_id = parse_id(data.group_id, "group")
        if not await service.groups.exists(group_id):
            raise ApiError(404, "no such group")
        command = c.GrantGroupAccess(compartment_id=compartment_id, group_id=group_id,
                                     expires_at=expires_at, actor=principal.actor)  # fmt: skip
        subject = {"group_id": group_id}
    await ask_bank(bank_id, command)
    return {
        "compartment_id": compartment_id,
        **subject,
        "expires_at": None if expires_at is None else iso(expires_at),
    }, 201


@blueprint.delete("/api/admin/compartments/<compartment_id>/grants/<user_id>")
@documented(204, 401, 403, (404, "No such compartment, or no such grant."), 503)
async def revoke(compartment_id: str, user_id: str) -> tuple[str, int]:
    """End a user's grant for a compartment."""
    principal = await require_admin()
    bank_id = bank_of_compartment(compartment_id)
    await ask_bank(
        bank_id,
        c.RevokeAccess(
            compartment_id=parse_id(compartment_id, "compartment"),
            user_id=parse_id(user_id, "grant"),
            actor=principal.actor,
        ),
    )
    return "", 204


@blueprint.delete("/api/admin/compartments/<compartment_id>/grants/groups/<group_id>")
@documented(204, 401, 403, (404, "No such compartment, or no such group grant."), 503)
async def revoke_group(compartment_id: str, group_id: str) -> tuple[str, int]:
    """End a group's grant for a compartment: its members can no longer open it through it."""
    principal = await require_admin()
    bank_id = bank_of_compartment(compartment_id)
    await ask_bank(
        bank_id,
        c.RevokeGroupAccess(
            compartment_id=parse_id(compartment_id, "compartment"),
            group_id=parse_id(group_id, "grant"),
            actor=principal.actor,
        ),
    )
    return "", 204


# --------------------------------------------------------------------------- groups


@blueprint.post("/api/admin/groups")
@documented((CreatedGroupOut, 201), 400, 401, 403, (409, "A group with this name exists."), 413)
@admin_first
@json_body(GroupIn)
async def create_group(data: GroupIn) -> tuple[dict[str, Any], int]:
    """Create a group of users (recorded with the actor)."""
    principal = await require_admin()
    name = data.name.strip()
    if not name:
        raise ApiError(400, "name must not be blank")
    try:
        group_id = await ctx().groups.create(name, actor=principal.actor)
    except g.GroupNameTaken:
        raise ApiError(409, "a group with this name already exists") from None
    return {"id": group_id}, 201


@blueprint.get("/api/admin/groups")
@documented((list[GroupOut], 200), 401, 403)
async def list_groups() -> list[dict[str, Any]]:
    """Every group by name, with its members' user ids."""
    await require_admin()
    return [
        {"id": group.id, "name": group.name, "members": group.members}
        for group in await ctx().groups.all()
    ]


@blueprint.post("/api/admin/groups/<group_id>/members")
@documented(
    (204),
    400,
    401,
    403,
    (404, "No such group or user."),
    413,
)
@admin_first
@json_body(MemberIn)
async def add_member(group_id: str, data: MemberIn) -> tuple[str, int]:
    """Make a user a member (already one: nothing changes). The user may open what the group
    may at once, on every node (within about a second on the others)."""
    principal = await require_admin()
    group_id = parse_id(group_id, "group")
    user_id = parse_id(data.user_id, "user")
    try:
        await ctx().groups.add_member(group_id, user_id, actor=principal.actor)
    except g.NoSuchGroup:
        raise ApiError(404, "no such group") from None
    except g.NoSuchUser:
        raise ApiError(404, "no such user") from None
    return "", 204


@blueprint.delete("/api/admin/groups/<group_id>/members/<user_id>")
@documented(204, 401, 403, (404, "No such group, or the user is not a member."))
async def remove_member(group_id: str, user_id: str) -> tuple[str, int]:
    """End a membership: what the user could open only through the group ends at once."""
    principal = await require_admin()
    group_id = parse_id(group_id, "group")
    user_id = parse_id(user_id, "member")
    try:
        await ctx().groups.remove_member(group_id, user_id, actor=principal.actor)
    except g.NoSuchGroup:
        raise ApiError(404, "no such group") from None
    except g.NotAMember:
        raise ApiError(404, "the user is not a member of this group") from None
    return "", 204
