"""The plain tables of users and sessions, and the SQL that reads and writes them.

Portable SQL (SQLite and PostgreSQL): ``?`` placeholders, TEXT/BIGINT columns. Every function
here returns a synchronous function for ``Tables.read``/``write``, which runs it on the
store's own thread inside one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
