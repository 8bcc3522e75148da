"""A simulated locker bank controller: the reference device for the MQTT contract.

One :class:`SimulatedDevice` behaves as firmware should (docs/firmware.md):

* **Provisioning.** Connects as the shared provisioning user with its own client id,
  subscribes to ``locker/provisioning/reply/{client_id}``, publishes ``{"client_id"}`` on
  ``locker/register/{token}`` and waits for the reply. An error reply is final; no reply
  within the timeout is retried with backoff.
* **Connection.** Connects with the issued credentials, ``clean_session=false`` (persistent
  session: commands sent while it is away are queued by the broker), a fresh ``session_id``
  per connection and a last will on ``locker/{bank}/state`` carrying that ``session_id``.
  Subscribes to ``locker/{bank}/command`` and ``server/status`` (QoS 1).
* **Heartbeats.** Retained, QoS 1, at once after connecting, then every interval (the one
  from the last ``apply_config``), with the connection's ``session_id`` and the uptime since
  boot. When the backend announces ``server/status`` online the device beats at once.
* **Commands.** Exactly once per ``transaction_id``: the id goes into a journal (kept across
  reboots, as flash would) before anything happens; a duplicate, during or after execution,
  gets the stored response again and never a second door pulse. A command is refused with
  ``EXPIRED`` once its ``expires_at`` has passed (checked when it arrives and again right
  before acting).
* **apply_config.** Validates, applies, and answers with ``applied_config_hash`` computed by
  the device itself (:func:`lockerd.device.protocol.config_hash`).
* **Events.** A successful open reports ``door_state_changed`` ``open`` and, after the door
  has been open a while, ``closed``, each with a fresh ``event_id``.

Fault injection (:class:`Behaviour`): response delay distribution, error rate with jam mode
(``DOOR_JAMMED``), drop rate (the command is ignored: no answer, no action) and crashes (the
TCP connection is cut without DISCONNECT so the broker publishes the will; the device reboots
after a delay, with uptime starting again at 0).
"""

from __future__ import annotations

import math
import random
import socket
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field, fields
from typing import Literal

import structlog
import trio

from domain.backoff import jittered_backoff
from gateway.mqtt import (
    ConnectionRefusedByBroker,
    InboundMessage,
    MqttClient,
    MqttError,
    MqttSettings,
    Will,
    open_mqtt_client,
)
from lockerd.device import protocol as p

log = structlog.get_logger("lockerd.device")

JOURNAL_SIZE = 4096  # transaction ids remembered per device (the backend's command timeout
# bounds how late a duplicate can usefully arrive; 4096 covers far more than that)


# ---------------------------------------------------------------------------------- knobs


@dataclass(frozen=True, slots=True)
class Delay:
    """A distribution of delays in seconds: ``fixed``, ``uniform``, ``exp`` or ``normal``."""

    kind: Literal["fixed", "uniform", "exp", "normal"] = "fixed"
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def fixed(cls, seconds: float) -> Delay:
        return cls("fixed", seconds, 0.0)

    @classmethod
    def parse(cls, text: str) -> Delay:
        """``0.05`` | ``fixed:0.05`` | ``uniform:0.01:0.2`` | ``exp:0.05`` (mean) |
        ``normal:0.05:0.01`` (mean, standard deviation; clipped at 0)."""
        parts = text.strip().split(":")
        try:
            numbers = [float(x) for x in parts[1:]] if len(parts) > 1 else [float(parts[0])]
        except ValueError:
            raise ValueError(f"not a delay: {text!r}") from None
        kind = parts[0] if len(parts) > 1 else "fixed"
        if any(n < 0 or not math.isfinite(n) for n in numbers):
            raise ValueError(f"delays must be finite and non-negative: {text!r}")
        if kind == "fixed" and len(numbers) == 1:
            return cls("fixed", numbers[0])
        if kind == "uniform" and len(numbers) == 2 and numbers[0] <= numbers[1]:
            return cls("uniform", numbers[0], numbers[1])
        if kind == "exp" and len(numbers) == 1:
            return cls("exp", numbers[0])
        if kind == "normal" and len(numbers) == 2:
            return cls("normal", numbers[0], numbers[1])
        raise ValueError(
            f"not a delay: {text!r} (use S, fixed:S, uniform:LO:HI, exp:MEAN or normal:MEAN:SD)"
        )

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "exp":
            return rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0
        return max(0.0, rng.gauss(self.a, self.b))

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"{self.a:g}"
        if self.kind in ("uniform", "normal"):
            return f"{self.kind}:{self.a:g}:{self.b:g}"
        return f"exp:{self.a:g}"


