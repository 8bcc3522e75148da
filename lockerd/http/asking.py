"""Asking a bank actor from a request handler, with every failure mapped to an API error.

The one place where the registry's failures become HTTP answers, so that every route reports
them the same way: an unknown bank is a 404, a bank that cannot answer (crashed on this
request, past its restart budget, or too slow) a 503 that says so without any error text (the
log and, for a failed bank, the dashboard have the detail), and a command the bank's ``decide``
refused (or whose events the store refused: ``invalid``) a 404/400/409 by its rejection code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from actors.bank import Outcome
from actors.registry import BankRegistry, BankUnavailable, UnknownBank
from domain import commands as c
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.ids import parse_id

if TYPE_CHECKING:
    from lockerd.banks.directory import Directory

REJECTION_STATUS = {"not_found": 404, "invalid": 400, "conflict": 409, "not_failed": 409}
#: rejection codes that are also the answer's ``error`` (the others are the status's code)
OWN_ERROR_CODES = frozenset({"not_failed"})


async def ask_bank(
    bank_id: str,
    command: c.BankCommand,
    *,
    allow_new: bool = False,
    registry: BankRegistry | None = None,
) -> Outcome:
    """The bank's outcome for ``command``; raises :class:`ApiError` unless it was accepted.

    ``registry`` defaults to the current request's service (pass it where there is no Quart
    request context, as in :mod:`lockerd.users.hot_routes`).
    """
    registry = registry if registry is not None else ctx().registry
    try:
        outcome = await registry.ask(bank_id, command, allow_new=allow_new)
    except UnknownBank:
        raise ApiError(404, "no such locker bank") from None
    except BankUnavailable as exc:
        # the registry's message is written for clients: it never carries an error's text
        raise ApiError(503, str(exc)) from None
    except trio.TooSlowError:
        raise ApiError(503, "the locker bank did not answer in time; try again later") from None
    rejection = outcome.rejected
    if rejection is not None:
        code = rejection.code if rejection.code in OWN_ERROR_CODES else None
        raise ApiError(REJECTION_STATUS.get(rejection.code, 409), rejection.message, code=code)
    return outcome


def bank_of_compartment(compartment_id: str, directory: Directory | None = None) -> str:
    """The bank holding the compartment with this (path) id; 404 if there is none."""
    directory = directory if directory is not None else ctx().directory
    ref = directory.compartments.get(parse_id(compartment_id, "compartment"))
    if ref is None:
        raise ApiError(404, "no such compartment")
    return ref.bank_id
