"""gateway.mqtt against a real mosquitto (tests/support/mosquitto.py); no mocks.

A few edge cases a real mosquitto cannot produce (a broker that never answers CONNECT,
a SUBACK with the failure code 0x80, a chosen CONNACK code) use a tiny scripted MQTT
peer on a loopback socket instead.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gateway.mqtt import (
    ConnectionRefusedByBroker,
    InboundMessage,
    MqttClient,
    MqttError,
    MqttSettings,
    Will,
    open_mqtt_client,
)
from tests.support.mosquitto import MosquittoBroker, write_password_file

REPO_ROOT = Path(__file__).resolve().parents[2]
IDLE_TRIO_WORKER = re.compile(r"^Trio thread \d+$")
# Upper bound for anything a test awaits from the broker; normally milliseconds.
WAIT_BOUND = 10.0


def settings_for(broker: MosquittoBroker, client_id: str, **overrides: Any) -> MqttSettings:
    options: dict[str, Any] = {
        "reconnect_min_delay": 0.05,
        "reconnect_max_delay": 0.5,
        "connect_timeout": 5.0,
    }
    options.update(overrides)
    return MqttSettings(host=broker.host, port=broker.port, client_id=client_id, **options)


async def next_message(client: MqttClient) -> InboundMessage:
    with trio.fail_after(WAIT_BOUND):
        return await client.messages().receive()


async def receive_until(
    client: MqttClient, stop: Callable[[InboundMessage], bool]
) -> list[InboundMessage]:
    """Messages received up to and including the first one for which stop() is true."""
    seen: list[InboundMessage] = []
    with trio.fail_after(WAIT_BOUND):
        while True:
            message = await client.messages().receive()
            seen.append(message)
            if stop(message):
                return seen


class ConnectionEvents:
    """Connection listener that lets a test await the n-th up/down transition."""

    def __init__(self, client: MqttClient) -> None:
        self.history: list[bool] = []
        self._changed = trio.Event()
        client.add_connection_listener(self._on_change)

    def _on_change(self, up: bool) -> None:
        self.history.append(up)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int, state: bool) -> None:
        """Wait until `state` has been reported `count` times in total."""
        with trio.fail_after(WAIT_BOUND):
            while self.history.count(state) < count:
                await self._changed.wait()


async def warm_thread_cache() -> tuple[int, set[int | None]]:
    """Run one to_thread job so an idle Trio worker exists in the baseline, then snapshot."""
    await trio.to_thread.run_sync(lambda: None)
    return threading.active_count(), {t.ident for t in threading.enumerate()}


def busy_threads(baseline: set[int | None]) -> list[str]:
    """Threads still doing work: our connect thread, or anything new that is not an idle
    Trio worker (Trio keeps finished workers cached for a few seconds)."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name == "mqtt-connect"
        or (t.ident not in baseline and not IDLE_TRIO_WORKER.match(t.name))
    ]


# --------------------------------------------------------------------------- basics


async def test_connect_subscribe_and_receive(mosquitto: MosquittoBroker) -> None:
    async with (
        open_mqtt_client(settings_for(mosquitto, "sub-1"), reconnect=False) as sub,
        open_mqtt_client(settings_for(mosquitto, "pub-1"), reconnect=False) as pub,
    ):
        assert sub.connected and pub.connected
        await sub.subscribe([("lockers/+/state", 1)])
        await pub.publish("lockers/L1/state", b'{"s":"open"}', qos=1)
        await pub.publish("lockers/L2/state", b'{"s":"closed"}', qos=0)
        await pub.publish("elsewhere/x", b"not for us", qos=1)
        first = await next_message(sub)
        second = await next_message(sub)
        assert first == InboundMessage("lockers/L1/state", b'{"s":"open"}', qos=1, retain=False)
        assert second == InboundMessage("lockers/L2/state", b'{"s":"closed"}', qos=0, retain=False)
        assert sub.messages_received == 2
        assert pub.messages_published == 3
        assert sub.reconnects == 0