ONE_SECOND = Delay("fixed", 1.0)


@dataclass(frozen=True, slots=True)
class Behaviour:
    response_delay: Delay = Delay()  # before a command is acted on and answered
    error_rate: float = 0.0  # probability that an open fails with DOOR_JAMMED
    jam_mode: Literal["transient", "sticky"] = "transient"  # sticky: a jammed door stays jammed
    drop_rate: float = 0.0  # probability that a command is ignored (no action, no answer)
    crash_rate: float = 0.0  # crashes per device per minute (Poisson)
    reboot_delay: Delay = ONE_SECOND  # from crash to power-on
    door_open: Delay = ONE_SECOND  # how long an opened door stays open
    heartbeat_interval: float = 10.0  # until an apply_config says otherwise
    pin_heartbeat_interval: bool = False  # keep heartbeat_interval even after apply_config
    keepalive: int = 30
    provision_timeout: float = 30.0  # wait for a provisioning reply before asking again
    offline_on_shutdown: bool = True  # publish the offline state before a clean disconnect

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.crash_rate < 0:
            raise ValueError("crash_rate must not be negative")
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")


@dataclass(frozen=True, slots=True)
class Link:
    """Where and how devices reach the broker."""

    host: str
    port: int
    provisioning_user: str | None = "provisioning_client"
    provisioning_password: str | None = None
    connect_timeout: float = 10.0


# ---------------------------------------------------------------------------------- stats


