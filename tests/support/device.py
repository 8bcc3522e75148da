"""A scriptable locker device for end-to-end tests, speaking the contract's MQTT (§2).

``async with device(broker_url, bank_id) as dev:`` connects (anonymously by default; test
brokers allow it, or with credentials from :func:`provision`), subscribes to the bank's command
topic and answers every command according to ``dev.answers[action]``:

* an :class:`Answer` (result, error code, message, delay, duplicate copies, topic ``response``
  or the deprecated ``status``, ``applied_config_hash``; :data:`ECHO` echoes the command's
  ``config_hash``), or
* ``None``: never answer (the command times out); answer later by hand with ``dev.respond``.

Every command received is kept in ``dev.commands``; ``await dev.next_command()`` waits for the
next one. Heartbeats, last wills, device events and raw payloads are one call each.
``await dev.come_online(fleet)`` heartbeats and waits until the bank is online and has recorded
the device's answer to the ``apply_config`` a bank gets as it comes online without its
configuration (contract §2; a new bank always does); :data:`CONFIG_PUSHED` is what that leaves
in the bank's history.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import trio

from actors.fleet import FleetView
from gateway.mqtt import MqttClient, MqttSettings, Will, open_mqtt_client

ECHO = "<echo the command's config_hash>"

#: a bank's history of an ``apply_config`` the backend sent by itself and the device applied
#: (what :meth:`TestDevice.come_online` leaves in a new bank's history after its coming online)
CONFIG_PUSHED = ("ConfigApplyRequested", "CommandDispatched", "ConfigApplied")


@dataclass(frozen=True)
class Answer:
    result: Literal["success", "error"] = "success"
    error_code: str | None = None
    message: str | None = None
    delay: float = 0.0
    copies: int = 1  # >1 publishes the very same answer again (a duplicate)
    topic: Literal["response", "status"] = "response"
    applied_config_hash: str | None = ECHO


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    return parts.hostname, parts.port or 1883


def client_settings(
    url: str,
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
    clean_session: bool = True,
) -> MqttSettings:
    host, port = broker_address(url)
    return MqttSettings(
        host=host,
        port=port,
        client_id=client_id,
        username=username,
        password=password,
        clean_session=clean_session,
        will=will,
        reconnect_min_delay=0.05,
        reconnect_max_delay=0.5,
    )


class TestDevice:
    __test__ = False  # not a pytest test class

    def __init__(self, client: MqttClient, bank_id: str, nursery: trio.Nursery) -> None:
        self.client = client
        self.bank_id = bank_id
        self.nursery = nursery
        self.answers: dict[str, Answer | None] = {
            "open_compartment": Answer(),
            "apply_config": Answer(),
        }
        self.commands: list[dict[str, Any]] = []
        self.session_id: str | None = None
        self.uptime = 0
        self._arrived = trio.Event()
        self._consumed = 0

    def topic(self, leaf: str) -> str:
        return f"locker/{self.bank_id}/{leaf}"

    # --- publishing ---------------------------------------------------------------------

    async def publish(
        self, leaf: str, payload: dict[str, Any] | bytes, *, retain: bool = False
    ) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish(self.topic(leaf), raw, qos=1, retain=retain)

    async def heartbeat(self, *, retain: bool = True, uptime_seconds: int | None = None) -> None:
        self.uptime = self.uptime + 1 if uptime_seconds is None else uptime_seconds
        payload: dict[str, Any] = {
            "type": "state",
            "state": "heartbeat",
            "data": {"timestamp": now_iso(), "uptime_seconds": self.uptime},
        }
        if self.session_id is not None:
            payload["session_id"] = self.session_id
        await self.publish("state", payload, retain=retain)

    def last_will_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "type": "state",
            "state": "connection_lost",
            "status": "offline",
            "timestamp": now_iso(),
            "reason": "test",
        }
        if self.session_id is not None:
            payload["session_id"] = self.session_id
        return payload

    async def last_will(self) -> None:
        """Publish what the broker would publish for this device's last will."""
        await self.publish("state", self.last_will_payload(), retain=True)

    async def event(self, event: str, data: dict[str, Any], *, event_id: str | None = None) -> None:
        payload: dict[str, Any] = {
            "type": "event",
            "event": event,
            "timestamp": now_iso(),
            "data": data,
        }
        if event_id is not None:
            payload["event_id"] = event_id
        await self.publish("event", payload)

    async def respond(self, command: dict[str, Any], answer: Answer | None = None) -> None:
        """Answer ``command`` (immediately; ``answer.delay`` is for automatic answers)."""
        answer = answer or Answer()
        payload: dict[str, Any] = {
            "type": "command_response",
            "action": command["action"],
            "result": answer.result,
            "transaction_id": command["transaction_id"],
            "timestamp": now_iso(),
        }
        if answer.message is not None:
            payload["message"] = answer.message
        if answer.error_code is not None:
            payload["error_code"] = answer.error_code
        if command["action"] == "apply_config" and answer.applied_config_hash is not None:
            payload["applied_config_hash"] = (
                command["data"]["config_hash"]
                if answer.applied_config_hash == ECHO
                else answer.applied_config_hash
            )
        for _ in range(answer.copies):
            await self.publish(answer.topic, payload)

    async def come_online(
        self, fleet: FleetView, *, within: float = 30.0, **heartbeat: Any
    ) -> dict[str, Any] | None:
        """Heartbeat and return once the bank is online and runs its configuration.

        A bank whose device has not applied its configuration (a new bank among them) gets an
        ``apply_config`` by itself when it comes online (contract §2); this device answers it
        (by ``answers["apply_config"]``, :data:`ECHO` by default) and this waits until lockerd
        has recorded the answer, so that a test about something else starts from a device
        that is up to date, as a real one is within a round trip. Returns that push, consumed
        from :meth:`next_command` (``None`` when none was due). ``heartbeat``: arguments of
        :meth:`heartbeat`.
        """
        await self.heartbeat(**heartbeat)

        async def configured() -> bool:
            status = fleet.banks.get(self.bank_id)
            return (
                status is not None
                and status.presence == "online"
                and status.config_hash is not None
                and status.applied_config_hash == status.config_hash
            )

        await wait_until(fleet, configured, within=within, what=f"bank {self.bank_id} configured")
        push = None
        while self._consumed < len(self.commands):
            command = self.commands[self._consumed]
            if command["action"] != "apply_config":
                break
            push = command
            self._consumed += 1
        return push

    # --- receiving ----------------------------------------------------------------------

    async def next_command(
        self, action: str | None = None, *, within: float = 30.0
    ) -> dict[str, Any]:
        """The next command not returned before (optionally of one action), waiting for it."""
        with trio.fail_after(within):
            while True:
                while self._consumed < len(self.commands):
                    command = self.commands[self._consumed]
                    self._consumed += 1
                    if action is None or command["action"] == action:
                        return command
                await self._arrived.wait()

    async def _receive(self) -> None:
        async for message in self.client.messages():
            if message.topic != self.topic("command"):
                continue
            command: dict[str, Any] = json.loads(message.payload)
            self.commands.append(command)
            self._arrived.set()
            self._arrived = trio.Event()
            answer = self.answers.get(command["action"], Answer())
            if answer is not None:
                self.nursery.start_soon(self._answer_later, command, answer)

    async def _answer_later(self, command: dict[str, Any], answer: Answer) -> None:
        if answer.delay:
            await trio.sleep(answer.delay)  # the device's own pace, part of the scenario
        await self.respond(command, replace(answer, delay=0.0))


