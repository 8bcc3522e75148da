"""The go-auth stand-in plugin (tests/support/goauth_plugin) is faithful to go-auth 3.0.0.

Real Mosquitto 2.0.11 loads the plugin and asks a stub HTTP backend written here, which records
every request and answers from a rule table. Each test asserts both the exact HTTP requests
(research/goauth.md §1) and what MQTT clients see.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support import goauth_broker
from tests.support.fixtures import GoAuthBrokerFactory
from tests.support.goauth_broker import GoAuthBroker, GoAuthPluginBuildError

SECRET = "s3cr3t-Mosq-Value"
AUTH = "/api/mosq/auth"
SUPERUSER = "/api/mosq/superuser"
ACL = "/api/mosq/acl"
WAIT = 5.0

# ---------------------------------------------------------------------------------------------
# The stub backend


@dataclass(frozen=True)
class Seen:
    """One request as the stub received it."""

    method: str
    target: str  # path and query, as sent
    headers: Message
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def fields(self) -> dict[str, str]:
        """The body's fields, JSON or form, values as strings (acc 4 → "4")."""
        if self.headers.get("Content-Type") == "application/json":
            decoded = json.loads(self.body)
            return {key: str(value) for key, value in decoded.items()}
        return dict(parse_qsl(self.body.decode(errors="replace"), keep_blank_values=True))


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    hang_up: bool = False  # close the connection without answering
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Rule:
    path: str | None
    match: Mapping[str, object]
    reply: Reply
    times: int | None  # None: forever

    def matches(self, seen: Seen) -> bool:
        if self.times == 0 or (self.path is not None and seen.path != self.path):
            return False
        fields = seen.fields()
        return all(fields.get(key) == str(value) for key, value in self.match.items())


class StubBackend:
    """A threaded HTTP/1.1 server on a free loopback port, recording every request.

    Rules added later win; without a matching rule /superuser answers 403 and anything else
    200. ``stop()`` closes the listener and every open connection, so the broker then gets
    "connection refused".
    """

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._rules: list[Rule] = []
        self._changed = threading.Condition()
        self._connections: set[socket.socket] = set()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with stub._changed:
                    stub._connections.add(self.connection)

            def finish(self) -> None:
                with stub._changed:
                    stub._connections.discard(self.connection)
                super().finish()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, self.headers, self.rfile.read(length))
                reply = stub._record(seen)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.hang_up:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_POST = do_GET = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _record(self, seen: Seen) -> Reply:
        with self._changed:
            self.requests.append(seen)
            self._changed.notify_all()
            for rule in self._rules:
                if rule.matches(seen):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule.reply
        return Reply(403 if seen.path == SUPERUSER else 200)

    def on(
        self,
        path: str | None,
        reply: Reply | int,
        *,
        times: int | None = None,
        **match: object,
    ) -> None:
        """Answer requests to ``path`` whose body fields equal ``match`` with ``reply``."""
        answer = reply if isinstance(reply, Reply) else Reply(reply)
        with self._changed:
            self._rules.insert(0, Rule(path, match, answer, times))

    def seen(self, path: str | None = None) -> list[Seen]:
        with self._changed:
            return [r for r in self.requests if path is None or r.path == path]

    def clear(self) -> None:
        with self._changed:
            self.requests.clear()

    def wait_for(self, predicate: Callable[[Seen], bool], timeout: float = WAIT) -> Seen:
        """The first recorded request matching ``predicate``, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for request in self.requests:
                    if predicate(request):
                        return request
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching request; seen: {self.summary()}")
                self._changed.wait(remaining)

    def summary(self) -> list[tuple[str, dict[str, str]]]:
        return [(r.path, r.fields()) for r in list(self.requests)]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._changed:
            for connection in list(self._connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


def acl_requests(stub: StubBackend, **match: object) -> list[dict[str, str]]:
    return [
        r.fields()
        for r in stub.seen(ACL)
        if all(r.fields().get(k) == str(v) for k, v in match.items())
    ]


# ---------------------------------------------------------------------------------------------
# MQTT clients: paho for ordinary sessions, raw packets where bytes matter


class Client:
    """A synchronous paho-mqtt 2.x client (MQTT 3.1.1) whose every step waits for its answer."""

    def __init__(
        self,
        broker: GoAuthBroker,
        client_id: str,
        username: str | None = None,
        password: str | None = "pw",
    ) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self._changed = threading.Condition()
        self._acks: dict[int, list[ReasonCode]] = {}
        self.connack: ReasonCode | None = None
        self._paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        if username is not None:
            self._paho.username_pw_set(username, password)
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = self._on_message
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_publish = self._on_publish
        self._paho.on_unsubscribe = self._on_subscribe
        self._broker = broker

    def _on_connect(
        self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self.connack = rc
        self._connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, _rc: ReasonCode, _p: Properties | None
    ) -> None:
        self.disconnected.set()
        with self._changed:
            self._changed.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Properties | None
    ) -> None:
        with self._changed:
            self._acks[mid] = codes
            self._changed.notify_all()

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        with self._changed:
            self._acks[mid] = [rc]
            self._changed.notify_all()

    def connect(self) -> ReasonCode:
        self._paho.connect(self._broker.host, self._broker.port, keepalive=30)
        self._paho.loop_start()
        assert self._connected.wait(WAIT) or self.disconnected.is_set(), "no CONNACK"
        assert self.connack is not None, "connection closed without CONNACK"
        return self.connack

    def _wait_ack(self, mid: int) -> list[ReasonCode] | None:
        """The SUBACK codes / PUBACK of ``mid``, or None when the broker disconnected us."""
        deadline = time.monotonic() + WAIT
        with self._changed:
            while mid not in self._acks:
                if self.disconnected.is_set():
                    return None
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no ack for mid {mid}"
                self._changed.wait(remaining)
            return self._acks.pop(mid)

    def subscribe(self, topic: str, qos: int = 1) -> list[int] | None:
        """The SUBACK return codes (0x80 = refused), or None if disconnected instead."""
        _, mid = self._paho.subscribe(topic, qos)
        assert mid is not None
        codes = self._wait_ack(mid)
        return None if codes is None else [code.value for code in codes]

    def unsubscribe(self, topic: str) -> None:
        _, mid = self._paho.unsubscribe(topic)
        assert mid is not None
        assert self._wait_ack(mid) is not None

    def publish(
        self, topic: str, payload: bytes = b"x", qos: int = 1, retain: bool = False
    ) -> bool:
        """Publish; with QoS 1 wait for the PUBACK. False when disconnected instead."""
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return True
        return self._wait_ack(info.mid) is not None

    def wait_message(self, topic: str, count: int = 1) -> mqtt.MQTTMessage:
        """The ``count``-th message received on ``topic``, waiting for it if need be."""
        deadline = time.monotonic() + WAIT
        with self._changed:
            while True:
                matching = [m for m in self.messages if m.topic == topic]
                if len(matching) >= count:
                    return matching[count - 1]
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no message on {topic}; got {self.topics()}"
                self._changed.wait(remaining)

    def topics(self) -> list[str]:
        with self._changed:
            return [m.topic for m in self.messages]

    def close(self) -> None:
        if not self.disconnected.is_set():
            self._paho.disconnect()
        self._paho.loop_stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(broker: GoAuthBroker, client_id: str, *args: Any) -> Client:
        client = Client(broker, client_id, *args)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _utf8(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _packet(kind: int, body: bytes) -> bytes:
    length = bytearray()
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([kind]) + bytes(length) + body


class RawClient:
    """MQTT 3.1.1 over a bare socket: any bytes as password, and a hard close (for wills)."""

    def __init__(self, broker: GoAuthBroker) -> None:
        self.sock = socket.create_connection((broker.host, broker.port), timeout=WAIT)

    def connect(
        self,
        client_id: str,
        username: str | bytes | None = None,
        password: bytes | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> int | None:
        """Send CONNECT; the CONNACK return code, or None if the broker just closed."""
        flags = 0x02  # clean session
        payload = _utf8(client_id)
        if will is not None:
            flags |= 0x04 | 0x08  # will, QoS 1
            payload += _utf8(will[0]) + _utf8(will[1])
        if username is not None:
            flags |= 0x80
            payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
        header = _utf8("MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
        self.sock.sendall(_packet(0x10, header + payload))
        answer = self._read(4)
        if not answer:
            return None
        assert answer[0] == 0x20, answer
        return answer[3]

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                return data
            data += chunk
        return data

    def subscribe(self, topic: str | bytes) -> int | None:
        """SUBSCRIBE at QoS 1; the SUBACK code, or None if the broker closed instead."""
        self.sock.sendall(_packet(0x82, struct.pack("!H", 1) + _utf8(topic) + b"\x01"))
        answer = self._read(5)
        if not answer:
            return None
        assert answer[0] == 0x90, answer
        return answer[4]

    def closed_by_broker(self) -> bool:
        return self._read(1) == b""

    def disconnect(self) -> None:
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker sends the will."""
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def stub() -> Iterator[StubBackend]:
    backend = StubBackend()
    yield backend
    backend.stop()


