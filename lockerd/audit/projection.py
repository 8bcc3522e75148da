"""The audit log's index: one row per stored event, bank and operator streams alike.

``audit_log`` is a projection (kept in the append transaction, rebuilt by
``rebuild-projections``) that indexes what the audit query filters on: the actor's audit id
(``data.actor``: a user id, or ``admin_token``), the bank (None for operator streams, see
:func:`domain.operations.bank_of_stream`), the type and the time. The event's data is not
copied: the query joins the events table by position, so the log costs a narrow row per event.

``recorded_at`` is kept as fixed-width UTC text (six fractional digits, ``Z``), which sorts as
time on both backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from domain.actor import ADMIN_TOKEN_ACTOR_ID
from domain.operations import bank_of_stream
from store.base import SqlTx, StoredEvent


def stored_time(moment: datetime) -> str:
    """The ``recorded_at`` form of the audit log (and of its ``since``/``until`` bounds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def actor_id(data: Any) -> str | None:
    """The audit id of ``data.actor`` (contract §5), None when the event names none."""
    actor = data.get("actor")
    if not isinstance(actor, dict):
        return None
    if actor.get("kind") == "user" and isinstance(actor.get("id"), str):
        return str(actor["id"])
    if actor.get("kind") == "admin_token":
        return ADMIN_TOKEN_ACTOR_ID
    return None


_DDL: Final = (
    """CREATE TABLE IF NOT EXISTS audit_log (
            position BIGINT PRIMARY KEY,
            recorded_at TEXT NOT NULL,
            bank_id TEXT,
            type TEXT NOT NULL,
            actor_id TEXT
        )""",
    "CREATE INDEX IF NOT EXISTS audit_log_actor ON audit_log (actor_id, position)",
    "CREATE INDEX IF NOT EXISTS audit_log_bank ON audit_log (bank_id, position)",
    "CREATE INDEX IF NOT EXISTS audit_log_type ON audit_log (type, position)",
    "CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (recorded_at)",
)


class AuditProjection:
    def __init__(self) -> None:
        self.name = "audit_log"
        self.ddl: Sequence[str] = _DDL
        self.tables: Sequence[str] = ("audit_log",)

    def apply(self, tx: SqlTx, event: StoredEvent) -> None:
        tx.execute(
            "INSERT INTO audit_log (position, recorded_at, bank_id, type, actor_id)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                event.position,
                stored_time(event.recorded_at),
                bank_of_stream(event.stream_id),
                event.type,
                actor_id(event.data),
            ),
        )


AUDIT = AuditProjection()
