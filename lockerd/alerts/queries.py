"""Every read of the alerts read model (``lockerd.alerts.projection``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domain.alerts import SELF_RESOLVING
from lockerd.alerts.projection import ALERT_COLUMNS, alert_json
from store.base import SqlTx


@dataclass(frozen=True, slots=True)
class AlertFilter:
    state: str | None = None
    bank_id: str | None = None
    limit: int = 1000


def alerts(query: AlertFilter) -> Callable[[SqlTx], list[dict[str, Any]]]:
    """Newest first (by the raising event's position)."""

    def read(tx: SqlTx) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        if query.state is not None:
            where.append("state = ?")
            params.append(query.state)
        if query.bank_id is not None:
            where.append("bank_id = ?")
            params.append(query.bank_id)
        sql = f"SELECT {ALERT_COLUMNS} FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY position DESC LIMIT ?"
        return [alert_json(row) for row in tx.query(sql, [*params, query.limit])]

    return read


def alert(alert_id: str) -> Callable[[SqlTx], dict[str, Any] | None]:
    def read(tx: SqlTx) -> dict[str, Any] | None:
        rows = tx.query(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?", (alert_id,))
        return alert_json(rows[0]) if rows else None

    return read


def active(tx: SqlTx) -> list[dict[str, Any]]:
    """Every active alert, oldest first (the live board's start, ``lockerd.alerts.live``):
    open, or acknowledged while it may still resolve by itself."""
    resolving = sorted(SELF_RESOLVING)
    marks = ", ".join("?" for _ in resolving)
    rows = tx.query(
        f"SELECT {ALERT_COLUMNS} FROM alerts WHERE state = 'open'"
        f" OR (state = 'acknowledged' AND type IN ({marks})) ORDER BY position",
        resolving,
    )
    return [alert_json(row) for row in rows]


def banks_in_outage(tx: SqlTx) -> list[str]:
    """Banks offline whose offline alert is not raised yet: their actors must run to raise it."""
    return [row[0] for row in tx.query("SELECT bank_id FROM alert_offline_watch ORDER BY bank_id")]
