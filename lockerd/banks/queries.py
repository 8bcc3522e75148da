"""Every read of the banks' read models, and the one plain table beside them (``bank_last_seen``).

The tables are created and kept by :mod:`lockerd.banks.projections`; this module is the only
other place that names them. Each function returns a synchronous function for
:meth:`store.base.Tables.read` / ``write``, which runs it on the store's thread in one
transaction. Portable SQL (SQLite and PostgreSQL): ``?`` placeholders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.wiretime import iso_from_stored
from store.base import SqlTx

LAST_SEEN_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS bank_last_seen (
        bank_id TEXT PRIMARY KEY,
        last_seen TEXT NOT NULL
    )""",
)


def create_plain_tables(tx: SqlTx) -> None:
    """Tables of this capability that are not projections (a rebuild leaves them alone)."""
    for ddl in LAST_SEEN_DDL:
        tx.execute(ddl)


# --- banks, as the admin API shows them ----------------------------------------------------

_BANK_COLUMNS = (
    "b.id, b.name, b.location, b.heartbeat_interval_seconds, b.provisioned_at, b.config_hash,"
    " b.applied_config_hash, s.last_seen, d.decommissioned_at"
)
_BANK_FROM = (
    "banks b LEFT JOIN bank_last_seen s ON s.bank_id = b.id"
    " LEFT JOIN decommissioned_banks d ON d.bank_id = b.id"
)


def compartment_entry(row: Sequence[Any]) -> dict[str, Any]:
    """A compartment as admins see it, from ``(id, number, slave_id, address, door_state,
    out_of_service since or None)``."""
    cid, number, slave_id, address, door, out_since = row
    return {
        "id": cid,
        "number": number,
        "slave_id": slave_id,
        "address": address,
        "door_state": door,
        "out_of_service": out_since is not None,
    }


_COMPARTMENT_SELECT = (
    "SELECT c.bank_id, c.id, c.number, c.slave_id, c.address, c.door_state, o.since"
    " FROM compartments c LEFT JOIN out_of_service o ON o.compartment_id = c.id"
)


def banks(bank_id: str | None = None) -> Callable[[SqlTx], list[dict[str, Any]]]:
    """Every bank (or the one with ``bank_id``) with its compartments, oldest first.

    ``presence`` is ``unknown`` here: it is live knowledge, filled in from the fleet view.
    Timestamps are in the wire form. Retired compartments are gone; decommissioned banks are
    listed (``"decommissioned": true``): their history stays readable.
    """

    def read(tx: SqlTx) -> list[dict[str, Any]]:
        where, params = ("WHERE b.id = ?", (bank_id,)) if bank_id else ("", ())
        rows = tx.query(
            f"SELECT {_BANK_COLUMNS} FROM {_BANK_FROM} {where} ORDER BY b.created_at, b.id",
            params,
        )
        compartment_where = "WHERE c.bank_id = ?" if bank_id else ""
        compartment_rows = tx.query(
            f"{_COMPARTMENT_SELECT} {compartment_where} ORDER BY c.bank_id, c.number", params
        )
        by_bank: dict[str, list[dict[str, Any]]] = {}
        for owner, *compartment in compartment_rows:
            by_bank.setdefault(owner, []).append(compartment_entry(compartment))
        return [
            {
                "id": bid,
                "name": name,
                "location": location,
                "heartbeat_interval_seconds": int(interval),
                "provisioned_at": iso_from_stored(provisioned_at),
                "presence": "unknown",
                "last_seen": iso_from_stored(last_seen),
                "config_hash": config_hash,
                "applied_config_hash": applied,
                "decommissioned": decommissioned_at is not None,
                "compartments": by_bank.get(bid, []),
            }
            for (
                bid,
                name,
                location,
                interval,
                provisioned_at,
                config_hash,
                applied,
                last_seen,
                decommissioned_at,
            ) in rows
        ]

    return read


