"""``GET /api/admin/alerts`` and ``POST /api/admin/alerts/{id}/acknowledge`` (contract §5).

Listing reads the read model (the same on every node). Acknowledging is an operator action on
the alert's bank: it is decided by the bank's actor (on whichever node owns it) and recorded as
``AlertAcknowledged`` naming the actor, so it is in the bank's history and the audit log.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec
from quart import Blueprint
from quart_schema import document_querystring

from domain import commands as c
from domain.alerts import ALERT_STATES, AlertState, AlertType
from lockerd.alerts.queries import AlertFilter, alert, alerts
from lockerd.http.asking import ask_bank
from lockerd.http.auth import require_admin
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.ids import parse_id
from lockerd.http.openapi import IsoTime, documented
from lockerd.http.querystring import one, uuid_text, whole_number

blueprint = Blueprint("alerts", __name__)

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 1000


class AlertsQuery(msgspec.Struct):
    """The query string of ``GET /api/admin/alerts`` (documentation only)."""

    state: (
        Annotated[AlertState, msgspec.Meta(description="only alerts in this state")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    bank_id: Annotated[str, msgspec.Meta(description="one bank's alerts")] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    limit: (
        Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT, description="default 1000")]
        | msgspec.UnsetType
    ) = msgspec.UNSET


class AlertOut(msgspec.Struct):
    """An alert: raised by one of its bank's events, then acknowledged and/or resolved."""

    id: str
    bank_id: str
    type: AlertType
    raised_at: IsoTime
    state: AlertState
    data: Annotated[dict[str, Any], msgspec.Meta(description="the raising event's data")]


def parse_filter() -> AlertFilter:
    """The query string as an :class:`AlertFilter`; 400 naming the parameter that is wrong."""
    state = one("state")
    if state is not None and state not in ALERT_STATES:
        raise ApiError(400, "state must be one of open, acknowledged, resolved")
    bank_id = one("bank_id")
    if bank_id is not None:
        bank_id = uuid_text("bank_id", bank_id, "a locker bank id")
    limit_text = one("limit")
    limit = DEFAULT_LIMIT if limit_text is None else whole_number("limit", limit_text, 1, MAX_LIMIT)
    return AlertFilter(state, bank_id, limit)


@blueprint.get("/api/admin/alerts")
@documented(
    (list[AlertOut], 200),
    (400, "A malformed parameter (the message names it): an unknown state, a bank_id that is"
     " not an id, a limit outside 1-1000, a parameter given twice."),
    401,
    403,
)  # fmt: skip
@document_querystring(AlertsQuery)
async def list_alerts() -> list[dict[str, Any]]:
    """Alerts, newest first, by state and bank."""
    await require_admin()
    query = parse_filter()
    return await ctx().tables.read(alerts(query))


@blueprint.post("/api/admin/alerts/<alert_id>/acknowledge")
@documented(
    (AlertOut, 200),
    401,
    403,
    (404, "No such alert."),
    (409, "The alert is acknowledged or resolved already."),
    503,
)
async def acknowledge(alert_id: str) -> dict[str, Any]:
    """Acknowledge an open alert; recorded in its bank's history with the operator."""
    principal = await require_admin()
    service = ctx()
    alert_id = parse_id(alert_id, "alert")
    found = await service.tables.read(alert(alert_id))
    if found is None:
        raise ApiError(404, "no such alert")
    if found["state"] != "open":
        raise ApiError(409, f"the alert is {found['state']} already")
    await ask_bank(found["bank_id"], c.AcknowledgeAlert(alert_id, principal.actor))
    now = await service.tables.read(alert(alert_id))
    assert now is not None  # alerts are never deleted
    return now
