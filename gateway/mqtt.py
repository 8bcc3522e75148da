"""Trio-native MQTT client: paho-mqtt 2.x driven from a Trio socket loop.

Why this module exists instead of a ready-made client:

* aiomqtt (the usual choice) is asyncio-only. Through trio-asyncio it worked, but it cost
  5-7x the CPU per message of paho driven directly from Trio (about 7k against 35k msgs/s
  received on this box), it ran two event loops in one process, it buffers inbound
  messages in an unbounded ``asyncio.Queue`` (or drops them once a limit is set), and it
  has no reconnect: a broker restart surfaces as an error and the application has to
  rebuild the client (research/deps.md, section 2).
* The trio/anyio-native clients on PyPI are broken against current trio/paho, MQTT 5
  only, or have neither reconnect nor persistent sessions.
* paho-mqtt is the Eclipse reference client and exposes a documented external-loop API
  (``socket()``, ``loop_read/loop_write/loop_misc``, ``want_write`` and the socket
  callbacks). Driving it from Trio gives the things a locker gateway needs and no
  off-the-shelf client provides together: reconnect with backoff that re-subscribes and
  retransmits unacknowledged QoS 1 publishes, persistent sessions, and real backpressure.
  When the consumer falls behind, the reader stops reading the socket, so TCP and the
  broker's queue hold the backlog, not Python memory.

Threading: paho's connect is blocking (DNS + TCP connect), so that one call runs in
``trio.to_thread`` with paho's own connect timeout bounding it. While it runs, no Trio code
touches the paho object; everything else runs in the Trio thread, so paho's internal
locks are never contended.

Acknowledgement: with ``MqttSettings.manual_ack`` a QoS 1 message is acknowledged (PUBACK)
only when its consumer calls :meth:`InboundMessage.ack`, after it has applied or dropped it;
a message never acknowledged is redelivered by the broker at the next connection of the
persistent session. Without it paho acknowledges as soon as the message is read.

Keep in mind: PUBACKs for our own publishes travel on the same socket as inbound
messages. A task that consumes ``messages()`` and awaits a QoS 1 ``publish()`` while the
inbound channel is full can wait on itself. Keep consumers from blocking on publishes, or
size ``inbound_capacity`` for the burst.
"""

from __future__ import annotations

import enum
import logging
import random
import select
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from domain.backoff import jittered_backoff

__all__ = [
    "ConnectionRefusedByBroker",
    "InboundMessage",
    "MqttClient",
    "MqttError",
    "MqttSettings",
    "Will",
    "open_mqtt_client",
    "running",
]

_log = logging.getLogger(__name__)

# loop_misc cadence: paho sends PINGREQ from it and detects a missing PINGRESP.
_MISC_INTERVAL = 1.0
# Packets read per wakeup before yielding to other tasks (the writer flushes PUBACKs then).
_READ_BATCH = 512
# MQTT 3.1.1 CONNACK return codes, keyed by the reason names paho 2.x reports.
_V311_CONNACK_CODES = {
    "Unsupported protocol version": 1,
    "Client identifier not valid": 2,
    "Server unavailable": 3,
    "Bad user name or password": 4,
    "Not authorized": 5,
}


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    clean_session: bool = False  # persistent session by default
    keepalive: int = 30
    will: Will | None = None
    reconnect_min_delay: float = 0.1  # exponential backoff with jitter between these
    reconnect_max_delay: float = 5.0
    connect_timeout: float = 5.0
    inbound_capacity: int = 1000  # bounded inbound channel
    # PUBACK only when the consumer calls InboundMessage.ack() (see the module docstring)
    manual_ack: bool = False


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message from the broker. ``mid``, ``dup`` and the acknowledger do not take part in
    comparisons: two deliveries of the same message compare equal."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int = field(default=0, compare=False)
    dup: bool = field(default=False, compare=False)
    acker: MqttClient | None = field(default=None, compare=False, repr=False)

    def ack(self) -> None:
        """Acknowledge this message to the broker now (manual acknowledgement).

        Idempotent, and a no-op for QoS 0, for a client without ``manual_ack`` and for a
        message of an earlier connection (the broker redelivers that one, and its new copy
        has an ``ack`` of its own). Never raises.
        """
        if self.acker is not None:
            self.acker._ack(self)


class MqttError(Exception):
    """Any MQTT failure: connection lost or closed, refused operation, broker error."""