def compartment(compartment_id: str) -> Callable[[SqlTx], dict[str, Any] | None]:
    """One compartment as in :func:`banks` (None: no such one, or retired)."""

    def read(tx: SqlTx) -> dict[str, Any] | None:
        rows = tx.query(f"{_COMPARTMENT_SELECT} WHERE c.id = ?", (compartment_id,))
        return compartment_entry(rows[0][1:]) if rows else None

    return read


# --- what the in-memory directory and the fleet view start from ----------------------------


@dataclass(frozen=True, slots=True)
class BankRow:
    bank_id: str
    name: str
    location: str | None
    heartbeat_interval_seconds: int
    token_hash: str | None
    used_token_hash: str | None
    mqtt_user: str | None
    credential_hash: str | None
    last_seen: datetime | None
    decommissioned: bool = False


@dataclass(frozen=True, slots=True)
class CompartmentRow:
    compartment_id: str
    bank_id: str
    number: int


@dataclass(frozen=True, slots=True)
class StartingPoint:
    """What a starting service loads: banks, compartments, the banks with pending commands."""

    banks: list[BankRow]
    compartments: list[CompartmentRow]
    banks_with_pending_commands: list[str]


def starting_point(tx: SqlTx) -> StartingPoint:
    banks_rows = tx.query(
        "SELECT b.id, b.name, b.location, b.heartbeat_interval_seconds, b.token_hash,"
        " b.used_token_hash, b.mqtt_user, b.credential_hash, s.last_seen, d.decommissioned_at"
        f" FROM {_BANK_FROM}"
    )
    compartments = tx.query("SELECT id, bank_id, number FROM compartments")
    pending = tx.query(
        "SELECT DISTINCT bank_id FROM transactions WHERE status = 'pending' ORDER BY bank_id"
    )
    return StartingPoint(
        banks=[
            BankRow(
                bank_id,
                name,
                location,
                int(interval),
                token,
                used,
                user,
                credential,
                datetime.fromisoformat(last_seen) if last_seen else None,
                decommissioned is not None,
            )
            for (
                bank_id,
                name,
                location,
                interval,
                token,
                used,
                user,
                credential,
                last_seen,
                decommissioned,
            ) in banks_rows
        ],
        compartments=[
            CompartmentRow(cid, bank_id, int(number)) for cid, bank_id, number in compartments
        ],
        banks_with_pending_commands=[bank_id for (bank_id,) in pending],
    )


def save_last_seen(rows: Sequence[tuple[str, datetime]]) -> Callable[[SqlTx], None]:
    """Upsert ``(bank id, last seen)`` pairs."""
    values = [(bank_id, moment.isoformat()) for bank_id, moment in rows]

    def write(tx: SqlTx) -> None:
        tx.executemany(
            "INSERT INTO bank_last_seen (bank_id, last_seen) VALUES (?, ?)"
            " ON CONFLICT (bank_id) DO UPDATE SET last_seen = excluded.last_seen",
            values,
        )

    return write


# --- grants and compartments, as the app sees them -----------------------------------------


def granted_compartments(user_id: str) -> Callable[[SqlTx], list[tuple[Any, ...]]]:
    """(compartment id, number, bank id, bank name, door state, grant expiry, out of service)
    per grant; none of a decommissioned bank (retired compartments have no grants).

    The store's answer to what the app reads from :mod:`lockerd.banks.live` (the tests hold
    the two to the same result).
    """

    def read(tx: SqlTx) -> list[tuple[Any, ...]]:
        return tx.query(
            "SELECT c.id, c.number, c.bank_id, b.name, c.door_state, g.expires_at,"
            " o.since IS NOT NULL"
            " FROM grants g JOIN compartments c ON c.id = g.compartment_id"
            " JOIN banks b ON b.id = c.bank_id"
            " LEFT JOIN out_of_service o ON o.compartment_id = c.id"
            " WHERE g.user_id = ?"
            " AND NOT EXISTS (SELECT 1 FROM decommissioned_banks d WHERE d.bank_id = c.bank_id)"
            " ORDER BY b.name, c.bank_id, c.number",
            (user_id,),
        )

    return read


