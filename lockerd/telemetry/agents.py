"""Tenants and metrics agents: the plain tables and the in-memory directory over them.

The directory answers the hot-path questions without a database round trip: go-auth's
``/api/mosq/auth`` and ``/acl`` (:meth:`AgentDirectory.credential`) on every CONNECT and publish,
and the pipeline's "does this tenant exist, is this agent one of its agents" on every point.
It is loaded once at start-up and then updated by the writes below, after they have committed,
and only then: a reader never sees a tenant or agent that could still vanish.

Agent passwords are 256-bit random (``new_token()``) and kept only as
``keyring.hash("agent-password", secret)``, like device passwords.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from domain import operations as ops
from domain.actor import Actor
from domain.keys import Keyring, new_token
from domain.records import NewEvent
from store.base import SqlTx, Tables

CREDENTIAL_PURPOSE = "agent-password"


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Agent:
    agent_id: str
    tenant_id: str
    name: str
    mqtt_user: str
    credential_hash: str


@dataclass(frozen=True, slots=True)
class NewAgent:
    """A freshly created agent and its password, which is shown once and never stored."""

    agent: Agent
    mqtt_password: str


class UnknownTenant(LookupError):
    pass


class AgentDirectory:
    def __init__(self) -> None:
        self.tenants: dict[str, Tenant] = {}
        self.agents: dict[str, Agent] = {}
        self._by_user: dict[str, Agent] = {}

    # ---------------------------------------------------------------- lookups (hot paths)

    def credential(self, username: str) -> tuple[str, str, str] | None:
        """``(tenant_id, agent_id, credential_hash)`` of the agent with this MQTT user."""
        agent = self._by_user.get(username)
        if agent is None:
            return None
        return agent.tenant_id, agent.agent_id, agent.credential_hash

    def agent_by_user(self, username: str) -> Agent | None:
        return self._by_user.get(username)

    def has_tenant(self, tenant_id: str) -> bool:
        return tenant_id in self.tenants

    def agent(self, agent_id: str) -> Agent | None:
        return self.agents.get(agent_id)

    def belongs_to(self, agent_id: str, tenant_id: str) -> bool:
        agent = self.agents.get(agent_id)
        return agent is not None and agent.tenant_id == tenant_id

    def authenticate(self, keyring: Keyring, username: str, password: str) -> Agent | None:
        """The agent whose MQTT user and password these are, or None (constant-time compare)."""
        agent = self._by_user.get(username)
        if agent is None:
            # same work as a wrong password, so timing does not reveal which users exist
            keyring.verify(CREDENTIAL_PURPOSE, password, "0" * 64)
            return None
        if not keyring.verify(CREDENTIAL_PURPOSE, password, agent.credential_hash):
            return None
        return agent

    # ---------------------------------------------------------------- loading and writes

    def load(self, tx: SqlTx) -> None:
        """Fill from the tables (runs on the store's thread)."""
        for tenant_id, name in tx.query("SELECT id, name FROM tenants"):
            self.tenants[tenant_id] = Tenant(tenant_id, name)
        for row in tx.query(
            "SELECT id, tenant_id, name, mqtt_user, credential_hash FROM tenant_agents"
        ):
            self._add(Agent(*row))

    def _add(self, agent: Agent) -> None:
        self.agents[agent.agent_id] = agent
        self._by_user[agent.mqtt_user] = agent

    async def create_tenant(
        self, store: Tables, name: str, now: datetime, *, actor: Actor | None = None
    ) -> Tenant:
        """A new tenant; with an ``actor`` (an operator's request) recorded as
        ``TenantCreated`` in the tenant's stream, in the same transaction."""
        tenant = Tenant(str(uuid.uuid4()), name)

        def write(tx: SqlTx) -> None:
            tx.execute(
                "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)",
                (tenant.tenant_id, tenant.name, now.isoformat()),
            )

        await _write(
            store,
            write,
            tenant.tenant_id,
            None
            if actor is None
            else ops.TenantCreated(actor=actor, at=now, tenant_id=tenant.tenant_id, name=name),
        )
        self.tenants[tenant.tenant_id] = tenant
        return tenant

    async def create_agent(
        self,
        store: Tables,
        keyring: Keyring,
        tenant_id: str,
        name: str,
        now: datetime,
        *,
        actor: Actor | None = None,
    ) -> NewAgent:
        """Raises :class:`UnknownTenant` if there is no such tenant. With an ``actor``
        recorded as ``AgentCreated`` in the tenant's stream (never the password)."""
        if tenant_id not in self.tenants:
            raise UnknownTenant(tenant_id)
        agent_id = str(uuid.uuid4())
        password = new_token()
        agent = Agent(
            agent_id=agent_id,
            tenant_id=tenant_id,
            name=name,
            mqtt_user=f"agent-{uuid.UUID(agent_id).hex}",
            credential_hash=keyring.hash(CREDENTIAL_PURPOSE, password),
        )

        def write(tx: SqlTx) -> None:
            tx.execute(
                "INSERT INTO tenant_agents"
                " (id, tenant_id, name, mqtt_user, credential_hash, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    agent.agent_id,
                    agent.tenant_id,
                    agent.name,
                    agent.mqtt_user,
                    agent.credential_hash,
                    now.isoformat(),
                ),
            )

        event = None
        if actor is not None:
            event = ops.AgentCreated(actor=actor, at=now, tenant_id=tenant_id,
                                     agent_id=agent_id, name=name,
                                     mqtt_user=agent.mqtt_user)  # fmt: skip
        await _write(store, write, tenant_id, event)
        self._add(agent)
        return NewAgent(agent, password)


async def _write(
    store: Tables, write: Callable[[SqlTx], None], tenant_id: str, event: ops.OperatorEvent | None
) -> None:
    """``write``, and ``event`` (if any) in the tenant's stream in the same transaction."""
    if event is None:
        await store.write(write)
        return
    recorded = ops.to_new_event(event)

    def both(tx: SqlTx) -> tuple[None, list[NewEvent]]:
        write(tx)
        return None, [recorded]

    await store.record(ops.operator_stream("tenant", tenant_id), both)
