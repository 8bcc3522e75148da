"""Start-up and shutdown order against a broker that asks lockerd (issue 13, findings 1 and 2).

The broker asks lockerd about lockerd's own CONNECT, publishes and will. So lockerd must listen
on HTTP before it connects (no refused first CONNECT), and on a graceful stop its retained
``offline`` must be published and acknowledged while ``/api/mosq/*`` still answers. After a
kill -9 nobody answers: the deployment's files backend (go-auth ``backends files,http``) is what
lets the will through.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from gateway.mqtt import MqttClient, open_mqtt_client
from tests.broker._stack import (
    Broker,
    Kind,
    LockerdRun,
    lockerd_at,
    serve_env,
    start_broker,
    wait_for_plugin_log,
    wait_healthy,
)
from tests.support.device import client_settings
from tests.support.fixtures import ComposeBrokerFactory, GoAuthBrokerFactory
from tests.support.service import BACKEND_PASSWORD, BACKEND_USER

KINDS: tuple[Kind, ...] = ("http-only", "compose")


@pytest.fixture(params=KINDS)
def broker(
    request: pytest.FixtureRequest,
    compose_broker_factory: ComposeBrokerFactory,
    goauth_broker_factory: GoAuthBrokerFactory,
) -> Broker:
    return start_broker(
        request.param,
        compose_broker_factory=compose_broker_factory,
        goauth_broker_factory=goauth_broker_factory,
    )


class Watcher:
    """A subscriber of ``server/status`` (logged in as the backend user)."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.statuses: list[str] = []
        self._changed = trio.Event()

    async def run(self) -> None:
        async for message in self.client.messages():
            if message.topic == "server/status":
                self.statuses.append(json.loads(message.payload)["status"])
                self._changed.set()
                self._changed = trio.Event()

    async def wait_for(self, status: str, within: float = 15.0) -> None:
        with trio.fail_after(within):
            while status not in self.statuses:
                await self._changed.wait()


@asynccontextmanager
async def watching(broker: Broker, name: str = "watcher") -> AsyncIterator[Watcher]:
    settings = client_settings(broker.url, name, username=BACKEND_USER, password=BACKEND_PASSWORD)
    async with open_mqtt_client(settings, reconnect=False) as client, trio.open_nursery() as n:
        watcher = Watcher(client)
        n.start_soon(watcher.run)
        await client.subscribe([("server/status", 1)])
        yield watcher
        n.cancel_scope.cancel()


def backend_errors(broker: Broker) -> list[dict[str, object]]:
    return [e for e in broker.log_entries(username=BACKEND_USER) if e.get("outcome") == "error"]


async def test_lockerd_listens_before_it_connects_and_its_first_connect_succeeds(
    broker: Broker, tmp_path: Path
) -> None:
    async with lockerd_at(broker, tmp_path / "l.db") as app:
        client_id = app.context.settings.mqtt_client_id
        assert app.context.mqtt.reconnects == 0
        assert app.context.mqtt.last_connect_error is None
    log = broker.goauth.log_text()
    # one login, at the first attempt: a CONNECT the backend could not answer shows up as
    # "Bad socket read/write on client <unknown>" and a "backend error" line
    assert log.count(f"as {client_id} (") == 1, log
    assert "on client <unknown>" not in log and "backend error" not in log, log
    user_checks = [
        e
        for e in broker.goauth.plugin_log()
        if e["event"] in ("request", "files") and e["check"] == "user"
    ]
    assert user_checks[0]["username"] == BACKEND_USER
    assert user_checks[0]["outcome"] == "allow"
    if broker.kind == "http-only":
        assert user_checks[0]["status"] == 200  # HTTP was listening when lockerd connected
    else:
        assert user_checks[0]["event"] == "files"  # lockerd's login never asks lockerd
    assert backend_errors(broker) == []


async def test_a_graceful_stop_delivers_the_retained_offline_while_http_answers(
    broker: Broker, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nursery:
        run = await LockerdRun.start(broker, tmp_path / "l.db", nursery)
        base, client_id = run.app.base_url, run.app.context.settings.mqtt_client_id
        async with watching(broker) as watcher:
            await watcher.wait_for("online")
            await run.stop()  # what SIGTERM does (lockerd.commands.serve)
            await watcher.wait_for("offline")
    assert watcher.statuses[-1] == "offline"
    # lockerd's HTTP is down now ...
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient(base_url=base, timeout=2.0) as client:
            await client.get("/healthz")
    # ... but it answered the broker's check of the offline publish before it went down
    checks = [
        e
        for e in broker.goauth.plugin_log()
        if e["event"] in ("request", "files")
        and e["check"] == "acl"
        and e.get("clientid") == client_id
        and e.get("topic") == "server/status"
        and e.get("acc") == 2
    ]
    assert len(checks) == 2, checks  # online, offline
    if broker.kind == "http-only":
        assert [(e["event"], e["status"], e["outcome"]) for e in checks] == [
            ("request", 200, "allow")
        ] * 2
    else:
        assert [(e["event"], e["outcome"]) for e in checks] == [("files", "allow")] * 2
    assert backend_errors(broker) == []
    # and then lockerd said goodbye: a DISCONNECT, so the broker does not send its will
    assert f"Client {client_id} disconnected." in broker.goauth.log_text()


@asynccontextmanager
async def lockerd_process(broker: Broker, db: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [sys.executable, "-m", "lockerd.cli", "serve"],
        env=serve_env(broker, db),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_healthy(f"http://127.0.0.1:{broker.http_port}")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        await trio.to_thread.run_sync(process.wait, 10)


async def test_after_kill_9_the_last_will_needs_a_backend_user_independent_of_lockerd(
    broker: Broker, tmp_path: Path
) -> None:
    async with lockerd_process(broker, tmp_path / "l.db") as process, watching(broker) as watcher:
        await watcher.wait_for("online")
        process.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(process.wait, 10)

        def will_check() -> list[dict[str, object]]:
            return [
                e
                for e in broker.goauth.plugin_log()
                if e["event"] == "result"
                and e["check"] == "acl"
                and e.get("clientid") == "lockerd-backend"
                and e.get("acc") == 2
            ]

        if broker.kind == "compose":
            # the files backend answers the will's check: delivered with lockerd gone
            await watcher.wait_for("offline")
            assert will_check()[-1]["outcome"] == "allow"
        else:
            # nobody answers the broker's question about lockerd's will: dropped
            await wait_for_plugin_log(
                broker, lambda _: any(e["outcome"] == "error" for e in will_check())
            )
            assert [e["outcome"] for e in will_check()] == ["allow", "error"]  # online, will
            assert "offline" not in watcher.statuses
