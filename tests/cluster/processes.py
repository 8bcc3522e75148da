"""Real ``lockerd serve`` processes for the cluster tests and the cluster benchmark.

Each :class:`NodeProcess` is one node: its own HTTP port and node id, the shared database,
broker and secrets. ``kill()`` is a kill -9 (no last words, no handover); ``stop()`` a SIGTERM
(graceful: hands its banks over, then exits 0). Output goes to a log file per node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio

from lockerd.cluster.link import DDL_KEY, namespace_for
from tests.support.mosquitto import free_port
from tests.support.service import ADMIN_TOKEN, MOSQ_SECRET

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class NodeProcess:
    node_id: str
    database: str
    broker_url: str
    logdir: Path
    command_timeout: int = 5
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "LOCKERD_HTTP": f"127.0.0.1:{self.port}",
            "LOCKERD_MQTT_URL": self.broker_url,
            "LOCKERD_DATABASE": self.database,
            "LOCKERD_NODE_ID": self.node_id,
            "LOCKERD_ADMIN_TOKEN": ADMIN_TOKEN,
            "LOCKERD_MOSQ_SECRET": MOSQ_SECRET,
            "LOCKERD_PROVISIONING_PASSWORD": "provisioning-password",
            "LOCKERD_SECRET_KEY": "cluster-test-secret-key",
            "LOCKERD_COMMAND_TIMEOUT": str(self.command_timeout),
            "LOCKERD_LOG_LEVEL": "warning",
        }
        log = (self.logdir / f"{self.node_id}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lockerd.cli", "serve"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    async def stop(self) -> int:
        """SIGTERM and wait for the exit status (the graceful stop)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await trio.to_thread.run_sync(self.process.wait)

    def ensure_gone(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    async def health(self, http: httpx.AsyncClient) -> dict[str, Any] | None:
        try:
            response = await http.get(self.base_url + "/healthz", timeout=2.0)
        except httpx.HTTPError:
            return None
        body: dict[str, Any] = response.json()
        return body

    async def wait_healthy(self, http: httpx.AsyncClient, within: float = 30.0) -> None:
        with trio.fail_after(within):
            while True:
                if not self.alive:
                    raise AssertionError(f"{self.node_id} exited: {self.tail_log()}")
                health = await self.health(http)
                if health is not None and health["status"] == "ok":
                    return
                await trio.sleep(0.1)

    def tail_log(self, lines: int = 30) -> str:
        path = self.logdir / f"{self.node_id}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def schema_of(database: str) -> str:
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
    assert row is not None
    return str(row[0])


class OwnershipProbe:
    """Samples who holds which shard, straight from ``pg_locks`` (the truth, not a node's view)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.namespace = namespace_for(schema_of(database))
        self._conn: psycopg.Connection[Any] | None = None

    def _sample(self) -> dict[int, list[int]]:
        if self._conn is None:
            self._conn = psycopg.connect(self.database, autocommit=True)
        rows = self._conn.execute(
            "SELECT objid::bigint, pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND objsubid = 2 AND classid = %s::bigint::oid AND objid::bigint < %s",
            (self.namespace, DDL_KEY),
        ).fetchall()
        holders: dict[int, list[int]] = {}
        for shard, pid in rows:
            holders.setdefault(int(shard), []).append(int(pid))
        return holders

    async def sample(self) -> dict[int, list[int]]:
        """shard -> backend pids holding its lock (more than one would be a split brain)."""
        return await trio.to_thread.run_sync(self._sample)

    def node_pids(self) -> dict[int, str]:
        assert self._conn is not None
        rows = self._conn.execute("SELECT backend_pid, node_id FROM cluster_nodes").fetchall()
        return {int(pid): str(node) for pid, node in rows}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


TERMINAL = ("CompartmentOpened", "CommandFailed", "CommandTimedOut", "ConfigApplied")
REQUESTED = ("CompartmentOpeningRequested", "ConfigApplyRequested")


def command_history(database: str) -> tuple[set[str], Counter[str], Counter[str]]:
    """Requested transaction ids, terminal events per transaction, dispatch records per tx."""
    with psycopg.connect(database, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT type, data::json->>'transaction_id' FROM events WHERE type = ANY(%s)",
            (list(TERMINAL + REQUESTED + ("CommandDispatched",)),),
        ).fetchall()
    requested: set[str] = set()
    terminal: Counter[str] = Counter()
    dispatched: Counter[str] = Counter()
    for type_, tx in rows:
        if type_ in REQUESTED:
            requested.add(tx)
        elif type_ == "CommandDispatched":
            dispatched[tx] += 1
        else:
            terminal[tx] += 1
    return requested, terminal, dispatched


async def prepare_fleet(
    http: httpx.AsyncClient, base_url: str, banks: int, *, workers: int = 8
) -> tuple[list[str], list[str], str]:
    """Create ``banks`` banks of one compartment and a user who may open all of them.

    Returns the bank ids, the compartment ids (same order) and the user's bearer token.
    """
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    created: list[tuple[str, str]] = []
    user = await http.post(
        base_url + "/api/admin/users",
        json={"email": "opener@example.org", "password": "pw-123456789", "name": "Opener"},
        headers=admin,
    )
    assert user.status_code == 201, user.text
    user_id = user.json()["id"]

    async def worker(count: int) -> None:
        for _ in range(count):
            response = await http.post(
                base_url + "/api/admin/locker-banks",
                json={
                    "name": "Cluster bank",
                    "heartbeat_interval_seconds": 5,
                    "compartments": [{"number": 1, "slave_id": 1, "address": 0}],
                },
                headers=admin,
            )
            assert response.status_code == 201, response.text
            body = response.json()
            compartment = body["compartments"][0]["id"]
            grant = await http.post(
                base_url + f"/api/admin/compartments/{compartment}/grants",
                json={"user_id": user_id},
                headers=admin,
            )
            assert grant.status_code == 201, grant.text
            created.append((body["id"], compartment))

    async with trio.open_nursery() as nursery:
        for n in range(workers):
            nursery.start_soon(worker, banks // workers + (1 if n < banks % workers else 0))
    login = await http.post(
        base_url + "/api/login", json={"email": "opener@example.org", "password": "pw-123456789"}
    )
    assert login.status_code == 200, login.text
    return [b for b, _ in created], [c for _, c in created], str(login.json()["token"])


@dataclass
class OpenLoad:
    """Opens at random compartments through random live nodes, until stopped."""

    http: httpx.AsyncClient
    nodes: Sequence[NodeProcess]
    compartments: Sequence[str]
    token: str
    accepted: list[str] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)
    failures: int = 0
    running: bool = True

    async def run(self, workers: int = 6, seed: int = 17) -> None:
        import random

        rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {self.token}"}

        async def worker() -> None:
            while self.running:
                live = [node for node in self.nodes if node.alive]
                node = rng.choice(live)
                compartment = rng.choice(self.compartments)
                try:
                    response = await self.http.post(
                        f"{node.base_url}/api/compartments/{compartment}/open",
                        headers=headers,
                        timeout=15.0,
                    )
                except httpx.HTTPError:
                    self.failures += 1
                    await trio.sleep(0.05)
                    continue
                self.answers[response.status_code] += 1
                if response.status_code == 202:
                    self.accepted.append(json.loads(response.content)["transaction_id"])
                elif response.status_code >= 500:
                    await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
