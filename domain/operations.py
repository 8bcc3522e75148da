"""Operator changes to what is not a locker bank: users, groups, tenants and their agents.

Every change an operator makes is an event naming its actor (contract §5). A bank's events
live in the bank's stream (its id, a UUID); users, groups and tenants have no actor of their
own, so their events live in **operator streams** of the same event store, named
``<kind>:<id>`` (:func:`operator_stream`). A stream id with a colon is never a bank: bank ids
are UUIDs (``lockerd/http/ids.py``), and :func:`bank_of_stream` is how code that walks streams
tells them apart. Operator events are written in the same transaction as the plain tables
they describe (``Tables.record``), so a change and its record commit together.

Data never holds a secret: no password, no hash (a new password is ``"password": true``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from domain.actor import Actor
from domain.records import NewEvent

StreamKind = Literal["user", "group", "tenant"]
OPERATOR_STREAM_KINDS: frozenset[str] = frozenset({"user", "group", "tenant"})


def operator_stream(kind: StreamKind, entity_id: str) -> str:
    """The stream of a user's, group's or tenant's changes."""
    return f"{kind}:{entity_id}"


def bank_of_stream(stream_id: str) -> str | None:
    """The bank a stream belongs to (its id), or None for an operator stream."""
    return None if ":" in stream_id else stream_id


class OperatorEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the operator events; ``actor`` is who made the change."""

    actor: Actor
    at: datetime


class UserCreated(OperatorEvent, frozen=True, kw_only=True):
    user_id: str
    email: str
    name: str
    role: str


class UserUpdated(OperatorEvent, frozen=True, kw_only=True):
    """Only the fields that were given; ``password`` is true when a new one was set."""

    user_id: str
    name: str | None = None
    role: str | None = None
    disabled: bool | None = None
    password: bool | None = None


class UserDeleted(OperatorEvent, frozen=True, kw_only=True):
    user_id: str


class GroupCreated(OperatorEvent, frozen=True, kw_only=True):
    group_id: str
    name: str


class GroupMemberAdded(OperatorEvent, frozen=True, kw_only=True):
    group_id: str
    user_id: str


class GroupMemberRemoved(OperatorEvent, frozen=True, kw_only=True):
    group_id: str
    user_id: str


class TenantCreated(OperatorEvent, frozen=True, kw_only=True):
    tenant_id: str
    name: str


class AgentCreated(OperatorEvent, frozen=True, kw_only=True):
    tenant_id: str
    agent_id: str
    name: str
    mqtt_user: str


def to_new_event(event: OperatorEvent) -> NewEvent:
    """The event as stored: its class name as ``type``, its fields (unset ones left out)."""
    data: dict[str, Any] = msgspec.to_builtins(event)
    data.pop("type", None)
    return NewEvent(type(event).__name__, {k: v for k, v in data.items() if v is not None})