# --- transactions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransactionView:
    """A transaction as ``GET /api/transactions/{id}`` shows it, plus who asked."""

    transaction_id: str
    action: str
    status: str
    error_code: str | None
    message: str | None
    requested_at: str | None
    completed_at: str | None
    user_id: str | None
    late_answer: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "action": self.action,
            "status": self.status,
            "error_code": self.error_code,
            "message": self.message,
            "requested_at": self.requested_at,
            "completed_at": self.completed_at,
            "late_answer": self.late_answer,
        }


_TRANSACTION_COLUMNS = (
    "transaction_id, action, status, error_code, message, requested_at, completed_at, user_id,"
    " late_result, late_error_code, late_received_at"
)


def transaction(transaction_id: str) -> Callable[[SqlTx], TransactionView | None]:
    def read(tx: SqlTx) -> TransactionView | None:
        rows = tx.query(
            f"SELECT {_TRANSACTION_COLUMNS} FROM transactions WHERE transaction_id = ?",
            (transaction_id,),
        )
        return _transaction_view(rows[0]) if rows else None

    return read


def _transaction_view(row: tuple[Any, ...]) -> TransactionView:
    (tid, action, status, error_code, message, requested_at, completed_at, user_id,
     late_result, late_error_code, late_received_at) = row  # fmt: skip
    late = None
    if late_result is not None:
        late = {
            "result": late_result,
            "error_code": late_error_code,
            "received_at": iso_from_stored(late_received_at),
        }
    return TransactionView(
        transaction_id=tid,
        action=action,
        status=status,
        error_code=error_code,
        message=message,
        requested_at=iso_from_stored(requested_at),
        completed_at=iso_from_stored(completed_at),
        user_id=user_id,
        late_answer=late,
    )


# --- what the in-memory live read model starts from ------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveStart:
    """The read models as :class:`lockerd.banks.live.LiveModel` loads them at start-up.

    ``transactions``: every pending one plus the ``recent`` most recently requested others.
    ``grants``: (compartment id, user id, bank id, expires_at as stored or None).
    ``compartments``: (compartment id, bank id, number, door state, out of service).
    ``banks``: (id, name, decommissioned).
    """

    transactions: list[TransactionView]
    grants: list[tuple[str, str, str, str | None]]
    compartments: list[tuple[str, str, int, str, bool]]
    banks: list[tuple[str, str, bool]]


def live_start(recent: int) -> Callable[[SqlTx], LiveStart]:
    def read(tx: SqlTx) -> LiveStart:
        pending = tx.query(
            f"SELECT {_TRANSACTION_COLUMNS} FROM transactions WHERE status = 'pending'"
        )
        finished = tx.query(
            f"SELECT {_TRANSACTION_COLUMNS} FROM transactions WHERE status <> 'pending'"
            " ORDER BY requested_at DESC, transaction_id DESC LIMIT ?",
            (recent,),
        )
        grants = tx.query("SELECT compartment_id, user_id, bank_id, expires_at FROM grants")
        compartments = tx.query(
            "SELECT c.id, c.bank_id, c.number, c.door_state, o.since FROM compartments c"
            " LEFT JOIN out_of_service o ON o.compartment_id = c.id"
        )
        banks = tx.query(
            "SELECT b.id, b.name, d.decommissioned_at FROM banks b"
            " LEFT JOIN decommissioned_banks d ON d.bank_id = b.id"
        )
        return LiveStart(
            transactions=[_transaction_view(row) for row in [*reversed(finished), *pending]],
            grants=[(c, u, b, None if x is None else str(x)) for c, u, b, x in grants],
            compartments=[(c, b, int(n), str(d), o is not None) for c, b, n, d, o in compartments],
            banks=[(b, str(n), d is not None) for b, n, d in banks],
        )

    return read


__all__ = [
    "BankRow",
    "CompartmentRow",
    "LiveStart",
    "StartingPoint",
    "TransactionView",
    "banks",
    "compartment",
    "compartment_entry",
    "create_plain_tables",
    "granted_compartments",
    "live_start",
    "save_last_seen",
    "starting_point",
    "transaction",
]
