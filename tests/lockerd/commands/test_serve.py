"""``lockerd serve`` as a real process: start-up, server/status, SIGTERM, kill -9, broker loss."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
import trio

from tests.support.mosquitto import MosquittoBroker, free_port
from tests.support.service import ADMIN_TOKEN, eventually

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@contextmanager
def lockerd_process(
    broker: MosquittoBroker, db: Path, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "LOCKERD_HTTP": f"127.0.0.1:{port}",
        "LOCKERD_MQTT_URL": broker.url,
        "LOCKERD_DATABASE": f"sqlite:///{db}",
        "LOCKERD_ADMIN_TOKEN": ADMIN_TOKEN,
        "LOCKERD_SECRET_KEY": "process-test-key",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "lockerd.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


async def wait_healthy(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=2.0) as client:

        async def healthy() -> bool:
            try:
                response = await client.get("/healthz")
            except httpx.TransportError:
                return False
            return response.status_code == 200

        await eventually(healthy, within=20.0)


def retained_server_status(broker: MosquittoBroker) -> dict[str, str]:
    """The retained message on server/status, as a fresh subscriber sees it."""
    received: list[bytes] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"probe-{os.getpid()}")
    client.on_message = lambda c, u, m: received.append(m.payload)
    client.connect(broker.host, broker.port)
    client.subscribe("server/status", qos=1)
    for _ in range(200):
        client.loop(0.05)
        if received:
            break
    client.disconnect()
    assert received, "no retained message on server/status"
    result: dict[str, str] = json.loads(received[-1])
    return result


async def create_bank(base: str) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as client:
        response = await client.post(
            "/api/admin/locker-banks",
            json={
                "name": "Process bank",
                "compartments": [{"number": 1, "slave_id": 1, "address": 0}],
            },
            headers=HEADERS,
        )
        assert response.status_code == 201, response.text
        bank_id: str = response.json()["id"]
        return bank_id


async def bank_history(base: str, bank_id: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as client:
        response = await client.get(f"/api/admin/locker-banks/{bank_id}/events", headers=HEADERS)
        assert response.status_code == 200, response.text
        events: list[dict[str, object]] = response.json()
        return events


async def test_graceful_and_abrupt_restarts_keep_everything(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = tmp_path / "lockerd.db"

    with lockerd_process(mosquitto, db, port) as process:
        await wait_healthy(base)
        assert retained_server_status(mosquitto) == {"status": "online"}
        bank_id = await create_bank(base)
        history = await bank_history(base, bank_id)
        process.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(process.wait, 15) == 0
    assert retained_server_status(mosquitto) == {"status": "offline"}

    with lockerd_process(mosquitto, db, port) as process:
        await wait_healthy(base)
        assert retained_server_status(mosquitto) == {"status": "online"}
        assert await bank_history(base, bank_id) == history
        second = await create_bank(base)
        process.kill()  # kill -9: no goodbye, the broker publishes our last will
        await trio.to_thread.run_sync(process.wait, 15)

    async def will_published() -> bool:
        return retained_server_status(mosquitto) == {"status": "offline"}

    await eventually(will_published, within=15.0)

    with lockerd_process(mosquitto, db, port):
        await wait_healthy(base)
        assert await bank_history(base, bank_id) == history
        assert len(await bank_history(base, second)) == 2


def test_bad_configuration_stops_startup_with_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "LOCKERD_COMMAND_TIMEOUT": "-5", "LOCKERD_DATABASE": "sqlite:///x.db"}
    result = subprocess.run(
        [sys.executable, "-m", "lockerd.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "LOCKERD_COMMAND_TIMEOUT" in lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LOCKERD_HTTP", "nonsense"),
        ("LOCKERD_MQTT_URL", "http://x"),
        ("LOCKERD_DATABASE", "mysql://x"),
        ("LOCKERD_ACCEPT_STATUS_TOPIC", "maybe"),
        ("LOCKERD_PROVISIONING_TOKEN_TTL", "1.5"),
        ("LOCKERD_LOG_LEVEL", "loud"),
        ("LOCKERD_LOG_FORMAT", "text"),
    ],
)
def test_each_bad_variable_is_named(variable: str, value: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lockerd.cli", "serve"],
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert variable in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line_and_a_failure(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "lockerd.cli", "serve"],
            env={
                **os.environ,
                "LOCKERD_HTTP": f"127.0.0.1:{port}",
                "LOCKERD_DATABASE": f"sqlite:///{tmp_path / 'l.db'}",
                "LOCKERD_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}",
            },
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"lockerd: cannot start: LOCKERD_HTTP: 127.0.0.1:{port} is already in use"]


def spawn_serve(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lockerd.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_every_line_is_json_stdlib_loggers_included(tmp_path: Path) -> None:
    """The MQTT adapter logs through the standard library; its lines are JSON like the rest."""
    port = free_port()
    env = {
        **os.environ,
        "LOCKERD_HTTP": f"127.0.0.1:{port}",
        "LOCKERD_DATABASE": f"sqlite:///{tmp_path / 'l.db'}",
        # nothing listens there: the adapter logs its failed connects (stdlib logging)
        "LOCKERD_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}",
        "LOCKERD_LOG_FORMAT": "json",
    }
    process = spawn_serve(env)
    assert process.stderr is not None

    def lines_until_the_adapter_logs() -> list[str]:
        """Read stderr up to the adapter's first line (its first failed connect), so that the
        service is stopped only after a standard-library logger has written."""
        assert process.stderr is not None
        lines: list[str] = []
        for line in process.stderr:
            lines.append(line)
            if json.loads(line).get("logger") == "gateway.mqtt":
                break
        return lines

    try:
        with trio.fail_after(15):
            # abandoned if it times out: killing the process below ends the read
            head = await trio.to_thread.run_sync(
                lines_until_the_adapter_logs, abandon_on_cancel=True
            )
        process.send_signal(signal.SIGTERM)
        _, rest = await trio.to_thread.run_sync(process.communicate, None, 15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    stderr = "".join(head) + rest
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert any(record.get("logger") == "gateway.mqtt" for record in records), records
    assert all({"event", "level", "timestamp"} <= record.keys() for record in records)
