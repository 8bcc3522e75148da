"""The server's master key: from LOCKERD_SECRET_KEY, or created once and kept in the store."""

from __future__ import annotations

import secrets

from domain.keys import Keyring
from store.base import SqlTx, Tables

KEY_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS server_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
)


def create_key_table(tx: SqlTx) -> None:
    """The key's table, created with the other plain tables (one node at a time)."""
    tx.execute(KEY_TABLE_DDL)


async def load_keyring(store: Tables, configured: str | None) -> Keyring:
    """Use LOCKERD_SECRET_KEY if set, else a random key created once and kept in the store.

    Every process on one database gets the same key, also when several create it at once.
    Needs the table of :func:`create_key_table`.
    """
    if configured:
        return Keyring(configured.encode())

    def get_or_create(tx: SqlTx) -> str:
        # Two nodes starting at once may both find no key: the insert that loses keeps the
        # winner's (ON CONFLICT waits for it to commit), and the read below returns that one.
        tx.execute(
            "INSERT INTO server_keys (name, value) VALUES ('master', ?) "
            "ON CONFLICT (name) DO NOTHING",
            (secrets.token_hex(32),),
        )
        return str(tx.query("SELECT value FROM server_keys WHERE name = 'master'")[0][0])

    return Keyring(bytes.fromhex(await store.write(get_or_create)))