@asynccontextmanager
async def device(
    broker_url: str,
    bank_id: str,
    *,
    client_id: str | None = None,
    username: str | None = None,
    password: str | None = None,
    session_id: str | None = None,
    clean_session: bool = True,
    last_will: bool = True,
) -> AsyncIterator[TestDevice]:
    """A connected device; ``clean_session=False`` lets the broker keep its subscription and
    queue its commands while it is away (with a fixed ``client_id``). Mosquitto publishes the
    last wills of its clients when it shuts down; ``last_will=False`` sets none."""
    client_id = client_id or f"test-device-{uuid.uuid4().hex[:12]}"
    will_payload = json.dumps(
        {
            "type": "state",
            "state": "connection_lost",
            "status": "offline",
            "timestamp": now_iso(),
            "reason": "connection lost",
            **({"session_id": session_id} if session_id else {}),
        }
    ).encode()
    settings = client_settings(
        broker_url,
        client_id,
        username=username,
        password=password,
        will=Will(f"locker/{bank_id}/state", will_payload, qos=1, retain=True)
        if last_will
        else None,
        clean_session=clean_session,
    )
    async with open_mqtt_client(settings) as client, trio.open_nursery() as nursery:
        dev = TestDevice(client, bank_id, nursery)
        dev.session_id = session_id
        nursery.start_soon(dev._receive)
        await client.subscribe([(dev.topic("command"), 1), ("server/status", 1)])
        try:
            yield dev
        finally:
            nursery.cancel_scope.cancel()


@dataclass
class Credentials:
    locker_bank_id: str
    mqtt_user: str
    mqtt_password: str
    client_id: str


async def provision(broker_url: str, token: str, *, within: float = 30.0) -> Credentials:
    """Redeem a provisioning token the way a device does (§2): register, await the reply."""
    client_id = f"test-device-{uuid.uuid4().hex[:12]}"
    async with open_mqtt_client(client_settings(broker_url, client_id)) as client:
        reply_topic = f"locker/provisioning/reply/{client_id}"
        await client.subscribe([(reply_topic, 1)])
        await client.publish(
            f"locker/register/{token}", json.dumps({"client_id": client_id}).encode(), qos=1
        )
        with trio.fail_after(within):
            async for message in client.messages():
                if message.topic == reply_topic:
                    reply = json.loads(message.payload)
                    break
    if reply.get("status") != "success":
        raise RuntimeError(f"provisioning failed: {reply}")
    return Credentials(client_id=client_id, **reply["data"])


async def wait_until(
    fleet: FleetView,
    check: Callable[[], Awaitable[Any]],
    *,
    within: float = 30.0,
    what: str = "the condition",
) -> Any:
    """Wait for ``check()`` to return something truthy, and return it; no fixed sleeps.

    ``check`` is re-run whenever a bank actor reports a change in the fleet view (every message
    an actor handles ends with one), with a short poll only as a fallback for changes that
    report nothing there (an HTTP-only read model, a rejected message).
    """
    subscription = fleet.subscribe()
    try:
        with trio.fail_after(within):
            while True:
                result = await check()
                if result:
                    return result
                with trio.move_on_after(0.05):
                    await subscription.changes()
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {within} s waiting for {what}") from None
    finally:
        subscription.close()


def config_hash(compartments: list[dict[str, int]], heartbeat_interval_seconds: int) -> str:
    """The contract's config_hash, computed independently of the backend's code."""
    body = json.dumps(
        {"compartments": compartments, "heartbeat_interval_seconds": heartbeat_interval_seconds},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()
