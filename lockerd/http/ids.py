"""Path ids."""

from __future__ import annotations

import uuid

from lockerd.http.errors import ApiError


def parse_id(text: str, what: str) -> str:
    """Ids are UUIDs; anything else cannot exist, so it is a 404 (never a 500)."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ApiError(404, f"no such {what}") from None
