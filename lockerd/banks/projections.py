"""Read models of the locker banks, kept in SQL inside the append transaction.

Each projection applies stored events to tables it alone owns, so that
``EventStore.rebuild_projections`` can drop and refill them from the history at any time.
Data not derived from events (``last_seen``, coalesced from heartbeats) lives in a table of
its own that a rebuild leaves alone (:mod:`lockerd.banks.queries`, which also holds every read
of these tables).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from domain.config_hash import entries_hash
from store.base import Projection, SqlTx, StoredEvent

Handler = Callable[[SqlTx, StoredEvent], None]


class _TableProjection:
    """Dispatches events by type to handler functions."""

    def __init__(
        self, name: str, ddl: Sequence[str], tables: Sequence[str], handlers: dict[str, Handler]
    ) -> None:
        self.name = name
        self.ddl = ddl
        self.tables = tables
        self._handlers = handlers

    def apply(self, tx: SqlTx, event: StoredEvent) -> None:
        handler = self._handlers.get(event.type)
        if handler is not None:
            handler(tx, event)


def _bank_created(tx: SqlTx, ev: StoredEvent) -> None:
    d = ev.data
    # older histories' creation events carry no hash: the domain's own function computes it
    config_hash = d.get("config_hash") or entries_hash(
        ((c["number"], c["slave_id"], c["address"]) for c in d["compartments"]),
        d["heartbeat_interval_seconds"],
    )
    tx.execute(
        "INSERT INTO banks (id, name, location, heartbeat_interval_seconds, created_at,"
        " config_hash) VALUES (?, ?, ?, ?, ?, ?)",
        (
            d["bank_id"],
            d["name"],
            d["location"],
            d["heartbeat_interval_seconds"],
            d["created_at"],
            config_hash,
        ),
    )
    tx.executemany(
        "INSERT INTO compartments (id, bank_id, number, slave_id, address, door_state)"
        " VALUES (?, ?, ?, ?, ?, 'unknown')",
        [
            (c["id"], d["bank_id"], c["number"], c["slave_id"], c["address"])
            for c in d["compartments"]
        ],
    )


def _update_bank(columns: Mapping[str, str | None]) -> Handler:
    """A handler that copies event fields (values) to bank columns (keys); None clears."""
    assignments = ", ".join(f"{column} = ?" for column in columns)
    sql = f"UPDATE banks SET {assignments} WHERE id = ?"

    def handler(tx: SqlTx, ev: StoredEvent) -> None:
        values: list[Any] = [
            None if field is None else ev.data.get(field) for field in columns.values()
        ]
        tx.execute(sql, [*values, ev.stream_id])

    return handler


def _new_config_hash(tx: SqlTx, ev: StoredEvent) -> None:
    """A lifecycle change's new ``config_hash`` (None: the configuration did not change)."""
    new_hash = ev.data.get("config_hash")
    if new_hash is not None:
        tx.execute("UPDATE banks SET config_hash = ? WHERE id = ?", (new_hash, ev.stream_id))


def _bank_edited(tx: SqlTx, ev: StoredEvent) -> None:
    d = ev.data
    tx.execute(
        "UPDATE banks SET name = ?, location = ?, heartbeat_interval_seconds = ? WHERE id = ?",
        (d["name"], d["location"], d["heartbeat_interval_seconds"], ev.stream_id),
    )
    _new_config_hash(tx, ev)


def _compartment_added(tx: SqlTx, ev: StoredEvent) -> None:
    d = ev.data
    tx.execute(
        "INSERT INTO compartments (id, bank_id, number, slave_id, address, door_state)"
        " VALUES (?, ?, ?, ?, ?, 'unknown')",
        (d["compartment_id"], ev.stream_id, d["number"], d["slave_id"], d["address"]),
    )
    _new_config_hash(tx, ev)


def _compartment_edited(tx: SqlTx, ev: StoredEvent) -> None:
    d = ev.data
    tx.execute(
        "UPDATE compartments SET slave_id = ?, address = ? WHERE id = ?",
        (d["slave_id"], d["address"], d["compartment_id"]),
    )
    _new_config_hash(tx, ev)


def _compartment_retired(tx: SqlTx, ev: StoredEvent) -> None:
    tx.execute("DELETE FROM compartments WHERE id = ?", (ev.data["compartment_id"],))
    _new_config_hash(tx, ev)


def _door_changed(tx: SqlTx, ev: StoredEvent) -> None:
    tx.execute(
        "UPDATE compartments SET door_state = ? WHERE bank_id = ? AND number = ?",
        (ev.data["state"], ev.stream_id, ev.data["compartment_number"]),
    )