async def test_qos1_publish_returns_only_after_puback(mosquitto: MosquittoBroker) -> None:
    async with (
        open_mqtt_client(settings_for(mosquitto, "sub-ack"), reconnect=False) as sub,
        open_mqtt_client(settings_for(mosquitto, "pub-ack"), reconnect=False) as pub,
    ):
        await sub.subscribe([("ack/#", 1)])
        qos1_done = trio.Event()

        async def publish_qos1() -> None:
            await pub.publish("ack/1", b"one", qos=1)
            qos1_done.set()

        mosquitto.pause()  # SIGSTOP: the socket stays open, nothing is acknowledged
        try:
            with trio.fail_after(5):
                # QoS 0 only needs the socket: it completes with the broker frozen.
                await pub.publish("ack/0", b"zero", qos=0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_qos1)
                with trio.move_on_after(0.5):
                    await qos1_done.wait()
                assert not qos1_done.is_set(), "QoS 1 publish returned without a PUBACK"
                mosquitto.resume()
                with trio.fail_after(5):
                    await qos1_done.wait()
        finally:
            mosquitto.resume()
        received = [await next_message(sub), await next_message(sub)]
        assert {m.payload for m in received} == {b"zero", b"one"}


async def test_retained_message_reaches_late_subscriber(mosquitto: MosquittoBroker) -> None:
    async with open_mqtt_client(settings_for(mosquitto, "pub-ret"), reconnect=False) as pub:
        await pub.publish("lockers/L9/config", b"v1", qos=1, retain=True)
        await pub.publish("lockers/L9/config", b"v2", qos=1, retain=True)
    async with open_mqtt_client(settings_for(mosquitto, "late-sub"), reconnect=False) as sub:
        await sub.subscribe([("lockers/+/config", 1)])
        message = await next_message(sub)
        assert message == InboundMessage("lockers/L9/config", b"v2", qos=1, retain=True)


async def test_unsubscribe_stops_delivery(mosquitto: MosquittoBroker) -> None:
    async with (
        open_mqtt_client(settings_for(mosquitto, "sub-unsub"), reconnect=False) as sub,
        open_mqtt_client(settings_for(mosquitto, "pub-unsub"), reconnect=False) as pub,
    ):
        await sub.subscribe([("u/a", 1), ("u/sentinel", 1)])
        await sub.unsubscribe(["u/a"])
        await pub.publish("u/a", b"must not arrive", qos=1)
        await pub.publish("u/sentinel", b"end", qos=1)
        # Same publisher, same subscriber: the broker keeps order, so u/a would come first.
        seen = await receive_until(sub, lambda m: m.topic == "u/sentinel")
        assert [m.topic for m in seen] == ["u/sentinel"]


async def test_exception_in_block_propagates_unwrapped(mosquitto: MosquittoBroker) -> None:
    with pytest.raises(ValueError, match="boom"):
        async with open_mqtt_client(settings_for(mosquitto, "raiser")):
            raise ValueError("boom")


# --------------------------------------------------------------------------- last will

