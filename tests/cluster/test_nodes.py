"""Two or three nodes in one test process, on one PostgreSQL schema and one broker.

In-process nodes (``running_service``) let the tests look inside each node (which shards it
holds, which actors run) and await events instead of polling a subprocess; the kill -9 test
with real ``lockerd serve`` processes is in ``test_failover.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
import structlog.testing
import trio
from trio_websocket import open_websocket_url

from domain import commands as c
from lockerd.cluster.shards import SHARD_COUNT, shard_of
from lockerd.service import StartupError
from lockerd.wiring import Service
from tests.cluster.conftest import needs_postgres
from tests.cluster.simulator import BankSet
from tests.lockerd.dashboard.test_status_ws import (
    next_alert,
    next_bank_update,
    receive_json,
    ws_url,
)
from tests.lockerd.test_service import heartbeat, publish
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import RunningLockerd, eventually, lockerd, test_settings
from tests.support.webhook import receiver

pytestmark = needs_postgres


def node_settings(broker: MosquittoBroker, database: str, node_id: str) -> Any:
    return test_settings(
        broker.url,
        Path("unused.db"),
        LOCKERD_DATABASE=database,
        LOCKERD_NODE_ID=node_id,
        LOCKERD_COMMAND_TIMEOUT="5",
    )


def cluster_of(svc: RunningLockerd) -> Any:
    cluster = svc.context.cluster
    assert cluster is not None, "with PostgreSQL every node runs the cluster layer"
    return cluster


def held(svc: RunningLockerd) -> set[int]:
    return set(cluster_of(svc).ownership.held)


async def balanced(*nodes: RunningLockerd) -> None:
    """Wait until the nodes hold every shard between them, each a share, none twice."""

    async def check() -> bool:
        shares = [held(node) for node in nodes]
        union = set().union(*shares)
        return len(union) == SHARD_COUNT == sum(map(len, shares)) and all(shares)

    await eventually(check, within=20.0)


@asynccontextmanager
async def nodes(broker: MosquittoBroker, database: str, *names: str) -> AsyncIterator[Any]:
    async with AsyncExitStack() as stack:
        running = [
            await stack.enter_async_context(lockerd(node_settings(broker, database, name)))
            for name in names
        ]
        yield running


async def create_banks(
    svc: RunningLockerd, count: int, *, spread_over: tuple[RunningLockerd, ...] = ()
) -> list[dict[str, Any]]:
    """``count`` banks created through ``svc``; more (at most 40) until every node of
    ``spread_over`` owns at least one (bank ids are random, so a small fleet can land on one
    node)."""
    banks: list[dict[str, Any]] = []

    def spread() -> bool:
        return all(
            any(shard_of(bank["id"]) in held(node) for bank in banks) for node in spread_over
        )

    while len(banks) < count or (not spread() and len(banks) < 40):
        banks.append(
            await svc.create_bank(
                compartments=2, name=f"Bank {len(banks)}", heartbeat_interval_seconds=5
            )
        )
    assert spread(), "40 random banks all landed on one node"
    return banks


def actors(svc: Service) -> set[str]:
    return {b for b, entry in svc.registry.entries.items() if not entry.stopping}


async def test_two_nodes_split_the_shards_and_serve_every_bank(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    async with nodes(mosquitto, cluster_database, "node-a", "node-b") as (a, b):
        await balanced(a, b)
        assert held(a).isdisjoint(held(b))
        banks = await create_banks(a, 12, spread_over=(a, b))  # through a, wherever they live
        ids = {bank["id"] for bank in banks}
        for bank_id in ids:
            owner = a if shard_of(bank_id) in held(a) else b
            assert bank_id in actors(owner.context)
        assert actors(a.context) | actors(b.context) == ids
        assert not actors(a.context) & actors(b.context)

        # node b learns every bank through the event feed (the directory), and both answer
        # every bank's routes
        async def b_knows_all() -> bool:
            return ids <= set(b.context.directory.banks)

        await eventually(b_knows_all)
        for node in (a, b):
            health = (await node.http.get("/healthz")).json()
            assert health["node"] == node.context.settings.node_id
            assert health["banks"] == len(actors(node.context))
            for bank_id in ids:
                got = await node.admin_get(f"/api/admin/locker-banks/{bank_id}")
                assert got.status_code == 200, got.text


async def test_devices_opens_and_dashboards_across_nodes(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    async with nodes(mosquitto, cluster_database, "node-a", "node-b") as (a, b):
        await balanced(a, b)
        banks = await create_banks(b, 6, spread_over=(a, b))
        ids = [bank["id"] for bank in banks]
        simulator = BankSet(mosquitto.host, mosquitto.port, ids, interval=1.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(simulator.run)

            # every node's view (fleet sync) sees every bank online, whoever owns it
            async def all_online_everywhere() -> bool:
                return all(
                    node.context.fleet.banks.get(i) is not None
                    and node.context.fleet.banks[i].presence == "online"
                    for node in (a, b)
                    for i in ids
                )

            await eventually(all_online_everywhere, within=20.0)
            # admin opens through either node; each command reaches the device once
            opened: list[str] = []
            for n, bank in enumerate(banks):
                via = (a, b)[n % 2]
                compartment = bank["compartments"][0]["id"]
                response = await via.admin_post(
                    f"/api/admin/compartments/{compartment}/open", {"reason": "test"}
                )
                assert response.status_code == 202, response.text
                opened.append(response.json()["transaction_id"])

            async def all_done() -> bool:
                for n, tx in enumerate(opened):
                    view = await (a, b)[(n + 1) % 2].admin_get(f"/api/transactions/{tx}")
                    if view.status_code != 200 or view.json()["status"] != "success":
                        return False
                return True

            await eventually(all_done, within=20.0)
            assert not simulator.duplicates
            assert all(simulator.received[tx] == 1 for tx in opened)
            nursery.cancel_scope.cancel()


async def test_lifecycle_changes_through_the_node_that_does_not_own_the_bank(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    """Every lifecycle route asks the bank's owner (the same path as apply-config and grants):
    through the other node it works, and both nodes show the result."""
    async with nodes(mosquitto, cluster_database, "node-a", "node-b") as (a, b):
        await balanced(a, b)
        banks = await create_banks(a, 2, spread_over=(a, b))
        bank = next(bank for bank in banks if shard_of(bank["id"]) in held(a))
        path = f"/api/admin/locker-banks/{bank['id']}"

        async def b_knows() -> bool:
            return bank["id"] in b.context.directory.banks

        await eventually(b_knows)
        headers = b.admin_headers()
        edited = await b.http.patch(path, json={"name": "Renamed"}, headers=headers)
        assert edited.status_code == 200, edited.text
        assert edited.json()["name"] == "Renamed"
        added = await b.admin_post(
            f"{path}/compartments", {"number": 3, "slave_id": 2, "address": 0}
        )
        assert added.status_code == 201, added.text
        compartment = f"/api/admin/compartments/{added.json()['id']}"

        async def b_knows_the_compartment() -> bool:
            return added.json()["id"] in b.context.directory.compartments

        await eventually(b_knows_the_compartment)
        off = await b.http.patch(compartment, json={"out_of_service": True}, headers=headers)
        assert off.status_code == 200, off.text
        assert off.json()["out_of_service"] is True
        refused = await b.admin_post(f"{compartment}/open", {"reason": "test"})
        assert refused.status_code == 409, refused.text
        assert refused.json()["reason"] == "out_of_service"
        not_failed = await b.admin_post(f"{path}/restart")
        assert not_failed.status_code == 409, not_failed.text
        assert (await b.http.delete(compartment, headers=headers)).status_code == 204
        gone = await b.admin_post(f"{path}/decommission")
        assert gone.status_code == 200, gone.text
        assert gone.json()["decommissioned"] is True
        again = await b.admin_post(f"{path}/decommission")
        assert again.status_code == 409, again.text
        seen_by_a = (await a.admin_get(path)).json()
        assert (seen_by_a["name"], seen_by_a["decommissioned"]) == ("Renamed", True)
        assert [c["number"] for c in seen_by_a["compartments"]] == [1, 2]
        history = (await a.admin_get(f"{path}/events")).json()
        actors_of = [ev["data"].get("actor") for ev in history if ev["type"] in (
            "LockerBankEdited", "CompartmentAdded", "CompartmentEdited", "CompartmentRetired",
            "LockerBankDecommissioned",
        )]  # fmt: skip
        assert actors_of == [{"kind": "admin_token"}] * 5


async def test_graceful_stop_hands_every_bank_over_at_once(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    async with lockerd(node_settings(mosquitto, cluster_database, "node-a")) as a:
        async with lockerd(node_settings(mosquitto, cluster_database, "node-b")) as b:
            await balanced(a, b)
            banks = await create_banks(a, 10, spread_over=(a, b))
            ids = {bank["id"] for bank in banks}
            assert actors(b.context)  # some banks live on b (10 banks over 2 nodes)

        # b has stopped: by the time its stop returned, a had been told and took over
        async def a_owns_all() -> bool:
            return len(held(a)) == SHARD_COUNT and actors(a.context) == ids

        await eventually(a_owns_all, within=15.0)
        health = (await a.http.get("/healthz")).json()
        assert health["banks"] == len(ids)


async def test_server_status_stays_online_while_any_node_is(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    async with lockerd(node_settings(mosquitto, cluster_database, "node-a")) as a:
        observer = BankSet(mosquitto.host, mosquitto.port, [], interval=3600.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(observer.run)
            async with lockerd(node_settings(mosquitto, cluster_database, "node-b")) as b:
                await balanced(a, b)
            # node-b said "offline" on its way out (contract §1); node-a, still up, answers
            # with "online" at once: the retained status is online while any node is
            with trio.fail_after(10):
                while "offline" not in observer.server_status or observer.server_status[-1] != (
                    "online"
                ):
                    await observer.server_status_changed.wait()
            nursery.cancel_scope.cancel()
        late = BankSet(mosquitto.host, mosquitto.port, [], interval=3600.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(late.run)
            with trio.fail_after(10):
                while not late.server_status:
                    await late.server_status_changed.wait()
            assert late.server_status == ["online"]  # the retained value
            nursery.cancel_scope.cancel()


async def test_a_node_that_loses_its_cluster_connection_stops_its_actors_and_rejoins(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    async with nodes(mosquitto, cluster_database, "node-a", "node-b") as (a, b):
        await balanced(a, b)
        banks = await create_banks(a, 8, spread_over=(a, b))
        before = dict(a.context.registry.entries)
        assert before, "node a runs some of the 8 banks"
        link = cluster_of(a).link
        with structlog.testing.capture_logs() as logs:
            # the server ends node a's cluster session (as it would on a dead network)
            with psycopg.connect(cluster_database, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (link.backend_pid,))

            async def lost_and_back() -> bool:
                events = [entry["event"] for entry in logs]
                return "cluster_link_lost" in events and "cluster_link_restored" in events

            await eventually(lost_and_back, within=20.0)
            await balanced(a, b)
        # every actor that ran on a was stopped when the locks went; the ones running now are
        # new incarnations started after the locks were taken again
        after = a.context.registry.entries
        assert all(entry.stopping for entry in before.values())
        assert not any(after.get(bank_id) is entry for bank_id, entry in before.items())
        ids = {bank["id"] for bank in banks}
        assert actors(a.context) | actors(b.context) == ids


async def test_the_status_websocket_of_either_node_follows_every_bank(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    async with nodes(mosquitto, cluster_database, "node-a", "node-b") as (a, b):
        await balanced(a, b)
        banks = await create_banks(a, 6, spread_over=(a, b))
        ids = [bank["id"] for bank in banks]
        on_b = [i for i in ids if shard_of(i) in held(b)]
        on_a = [i for i in ids if shard_of(i) in held(a)]

        async def listed_everywhere() -> bool:  # node b hears of a's banks through the feed
            return all(set(ids) <= set(node.context.fleet.banks) for node in (a, b))

        await eventually(listed_everywhere)
        for via, elsewhere in ((a, on_b[0]), (b, on_a[0])):
            async with open_websocket_url(ws_url(via)) as ws:
                snapshot = await receive_json(ws)
                assert {bank["id"] for bank in snapshot["banks"]} >= set(ids)
                publish(mosquitto, f"locker/{elsewhere}/state", heartbeat())
                online = await next_bank_update(ws, elsewhere, lambda b: b["presence"] == "online")
                assert online["last_seen"] is not None


async def test_a_second_node_with_the_same_id_stops_at_start_up_with_one_line(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    async with lockerd(node_settings(mosquitto, cluster_database, "node-a")) as a:
        await balanced(a)
        with pytest.raises(StartupError, match="LOCKERD_NODE_ID: a node named 'node-a'"):
            async with lockerd(node_settings(mosquitto, cluster_database, "node-a")):
                pass  # pragma: no cover - never reached
        assert len(held(a)) == SHARD_COUNT  # the first one is untouched


async def test_alerts_are_acknowledged_through_any_node_and_posted_once(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    async with receiver() as rx, AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(
                lockerd(
                    test_settings(
                        mosquitto.url,
                        Path("unused.db"),
                        LOCKERD_DATABASE=cluster_database,
                        LOCKERD_NODE_ID=name,
                        LOCKERD_ALERT_WEBHOOK_URL=rx.url,
                    )
                )
            )
            for name in ("node-a", "node-b")
        ]
        await balanced(a, b)
        banks = await create_banks(a, 1, spread_over=(a,))  # at least one of them is a's
        bank_id = next(x["id"] for x in banks if shard_of(x["id"]) in held(a))
        async with open_websocket_url(ws_url(b)) as ws:
            assert (await receive_json(ws))["type"] == "snapshot"
            # raised on the owner (a door that opened by itself)
            await a.context.registry.ask(
                bank_id,
                c.RecordDeviceEvent(
                    event="door_state_changed",
                    event_id=None,
                    data={"compartment_number": 1, "state": "open"},
                ),
            )
            # node b sends it live: its board follows a's events through the event feed
            raised = await next_alert(ws)
            assert (raised["bank_id"], raised["state"]) == (bank_id, "open")
            # acknowledged through b, which does not own the bank: forwarded to a
            response = await b.admin_post(f"/api/admin/alerts/{raised['id']}/acknowledge")
            assert response.status_code == 200, response.text
            assert response.json()["state"] == "acknowledged"
            assert (await next_alert(ws))["state"] == "acknowledged"
        received = await rx.until(2)
        assert [r.body["alert"]["state"] for r in received] == ["open", "acknowledged"]
        events = (await a.admin_get(f"/api/admin/locker-banks/{bank_id}/events")).json()
        (acknowledged,) = [ev for ev in events if ev["type"] == "AlertAcknowledged"]
        assert acknowledged["data"]["actor"] == {"kind": "admin_token"}

        def all_delivered(tx: Any) -> bool:
            rows = tx.query("SELECT delivered_at IS NOT NULL FROM alert_outbox")
            return len(rows) == 2 and all(row[0] for row in rows)

        async def delivered() -> bool:
            return bool(await a.context.tables.read(all_delivered))

        await eventually(delivered)
        assert len(rx.received) == 2  # two senders, one delivery each