@pytest.fixture
def broker_for(
    stub: StubBackend, goauth_broker_factory: GoAuthBrokerFactory
) -> Callable[..., GoAuthBroker]:
    def make(**options: Any) -> GoAuthBroker:
        options.setdefault("http_port", stub.port)
        return goauth_broker_factory(secret=SECRET, **options)

    return make


# ---------------------------------------------------------------------------------------------
# Exact requests

EXPECTED = {
    "json": {
        "content_type": "application/json",
        "user_agent": "mosquitto-2.0.11",
        "user": b'{"clientid":"dev1","password":"pw1","username":"dev1"}',
        "superuser": b'{"username":"dev1"}',
        "acl": b'{"acc":4,"clientid":"dev1","topic":"locker/+/state","username":"dev1"}',
    },
    "form": {
        "content_type": "application/x-www-form-urlencoded",
        "user_agent": "Go-http-client/1.1",
        "user": b"clientid=dev1&password=pw1&username=dev1",
        "superuser": b"username=dev1",
        "acl": b"acc=4&clientid=dev1&topic=locker%2F%2B%2Fstate&username=dev1",
    },
}


@pytest.mark.parametrize("mode", ["json", "form"])
def test_exact_user_superuser_and_acl_requests(
    mode: str, stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for(params_mode=mode)
    client = RawClient(broker)
    assert client.connect("dev1", "dev1", b"pw1") == 0
    assert client.subscribe("locker/+/state") == 1
    client.disconnect()

    user, superuser, acl = stub.seen()
    expected = EXPECTED[mode]
    for request, path, body in (
        (user, AUTH, expected["user"]),
        (superuser, SUPERUSER, expected["superuser"]),
        (acl, ACL, expected["acl"]),
    ):
        assert request.method == "POST"
        assert request.target == f"{path}?mosq_secret={SECRET}"
        assert request.body == body
        assert request.headers["Content-Type"] == expected["content_type"]
        assert request.headers["User-Agent"] == expected["user_agent"]
        assert request.headers["Content-Length"] == str(len(body))
        assert request.headers["Accept-Encoding"] == "gzip"  # as Go's transport asks
        assert request.headers["Accept"] is None and request.headers["Expect"] is None
        assert request.headers["Host"] == f"127.0.0.1:{stub.port}"
    # the plugin's own log has the same requests, secret redacted
    logged = broker.plugin_requests()
    assert [(e["check"], e["method"], e["status"], e["outcome"]) for e in logged] == [
        ("user", "POST", 200, "allow"),
        ("superuser", "POST", 403, "deny"),
        ("acl", "POST", 200, "allow"),
    ]
    assert logged[2]["url"] == f"http://127.0.0.1:{stub.port}{ACL}?mosq_secret=***"
    assert logged[2]["topic"] == "locker/+/state" and logged[2]["acc"] == 4


# Go's json.Marshal: <>& as \u00XX, \b \f short, other controls \u00XX, U+2028/9 escaped,
# invalid UTF-8 → \ufffd, DEL and other non-ASCII verbatim. url.QueryEscape: bytes as %XX.
ODD_PASSWORD = (
    b'p"\\<>&\n\r\t\x08\x0c\x01\x1f\x7f \xe2\x80\xa8\xe2\x80\xa9\xff\xc3\xa9\xf0\x9f\x94\x92/+=?%'
)
ODD_PASSWORD_JSON = (
    b'"p\\"\\\\\\u003c\\u003e\\u0026\\n\\r\\t\\b\\f\\u0001\\u001f\x7f '
    b'\\u2028\\u2029\\ufffd\xc3\xa9\xf0\x9f\x94\x92/+=?%"'
)
ODD_PASSWORD_FORM = (
    b"p%22%5C%3C%3E%26%0A%0D%09%08%0C%01%1F%7F+"
    b"%E2%80%A8%E2%80%A9%FF%C3%A9%F0%9F%94%92%2F%2B%3D%3F%25"
)
ODD_USER = "Zoë <\u2028> ü"
ODD_TOPIC = 'locker/ä ö/"q"\\&<tag>/\u2029/#'


@pytest.mark.parametrize("mode", ["json", "form"])
def test_odd_bytes_are_encoded_as_go_encodes_them(
    mode: str, stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for(params_mode=mode)
    client = RawClient(broker)
    assert client.connect("c 1/é", ODD_USER, ODD_PASSWORD) == 0
    assert client.subscribe(ODD_TOPIC) == 1
    client.disconnect()

    user, superuser, acl = stub.seen()
    if mode == "json":
        assert user.body == (
            b'{"clientid":"c 1/\xc3\xa9","password":'
            + ODD_PASSWORD_JSON
            + b',"username":"Zo\xc3\xab \\u003c\\u2028\\u003e \xc3\xbc"}'
        )
        assert superuser.body == b'{"username":"Zo\xc3\xab \\u003c\\u2028\\u003e \xc3\xbc"}'
        assert acl.body == (
            b'{"acc":4,"clientid":"c 1/\xc3\xa9","topic":"locker/\xc3\xa4 \xc3\xb6/'
            b'\\"q\\"\\\\\\u0026\\u003ctag\\u003e/\\u2029/#",'
            b'"username":"Zo\xc3\xab \\u003c\\u2028\\u003e \xc3\xbc"}'
        )
        # and a JSON parser reads back what was sent (invalid UTF-8 aside)
        assert json.loads(acl.body)["topic"] == ODD_TOPIC
    else:
        assert user.body == (
            b"clientid=c+1%2F%C3%A9&password="
            + ODD_PASSWORD_FORM
            + b"&username=Zo%C3%AB+%3C%E2%80%A8%3E+%C3%BC"
        )
        assert superuser.body == b"username=Zo%C3%AB+%3C%E2%80%A8%3E+%C3%BC"
        assert acl.body == (
            b"acc=4&clientid=c+1%2F%C3%A9&topic=locker%2F%C3%A4+%C3%B6%2F%22q%22%5C%26%3Ctag%3E"
            b"%2F%E2%80%A9%2F%23&username=Zo%C3%AB+%3C%E2%80%A8%3E+%C3%BC"
        )
        assert acl.fields()["topic"] == ODD_TOPIC


# ---------------------------------------------------------------------------------------------
# CONNECT


def test_connect_denied_gets_not_authorized(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    broker = broker_for()
    stub.on(AUTH, 403, password="wrong")
    assert str(clients(broker, "dev1", "dev1", "wrong").connect()) == "Not authorized"
    assert RawClient(broker).connect("dev1", "dev1", b"wrong") == 5  # 3.1.1: not authorized
    assert clients(broker, "dev1", "dev1", "pw").connect() == 0
    assert [r.fields()["password"] for r in stub.seen()] == ["wrong", "wrong", "pw"]


@pytest.mark.parametrize("failure", ["500", "503", "refused", "hang_up", "timeout"])
def test_connect_backend_error_closes_without_connack(
    failure: str, stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for(timeout=1)
    if failure == "refused":
        stub.stop()
    elif failure == "hang_up":
        stub.on(AUTH, Reply(hang_up=True))
    elif failure == "timeout":
        stub.on(AUTH, Reply(delay=3.0))
    else:
        stub.on(AUTH, int(failure))
    started = time.monotonic()
    assert RawClient(broker).connect("dev1", "dev1", b"pw") is None
    elapsed = time.monotonic() - started
    [result] = [e for e in broker.plugin_log() if e["event"] == "result"]
    assert result["outcome"] == "error"
    if failure == "timeout":
        assert 0.9 <= elapsed < 2.5  # http_timeout 1 s, not the backend's 3 s
    if failure != "refused":
        assert len(stub.seen(AUTH)) == 1
    assert broker.running


def test_missing_username_or_password_is_denied_without_a_request(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for()
    assert RawClient(broker).connect("dev1", "dev1", None) == 5
    assert RawClient(broker).connect("dev1", None, None) == 5
    assert stub.seen() == []
    reasons = [e["reason"] for e in broker.plugin_log() if e["event"] == "no_request"]
    assert reasons == ["null username or password"] * 2


def test_retry_count_retries_after_an_error(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for(retry_count=1)
    stub.on(AUTH, 500, times=1)
    assert RawClient(broker).connect("dev1", "dev1", b"pw") == 0
    assert [e["status"] for e in broker.plugin_requests()] == [500, 200]


@pytest.mark.parametrize(
    ("mode", "body", "expected"),
    [
        ("json", b'{"ok":true}', 0),
        ("json", b' {"Ok": true, "error": ""} ', 0),
        ("json", '{"o\u212a":true}'.encode(), 0),  # Go's EqualFold: KELVIN SIGN is a k
        ("json", b'{"ok":true,"ok":false}', 5),  # the last duplicate wins
        ("json", b'{"ok":false,"error":"nope"}', 5),
        ("json", b"{}", 5),
        ("json", b"null", 5),
        ("json", b'{"ok":null}', 5),
        ("json", b'{"ok":1}', None),  # a type error is an error
        ("json", b'{"ok":true,"error":3}', None),
        ("json", b"[]", None),
        ("json", b"ok", None),
        ("json", b"", None),
        ("json", b'{"ok":true} x', None),
        ("text", b"ok", 0),
        ("text", b"ok\n", 5),
        ("text", b"OK", 5),
        ("text", b"", 5),
    ],
)
def test_json_and_text_response_modes(
    mode: str,
    body: bytes,
    expected: int | None,
    stub: StubBackend,
    broker_for: Callable[..., GoAuthBroker],
) -> None:
    broker = broker_for(response_mode=mode)
    stub.on(AUTH, Reply(200, body))
    assert RawClient(broker).connect("dev1", "dev1", b"pw") == expected


# ---------------------------------------------------------------------------------------------
# Superuser


def test_superuser_is_asked_before_every_acl_check(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    broker = broker_for()
    sub = clients(broker, "svc-1", "svc")
    dev = clients(broker, "dev1", "dev1")
    assert sub.connect() == 0 and dev.connect() == 0
    assert sub.subscribe("locker/+/state") == [1]
    assert dev.publish("locker/dev1/state")
    sub.wait_message("locker/dev1/state")

    acl_path = [(r.path, r.fields()) for r in stub.seen() if r.path != AUTH]
    assert acl_path == [
        (SUPERUSER, {"username": "svc"}),
        (ACL, {"acc": "4", "clientid": "svc-1", "topic": "locker/+/state", "username": "svc"}),
        (SUPERUSER, {"username": "dev1"}),
        (ACL, {"acc": "2", "clientid": "dev1", "topic": "locker/dev1/state", "username": "dev1"}),
        (SUPERUSER, {"username": "svc"}),
        (ACL, {"acc": "1", "clientid": "svc-1", "topic": "locker/dev1/state", "username": "svc"}),
    ]


def test_superuser_allow_skips_acl(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    broker = broker_for()
    stub.on(SUPERUSER, 200, username="svc")
    stub.on(ACL, 403)  # /acl would deny everything
    svc = clients(broker, "svc-1", "svc")
    assert svc.connect() == 0
    assert svc.subscribe("#") == [1]
    assert svc.publish("locker/1/command")
    svc.wait_message("locker/1/command")
    assert [r.path for r in stub.seen()] == [AUTH, SUPERUSER, SUPERUSER, SUPERUSER]


def test_without_superuser_uri_no_superuser_request(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    broker = broker_for(superuser_uri=None)
    svc = clients(broker, "svc-1", "svc")
    assert svc.connect() == 0
    assert svc.subscribe("locker/#") == [1]
    assert svc.publish("locker/1/command")
    svc.wait_message("locker/1/command")
    assert [(r.path, r.fields().get("acc")) for r in stub.seen()] == [
        (AUTH, None),
        (ACL, "4"),
        (ACL, "2"),
        (ACL, "1"),
    ]


@pytest.mark.parametrize(("acl_status", "suback"), [(200, 1), (403, None)])
def test_superuser_error_then_acl_decides_or_errors(
    acl_status: int,
    suback: int | None,
    stub: StubBackend,
    broker_for: Callable[..., GoAuthBroker],
) -> None:
    """superuser error + acl allow → allow; superuser error + acl deny → error (disconnect)."""
    broker = broker_for()
    stub.on(SUPERUSER, 500)
    stub.on(ACL, acl_status)
    client = RawClient(broker)
    assert client.connect("dev1", "dev1", b"pw") == 0
    assert client.subscribe("locker/dev1/command") == suback
    if suback is None:
        assert client.closed_by_broker()
    assert [r.path for r in stub.seen()] == [AUTH, SUPERUSER, ACL]


# ---------------------------------------------------------------------------------------------
# SUBSCRIBE, PUBLISH, delivery


def test_subscribe_checks_the_filter_as_sent_with_acc_4(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    broker = broker_for()
    stub.on(ACL, 403, acc=4, topic="#")
    dev = clients(broker, "dev1", "dev1")
    assert dev.connect() == 0
    assert dev.subscribe("locker/+/state") == [1]
    assert dev.subscribe("#", qos=0) == [0x80]
    assert dev.subscribe("locker/dev1/command", qos=0) == [0]
    assert [(r["topic"], r["acc"]) for r in acl_requests(stub)] == [
        ("locker/+/state", "4"),
        ("#", "4"),
        ("locker/dev1/command", "4"),
    ]


def test_unsubscribe_is_allowed_without_a_request(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    """mosquitto 2.0.11 does pass acc 8 to v5 plugins; go-auth (v4) is never asked."""
    broker = broker_for()
    dev = clients(broker, "dev1", "dev1")
    assert dev.connect() == 0
    assert dev.subscribe("locker/dev1/command") == [1]
    before = len(stub.seen())
    dev.unsubscribe("locker/dev1/command")
    assert len(stub.seen()) == before
    [skipped] = [e for e in broker.plugin_log() if e["event"] == "no_request"]
    assert (skipped["acc"], skipped["reason"], skipped["outcome"]) == (8, "unsubscribe", "allow")


def test_publish_is_checked_with_acc_2_and_a_denied_publish_is_not_delivered(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    broker = broker_for()
    stub.on(ACL, 403, acc=2, topic="locker/dev2/state")
    svc = clients(broker, "svc-1", "svc")
    dev = clients(broker, "dev1", "dev1")
    assert svc.connect() == 0 and dev.connect() == 0
    assert svc.subscribe("locker/#") == [1]
    assert dev.publish("locker/dev2/state")  # 3.1.1: PUBACKed all the same
    assert dev.publish("locker/dev1/state")
    svc.wait_message("locker/dev1/state")
    # messages from one publisher keep their order: had the first been delivered, it would be here
    assert svc.topics() == ["locker/dev1/state"]
    assert [
        (r["topic"], r["acc"], r["username"]) for r in acl_requests(stub) if r["acc"] != "4"
    ] == [
        ("locker/dev2/state", "2", "dev1"),
        ("locker/dev1/state", "2", "dev1"),
        ("locker/dev1/state", "1", "svc"),
    ]


def test_every_delivery_is_checked_with_acc_1_retained_included(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    broker = broker_for()
    stub.on(ACL, 403, acc=1, username="svc", topic="locker/2/state")
    dev = clients(broker, "dev1", "dev1")
    assert dev.connect() == 0
    assert dev.publish("locker/1/state", b"retained", retain=True)
    svc = clients(broker, "svc-1", "svc")
    assert svc.connect() == 0
    assert svc.subscribe("locker/+/state") == [1]
    assert svc.wait_message("locker/1/state").retain
    assert dev.publish("locker/2/state", b"live")  # read denied for svc
    assert dev.publish("locker/1/state", b"live")
    assert svc.wait_message("locker/1/state", count=2).payload == b"live"
    assert svc.topics() == ["locker/1/state", "locker/1/state"]
    reads = [(r["topic"], r["clientid"]) for r in acl_requests(stub, acc=1)]
    assert reads == [
        ("locker/1/state", "svc-1"),  # the retained message, sent on subscribe
        ("locker/2/state", "svc-1"),
        ("locker/1/state", "svc-1"),
    ]


def test_a_5xx_on_publish_disconnects_the_publisher(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    broker = broker_for()
    stub.on(ACL, 500, acc=2, topic="locker/dev1/event")
    svc = clients(broker, "svc-1", "svc")
    dev = clients(broker, "dev1", "dev1")
    assert svc.connect() == 0 and dev.connect() == 0
    assert svc.subscribe("locker/#") == [1]
    assert not dev.publish("locker/dev1/event")  # no PUBACK: disconnected
    assert dev.disconnected.wait(WAIT)
    assert svc.publish("locker/marker")
    svc.wait_message("locker/marker")
    assert svc.topics() == ["locker/marker"]


def test_a_5xx_on_delivery_drops_the_message_for_that_subscriber_only(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    broker = broker_for()
    stub.on(ACL, 500, acc=1, username="bad")
    good = clients(broker, "good-1", "good")
    bad = clients(broker, "bad-1", "bad")
    dev = clients(broker, "dev1", "dev1")
    assert good.connect() == 0 and bad.connect() == 0 and dev.connect() == 0
    assert good.subscribe("locker/#") == [1] and bad.subscribe("locker/#") == [1]
    assert dev.publish("locker/dev1/state", qos=1)  # QoS 1 under 3.1.1: still PUBACKed
    good.wait_message("locker/dev1/state")
    stub.on(ACL, 200, acc=1, username="bad", topic="locker/marker")
    assert dev.publish("locker/marker")
    bad.wait_message("locker/marker")
    assert bad.topics() == ["locker/marker"]
    assert not bad.disconnected.is_set() and not dev.disconnected.is_set()


def test_a_5xx_on_delivery_of_a_qos0_publish_disconnects_the_publisher(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    """mosquitto 2.0.11 (subs.c → handle_publish.c) turns the subscriber's delivery error into
    an error of the QoS 0 PUBLISH, so the *publisher* is disconnected; other subscribers still
    get the message. A faithful plugin must reproduce that, so we pin it here."""
    broker = broker_for()
    stub.on(ACL, 500, acc=1, username="bad")
    good = clients(broker, "good-1", "good")
    bad = clients(broker, "bad-1", "bad")
    dev = clients(broker, "dev1", "dev1")
    assert good.connect() == 0 and bad.connect() == 0 and dev.connect() == 0
    assert good.subscribe("locker/#") == [1] and bad.subscribe("locker/#") == [1]
    dev.publish("locker/dev1/state", qos=0)
    good.wait_message("locker/dev1/state")
    assert dev.disconnected.wait(WAIT)
    assert not bad.disconnected.is_set()
    assert bad.topics() == []


# ---------------------------------------------------------------------------------------------
# Last will


@pytest.mark.parametrize("allowed", [True, False])
def test_the_will_is_checked_with_acc_2_only_when_sent(
    allowed: bool,
    stub: StubBackend,
    broker_for: Callable[..., GoAuthBroker],
    clients: Callable[..., Client],
) -> None:
    broker = broker_for()
    if not allowed:
        stub.on(ACL, 403, acc=2, topic="locker/dev1/state", clientid="dev1")
    svc = clients(broker, "svc-1", "svc")
    assert svc.connect() == 0
    assert svc.subscribe("locker/#") == [1]

    polite = RawClient(broker)  # a normal DISCONNECT: the will is discarded, never checked
    assert polite.connect("dev0", "dev0", b"pw", will=("locker/dev0/state", b"gone")) == 0
    polite.disconnect()
    dev = RawClient(broker)
    assert dev.connect("dev1", "dev1", b"pw", will=("locker/dev1/state", b"lost")) == 0
    assert acl_requests(stub, acc=2) == []  # nothing at CONNECT

    dev.abort()
    stub.wait_for(lambda r: r.path == ACL and r.fields().get("clientid") == "dev1")
    if allowed:
        assert svc.wait_message("locker/dev1/state").payload == b"lost"
    assert svc.publish("locker/marker")
    svc.wait_message("locker/marker")
    assert svc.topics() == (["locker/dev1/state"] if allowed else []) + ["locker/marker"]
    assert [(r["topic"], r["clientid"]) for r in acl_requests(stub, acc=2)] == [
        ("locker/dev1/state", "dev1"),
        ("locker/marker", "svc-1"),
    ]


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_on_answers_within_the_ttl_and_asks_again_after_it(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for(cache=True, auth_cache_seconds=1, acl_cache_seconds=1)
    first = RawClient(broker)
    assert first.connect("dev1", "dev1", b"pw") == 0
    assert first.subscribe("locker/dev1/command") == 1
    assert first.subscribe("locker/dev1/command") == 1  # same (user, topic, clientid, acc)
    # the auth key is (username, password): another client id is a cache hit
    second = RawClient(broker)
    assert second.connect("dev1-other", "dev1", b"pw") == 0
    # the ACL key includes the client id: asked again
    assert second.subscribe("locker/dev1/command") == 1
    assert [(r.path, r.fields().get("clientid")) for r in stub.seen()] == [
        (AUTH, "dev1"),
        (SUPERUSER, None),
        (ACL, "dev1"),
        (SUPERUSER, None),
        (ACL, "dev1-other"),
    ]
    hits = [
        (e["check"], e.get("clientid")) for e in broker.plugin_log() if e["event"] == "cache_hit"
    ]
    assert hits == [("acl", "dev1"), ("user", "dev1-other")]

    time.sleep(1.2)  # let both TTLs run out
    stub.clear()
    assert RawClient(broker).connect("dev1-third", "dev1", b"pw") == 0
    assert first.subscribe("locker/dev1/command") == 1
    assert [r.path for r in stub.seen()] == [AUTH, SUPERUSER, ACL]


def test_cache_keeps_denials_but_never_errors(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for(cache=True)
    stub.on(AUTH, 500, times=1)
    assert RawClient(broker).connect("dev1", "dev1", b"pw") is None  # error: not cached
    assert RawClient(broker).connect("dev1", "dev1", b"pw") == 0
    stub.on(AUTH, 403, times=1)
    assert RawClient(broker).connect("dev2", "dev2", b"pw") == 5
    assert RawClient(broker).connect("dev2", "dev2", b"pw") == 5  # the denial is cached
    assert [r.fields()["username"] for r in stub.seen(AUTH)] == ["dev1", "dev1", "dev2"]

    client = RawClient(broker)
    assert client.connect("dev1", "dev1", b"pw") == 0
    stub.on(ACL, 500, times=1)
    other = RawClient(broker)
    assert other.connect("dev1b", "dev1", b"pw") == 0
    assert other.subscribe("locker/dev1/command") is None  # error: disconnected, not cached
    assert client.subscribe("locker/dev1/command") == 1  # other client id: asks
    again = RawClient(broker)
    assert again.connect("dev1b", "dev1", b"pw") == 0
    assert again.subscribe("locker/dev1/command") == 1  # asks again: the error was not cached
    assert len(stub.seen(ACL)) == 3


def test_cache_stores_the_superuser_answer_inside_the_acl_record(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    """go-auth 3.0.0 caches the whole superuser-then-acl answer under the ACL key: no
    superuser request for a repeated check, but one for every new topic."""
    broker = broker_for(cache=True)
    stub.on(SUPERUSER, 200)
    svc = RawClient(broker)
    assert svc.connect("svc-1", "svc", b"pw") == 0
    assert svc.subscribe("locker/#") == 1
    assert svc.subscribe("locker/#") == 1
    assert svc.subscribe("server/status") == 1
    assert [(r.path) for r in stub.seen()] == [AUTH, SUPERUSER, SUPERUSER]


def test_cache_off_every_check_is_a_request(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for(cache=False)
    for _ in range(2):
        client = RawClient(broker)
        assert client.connect("dev1", "dev1", b"pw") == 0
        assert client.subscribe("locker/dev1/command") == 1
        assert client.subscribe("locker/dev1/command") == 1
        client.disconnect()
    assert [r.path for r in stub.seen()] == [AUTH, SUPERUSER, ACL, SUPERUSER, ACL] * 2
    assert not [e for e in broker.plugin_log() if e["event"] == "cache_hit"]


# ---------------------------------------------------------------------------------------------
# Secrets, odd inputs, load


def test_the_secret_never_appears_in_any_log(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for(extra_config=["log_type all"], timeout=1)
    stub.on(AUTH, 500, username="e500")
    stub.on(AUTH, 403, username="deny")
    stub.on(AUTH, Reply(hang_up=True), username="hangup")
    client = RawClient(broker)
    assert client.connect("dev1", "dev1", b"pw") == 0
    assert client.subscribe("locker/dev1/command") == 1
    assert RawClient(broker).connect("d", "deny", b"pw") == 5
    assert RawClient(broker).connect("e", "e500", b"pw") is None
    assert RawClient(broker).connect("h", "hangup", b"pw") is None
    stub.stop()
    assert RawClient(broker).connect("r", "refused", b"pw") is None
    assert any(SECRET in r.target for r in stub.seen())  # it was sent...
    broker_log, plugin_log = broker.log_text(), broker.plugin_log_text()
    assert SECRET not in broker_log and SECRET not in plugin_log  # ...and never logged
    assert "mosq_secret=***" in broker_log and "mosq_secret=***" in plugin_log
    assert "http request error" in broker_log and "error code: 500" in broker_log
    assert not [e for e in broker.plugin_log() if "password" in e]  # never logged either


def test_special_chars_in_username_deny_without_a_request(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    """mosquitto denies ACL checks for v4 plugins (go-auth) of users with + or #."""
    broker = broker_for()
    client = RawClient(broker)
    assert client.connect("dev1", "a+b", b"pw") == 0  # CONNECT itself is asked
    assert client.subscribe("locker/dev1/command") == 0x80
    assert [r.path for r in stub.seen()] == [AUTH]


def test_long_topics_and_many_clients(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker], clients: Callable[..., Client]
) -> None:
    broker = broker_for()
    long_topic = "locker/" + "é<" * 20_000  # 60 kB of UTF-8 (MQTT's limit is 64 kB), 160 kB as JSON
    client = RawClient(broker)
    assert client.connect("dev1", "dev1", b"pw") == 0
    assert client.subscribe(long_topic) == 1
    assert json.loads(stub.seen(ACL)[-1].body)["topic"] == long_topic

    raws = [RawClient(broker) for _ in range(40)]
    results: list[int | None] = [None] * len(raws)

    def connect(i: int) -> None:
        results[i] = raws[i].connect(f"dev-{i}", f"dev-{i}", b"pw")

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(len(raws))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert results == [0] * len(raws)
    assert len(stub.seen(AUTH)) == 1 + len(raws)
    assert broker.running
    svc = clients(broker, "svc-1", "svc")
    assert svc.connect() == 0


# ---------------------------------------------------------------------------------------------
# Less common go-auth options


def test_http_method_put_sends_the_json_body_with_put(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for(extra_options={"http_method": "PUT", "http_user_agent": "lockerd-test"})
    assert RawClient(broker).connect("dev1", "dev1", b"pw") == 0
    [request] = stub.seen()
    assert request.method == "PUT"
    assert request.body == b'{"clientid":"dev1","password":"pw","username":"dev1"}'
    assert request.headers["User-Agent"] == "lockerd-test"


def test_form_mode_ignores_put_and_user_agent_and_fails_with_get(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    put = broker_for(
        params_mode="form", extra_options={"http_method": "PUT", "http_user_agent": "x"}
    )
    assert RawClient(put).connect("dev1", "dev1", b"pw") == 0
    [request] = stub.seen()
    assert (request.method, request.headers["User-Agent"]) == ("POST", "Go-http-client/1.1")
    get = broker_for(params_mode="form", extra_options={"http_method": "GET"})
    assert RawClient(get).connect("dev1", "dev1", b"pw") is None  # an error, nothing sent
    assert len(stub.seen()) == 1


def test_disable_superuser_and_clientid_as_username(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for(
        extra_options={"disable_superuser": "true", "use_clientid_as_username": "true"}
    )
    client = RawClient(broker)
    assert client.connect("bank-7", "dev1", b"pw") == 0
    assert client.subscribe("locker/bank-7/command") == 1
    assert [(r.path, r.fields()["username"]) for r in stub.seen()] == [
        (AUTH, "bank-7"),
        (ACL, "bank-7"),
    ]


def test_redirects_are_followed_like_go_does(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = broker_for()
    stub.on(AUTH, Reply(307, headers={"Location": "/moved"}))
    stub.on("/moved", 403)
    assert RawClient(broker).connect("dev1", "dev1", b"pw") == 5  # the final answer counts
    first, moved = stub.seen()
    assert (moved.method, moved.target, moved.body) == ("POST", "/moved", first.body)


def test_a_missing_header_fails_the_build_naming_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "goauth_plugin.c"  # another source: another cache entry, a fresh build
    source.write_bytes(goauth_broker.PLUGIN_SOURCE.read_bytes() + b"\n/* variant */\n")
    monkeypatch.setattr(goauth_broker, "PLUGIN_SOURCE", source)
    monkeypatch.setitem(goauth_broker.HEADERS, "curl/no_such_header.h", "libcurl4-openssl-dev")
    with pytest.raises(GoAuthPluginBuildError, match="libcurl4-openssl-dev"):
        goauth_broker.build_goauth_plugin.__wrapped__()


# ---------------------------------------------------------------------------------------------
# Backends: go-auth's "files" backend chained before "http" (auth_opt_backends files,http)

BACKEND_ACL = "user backend\ntopic readwrite #\n"


def chained(
    tmp_path: Path,
    broker_for: Callable[..., GoAuthBroker],
    *,
    acl: str = BACKEND_ACL,
    users: dict[str, str] | None = None,
    backends: str = "files,http",
    **extra: str,
) -> GoAuthBroker:
    files = goauth_broker.write_files_backend(
        tmp_path / "files",
        users if users is not None else {"backend": "backend-pw"},
        acl,
        iterations=1000,
    )
    options = {
        "backends": backends,
        "files_register": "user,acl",
        "http_register": "user,acl",
        **files,
        **extra,
    }
    return broker_for(extra_options=options)


def test_the_files_backend_answers_for_its_users_without_http(
    tmp_path: Path,
    stub: StubBackend,
    broker_for: Callable[..., GoAuthBroker],
    clients: Callable[..., Client],
) -> None:
    broker = chained(tmp_path, broker_for)
    backend = clients(broker, "lockerd-1", "backend", "backend-pw")
    assert backend.connect() == 0
    assert backend.subscribe("locker/+/state") == [1]
    assert backend.subscribe("#") == [1]
    assert backend.publish("server/status", b"online")
    assert stub.seen() == []  # the files backend decided everything, and said allow
    files = [(e["check"], e["outcome"]) for e in broker.plugin_log() if e["event"] == "files"]
    # CONNECT, two subscribes, the publish (acc 2) and its delivery to itself via "#" (acc 1)
    assert files == [("user", "allow")] + [("acl", "allow")] * 4

    # a device is unknown to the files: its checks go to HTTP, and with http_register
    # user,acl there is no /superuser request in front of each /acl
    device = clients(broker, "dev1", "dev1", "pw")
    assert device.connect() == 0
    assert device.subscribe("locker/dev1/command") == [1]
    assert [r.path for r in stub.seen()] == [AUTH, ACL]


def test_the_backend_user_and_its_will_pass_while_http_is_down(
    tmp_path: Path,
    stub: StubBackend,
    broker_for: Callable[..., GoAuthBroker],
    clients: Callable[..., Client],
) -> None:
    broker = chained(tmp_path, broker_for)
    stub.stop()  # lockerd is down (killed, not yet listening, shutting down)
    watcher = clients(broker, "watcher", "backend", "backend-pw")
    assert watcher.connect() == 0
    assert watcher.subscribe("server/status") == [1]
    lockerd = RawClient(broker)
    assert (
        lockerd.connect("lockerd", "backend", b"backend-pw", will=("server/status", b"offline"))
        == 0
    )
    lockerd.abort()  # kill -9
    assert watcher.wait_message("server/status").payload == b"offline"
    # and a device cannot get in: its check is an HTTP error (no CONNACK)
    assert RawClient(broker).connect("dev1", "dev1", b"pw") is None
    assert not [
        e for e in broker.plugin_log() if e["outcome"] == "error" and e.get("username") == "backend"
    ]


def test_a_wrong_backend_password_falls_through_to_http_as_in_go_auth(
    tmp_path: Path, stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    broker = chained(tmp_path, broker_for)
    stub.on(AUTH, 403)
    assert RawClient(broker).connect("c", "backend", b"wrong") == 5
    assert [r.fields()["username"] for r in stub.seen(AUTH)] == ["backend"]


@pytest.mark.parametrize(
    ("acl", "username", "topic", "acc", "allowed"),
    [
        # readwrite grants every acc, subscribe included, on any matching topic
        ("user u\ntopic readwrite #\n", "u", "a/b", 4, True),
        ("user u\ntopic a/#\n", "u", "a/b/c", 2, True),  # no access word: readwrite
        # read: deliveries, and subscriptions other than "#"
        ("user u\ntopic read s/#\n", "u", "s/+", 4, True),
        ("user u\ntopic read #\n", "u", "#", 4, False),
        ("user u\ntopic read s/#\n", "u", "s/1", 2, False),
        ("user u\ntopic write s/1\n", "u", "s/1", 2, True),
        # denials win, the user's and the general ones
        ("user u\ntopic readwrite s/#\ntopic deny s/secret\n", "u", "s/secret", 2, False),
        ("pattern deny s/%u\nuser u\ntopic readwrite s/#\n", "u", "s/u", 2, False),
        # patterns are general records with %c and %u
        ("pattern readwrite d/%c/%u\n", "u", "d/cid/u", 2, True),
        ("pattern readwrite d/%c/%u\n", "u", "d/other/u", 2, False),
        # general topic lines count only before the first user line
        ("topic readwrite g/#\nuser u\n", "other", "g/1", 2, True),
        ("user u\ntopic readwrite x\nuser v\n", "v", "x", 2, False),
    ],
)
def test_files_acl_semantics_follow_go_auth(
    tmp_path: Path,
    stub: StubBackend,
    broker_for: Callable[..., GoAuthBroker],
    acl: str,
    username: str,
    topic: str,
    acc: int,
    allowed: bool,
) -> None:
    broker = chained(tmp_path, broker_for, acl=acl, users={"u": "pw", "v": "pw", "other": "pw"})
    stub.on(ACL, 403)
    client = RawClient(broker)
    assert client.connect("cid", username, b"pw") == 0
    if acc == 4:
        assert client.subscribe(topic) == (1 if allowed else 0x80)
    else:
        client.sock.sendall(_packet(0x32, _utf8(topic) + struct.pack("!H", 7) + b"m"))
        assert client._read(4)[:1] == b"\x40"  # PUBACK, allowed or not (MQTT 3.1.1)
    decisions = [
        e["outcome"]
        for e in broker.plugin_log()
        if e["event"] == "files" and e["check"] == "acl" and e.get("username") == username
    ]
    assert decisions[0] == ("allow" if allowed else "deny")


def test_files_only_without_an_acl_file_allows_everything(
    tmp_path: Path, broker_for: Callable[..., GoAuthBroker], stub: StubBackend
) -> None:
    files = goauth_broker.write_files_backend(tmp_path / "f", {"u": "pw"}, "", iterations=1000)
    broker = broker_for(
        extra_options={"backends": "files", "files_password_path": files["files_password_path"]}
    )
    client = RawClient(broker)
    assert client.connect("c", "u", b"pw") == 0
    assert client.subscribe("#") == 1
    assert RawClient(broker).connect("c2", "u", b"nope") == 5
    assert stub.seen() == []


@pytest.mark.parametrize(
    "options",
    [
        {"backends": "files,redis"},
        {"backends": " "},
        {"backends": "files", "files_register": "user"},  # no password file
        {"backends": "http", "http_register": "user,owner"},
        {"backends": "files,http", "files_acl_path": "/nonexistent/acls"},
    ],
)
def test_bad_backend_options_stop_the_broker(
    options: dict[str, str], broker_for: Callable[..., GoAuthBroker]
) -> None:
    with pytest.raises(Exception, match=r"exited|did not accept"):
        broker_for(extra_options=options)


def test_the_cache_jitter_spreads_expiries_within_ttl_plus_minus_jitter(
    stub: StubBackend, broker_for: Callable[..., GoAuthBroker]
) -> None:
    """go-auth's expirationWithJitter: each entry lives ttl ± jitter (here 2 ± 1 s)."""
    broker = broker_for(
        cache=True,
        acl_cache_seconds=2,
        extra_options={"acl_jitter_seconds": "1", "auth_jitter_seconds": "1"},
    )
    client = RawClient(broker)
    assert client.connect("dev1", "dev1", b"pw") == 0
    topics = [f"locker/dev1/t{n}" for n in range(40)]
    cached_at: dict[str, float] = {}
    for topic in topics:
        assert client.subscribe(topic) == 1  # asked, then cached
        cached_at[topic] = time.monotonic()
    expired_at: dict[str, float] = {}
    while len(expired_at) < len(topics) and time.monotonic() - cached_at[topics[0]] < 4.5:
        stub.clear()
        for topic in topics:
            if topic not in expired_at:
                assert client.subscribe(topic) == 1
                if stub.seen(ACL):  # asked again: its entry had expired
                    expired_at[topic] = time.monotonic() - cached_at[topic]
                    stub.clear()
        time.sleep(0.1)  # polling an external broker's cache: nothing to await
    lifetimes = sorted(expired_at.values())
    assert len(lifetimes) == len(topics)
    assert lifetimes[0] >= 0.8 and lifetimes[-1] <= 3.4, lifetimes
    assert lifetimes[-1] - lifetimes[0] > 0.5, lifetimes  # spread, not all at 2 s
