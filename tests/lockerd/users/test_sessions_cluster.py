"""Sessions with several nodes (contract §7): a session ended on one node stops working on
the others (each node caches sessions; ``session_ends`` carries the change), and a role change
is seen everywhere. PostgreSQL only, like every multi-node test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from lockerd.users.sessions import SessionService
from store.base import SqlTx
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import create_schema, drop_schema, server_url, url_with_search_path
from tests.support.service import RunningLockerd, eventually, lockerd, test_settings
from tests.support.users import PASSWORD

pytestmark = pytest.mark.skipif(
    server_url() is None, reason="LOCKERD_TEST_POSTGRES_URL is not set (no PostgreSQL to test)"
)


@pytest.fixture
def shared_database() -> Iterator[str]:
    base = server_url()
    assert base is not None
    schema = create_schema(base)
    try:
        yield url_with_search_path(base, schema)
    finally:
        drop_schema(base, schema)


def settings(broker: MosquittoBroker, database: str, node_id: str) -> Any:
    return test_settings(
        broker.url, Path("unused.db"), LOCKERD_DATABASE=database, LOCKERD_NODE_ID=node_id
    )


async def signed_in(node: RunningLockerd, email: str) -> tuple[str, dict[str, str]]:
    created = await node.admin_post(
        "/api/admin/users", {"email": email, "password": PASSWORD, "name": "U"}
    )
    assert created.status_code == 201, created.text
    login = await node.http.post("/api/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return created.json()["id"], {"Authorization": f"Bearer {login.json()['token']}"}


async def status_on(node: RunningLockerd, headers: dict[str, str]) -> int:
    return (await node.http.get("/api/me", headers=headers)).status_code


async def test_sessions_ended_on_one_node_end_on_every_node(
    mosquitto: MosquittoBroker, shared_database: str
) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(lockerd(settings(mosquitto, shared_database, "n-a")))
        b = await stack.enter_async_context(lockerd(settings(mosquitto, shared_database, "n-b")))
        _, ada_headers = await signed_in(a, "ada@example.org")
        bob, bob_headers = await signed_in(b, "bob@example.org")
        for node in (a, b):  # now cached on both nodes
            assert await status_on(node, ada_headers) == 200
            assert await status_on(node, bob_headers) == 200

        # a logout on node a: node b drops the token too
        assert (await a.http.post("/api/logout", headers=ada_headers)).status_code == 204
        assert await status_on(a, ada_headers) == 401  # at once where it happened

        async def ada_gone_on_b() -> bool:
            return await status_on(b, ada_headers) == 401

        await eventually(ada_gone_on_b, within=10.0)

        # bob's account disabled on node b: his token and his stream on node a end
        token = bob_headers["Authorization"].split()[1]
        url = a.base_url.replace("http://", "ws://") + f"/ws/app?token={token}"
        async with open_websocket_url(url) as ws:
            assert (await ws.get_message()).startswith('{"type":"snapshot"')
            sessions: SessionService = b.context.sessions
            await sessions.set_disabled(bob, True)
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
            assert closed.value.reason.code == 1008
        assert await status_on(a, bob_headers) == 401


async def test_a_role_change_is_seen_on_every_node(
    mosquitto: MosquittoBroker, shared_database: str
) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(lockerd(settings(mosquitto, shared_database, "n-a")))
        b = await stack.enter_async_context(lockerd(settings(mosquitto, shared_database, "n-b")))
        carol, headers = await signed_in(a, "carol@example.org")
        for node in (a, b):
            assert (await node.http.get("/api/me", headers=headers)).json()["role"] == "user"

        def promote(tx: SqlTx) -> None:
            tx.execute("UPDATE users SET role = 'admin' WHERE id = ?", (carol,))

        await a.context.tables.write(promote)
        await a.context.sessions.forget_user(carol)
        assert (await a.http.get("/api/me", headers=headers)).json()["role"] == "admin"

        async def admin_on_b() -> bool:
            me = await b.http.get("/api/me", headers=headers)
            return bool(me.json()["role"] == "admin")

        await eventually(admin_on_b, within=10.0)


async def test_the_admin_api_disables_deletes_and_promotes_on_every_node(
    mosquitto: MosquittoBroker, shared_database: str
) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(lockerd(settings(mosquitto, shared_database, "n-a")))
        b = await stack.enter_async_context(lockerd(settings(mosquitto, shared_database, "n-b")))
        dan, dan_headers = await signed_in(a, "dan@example.org")
        eve, eve_headers = await signed_in(a, "eve@example.org")
        for node in (a, b):  # cached on both nodes
            assert await status_on(node, dan_headers) == 200
            assert await status_on(node, eve_headers) == 200
        admin = a.admin_headers()

        # PATCH disabled on node a: 401 there at once, on node b within about a second
        response = await a.http.patch(
            f"/api/admin/users/{dan}", json={"disabled": True}, headers=admin
        )
        assert response.status_code == 200, response.text
        assert await status_on(a, dan_headers) == 401

        async def dan_gone_on_b() -> bool:
            return await status_on(b, dan_headers) == 401

        await eventually(dan_gone_on_b, within=10.0)

        # a role change through node b is seen on node a
        response = await b.http.patch(
            f"/api/admin/users/{eve}", json={"role": "admin"}, headers=admin
        )
        assert response.status_code == 200

        async def admin_on_a() -> bool:
            me = await a.http.get("/api/me", headers=eve_headers)
            return bool(me.json()["role"] == "admin")

        await eventually(admin_on_a, within=10.0)

        # DELETE through node b: eve's token is 401 on node a too
        assert (await b.http.delete(f"/api/admin/users/{eve}", headers=admin)).status_code == 204

        async def eve_gone_on_a() -> bool:
            return await status_on(a, eve_headers) == 401

        await eventually(eve_gone_on_a, within=10.0)