WILL_VICTIM = """
import sys, trio
from gateway.mqtt import MqttSettings, Will, open_mqtt_client

async def main() -> None:
    host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    settings = MqttSettings(host, port, "will-victim", will=Will(topic, b"offline"))
    async with open_mqtt_client(settings) as client:
        await client.wait_connected()
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_will_is_published_when_client_process_is_killed(
    mosquitto: MosquittoBroker,
) -> None:
    topic = "lockers/L7/state"
    async with open_mqtt_client(settings_for(mosquitto, "will-observer")) as observer:
        await observer.subscribe([(topic, 1)])
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", WILL_VICTIM, mosquitto.host, str(mosquitto.port), topic],
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        try:
            assert proc.stdout is not None
            output = b""
            with trio.fail_after(10):
                while b"ready\n" not in output:
                    chunk = await proc.stdout.receive_some()
                    assert chunk, f"victim exited early: {output!r}"
                    output += chunk
            proc.kill()  # SIGKILL: no DISCONNECT, the kernel closes the socket
            with trio.fail_after(5):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
                if proc.stdout is not None:
                    await proc.stdout.aclose()
        will = await next_message(observer)
        assert (will.topic, will.payload, will.qos) == (topic, b"offline", 1)
    # Will(retain=True) by default: a later subscriber sees the last state.
    async with open_mqtt_client(settings_for(mosquitto, "will-late"), reconnect=False) as late:
        await late.subscribe([(topic, 1)])
        retained = await next_message(late)
        assert (retained.payload, retained.retain) == (b"offline", True)


async def test_will_is_not_published_after_graceful_disconnect(
    mosquitto_factory: Callable[..., MosquittoBroker],
) -> None:
    broker = mosquitto_factory(log_to_topic=True)
    topic = "lockers/L8/state"
    async with open_mqtt_client(settings_for(broker, "graceful-observer")) as observer:
        await observer.subscribe([(topic, 1), ("$SYS/broker/log/#", 0)])
        will = Will(topic, b"offline")
        async with open_mqtt_client(
            settings_for(broker, "graceful-client", will=will), reconnect=False
        ) as client:
            await client.publish(topic, b"online", qos=1)
        # The broker logs the DISCONNECT as it processes it; a will would be queued to us
        # by then. A sentinel round trip afterwards flushes anything queued before it.
        seen = await receive_until(
            observer, lambda m: b"Client graceful-client disconnected" in m.payload
        )
        await observer.publish(topic, b"sentinel", qos=1)
        seen += await receive_until(observer, lambda m: m.payload == b"sentinel")
        payloads = [m.payload for m in seen if m.topic == topic]
        assert payloads == [b"online", b"sentinel"]


# --------------------------------------------------------------------------- reconnect


@pytest.mark.parametrize("outage", ["restart", "kill"])
async def test_reconnects_and_resubscribes_after_broker_outage(
    mosquitto: MosquittoBroker, outage: str
) -> None:
    # clean_session=True: the broker forgets the subscription, so receiving afterwards
    # proves the adapter re-subscribed by itself.
    settings = settings_for(mosquitto, "resub", clean_session=True)
    async with open_mqtt_client(settings) as client:
        events = ConnectionEvents(client)
        await client.wait_connected()
        await client.subscribe([("r/#", 1)])
        assert events.history == [True]  # registered before the first CONNACK
        if outage == "restart":
            mosquitto.restart()
        else:
            mosquitto.kill()
            mosquitto.start()
        await events.wait_for(1, False)
        await events.wait_for(2, True)
        assert client.connected
        assert client.reconnects == 1
        async with open_mqtt_client(settings_for(mosquitto, "pub-resub"), reconnect=False) as pub:
            await pub.publish("r/after", b"still here", qos=1)
        message = await next_message(client)
        assert (message.topic, message.payload) == ("r/after", b"still here")
        assert events.history == [True, False, True]


async def test_qos1_publish_during_outage_completes_after_broker_returns(
    mosquitto: MosquittoBroker,
) -> None:
    async with open_mqtt_client(settings_for(mosquitto, "outage")) as client:
        events = ConnectionEvents(client)
        await client.wait_connected()
        await client.subscribe([("o/#", 1)])
        mosquitto.stop()
        await events.wait_for(1, False)
        assert not client.connected
        done = trio.Event()

        async def publish_during_outage() -> None:
            await client.publish("o/queued", b"sent while down", qos=1)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_during_outage)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            mosquitto.start()
            with trio.fail_after(10):
                await done.wait()
        assert client.reconnects >= 1
        message = await next_message(client)
        assert (message.topic, message.payload) == ("o/queued", b"sent while down")


async def test_unacked_qos1_publish_is_retransmitted_after_reconnect(
    mosquitto: MosquittoBroker,
) -> None:
    async with open_mqtt_client(settings_for(mosquitto, "retransmit")) as client:
        events = ConnectionEvents(client)
        await client.wait_connected()
        await client.subscribe([("rt/#", 1)])
        done = trio.Event()

        async def publish() -> None:
            await client.publish("rt/1", b"in flight", qos=1)
            done.set()

        async with trio.open_nursery() as nursery:
            mosquitto.pause()  # the PUBLISH is written, its PUBACK never comes
            nursery.start_soon(publish)
            with trio.move_on_after(0.3):
                await done.wait()
            assert not done.is_set()
            mosquitto.kill()  # the un-acked PUBLISH dies with the broker
            await events.wait_for(1, False)
            mosquitto.start()
            with trio.fail_after(10):
                await done.wait()  # paho re-sent it (DUP) after the reconnect
        message = await next_message(client)
        assert (message.topic, message.payload) == ("rt/1", b"in flight")


async def test_without_reconnect_a_lost_connection_raises(mosquitto: MosquittoBroker) -> None:
    with trio.fail_after(10), pytest.raises(MqttError, match="lost"):
        async with open_mqtt_client(settings_for(mosquitto, "fragile"), reconnect=False):
            mosquitto.kill()
            await trio.sleep_forever()


async def test_persistent_session_gets_messages_published_while_offline(
    mosquitto: MosquittoBroker,
) -> None:
    settings = settings_for(mosquitto, "locker-gw-1", clean_session=False)
    async with open_mqtt_client(settings, reconnect=False) as client:
        await client.subscribe([("ps/#", 1)])
    async with open_mqtt_client(settings_for(mosquitto, "pub-ps"), reconnect=False) as pub:
        await pub.publish("ps/1", b"while offline", qos=1)
    async with open_mqtt_client(settings, reconnect=False) as client:
        # No subscribe: the broker kept the session and queued the message.
        message = await next_message(client)
        assert message == InboundMessage("ps/1", b"while offline", qos=1, retain=False)


# --------------------------------------------------------------------------- backpressure


async def test_full_inbound_channel_stops_reading_and_loses_nothing(
    mosquitto: MosquittoBroker,
) -> None:
    capacity = 10
    count = 200
    settings = settings_for(mosquitto, "slow-consumer", inbound_capacity=capacity)
    async with (
        open_mqtt_client(settings, reconnect=False) as sub,
        open_mqtt_client(settings_for(mosquitto, "fast-producer"), reconnect=False) as pub,
    ):
        await sub.subscribe([("bp/#", 1)])
        with trio.fail_after(20):
            for i in range(count):
                await pub.publish(f"bp/{i % 7}", str(i).encode(), qos=1)
        # Nobody has read yet. Give an unthrottled reader time to show itself (this checks
        # that something does NOT happen, so there is nothing to await).
        await trio.sleep(0.3)
        stats = sub.messages().statistics()
        assert stats.current_buffer_used == capacity
        assert capacity <= sub.messages_received <= capacity + 5, sub.messages_received
        with trio.fail_after(20):
            payloads = [(await sub.messages().receive()).payload for _ in range(count)]
        assert payloads == [str(i).encode() for i in range(count)]
        assert sub.messages_received == count


# --------------------------------------------------------------------------- credentials


async def test_bad_credentials_are_refused(
    mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    passwords = write_password_file(tmp_path / "passwd", {"gateway": "s3cret"})
    broker = mosquitto_factory(allow_anonymous=False, password_file=passwords)

    with trio.fail_after(5), pytest.raises(ConnectionRefusedByBroker) as refused:
        async with open_mqtt_client(
            settings_for(broker, "bad-pw", username="gateway", password="wrong"),
            reconnect=False,
        ):
            pytest.fail("connected with a wrong password")
    assert refused.value.code in (4, 5)  # mosquitto 2.0 answers 5, "not authorised"

    with trio.fail_after(5), pytest.raises(ConnectionRefusedByBroker):
        async with open_mqtt_client(settings_for(broker, "anon"), reconnect=False):
            pytest.fail("connected anonymously")

    good = settings_for(broker, "good-pw", username="gateway", password="s3cret")
    async with open_mqtt_client(good, reconnect=False) as client:
        assert client.connected

    # With reconnect=True a refusal is not fatal: it keeps backing off and retrying.
    retrying = settings_for(
        broker,
        "bad-pw-retry",
        username="gateway",
        password="wrong",
        reconnect_min_delay=0.02,
        reconnect_max_delay=0.1,
    )
    async with open_mqtt_client(retrying) as client:
        with trio.move_on_after(1.0) as waited:
            await client.wait_connected()
        assert waited.cancelled_caught
        assert isinstance(client.last_connect_error, ConnectionRefusedByBroker)
    assert broker.log_text().count("disconnected, not authorised") >= 4


# --------------------------------------------------------------------------- shutdown


async def test_clean_shutdown_leaves_no_thread_and_closes_the_channel(
    mosquitto: MosquittoBroker,
) -> None:
    baseline_count, baseline = await warm_thread_cache()
    async with open_mqtt_client(settings_for(mosquitto, "shutdown")) as client:
        await client.wait_connected()
        await client.subscribe([("s/#", 1)])
        await client.publish("s/1", b"x", qos=1)
        await next_message(client)
        mosquitto.restart()  # one reconnect, so one more trip through the connect thread
        await client.wait_connected()
        await client.publish("s/2", b"y", qos=1)
    assert not client.connected
    assert busy_threads(baseline) == []
    assert threading.active_count() <= baseline_count
    # The inbound channel is closed once the client stops: consumers see the end.
    remaining = [m.payload async for m in client.messages()]
    assert remaining == [b"y"]
    with pytest.raises(MqttError):
        await client.publish("s/3", b"z")
    await client.disconnect()  # idempotent


@asynccontextmanager
async def unresponsive_listener() -> AsyncIterator[int]:
    """A loopback port whose accept queue is full: a TCP connect to it hangs (SYN dropped)."""
    server = socket.socket()
    fillers: list[socket.socket] = []
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        for _ in range(2):  # fill the accept queue; the kernel then drops new SYNs
            filler = socket.socket()
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def test_cancel_during_tcp_connect_leaves_nothing_behind() -> None:
    baseline_count, baseline = await warm_thread_cache()
    async with unresponsive_listener() as port:
        settings = MqttSettings("127.0.0.1", port, "hanging", connect_timeout=1.0)

        started = trio.current_time()
        with trio.move_on_after(0.2) as scope:
            async with open_mqtt_client(settings) as client:
                await client.wait_connected()
        assert scope.cancelled_caught
        # The blocking connect cannot be interrupted; it is bounded by connect_timeout.
        assert trio.current_time() - started < settings.connect_timeout + 1.0
        assert busy_threads(baseline) == []
        assert threading.active_count() <= baseline_count

        started = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            async with open_mqtt_client(settings, reconnect=False):
                pytest.fail("connected to a listener that never accepts")
        assert trio.current_time() - started < settings.connect_timeout + 1.0
        assert busy_threads(baseline) == []


# --------------------------------------------------------------------------- scripted peer


class ScriptedPeer:
    """Just enough of an MQTT broker to answer in ways mosquitto will not."""

    def __init__(self, connack_code: int | None = 0, suback_code: int = 0x80) -> None:
        self.connack_code = connack_code  # None: never answer CONNECT
        self.suback_code = suback_code
        self.received: list[int] = []  # packet types, in order
        self.closed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()

        async def read_exactly(n: int) -> bytes:
            while len(buffer) < n:
                chunk = await stream.receive_some()
                if not chunk:
                    raise EOFError
                buffer.extend(chunk)
            data = bytes(buffer[:n])
            del buffer[:n]
            return data

        try:
            while True:
                header = (await read_exactly(1))[0]
                length, multiplier = 0, 1
                while True:
                    byte = (await read_exactly(1))[0]
                    length += (byte & 0x7F) * multiplier
                    multiplier *= 128
                    if not byte & 0x80:
                        break
                body = await read_exactly(length)
                kind = header >> 4
                self.received.append(kind)
                if kind == 1 and self.connack_code is not None:  # CONNECT
                    await stream.send_all(bytes([0x20, 2, 0, self.connack_code]))
                elif kind == 8:  # SUBSCRIBE: answer every filter with suback_code
                    filters, pos = 0, 2
                    while pos < len(body):
                        pos += 2 + int.from_bytes(body[pos : pos + 2], "big") + 1
                        filters += 1
                    reply = body[:2] + bytes([self.suback_code]) * filters
                    await stream.send_all(bytes([0x90, len(reply)]) + reply)
                elif kind == 14:  # DISCONNECT
                    return
        except (EOFError, trio.BrokenResourceError):
            return
        finally:
            self.closed.set()
            await stream.aclose()


@asynccontextmanager
async def scripted_peer(peer: ScriptedPeer) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, peer.handle, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_suback_failure_raises_and_is_not_remembered() -> None:
    peer = ScriptedPeer(suback_code=0x80)
    async with scripted_peer(peer) as port:
        settings = MqttSettings("127.0.0.1", port, "suback-fail")
        async with open_mqtt_client(settings, reconnect=False) as client:
            with trio.fail_after(5), pytest.raises(MqttError, match="refused subscription"):
                await client.subscribe([("denied/#", 1)])
            assert client._subscriptions == {}


async def test_connack_code_is_reported() -> None:
    peer = ScriptedPeer(connack_code=4)
    async with scripted_peer(peer) as port:
        settings = MqttSettings("127.0.0.1", port, "bad-user")
        with trio.fail_after(5), pytest.raises(ConnectionRefusedByBroker) as refused:
            async with open_mqtt_client(settings, reconnect=False):
                pytest.fail("connected despite CONNACK 4")
        assert refused.value.code == 4
        assert refused.value.reason == "Bad user name or password"


async def test_cancel_while_waiting_for_connack_sends_disconnect() -> None:
    baseline_count, baseline = await warm_thread_cache()
    peer = ScriptedPeer(connack_code=None)  # accepts TCP, never answers CONNECT
    async with scripted_peer(peer) as port:
        settings = MqttSettings("127.0.0.1", port, "no-connack", connect_timeout=0.5)
        with trio.fail_after(5), pytest.raises(trio.TooSlowError):
            async with open_mqtt_client(settings, reconnect=False):
                pytest.fail("connected without a CONNACK")

        peer.received.clear()
        peer.closed = trio.Event()
        with trio.move_on_after(0.2) as scope:
            async with open_mqtt_client(settings) as client:
                await client.wait_connected()
        assert scope.cancelled_caught
        with trio.fail_after(5):
            await peer.closed.wait()
        assert peer.received == [1, 14]  # CONNECT, then a graceful DISCONNECT
        assert busy_threads(baseline) == []
        assert threading.active_count() <= baseline_count


async def test_socket_has_nagle_disabled(mosquitto: MosquittoBroker) -> None:
    """Small latency-bound packets (commands, PUBACKs) must not wait for Nagle's algorithm."""
    import socket as socket_module

    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id="nodelay-probe")
    async with open_mqtt_client(settings) as client:
        await client.wait_connected()
        sock = client._client.socket()
        assert sock is not None
        assert sock.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY) == 1


