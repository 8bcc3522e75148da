"""Opening a compartment for a signed-in user: the one function behind
``POST /api/compartments/{id}/open``, shared by the Quart route and its framework-free path
(:mod:`lockerd.users.hot_routes`), so both answer alike. Needs no request context."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from domain import commands as c
from lockerd.banks.opening import open_answer
from lockerd.http.asking import ask_bank, bank_of_compartment
from lockerd.http.auth import Principal
from lockerd.http.ids import parse_id

if TYPE_CHECKING:
    from lockerd.wiring import Service


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
    return open_answer(outcome)