class ConnectionRefusedByBroker(MqttError):
    """The broker answered CONNECT with a non-zero CONNACK code (credentials, authorisation)."""

    def __init__(self, reason: str, code: int | None) -> None:
        super().__init__(f"broker refused the connection: {reason} (CONNACK code {code})")
        self.reason = reason
        # The MQTT 3.1.1 CONNACK return code (4 bad credentials, 5 not authorised, ...).
        self.code = code


class _Outcome(enum.Enum):
    PENDING = enum.auto()
    DONE = enum.auto()  # acknowledged (or, for QoS 0, written)
    LOST = enum.auto()  # the connection went away first: retry after reconnecting
    FAILED = enum.auto()  # terminal: client closed, or the broker said no


class _Waiter:
    """One in-flight request (publish, subscribe, unsubscribe) awaiting its answer."""

    __slots__ = ("codes", "error", "event", "outcome")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.outcome = _Outcome.PENDING
        self.codes: list[ReasonCode] = []
        self.error: MqttError | None = None

    def resolve(
        self,
        outcome: _Outcome,
        *,
        codes: list[ReasonCode] | None = None,
        error: MqttError | None = None,
    ) -> None:
        if self.outcome is not _Outcome.PENDING:
            return
        self.outcome = outcome
        self.codes = codes or []
        self.error = error
        self.event.set()


