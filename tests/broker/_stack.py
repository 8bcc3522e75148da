"""lockerd behind a real Mosquitto that asks it as mosquitto-go-auth does.

Two broker configurations:

* **compose**: exactly the deployment's (docker/mosquitto/ rendered by its entrypoint): go-auth's
  files backend answers for lockerd's own user, everyone else is asked over HTTP (``/acl`` only,
  no ``/superuser``), the cache as ``LOCKERD_BROKER_AUTH_CACHE_SECONDS`` says, the deployment's
  queue limits;
* **http-only**: every check, lockerd's own included, asked over HTTP (the configuration the
  issue found failing): what lockerd's start-up and shutdown order must survive.

lockerd runs in-process (:func:`running_app`) on a fixed loopback port, which the broker was
configured with before either started.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.support.device import Credentials, now_iso
from tests.support.fixtures import ComposeBrokerFactory, GoAuthBrokerFactory
from tests.support.goauth import registrar
from tests.support.goauth_broker import GoAuthBroker
from tests.support.mosquitto import free_port
from tests.support.service import BACKEND_PASSWORD, BACKEND_USER, MOSQ_SECRET
from tests.support.users import App, MovableClock, running_app

PROVISIONING_USER = "provisioning_client"
PROVISIONING_PASSWORD = "provisioning-password"  # tests.support.service.test_settings

Kind = Literal["compose", "http-only"]


@dataclass
class Broker:
    """A started broker and how lockerd reaches it."""

    goauth: GoAuthBroker
    http_port: int  # lockerd's HTTP port, which the broker asks
    kind: Kind

    @property
    def url(self) -> str:
        """For devices (credentials per client)."""
        return self.goauth.url

    @property
    def backend_url(self) -> str:
        """lockerd's LOCKERD_MQTT_URL: its own broker user."""
        return f"mqtt://{BACKEND_USER}:{BACKEND_PASSWORD}@{self.goauth.host}:{self.goauth.port}"

    def requests(self, **match: Any) -> list[dict[str, Any]]:
        """The plugin's HTTP requests whose fields equal ``match``."""
        return [
            entry
            for entry in self.goauth.plugin_requests()
            if all(entry.get(key) == value for key, value in match.items())
        ]

    def log_entries(self, **match: Any) -> list[dict[str, Any]]:
        return [
            entry
            for entry in self.goauth.plugin_log()
            if all(entry.get(key) == value for key, value in match.items())
        ]


def stable_port() -> int:
    """A free loopback port below the kernel's ephemeral range: lockerd restarts on it (the
    broker is configured with it), and no outgoing connection can take it in between, as
    one could take a port that the kernel handed out (``free_port``)."""
    import random
    import socket

    low = 32768
    with suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


def start_broker(
    kind: Kind,
    *,
    compose_broker_factory: ComposeBrokerFactory,
    goauth_broker_factory: GoAuthBrokerFactory,
    cache_seconds: int = 0,
) -> Broker:
    http_port = stable_port()
    if kind == "compose":
        goauth = compose_broker_factory(
            http_port=http_port,
            secret=MOSQ_SECRET,
            backend_user=BACKEND_USER,
            backend_password=BACKEND_PASSWORD,
            cache_seconds=cache_seconds,
        )
    else:
        goauth = goauth_broker_factory(
            http_port=http_port,
            secret=MOSQ_SECRET,
            superuser_uri=None,  # every ACL check of lockerd's own user is an /acl request
            cache=cache_seconds > 0,
            auth_cache_seconds=cache_seconds or 30,
            acl_cache_seconds=cache_seconds or 30,
        )
    return Broker(goauth, http_port, kind)


