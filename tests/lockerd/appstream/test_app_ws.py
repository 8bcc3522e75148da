"""The app's websocket ``/ws/app?token=`` against a running lockerd (contract §4)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from tests.support.device import Answer, TestDevice, device
from tests.support.mosquitto import MosquittoBroker
from tests.support.users import PASSWORD, App, User, running_app


def ws_url(app: App, token: str | None) -> str:
    base = app.base_url.replace("http://", "ws://", 1)
    return f"{base}/ws/app" + ("" if token is None else f"?token={quote(token)}")


@asynccontextmanager
async def ws_client(url: str, **options: Any) -> AsyncIterator[WebSocketConnection]:
    """A client whose TCP connection is closed on the way out, however it ends."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    async with trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        try:
            resource = f"{parts.path}?{parts.query}" if parts.query else parts.path
            yield await wrap_client_stream(nursery, stream, parts.hostname, resource, **options)
        finally:
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(15):
        message = await ws.get_message()
    assert isinstance(message, str)
    decoded: dict[str, Any] = json.loads(message)
    return decoded


async def next_matching(
    ws: WebSocketConnection, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    with trio.fail_after(15):
        while True:
            message = await receive(ws)
            if check(message):
                return message


def compartment_update(cid: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    def check(message: dict[str, Any]) -> bool:
        if message["type"] != "compartment" or message["compartment"]["id"] != cid:
            return False
        return all(
            message.get(k) == v if k == "granted" else message["compartment"][k] == v
            for k, v in fields.items()
        )

    return check


async def closed_with(ws: WebSocketConnection) -> tuple[int, str | None]:
    with trio.fail_after(15), pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    return closed.value.reason.code, closed.value.reason.reason


async def online(app: App, dev: TestDevice, bank_id: str) -> None:
    """The bank online, its device running its configuration (contract §2)."""
    assert dev.bank_id == bank_id
    await dev.come_online(app.context.fleet)


async def test_a_bad_or_missing_token_refuses_the_handshake(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        user = await app.signed_in_user()
        await app.http.post("/api/logout", headers=user.headers)
        for token in (None, "", "not-a-token", user.token):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(ws_url(app, token)):
                    pass
            assert rejected.value.status_code == 401, token


async def test_snapshot_then_presence_door_grant_and_transaction_changes(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank(compartments=3, name="Library")
        c1, c2, c3 = (c["id"] for c in bank["compartments"])
        user = await app.signed_in_user()
        stranger = await app.signed_in_user()
        await app.grant(c1, user)
        await app.grant(c2, user)
        await app.grant(c1, stranger)
        async with (
            open_websocket_url(ws_url(app, user.token)) as ws,
            open_websocket_url(ws_url(app, stranger.token)) as other_ws,
            device(mosquitto.url, bank["id"]) as dev,
        ):
            snapshot = await receive(ws)
            listed = (await app.http.get("/api/compartments", headers=user.headers)).json()
            assert snapshot == {"type": "snapshot", "compartments": listed}
            assert [c["id"] for c in listed] == [c1, c2]
            assert {c["presence"] for c in listed} == {"unknown"}
            assert (await receive(other_ws))["type"] == "snapshot"

            # presence: one message per compartment of that bank the user may open
            await online(app, dev, bank["id"])
            updates = [await receive(ws) for _ in range(2)]
            assert {u["compartment"]["id"] for u in updates} == {c1, c2}
            for update in updates:
                assert update["type"] == "compartment" and update["granted"] is True
                assert update["compartment"]["presence"] == "online"
                assert set(update["compartment"]) == set(listed[0])
            # a door
            await dev.event("door_state_changed", {"compartment_number": 2, "state": "open"})
            await next_matching(ws, compartment_update(c2, door_state="open", granted=True))
            # a grant appears, and one ends
            await app.grant(c3, user)
            added = await next_matching(ws, compartment_update(c3, granted=True))
            assert added["compartment"]["presence"] == "online"
            await app.admin_delete(f"/api/admin/compartments/{c1}/grants/{user.id}")
            await next_matching(ws, compartment_update(c1, granted=False))

            # my transaction: pending, then its outcome; the stranger sees nothing of it
            dev.answers["open_compartment"] = Answer(message="opened", delay=0.2)
            response = await app.open(user, c2)
            transaction_id = response.json()["transaction_id"]

            def of_transaction(status: str) -> Callable[[dict[str, Any]], bool]:
                return lambda m: m["type"] == "transaction" and m["transaction"]["status"] == status

            pending = await next_matching(ws, of_transaction("pending"))
            assert pending["transaction"]["transaction_id"] == transaction_id
            done = await next_matching(ws, of_transaction("success"))
            final = (await app.transaction(user, transaction_id)).json()
            assert done["transaction"] == final

            # the stranger's stream got the presence change of c1 but nothing of the above
            seen = await next_matching(other_ws, compartment_update(c1, presence="online"))
            assert seen["granted"] is True
            await app.grant(c3, stranger)
            after = await next_matching(other_ws, compartment_update(c3, granted=True))
            assert after["compartment"]["door_state"] == "unknown"

            await dev.last_will()
            await next_matching(ws, compartment_update(c3, presence="offline"))


async def test_an_expiring_grant_ends_on_the_stream(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank(compartments=2)
        c1, c2 = (c["id"] for c in bank["compartments"])
        user = await app.signed_in_user()
        await app.grant(c1, user)
        soon = datetime.now(UTC) + timedelta(seconds=1.5)
        await app.grant(c2, user, soon)
        async with open_websocket_url(ws_url(app, user.token)) as ws:
            snapshot = await receive(ws)
            assert [c["id"] for c in snapshot["compartments"]] == [c1, c2]
            ended = await next_matching(ws, compartment_update(c2, granted=False))
            assert ended["compartment"]["id"] == c2
            listed = (await app.http.get("/api/compartments", headers=user.headers)).json()
            assert [c["id"] for c in listed] == [c1]


async def test_the_stream_ends_with_the_session(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        user = await app.signed_in_user()
        phone = await app.login(User(user.id, user.email, PASSWORD, "user"))
        tablet = await app.login(User(user.id, user.email, PASSWORD, "user"))
        async with (
            ws_client(ws_url(app, user.token)) as first,
            ws_client(ws_url(app, phone.token)) as second,
            ws_client(ws_url(app, tablet.token)) as third,
        ):
            for ws in (first, second, third):
                assert (await receive(ws))["type"] == "snapshot"
            # the tablet signs out: only its stream ends
            assert (await app.http.post("/api/logout", headers=tablet.headers)).status_code == 204
            assert await closed_with(third) == (1008, "session ended")
            # a password change from the phone ends every other session's stream
            response = await app.http.post(
                "/api/me/password",
                json={"current_password": PASSWORD, "new_password": "another passphrase"},
                headers=phone.headers,
            )
            assert response.status_code == 204
            assert await closed_with(first) == (1008, "session ended")
            # the phone's own stream stays
            await app.context.sessions.set_disabled(user.id, True)
            assert await closed_with(second) == (1008, "session ended")
        value = app.context.metrics.registry.get_sample_value(
            "lockerd_app_stream_disconnects_total", {"reason": "session_ended"}
        )
        assert value == 3


async def test_streams_close_with_1001_on_shutdown(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        user = await app.signed_in_user()
        async with ws_client(ws_url(app, user.token)) as ws:
            assert (await receive(ws))["type"] == "snapshot"
            app.context.shutdown.set()
            assert (await closed_with(ws))[0] == 1001


async def test_a_stalled_client_is_dropped_and_the_actors_carry_on(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """300 compartments: every presence flip is 300 messages (about 60 kB) for each client.
    One client stops reading; it is cut off (1013) while a healthy one follows to the end."""
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        streams = app.context.app_streams
        streams.close_timeout = 3600.0  # keep the dropped socket until the test reads it
        bank = await app.create_bank(compartments=300, name="Big")
        user = await app.signed_in_user()
        for compartment in bank["compartments"]:
            assert (await app.grant(compartment["id"], user)).status_code == 201
        flips = 60
        async with (
            ws_client(ws_url(app, user.token), message_queue_size=1) as stalled,
            ws_client(ws_url(app, user.token)) as healthy,
            device(mosquitto.url, bank["id"]) as dev,
            trio.open_nursery() as nursery,
        ):
            latest: dict[str, dict[str, Any]] = {}

            async def follow() -> None:
                assert (await receive(healthy))["type"] == "snapshot"
                while True:
                    message = await receive(healthy)
                    latest[message["compartment"]["id"]] = message["compartment"]

            nursery.start_soon(follow)
            for _ in range(flips):
                await dev.come_online(app.context.fleet, retain=False)
                await dev.last_will()
                await app.until_presence(bank["id"], "offline")

            def slow_drops() -> float:
                value = app.context.metrics.registry.get_sample_value(
                    "lockerd_app_stream_disconnects_total", {"reason": "slow"}
                )
                return value or 0.0

            with trio.fail_after(30):
                while slow_drops() < 1:  # noqa: ASYNC110 - a metric, nothing to await
                    await trio.sleep(0.05)
            # the healthy client ends with the bank offline on every compartment
            with trio.fail_after(30):
                while not (  # noqa: ASYNC110 - the messages arrive in another task
                    len(latest) == 300 and {c["presence"] for c in latest.values()} == {"offline"}
                ):
                    await trio.sleep(0.05)
            code, reason = await closed_with(stalled)
            assert code == 1013 and "too slow" in (reason or "")
            assert len(streams.sessions) == 1
            nursery.cancel_scope.cancel()


async def test_the_stream_follows_the_lifecycle(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """Contract §5 on /ws/app: out of service (and back), a renamed bank, a retired
    compartment and a decommissioned bank reach the users who may open them."""
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        north = await app.create_bank(compartments=2, name="North")
        south = await app.create_bank(compartments=1, name="South")
        c1, c2 = (c["id"] for c in north["compartments"])
        (s1,) = (c["id"] for c in south["compartments"])
        user = await app.signed_in_user()
        for cid in (c1, c2, s1):
            await app.grant(cid, user)
        admin = app.admin_headers()
        async with open_websocket_url(ws_url(app, user.token)) as ws:
            snapshot = await receive(ws)
            assert [c["out_of_service"] for c in snapshot["compartments"]] == [False] * 3
            await app.http.patch(
                f"/api/admin/compartments/{c1}", json={"out_of_service": True}, headers=admin
            )
            await next_matching(ws, compartment_update(c1, out_of_service=True, granted=True))
            await app.http.patch(
                f"/api/admin/locker-banks/{north['id']}", json={"name": "Nord"}, headers=admin
            )
            await next_matching(ws, compartment_update(c2, locker_bank_name="Nord"))
            assert (await app.admin_delete(f"/api/admin/compartments/{c2}")).status_code == 204
            await next_matching(ws, compartment_update(c2, granted=False))
            decommissioned = await app.admin_post(
                f"/api/admin/locker-banks/{south['id']}/decommission"
            )
            assert decommissioned.status_code == 200, decommissioned.text
            await next_matching(ws, compartment_update(s1, granted=False))
            listed = (await app.http.get("/api/compartments", headers=user.headers)).json()
            assert [(c["id"], c["locker_bank_name"], c["out_of_service"]) for c in listed] == [
                (c1, "Nord", True)
            ]
