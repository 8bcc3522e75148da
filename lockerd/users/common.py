"""Helpers shared by the user-facing routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import trio

from actors.bank import Outcome
from actors.fleet import iso
from actors.registry import BankUnavailable, UnknownBank
from lockerd.domain import commands as c
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.ids import parse_id
from lockerd.users.sessions import SessionService


def sessions() -> SessionService:
    return cast(SessionService, ctx().extensions["sessions"])


def bank_of_compartment(compartment_id: str) -> str:
    ref = ctx().directory.compartments.get(parse_id(compartment_id, "compartment"))
    if ref is None:
        raise ApiError(404, "no such compartment")
    return ref.bank_id


async def ask_bank(bank_id: str, command: c.BankCommand) -> Outcome:
    try:
        return await ctx().registry.ask(bank_id, command)
    except UnknownBank:
        raise ApiError(404, "no such locker bank") from None
    except (BankUnavailable, trio.TooSlowError) as exc:
        raise ApiError(503, f"locker bank unavailable, try again later ({exc})") from None


REJECTION_STATUS = {"not_found": 404, "invalid": 400, "conflict": 409}


def raise_rejection(outcome: Outcome) -> None:
    rejection = outcome.rejected
    if rejection is not None:
        raise ApiError(REJECTION_STATUS.get(rejection.code, 409), rejection.message)


def iso_text(value: Any) -> str | None:
    """A stored ISO 8601 timestamp in the API's form (UTC, milliseconds, ``Z``)."""
    if value is None:
        return None
    return iso(datetime.fromisoformat(str(value)))