# --------------------------------------------------------------------------- manual ack


async def flushed(client: MqttClient) -> None:
    """Every packet queued before has reached the broker: a QoS 1 round trip behind them."""
    await client.publish("sync/flush", b"", qos=1)


async def test_manual_ack_only_acknowledged_messages_are_not_redelivered(
    mosquitto: MosquittoBroker,
) -> None:
    """With manual_ack a QoS 1 message is PUBACKed only by ``ack()``: the broker redelivers
    the others on the next connection of the persistent session (contract §2)."""
    settings = settings_for(mosquitto, "manual-ack-gw", clean_session=False, manual_ack=True)
    async with (
        open_mqtt_client(settings) as sub,
        open_mqtt_client(settings_for(mosquitto, "manual-ack-pub"), reconnect=False) as pub,
    ):
        await sub.wait_connected()
        events = ConnectionEvents(sub)  # counts the reconnections
        await sub.subscribe([("ma/#", 1)])
        await pub.publish("ma/a", b"A", qos=1)
        await pub.publish("ma/b", b"B", qos=1)
        first, second = await next_message(sub), await next_message(sub)
        assert (first.payload, second.payload) == (b"A", b"B")
        assert sub.unacknowledged == 2
        first.ack()
        first.ack()  # idempotent: the second call sends nothing
        assert sub.unacknowledged == 1
        await flushed(sub)

        sub._drop_socket()  # the connection is lost; the client reconnects by itself
        await events.wait_for(1, True)
        again = await next_message(sub)
        assert (again.payload, again.dup) == (b"B", True)  # A was acknowledged, B was not
        second.ack()  # of the earlier connection: ignored, the new copy is still unacked
        assert sub.unacknowledged == 1

        sub._drop_socket()
        await events.wait_for(2, True)
        third = await next_message(sub)
        assert third.payload == b"B"
        third.ack()
        assert sub.unacknowledged == 0
        await flushed(sub)

        sub._drop_socket()
        await events.wait_for(3, True)
        await pub.publish("ma/c", b"C", qos=1)
        assert (await next_message(sub)).payload == b"C"  # B is not delivered again


async def test_qos0_messages_need_no_ack_with_manual_ack(mosquitto: MosquittoBroker) -> None:
    settings = settings_for(mosquitto, "manual-ack-q0", manual_ack=True)
    async with (
        open_mqtt_client(settings, reconnect=False) as sub,
        open_mqtt_client(settings_for(mosquitto, "manual-ack-q0-pub"), reconnect=False) as pub,
    ):
        await sub.subscribe([("q0/#", 0)])
        await pub.publish("q0/x", b"x", qos=1)
        message = await next_message(sub)
        assert message.qos == 0 and sub.unacknowledged == 0
        message.ack()  # a no-op
