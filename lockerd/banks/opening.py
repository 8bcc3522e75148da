"""The answer to an open, a user's (``POST /api/compartments/{id}/open``,
:mod:`lockerd.users.opening`) or an operator's (``POST /api/admin/compartments/{id}/open``,
:mod:`lockerd.banks.lifecycle_routes`): one mapping of the bank's refusal reasons to HTTP, so
both refuse alike (contract §2, §5)."""

from __future__ import annotations

from typing import Any

from actors.bank import Outcome
from domain import events as e
from lockerd.http.errors import ApiError

# a refused open: HTTP status and message by the bank's reason
REFUSALS: dict[str, tuple[int, str]] = {
    "no_grant": (403, "you have no valid grant for this compartment"),
    "offline": (409, "the locker bank is not online"),
    "command_pending": (409, "a command for this compartment is still pending"),
    "out_of_service": (409, "the compartment is out of service"),
    "decommissioned": (409, "the locker bank is decommissioned"),
    "revocation_pending": (
        409,
        "the locker bank's device was just provisioned anew; commands resume once the broker"
        " can no longer admit the old device (docs/broker-auth.md)",
    ),
}


def open_answer(outcome: Outcome) -> dict[str, Any]:
    """The 202 body of an accepted open, or :class:`ApiError` with the refusal's ``reason``
    (403 ``no_grant``, 409 for the others)."""
    for event in outcome.events:
        if isinstance(event, e.CompartmentOpeningDenied):
            status, message = REFUSALS.get(event.reason, (409, f"refused: {event.reason}"))
            raise ApiError(status, message, reason=event.reason)
        if isinstance(event, e.CompartmentOpeningRequested):
            return {"transaction_id": event.transaction_id, "status": "pending"}
    raise ApiError(409, "the locker bank did not accept the request")
