"""Who may publish and subscribe to what on the broker: contract §3 as a pure function.

mosquitto-go-auth asks ``/api/mosq/acl`` for every SUBSCRIBE filter (acc 4), every PUBLISH and
last will (acc 2) and every delivery to every subscriber (acc 1). This module answers such a
check from the identity the username (and client id) resolves to, the topic and ``acc``, with
no I/O: the HTTP layer (``lockerd.features.mosq``) looks the identity up in memory and calls
:func:`allowed`.

Deny by default. A topic that must be a literal (every row but the backend's) is compared level
by level with exact strings, so a subscription filter with ``+`` or ``#`` in it never matches a
rule meant for one concrete topic: a device may subscribe to its own command topic, never to
``locker/+/command`` or ``#``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from gateway.topics import is_plain_level

READ: Final = 1  # a message delivered to a subscriber
WRITE: Final = 2  # PUBLISH, and the last will when the broker sends it
SUBSCRIBE: Final = 4  # a SUBSCRIBE topic filter, wildcards as sent
KNOWN_ACCESS: Final = frozenset({READ, WRITE, SUBSCRIBE})

Role = Literal["backend", "provisioning", "device", "agent", "nobody"]

DEVICE_WRITE_LEAVES: Final = ("state", "response", "event")
DEPRECATED_STATUS_LEAF: Final = "status"


@dataclass(frozen=True, slots=True)
class Identity:
    """What a broker username stands for. ``client_id`` matters for the provisioning user only."""

    role: Role
    client_id: str | None = None
    bank_id: str | None = None  # device
    tenant_id: str | None = None  # agent
    agent_id: str | None = None  # agent


NOBODY: Final = Identity("nobody")


class HasBank(Protocol):
    @property
    def bank_id(self) -> str: ...


AgentLookup = Callable[[str], "tuple[str, str, str] | None"]


def identify(
    username: str | None,
    client_id: str | None,
    *,
    backend_user: str | None,
    provisioning_user: str | None,
    devices: Mapping[str, HasBank],
    agent: AgentLookup | None = None,
) -> Identity:
    """Resolve a broker username to its role (no password check: /auth did that at CONNECT).

    ``agent(username)`` returns ``(tenant_id, agent_id, credential_hash)`` or None.
    The backend and provisioning users take precedence over same-named devices or agents.
    """
    if not username:
        return NOBODY
    if backend_user and username == backend_user:
        return Identity("backend", client_id)
    if provisioning_user and username == provisioning_user:
        return Identity("provisioning", client_id)
    device = devices.get(username)
    if device is not None:
        return Identity("device", client_id, bank_id=device.bank_id)
    if agent is not None:
        found = agent(username)
        if found is not None:
            tenant_id, agent_id, _ = found
            return Identity("agent", client_id, tenant_id=tenant_id, agent_id=agent_id)
    return NOBODY


def allowed(identity: Identity, topic: str, acc: int, *, accept_status: bool = True) -> bool:
    """Contract §3, row by row. ``accept_status``: LOCKERD_ACCEPT_STATUS_TOPIC."""
    if acc not in KNOWN_ACCESS or not topic or "\x00" in topic:
        return False
    role = identity.role
    if role == "backend":
        return True
    if role == "provisioning":
        return _provisioning(identity.client_id, topic, acc)
    if role == "device":
        return _device(identity.bank_id, topic, acc, accept_status)
    if role == "agent":
        return _agent(identity.tenant_id, identity.agent_id, topic, acc)
    return False


def _provisioning(client_id: str | None, topic: str, acc: int) -> bool:
    if acc == WRITE:
        parts = topic.split("/")
        return (
            len(parts) == 3
            and parts[0] == "locker"
            and parts[1] == "register"
            and is_plain_level(parts[2])
        )
    # read or subscribe: only the reply topic of this very connection's client id
    return (
        client_id is not None
        and is_plain_level(client_id)
        and topic == f"locker/provisioning/reply/{client_id}"
    )


def _device(bank_id: str | None, topic: str, acc: int, accept_status: bool) -> bool:
    if not bank_id or not is_plain_level(bank_id):
        return False
    if acc == WRITE:
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "locker" or parts[1] != bank_id:
            return False
        leaf = parts[2]
        return leaf in DEVICE_WRITE_LEAVES or (accept_status and leaf == DEPRECATED_STATUS_LEAF)
    return topic == f"locker/{bank_id}/command" or topic == "server/status"


def _agent(tenant_id: str | None, agent_id: str | None, topic: str, acc: int) -> bool:
    if acc != WRITE or not tenant_id or not agent_id:
        return False
    if not (is_plain_level(tenant_id) and is_plain_level(agent_id)):
        return False
    parts = topic.split("/")
    return (
        len(parts) == 4
        and parts[0] == "metrics"
        and parts[1] == tenant_id
        and parts[2] == agent_id
        and is_plain_level(parts[3])
    )
