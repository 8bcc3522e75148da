"""The operators' status websocket (/ws/status) and the dashboard page, against a running lockerd.

Devices are played by a paho client publishing heartbeats on ``locker/{bank_id}/state``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import paho.mqtt.client as paho
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
)

from domain import commands as c
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import ADMIN_TOKEN, RunningLockerd, eventually, lockerd, test_settings

BANK_FIELDS = {"id", "name", "presence", "last_seen", "pending_commands", "mailbox", "restarts"}
FLOOD = 2000


def heartbeat(uptime: int = 1) -> bytes:
    return json.dumps(
        {
            "type": "state",
            "state": "heartbeat",
            "data": {"timestamp": "2026-11-24T10:00:00Z", "uptime_seconds": uptime},
        }
    ).encode()


def publish_all(broker: MosquittoBroker, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and wait until the broker has acknowledged every message (blocking)."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dashboard-test-device")
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


async def publish(broker: MosquittoBroker, messages: list[tuple[str, bytes]]) -> None:
    await trio.to_thread.run_sync(publish_all, broker, messages)


def ws_url(svc: RunningLockerd, token: str | None = ADMIN_TOKEN) -> str:
    base = svc.base_url.replace("http://", "ws://", 1)
    return f"{base}/ws/status" + ("" if token is None else f"?token={quote(token)}")


@asynccontextmanager
async def ws_client(url: str, **options: Any) -> AsyncIterator[WebSocketConnection]:
    """A websocket client whose TCP connection is closed on the way out, however it ends.

    (trio-websocket's own close waits for the peer's close frame, which never comes from a
    server stuck writing to a client that does not read.)
    """
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


async def receive_json(ws: WebSocketConnection) -> dict[str, Any]:
    message = await ws.get_message()
    assert isinstance(message, str)
    decoded: dict[str, Any] = json.loads(message)
    return decoded


async def next_bank_update(
    ws: WebSocketConnection, bank_id: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Read updates until one for ``bank_id`` satisfies ``check``."""
    with trio.fail_after(15):
        while True:
            message = await receive_json(ws)
            assert message["type"] in ("bank", "alert"), message
            if message["type"] == "alert":
                continue  # e.g. a bank offline for 3 intervals (test_alert_messages_follow_…)
            bank: dict[str, Any] = message["bank"]
            if bank["id"] == bank_id and check(bank):
                return bank


