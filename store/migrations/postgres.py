"""Schema migrations of the PostgreSQL event store.

Each :class:`Migration` has a version (1, 2, 3, ... without gaps), a one-line description and the
statements that take the schema from ``version - 1`` to ``version``. They are applied in order,
inside one transaction, by :func:`store.postgres.open_postgres_store` (every time a store is
opened) and by ``lockerd migrate``; each applied version is recorded as a row of
``schema_migrations``. A database whose highest recorded version is newer than
:data:`LATEST_VERSION` is refused: an older lockerd must not write to a schema it does not know.

To change the schema, append a Migration; never edit one that has been released. Statements run
without parameters, so ``%`` and ``?`` need no escaping here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


#: First key of every advisory lock lockerd takes (the ASCII bytes of "lkdr"). The second key
#: names what is locked: the OID of a schema's ``events`` table (position assignment, see
#: docs/postgres.md) or :data:`MIGRATION_LOCK_KEY` hashed with the schema name.
ADVISORY_LOCK_NAMESPACE: Final = int.from_bytes(b"lkdr", "big")

MIGRATIONS_TABLE_DDL: Final = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version     INTEGER     PRIMARY KEY,
        description TEXT        NOT NULL,
        applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
    )
"""

MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "events, snapshots, position lock on insert",
        (
            # CACHE 1 (the default, spelled out because correctness depends on it): with a
            # per-session cache, two sessions could hand out positions out of order even while
            # taking turns under the position lock.
            """
            CREATE TABLE events (
                position    BIGINT GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
                stream_id   TEXT COLLATE "C" NOT NULL,
                version     BIGINT      NOT NULL CHECK (version >= 1),
                type        TEXT        NOT NULL,
                data        JSON        NOT NULL,
                recorded_at TIMESTAMPTZ NOT NULL,
                CONSTRAINT events_stream_version UNIQUE (stream_id, version)
            )
            """,
            """
            CREATE TABLE snapshots (
                stream_id TEXT COLLATE "C" PRIMARY KEY,
                version   BIGINT NOT NULL,
                state     BYTEA  NOT NULL
            )
            """,
            # The high-water-mark guard (docs/postgres.md): every INSERT into events, by lockerd
            # or anyone else, first takes a transaction-scoped advisory lock named after this
            # table. A statement-level BEFORE trigger fires before any row's identity value is
            # drawn, so positions are handed out only to the one transaction holding the lock,
            # and that transaction is visible to everyone before the lock passes on.
            f"""
            CREATE FUNCTION lockerd_events_position_lock() RETURNS trigger
            LANGUAGE plpgsql AS $body$
            BEGIN
                PERFORM pg_advisory_xact_lock({ADVISORY_LOCK_NAMESPACE}, TG_RELID::integer);
                RETURN NULL;
            END
            $body$
            """,
            """
            CREATE TRIGGER events_position_lock
                BEFORE INSERT ON events
                FOR EACH STATEMENT EXECUTE FUNCTION lockerd_events_position_lock()
            """,
        ),
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1].version


def _check() -> None:
    versions = [migration.version for migration in MIGRATIONS]
    if versions != list(range(1, len(MIGRATIONS) + 1)):
        raise AssertionError(f"PostgreSQL migrations must be numbered 1..n, got {versions}")


_check()
