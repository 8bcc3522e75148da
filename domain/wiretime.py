"""Timestamps as the contract spells them on the wire: ISO 8601, UTC, milliseconds, ``Z``.

One formatter for every answer lockerd gives (HTTP bodies, MQTT commands, websocket and SSE
messages), so a client never has to cope with two precisions or two spellings of UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime) -> str:
    """``2026-03-01T12:00:00.000Z``: ``moment`` in UTC, truncated to milliseconds.

    A naive ``moment`` is taken to be UTC already (the store keeps UTC only).
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def iso_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else iso(moment)


def iso_from_stored(text: object) -> str | None:
    """A timestamp as a read model stores it (ISO 8601 text) in the wire form; None stays None."""
    if text is None:
        return None
    return iso(datetime.fromisoformat(str(text)))
