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
from typing import Annotated, Any, Final

import msgspec
from quart import Blueprint
from quart_schema import document_querystring

from domain.actor import ADMIN_TOKEN_ACTOR_ID
from domain.wiretime import iso_from_stored
from lockerd.audit.query import AuditEntry, AuditFilter, audit_entries
from lockerd.http.auth import require_admin
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.openapi import IsoTime, documented
from lockerd.http.querystring import moment, one, uuid_text, whole_number

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


def parse_filter() -> AuditFilter:
    """The request's query string as an :class:`AuditFilter`; 400 for anything malformed."""
    actor_id = one("actor_id")
    if actor_id is not None and actor_id != ADMIN_TOKEN_ACTOR_ID:
        actor_id = uuid_text("actor_id", actor_id)
    bank_id = one("bank_id")
    if bank_id is not None:
        bank_id = uuid_text("bank_id", bank_id)
    type_ = one("type")
    if type_ is not None and not _TYPE.match(type_):
        raise ApiError(400, "type must be an event type name like CompartmentAccessGranted")
    since_text, until_text = one("since"), one("until")
    since = None if since_text is None else moment("since", since_text)
    until = None if until_text is None else moment("until", until_text)
    if since is not None and until is not None and until <= since:
        raise ApiError(400, "until must be later than since")
    before_text, limit_text = one("before"), one("limit")
    before = None if before_text is None else whole_number("before", before_text, 1, _POSITION_MAX)
    limit = DEFAULT_LIMIT if limit_text is None else whole_number("limit", limit_text, 1, MAX_LIMIT)
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
