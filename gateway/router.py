"""The gateway actor: owns the backend's MQTT connection and routes inbound messages.

Every inbound message is parsed (topic, then typed payload) and turned into a bank command sent
to the bank's mailbox. Anything malformed is logged with its reason, counted as dropped and
goes no further: it never reaches an actor and never changes state. Routing waits for mailbox
room, so a slow bank slows the socket (TCP backpressure) instead of losing messages.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
import trio

from actors.bank import provisioning_error_delivery
from actors.registry import BankRegistry, BankUnavailable, UnknownBank
from gateway import outbound, payloads, topics
from gateway.mqtt import InboundMessage, MqttClient
from lockerd.domain import commands as c
from lockerd.domain import events as e
from lockerd.metrics import Metrics
from lockerd.qr import verify_qr
from lockerd.security import Keyring, new_token

log = structlog.get_logger("lockerd.gateway")

#: Messages routed per scheduler turn when more are already waiting in the inbound channel.
ROUTE_BATCH = 256

MetricSink = Callable[[topics.ParsedTopic, bytes], Awaitable[None]]


@dataclass(slots=True)
class FailureWindow:
    started: float
    count: int


class ProvisioningRateLimiter:
    """At most ``limit`` failed registrations per client id per ``window`` seconds."""

    def __init__(self, limit: int = 5, window: float = 60.0, max_tracked: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_tracked = max_tracked
        self._failures: dict[str, FailureWindow] = {}

    def blocked(self, client_id: str, now: float) -> bool:
        entry = self._failures.get(client_id)
        return entry is not None and now - entry.started < self.window and entry.count >= self.limit

    def failed(self, client_id: str, now: float) -> None:
        entry = self._failures.get(client_id)
        if entry is None or now - entry.started >= self.window:
            if len(self._failures) >= self.max_tracked:
                self._failures.clear()
            self._failures[client_id] = FailureWindow(now, 1)
        else:
            entry.count += 1


class Gateway:
    def __init__(
        self,
        mqtt: MqttClient,
        registry: BankRegistry,
        keyring: Keyring,
        metrics: Metrics,
        *,
        command_timeout: int,
        accept_status_topic: bool,
        metric_sink: MetricSink | None = None,
    ) -> None:
        self.mqtt = mqtt
        self.registry = registry
        self.keyring = keyring
        self.metrics = metrics
        self.command_timeout = command_timeout
        self.accept_status_topic = accept_status_topic
        self.metric_sink = metric_sink
        self.rate_limiter = ProvisioningRateLimiter()
        self._online_wanted = trio.Event()

    async def run(self) -> None:
        """Announce, subscribe and route until cancelled; announce offline on the way out."""
        self.mqtt.add_connection_listener(self._connection_changed)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._announce_online)
                await self.mqtt.subscribe(topics.SUBSCRIPTIONS)
                receive = self.mqtt.messages()
                while True:
                    try:
                        message = await receive.receive()
                    except trio.EndOfChannel:
                        break
                    await self.route(message)
                    # Route what is already queued without a scheduler round trip per message
                    # (a checkpoint costs an epoll and a task switch); bounded for fairness.
                    for _ in range(ROUTE_BATCH):
                        try:
                            message = receive.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        await self.route(message)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                if self.mqtt.connected:
                    await self.mqtt.publish(
                        topics.SERVER_STATUS, outbound.server_status(False), qos=1, retain=True
                    )

    def _connection_changed(self, connected: bool) -> None:
        self.metrics.mqtt_connected.set(1 if connected else 0)
        if connected:
            self._online_wanted.set()
        log.info("mqtt_connection", connected=connected)

    async def _announce_online(self) -> None:
        """Publish the retained ``online`` after every (re)connect: the broker may have sent
        our last will while we were away."""
        if self.mqtt.connected:
            self._online_wanted.set()
        while True:
            await self._online_wanted.wait()
            self._online_wanted = trio.Event()
            await self.mqtt.publish(
                topics.SERVER_STATUS, outbound.server_status(True), qos=1, retain=True
            )

    async def route(self, message: InboundMessage) -> None:
        try:
            parsed = topics.parse_topic(message.topic, accept_status=self.accept_status_topic)
        except topics.TopicError as exc:
            self._drop(None, "malformed_topic", message.topic, str(exc))
            return
        try:
            if parsed.kind == "register":
                await self._register(parsed.key, message.payload)
            elif parsed.kind == "metric":
                if self.metric_sink is None:
                    self._drop("metric", "not_supported", message.topic, "no metrics pipeline")
                else:
                    await self.metric_sink(parsed, message.payload)
            else:
                await self._to_bank(parsed, message)
        except payloads.PayloadError as exc:
            self._drop(parsed.kind, "malformed_payload", message.topic, str(exc))
        except UnknownBank:
            self._drop(parsed.kind, "unknown_bank", message.topic, "no such locker bank")
        except (BankUnavailable, trio.TooSlowError) as exc:
            # counted where it happened (a failed bank, or still queued in a slow mailbox)
            log.warning("bank_unavailable", kind=parsed.kind, topic=message.topic, error=repr(exc))
        except Exception as exc:
            # A bug must not take the broker connection down with it: every later message
            # would be lost while the gateway restarts. Logged loudly, counted, dropped.
            self.metrics.drop(parsed.kind, "internal_error")
            log.error("route_failed", kind=parsed.kind, topic=message.topic, exc_info=exc)

    def _drop(self, kind: str | None, reason: str, topic: str, detail: str) -> None:
        self.metrics.drop(kind, reason)
        log.warning("message_dropped", kind=kind, reason=reason, topic=topic, detail=detail)

    async def _to_bank(self, parsed: topics.ParsedTopic, message: InboundMessage) -> None:
        bank_id = parsed.key
        if not self.registry.is_known(bank_id):
            raise UnknownBank(bank_id)
        command: c.BankCommand
        now = _placeholder_now()
        if parsed.kind == "state":
            state = payloads.decode(payloads.StatePayload, message.payload)
            if state.state == "heartbeat":
                command = c.RecordHeartbeat(
                    uptime_seconds=state.data.uptime_seconds if state.data else None,
                    session_id=state.session_id,
                    spare_transaction_id=str(uuid.uuid4()),
                    command_timeout_seconds=self.command_timeout,
                    now=now,
                )
            elif state.state == "connection_lost":
                command = c.RecordLastWill(session_id=state.session_id, now=now)
            else:
                raise payloads.PayloadError(f"unknown state {state.state!r}")
        elif parsed.kind == "response":
            response = payloads.decode(payloads.ResponsePayload, message.payload)
            command = c.RecordAnswer(
                transaction_id=response.transaction_id,
                action=response.action,
                result=response.result,
                error_code=response.error_code,
                message=response.message,
                applied_config_hash=response.applied_config_hash,
                now=now,
            )
        else:
            device_event = payloads.decode(payloads.DevicePayload, message.payload)
            command = self._device_event_command(device_event, now)
        await self.registry.tell(bank_id, command, kind=parsed.kind)

    def _device_event_command(
        self, device_event: payloads.DevicePayload, now: datetime
    ) -> c.RecordDeviceEvent:
        claim: c.QrClaim | None = None
        if device_event.event == "qr_scanned":
            payload = device_event.data.get("qr_payload")
            if not isinstance(payload, str):
                raise payloads.PayloadError("qr_scanned needs data.qr_payload as a string")
            claim = verify_qr(self.keyring, payload)
        return c.RecordDeviceEvent(
            event=device_event.event,
            event_id=device_event.event_id,
            data=device_event.data,
            now=now,
            qr_claim=claim,
            spare_transaction_id=str(uuid.uuid4()),
            command_timeout_seconds=self.command_timeout,
        )

    async def _register(self, token: str, payload: bytes) -> None:
        try:
            client_id = payloads.decode(payloads.RegisterPayload, payload).client_id
        except payloads.PayloadError as exc:
            self._drop("register", "malformed_payload", f"locker/register/{token[:4]}…", str(exc))
            return
        if not topics.is_plain_level(client_id) or len(client_id) > 128:
            # no safe reply topic exists for such a client id
            self._drop("register", "invalid_client_id", "locker/register/…", repr(client_id[:64]))
            return
        now = time.monotonic()
        if self.rate_limiter.blocked(client_id, now):
            self._drop("register", "rate_limited", "locker/register/…", client_id)
            await self._reply_error(client_id, "rate_limited")
            return
        token_hash = self.keyring.hash("provisioning-token", token)
        bank_id = self.registry.services.directory.token_to_bank.get(token_hash)
        if bank_id is None:
            self.rate_limiter.failed(client_id, now)
            self._drop("register", "token_unknown", "locker/register/…", client_id)
            await self._reply_error(client_id, "token_unknown")
            return
        password = new_token(32)
        command = c.Provision(
            token_hash=token_hash,
            client_id=client_id,
            new_mqtt_user=f"dev-{uuid.uuid4().hex}",
            new_credential_hash=self.keyring.hash("device-password", password),
            now=_placeholder_now(),
        )
        outcome = await self.registry.ask(bank_id, command, kind="register", secret=password)
        if any(isinstance(ev, e.ProvisioningFailed) for ev in outcome.events):
            self.rate_limiter.failed(client_id, now)

    async def _reply_error(self, client_id: str, reason: str) -> None:
        await self.registry.services.dispatcher.submit(
            provisioning_error_delivery(client_id, reason)
        )


def _placeholder_now() -> datetime:
    """Commands get their real ``now`` from the bank actor's clock when it decides."""
    return datetime.min
