"""Bank commands and outcomes as JSON, for asking a bank's owner on another node.

Commands are the domain's dataclasses, sent as ``{"type": <class name>, "data": {...}}``
(msgspec encodes and strictly converts them back, datetimes as RFC 3339); an outcome carries
the bank's state, the events by stored type and data, the stored events with their
positions, and a rejection's code and message.

The state travels as a snapshot (``domain.snapshot``) plus its live presence, *trimmed* to
what an answer can be about: the bank's own fields, compartments and grants, its pending
transactions and those the outcome's events touch. The deduplication memory (finished
transactions of the last 24 h, seen event ids, used QR nonces) stays with the owner: it can
hold thousands of entries, and shipping it with every forwarded request would cost more than
the request itself.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, cast

import msgspec
from pyrsistent import pmap

from actors.bank import Outcome
from domain import commands as c
from domain import events as e
from domain.records import StoredEvent
from domain.snapshot import decode_snapshot, encode_snapshot
from domain.state import BankState

_COMMANDS: dict[str, type[Any]] = {cls.__name__: cls for cls in c.BankCommand.__args__}


class WireError(ValueError):
    """A request or answer body that does not describe a command or an outcome."""


class AskBody(msgspec.Struct, forbid_unknown_fields=True):
    command: dict[str, Any]
    kind: str | None = None
    secret: str | None = None
    allow_new: bool = False
    tell: bool = False


class StoredWire(msgspec.Struct):
    position: int
    stream_id: str
    version: int
    type: str
    data: dict[str, Any]
    recorded_at: datetime


class PresenceWire(msgspec.Struct):
    presence: str
    last_seen: datetime | None
    session_id: str | None
    uptime_seconds: int | None


class OutcomeWire(msgspec.Struct):
    state: msgspec.Raw
    presence: PresenceWire
    events: list[tuple[str, dict[str, Any]]]
    stored: list[StoredWire]
    rejected: tuple[str, str] | None = None
    crashed: str | None = None


def encode_command(command: c.BankCommand) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(command)
    return {"type": type(command).__name__, "data": data}


def decode_command(wire: dict[str, Any]) -> c.BankCommand:
    cls = _COMMANDS.get(str(wire.get("type")))
    if cls is None or not dataclasses.is_dataclass(cls):
        raise WireError(f"unknown command type {wire.get('type')!r}")
    try:
        command: c.BankCommand = cast(c.BankCommand, msgspec.convert(wire.get("data"), cls))
    except msgspec.ValidationError as exc:
        raise WireError(f"invalid {cls.__name__}: {exc}") from None
    return command


def encode_ask(
    command: c.BankCommand,
    *,
    kind: str | None,
    secret: str | None,
    allow_new: bool,
    tell: bool = False,
) -> bytes:
    return msgspec.json.encode(
        AskBody(encode_command(command), kind, secret, allow_new=allow_new, tell=tell)
    )


def decode_ask(body: bytes) -> AskBody:
    try:
        return msgspec.json.decode(body, type=AskBody)
    except msgspec.DecodeError as exc:
        raise WireError(str(exc)) from None


def trimmed(state: BankState, events: tuple[e.Event, ...]) -> BankState:
    """``state`` without the deduplication memory (see the module docstring)."""
    touched = {getattr(event, "transaction_id", None) for event in events}
    transactions = {
        tx_id: tx
        for tx_id, tx in state.transactions.items()
        if tx.status == "pending" or tx_id in touched
    }
    return dataclasses.replace(
        state, transactions=pmap(transactions), seen_event_ids=pmap(), used_qr_nonces=pmap()
    )


def encode_outcome(outcome: Outcome) -> bytes:
    rejected = outcome.rejected
    state = outcome.state
    return msgspec.json.encode(
        OutcomeWire(
            state=msgspec.Raw(encode_snapshot(trimmed(state, outcome.events))),
            presence=PresenceWire(
                state.presence, state.last_seen, state.session_id, state.uptime_seconds
            ),
            events=[(e.event_type(ev), e.event_data(ev)) for ev in outcome.events],
            stored=[
                StoredWire(s.position, s.stream_id, s.version, s.type, dict(s.data), s.recorded_at)
                for s in outcome.stored
            ],
            rejected=None if rejected is None else (rejected.code, rejected.message),
            crashed=outcome.crashed,
        )
    )


def decode_outcome(body: bytes) -> Outcome:
    """The outcome in ``body``; its state is trimmed (see the module docstring)."""
    try:
        wire = msgspec.json.decode(body, type=OutcomeWire)
        live = wire.presence
        state = dataclasses.replace(
            decode_snapshot(bytes(wire.state)),
            presence=live.presence,  # type: ignore[arg-type]
            last_seen=live.last_seen,
            session_id=live.session_id,
            uptime_seconds=live.uptime_seconds,
        )
        events = tuple(e.event_from_stored(name, data) for name, data in wire.events)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise WireError(f"unreadable outcome: {exc}") from None
    rejected = None if wire.rejected is None else c.CommandRejected(*wire.rejected)
    stored = tuple(
        StoredEvent(s.position, s.stream_id, s.version, s.type, s.data, s.recorded_at)
        for s in wire.stored
    )
    return Outcome(state, events, stored, rejected, wire.crashed)
