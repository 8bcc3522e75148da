"""``GET /api/admin/audit``: every bank's history and every operator action, newest first.

Query parameters (each at most once; any other parameter is ignored):

* ``actor_id``: a user id, or ``admin_token`` for the bootstrap admin token's actions;
* ``bank_id``: one bank's events (operator entries have ``bank_id`` null and never match);
* ``type``: an event type, e.g. ``CompartmentAccessGranted``, ``UserUpdated``;
* ``since`` (inclusive) and ``until`` (exclusive): ISO 8601 with a UTC offset (or ``Z``);
* ``before``: only entries with a smaller ``position`` (the next page: the last one's);
* ``limit``: 1-1000, default 100.

Anything malformed is a 400 that names the parameter.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from quart import Blueprint, request
from quart_schema import document_querystring

from domain.actor import ADMIN_TOKEN_ACTOR_ID
from domain.wiretime import iso_from_stored
from lockerd.audit.query import AuditEntry, AuditFilter, audit_entries
from lockerd.http.auth import require_admin
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.openapi import IsoTime, documented

blueprint = Blueprint("audit", __name__)

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")
_POSITION_MAX: Final = 2**63 - 1


class AuditQuery(msgspec.Struct):
    """The query string of ``GET /api/admin/audit`` (documentation only)."""

    actor_id: (
        Annotated[str, msgspec.Meta(description="a user id, or `admin_token`")] | msgspec.UnsetType
    ) = msgspec.UNSET
    bank_id: Annotated[str, msgspec.Meta(description="a bank id")] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    type: Annotated[str, msgspec.Meta(description="an event type")] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    since: (
        Annotated[str, msgspec.Meta(description="ISO 8601 with an offset; inclusive")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    until: (
        Annotated[str, msgspec.Meta(description="ISO 8601 with an offset; exclusive")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    before: (
        Annotated[int, msgspec.Meta(ge=1, description="only positions below this (paging)")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    limit: (
        Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT, description="default 100")]
        | msgspec.UnsetType
    ) = msgspec.UNSET


class AuditActorOut(msgspec.Struct, omit_defaults=True):
    kind: str
    id: str | None = None


class AuditEntryOut(msgspec.Struct):
    """One stored event: a bank's (``bank_id``) or an operator action's (``bank_id`` null)."""

    position: int
    recorded_at: IsoTime
    bank_id: str | None
    type: str
    actor: Annotated[
        AuditActorOut | None, msgspec.Meta(description="who made the change; null: no operator")
    ]
    data: dict[str, Any]


def _one(name: str) -> str | None:
    values = request.args.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"{name} may be given only once")
    return values[0]


def _uuid(name: str, text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ApiError(400, f"{name} must be an id") from None


def _moment(name: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{name} must be ISO 8601, e.g. 2026-03-01T12:00:00Z") from None
    if moment.tzinfo is None:
        raise ApiError(400, f"{name} needs a UTC offset (e.g. Z or +01:00)")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ApiError(400, f"{name} is out of range") from None


def _whole(name: str, text: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
    return int(text)


def parse_filter() -> AuditFilter:
    """The request's query string as an :class:`AuditFilter`; 400 for anything malformed."""
    actor_id = _one("actor_id")
    if actor_id is not None and actor_id != ADMIN_TOKEN_ACTOR_ID:
        actor_id = _uuid("actor_id", actor_id)
    bank_id = _one("bank_id")
    if bank_id is not None:
        bank_id = _uuid("bank_id", bank_id)
    type_ = _one("type")
    if type_ is not None and not _TYPE.match(type_):
        raise ApiError(400, "type must be an event type name like CompartmentAccessGranted")
    since_text, until_text = _one("since"), _one("until")
    since = None if since_text is None else _moment("since", since_text)
    until = None if until_text is None else _moment("until", until_text)
    if since is not None and until is not None and until <= since:
        raise ApiError(400, "until must be later than since")
    before_text, limit_text = _one("before"), _one("limit")
    before = None if before_text is None else _whole("before", before_text, 1, _POSITION_MAX)
    limit = DEFAULT_LIMIT if limit_text is None else _whole("limit", limit_text, 1, MAX_LIMIT)
    return AuditFilter(actor_id, bank_id, type_, since, until, before, limit)


def _entry(entry: AuditEntry) -> dict[str, Any]:
    actor = entry.data.get("actor")
    return {
        "position": entry.position,
        "recorded_at": iso_from_stored(entry.recorded_at),
        "bank_id": entry.bank_id,
        "type": entry.type,
        "actor": actor if isinstance(actor, dict) else None,
        "data": entry.data,
    }


@blueprint.get("/api/admin/audit")
@documented(
    (list[AuditEntryOut], 200),
    (400, "A malformed parameter (the message names it): not an id, not ISO 8601 with an"
     " offset, a limit outside 1-1000, a parameter given twice."),
    401,
    403,
)  # fmt: skip
@document_querystring(AuditQuery)
async def audit() -> list[dict[str, Any]]:
    """Every bank's history and every operator action (users, grants, groups, tenants,
    agents), newest first, filtered by actor, bank, type and time."""
    await require_admin()
    query = parse_filter()
    return [_entry(entry) for entry in await ctx().tables.read(audit_entries(query))]
