"""The contract's MQTT topics: parsing inbound topics and building outbound ones.

Parsing is a plain ``str.split`` plus checks: it runs for every inbound message, and a full
``uuid.UUID()`` parse would cost more than the JSON decode (research/limits.md §3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

TopicKind = Literal["register", "state", "response", "event", "metric"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SERVER_STATUS = "server/status"

SUBSCRIPTIONS: tuple[tuple[str, int], ...] = (
    ("locker/register/+", 1),
    ("locker/+/state", 1),
    ("locker/+/response", 1),
    ("locker/+/status", 1),
    ("locker/+/event", 1),
    ("metrics/#", 1),
)

#: With more than one node: bank topics are subscribed per bank by the bank's owner, and
#: registrations and metrics by one node at a time (lockerd.cluster.node.FLEET_TOPICS); what
#: every node subscribes to from the start is ``server/status``, to put ``online`` back after
#: another node's last will.
CLUSTER_SUBSCRIPTIONS: tuple[tuple[str, int], ...] = ((SERVER_STATUS, 1),)


def is_uuid(text: str) -> bool:
    return _UUID.fullmatch(text) is not None


def is_plain_level(text: str) -> bool:
    """A non-empty topic level with no wildcard or separator in it."""
    return bool(text) and not any(ch in text for ch in "+#/\x00")


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    kind: TopicKind
    key: str  # bank id, provisioning token, or tenant id
    agent_id: str = ""
    metric: str = ""
    deprecated_status: bool = False


class TopicError(ValueError):
    """The topic is not one of the contract's inbound topics.

    ``kind`` is the topic family it looks like (``locker/x/state`` is a malformed ``state``
    topic), or ``unknown``, so that every inbound message is counted under one kind.
    """

    def __init__(self, kind: TopicKind | Literal["unknown"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


_LEAF_KINDS: dict[str, TopicKind] = {
    "state": "state",
    "response": "response",
    "event": "event",
    "status": "response",
}


def parse_topic(topic: str, *, accept_status: bool = True) -> ParsedTopic:
    """The kind and keys of an inbound topic; raises :class:`TopicError` for anything else."""
    parts = topic.split("/")
    if parts[0] == "locker" and len(parts) == 3:
        if parts[1] == "register":
            if not is_plain_level(parts[2]):
                raise TopicError("register", "empty or invalid provisioning token level")
            return ParsedTopic("register", parts[2])
        bank_id, leaf = parts[1], parts[2]
        kind = _LEAF_KINDS.get(leaf)
        if kind is None:
            raise TopicError("unknown", f"unknown locker topic leaf {leaf[:64]!r}")
        if not is_uuid(bank_id):
            raise TopicError(kind, "bank id is not a lowercase UUID")
        if leaf == "status":
            if not accept_status:
                raise TopicError(kind, "deprecated /status topic is no longer accepted")
            return ParsedTopic("response", bank_id, deprecated_status=True)
        return ParsedTopic(kind, bank_id)
    if parts[0] == "metrics":
        if len(parts) != 4:
            raise TopicError("metric", "metrics topics are metrics/{tenant}/{agent}/{metric}")
        tenant, agent, metric = parts[1], parts[2], parts[3]
        if not all(is_plain_level(level) for level in (tenant, agent, metric)):
            raise TopicError("metric", "metrics topic has an empty level")
        if not is_uuid(tenant):
            raise TopicError("metric", "tenant id is not a UUID")
        return ParsedTopic("metric", tenant, agent_id=agent, metric=metric)
    raise TopicError("unknown", "not a lockerd topic")


def command_topic(bank_id: str) -> str:
    return f"locker/{bank_id}/command"


def provisioning_reply_topic(client_id: str) -> str:
    return f"locker/provisioning/reply/{client_id}"
