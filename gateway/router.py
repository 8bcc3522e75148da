"""The gateway actor: owns the backend's MQTT connection and routes inbound messages.

Every inbound message is parsed (topic, then typed payload) and turned into a bank command sent
to the bank's mailbox. Anything malformed is logged with its reason, counted as dropped and
goes no further: it never reaches an actor and never changes state. Routing waits for mailbox
room, so a slow bank slows the socket (TCP backpressure) instead of losing messages.

Acknowledgement (contract §2: PUBACK only once a message is applied or dropped): every message
is either dropped here, and acknowledged at once, or handed over together with its ``ack``
(``on_done``) to whoever finishes it: the bank actor (after it stored the events or rejected
the command) or the metrics pipeline (after the batch committed). A message that nobody
finished, say because the store was down, stays unacknowledged and the broker delivers it
again on the next connection.

The router knows the rest of the system only through the small protocols declared here
(:class:`BankInbox`, :class:`TokenDirectory`, :class:`MessageQueue`, :class:`GatewayObserver`);
the composition root plugs the bank registry, the directory, the dispatcher and Prometheus in.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog
import trio

from domain import commands as c
from domain import events as e
from domain.keys import Keyring, new_token
from domain.outbound import DeviceMessage, ProvisioningRefused
from domain.qr import verify_qr
from domain.ratelimit import SlidingWindowLimiter
from gateway import outbound, payloads, topics
from gateway.mqtt import InboundMessage, MqttClient

log = structlog.get_logger("lockerd.gateway")

#: Messages routed per scheduler turn when more are already waiting in the inbound channel.
#: Routing a message does not yield while the bank's mailbox has room (actors.mailbox), so a
#: batch holds the loop for its whole length: 64 bounds that to about 2 ms (256 measured the
#: same heartbeat throughput, 7,400-7,700/s, while holding the loop four times as long).
ROUTE_BATCH = 64
#: Failed registrations a client id may make per window before it is answered "rate_limited".
REGISTRATION_FAILURES = 5
REGISTRATION_WINDOW_SECONDS = 60.0

Done = Callable[[], None]
"""Called once a message has been applied or dropped: acknowledges it to the broker."""

MetricSink = Callable[[str, str, str, bytes, Done], Awaitable[None]]
"""Takes a metric point's tenant id, agent id, metric name (from the topic), payload and the
message's ``Done``, to be called once the point is stored or dropped (never when its write
failed: the broker then delivers it again)."""


class BankAnswer(Protocol):
    @property
    def events(self) -> Sequence[e.Event]: ...


class BankInbox(Protocol):
    """The bank actors, addressed by bank id (the bank registry)."""

    def is_known(self, bank_id: str) -> bool: ...

    async def tell(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None = None,
        on_done: Done | None = None,
    ) -> None:
        """Queue ``command`` for the bank, waiting for mailbox room (backpressure).

        ``on_done`` is called exactly once when the bank has applied, rejected or dropped the
        command (or crashed on it), and never when storing its events failed."""
        ...

    async def ask_if_available(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None = None,
        secret: str | None = None,
        on_done: Done | None = None,
    ) -> BankAnswer | None:
        """Send and wait for the outcome; None when the bank cannot answer (failed, crashed on
        this message, or too slow), which the inbox has counted already. ``on_done`` as for
        :meth:`tell`."""
        ...


class TokenDirectory(Protocol):
    def bank_for_token(self, token_hash: str) -> str | None: ...


class MessageQueue(Protocol):
    async def enqueue(self, message: DeviceMessage) -> None:
        """Hand a message to the outbox without waiting for the broker."""
        ...


class GatewayObserver(Protocol):
    def message_dropped(self, kind: str | None, reason: str) -> None: ...

    def mqtt_connection(self, connected: bool) -> None: ...


class Gateway:
    def __init__(
        self,
        mqtt: MqttClient,
        banks: BankInbox,
        tokens: TokenDirectory,
        outbox: MessageQueue,
        keyring: Keyring,
        observer: GatewayObserver,
        *,
        command_timeout: int,
        accept_status_topic: bool,
        metric_sink: MetricSink | None = None,
        revocation_window_seconds: int = 0,
        clock: Callable[[], float] = time.monotonic,
        subscriptions: Sequence[tuple[str, int]] = topics.SUBSCRIPTIONS,
        keep_server_online: bool = False,
        groups_of: Callable[[str], frozenset[str]] | None = None,
    ) -> None:
        self.mqtt = mqtt
        self.banks = banks
        self.tokens = tokens
        self.outbox = outbox
        self.keyring = keyring
        self.observer = observer
        self.command_timeout = command_timeout
        self.accept_status_topic = accept_status_topic
        self.metric_sink = metric_sink
        self.revocation_window_seconds = revocation_window_seconds
        self.registration_failures = SlidingWindowLimiter(
            REGISTRATION_FAILURES, REGISTRATION_WINDOW_SECONDS, clock=clock
        )
        self._online_wanted = trio.Event()
        #: set once the broker has granted the gateway's subscriptions (the first SUBACK):
        #: from then on nothing published to lockerd's topics is missed
        self.subscribed = trio.Event()
        #: the topic filters subscribed at start (more than one node: see topics)
        self.subscriptions = tuple(subscriptions)
        #: more than one node: ``server/status`` is online while any node is, so an
        #: ``offline`` seen there (another node's will or last words) is answered ``online``
        self.keep_server_online = keep_server_online
        #: the groups a user is a member of now: a QR claim carries them to the bank's
        #: decision (a group grant lets a member open); None: no groups
        self.groups_of = groups_of

    async def run(self) -> None:
        """Announce, subscribe and route until cancelled; announce offline on the way out."""
        self.mqtt.add_connection_listener(self._connection_changed)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._announce_online)
                await self.mqtt.subscribe(self.subscriptions)
                self.subscribed.set()
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

    def announce_online(self) -> None:
        """Publish the retained ``online`` again (soon, from the gateway's own task).

        With several nodes, a node that has taken banks over calls it: devices beat at once on
        ``online``, so their new owner sees them without waiting for their next heartbeat.
        """
        self._online_wanted.set()

    def _connection_changed(self, connected: bool) -> None:
        self.observer.mqtt_connection(connected)
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
        """Turn one inbound message into a bank command, a metric point, or a counted drop.

        Never raises for anything a message can contain: a routing bug is logged and counted
        as ``internal_error``, so it cannot take the broker connection down with it. A message
        dropped here is acknowledged here; one handed over is acknowledged by its taker.
        """
        done = message.ack
        if self.keep_server_online and message.topic == topics.SERVER_STATUS:
            # not a device message, but counted like every message (kind unknown)
            self.observer.message_dropped("unknown", "server_status")
            if message.payload != outbound.server_status(True):
                self._online_wanted.set()  # another node went away; we are still here
            done()
            return
        try:
            parsed = topics.parse_topic(message.topic, accept_status=self.accept_status_topic)
        except topics.TopicError as exc:
            self._drop(exc.kind, "malformed_topic", message.topic[:200], str(exc))
            done()
            return
        handed_over = False
        try:
            if parsed.kind == "register":
                handed_over = await self._register(parsed.key, message.payload, done)
            elif parsed.kind == "metric":
                if self.metric_sink is None:
                    self._drop("metric", "not_supported", message.topic, "no metrics pipeline")
                else:
                    handed_over = True
                    await self.metric_sink(
                        parsed.key, parsed.agent_id, parsed.metric, message.payload, done
                    )
            elif not self.banks.is_known(parsed.key):
                self._drop(parsed.kind, "unknown_bank", message.topic, "no such locker bank")
            elif parsed.kind == "state" and message.retain:
                # the broker replaying the last retained state (e.g. as we subscribe after a
                # restart) says nothing about the device now: never a sign of life (§2)
                self._drop("state", "retained", message.topic, "retained state is not liveness")
            else:
                command = self._bank_command(parsed, message.payload)
                handed_over = True
                await self.banks.tell(parsed.key, command, kind=parsed.kind, on_done=done)
        except payloads.PayloadError as exc:
            self._drop(parsed.kind, "malformed_payload", message.topic, str(exc))
        except Exception as exc:
            # A bug must not take the broker connection down with it: every later message
            # would be lost while the gateway restarts. Logged loudly, counted, dropped.
            self.observer.message_dropped(parsed.kind, "internal_error")
            log.error("route_failed", kind=parsed.kind, topic=message.topic, exc_info=exc)
            # if it failed on its way over, its taker may never see it; acking twice is safe
            handed_over = False
        if not handed_over:
            done()

    def _drop(self, kind: str | None, reason: str, topic: str, detail: str) -> None:
        self.observer.message_dropped(kind, reason)
        log.warning("message_dropped", kind=kind, reason=reason, topic=topic, detail=detail)

    def _bank_command(self, parsed: topics.ParsedTopic, payload: bytes) -> c.BankCommand:
        """The command a well-formed state, response or event message stands for."""
        if parsed.kind == "state":
            state = payloads.decode(payloads.StatePayload, payload)
            if state.state == "heartbeat":
                return c.RecordHeartbeat(
                    uptime_seconds=state.data.uptime_seconds if state.data else None,
                    session_id=state.session_id,
                    spare_transaction_id=str(uuid.uuid4()),
                    command_timeout_seconds=self.command_timeout,
                    device_time=state.data.timestamp if state.data else None,
                )
            if state.state == "connection_lost":
                return c.RecordLastWill(session_id=state.session_id)
            raise payloads.PayloadError(f"unknown state {state.state!r}")
        if parsed.kind == "response":
            response = payloads.decode(payloads.ResponsePayload, payload)
            return c.RecordAnswer(
                transaction_id=response.transaction_id,
                action=response.action,
                result=response.result,
                error_code=response.error_code,
                message=response.message,
                applied_config_hash=response.applied_config_hash,
                spare_transaction_id=str(uuid.uuid4()),
                command_timeout_seconds=self.command_timeout,
            )
        return self._device_event_command(payloads.decode(payloads.DevicePayload, payload))

    def _device_event_command(self, device_event: payloads.DevicePayload) -> c.RecordDeviceEvent:
        claim: c.QrClaim | None = None
        if device_event.event == "qr_scanned":
            payload = device_event.data.get("qr_payload")
            if not isinstance(payload, str):
                raise payloads.PayloadError("qr_scanned needs data.qr_payload as a string")
            claim = verify_qr(self.keyring, payload)
            if claim is not None and self.groups_of is not None:
                claim = dataclasses.replace(claim, group_ids=self.groups_of(claim.user_id))
        return c.RecordDeviceEvent(
            event=device_event.event,
            event_id=device_event.event_id,
            data=device_event.data,
            qr_claim=claim,
            spare_transaction_id=str(uuid.uuid4()),
            command_timeout_seconds=self.command_timeout,
        )

    async def _register(self, token: str, payload: bytes, done: Done) -> bool:
        """Handle a registration; True once the message (and ``done``) went to a bank."""
        try:
            client_id = payloads.decode(payloads.RegisterPayload, payload).client_id
        except payloads.PayloadError as exc:
            self._drop("register", "malformed_payload", f"locker/register/{token[:4]}…", str(exc))
            return False
        if not topics.is_plain_level(client_id) or len(client_id) > 128:
            # no safe reply topic exists for such a client id
            self._drop("register", "invalid_client_id", "locker/register/…", repr(client_id[:64]))
            return False
        if self.registration_failures.retry_after(client_id) is not None:
            self._drop("register", "rate_limited", "locker/register/…", client_id)
            await self.outbox.enqueue(ProvisioningRefused(client_id, "rate_limited"))
            return False
        token_hash = self.keyring.hash("provisioning-token", token)
        bank_id = self.tokens.bank_for_token(token_hash)
        if bank_id is None:
            self.registration_failures.record(client_id)
            self._drop("register", "token_unknown", "locker/register/…", client_id)
            await self.outbox.enqueue(ProvisioningRefused(client_id, "token_unknown"))
            return False
        password = new_token(32)
        command = c.Provision(
            token_hash=token_hash,
            client_id=client_id,
            new_mqtt_user=f"dev-{uuid.uuid4().hex}",
            new_credential_hash=self.keyring.hash("device-password", password),
            revocation_window_seconds=self.revocation_window_seconds,
        )
        answer = await self.banks.ask_if_available(
            bank_id, command, kind="register", secret=password, on_done=done
        )
        if answer is None:
            # counted where it happened (a failed bank, or still queued in a slow mailbox)
            log.warning("bank_unavailable", kind="register", bank_id=bank_id)
            return True
        refused = (e.ProvisioningFailed, e.RegistrationRefused)
        if any(isinstance(ev, refused) for ev in answer.events):
            self.registration_failures.record(client_id)
        return True