async def metric(svc: RunningLockerd, name: str, labels: str) -> float:
    text = (await svc.http.get("/metrics")).text
    series = f"{name}{{{labels}}}" if labels else name
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@asynccontextmanager
async def service(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[RunningLockerd]:
    async with lockerd(test_settings(broker.url, tmp_path / "lockerd.db")) as svc:
        yield svc


async def test_snapshot_lists_every_bank_then_updates_follow_heartbeats(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with service(mosquitto, tmp_path) as svc:
        first = await svc.create_bank(name="Station", location="Platform 1", compartments=3)
        second = await svc.create_bank(name="Library", heartbeat_interval_seconds=1)
        async with open_websocket_url(ws_url(svc)) as ws:
            snapshot = await receive_json(ws)
            assert snapshot["type"] == "snapshot"
            assert snapshot["server_time"].endswith("Z")
            banks = {bank["id"]: bank for bank in snapshot["banks"]}
            assert set(banks) == {first["id"], second["id"]}
            station = banks[first["id"]]
            assert set(station) >= BANK_FIELDS
            assert station["name"] == "Station"
            assert station["location"] == "Platform 1"
            assert station["presence"] == "unknown"
            assert station["last_seen"] is None
            assert station["pending_commands"] == 0
            assert station["doors"] == {"1": "unknown", "2": "unknown", "3": "unknown"}
            assert station["supervision"] == "running"
            assert station["alerts"] == []

            await publish(mosquitto, [(f"locker/{second['id']}/state", heartbeat())])
            online = await next_bank_update(ws, second["id"], lambda b: b["presence"] == "online")
            assert set(online) >= BANK_FIELDS
            assert online["name"] == "Library"
            assert online["last_seen"] is not None
            assert online["last_seen"].endswith("Z")
            # no more heartbeats: 3 intervals later the bank goes offline, and that is pushed too
            offline = await next_bank_update(ws, second["id"], lambda b: b["presence"] == "offline")
            assert offline["last_seen"] == online["last_seen"]

            # a bank created while connected appears as an update (the supervisor may announce
            # its actor before the actor has loaded the bank's name)
            third = await svc.create_bank(name="Museum")
            created = await next_bank_update(ws, third["id"], lambda b: b["name"] != "")
            assert created["name"] == "Museum"
            assert created["presence"] == "unknown"


async def next_alert(ws: WebSocketConnection) -> dict[str, Any]:
    """Read messages until an alert message; returns its alert."""
    with trio.fail_after(15):
        while True:
            message = await receive_json(ws)
            assert message["type"] in ("bank", "alert"), message
            if message["type"] == "alert":
                assert set(message) == {"type", "alert"}
                alert: dict[str, Any] = message["alert"]
                return alert


async def test_alert_messages_follow_every_alert_change(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with service(mosquitto, tmp_path) as svc:
        bank = await svc.create_bank(name="Station", heartbeat_interval_seconds=3600)
        async with open_websocket_url(ws_url(svc)) as ws:
            assert (await receive_json(ws))["type"] == "snapshot"
            await svc.context.registry.ask(
                bank["id"],
                c.RecordDeviceEvent(
                    event="door_state_changed",
                    event_id=None,
                    data={"compartment_number": 1, "state": "open"},
                ),
            )
            # an alert message, and the bank's entry listing its unresolved alerts (two
            # streams: in either order)
            alert_seen: dict[str, Any] | None = None
            entry: dict[str, Any] | None = None
            with trio.fail_after(15):
                while alert_seen is None or entry is None:
                    message = await receive_json(ws)
                    if message["type"] == "alert":
                        alert_seen = message["alert"]
                    elif message["bank"]["id"] == bank["id"] and message["bank"]["alerts"]:
                        entry = message["bank"]
            raised = alert_seen
            (listed,) = (await svc.admin_get("/api/admin/alerts")).json()
            assert raised == listed
            assert (raised["type"], raised["state"]) == ("uncommanded_door_opening", "open")
            assert entry["alerts"] == [raised]
            response = await svc.admin_post(f"/api/admin/alerts/{raised['id']}/acknowledge")
            assert response.status_code == 200
            assert await next_alert(ws) == {**raised, "state": "acknowledged"}
        # an acknowledged incident is over: it leaves the bank's active alerts
        async with open_websocket_url(ws_url(svc)) as ws:
            snapshot = await receive_json(ws)
            (station,) = snapshot["banks"]
            assert station["alerts"] == []


async def _user_token(svc: RunningLockerd) -> str:
    user = {"email": "ann@example.org", "password": "correct horse", "name": "Ann", "role": "user"}
    created = await svc.admin_post("/api/admin/users", user)
    assert created.status_code == 201, created.text
    login = await svc.http.post(
        "/api/login", json={"email": user["email"], "password": user["password"]}
    )
    assert login.status_code == 200, login.text
    token: str = login.json()["token"]
    return token


async def test_handshake_is_refused_without_an_admin_token(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with service(mosquitto, tmp_path) as svc:
        user_token = await _user_token(svc)
        cases = [(None, 401), ("", 401), ("not-the-token", 401), (user_token, 403)]
        for token, status in cases:
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(ws_url(svc, token)):
                    pytest.fail(f"handshake accepted with token {token!r}")
            assert refused.value.status_code == status, token
            body = json.loads(refused.value.body or b"{}")
            assert body["error"] == {401: "unauthorized", 403: "forbidden"}[status]
            assert body["message"]
        assert await metric(svc, "lockerd_dashboard_clients", "") == 0


async def processed_states(svc: RunningLockerd) -> float:
    return await metric(svc, "lockerd_inbound_messages_total", 'kind="state",outcome="processed"')


async def flood(broker: MosquittoBroker, svc: RunningLockerd, bank_id: str) -> None:
    """Publish FLOOD heartbeats for one bank and wait until its actor has applied them all."""
    assert await processed_states(svc) == 0
    topic = f"locker/{bank_id}/state"
    await publish(broker, [(topic, heartbeat(n)) for n in range(1, FLOOD + 1)])

    async def all_processed() -> bool:
        return await processed_states(svc) == FLOOD

    await eventually(all_processed, within=60)


async def drain(ws: WebSocketConnection) -> ConnectionClosed:
    """Read everything until the connection closes; return how it closed."""
    with trio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    return closed.value


async def test_stalled_client_is_dropped_while_a_flood_is_fully_processed(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """A browser that stops reading is cut off; the actors and other browsers carry on.

    The bank has 1000 compartments, so every update is ~16 kB and the stalled connection's
    TCP buffers fill long before the flood ends.
    """
    async with service(mosquitto, tmp_path) as svc:
        # keep the dropped socket (not reset) until the test reads it, whenever that is
        svc.context.status_hub.close_timeout = 3600.0
        bank = await svc.create_bank(name="Big", compartments=1000)
        healthy_updates: list[dict[str, Any]] = []
        # message_queue_size=1 (the default): once one message waits unread, the client stops
        # reading its socket. The stalled one is not read until the end of the test.
        async with (
            ws_client(ws_url(svc), message_queue_size=1) as stalled,
            ws_client(ws_url(svc)) as healthy,
            trio.open_nursery() as nursery,
        ):
            assert (await receive_json(healthy))["type"] == "snapshot"

            async def read_healthy() -> None:
                while True:
                    healthy_updates.append((await receive_json(healthy))["bank"])

            nursery.start_soon(read_healthy)
            await flood(mosquitto, svc, bank["id"])

            async def stalled_dropped() -> bool:
                slow = await metric(svc, "lockerd_dashboard_disconnects_total", 'reason="slow"')
                return slow == 1

            await eventually(stalled_dropped, within=30)

            # the healthy browser was not dropped and ends up with the bank's latest status
            latest = svc.context.fleet.banks[bank["id"]].to_json()
            assert latest["last_seen"] is not None

            async def healthy_is_current() -> bool:
                return bool(healthy_updates and healthy_updates[-1] == latest)

            await eventually(healthy_is_current)
            assert healthy_updates[-1]["presence"] == "online"
            assert len(healthy_updates[-1]["doors"]) == 1000

            # the stalled client, once it reads again, finds its backlog and then a 1013 close
            closed = await drain(stalled)
            assert closed.reason.code == 1013
            assert "too slow" in (closed.reason.reason or "")

            async def only_healthy_left() -> bool:
                return await metric(svc, "lockerd_dashboard_clients", "") == 1

            await eventually(only_healthy_left)
            nursery.cancel_scope.cancel()


async def test_service_stops_although_a_client_never_reads(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Shutdown must not wait for a browser whose TCP window is full: its connection is reset."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with service(mosquitto, tmp_path) as svc:
                hub = svc.context.status_hub
                hub.send_timeout = 3600.0  # never judged slow: only the shutdown can end it
                bank = await svc.create_bank(name="Big", compartments=1000)
                stalled = await nursery.start(_hold_client, ws_url(svc))
                await flood(mosquitto, svc, bank["id"])
                assert await metric(svc, "lockerd_dashboard_clients", "") == 1
            # the service has stopped; the stalled client was reset after its backlog
            closed = await drain(stalled)
            assert closed.reason.code == 1006  # abnormal closure: no close frame, a reset
            nursery.cancel_scope.cancel()


async def _hold_client(
    url: str, *, task_status: trio.TaskStatus[WebSocketConnection] = trio.TASK_STATUS_IGNORED
) -> None:
    """Keep a client open in the caller's nursery (it outlives the service)."""
    async with ws_client(url) as ws:
        task_status.started(ws)
        await trio.sleep_forever()


async def test_websockets_are_closed_with_1001_when_the_service_stops(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        async with service(mosquitto, tmp_path) as svc:
            await svc.create_bank()
            ws = await nursery.start(_hold_client, ws_url(svc))
            assert (await receive_json(ws))["type"] == "snapshot"
        # the service has stopped (its nursery was cancelled) while the socket was open
        closed = await drain(ws)
        assert closed.reason.code == 1001
        nursery.cancel_scope.cancel()


async def test_shutdown_event_closes_websockets_with_1001(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with service(mosquitto, tmp_path) as svc, open_websocket_url(ws_url(svc)) as ws:
        assert (await receive_json(ws))["type"] == "snapshot"
        svc.context.shutdown.set()  # what SIGTERM does in `lockerd serve`
        with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 1001
        assert await metric(svc, "lockerd_dashboard_disconnects_total", 'reason="shutdown"') == 1


async def test_dashboard_page_and_assets_are_served(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with service(mosquitto, tmp_path) as svc:
        page = await svc.http.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<html lang="en">' in page.text
        assert 'src="dashboard/dashboard.js"' in page.text
        script = await svc.http.get("/dashboard/dashboard.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert "ws/status" in script.text
        style = await svc.http.get("/dashboard/dashboard.css")
        assert style.status_code == 200
        assert style.headers["content-type"].startswith("text/css")
        missing_files = ("/dashboard/nope.js", "/dashboard/dashboard.html", "/dashboard/..%2Fa.py")
        for missing in missing_files:
            response = await svc.http.get(missing)
            assert response.status_code == 404, missing
            assert response.json()["error"] == "not_found"


async def test_bank_entries_follow_the_lifecycle(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Contract §5 on /ws/status: a new name, compartments out of service, decommissioned."""
    async with service(mosquitto, tmp_path) as svc:
        bank = await svc.create_bank(compartments=2)
        first = bank["compartments"][0]["id"]
        headers = svc.admin_headers()
        async with ws_client(ws_url(svc)) as ws:
            snapshot = await receive_json(ws)
            entry = next(b for b in snapshot["banks"] if b["id"] == bank["id"])
            assert (entry["decommissioned"], entry["out_of_service"]) == (False, [])
            await svc.http.patch(
                f"/api/admin/compartments/{first}", json={"out_of_service": True}, headers=headers
            )
            await next_bank_update(ws, bank["id"], lambda b: b["out_of_service"] == [1])
            await svc.http.patch(
                f"/api/admin/locker-banks/{bank['id']}", json={"name": "Renamed"}, headers=headers
            )
            await next_bank_update(ws, bank["id"], lambda b: b["name"] == "Renamed")
            await svc.admin_post(f"/api/admin/locker-banks/{bank['id']}/decommission")
            gone = await next_bank_update(ws, bank["id"], lambda b: b["decommissioned"])
            assert gone["presence"] == "offline"
