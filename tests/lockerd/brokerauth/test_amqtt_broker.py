"""A real broker enforcing lockerd's go-auth answers: amqtt 0.12.1 with its HTTP auth plugins.

mosquitto-go-auth is not installable here; amqtt's ``UserAuthHttpPlugin`` and
``TopicAuthHttpPlugin`` speak the same HTTP protocol (POST, JSON or form, status codes) and
are the only auth plugins loaded, so every CONNECT, SUBSCRIBE, PUBLISH and delivery below is
decided by lockerd's /api/mosq endpoints. lockerd's own gateway connects through the same
broker as the backend user. What amqtt cannot show (research/goauth.md §2): /superuser (never
called), the will ACL check, and go-auth's exact field name ``clientid`` (amqtt sends
``client_id``); test_goauth_endpoints.py covers those bodies.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.util import find_spec
from pathlib import Path

import pytest
import trio

from gateway.mqtt import ConnectionRefusedByBroker, MqttError, open_mqtt_client
from tests.support.device import client_settings, now_iso
from tests.support.goauth import MODES, Mode, metric_value, registrar
from tests.support.mosquitto import free_port
from tests.support.service import (
    MOSQ_SECRET,
    RunningLockerd,
    eventually,
    lockerd,
    test_settings,
)

BACKEND_USER = "lockerd-backend"
BACKEND_PASSWORD = "backend-password"
PROVISIONING_USER = "provisioning_client"
PROVISIONING_PASSWORD = "provisioning-password"
ROOT = Path(__file__).resolve().parents[3]


@asynccontextmanager
async def amqtt_broker(
    port: int, http_port: int, log_path: Path, *, form: bool = False
) -> AsyncIterator[str]:
    """Run tests/support/amqtt_broker.py; yields its URL once it accepts connections."""
    missing = [name for name in ("amqtt", "aiohttp", "sqlalchemy") if find_spec(name) is None]
    if missing:
        # amqtt.contrib.http imports aiohttp, amqtt.contrib imports sqlalchemy (goauth.md §2)
        pytest.fail(f"amqtt's HTTP auth plugins need {missing}: pip install {' '.join(missing)}")
    command = [
        sys.executable,
        "-m",
        "tests.support.amqtt_broker",
        "--port",
        str(port),
        "--http-port",
        str(http_port),
        "--secret",
        MOSQ_SECRET,
    ]
    if form:
        command.append("--form")
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=ROOT
        )
        assert process.stdout is not None and process.stdin is not None
        try:
            with trio.fail_after(20):
                seen = b""
                while b"\n" not in seen:
                    chunk = await process.stdout.receive_some(256)
                    if not chunk:
                        raise AssertionError(f"amqtt exited at start-up; see {log_path}")
                    seen += chunk
            assert seen.startswith(b"READY"), seen
            yield f"mqtt://127.0.0.1:{port}"
        finally:
            await process.stdin.aclose()  # the broker stops when its stdin closes
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def wait_gateway_routing(svc: RunningLockerd, url: str) -> None:
    """lockerd's gateway is connected and subscribed once an unknown-token register gets
    its error reply (the subscription itself cannot be observed from outside)."""
    await svc.context.mqtt.wait_connected()
    with trio.fail_after(20):
        while True:
            async with registrar(
                url,
                f"probe-{uuid.uuid4().hex[:8]}",
                username=PROVISIONING_USER,
                password=PROVISIONING_PASSWORD,
            ) as probe:
                await probe.send("probe-token")
                with trio.move_on_after(1.0):
                    reply = await probe.reply()
                    assert reply.body["status"] == "error"
                    return


def heartbeat_payload() -> bytes:
    return json.dumps(
        {
            "type": "state",
            "state": "heartbeat",
            "data": {"timestamp": now_iso(), "uptime_seconds": 1},
        }
    ).encode()


@pytest.mark.parametrize("mode", MODES)
async def test_amqtt_enforces_lockerd_decisions(tmp_path: Path, mode: Mode) -> None:
    http_port, broker_port = free_port(), free_port()
    settings = test_settings(
        f"mqtt://{BACKEND_USER}:{BACKEND_PASSWORD}@127.0.0.1:{broker_port}",
        tmp_path / "l.db",
        LOCKERD_HTTP=f"127.0.0.1:{http_port}",
    )
    async with (
        lockerd(settings, wait_subscribed=False) as svc,
        amqtt_broker(broker_port, http_port, tmp_path / "amqtt.log", form=mode == "form") as url,
    ):
        await wait_gateway_routing(svc, url)
        own = await svc.create_bank()
        other = await svc.create_bank()

        # provisioning through the broker, as the shared provisioning user
        async with registrar(
            url, "box-1", username=PROVISIONING_USER, password=PROVISIONING_PASSWORD
        ) as device:
            reply = await device.register(own["provisioning_token"])
            assert reply.ok, reply.body
            # another device's reply topic is not readable with the shared login
            with pytest.raises(MqttError, match="refused subscription"):
                await device.client.subscribe([("locker/provisioning/reply/box-2", 1)])
        user, password = reply.data["mqtt_user"], reply.data["mqtt_password"]
        bank_id = reply.data["locker_bank_id"]
        assert bank_id == own["id"]

        # a backend-user observer sees every state topic (it passes /acl as the backend)
        observer_settings = client_settings(
            url, "observer", username=BACKEND_USER, password=BACKEND_PASSWORD
        )
        async with open_mqtt_client(observer_settings, reconnect=False) as observer:
            await observer.subscribe([("locker/+/state", 1)])
            device_settings = client_settings(url, "box-1", username=user, password=password)
            async with open_mqtt_client(device_settings, reconnect=False) as dev:
                await dev.subscribe([(f"locker/{bank_id}/command", 1), ("server/status", 1)])
                # SUBACK 0x80 for another bank's command topic and for wildcards
                for forbidden in (f"locker/{other['id']}/command", "locker/+/command", "#"):
                    with pytest.raises(MqttError, match="refused subscription"):
                        await dev.subscribe([(forbidden, 1)])
                # a publish to another bank's state is dropped by the broker; the next,
                # allowed one is the barrier proving the first was not delivered
                await dev.publish(f"locker/{other['id']}/state", heartbeat_payload(), qos=1)
                await dev.publish(f"locker/{bank_id}/state", heartbeat_payload(), qos=1)
                with trio.fail_after(10):
                    message = await observer.messages().receive()
                assert message.topic == f"locker/{bank_id}/state"

                async def online() -> bool:
                    got = (await svc.admin_get(f"/api/admin/locker-banks/{bank_id}")).json()
                    return bool(got["presence"] == "online")

                await eventually(online)
                other_view = (await svc.admin_get(f"/api/admin/locker-banks/{other['id']}")).json()
                assert other_view["presence"] == "unknown"

        # wrong password, unknown user, revoked-after-use: CONNACK "not authorized"
        for username, secret in (
            (user, password + "x"),
            ("stranger", "whatever"),
            (PROVISIONING_USER, "wrong"),
            (BACKEND_USER, "wrong"),
        ):
            settings_bad = client_settings(url, "intruder", username=username, password=secret)
            with pytest.raises(ConnectionRefusedByBroker) as refused:
                async with open_mqtt_client(settings_bad, reconnect=False):
                    pass
            assert refused.value.code in (4, 5), refused.value

        # every decision above came from lockerd
        checks = "lockerd_goauth_checks_total"
        assert await metric_value(svc.http, checks, endpoint="auth", result="deny") >= 4
        assert await metric_value(svc.http, checks, endpoint="acl", result="deny") >= 5
        assert await metric_value(svc.http, checks, endpoint="acl", result="allow") >= 10