@asynccontextmanager
async def lockerd_at(
    broker: Broker, db_path: Path, clock: MovableClock | None = None, **env: str
) -> AsyncIterator[App]:
    """lockerd on the port the broker asks, as its backend user."""
    cache = "0"
    if broker.goauth.compose is not None:
        cache = broker.goauth.compose.plugin_options["acl_cache_seconds"]
    elif broker.goauth.goauth.cache:
        cache = str(broker.goauth.goauth.acl_cache_seconds)
    settings_env = {
        "LOCKERD_HTTP": f"127.0.0.1:{broker.http_port}",
        "LOCKERD_BROKER_AUTH_CACHE_SECONDS": cache,
        **env,
    }
    async with running_app(broker.backend_url, db_path, clock, **settings_env) as app:
        await app.context.mqtt.wait_connected()
        yield app


async def provision(broker: Broker, token: str, client_id: str) -> Credentials:
    """Redeem a provisioning token through the broker, as the shared provisioning user."""
    async with registrar(
        broker.url, client_id, username=PROVISIONING_USER, password=PROVISIONING_PASSWORD
    ) as device:
        reply = await device.register(token, within=20.0)
    assert reply.ok, reply.body
    return Credentials(client_id=client_id, **reply.data)


def heartbeat_payload(
    uptime: int, session_id: str | None = None, timestamp: str | None = None
) -> bytes:
    payload: dict[str, Any] = {
        "type": "state",
        "state": "heartbeat",
        "data": {"timestamp": timestamp or now_iso(), "uptime_seconds": uptime},
    }
    if session_id is not None:
        payload["session_id"] = session_id
    return json.dumps(payload).encode()


# --------------------------------------------------------------------------- lockerd serve


def serve_env(broker: Broker, db_path: Path, **env: str) -> dict[str, str]:
    """The environment of a ``lockerd serve`` process behind ``broker``."""
    import os

    from tests.support.service import ADMIN_TOKEN

    cache = "0"
    if broker.goauth.compose is not None:
        cache = broker.goauth.compose.plugin_options["acl_cache_seconds"]
    # a child started as a script (tests/broker/blocking_lockerd.py) would import the package
    # the environment has installed, which may be another checkout: this one comes first
    checkout = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": python_path,
        "LOCKERD_HTTP": f"127.0.0.1:{broker.http_port}",
        "LOCKERD_MQTT_URL": broker.backend_url,
        "LOCKERD_DATABASE": f"sqlite:///{db_path}",
        "LOCKERD_ADMIN_TOKEN": ADMIN_TOKEN,
        "LOCKERD_SECRET_KEY": "test-secret-key",
        "LOCKERD_MOSQ_SECRET": MOSQ_SECRET,
        "LOCKERD_PROVISIONING_PASSWORD": PROVISIONING_PASSWORD,
        "LOCKERD_BROKER_AUTH_CACHE_SECONDS": cache,
        "LOCKERD_LOG_LEVEL": "warning",
        **env,
    }