@dataclass(slots=True)
class FleetStats:
    """Counters shared by all devices of a fleet; ``wait_until`` awaits a condition on them."""

    devices: int = 0
    provisioned: int = 0
    provisioning_failed: int = 0
    provisioning_retries: int = 0
    connected: int = 0  # devices with a live device connection now
    online: int = 0  # of those, the ones whose first heartbeat was acknowledged
    connects: int = 0
    connect_failures: int = 0
    auth_refused: int = 0
    heartbeats: int = 0
    commands: int = 0  # command messages received (duplicates included)
    duplicates: int = 0
    answered: int = 0  # first answers published (one per executed or refused transaction)
    succeeded: int = 0
    jammed: int = 0
    expired: int = 0
    refused: int = 0  # other error answers (unknown compartment, invalid command, ...)
    dropped: int = 0
    malformed: int = 0  # not answerable at all
    door_pulses: int = 0
    configs_applied: int = 0
    events: int = 0
    crashes: int = 0
    device_errors: int = 0
    _changed: trio.Event | None = None

    def changed(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_until(self, condition: Callable[[FleetStats], bool]) -> None:
        while not condition(self):
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


AnswerHook = Callable[[str, str, bytes], None]  # (bank_id, transaction_id, response payload)


# ---------------------------------------------------------------------------------- device


@dataclass(slots=True)
class Door:
    state: Literal["open", "closed"] = "closed"
    jammed: bool = False


@dataclass(slots=True)
class _Flash:
    """What survives a reboot."""

    credentials: p.Credentials | None = None
    config: p.DeviceConfig | None = None
    journal: OrderedDict[str, bytes | None] = field(default_factory=OrderedDict)


class SimulatedDevice:
    def __init__(
        self,
        link: Link,
        *,
        provisioning_token: str | None = None,
        credentials: p.Credentials | None = None,
        compartments: int = 4,
        behaviour: Behaviour = Behaviour(),
        client_id: str | None = None,
        stats: FleetStats | None = None,
        rng: random.Random | None = None,
        connect_limiter: trio.CapacityLimiter | None = None,
        stop: trio.Event | None = None,
        on_answer: AnswerHook | None = None,
    ) -> None:
        if provisioning_token is None and credentials is None:
            raise ValueError("a device needs a provisioning token or credentials")
        self.link = link
        self.token = provisioning_token
        self.behaviour = behaviour
        self.client_id = client_id or f"sim-{uuid.uuid4().hex[:16]}"
        if not p.valid_client_id(self.client_id):
            raise ValueError(f"invalid MQTT client id {self.client_id!r}")
        self.stats = stats if stats is not None else FleetStats()
        self.stats.devices += 1
        self.rng = rng or random.Random()
        self.limiter = connect_limiter if connect_limiter is not None else trio.CapacityLimiter(1)
        self.stop_requested = stop if stop is not None else trio.Event()
        self.on_answer = on_answer
        self.flash = _Flash(credentials=credentials)
        self.doors: dict[int, Door] = {n: Door() for n in range(1, compartments + 1)}
        self.heartbeat_interval = behaviour.heartbeat_interval
        # observable by tests and benchmarks
        self.status: Literal[
            "new", "provisioning", "connecting", "online", "rebooting", "failed", "stopped"
        ] = "new"
        self.error: str | None = None
        self.executions: Counter[str] = Counter()  # physical actions per transaction id
        self.responses_sent: Counter[str] = Counter()
        self.pulses: Counter[int] = Counter()  # door pulses per compartment number
        self.provisioned = trio.Event()
        self.provisioning_seconds: float | None = None  # last registration -> reply
        self.session_id: str | None = None
        # volatile, per boot / per connection
        self._boot_started = 0.0
        self._client: MqttClient | None = None
        self._client_changed = trio.Event()
        self._beat_now = trio.Event()
        self._crashing = False
        self._boot_scope = trio.CancelScope()
        self._waiting_duplicates: Counter[str] = Counter()
        self._world: trio.Nursery | None = None
        self._changed: trio.Event | None = None

    # ------------------------------------------------------------------ public

    @property
    def credentials(self) -> p.Credentials | None:
        return self.flash.credentials

    @property
    def bank_id(self) -> str | None:
        creds = self.flash.credentials
        return None if creds is None else creds.bank_id

    @property
    def applied_config(self) -> p.DeviceConfig | None:
        return self.flash.config

    def uptime(self) -> int:
        return int(trio.current_time() - self._boot_started)

    async def wait_for(self, condition: Callable[[SimulatedDevice], bool]) -> None:
        """Wait until ``condition(device)`` holds (re-checked whenever the device changes)."""
        while not condition(self):
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def crash(self) -> None:
        """Cut the power now: the connection ends without DISCONNECT (the broker sends the
        will), the device reboots after ``behaviour.reboot_delay``."""
        self._crashing = True
        client = self._client
        if client is not None:
            _abort_connection(client)
        self._boot_scope.cancel()

    async def run(self) -> None:
        """Provision if needed, then stay connected until ``stop`` is set (graceful) or the
        task is cancelled. Provisioning refused by the backend ends it with status failed."""
        try:
            async with trio.open_nursery() as world:
                self._world = world
                try:
                    if self.flash.credentials is None:
                        with trio.CancelScope() as provisioning:
                            world.start_soon(self._cancel_on_stop, provisioning)
                            await self._provision()
                        if provisioning.cancelled_caught:
                            return
                    else:
                        self.provisioned.set()
                    while not self.stop_requested.is_set():
                        crashed = await self._power_cycle()
                        if not crashed:
                            break
                        self._set_status("rebooting")
                        with trio.move_on_after(self.behaviour.reboot_delay.sample(self.rng)):
                            await self.stop_requested.wait()
                finally:
                    world.cancel_scope.cancel()
            if self.status != "failed":
                self._set_status("stopped")
        except p.ProvisioningRejected as exc:
            self.error = f"provisioning refused: {exc}"
            self.stats.provisioning_failed += 1
            self._set_status("failed")
            log.warning("device_failed", client_id=self.client_id, error=self.error)

    async def _cancel_on_stop(self, scope: trio.CancelScope) -> None:
        await self.stop_requested.wait()
        scope.cancel()

    # ------------------------------------------------------------------ provisioning

    async def _provision(self) -> None:
        assert self.token is not None
        self._set_status("provisioning")
        link = self.link
        settings = MqttSettings(
            host=link.host,
            port=link.port,
            client_id=self.client_id,
            username=link.provisioning_user,
            password=link.provisioning_password,
            clean_session=True,
            keepalive=self.behaviour.keepalive,
            connect_timeout=link.connect_timeout,
            inbound_capacity=16,
        )
        reply_topic = p.provisioning_reply_topic(self.client_id)
        failures = 0
        while True:
            try:
                async with self.limiter, open_mqtt_client(settings, reconnect=False) as client:
                    set_tcp_nodelay(client)
                    await client.subscribe([(reply_topic, 1)])
                    while True:
                        # Subscribed first, so the reply cannot be missed. On silence, ask
                        # again on the same connection (the first request may have been lost).
                        asked = trio.current_time()
                        await client.publish(
                            p.register_topic(self.token),
                            p.register_payload(self.client_id),
                            qos=1,
                        )
                        with trio.move_on_after(self.behaviour.provision_timeout):
                            credentials = await self._await_reply(client, reply_topic)
                            self.provisioning_seconds = trio.current_time() - asked
                            self.flash.credentials = credentials
                            self.stats.provisioned += 1
                            self.provisioned.set()
                            self._notify()
                            return
                        self.stats.provisioning_retries += 1
            except (MqttError, trio.TooSlowError) as exc:
                log.debug(
                    "provisioning_connection_failed", client_id=self.client_id, error=str(exc)
                )
            failures += 1
            self.stats.provisioning_retries += 1
            await trio.sleep(_backoff(self.rng, failures))

    async def _await_reply(self, client: MqttClient, reply_topic: str) -> p.Credentials:
        """The credentials from the reply; raises ProvisioningRejected on an error reply."""
        async for message in client.messages():
            if message.topic != reply_topic:
                continue
            try:
                return p.parse_provisioning_reply(message.payload)
            except p.ProvisioningRejected:
                raise
            except ValueError as exc:
                log.warning("provisioning_reply_unusable", client_id=self.client_id, error=str(exc))
        raise MqttError("connection closed while waiting for the provisioning reply")

    # ------------------------------------------------------------------ power cycle

    async def _power_cycle(self) -> bool:
        """One boot, until a crash (returns True) or a graceful stop (returns False)."""
        self._crashing = False
        self._boot_started = trio.current_time()
        self._set_status("connecting")
        async with trio.open_nursery() as boot:
            self._boot_scope = boot.cancel_scope
            if self.behaviour.crash_rate > 0:
                boot.start_soon(self._crash_timer)
            boot.start_soon(self._stop_watch, boot.cancel_scope)
            await self._connection_loop(boot)
        return self._crashing

    async def _crash_timer(self) -> None:
        mean_seconds = 60.0 / self.behaviour.crash_rate
        await trio.sleep(self.rng.expovariate(1.0 / mean_seconds))
        self.stats.crashes += 1
        log.debug("device_crash", client_id=self.client_id)
        self.crash()

    async def _stop_watch(self, boot_scope: trio.CancelScope) -> None:
        await self.stop_requested.wait()
        client = self._client
        session_id = self.session_id
        creds = self.flash.credentials
        if self.behaviour.offline_on_shutdown and client is not None and creds is not None:
            with trio.move_on_after(2.0), suppress(MqttError):
                await client.publish(
                    p.state_topic(creds.bank_id),
                    p.offline_payload(session_id or "", p.utc_now(), reason="shutdown"),
                    qos=1,
                    retain=True,
                )
        boot_scope.cancel()

    async def _connection_loop(self, boot: trio.Nursery) -> None:
        creds = self.flash.credentials
        assert creds is not None
        failures = 0
        while True:
            session_id = uuid.uuid4().hex
            settings = MqttSettings(
                host=self.link.host,
                port=self.link.port,
                client_id=self.client_id,
                username=creds.mqtt_user,
                password=creds.mqtt_password,
                clean_session=False,
                keepalive=self.behaviour.keepalive,
                will=Will(
                    p.state_topic(creds.bank_id),
                    p.offline_payload(session_id, p.utc_now()),
                    qos=1,
                    retain=True,
                ),
                connect_timeout=self.link.connect_timeout,
                inbound_capacity=64,
            )
            try:
                async with AsyncExitStack() as stack:
                    async with self.limiter:
                        client = await stack.enter_async_context(
                            open_mqtt_client(settings, reconnect=False)
                        )
                    set_tcp_nodelay(client)
                    failures = 0
                    await self._session(client, session_id, creds, boot)
            except ConnectionRefusedByBroker as exc:
                self.stats.auth_refused += 1
                log.warning("device_refused", client_id=self.client_id, error=str(exc))
                failures = max(failures, 5)
            except (MqttError, trio.TooSlowError) as exc:
                self.stats.connect_failures += 1
                log.debug("device_connection_ended", client_id=self.client_id, error=str(exc))
            failures += 1
            self._set_status("connecting")
            await trio.sleep(_backoff(self.rng, failures))

    async def _session(
        self, client: MqttClient, session_id: str, creds: p.Credentials, boot: trio.Nursery
    ) -> None:
        self.stats.connects += 1
        self.stats.connected += 1
        beaten = False
        self.session_id = session_id
        self._set_client(client)
        command_topic = p.command_topic(creds.bank_id)
        try:
            await client.subscribe([(command_topic, 1), (p.SERVER_STATUS_TOPIC, 1)])
            async with trio.open_nursery() as session:
                started = trio.Event()
                session.start_soon(self._heartbeat_loop, client, session_id, creds, started)
                await started.wait()
                beaten = True
                self.stats.online += 1
                self._set_status("online")
                async for message in client.messages():
                    self._on_message(message, command_topic, boot)
        finally:
            self._set_client(None)
            self.stats.connected -= 1
            if beaten:
                self.stats.online -= 1
            self.stats.changed()

    async def _heartbeat_loop(
        self, client: MqttClient, session_id: str, creds: p.Credentials, started: trio.Event
    ) -> None:
        topic = p.state_topic(creds.bank_id)
        due = trio.current_time()
        while True:
            # Fixed rate: the next beat is due one interval after this one was due, however
            # long the publish or a busy scheduler took, so delays do not add up to a
            # longer interval (the backend declares a bank offline after 3 intervals).
            self._beat_now = trio.Event()
            payload = p.heartbeat_payload(session_id, self.uptime(), p.utc_now())
            await client.publish(topic, payload, qos=1, retain=True)
            self.stats.heartbeats += 1
            started.set()
            now = trio.current_time()
            due = max(due + self.heartbeat_interval, now - self.heartbeat_interval)
            with trio.move_on_at(due):
                await self._beat_now.wait()
            if self._beat_now.is_set():  # an early beat (config change, server online)
                due = trio.current_time()

    def _on_message(self, message: InboundMessage, command_topic: str, boot: trio.Nursery) -> None:
        if message.topic == command_topic:
            self._on_command(message.payload, boot)
        elif message.topic == p.SERVER_STATUS_TOPIC and b'"online"' in message.payload:
            self._beat_now.set()  # the backend (re)started: tell it at once that we are here

    # ------------------------------------------------------------------ commands

    def _on_command(self, payload: bytes, boot: trio.Nursery) -> None:
        self.stats.commands += 1
        try:
            command = p.parse_command(payload)
        except p.CommandError as exc:
            if exc.transaction_id is None:
                self.stats.malformed += 1
                log.warning("command_unanswerable", client_id=self.client_id, reason=str(exc))
                return
            command = p.Command(exc.action or "unknown", exc.transaction_id, None, None, {})
            refusal: str | None = str(exc)
        else:
            refusal = None
        tid = command.transaction_id
        journal = self.flash.journal
        if tid in journal:
            self.stats.duplicates += 1
            stored = journal[tid]
            if stored is None:  # still executing: it is answered again once done
                self._waiting_duplicates[tid] += 1
            else:
                boot.start_soon(self._send_response, tid, stored, False)
            self._notify()
            return
        if self.behaviour.drop_rate and self.rng.random() < self.behaviour.drop_rate:
            self.stats.dropped += 1
            self._notify()
            return
        journal[tid] = None  # claimed before anything happens: exactly once from here on
        while len(journal) > JOURNAL_SIZE:
            _, value = next(iter(journal.items()))
            if value is None:  # never evict a command that is still executing
                break
            journal.popitem(last=False)
        boot.start_soon(self._execute, command, refusal)

    async def _execute(self, command: p.Command, refusal: str | None) -> None:
        tid = command.transaction_id
        try:
            delay = self.behaviour.response_delay.sample(self.rng)
            if delay > 0:
                await trio.sleep(delay)  # the controller is busy (bus, relay, mechanics)
        except BaseException:
            # interrupted before acting (crash, shutdown): nothing happened, so forget the id
            if self.flash.journal.get(tid, b"") is None:
                del self.flash.journal[tid]
            self._waiting_duplicates.pop(tid, None)
            raise
        response = self._perform(command, refusal)
        self.flash.journal[tid] = response  # recorded before it is sent
        await self._send_response(tid, response, True)
        for _ in range(self._waiting_duplicates.pop(tid, 0)):
            await self._send_response(tid, response, False)

    def _perform(self, command: p.Command, refusal: str | None) -> bytes:
        """Decide and act, synchronously: there is no await between the checks and the pulse."""
        now = p.utc_now()
        action, tid = command.action, command.transaction_id

        def error(code: str, message: str) -> bytes:
            if code == p.DOOR_JAMMED:
                self.stats.jammed += 1
            elif code == p.EXPIRED:
                self.stats.expired += 1
            else:
                self.stats.refused += 1
            return p.response_payload(action, tid, "error", now, message=message, error_code=code)

        if refusal is not None:
            return error(p.INVALID_COMMAND, refusal)
        if command.expires_at is not None and now >= command.expires_at:
            return error(p.EXPIRED, "Command expired before it could be executed.")
        if action == p.OPEN_COMPARTMENT:
            number = command.data.get("compartment_number")
            if type(number) is not int:
                return error(p.INVALID_COMMAND, "data.compartment_number must be an integer.")
            door = self.doors.get(number)
            if door is None:
                return error(p.UNKNOWN_COMPARTMENT, f"No compartment {number} on this bank.")
            if door.jammed or (
                self.behaviour.error_rate and self.rng.random() < self.behaviour.error_rate
            ):
                if self.behaviour.jam_mode == "sticky":
                    door.jammed = True
                return error(p.DOOR_JAMMED, "Could not open compartment, mechanism is jammed.")
            self.executions[tid] += 1
            self.pulses[number] += 1
            self.stats.door_pulses += 1
            self.stats.succeeded += 1
            self._door_opened(number)
            return p.response_payload(
                action, tid, "success", now, message="Compartment opened successfully."
            )
        if action == p.APPLY_CONFIG:
            try:
                config = p.parse_config(command.data)
            except ValueError as exc:
                return error(p.INVALID_CONFIG, str(exc))
            sent_hash = command.data.get("config_hash")
            if sent_hash != config.config_hash:
                log.warning(
                    "config_hash_differs",
                    client_id=self.client_id,
                    sent=sent_hash,
                    computed=config.config_hash,
                )
            self.executions[tid] += 1
            self._apply(config)
            self.stats.succeeded += 1
            return p.response_payload(
                action,
                tid,
                "success",
                now,
                message="Config applied.",
                applied_config_hash=config.config_hash,
            )
        return error(p.UNSUPPORTED_ACTION, f"Action {action!r} is not supported.")

    def _apply(self, config: p.DeviceConfig) -> None:
        self.flash.config = config
        self.stats.configs_applied += 1
        numbers = {entry.id for entry in config.compartments}
        for number in numbers - set(self.doors):
            self.doors[number] = Door()
        for number in set(self.doors) - numbers:
            del self.doors[number]
        if not self.behaviour.pin_heartbeat_interval:
            self.heartbeat_interval = float(config.heartbeat_interval_seconds)
            self._beat_now.set()  # restart the heartbeat timer with the new interval

    def _door_opened(self, number: int) -> None:
        door = self.doors[number]
        if door.state == "open" or self._world is None:
            return  # already open: the pending close still comes
        door.state = "open"
        self._world.start_soon(self._door_cycle, number, door)

    async def _door_cycle(self, number: int, door: Door) -> None:
        """The door springs open and, a while later, somebody shuts it. This runs in the
        device's world, not its boot: a reboot does not stop a person closing a door, and
        the device reports it once connected again."""
        await self._send_event(number, "open")
        await trio.sleep(self.behaviour.door_open.sample(self.rng))
        door.state = "closed"
        await self._send_event(number, "closed")

    # ------------------------------------------------------------------ publishing

    async def _send_response(self, tid: str, payload: bytes, first: bool) -> None:
        creds = self.flash.credentials
        assert creds is not None
        await self._publish(p.response_topic(creds.bank_id), payload)
        self.responses_sent[tid] += 1
        if first:
            self.stats.answered += 1
            if self.on_answer is not None:
                self.on_answer(creds.bank_id, tid, payload)
        self._notify()

    async def _send_event(self, number: int, state: str) -> None:
        creds = self.flash.credentials
        assert creds is not None
        payload = p.door_event_payload(number, state, str(uuid.uuid4()), p.utc_now())
        await self._publish(p.event_topic(creds.bank_id), payload)
        self.stats.events += 1
        self._notify()

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1 on whatever connection is current; waits for one, retries on a new one."""
        while True:
            client = self._client
            if client is None:
                await self._client_changed.wait()
                continue
            try:
                await client.publish(topic, payload, qos=1, retain=retain)
                return
            except MqttError:
                if self._client is client:
                    await self._client_changed.wait()

    def _set_client(self, client: MqttClient | None) -> None:
        self._client = client
        self._client_changed.set()
        self._client_changed = trio.Event()

    def _set_status(
        self,
        status: Literal[
            "new", "provisioning", "connecting", "online", "rebooting", "failed", "stopped"
        ],
    ) -> None:
        self.status = status
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        self.stats.changed()


def set_tcp_nodelay(client: MqttClient) -> None:
    """Turn off Nagle's algorithm on the client's connection.

    MQTT sends small packets back to back (a PUBACK, then the response to the command it
    acknowledged). With Nagle on, the second waits for the peer's delayed ACK: about 40 ms
    per hop on Linux, so a command round trip took 88 ms on loopback instead of 0.7 ms
    (docs/benchmarks.md). Firmware should set TCP_NODELAY; so does the simulator. The
    adapter does not expose its socket, so this reaches its paho client's.
    """
    sock = client._client.socket()
    if isinstance(sock, socket.socket):
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _abort_connection(client: MqttClient) -> None:
    """End the TCP connection without an MQTT DISCONNECT, as a power cut would.

    The broker sees the connection drop and publishes the will. The adapter has no public
    way to do this (a clean ``disconnect()`` suppresses the will), so this reaches its paho
    client's socket; the adapter then notices the closed socket as a lost connection.
    """
    sock = client._client.socket()
    if isinstance(sock, socket.socket):
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _backoff(rng: random.Random, failures: int, low: float = 0.2, high: float = 10.0) -> float:
    return jittered_backoff(failures, low, high, rng.random)
