"""The alerts read model and its webhook outbox, kept in the append transaction.

``alerts`` holds one row per alert (domain/alerts.py says which events raise, acknowledge and
resolve them); the raising event's position orders them (newest first) and its stream version
gives the id. ``alert_offline_watch`` lists the banks in an outage whose alert is not raised
yet, so that a restarted service wakes their actors (the deadline lives in the bank's state).

``alert_outbox`` is written in the same transaction as the alert: one row per change that is
sent to ``LOCKERD_ALERT_WEBHOOK_URL`` (raised, acknowledged, resolved), keyed by the event's
position and the alert id. It is *not* one of the projection's tables: a rebuild drops and
refills ``alerts`` but leaves the outbox alone, and the rows a rebuild writes again already
exist (``ON CONFLICT DO NOTHING``), so a rebuild never sends an alert twice. Delivered rows stay
(marked ``delivered_at``) for that reason. :mod:`lockerd.alerts.webhook` sends them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from domain.alerts import ACKNOWLEDGED_BY, RAISED_BY, RESOLVED_BY, alert_id
from domain.wiretime import iso
from store.base import SqlTx, StoredEvent

ALERT_COLUMNS: Final = "id, bank_id, type, raised_at, state, data"

_DDL: Final = (
    """CREATE TABLE IF NOT EXISTS alerts (
            id TEXT PRIMARY KEY,
            position BIGINT NOT NULL,
            bank_id TEXT NOT NULL,
            type TEXT NOT NULL,
            raised_at TEXT NOT NULL,
            state TEXT NOT NULL,
            data TEXT NOT NULL,
            acknowledged_at TEXT,
            acknowledged_by TEXT,
            resolved_at TEXT
        )""",
    "CREATE INDEX IF NOT EXISTS alerts_by_state ON alerts (state, position)",
    "CREATE INDEX IF NOT EXISTS alerts_by_bank ON alerts (bank_id, type, state)",
    """CREATE TABLE IF NOT EXISTS alert_offline_watch (
            bank_id TEXT PRIMARY KEY,
            since TEXT NOT NULL
        )""",
    # not among the projection's tables: a rebuild leaves it (see the module doc)
    """CREATE TABLE IF NOT EXISTS alert_outbox (
            delivery_id TEXT PRIMARY KEY,
            position BIGINT NOT NULL,
            alert_id TEXT NOT NULL,
            payload TEXT NOT NULL,
            attempts BIGINT NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until DOUBLE PRECISION,
            delivered_at DOUBLE PRECISION,
            outcome TEXT,
            last_error TEXT
        )""",
    "CREATE INDEX IF NOT EXISTS alert_outbox_due ON alert_outbox (delivered_at, next_attempt_at)",
)


def alert_json(row: Sequence[Any]) -> dict[str, Any]:
    """An ``alerts`` row (:data:`ALERT_COLUMNS`) in the contract's form."""
    the_id, bank_id, type_, raised_at, state, data = row
    return {
        "id": the_id,
        "bank_id": bank_id,
        "type": type_,
        "raised_at": raised_at,
        "state": state,
        "data": json.loads(data),
    }


def _enqueue(tx: SqlTx, event: StoredEvent, alert: dict[str, Any]) -> None:
    tx.execute(
        "INSERT INTO alert_outbox (delivery_id, position, alert_id, payload)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (delivery_id) DO NOTHING",
        (
            f"{event.position}:{alert['id']}",
            event.position,
            alert["id"],
            json.dumps({"alert": alert}, separators=(",", ":")),
        ),
    )


def _one(tx: SqlTx, the_id: str) -> dict[str, Any]:
    (row,) = tx.query(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?", (the_id,))
    return alert_json(row)


def _raise(tx: SqlTx, event: StoredEvent, alert_type: str) -> None:
    data = dict(event.data)
    the_id = alert_id(event.stream_id, event.version)
    changed = tx.execute(
        "INSERT INTO alerts (id, position, bank_id, type, raised_at, state, data)"
        " VALUES (?, ?, ?, ?, ?, 'open', ?) ON CONFLICT (id) DO NOTHING",
        (
            the_id,
            event.position,
            event.stream_id,
            alert_type,
            iso(event.recorded_at),
            json.dumps(data, separators=(",", ":")),
        ),
    )
    if changed:
        _enqueue(tx, event, _one(tx, the_id))


def _acknowledge(tx: SqlTx, event: StoredEvent) -> None:
    the_id = event.data["alert_id"]
    changed = tx.execute(
        "UPDATE alerts SET state = 'acknowledged', acknowledged_at = ?, acknowledged_by = ?"
        " WHERE id = ? AND bank_id = ? AND state = 'open'",
        (
            iso(event.recorded_at),
            json.dumps(event.data.get("actor")),
            the_id,
            event.stream_id,
        ),
    )
    if changed:
        _enqueue(tx, event, _one(tx, the_id))


def _resolve(tx: SqlTx, event: StoredEvent, alert_type: str) -> None:
    ids = [
        row[0]
        for row in tx.query(
            "SELECT id FROM alerts WHERE bank_id = ? AND type = ? AND state <> 'resolved'"
            " ORDER BY position",
            (event.stream_id, alert_type),
        )
    ]
    for the_id in ids:
        tx.execute(
            "UPDATE alerts SET state = 'resolved', resolved_at = ? WHERE id = ?",
            (iso(event.recorded_at), the_id),
        )
        _enqueue(tx, event, _one(tx, the_id))


#: the events that end a bank's outage watch: it is back, its alert is raised, or it is gone
_OUTAGE_ENDS: Final = frozenset(
    {"LockerBankCameOnline", "BankOfflineTooLong", "LockerBankDecommissioned"}
)
_WATCHED: Final = _OUTAGE_ENDS | {"LockerBankWentOffline"}


def _watch_outage(tx: SqlTx, event: StoredEvent) -> None:
    if event.type == "LockerBankWentOffline":
        tx.execute(
            "INSERT INTO alert_offline_watch (bank_id, since) VALUES (?, ?)"
            " ON CONFLICT (bank_id) DO NOTHING",
            (event.stream_id, iso(event.recorded_at)),
        )
    elif event.type in _OUTAGE_ENDS:
        tx.execute("DELETE FROM alert_offline_watch WHERE bank_id = ?", (event.stream_id,))


def settle_history(tx: SqlTx) -> None:
    """Mark every undelivered webhook delivery done without sending it (``outcome`` =
    ``history``): for the first fill of the alerts from an existing history, whose alerts an
    operator has long since dealt with."""
    tx.execute(
        "UPDATE alert_outbox SET delivered_at = 0, outcome = 'history' WHERE delivered_at IS NULL"
    )


class AlertsProjection:
    """Alerts from bank events (operator streams never raise one)."""

    def __init__(self) -> None:
        self.name = "alerts"
        self.ddl: Sequence[str] = _DDL
        self.tables: Sequence[str] = ("alerts", "alert_offline_watch")

    def apply(self, tx: SqlTx, event: StoredEvent) -> None:
        kind = event.type
        if kind in _WATCHED:
            _watch_outage(tx, event)
        raised = RAISED_BY.get(kind)
        if raised is not None:
            _raise(tx, event, raised)
        elif kind == ACKNOWLEDGED_BY:
            _acknowledge(tx, event)
        else:
            resolved = RESOLVED_BY.get(kind)
            if resolved is not None:
                _resolve(tx, event, resolved)


ALERTS = AlertsProjection()