async def wait_healthy(base_url: str, within: float = 30.0) -> None:
    import httpx

    from tests.support.service import eventually

    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as client:

        async def healthy() -> bool:
            try:
                return (await client.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(healthy, within=within)


# --------------------------------------------------------------------------- raw MQTT


class RawMqtt:
    """MQTT 3.1.1 over a bare socket, byte for byte: what a device's firmware sends, including
    a QoS 1 retransmission (DUP) of a message sent on an earlier connection."""

    def __init__(self, host: str, port: int) -> None:
        import socket

        self.sock = socket.create_connection((host, port), timeout=10)

    @staticmethod
    def _utf8(value: str | bytes) -> bytes:
        import struct

        data = value.encode() if isinstance(value, str) else value
        return struct.pack("!H", len(data)) + data

    @staticmethod
    def _packet(first: int, body: bytes) -> bytes:
        length = bytearray()
        n = len(body)
        while True:
            byte, n = n % 128, n // 128
            length.append(byte | (0x80 if n else 0))
            if not n:
                return bytes([first]) + bytes(length) + body

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                return data
            data += chunk
        return data

    def connect(
        self,
        client_id: str,
        username: str,
        password: str,
        *,
        clean: bool,
        will: tuple[str, bytes] | None = None,
    ) -> tuple[int, bool]:
        """CONNECT; returns (CONNACK return code, session present)."""
        import struct

        flags = 0xC0 | (0x02 if clean else 0)
        payload = self._utf8(client_id)
        if will is not None:
            flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
            payload += self._utf8(will[0]) + self._utf8(will[1])
        payload += self._utf8(username) + self._utf8(password)
        header = self._utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 60)
        self.sock.sendall(self._packet(0x10, header + payload))
        answer = self._read(4)
        assert answer[:1] == b"\x20", answer
        return answer[3], bool(answer[2] & 1)

    def publish(
        self, topic: str, payload: bytes, *, packet_id: int, retain: bool = True, dup: bool = False
    ) -> None:
        """PUBLISH at QoS 1 and wait for its PUBACK."""
        import struct

        first = 0x32 | (0x01 if retain else 0) | (0x08 if dup else 0)
        body = self._utf8(topic) + struct.pack("!H", packet_id) + payload
        self.sock.sendall(self._packet(first, body))
        answer = self._read(4)
        assert answer == b"\x40\x02" + struct.pack("!H", packet_id), answer

    def abort(self) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the will."""
        self.sock.close()


async def wait_for_plugin_log(
    broker: Broker, predicate: Any, *, within: float = 15.0, what: str = "a plugin log entry"
) -> list[dict[str, Any]]:
    """Wait until ``predicate(entries)`` holds for the plugin's log; return the entries.

    The log is a file another process writes: there is nothing to await, so it is polled.
    """
    import trio

    with trio.fail_after(within):
        while True:
            entries = broker.goauth.plugin_log()
            if predicate(entries):
                return entries
            await trio.sleep(0.05)  # another process's file: polled


class LockerdRun:
    """lockerd running in a task of its own, so that clients can outlive it (a restart)."""

    def __init__(self, app: App, stop: Any, stopped: Any) -> None:
        self.app = app
        self._stop = stop
        self._stopped = stopped

    @classmethod
    async def start(cls, broker: Broker, db_path: Path, nursery: Any, **env: str) -> LockerdRun:
        import trio

        stop, stopped, started = trio.Event(), trio.Event(), trio.Event()
        holder: list[App] = []

        async def run() -> None:
            try:
                async with lockerd_at(broker, db_path, None, **env) as app:
                    holder.append(app)
                    started.set()
                    await stop.wait()
            finally:
                stopped.set()

        nursery.start_soon(run)
        await started.wait()
        return cls(holder[0], stop, stopped)

    async def stop(self) -> None:
        """Stop gracefully (what SIGTERM does) and wait until lockerd has finished."""
        self._stop.set()
        await self._stopped.wait()


def publish_blob(messages: list[tuple[str, bytes]], *, first_id: int = 1) -> bytes:
    """One buffer of QoS 1 PUBLISH packets (packet ids from ``first_id``, cycling)."""
    import struct

    parts = []
    for index, (topic, payload) in enumerate(messages):
        packet_id = (first_id + index - 1) % 65535 + 1
        body = RawMqtt._utf8(topic) + struct.pack("!H", packet_id) + payload
        parts.append(RawMqtt._packet(0x32, body))
    return b"".join(parts)


def send_burst(conn: RawMqtt, blob: bytes, count: int) -> None:
    """Write ``count`` pre-encoded QoS 1 publishes at once and read their PUBACKs (blocking:
    run it in a thread)."""
    import threading

    acked = bytearray()
    failure: list[BaseException] = []

    def read() -> None:
        try:
            while len(acked) < 4 * count:
                chunk = conn.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("broker closed the connection during the burst")
                acked.extend(chunk)
        except BaseException as exc:  # reported to the caller
            failure.append(exc)

    reader = threading.Thread(target=read, name="burst-pubacks")
    reader.start()
    conn.sock.settimeout(60)
    conn.sock.sendall(blob)
    reader.join(120)
    if failure:
        raise failure[0]
    assert len(acked) == 4 * count, (len(acked), 4 * count)
