"""Read models of people: who may open what (with who granted it), and groups.

Both are projections (kept in the append transaction, rebuilt by ``rebuild-projections``):

* ``access_grants``: every grant of a compartment, to a user or to a group, with
  ``granted_at`` and ``granted_by`` (the actor, JSON), from the bank streams' grant events.
  The older ``grants`` table (:mod:`lockerd.banks.projections`) still holds the user grants the
  app's start-up load reads.
* ``user_groups`` and ``group_members``, from the operator streams ``group:<id>``
  (:mod:`domain.operations`): groups are event-sourced entirely, their tables written only here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from store.base import SqlTx, StoredEvent

Handler = Callable[[SqlTx, StoredEvent], None]


class _Projection:
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


def _actor_text(data: Any) -> str | None:
    actor = data.get("actor")
    return None if actor is None else json.dumps(actor, sort_keys=True, separators=(",", ":"))


def _granted(kind: str, field: str) -> Handler:
    def handler(tx: SqlTx, ev: StoredEvent) -> None:
        d = ev.data
        subject_id = d[field]
        tx.execute(
            "INSERT INTO access_grants (compartment_id, subject, user_id, group_id, bank_id,"
            " expires_at, granted_at, granted_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (compartment_id, subject) DO UPDATE SET"
            " expires_at = excluded.expires_at, granted_at = excluded.granted_at,"
            " granted_by = excluded.granted_by",
            (
                d["compartment_id"],
                f"{kind}:{subject_id}",
                subject_id if kind == "user" else None,
                subject_id if kind == "group" else None,
                ev.stream_id,
                d["expires_at"],
                d["granted_at"],
                _actor_text(d),
            ),
        )

    return handler


def _revoked(kind: str, field: str) -> Handler:
    def handler(tx: SqlTx, ev: StoredEvent) -> None:
        tx.execute(
            "DELETE FROM access_grants WHERE compartment_id = ? AND subject = ?",
            (ev.data["compartment_id"], f"{kind}:{ev.data[field]}"),
        )

    return handler


def _retired(tx: SqlTx, ev: StoredEvent) -> None:
    """A retired compartment's grants (users' and groups') end with it."""
    tx.execute("DELETE FROM access_grants WHERE compartment_id = ?", (ev.data["compartment_id"],))


ACCESS_GRANTS = _Projection(
    "access_grants",
    ddl=[
        """CREATE TABLE IF NOT EXISTS access_grants (
            compartment_id TEXT NOT NULL,
            subject TEXT NOT NULL,
            user_id TEXT,
            group_id TEXT,
            bank_id TEXT NOT NULL,
            expires_at TEXT,
            granted_at TEXT NOT NULL,
            granted_by TEXT,
            PRIMARY KEY (compartment_id, subject)
        )""",
        "CREATE INDEX IF NOT EXISTS access_grants_user ON access_grants (user_id)",
        "CREATE INDEX IF NOT EXISTS access_grants_group ON access_grants (group_id)",
    ],
    tables=["access_grants"],
    handlers={
        "CompartmentAccessGranted": _granted("user", "user_id"),
        "CompartmentAccessRevoked": _revoked("user", "user_id"),
        "CompartmentGroupAccessGranted": _granted("group", "group_id"),
        "CompartmentGroupAccessRevoked": _revoked("group", "group_id"),
        "CompartmentRetired": _retired,
    },
)


def _group_created(tx: SqlTx, ev: StoredEvent) -> None:
    d = ev.data
    tx.execute(
        "INSERT INTO user_groups (id, name, created_at) VALUES (?, ?, ?)",
        (d["group_id"], d["name"], d["at"]),
    )


def _member_added(tx: SqlTx, ev: StoredEvent) -> None:
    tx.execute(
        "INSERT INTO group_members (group_id, user_id) VALUES (?, ?)"
        " ON CONFLICT (group_id, user_id) DO NOTHING",
        (ev.data["group_id"], ev.data["user_id"]),
    )


def _member_removed(tx: SqlTx, ev: StoredEvent) -> None:
    tx.execute(
        "DELETE FROM group_members WHERE group_id = ? AND user_id = ?",
        (ev.data["group_id"], ev.data["user_id"]),
    )


def _user_deleted(tx: SqlTx, ev: StoredEvent) -> None:
    # the deletion ends memberships by events of their own first; this keeps the table right
    # even for a history where it did not
    tx.execute("DELETE FROM group_members WHERE user_id = ?", (ev.data["user_id"],))


GROUPS = _Projection(
    "groups",
    ddl=[
        """CREATE TABLE IF NOT EXISTS user_groups (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS group_members (
            group_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            PRIMARY KEY (group_id, user_id)
        )""",
        "CREATE INDEX IF NOT EXISTS group_members_user ON group_members (user_id)",
    ],
    tables=["group_members", "user_groups"],
    handlers={
        "GroupCreated": _group_created,
        "GroupMemberAdded": _member_added,
        "GroupMemberRemoved": _member_removed,
        "UserDeleted": _user_deleted,
    },
)
