"""The server's master key: from LOCKERD_SECRET_KEY, or created once and kept in the store."""

from __future__ import annotations

import secrets

from domain.keys import Keyring
from store.base import SqlTx, Tables

KEY_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS server_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
)


async def load_keyring(store: Tables, configured: str | None) -> Keyring:
    """Use LOCKERD_SECRET_KEY if set, else a random key created once and kept in the store."""
    if configured:
        return Keyring(configured.encode())

    def get_or_create(tx: SqlTx) -> str:
        tx.execute(KEY_TABLE_DDL)
        rows = tx.query("SELECT value FROM server_keys WHERE name = 'master'")
        if rows:
            return str(rows[0][0])
        value = secrets.token_hex(32)
        tx.execute("INSERT INTO server_keys (name, value) VALUES ('master', ?)", (value,))
        return value

    return Keyring(bytes.fromhex(await store.write(get_or_create)))
