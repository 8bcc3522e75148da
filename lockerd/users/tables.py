"""The plain tables of users and sessions, and the SQL that reads and writes them.

Portable SQL (SQLite and PostgreSQL): ``?`` placeholders, TEXT/BIGINT columns, booleans stored
as BIGINT 0/1. Every function here returns a synchronous function for ``Tables.read``/``write``,
which runs it on the store's own thread inside one transaction.

Schema changes after the first release are *migrations* (:data:`MIGRATIONS`): each is applied
once per database and recorded in ``table_migrations``, so a database created by an older
lockerd is upgraded in place at start-up and a new one goes through the same steps. Claiming a
migration (inserting its name) and applying it happen in one transaction; on PostgreSQL a
second node starting at the same moment blocks on the claimed name until the first commits and
then skips it, so two nodes never apply one migration twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from store.base import SqlTx

T = TypeVar("T")

DDL: tuple[str, ...] = (
    # the shape of the first release; later columns come from MIGRATIONS
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
    """CREATE TABLE IF NOT EXISTS table_migrations (
        name TEXT PRIMARY KEY
    )""",
)

#: (name, statements) in the order they are applied; never edit or reorder a released one.
MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "users.disabled",
        (
            "ALTER TABLE users ADD COLUMN disabled BIGINT NOT NULL DEFAULT 0",
            "CREATE INDEX IF NOT EXISTS user_sessions_user ON user_sessions (user_id)",
        ),
    ),
    (
        "session_ends",
        (
            # what every node must drop from its session cache (lockerd.users.sessions)
            """CREATE TABLE IF NOT EXISTS session_ends (
                id TEXT PRIMARY KEY,
                at BIGINT NOT NULL,
                user_id TEXT,
                token_hash TEXT,
                keep_token_hash TEXT,
                ended BIGINT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS session_ends_at ON session_ends (at)",
        ),
    ),
)

#: milliseconds a session end stays in ``session_ends`` for the other nodes to see
SESSION_END_RETENTION_MS = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    email: str
    name: str
    role: str
    password_hash: str
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """A change to sessions every node's cache must follow: sessions that ended (``ended``),
    or a user whose cached sessions must be read again (a role change)."""

    id: str
    at: int  # unix milliseconds, the writer's clock
    user_id: str | None
    token_hash: str | None
    keep_token_hash: str | None
    ended: bool


@dataclass(frozen=True, slots=True)
class SessionRow:
    user_id: str
    role: str
    expires_at: int  # unix seconds


def create_tables(tx: SqlTx) -> None:
    """Create the tables if missing and apply every migration not yet recorded."""
    for ddl in DDL:
        tx.execute(ddl)
    for name, statements in MIGRATIONS:
        claimed = tx.execute(
            "INSERT INTO table_migrations (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
            (name,),
        )
        if claimed == 1:
            for statement in statements:
                tx.execute(statement)


_USER_COLUMNS = "id, email, name, role, password_hash, disabled"


def _user(row: tuple[object, ...]) -> UserRow:
    user_id, email, name, role, password_hash, disabled = row
    return UserRow(str(user_id), str(email), str(name), str(role), str(password_hash),
                   bool(disabled))  # fmt: skip


def insert_user(user: UserRow, created_at: str) -> Callable[[SqlTx], bool]:
    """False when the email is taken (the unique index decides, so no race)."""

    def write(tx: SqlTx) -> bool:
        changed = tx.execute(
            "INSERT INTO users (id, email, name, role, password_hash, created_at, disabled)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (email) DO NOTHING",
            (
                user.id,
                user.email,
                user.name,
                user.role,
                user.password_hash,
                created_at,
                int(user.disabled),
            ),
        )
        return changed == 1

    return write


def user_by_email(email: str) -> Callable[[SqlTx], UserRow | None]:
    def read(tx: SqlTx) -> UserRow | None:
        rows = tx.query(f"SELECT {_USER_COLUMNS} FROM users WHERE email = ?", (email,))
        return _user(rows[0]) if rows else None

    return read


def user_by_id(user_id: str) -> Callable[[SqlTx], UserRow | None]:
    def read(tx: SqlTx) -> UserRow | None:
        rows = tx.query(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    return read


def user_exists(user_id: str) -> Callable[[SqlTx], bool]:
    def read(tx: SqlTx) -> bool:
        return bool(tx.query("SELECT 1 FROM users WHERE id = ?", (user_id,)))

    return read


def update_password_hash(user_id: str, password_hash: str) -> Callable[[SqlTx], None]:
    def write(tx: SqlTx) -> None:
        tx.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))

    return write


