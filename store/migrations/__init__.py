"""Versioned schema migrations of the event store backends that keep a migrations table.

SQLite keeps its schema version in ``PRAGMA user_version`` (see ``store/sqlite.py``); PostgreSQL
records every applied migration in a ``schema_migrations`` table (see
:mod:`store.migrations.postgres`).
"""
