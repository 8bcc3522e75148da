"""The audit query's SQL: filters on the ``audit_log`` index, data from the events table."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lockerd.audit.projection import stored_time
from store.base import SqlTx
from store.filters import where


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor_id: str | None = None
    bank_id: str | None = None
    type: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    before: int | None = None  # positions below this one (paging)
    limit: int = 100


@dataclass(frozen=True, slots=True)
class AuditEntry:
    position: int
    recorded_at: str
    bank_id: str | None
    type: str
    data: dict[str, Any]


def audit_entries(query: AuditFilter) -> Callable[[SqlTx], list[AuditEntry]]:
    """The entries matching every given filter, newest (highest position) first."""

    clause, params = where(
        [
            ("a.actor_id = ?", query.actor_id),
            ("a.bank_id = ?", query.bank_id),
            ("a.type = ?", query.type),
            ("a.recorded_at >= ?", None if query.since is None else stored_time(query.since)),
            ("a.recorded_at < ?", None if query.until is None else stored_time(query.until)),
            ("a.position < ?", query.before),
        ]
    )

    def read(tx: SqlTx) -> list[AuditEntry]:
        rows = tx.query(
            "SELECT a.position, a.recorded_at, a.bank_id, a.type, CAST(e.data AS TEXT)"
            " FROM audit_log a JOIN events e ON e.position = a.position"
            f"{clause} ORDER BY a.position DESC LIMIT ?",
            [*params, query.limit],
        )
        return [
            AuditEntry(int(position), str(at), bank_id, str(type_), json.loads(data))
            for position, at, bank_id, type_, data in rows
        ]

    return read
