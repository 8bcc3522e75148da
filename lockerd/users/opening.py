"""Opening a compartment for a signed-in user: the one function behind
``POST /api/compartments/{id}/open``, shared by the Quart route and its framework-free path
(:mod:`lockerd.users.hot_routes`), so both answer alike. Needs no request context."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from domain import commands as c
from domain import events as e
from lockerd.http.asking import ask_bank, bank_of_compartment
from lockerd.http.auth import Principal
from lockerd.http.errors import ApiError
from lockerd.http.ids import parse_id

if TYPE_CHECKING:
    from lockerd.wiring import Service

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


async def request_open(
    service: Service, principal: Principal, compartment_id: str
) -> dict[str, Any]:
    """Ask the compartment's bank to open it for ``principal``: the 202 body, or
    :class:`ApiError` (404 no such compartment, 403/409 refused with ``reason``, 503).

    Needs no request context: :mod:`lockerd.users.hot_routes` calls it too.
    """
    bank_id = bank_of_compartment(compartment_id, service.directory)
    transaction_id = str(uuid.uuid4())
    outcome = await ask_bank(
        bank_id,
        c.RequestOpen(
            compartment_id=parse_id(compartment_id, "compartment"),
            user_id=principal.user_id,
            transaction_id=transaction_id,
            command_timeout_seconds=service.settings.command_timeout,
            group_ids=service.live.groups_of(principal.user_id),
        ),
        registry=service.registry,
    )
    for event in outcome.events:
        if isinstance(event, e.CompartmentOpeningDenied):
            status, message = REFUSALS.get(event.reason, (409, f"refused: {event.reason}"))
            raise ApiError(status, message, reason=event.reason)
        if isinstance(event, e.CompartmentOpeningRequested):
            return {"transaction_id": event.transaction_id, "status": "pending"}
    raise ApiError(409, "the locker bank did not accept the request")
