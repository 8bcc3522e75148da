"""Three ``lockerd serve`` processes share 200 simulated banks; nodes die, return and leave.

Under opens and heartbeats the test kills one node with SIGKILL, starts it again and then
stops another one gracefully (SIGTERM), and checks the contract's promises (§7):

* every shard, and every bank actor, is owned again within 15 s of a death or a stop;
* no shard lock is ever granted to two sessions at a sampled moment (``pg_locks``, one
  consistent snapshot), and no append was ever refused for a stale version (the fence that
  would fire if two actors of one bank ever ran at once; nodes log it as ConcurrencyError);
* nothing is lost: every requested command has exactly one terminal event (success, error or
  timeout), and every open answered 202 was requested;
* no command is published twice: the simulated devices log every command they receive by
  transaction id.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from lockerd.cluster.shards import SHARD_COUNT
from tests.cluster.conftest import needs_postgres
from tests.cluster.processes import (
    NodeProcess,
    OpenLoad,
    OwnershipProbe,
    command_history,
    prepare_fleet,
)
from tests.cluster.simulator import BankSet
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import ADMIN_TOKEN

pytestmark = needs_postgres

BANKS = 200
#: the contract's bound for a takeover after a node's death or stop
TAKEOVER_LIMIT = 15.0


class Watch:
    """Samples ownership while the test runs and remembers every violation it saw."""

    def __init__(self, probe: OwnershipProbe, nodes: list[NodeProcess], http: httpx.AsyncClient):
        self.probe = probe
        self.nodes = nodes
        self.http = http
        self.samples = 0
        self.split_shards: list[tuple[int, list[int]]] = []

    async def run(self) -> None:
        while True:
            holders = await self.probe.sample()
            self.samples += 1
            self.split_shards += [(s, p) for s, p in holders.items() if len(p) > 1]
            await trio.sleep(0.05)

    async def owned_by_live_nodes(self) -> bool:
        """Every shard held by a live node's session and every bank's actor running."""
        holders = await self.probe.sample()
        if len(holders) != SHARD_COUNT:
            return False
        pids = await trio.to_thread.run_sync(self.probe.node_pids)
        live = {node.node_id for node in self.nodes if node.alive}
        if not all(pids.get(p[0]) in live for p in holders.values()):
            return False
        counts = [await node.health(self.http) for node in self.nodes if node.alive]
        return all(h is not None for h in counts) and sum(h["banks"] for h in counts if h) == BANKS


async def until(check: object, within: float) -> float:
    """Seconds until ``check()`` held (polling: the state is in other processes)."""
    started = trio.current_time()
    with trio.fail_after(within):
        while not await check():  # type: ignore[operator]  # noqa: ASYNC110
            await trio.sleep(0.05)
    return trio.current_time() - started


async def test_three_nodes_survive_a_kill_a_return_and_a_graceful_stop(
    mosquitto: MosquittoBroker, cluster_database: str, tmp_path: Path
) -> None:
    nodes = [NodeProcess(f"node-{n}", cluster_database, mosquitto.url, tmp_path) for n in (1, 2, 3)]
    probe = OwnershipProbe(cluster_database)
    try:
        for node in nodes:
            node.start()
        async with httpx.AsyncClient(timeout=10.0) as http, trio.open_nursery() as nursery:
            for node in nodes:
                await node.wait_healthy(http)
            watch = Watch(probe, nodes, http)

            async def three_shares() -> bool:
                holders = await probe.sample()
                return len(holders) == SHARD_COUNT and len({p[0] for p in holders.values()}) == 3

            await until(three_shares, 30.0)
            bank_ids, compartments, token = await prepare_fleet(http, nodes[0].base_url, BANKS)
            devices = BankSet(mosquitto.host, mosquitto.port, bank_ids, interval=2.0)
            await nursery.start(devices.run)
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

            async def all_online() -> bool:
                # node-1's view of every bank, most of them owned elsewhere (fleet sync)
                url = nodes[0].base_url + "/api/admin/locker-banks"
                listed = await http.get(url, headers=admin)
                return sum(1 for b in listed.json() if b.get("presence") == "online") == BANKS

            await until(all_online, 60.0)
            nursery.start_soon(watch.run)
            load = OpenLoad(http, nodes, compartments, token)
            nursery.start_soon(load.run)
            await trio.sleep(3.0)

            # 1. kill -9 one node: the others own its banks again within 15 s
            nodes[2].kill()
            took_kill = await until(watch.owned_by_live_nodes, TAKEOVER_LIMIT)
            # and its banks are live at their new owners (subscribed, heartbeats applied)
            await until(all_online, TAKEOVER_LIMIT)
            await trio.sleep(1.0)

            # 2. it comes back: it gets its share again (the others hand shards over)
            nodes[2].start()
            await nodes[2].wait_healthy(http)
            await until(three_shares, 30.0)

            async def returned_node_gets_heartbeats() -> bool:
                # its banks' topics are subscribed again (not just its shards locked)
                text = (await http.get(nodes[2].base_url + "/metrics")).text
                line = 'lockerd_inbound_messages_total{kind="state",outcome="processed"}'
                return any(
                    row.startswith(line) and float(row.split()[-1]) > 0 for row in text.splitlines()
                )

            await until(returned_node_gets_heartbeats, 15.0)
            await trio.sleep(1.0)

            # 3. a graceful stop hands every bank over at once and exits 0
            stopping = trio.current_time()
            assert await nodes[1].stop() == 0, nodes[1].tail_log()
            took_stop = await until(watch.owned_by_live_nodes, TAKEOVER_LIMIT)  # after exit
            stop_total = trio.current_time() - stopping
            await trio.sleep(2.0)

            load.running = False
            await trio.sleep(0.5)
            print(
                f"takeover after kill -9: {took_kill:.2f} s; after SIGTERM: {took_stop:.2f} s"
                f" (stop and takeover {stop_total:.2f} s); opens accepted {len(load.accepted)},"
                f" answers {dict(load.answers)}, transport failures {load.failures},"
                f" ownership samples {watch.samples}"
            )

            # every requested command ends exactly once (timeouts come after 5 s)
            async def settled() -> bool:
                requested, terminal, _ = await trio.to_thread.run_sync(
                    command_history, cluster_database
                )
                return all(terminal[tx] >= 1 for tx in requested)

            await until(settled, 30.0)
            requested, terminal, dispatched = command_history(cluster_database)
            # a death (last will) and a stop ("offline") happened; the survivors said online
            with trio.fail_after(10):
                while devices.server_status[-1] != "online":
                    await devices.server_status_changed.wait()
            nursery.cancel_scope.cancel()

        assert len(load.accepted) > 50, load.answers  # the load really ran
        assert set(load.accepted) <= requested, "an accepted open was not recorded"
        assert [tx for tx in requested if terminal[tx] != 1] == [], "lost or duplicated outcome"
        assert [tx for tx, n in dispatched.items() if n != 1] == []
        assert devices.duplicates == [], "a command was published twice"
        assert watch.split_shards == [], "a shard had two owners"
        logs = "\n".join(node.tail_log(100_000) for node in nodes)
        assert "ConcurrencyError" not in logs, "two actors of one bank appended"
        assert watch.samples > 20
        assert "offline" in devices.server_status
    finally:
        probe.close()
        for node in nodes:
            node.ensure_gone()
