"""Groups of users, and what reads the grants of a compartment.

Groups are event-sourced in operator streams (``group:<id>``, :mod:`domain.operations`): a
change is checked and recorded in one transaction (``Tables.record``); the ``user_groups`` and
``group_members`` tables are its projection (:mod:`lockerd.users.projections`). The recorded
events are then handed to this node's stored-event listeners (the live model, and with a
cluster the event feed, which announces them; the other nodes' feeds hand them to theirs), so
a member may open at once and the app's compartment list follows joins and leaves.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from actors.ports import StoredEventListener
from domain import operations as ops
from domain.actor import Actor
from domain.records import NewEvent, StoredEvent
from domain.wiretime import iso_from_stored
from store.base import SqlTx, Tables

log = structlog.get_logger("lockerd.users.groups")


class NoSuchGroup(Exception):
    pass


class NoSuchUser(Exception):
    pass


class NotAMember(Exception):
    pass


class GroupNameTaken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class GroupView:
    id: str
    name: str
    members: list[str]


class GroupService:
    def __init__(
        self,
        store: Tables,
        listeners: Sequence[StoredEventListener],
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.listeners = tuple(listeners)
        self.clock = clock

    async def create(self, name: str, *, actor: Actor) -> str:
        """A new group; raises :class:`GroupNameTaken` (names are unique, case-insensitive)."""
        group_id = str(uuid.uuid4())
        event = ops.GroupCreated(actor=actor, at=self.clock(), group_id=group_id, name=name)

        def write(tx: SqlTx) -> tuple[None, list[NewEvent]]:
            if tx.query("SELECT 1 FROM user_groups WHERE lower(name) = lower(?)", (name,)):
                raise GroupNameTaken(name)
            return None, [ops.to_new_event(event)]

        await self._record(group_id, write)
        return group_id

    async def add_member(self, group_id: str, user_id: str, *, actor: Actor) -> None:
        """Make the user a member (already one: nothing changes); raises :class:`NoSuchGroup`,
        :class:`NoSuchUser`."""
        event = ops.GroupMemberAdded(actor=actor, at=self.clock(), group_id=group_id,
                                     user_id=user_id)  # fmt: skip

        def write(tx: SqlTx) -> tuple[None, list[NewEvent]]:
            _require_group(tx, group_id)
            if not tx.query("SELECT 1 FROM users WHERE id = ?", (user_id,)):
                raise NoSuchUser(user_id)
            if _is_member(tx, group_id, user_id):
                return None, []
            return None, [ops.to_new_event(event)]

        await self._record(group_id, write)

    async def remove_member(self, group_id: str, user_id: str, *, actor: Actor) -> None:
        """End a membership; raises :class:`NoSuchGroup`, :class:`NotAMember`."""
        event = ops.GroupMemberRemoved(actor=actor, at=self.clock(), group_id=group_id,
                                       user_id=user_id)  # fmt: skip

        def write(tx: SqlTx) -> tuple[None, list[NewEvent]]:
            _require_group(tx, group_id)
            if not _is_member(tx, group_id, user_id):
                raise NotAMember(user_id)
            return None, [ops.to_new_event(event)]

        await self._record(group_id, write)

    async def leave_every_group(self, user_id: str, *, actor: Actor) -> int:
        """End every membership of the user (before the user is deleted); returns how many."""
        groups = await self.store.read(groups_of(user_id))
        for group_id in groups:
            try:
                await self.remove_member(group_id, user_id, actor=actor)
            except NotAMember:  # left meanwhile
                continue
        return len(groups)

    async def exists(self, group_id: str) -> bool:
        return await self.store.read(
            lambda tx: bool(tx.query("SELECT 1 FROM user_groups WHERE id = ?", (group_id,)))
        )

    async def all(self) -> list[GroupView]:
        return await self.store.read(list_groups)

    async def _record(
        self, group_id: str, fn: Callable[[SqlTx], tuple[None, Sequence[NewEvent]]]
    ) -> None:
        stream_id = ops.operator_stream("group", group_id)
        _, stored = await self.store.record(stream_id, fn)
        if stored:
            self._tell(stream_id, stored)

    def _tell(self, stream_id: str, stored: list[StoredEvent]) -> None:
        for listener in self.listeners:
            try:
                listener(stream_id, stored)
            except Exception:  # one broken listener must not stop the others
                log.exception("listener_failed", stream_id=stream_id)


def _require_group(tx: SqlTx, group_id: str) -> None:
    if not tx.query("SELECT 1 FROM user_groups WHERE id = ?", (group_id,)):
        raise NoSuchGroup(group_id)


def _is_member(tx: SqlTx, group_id: str, user_id: str) -> bool:
    return bool(
        tx.query(
            "SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?", (group_id, user_id)
        )
    )


def list_groups(tx: SqlTx) -> list[GroupView]:
    """Every group, by name, with its members' ids (sorted)."""
    members: dict[str, list[str]] = {}
    for group_id, user_id in tx.query(
        "SELECT group_id, user_id FROM group_members ORDER BY group_id, user_id"
    ):
        members.setdefault(str(group_id), []).append(str(user_id))
    return [
        GroupView(str(group_id), str(name), members.get(str(group_id), []))
        for group_id, name in tx.query("SELECT id, name FROM user_groups ORDER BY name, id")
    ]


def groups_of(user_id: str) -> Callable[[SqlTx], list[str]]:
    def read(tx: SqlTx) -> list[str]:
        rows = tx.query("SELECT group_id FROM group_members WHERE user_id = ?", (user_id,))
        return [str(row[0]) for row in rows]

    return read


def group_start(tx: SqlTx) -> tuple[list[tuple[str, str, str | None]], list[tuple[str, str]]]:
    """What the live model loads at start-up: group grants and memberships."""
    grants = [
        (str(c), str(g), None if e is None else str(e))
        for c, g, e in tx.query(
            "SELECT compartment_id, group_id, expires_at FROM access_grants"
            " WHERE group_id IS NOT NULL"
        )
    ]
    members = [(str(g), str(u)) for g, u in tx.query("SELECT group_id, user_id FROM group_members")]
    return grants, members


@dataclass(frozen=True, slots=True)
class GrantView:
    user_id: str | None
    group_id: str | None
    expires_at: str | None
    granted_at: str
    granted_by: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        subject: dict[str, Any] = (
            {"user_id": self.user_id} if self.user_id is not None else {"group_id": self.group_id}
        )
        return {
            **subject,
            "expires_at": iso_from_stored(self.expires_at),
            "granted_at": iso_from_stored(self.granted_at),
            "granted_by": self.granted_by,
        }


def grants_of_compartment(compartment_id: str) -> Callable[[SqlTx], list[GrantView]]:
    """Every grant of the compartment (users and groups), oldest first."""

    def read(tx: SqlTx) -> list[GrantView]:
        rows = tx.query(
            "SELECT user_id, group_id, expires_at, granted_at, granted_by FROM access_grants"
            " WHERE compartment_id = ? ORDER BY granted_at, subject",
            (compartment_id,),
        )
        return [
            GrantView(u, g, e, str(at), None if by is None else json.loads(by))
            for u, g, e, at, by in rows
        ]

    return read


def grants_of_user(user_id: str) -> Callable[[SqlTx], list[tuple[str, str]]]:
    """(bank id, compartment id) of every grant the user holds themselves."""

    def read(tx: SqlTx) -> list[tuple[str, str]]:
        rows = tx.query(
            "SELECT bank_id, compartment_id FROM access_grants WHERE user_id = ?", (user_id,)
        )
        return [(str(b), str(c)) for b, c in rows]

    return read