class MqttClient:
    """An MQTT 3.1.1 connection kept alive by a Trio task.

    Run it with :func:`open_mqtt_client` (construct and run) or :func:`running` (run one
    constructed earlier).
    """

    def __init__(self, settings: MqttSettings, *, reconnect: bool = True) -> None:
        if settings.inbound_capacity < 1:
            raise ValueError("inbound_capacity must be at least 1")
        if not 0 < settings.reconnect_min_delay <= settings.reconnect_max_delay:
            raise ValueError("need 0 < reconnect_min_delay <= reconnect_max_delay")
        self._settings = settings
        self._reconnect = reconnect
        self._rng = random.Random()

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=settings.clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
            # Never let paho reconnect by itself (it would block the Trio thread).
            reconnect_on_failure=False,
        )
        client.manual_ack_set(settings.manual_ack)
        client.connect_timeout = settings.connect_timeout
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.will is not None:
            will = settings.will
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client

        send, receive = trio.open_memory_channel[InboundMessage](settings.inbound_capacity)
        self._inbound_send = send
        self._inbound_receive = receive
        # Messages paho handed us in the same loop_read() call after the channel filled up.
        # Bounded by what one loop_read() processes; the reader reads nothing more until
        # this is drained into the channel.
        self._overflow: deque[InboundMessage] = deque()

        self._connected = False
        self._closing = False
        self._terminal_error: MqttError | None = None
        self._state_changed = trio.Event()
        self._attempt_settled = trio.Event()
        self._socket_closed = trio.Event()
        self._write_wakeup = trio.Event()
        self._in_connect_thread = False
        self._write_registered = False
        self._refusal: ConnectionRefusedByBroker | None = None
        self._supervisor_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

        self._subscriptions: dict[str, int] = {}
        self._publish_waiters: dict[int, tuple[int, _Waiter]] = {}
        self._request_waiters: dict[int, _Waiter] = {}
        self._resubscribe_mids: dict[int, list[str]] = {}
        self._listeners: list[Callable[[bool], None]] = []
        # manual acknowledgement: QoS 1 messages of this connection not yet acknowledged, by
        # mid (the broker reuses a mid only after its PUBACK)
        self._unacked: dict[int, InboundMessage] = {}

        self._messages_received = 0
        self._messages_published = 0
        self._reconnects = 0
        self._connections = 0
        self.last_connect_error: BaseException | None = None

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def reconnects(self) -> int:
        """Successful connections after the first one."""
        return self._reconnects

    @property
    def messages_received(self) -> int:
        return self._messages_received

    @property
    def messages_published(self) -> int:
        return self._messages_published

    @property
    def unacknowledged(self) -> int:
        """Messages of the current connection delivered but not yet acknowledged."""
        return len(self._unacked)

    async def wait_connected(self) -> None:
        """Return once connected (at once if already). Raises MqttError if the client stopped."""
        await trio.lowlevel.checkpoint()
        while not self._connected:
            self._raise_if_stopped()
            await self._state_changed.wait()
        self._raise_if_stopped()

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """QoS 0: returns when handed to the socket. QoS 1: returns when PUBACK arrives.

        While disconnected it waits for the reconnect - the caller's cancel scope bounds the
        wait. A QoS 1 message already handed to paho is retransmitted after a reconnect even
        if this call is cancelled.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos}")
        while True:
            await self.wait_connected()
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise MqttError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
            waiter = _Waiter()
            self._publish_waiters[info.mid] = (qos, waiter)
            try:
                await waiter.event.wait()
            finally:
                current = self._publish_waiters.get(info.mid)
                if current is not None and current[1] is waiter:
                    del self._publish_waiters[info.mid]
            if waiter.outcome is _Outcome.DONE:
                self._messages_published += 1
                return
            if waiter.outcome is _Outcome.FAILED:
                raise waiter.error or MqttError(f"publish to {topic!r} failed")
            # LOST: a QoS 0 packet that never reached the socket; send it again.

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> None:
        """Subscribe and wait for SUBACK; filters are re-subscribed after every reconnect.

        A SUBACK failure code (0x80) raises MqttError; the filters the broker granted stay
        subscribed and remembered.
        """
        wanted = [(topic, qos) for topic, qos in filters]
        if not wanted:
            raise ValueError("no topic filters given")
        for topic, qos in wanted:
            if not topic or qos not in (0, 1, 2):
                raise ValueError(f"invalid subscription {(topic, qos)!r}")
        while True:
            await self.wait_connected()
            rc, mid = self._client.subscribe(wanted)
            codes = await self._await_request(rc, mid, "subscribe")
            if codes is None:
                continue  # connection lost before SUBACK: send again after reconnecting
            failed = [
                topic for (topic, _), code in zip(wanted, codes, strict=False) if code.is_failure
            ]
            for (topic, qos), code in zip(wanted, codes, strict=False):
                if not code.is_failure:
                    self._subscriptions[topic] = qos
            if failed or len(codes) != len(wanted):
                raise MqttError(f"broker refused subscription to {failed}")
            return

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Unsubscribe and wait for UNSUBACK; the filters are no longer re-subscribed."""
        topics = list(filters)
        if not topics:
            raise ValueError("no topic filters given")
        for topic in topics:
            self._subscriptions.pop(topic, None)
        while True:
            await self.wait_connected()
            rc, mid = self._client.unsubscribe(topics)
            if await self._await_request(rc, mid, "unsubscribe") is not None:
                return

    def messages(self) -> trio.MemoryReceiveChannel[InboundMessage]:
        """The bounded inbound channel, closed when the client stops.

        When it is full the socket is not read (TCP backpressure) and nothing is dropped.
        A consumer stalled for longer than ``keepalive`` makes paho miss a PINGRESP and
        drop the connection; the client reconnects once there is room again. Messages
        already read stay queued; unread QoS 1 ones are redelivered by the broker when
        the session is persistent (QoS 0 ones in the socket buffer are lost).
        """
        return self._inbound_receive

    def add_connection_listener(self, listener: Callable[[bool], None]) -> None:
        """``listener(True)`` after every successful connect (re-subscribe already sent),
        ``listener(False)`` when an established connection is lost. Called synchronously
        from the socket loop: keep it short and non-blocking."""
        self._listeners.append(listener)

    async def disconnect(self) -> None:
        """Graceful DISCONNECT (the broker does NOT publish the will); idempotent.

        Stops reconnecting. Pending and later operations raise MqttError.
        """
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        self._changed()
        if not self._in_connect_thread and self._client.socket() is not None:
            # Queued behind whatever is pending; paho closes the socket once it is written
            # and the supervisor then stops because _closing is set.
            self._client.disconnect()
            with trio.move_on_after(self._settings.connect_timeout):
                await self._stopped.wait()
        if self._supervisor_scope is not None:
            self._supervisor_scope.cancel()
        await self._stopped.wait()

    # ------------------------------------------------------------------ supervisor

    async def _supervise(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        settings = self._settings
        stop_error: MqttError | None = None
        try:
            with trio.CancelScope() as scope:
                self._supervisor_scope = scope
                # Only records host/port/keepalive; no socket is opened here.
                self._client.connect_async(settings.host, settings.port, settings.keepalive)
                if self._reconnect:
                    task_status.started()
                failures = 0
                while not self._closing:
                    # Do not reconnect while the consumer still owes us room.
                    await self._drain_overflow()
                    started = (
                        task_status if not self._reconnect and self._connections == 0 else None
                    )
                    try:
                        await self._run_connection(started)
                    except (MqttError, trio.TooSlowError) as exc:
                        if self._closing:
                            break
                        self.last_connect_error = exc
                        if not self._reconnect:
                            raise
                        _log.warning(
                            "MQTT connect to %s:%d failed (%s), retrying",
                            settings.host,
                            settings.port,
                            exc or type(exc).__name__,
                        )
                        failures += 1
                    else:
                        if self._closing:
                            break
                        if not self._reconnect:
                            stop_error = MqttError("connection to the MQTT broker was lost")
                            raise stop_error
                        _log.warning(
                            "MQTT connection to %s:%d lost, reconnecting",
                            settings.host,
                            settings.port,
                        )
                        failures = 0
                    await trio.sleep(self._backoff(failures))
        finally:
            self._stop(stop_error or MqttError("MQTT client is closed"))

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with jitter (:func:`domain.backoff.jittered_backoff`)."""
        settings = self._settings
        return jittered_backoff(
            failures, settings.reconnect_min_delay, settings.reconnect_max_delay, self._rng.random
        )

    async def _run_connection(self, task_status: trio.TaskStatus[None] | None) -> None:
        """One connection: connect, serve the socket until it closes.

        Returns normally if the session was established and later ended; raises
        ConnectionRefusedByBroker / MqttError / trio.TooSlowError if it never got there.
        """
        client = self._client
        self._refusal = None
        self._attempt_settled = trio.Event()
        self._socket_closed = trio.Event()
        self._in_connect_thread = True
        try:
            # paho's reconnect(): blocking TCP connect (bounded by client.connect_timeout),
            # then queues CONNECT. Cannot be abandoned: a cancel waits for it to finish.
            rc = await trio.to_thread.run_sync(client.reconnect, thread_name="mqtt-connect")
        except TimeoutError as exc:
            raise trio.TooSlowError(
                f"TCP connect to {self._settings.host}:{self._settings.port} timed out"
            ) from exc
        except OSError as exc:
            raise MqttError(
                f"cannot connect to {self._settings.host}:{self._settings.port}: {exc}"
            ) from exc
        finally:
            self._in_connect_thread = False
        sock = client.socket()
        if sock is None or rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._close_socket_now()
            raise MqttError(f"connect failed: {paho.error_string(rc)}")

        established = False
        connack_timed_out = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_loop, sock)
                nursery.start_soon(self._write_loop, sock)
                nursery.start_soon(self._misc_loop, sock)
                # The writer starts by sending the CONNECT paho queued in the thread.
                with trio.move_on_after(self._settings.connect_timeout) as connack_wait:
                    await self._attempt_settled.wait()
                if self._connected:
                    established = True
                    if task_status is not None:
                        task_status.started()
                else:
                    connack_timed_out = connack_wait.cancelled_caught
                    if not self._socket_closed.is_set():
                        self._drop_socket()
                await self._socket_closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            if client.socket() is sock:
                # Cancelled (client closing, or the surrounding scope) with the socket open.
                self._close_socket_now()
        if established:
            return
        if self._refusal is not None:
            raise self._refusal
        if connack_timed_out:
            raise trio.TooSlowError(
                f"no CONNACK from {self._settings.host}:{self._settings.port} "
                f"within {self._settings.connect_timeout} s"
            )
        raise MqttError("connection closed by the broker before CONNACK")

    def _close_socket_now(self) -> None:
        """Best-effort graceful close without awaiting: queue DISCONNECT, try one write."""
        client = self._client
        if client.socket() is None:
            return
        client.disconnect()
        client.loop_write()  # paho closes the socket once DISCONNECT is written
        if client.socket() is not None:
            self._drop_socket()

    def _drop_socket(self) -> None:
        # connect_async() is paho's public way to "terminate any established connection
        # immediately": it closes the socket (on_socket_close fires) without a DISCONNECT.
        settings = self._settings
        self._client.connect_async(settings.host, settings.port, settings.keepalive)

    # ------------------------------------------------------------------ socket loops

    async def _read_loop(self, sock: paho.SocketLike) -> None:
        client = self._client
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        while True:
            await self._drain_overflow()
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return
            for _ in range(_READ_BATCH):
                rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is not sock:
                    return
                # Stop as soon as the channel is full; drain while data is waiting.
                if self._overflow or not poller.poll(0):
                    break

    async def _write_loop(self, sock: paho.SocketLike) -> None:
        client = self._client
        while True:
            if not client.want_write():
                self._write_wakeup = trio.Event()
                await self._write_wakeup.wait()
                continue
            rc = client.loop_write()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is not sock:
                return
            if client.want_write():
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    return

    async def _misc_loop(self, sock: paho.SocketLike) -> None:
        client = self._client
        while True:
            await trio.sleep(_MISC_INTERVAL)
            rc = client.loop_misc()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is not sock:
                return

    async def _drain_overflow(self) -> None:
        while self._overflow:
            try:
                await self._inbound_send.send(self._overflow[0])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # nobody reads any more: the service is stopping
                self._overflow.clear()
                return
            self._overflow.popleft()

    # ------------------------------------------------------------------ paho callbacks

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: paho.SocketLike) -> None:
        # Commands, PUBACKs and replies are small and latency-bound: with Nagle's algorithm on,
        # a command waited for the previous packet's ACK (41 ms vs 8 ms p50 per open in
        # docs/benchmarks.md). paho leaves the option unset.
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _log.debug("MQTT socket opened to %s:%d", self._settings.host, self._settings.port)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: paho.SocketLike) -> None:
        if self._in_connect_thread:  # pragma: no cover - paho has no socket to close then
            return
        # Wake any task blocked in wait_readable/wait_writable on it before it is closed.
        trio.lowlevel.notify_closing(sock)
        self._write_registered = False
        if self._connected:
            self._connected = False
            self._connection_lost()
        self._socket_closed.set()
        self._attempt_settled.set()
        self._changed()

    def _on_socket_register_write(
        self, client: paho.Client, userdata: Any, sock: paho.SocketLike
    ) -> None:
        self._write_registered = True
        if not self._in_connect_thread:  # from the thread, the writer starts afterwards
            self._write_wakeup.set()

    def _on_socket_unregister_write(
        self, client: paho.Client, userdata: Any, sock: paho.SocketLike
    ) -> None:
        self._write_registered = False

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            name = reason.getName()
            self._refusal = ConnectionRefusedByBroker(name, _V311_CONNACK_CODES.get(name))
            _log.warning("MQTT broker refused connection: %s", name)
            return
        self._connected = True
        self._connections += 1
        if self._connections > 1:
            self._reconnects += 1
        self.last_connect_error = None
        _log.info(
            "MQTT connected to %s:%d as %s (session present: %s)",
            self._settings.host,
            self._settings.port,
            self._settings.client_id,
            flags.session_present,
        )
        if self._subscriptions:
            rc, mid = client.subscribe(list(self._subscriptions.items()))
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._resubscribe_mids[mid] = list(self._subscriptions)
        self._attempt_settled.set()
        self._changed()
        for listener in list(self._listeners):
            self._call_listener(listener, True)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        _log.debug("MQTT disconnected: %s", reason.getName())

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._messages_received += 1
        try:
            topic = message.topic
        except UnicodeDecodeError:  # the router drops it as a malformed topic (and acks it)
            topic = bytes(message._topic).decode("utf-8", "replace")
        if self._settings.manual_ack and message.qos > 0:
            inbound = InboundMessage(
                topic,
                bytes(message.payload),
                message.qos,
                bool(message.retain),
                message.mid,
                bool(message.dup),
                self,
            )
            self._unacked[message.mid] = inbound
        else:
            inbound = InboundMessage(
                topic, bytes(message.payload), message.qos, bool(message.retain)
            )
        if self._overflow:
            self._overflow.append(inbound)
            return
        try:
            self._inbound_send.send_nowait(inbound)
        except trio.WouldBlock:
            self._overflow.append(inbound)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # nobody reads any more: the service is stopping

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        entry = self._publish_waiters.pop(mid, None)
        if entry is None:
            return
        _, waiter = entry
        if reason.is_failure:
            waiter.resolve(_Outcome.FAILED, error=MqttError(f"publish failed: {reason.getName()}"))
        else:
            waiter.resolve(_Outcome.DONE)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        topics = self._resubscribe_mids.pop(mid, None)
        if topics is not None:
            for topic, code in zip(topics, reason_codes, strict=False):
                if code.is_failure:
                    _log.error("MQTT re-subscribe to %r refused: %s", topic, code.getName())
            return
        waiter = self._request_waiters.pop(mid, None)
        if waiter is not None:
            waiter.resolve(_Outcome.DONE, codes=reason_codes)

    def _on_unsubscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        waiter = self._request_waiters.pop(mid, None)
        if waiter is not None:
            waiter.resolve(_Outcome.DONE, codes=reason_codes)

    # ------------------------------------------------------------------ internals

    def _ack(self, message: InboundMessage) -> None:
        """PUBACK ``message`` if it is still unacknowledged on the current connection."""
        if self._unacked.get(message.mid) is not message:
            return  # acknowledged already, or of an earlier connection
        del self._unacked[message.mid]
        if self._client.socket() is None:
            return
        rc = self._client.ack(message.mid, message.qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:  # pragma: no cover - the socket just went
            _log.debug("MQTT PUBACK for mid %d not sent: %s", message.mid, paho.error_string(rc))

    async def _await_request(
        self, rc: MQTTErrorCode, mid: int | None, what: str
    ) -> list[ReasonCode] | None:
        """Wait for the SUBACK/UNSUBACK of `mid`; None if the connection was lost first."""
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"{what} failed: {paho.error_string(rc)}")
        waiter = _Waiter()
        self._request_waiters[mid] = waiter
        try:
            await waiter.event.wait()
        finally:
            if self._request_waiters.get(mid) is waiter:
                del self._request_waiters[mid]
        if waiter.outcome is _Outcome.FAILED:
            raise waiter.error or MqttError(f"{what} failed")
        if waiter.outcome is _Outcome.LOST:
            return None
        return waiter.codes

    def _connection_lost(self) -> None:
        """An established connection ended: release what will not be answered on it."""
        self._resubscribe_mids.clear()
        # unacknowledged deliveries are redelivered on the next connection; their mids may
        # then name other messages
        self._unacked.clear()
        for mid, (qos, waiter) in list(self._publish_waiters.items()):
            if qos == 0:  # never written; paho drops it on reconnect, the caller resends
                del self._publish_waiters[mid]
                waiter.resolve(_Outcome.LOST)
        # QoS 1/2 publishes stay: paho retransmits them after the reconnect.
        for waiter in self._request_waiters.values():
            waiter.resolve(_Outcome.LOST)
        self._request_waiters.clear()
        for listener in list(self._listeners):
            self._call_listener(listener, False)

    def _stop(self, error: MqttError) -> None:
        """The supervisor is gone: fail everything pending, close the inbound channel."""
        self._connected = False
        self._closing = True
        self._terminal_error = error
        self._unacked.clear()
        for _, waiter in self._publish_waiters.values():
            waiter.resolve(_Outcome.FAILED, error=error)
        self._publish_waiters.clear()
        for waiter in self._request_waiters.values():
            waiter.resolve(_Outcome.FAILED, error=error)
        self._request_waiters.clear()
        while self._overflow:
            try:
                self._inbound_send.send_nowait(self._overflow[0])
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                break
            self._overflow.popleft()
        if self._overflow:
            _log.warning(
                "MQTT client stopped with %d received messages not delivered", len(self._overflow)
            )
            self._overflow.clear()
        self._inbound_send.close()
        self._changed()
        self._stopped.set()

    def _changed(self) -> None:
        self._state_changed.set()
        self._state_changed = trio.Event()

    def _raise_if_stopped(self) -> None:
        if self._terminal_error is not None:
            raise self._terminal_error
        if self._closing:
            raise MqttError("MQTT client is closing")

    def _call_listener(self, listener: Callable[[bool], None], up: bool) -> None:
        try:
            listener(up)
        except Exception:
            _log.exception("MQTT connection listener %r failed", listener)


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_mqtt_client(
    settings: MqttSettings, *, reconnect: bool = True
) -> AsyncIterator[MqttClient]:
    """Run an MQTT client for the duration of the block.

    reconnect=False: entering waits for the first connection and raises
    ConnectionRefusedByBroker / MqttError / trio.TooSlowError if it fails within
    connect_timeout; a later loss of the connection raises MqttError out of the block.
    reconnect=True: entering returns at once and the client keeps (re)connecting with
    backoff; use ``wait_connected()``.

    On exit: graceful DISCONNECT (bounded by connect_timeout, even when cancelled), all
    tasks done, socket closed, no thread left running.
    """
    async with running(MqttClient(settings, reconnect=reconnect)) as client:
        yield client


@asynccontextmanager
async def running(client: MqttClient) -> AsyncIterator[MqttClient]:
    """Run an already constructed client for the duration of the block (see
    :func:`open_mqtt_client`); lets its owner hand the client to other parts before it
    connects. A client runs once."""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client._supervise)
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client.disconnect()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Do not leak the nursery's ExceptionGroup: the block sees its own exception.
        sole = _sole_exception(group)
        if sole is None:
            raise
        context, cause = sole.__context__, sole.__cause__
        try:
            raise sole  # the original __context__/__cause__ are restored below
        finally:
            sole.__context__, sole.__cause__ = context, cause