BANKS = _TableProjection(
    "banks",
    ddl=[
        """CREATE TABLE IF NOT EXISTS banks (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            location TEXT,
            heartbeat_interval_seconds BIGINT NOT NULL,
            created_at TEXT NOT NULL,
            provisioned_at TEXT,
            token_hash TEXT,
            token_expires_at TEXT,
            used_token_hash TEXT,
            provisioned_client_id TEXT,
            mqtt_user TEXT,
            credential_hash TEXT,
            config_hash TEXT,
            applied_config_hash TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS banks_token ON banks (token_hash)",
        "CREATE INDEX IF NOT EXISTS banks_mqtt_user ON banks (mqtt_user)",
        """CREATE TABLE IF NOT EXISTS compartments (
            id TEXT PRIMARY KEY,
            bank_id TEXT NOT NULL,
            number BIGINT NOT NULL,
            slave_id BIGINT NOT NULL,
            address BIGINT NOT NULL,
            door_state TEXT NOT NULL,
            UNIQUE (bank_id, number)
        )""",
    ],
    tables=["compartments", "banks"],
    handlers={
        "LockerBankCreated": _bank_created,
        "ProvisioningTokenIssued": _update_bank(
            {"token_hash": "token_hash", "token_expires_at": "expires_at", "used_token_hash": None}
        ),
        "LockerBankProvisioned": _update_bank(
            {
                "provisioned_at": "provisioned_at",
                "token_hash": None,
                "token_expires_at": None,
                "used_token_hash": "token_hash",
                "provisioned_client_id": "client_id",
                "mqtt_user": "mqtt_user",
                "credential_hash": "credential_hash",
            }
        ),
        "ConfigApplyRequested": _update_bank({"config_hash": "config_hash"}),
        "ConfigApplied": _update_bank({"applied_config_hash": "applied_config_hash"}),
        "DoorStateChanged": _door_changed,
        "LockerBankEdited": _bank_edited,
        "CompartmentAdded": _compartment_added,
        "CompartmentEdited": _compartment_edited,
        "CompartmentRetired": _compartment_retired,
        # the device credentials are revoked and the token void (the directory loads neither)
        "LockerBankDecommissioned": _update_bank(
            {
                "token_hash": None,
                "token_expires_at": None,
                "used_token_hash": None,
                "mqtt_user": None,
                "credential_hash": None,
            }
        ),
    },
)


def _grant(tx: SqlTx, ev: StoredEvent) -> None:
    tx.execute(
        "INSERT INTO grants (compartment_id, user_id, bank_id, expires_at, granted_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (compartment_id, user_id) DO UPDATE SET"
        " expires_at = excluded.expires_at, granted_at = excluded.granted_at",
        (
            ev.data["compartment_id"],
            ev.data["user_id"],
            ev.stream_id,
            ev.data["expires_at"],
            ev.data["granted_at"],
        ),
    )


def _revoke(tx: SqlTx, ev: StoredEvent) -> None:
    tx.execute(
        "DELETE FROM grants WHERE compartment_id = ? AND user_id = ?",
        (ev.data["compartment_id"], ev.data["user_id"]),
    )


def _retired_grants(tx: SqlTx, ev: StoredEvent) -> None:
    """A retired compartment's grants end with it."""
    tx.execute("DELETE FROM grants WHERE compartment_id = ?", (ev.data["compartment_id"],))


GRANTS = _TableProjection(
    "grants",
    ddl=[
        """CREATE TABLE IF NOT EXISTS grants (
            compartment_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            bank_id TEXT NOT NULL,
            expires_at TEXT,
            granted_at TEXT NOT NULL,
            PRIMARY KEY (compartment_id, user_id)
        )""",
        "CREATE INDEX IF NOT EXISTS grants_user ON grants (user_id)",
    ],
    tables=["grants"],
    handlers={
        "CompartmentAccessGranted": _grant,
        "CompartmentAccessRevoked": _revoke,
        "CompartmentRetired": _retired_grants,
    },
)


def _tx_requested(action: str) -> Handler:
    def handler(tx: SqlTx, ev: StoredEvent) -> None:
        d = ev.data
        tx.execute(
            "INSERT INTO transactions (transaction_id, bank_id, action, status, user_id,"
            " compartment_id, compartment_number, requested_at, expires_at)"
            " VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
            (
                d["transaction_id"],
                ev.stream_id,
                action,
                d.get("user_id", d.get("requested_by")),
                d.get("compartment_id"),
                d.get("compartment_number"),
                d["requested_at"],
                d["expires_at"],
            ),
        )

    return handler


def _tx_finished(status: str, at_field: str) -> Handler:
    def handler(tx: SqlTx, ev: StoredEvent) -> None:
        d = ev.data
        tx.execute(
            "UPDATE transactions SET status = ?, completed_at = ?, error_code = ?, message = ?"
            " WHERE transaction_id = ?",
            (status, d[at_field], d.get("error_code"), d.get("message"), d["transaction_id"]),
        )

    return handler


def _tx_late(tx: SqlTx, ev: StoredEvent) -> None:
    d = ev.data
    tx.execute(
        "UPDATE transactions SET late_result = ?, late_error_code = ?, late_received_at = ?"
        " WHERE transaction_id = ? AND late_result IS NULL",
        (d["result"], d["error_code"], d["received_at"], d["transaction_id"]),
    )


def _tx_dispatched(tx: SqlTx, ev: StoredEvent) -> None:
    tx.execute(
        "UPDATE transactions SET dispatched_at = ? WHERE transaction_id = ?",
        (ev.data["dispatched_at"], ev.data["transaction_id"]),
    )


TIMEOUT_MESSAGE = (
    "No answer from the locker before the command expired: whether the door opened is unknown."
)


def _tx_timeout(tx: SqlTx, ev: StoredEvent) -> None:
    tx.execute(
        "UPDATE transactions SET status = 'timeout', completed_at = ?, message = ?"
        " WHERE transaction_id = ?",
        (ev.data["timed_out_at"], TIMEOUT_MESSAGE, ev.data["transaction_id"]),
    )


TRANSACTIONS = _TableProjection(
    "transactions",
    ddl=[
        """CREATE TABLE IF NOT EXISTS transactions (
            transaction_id TEXT PRIMARY KEY,
            bank_id TEXT NOT NULL,
            action TEXT NOT NULL,
            status TEXT NOT NULL,
            user_id TEXT,
            compartment_id TEXT,
            compartment_number BIGINT,
            requested_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            dispatched_at TEXT,
            completed_at TEXT,
            error_code TEXT,
            message TEXT,
            late_result TEXT,
            late_error_code TEXT,
            late_received_at TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS transactions_pending ON transactions (status, bank_id)",
    ],
    tables=["transactions"],
    handlers={
        "CompartmentOpeningRequested": _tx_requested("open_compartment"),
        "ConfigApplyRequested": _tx_requested("apply_config"),
        "CommandDispatched": _tx_dispatched,
        "CompartmentOpened": _tx_finished("success", "received_at"),
        "ConfigApplied": _tx_finished("success", "received_at"),
        "CommandFailed": _tx_finished("error", "received_at"),
        "CommandTimedOut": _tx_timeout,
        "LateAnswerReceived": _tx_late,
    },
)


def _decommissioned(tx: SqlTx, ev: StoredEvent) -> None:
    tx.execute(
        "INSERT INTO decommissioned_banks (bank_id, decommissioned_at) VALUES (?, ?)"
        " ON CONFLICT (bank_id) DO NOTHING",
        (ev.stream_id, ev.data["at"]),
    )


def _service_changed(tx: SqlTx, ev: StoredEvent) -> None:
    d = ev.data
    if d["out_of_service"]:
        tx.execute(
            "INSERT INTO out_of_service (compartment_id, bank_id, since) VALUES (?, ?, ?)"
            " ON CONFLICT (compartment_id) DO NOTHING",
            (d["compartment_id"], ev.stream_id, d["at"]),
        )
    else:
        tx.execute("DELETE FROM out_of_service WHERE compartment_id = ?", (d["compartment_id"],))


def _service_retired(tx: SqlTx, ev: StoredEvent) -> None:
    tx.execute("DELETE FROM out_of_service WHERE compartment_id = ?", (ev.data["compartment_id"],))


#: The lifecycle's flags, in tables of their own (a row while the flag is set), so that
#: databases from before it need no new columns: they hold no lifecycle event, so their empty
#: tables are already right (no refill).
LIFECYCLE = _TableProjection(
    "lifecycle",
    ddl=[
        """CREATE TABLE IF NOT EXISTS decommissioned_banks (
            bank_id TEXT PRIMARY KEY,
            decommissioned_at TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS out_of_service (
            compartment_id TEXT PRIMARY KEY,
            bank_id TEXT NOT NULL,
            since TEXT NOT NULL
        )""",
    ],
    tables=["out_of_service", "decommissioned_banks"],
    handlers={
        "LockerBankDecommissioned": _decommissioned,
        "CompartmentEdited": _service_changed,
        "CompartmentRetired": _service_retired,
    },
)

PROJECTIONS: tuple[Projection, ...] = (BANKS, GRANTS, TRANSACTIONS, LIFECYCLE)