def set_disabled(user_id: str, disabled: bool) -> Callable[[SqlTx], bool]:
    """Set the flag; a disabled user also loses every session. False: no such user."""

    def write(tx: SqlTx) -> bool:
        changed = tx.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), user_id))
        if changed and disabled:
            tx.execute("DELETE FROM user_sessions WHERE user_id = ?", (user_id,))
        return changed == 1

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
    """The session, or None when there is none or its user is disabled or gone."""

    def read(tx: SqlTx) -> SessionRow | None:
        rows = tx.query(
            "SELECT s.user_id, u.role, s.expires_at FROM user_sessions s"
            " JOIN users u ON u.id = s.user_id WHERE s.token_hash = ? AND u.disabled = 0",
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


def delete_sessions_of(
    user_id: str, except_token_hash: str | None = None
) -> Callable[[SqlTx], int]:
    """End every session of the user (but the one with ``except_token_hash``); returns how many."""

    def write(tx: SqlTx) -> int:
        if except_token_hash is None:
            return tx.execute("DELETE FROM user_sessions WHERE user_id = ?", (user_id,))
        return tx.execute(
            "DELETE FROM user_sessions WHERE user_id = ? AND token_hash <> ?",
            (user_id, except_token_hash),
        )

    return write


def change_password(
    user_id: str, password_hash: str, keep_token_hash: str | None
) -> Callable[[SqlTx], bool]:
    """New password hash and the end of every other session, in one transaction."""

    def write(tx: SqlTx) -> bool:
        changed = tx.execute(
            "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
        )
        delete_sessions_of(user_id, keep_token_hash)(tx)
        return changed == 1

    return write


def recording(write: Callable[[SqlTx], T], end: SessionEnd) -> Callable[[SqlTx], T]:
    """``write`` plus the record of ``end`` for the other nodes, in the same transaction
    (rows older than :data:`SESSION_END_RETENTION_MS` are forgotten on the way)."""

    def both(tx: SqlTx) -> T:
        result = write(tx)
        tx.execute("DELETE FROM session_ends WHERE at < ?", (end.at - SESSION_END_RETENTION_MS,))
        tx.execute(
            "INSERT INTO session_ends (id, at, user_id, token_hash, keep_token_hash, ended)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (end.id, end.at, end.user_id, end.token_hash, end.keep_token_hash, int(end.ended)),
        )
        return result

    return both


def session_ends_since(at: int) -> Callable[[SqlTx], list[SessionEnd]]:
    """Every recorded session end at or after ``at`` (unix milliseconds), oldest first."""

    def read(tx: SqlTx) -> list[SessionEnd]:
        rows = tx.query(
            "SELECT id, at, user_id, token_hash, keep_token_hash, ended FROM session_ends"
            " WHERE at >= ? ORDER BY at, id",
            (at,),
        )
        return [SessionEnd(str(i), int(t), u, h, k, bool(e)) for i, t, u, h, k, e in rows]

    return read


def nothing(tx: SqlTx) -> None:
    """A write that changes nothing (to record a :class:`SessionEnd` on its own)."""


@dataclass(frozen=True, slots=True)
class UserListing:
    """A user as the admin API lists them (no secrets)."""

    id: str
    email: str
    name: str
    role: str
    disabled: bool
    created_at: str


_LISTING_COLUMNS = "id, email, name, role, disabled, created_at"


def _listing(row: tuple[object, ...]) -> UserListing:
    user_id, email, name, role, disabled, created_at = row
    return UserListing(str(user_id), str(email), str(name), str(role), bool(disabled),
                       str(created_at))  # fmt: skip


def list_users(tx: SqlTx) -> list[UserListing]:
    """Every user, oldest first (then by id, so the order is stable)."""
    rows = tx.query(f"SELECT {_LISTING_COLUMNS} FROM users ORDER BY created_at, id")
    return [_listing(row) for row in rows]


def listing_of(user_id: str) -> Callable[[SqlTx], UserListing | None]:
    def read(tx: SqlTx) -> UserListing | None:
        rows = tx.query(f"SELECT {_LISTING_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return _listing(rows[0]) if rows else None

    return read


def update_user(
    user_id: str,
    *,
    name: str | None,
    role: str | None,
    disabled: bool | None,
    password_hash: str | None,
) -> Callable[[SqlTx], bool]:
    """Change the given columns; disabling or a new password also ends every session.
    False: no such user."""

    def write(tx: SqlTx) -> bool:
        if not tx.query("SELECT 1 FROM users WHERE id = ?", (user_id,)):
            return False
        columns: list[tuple[str, object]] = []
        if name is not None:
            columns.append(("name", name))
        if role is not None:
            columns.append(("role", role))
        if disabled is not None:
            columns.append(("disabled", int(disabled)))
        if password_hash is not None:
            columns.append(("password_hash", password_hash))
        if columns:
            assignments = ", ".join(f"{column} = ?" for column, _ in columns)
            tx.execute(
                f"UPDATE users SET {assignments} WHERE id = ?",
                [*(value for _, value in columns), user_id],
            )
        if disabled or password_hash is not None:
            tx.execute("DELETE FROM user_sessions WHERE user_id = ?", (user_id,))
        return True

    return write


def delete_user(user_id: str) -> Callable[[SqlTx], bool]:
    """Delete the user and every session of theirs. False: no such user."""

    def write(tx: SqlTx) -> bool:
        tx.execute("DELETE FROM user_sessions WHERE user_id = ?", (user_id,))
        return tx.execute("DELETE FROM users WHERE id = ?", (user_id,)) == 1

    return write
