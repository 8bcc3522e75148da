"""The app's live reads with several nodes (contract §7: any node answers any route and
websocket): a transaction opened through one node is followed on another, through its
in-memory read model fed by the event feed. PostgreSQL only."""

from __future__ import annotations

import json
from typing import Any

import trio
from trio_websocket import open_websocket_url

from tests.cluster.simulator import BankSet
from tests.cluster.test_nodes import balanced, create_banks, nodes, pytestmark  # noqa: F401
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import RunningLockerd, eventually
from tests.support.users import PASSWORD


async def user_on(a: RunningLockerd, compartment_id: str) -> tuple[str, dict[str, str]]:
    created = await a.admin_post(
        "/api/admin/users", {"email": "app@example.org", "password": PASSWORD, "name": "App"}
    )
    assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    granted = await a.admin_post(
        f"/api/admin/compartments/{compartment_id}/grants", {"user_id": user_id}
    )
    assert granted.status_code == 201, granted.text
    login = await a.http.post("/api/login", json={"email": "app@example.org", "password": PASSWORD})
    token = login.json()["token"]
    return token, {"Authorization": f"Bearer {token}"}


async def test_opened_on_one_node_followed_on_the_other(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    async with nodes(mosquitto, cluster_database, "node-a", "node-b") as (a, b):
        await balanced(a, b)
        banks = await create_banks(a, 2, spread_over=(a, b))
        simulator = BankSet(mosquitto.host, mosquitto.port, [x["id"] for x in banks], interval=1.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(simulator.run)
            bank = banks[0]
            compartment = bank["compartments"][0]["id"]
            token, headers = await user_on(a, compartment)

            async def online_on_both() -> bool:
                return all(
                    node.context.fleet.banks.get(bank["id"]) is not None
                    and node.context.fleet.banks[bank["id"]].presence == "online"
                    for node in (a, b)
                )

            await eventually(online_on_both, within=20.0)

            # b's read model knows the grant once the feed brought it
            async def listed_on_b() -> bool:
                listed = await b.http.get("/api/compartments", headers=headers)
                return [c["id"] for c in listed.json()] == [compartment]

            await eventually(listed_on_b, within=10.0)
            url = b.base_url.replace("http://", "ws://") + f"/ws/app?token={token}"
            async with open_websocket_url(url) as ws:
                snapshot = json.loads(await ws.get_message())
                assert [c["id"] for c in snapshot["compartments"]] == [compartment]
                opened = await a.http.post(f"/api/compartments/{compartment}/open", headers=headers)
                assert opened.status_code == 202, opened.text
                transaction_id = opened.json()["transaction_id"]
                final: dict[str, Any] = {}
                with trio.fail_after(20):
                    while not final:
                        message = json.loads(await ws.get_message())
                        view = message.get("transaction")
                        if view and view["status"] != "pending":
                            final = view
                assert final["transaction_id"] == transaction_id
                assert final["status"] == "success"

            # a long poll on b for an open through a
            opened = await a.http.post(f"/api/compartments/{compartment}/open", headers=headers)
            assert opened.status_code == 202, opened.text
            with trio.fail_after(20):
                waited = await b.http.get(
                    f"/api/transactions/{opened.json()['transaction_id']}?wait=15",
                    headers=headers,
                    timeout=30,
                )
            assert waited.status_code == 200, waited.text
            assert waited.json()["status"] == "success"
            nursery.cancel_scope.cancel()


async def test_group_membership_changed_on_one_node_is_followed_on_the_other(
    mosquitto: MosquittoBroker, cluster_database: str
) -> None:
    async with nodes(mosquitto, cluster_database, "node-a", "node-b") as (a, b):
        await balanced(a, b)
        banks = await create_banks(a, 2, spread_over=(a, b))
        simulator = BankSet(mosquitto.host, mosquitto.port, [x["id"] for x in banks], interval=1.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(simulator.run)
            compartment = banks[1]["compartments"][0]["id"]
            created = await a.admin_post(
                "/api/admin/users", {"email": "m@example.org", "password": PASSWORD, "name": "M"}
            )
            user_id = created.json()["id"]
            group = await a.admin_post("/api/admin/groups", {"name": "crew"})
            group_id = group.json()["id"]
            granted = await a.admin_post(
                f"/api/admin/compartments/{compartment}/grants", {"group_id": group_id}
            )
            assert granted.status_code == 201, granted.text
            login = await b.http.post(
                "/api/login", json={"email": "m@example.org", "password": PASSWORD}
            )
            token = login.json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            url = b.base_url.replace("http://", "ws://") + f"/ws/app?token={token}"
            async with open_websocket_url(url) as ws:
                snapshot = json.loads(await ws.get_message())
                assert snapshot["compartments"] == []
                # joined through node a: the stream on node b shows the compartment
                joined = await a.admin_post(
                    f"/api/admin/groups/{group_id}/members", {"user_id": user_id}
                )
                assert joined.status_code == 204
                with trio.fail_after(20):
                    message = json.loads(await ws.get_message())
                assert message["type"] == "compartment" and message["granted"] is True
                assert message["compartment"]["id"] == compartment

                async def online_on_b() -> bool:
                    status = b.context.fleet.banks.get(banks[1]["id"])
                    return status is not None and status.presence == "online"

                await eventually(online_on_b, within=20.0)
                opened = await b.http.post(f"/api/compartments/{compartment}/open", headers=headers)
                assert opened.status_code == 202, opened.text
                # left through node a: it ends on node b
                left = await a.http.delete(
                    f"/api/admin/groups/{group_id}/members/{user_id}", headers=a.admin_headers()
                )
                assert left.status_code == 204
                with trio.fail_after(20):  # door changes of the open may come first
                    while True:
                        message = json.loads(await ws.get_message())
                        if message.get("type") == "compartment" and not message["granted"]:
                            break
                assert message["compartment"]["id"] == compartment
            listed = await b.http.get("/api/compartments", headers=headers)
            assert listed.json() == []
            nursery.cancel_scope.cancel()
