"""The plain tables of users and sessions, and the SQL that reads and writes them.

Portable SQL (SQLite and PostgreSQL): ``?`` placeholders, TEXT/BIGINT columns. Every function
here returns a synchronous function for ``EventStore.read``/``write``, which runs it on the
store's own thread inside one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from store.base import SqlTx

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS user_sessions (
        token_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS user_sessions_expiry ON user_sessions (expires_at)",
)


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    email: str
    name: str
    role: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class SessionRow:
    user_id: str
    role: str
    expires_at: int  # unix seconds


def create_tables(tx: SqlTx) -> None:
    for ddl in DDL:
        tx.execute(ddl)


def insert_user(user: UserRow, created_at: str) -> Callable[[SqlTx], bool]:
    """False when the email is taken (the unique index decides, so no race)."""

    def write(tx: SqlTx) -> bool:
        changed = tx.execute(
            "INSERT INTO users (id, email, name, role, password_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (email) DO NOTHING",
            (user.id, user.email, user.name, user.role, user.password_hash, created_at),
        )
        return changed == 1

    return write


def user_by_email(email: str) -> Callable[[SqlTx], UserRow | None]:
    def read(tx: SqlTx) -> UserRow | None:
        rows = tx.query(
            "SELECT id, email, name, role, password_hash FROM users WHERE email = ?", (email,)
        )
        return UserRow(*rows[0]) if rows else None

    return read


def user_exists(user_id: str) -> Callable[[SqlTx], bool]:
    def read(tx: SqlTx) -> bool:
        return bool(tx.query("SELECT 1 FROM users WHERE id = ?", (user_id,)))

    return read


def update_password_hash(user_id: str, password_hash: str) -> Callable[[SqlTx], None]:
    def write(tx: SqlTx) -> None:
        tx.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))

    return write


def insert_session(
    token_hash: str, user_id: str, created_at: int, expires_at: int
) -> Callable[[SqlTx], None]:
    """Store a new session and forget the expired ones on the way."""

    def write(tx: SqlTx) -> None:
        tx.execute("DELETE FROM user_sessions WHERE expires_at <= ?", (created_at,))
        tx.execute(
            "INSERT INTO user_sessions (token_hash, user_id, created_at, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (token_hash, user_id, created_at, expires_at),
        )

    return write


def session_by_hash(token_hash: str) -> Callable[[SqlTx], SessionRow | None]:
    def read(tx: SqlTx) -> SessionRow | None:
        rows = tx.query(
            "SELECT s.user_id, u.role, s.expires_at FROM user_sessions s"
            " JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
            (token_hash,),
        )
        if not rows:
            return None
        user_id, role, expires_at = rows[0]
        return SessionRow(user_id, role, int(expires_at))

    return read


def delete_session(token_hash: str) -> Callable[[SqlTx], None]:
    def write(tx: SqlTx) -> None:
        tx.execute("DELETE FROM user_sessions WHERE token_hash = ?", (token_hash,))

    return write


# --- read models of the banks, as the app sees them -----------------------------------------


def granted_compartments(user_id: str) -> Callable[[SqlTx], list[tuple[Any, ...]]]:
    """(compartment id, number, bank id, bank name, door state, grant expiry) per grant."""

    def read(tx: SqlTx) -> list[tuple[Any, ...]]:
        return tx.query(
            "SELECT c.id, c.number, c.bank_id, b.name, c.door_state, g.expires_at"
            " FROM grants g JOIN compartments c ON c.id = g.compartment_id"
            " JOIN banks b ON b.id = c.bank_id WHERE g.user_id = ?"
            " ORDER BY b.name, c.bank_id, c.number",
            (user_id,),
        )

    return read


def grant_expiry(compartment_id: str, user_id: str) -> Callable[[SqlTx], tuple[bool, Any]]:
    """(whether a grant exists, its expiry or None)."""

    def read(tx: SqlTx) -> tuple[bool, Any]:
        rows = tx.query(
            "SELECT expires_at FROM grants WHERE compartment_id = ? AND user_id = ?",
            (compartment_id, user_id),
        )
        return (True, rows[0][0]) if rows else (False, None)

    return read


TRANSACTION_COLUMNS = (
    "transaction_id",
    "action",
    "status",
    "error_code",
    "message",
    "requested_at",
    "completed_at",
    "user_id",
    "late_result",
    "late_error_code",
    "late_received_at",
)


def transaction(transaction_id: str) -> Callable[[SqlTx], dict[str, Any] | None]:
    def read(tx: SqlTx) -> dict[str, Any] | None:
        rows = tx.query(
            f"SELECT {', '.join(TRANSACTION_COLUMNS)} FROM transactions WHERE transaction_id = ?",
            (transaction_id,),
        )
        return dict(zip(TRANSACTION_COLUMNS, rows[0], strict=True)) if rows else None

    return read
