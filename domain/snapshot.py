"""Serialising a bank's state for snapshots, so a bank loads as snapshot + tail of events."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

import msgspec
from pyrsistent import PMap, pmap

from domain.state import BankState, Compartment, Transaction

SNAPSHOT_FORMAT = 1

SNAPSHOT_SPREAD = 4
"""A bank that remembers T transactions is snapshotted at most every T / SNAPSHOT_SPREAD
events (see :func:`snapshot_interval`)."""

# derived from the transactions: not stored, rebuilt on decoding (BankState.reindexed)
_DERIVED_FIELDS = {"pending_ids", "opens_done_at"}

_DATETIME_FIELDS = {
    "token_expires_at",
    "provisioned_at",
    "last_seen",
    "requested_at",
    "expires_at",
    "completed_at",
    "last_provisioning_failure_at",
    "credentials_revoked_at",
    "revocation_window_ends_at",
    "decommissioned_at",
    "offline_since",
}


_COMPARTMENT_FIELDS = tuple(f.name for f in fields(Compartment))
_TRANSACTION_FIELDS = tuple(f.name for f in fields(Transaction))


def _thaw(value: Any) -> Any:
    if isinstance(value, PMap):
        return {str(k): _thaw(v) for k, v in value.items()}
    # shallow: the fields are scalars and datetimes (dataclasses.asdict would deep-copy each)
    if isinstance(value, Transaction):
        return {name: getattr(value, name) for name in _TRANSACTION_FIELDS}
    if isinstance(value, Compartment):
        return {name: getattr(value, name) for name in _COMPARTMENT_FIELDS}
    return value


def snapshot_interval(every: int, remembered: int) -> int:
    """Events between two snapshots of a bank that remembers ``remembered`` transactions:
    ``every``, or ``remembered / SNAPSHOT_SPREAD`` when that is more.

    Why: a snapshot costs in proportion to what the bank remembers (each remembered
    transaction is encoded and written: about 35 ms of CPU at 10,000, plus the write), while
    replaying one event of the tail costs about 15 µs. At a fixed ``every`` a busy bank's
    snapshots cost more per event the more it remembers (a closed loop of opens lost half its
    rate within 30 s, docs/benchmarks.md); spaced by a quarter of the remembered transactions
    they cost about one ``fold`` per event whatever the size, and a load replays at most that
    many events (~40 ms at 10,000 remembered, beside ~70 ms to decode that snapshot).
    """
    return max(every, -(-remembered // SNAPSHOT_SPREAD))  # rounded up


def encode_snapshot(state: BankState) -> bytes:
    # Live presence is not part of a snapshot: a rebuilt bank starts "unknown".
    state = state.rehydrated()
    body = {
        f.name: _thaw(getattr(state, f.name))
        for f in fields(state)
        if f.name not in _DERIVED_FIELDS
    }
    return msgspec.json.encode({"format": SNAPSHOT_FORMAT, "state": body})


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def decode_snapshot(raw: bytes) -> BankState:
    """Rebuild a state; raises ``ValueError`` for a snapshot that cannot be read (unknown
    format, not JSON, wrong shape), so the caller can fall back to replaying the stream."""
    try:
        return _decode(raw)
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"unreadable snapshot: {exc!r}") from exc


def _decode(raw: bytes) -> BankState:
    document = msgspec.json.decode(raw)
    if not isinstance(document, dict) or document.get("format") != SNAPSHOT_FORMAT:
        raise ValueError("unknown snapshot format")
    body: dict[str, Any] = document["state"]
    for key in _DATETIME_FIELDS & body.keys():
        body[key] = _dt(body[key])
    compartments = {
        int(number): Compartment(**value) for number, value in body.pop("compartments").items()
    }
    transactions = {}
    for tx_id, value in body.pop("transactions").items():
        for key in ("requested_at", "expires_at", "completed_at"):
            value[key] = _dt(value[key])
        transactions[tx_id] = Transaction(**value)
    grants = {
        compartment: pmap({user: _dt(expiry) for user, expiry in users.items()})
        for compartment, users in body.pop("grants").items()
    }
    group_grants = {
        compartment: pmap({group: _dt(expiry) for group, expiry in groups.items()})
        for compartment, groups in body.pop("group_grants", {}).items()
    }
    open_alerts = {str(k): str(v) for k, v in body.pop("open_alerts", {}).items()}
    seen = {k: datetime.fromisoformat(v) for k, v in body.pop("seen_event_ids").items()}
    nonces = {k: datetime.fromisoformat(v) for k, v in body.pop("used_qr_nonces").items()}
    return BankState(
        **body,
        compartments=pmap(compartments),
        transactions=pmap(transactions),
        grants=pmap(grants),
        group_grants=pmap(group_grants),
        seen_event_ids=pmap(seen),
        used_qr_nonces=pmap(nonces),
        open_alerts=pmap(open_alerts),
    ).reindexed()
