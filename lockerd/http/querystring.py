"""Query-string parameters of the read routes, parsed strictly: a 400 that names the parameter.

The audit and alert listings take optional filters by hand (quart-schema's query validation
would turn a repeated or malformed parameter into its own error shape, not contract §4's); these
are the few rules they share. Each function raises :class:`ApiError` 400 with a message naming
the parameter, and returns the normalised value.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from quart import request

from lockerd.http.errors import ApiError

__all__ = ["moment", "one", "uuid_text", "whole_number"]


def one(name: str) -> str | None:
    """The parameter's value, None when absent; a parameter given twice is a 400."""
    values = request.args.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"{name} may be given only once")
    return values[0]


def uuid_text(name: str, text: str, what: str = "an id") -> str:
    """``text`` as a canonical UUID string; anything else is a 400 saying it must be ``what``."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ApiError(400, f"{name} must be {what}") from None


def moment(name: str, text: str) -> datetime:
    """An ISO 8601 time with a UTC offset (``Z`` or ``+01:00``), as UTC."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"{name} must be ISO 8601, e.g. 2026-03-01T12:00:00Z") from None
    if parsed.tzinfo is None:
        raise ApiError(400, f"{name} needs a UTC offset (e.g. Z or +01:00)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ApiError(400, f"{name} is out of range") from None


def whole_number(name: str, text: str, low: int, high: int) -> int:
    """ASCII digits only (no sign, no spaces), within ``low``..``high``."""
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
    return int(text)
