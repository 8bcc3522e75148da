"""More than one node: throughput with 1, 2 and 3 nodes, failover time, the open path's cost.

    LOCKERD_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/bench_cluster.py --out /tmp/bench-cluster

Phases, all against one PostgreSQL schema and one Mosquitto, ``lockerd serve`` processes:

* **heartbeats/s** and **opens/s** with 1, 2 and 3 nodes. One node is the baseline measured in
  the same run; the figures for 2 and 3 nodes are reported as ratios to it. Heartbeats come
  from one simulator connection for every bank (``tests/cluster/simulator.py``), as fast as
  the broker takes them; a phase ends when every node's
  ``lockerd_inbound_messages_total{kind="state",outcome="processed"}`` adds up to what was
  sent. Opens are user opens through every node in turn (so most are forwarded to the owner)
  by a fixed number of concurrent workers; answered by the simulated devices.
* **failover**: ``--kills`` times, kill -9 one of three nodes and time until every shard is
  held by a live node and every bank's actor runs again; then start it again and wait for
  the three-way share before the next kill. Median and max.
* **open path**: the bank actor on the real PostgreSQL store, sequential open + answer cycles,
  with the dispatch recorded before the publish (cluster mode) and after it (one node). The
  cost of recording first is one more row in the request's own INSERT; recording after costs
  one more append.

This machine has 2 cores shared by several engineers: every node, the broker, PostgreSQL and
the load generator compete for them, so more nodes cannot add CPU here; the ratios show what
the coordination costs rather than what a real multi-host deployment would gain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import trio  # noqa: E402

from bench.common import INBOUND, metric  # noqa: E402
from lockerd.cluster.shards import SHARD_COUNT  # noqa: E402
from tests.cluster.processes import (  # noqa: E402
    NodeProcess,
    OpenLoad,
    OwnershipProbe,
    prepare_fleet,
)
from tests.cluster.simulator import BankSet  # noqa: E402
from tests.support.mosquitto import MosquittoBroker  # noqa: E402
from tests.support.postgres import (  # noqa: E402
    create_schema,
    drop_schema,
    server_url,
    url_with_search_path,
)


async def processed_heartbeats(http: httpx.AsyncClient, nodes: list[NodeProcess]) -> float:
    total = 0.0
    for node in nodes:
        if node.alive:
            total += await metric(http, node.base_url, INBOUND, kind="state", outcome="processed")
    return total


async def shares(probe: OwnershipProbe, count: int) -> bool:
    holders = await probe.sample()
    return len(holders) == SHARD_COUNT and len({p[0] for p in holders.values()}) == count


async def until(check: Any, within: float, pause: float = 0.02) -> float:
    started = time.monotonic()
    with trio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - the state is in other processes
            await trio.sleep(pause)
    return time.monotonic() - started


async def all_actors(http: httpx.AsyncClient, nodes: list[NodeProcess], banks: int) -> bool:
    counts = [await node.health(http) for node in nodes if node.alive]
    return all(h is not None for h in counts) and sum(h["banks"] for h in counts if h) == banks


async def heartbeat_phase(
    http: httpx.AsyncClient, nodes: list[NodeProcess], devices: BankSet, seconds: float
) -> dict[str, float]:
    devices.beating = False
    await trio.sleep(0.5)
    before = await processed_heartbeats(http, nodes)
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await devices.beat_all()
        sent += len(devices.bank_ids)
    sending = time.monotonic() - started

    async def all_processed() -> bool:
        return await processed_heartbeats(http, nodes) - before >= sent

    await until(all_processed, 120.0, pause=0.05)
    elapsed = time.monotonic() - started
    devices.beating = True
    return {"sent": sent, "send_s": sending, "heartbeats_per_s": sent / elapsed}


async def open_phase(
    http: httpx.AsyncClient,
    nodes: list[NodeProcess],
    compartments: list[str],
    token: str,
    seconds: float,
    workers: int,
) -> dict[str, float]:
    load = OpenLoad(http, nodes, compartments, token)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run, workers)
        await trio.sleep(seconds)
        load.running = False
    elapsed = time.monotonic() - started
    return {
        "accepted": len(load.accepted),
        "opens_per_s": len(load.accepted) / elapsed,
        "refused_409": load.answers[409],
        "errors_5xx": sum(n for status, n in load.answers.items() if status >= 500),
    }


async def open_path(database_base: str, cycles: int, rounds: int = 6) -> dict[str, float]:
    """Sequential open + answer cycles on one bank actor over the real PostgreSQL store, with
    the dispatch recorded after the publish (one node) and before it (cluster mode).

    The two modes run in alternating rounds on two stores open side by side, so that the
    load of a shared machine falls on both alike.
    """
    from store import open_store
    from tests.actors.test_bank_actor import BANK, answer, online_bank, open_cmd, world

    modes = {"record_after": False, "record_first": True}
    latencies: dict[str, list[float]] = {mode: [] for mode in modes}
    busy: dict[str, float] = dict.fromkeys(modes, 0.0)
    appends: dict[str, int] = dict.fromkeys(modes, 0)
    schemas = {mode: create_schema(database_base) for mode in modes}
    try:
        async with AsyncExitStack() as stack:
            worlds: dict[str, Any] = {}
            stores: dict[str, Any] = {}
            for mode, record_first in modes.items():
                url = url_with_search_path(database_base, schemas[mode])
                stores[mode] = await stack.enter_async_context(open_store(url))
                worlds[mode] = await stack.enter_async_context(
                    world(log=stores[mode], record_dispatch_first=record_first)
                )
                await online_bank(worlds[mode])
            per_round = max(1, cycles // rounds)
            for round_ in range(rounds):
                for mode, w in worlds.items():
                    before = stores[mode].appends
                    started = time.monotonic()
                    for n in range(per_round):
                        tx = f"tx-{round_}-{n}"
                        begun = time.monotonic()
                        await w.registry.ask(BANK, open_cmd(tx))
                        latencies[mode].append(time.monotonic() - begun)
                        await w.registry.ask(BANK, answer(tx), kind="response")
                    busy[mode] += time.monotonic() - started
                    await trio.sleep(0.1)  # record-after's late CommandDispatched lands here
                    appends[mode] += stores[mode].appends - before
    finally:
        for schema in schemas.values():
            drop_schema(database_base, schema)
    done = per_round * rounds
    figures: dict[str, float] = {}
    for mode in modes:
        figures[f"{mode}_cycles_per_s"] = done / busy[mode]
        figures[f"{mode}_open_p50_ms"] = statistics.median(latencies[mode]) * 1000
        figures[f"{mode}_appends_per_cycle"] = appends[mode] / done
    figures["ratio_record_first_vs_after_cycles"] = (
        figures["record_first_cycles_per_s"] / figures["record_after_cycles_per_s"]
    )
    figures["ratio_record_first_vs_after_open_p50"] = (
        figures["record_first_open_p50_ms"] / figures["record_after_open_p50_ms"]
    )
    return figures


async def main(args: argparse.Namespace) -> dict[str, Any]:
    base = server_url()
    if base is None:
        raise SystemExit("set LOCKERD_TEST_POSTGRES_URL (a PostgreSQL server to bench on)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    report: dict[str, Any] = {"machine": "2 cores, shared with other engineers' work"}
    report["open_path"] = await open_path(base, args.cycles)
    print(f"open path: {report['open_path']}", flush=True)
    if args.open_path_only:
        return report
    schema = create_schema(base)
    database = url_with_search_path(base, schema)
    broker = MosquittoBroker(out / "mosquitto")
    broker.start()
    nodes = [
        NodeProcess(f"node-{n}", database, broker.url, out, command_timeout=10) for n in (1, 2, 3)
    ]
    probe = OwnershipProbe(database)
    try:
        async with httpx.AsyncClient(timeout=15.0) as http, trio.open_nursery() as nursery:
            nodes[0].start()
            await nodes[0].wait_healthy(http)
            await until(lambda: shares(probe, 1), 30.0)
            bank_ids, compartments, token = await prepare_fleet(http, nodes[0].base_url, args.banks)
            devices = BankSet(broker.host, broker.port, bank_ids, interval=3.0)
            await nursery.start(devices.run)
            admin = {"Authorization": "Bearer test-admin-token"}

            async def online() -> bool:
                listed = await http.get(
                    nodes[0].base_url + "/api/admin/locker-banks", headers=admin
                )
                return sum(1 for b in listed.json() if b.get("presence") == "online") == args.banks

            await until(online, 60.0, pause=0.2)
            throughput: dict[str, Any] = {}
            for count in (1, 2, 3):
                if count > 1:
                    nodes[count - 1].start()
                    await nodes[count - 1].wait_healthy(http)
                    await until(lambda n=count: shares(probe, n), 30.0)  # type: ignore[misc]
                    await until(lambda: all_actors(http, nodes, args.banks), 30.0)
                    await trio.sleep(4.0)  # every bank beat once towards its new owner
                live = nodes[:count]
                beats = await heartbeat_phase(http, live, devices, args.seconds)
                opens = await open_phase(
                    http, live, compartments, token, args.seconds, args.workers
                )
                throughput[f"{count}_nodes"] = {**beats, **opens}
                print(f"{count} node(s): {beats} {opens}", flush=True)
            one = throughput["1_nodes"]
            for count in (2, 3):
                figures = throughput[f"{count}_nodes"]
                figures["ratio_heartbeats_vs_1_node"] = (
                    figures["heartbeats_per_s"] / one["heartbeats_per_s"]
                )
                figures["ratio_opens_vs_1_node"] = figures["opens_per_s"] / one["opens_per_s"]
            report["throughput"] = throughput

            takeovers: list[float] = []
            for kill in range(args.kills):
                victim = nodes[kill % 3]
                killed = time.monotonic()
                victim.kill()

                async def taken_over() -> bool:
                    holders = await probe.sample()
                    if len(holders) != SHARD_COUNT:
                        return False
                    pids = await trio.to_thread.run_sync(probe.node_pids)
                    live = {n.node_id for n in nodes if n.alive}
                    if not all(pids.get(p[0]) in live for p in holders.values()):
                        return False
                    return await all_actors(http, nodes, args.banks)

                await until(taken_over, 30.0)
                takeovers.append(time.monotonic() - killed)
                print(f"kill {kill + 1}: {takeovers[-1]:.2f} s", flush=True)
                victim.start()
                await victim.wait_healthy(http)
                await until(lambda: shares(probe, 3), 30.0)
                await until(lambda: all_actors(http, nodes, args.banks), 30.0)
            report["failover"] = {
                "kills": len(takeovers),
                "median_s": statistics.median(takeovers),
                "max_s": max(takeovers),
                "all_s": [round(t, 3) for t in takeovers],
            }
            report["duplicated_commands"] = len(devices.duplicates)
            nursery.cancel_scope.cancel()
    finally:
        probe.close()
        for node in nodes:
            node.ensure_gone()
        broker.stop()
        drop_schema(base, schema)
    (out / "cluster.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/bench-cluster")
    parser.add_argument("--banks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--open-path-only", action="store_true")
    result = trio.run(main, parser.parse_args())
    print(json.dumps(result, indent=2))
