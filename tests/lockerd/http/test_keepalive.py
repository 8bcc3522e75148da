"""HTTP/1.1 keep-alive, early answers, 413/408 and timeouts, byte for byte (issue 14, item 8).

A minimal Quart-Trio app made of lockerd's own pieces (error handlers, ``json_body``,
``MAX_BODY_BYTES``, ``lockerd.http.server``) is served by ``hypercorn.trio.serve`` on port 0
and driven through a raw TCP client, so each test controls exactly which bytes are sent when.
A stall is no answer (or no close) within :data:`STALL` seconds; nothing waits by sleeping.
The last test runs the real service to check that ``serve_http`` uses all of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypercorn.trio import serve
from quart import request
from quart_trio import QuartTrio

from lockerd.http.app import MAX_BODY_BYTES
from lockerd.http.errors import ApiError, install_error_handlers
from lockerd.http.server import (
    BODY_READ_TIMEOUT,
    KEEP_ALIVE_TIMEOUT,
    declared_body_length,
    harden,
    has_connection_close,
    hypercorn_config,
)
from lockerd.http.validation import json_body
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import ADMIN_TOKEN, lockerd, test_settings

STALL = 2.0
TRIES = 50


class Thing(msgspec.Struct):
    name: str


def build_app(body_timeout: float) -> QuartTrio:
    app = QuartTrio("keepalive-test")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = body_timeout
    install_error_handlers(app)

    @app.get("/ok")
    async def ok() -> dict[str, Any]:
        return {"ok": True}

    @app.post("/echo")  # reads the whole body
    @json_body(Thing)
    async def echo(data: Thing) -> dict[str, Any]:
        return {"name": data.name}

    @app.post("/admin/things")  # answers 401 before it looks at the body, like admin routes
    async def admin_things() -> dict[str, Any]:
        if request.headers.get("Authorization") != "Bearer right":
            raise ApiError(401, "missing or invalid bearer token")
        return {"ok": True}

    return app


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return ", ".join(values) if values else None

    @property
    def closes(self) -> bool:
        return "close" in (self.header("connection") or "").lower()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RawClient:
    """One TCP connection; the test decides every byte."""

    stream: trio.SocketStream
    buffer: bytearray = field(default_factory=bytearray)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bool:
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset by the server
            return False
        self.buffer += chunk
        return bool(chunk)

    async def reply(self) -> Reply:
        """The next response (Content-Length framed); fails if none comes within STALL."""
        with trio.fail_after(STALL):
            while b"\r\n\r\n" not in self.buffer:
                if not await self._more():
                    raise AssertionError(f"connection closed before a response: {self.buffer!r}")
            head, _, _ = bytes(self.buffer).partition(b"\r\n\r\n")
            del self.buffer[: len(head) + 4]
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = []
            for line in lines:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
            length = int(dict(headers).get("content-length", "0"))
            while len(self.buffer) < length:
                if not await self._more():
                    raise AssertionError("connection closed inside a response body")
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
            return Reply(int(status_line.split()[1]), headers, body)

    async def closed_by_server(self, within: float = STALL) -> None:
        """Wait for the server to close; fails on a stall or on unexpected bytes."""
        with trio.fail_after(within):
            while await self._more():
                pass
        assert not self.buffer, f"unexpected bytes before the close: {bytes(self.buffer)!r}"

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class Served:
    port: int

    async def connect(self) -> RawClient:
        return RawClient(await trio.open_tcp_stream("127.0.0.1", self.port))


async def start(
    nursery: trio.Nursery,
    *,
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
    drain_timeout: float = 1.0,
    body_timeout: float = BODY_READ_TIMEOUT,
) -> Served:
    config = hypercorn_config("127.0.0.1:0", keep_alive_timeout=keep_alive_timeout)
    app = harden(build_app(body_timeout), drain_timeout=drain_timeout)
    urls: list[str] = await nursery.start(serve, app, config)
    return Served(int(urls[0].rsplit(":", 1)[1]))


def post_head(path: str, length: int, *extra: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: test",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


GET_OK = b"GET /ok HTTP/1.1\r\nHost: test\r\n\r\n"
BODY = json.dumps({"name": "x" * 200}).encode()
EARLY = pytest.mark.parametrize(
    ("path", "status", "code"),
    [("/missing", 404, "not_found"), ("/admin/things", 401, "unauthorized")],
    ids=["404", "401"],
)


# ---------------------------------------------------------------- keep-alive still works


async def test_back_to_back_requests_share_one_connection(nursery: trio.Nursery) -> None:
    served = await start(nursery)
    client = await served.connect()
    for i in range(10):
        if i % 2:
            await client.send(post_head("/echo", len(BODY)) + BODY)
            reply = await client.reply()
            assert (reply.status, reply.json()) == (200, {"name": "x" * 200})
        else:
            await client.send(GET_OK)
            reply = await client.reply()
            assert (reply.status, reply.json()) == (200, {"ok": True})
        assert not reply.closes, reply.headers
    await client.aclose()


async def test_pipelined_requests_are_all_answered(nursery: trio.Nursery) -> None:
    served = await start(nursery)
    client = await served.connect()
    await client.send((post_head("/echo", len(BODY)) + BODY + GET_OK) * 5)
    statuses = [(await client.reply()).status for _ in range(10)]
    assert statuses == [200] * 10
    await client.aclose()


# ---------------------------------------------------------------- answers before the body


@EARLY
async def test_early_answer_while_the_body_streams_keeps_the_connection(
    nursery: trio.Nursery, path: str, status: int, code: str
) -> None:
    """The body follows at once (a normal client): it is discarded, the next request answered."""
    served = await start(nursery)
    for _ in range(TRIES):
        client = await served.connect()
        await client.send(post_head(path, len(BODY)) + BODY[:10])
        await client.send(BODY[10:])
        await client.send(GET_OK)
        first = await client.reply()
        assert (first.status, first.json()["error"]) == (status, code)
        assert not first.closes, "the body arrived at once: the connection should stay open"
        second = await client.reply()
        assert (second.status, second.json()) == (200, {"ok": True})
        await client.aclose()


async def answered_or_closed_cleanly(client: RawClient, first: Reply, rest: bytes) -> None:
    """The rule for a connection after an early answer: no request is left without a reply.

    If the first answer says ``Connection: close``, the server must then close. Otherwise the
    client may go on: it sends ``rest`` (the rest of the body and/or the next request) and the
    next request must be answered. Either way within :data:`STALL` seconds.
    """
    if first.closes:
        await client.closed_by_server()
    else:
        await client.send(rest)
        second = await client.reply()
        assert second.status == 200, second


@EARLY
async def test_early_answer_then_rest_of_body_and_next_request(
    nursery: trio.Nursery, path: str, status: int, code: str
) -> None:
    """The client reads the early answer before it sends the rest of the body and more."""
    served = await start(nursery, drain_timeout=0.05)
    for _ in range(TRIES):
        client = await served.connect()
        await client.send(post_head(path, len(BODY)) + BODY[:10])
        first = await client.reply()
        assert (first.status, first.json()["error"]) == (status, code)
        await answered_or_closed_cleanly(client, first, BODY[10:] + GET_OK)
        # lockerd's choice: the body did not come within the drain time, so it closes
        assert first.closes, first.headers
        await client.aclose()


@EARLY
async def test_next_request_sent_in_place_of_the_body_gets_a_clear_close(
    nursery: trio.Nursery, path: str, status: int, code: str
) -> None:
    """A client that breaks the framing (next request instead of the body) is not left hanging.

    Its bytes are the rest of the declared body as far as HTTP is concerned; the answer says
    ``Connection: close`` and the connection is closed, so the client knows to retry.
    """
    served = await start(nursery, drain_timeout=0.05)
    for _ in range(TRIES):
        client = await served.connect()
        await client.send(post_head(path, len(BODY)))
        await client.send(GET_OK)
        first = await client.reply()
        assert (first.status, first.json()["error"]) == (status, code)
        await answered_or_closed_cleanly(client, first, b"")
        assert first.closes, first.headers
        await client.aclose()


async def test_early_answer_to_expect_100_continue_keeps_the_connection(
    nursery: trio.Nursery,
) -> None:
    """Hypercorn says 100 Continue at once; the body then follows and is discarded."""
    served = await start(nursery)
    client = await served.connect()
    await client.send(post_head("/missing", len(BODY), "Expect: 100-continue"))
    assert (await client.reply()).status == 100
    await client.send(BODY + GET_OK)
    first = await client.reply()
    assert (first.status, first.closes) == (404, False)
    assert (await client.reply()).status == 200
    await client.aclose()


# ---------------------------------------------------------------- 413


@pytest.mark.parametrize("sent", ["whole body", "no body"])
async def test_413_for_a_content_length_over_the_limit(nursery: trio.Nursery, sent: str) -> None:
    served = await start(nursery)
    client = await served.connect()
    length = MAX_BODY_BYTES + 1
    body = b"[" + b" " * (length - 2) + b"]" if sent == "whole body" else b""
    await client.send(post_head("/echo", length) + body)
    reply = await client.reply()
    assert reply.status == 413
    assert reply.json()["error"] == "payload_too_large"
    assert reply.json()["message"]
    assert reply.closes, reply.headers
    await client.closed_by_server()


@pytest.mark.parametrize("finished", [False, True], ids=["growing", "complete"])
async def test_413_for_a_chunked_body_over_the_limit(nursery: trio.Nursery, finished: bool) -> None:
    served = await start(nursery)
    client = await served.connect()
    head = (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (8192, b" " * 8192)
    chunks = chunk * (MAX_BODY_BYTES // 8192 + 1)
    await client.send(head + chunks + (b"0\r\n\r\n" if finished else b""))
    reply = await client.reply()
    assert (reply.status, reply.json()["error"]) == (413, "payload_too_large")
    assert reply.closes, reply.headers
    await client.closed_by_server()


# ---------------------------------------------------------------- timeouts


async def test_partial_body_then_silence_gets_408_and_a_close(nursery: trio.Nursery) -> None:
    served = await start(nursery, body_timeout=0.3, drain_timeout=0.2)
    client = await served.connect()
    await client.send(post_head("/echo", len(BODY)) + BODY[:10])
    reply = await client.reply()
    assert (reply.status, reply.json()["error"]) == (408, "request_timeout")
    assert reply.closes, reply.headers
    await client.closed_by_server()


async def test_partial_body_then_silence_on_a_route_that_does_not_read_it(
    nursery: trio.Nursery,
) -> None:
    served = await start(nursery, drain_timeout=0.2)
    client = await served.connect()
    await client.send(post_head("/missing", len(BODY)) + BODY[:10])
    reply = await client.reply()
    assert (reply.status, reply.closes) == (404, True)
    await client.closed_by_server()


async def test_idle_keep_alive_connection_is_closed(nursery: trio.Nursery) -> None:
    """Hypercorn's keep-alive timer is re-armed after each exchange (it was not, before)."""
    served = await start(nursery, keep_alive_timeout=0.3)
    client = await served.connect()
    for _ in range(3):
        await client.send(post_head("/echo", len(BODY)) + BODY)
        assert (await client.reply()).status == 200
    await client.closed_by_server()


@pytest.mark.parametrize("after_a_request", [False, True])
async def test_incomplete_request_head_is_closed(
    nursery: trio.Nursery, after_a_request: bool
) -> None:
    served = await start(nursery, keep_alive_timeout=0.3)
    client = await served.connect()
    if after_a_request:
        await client.send(GET_OK)
        assert (await client.reply()).status == 200
    await client.send(b"POST /echo HTTP/1.1\r\nHost: te")
    await client.closed_by_server()


# ---------------------------------------------------------------- the pieces


def test_hypercorn_config_values() -> None:
    config = hypercorn_config("127.0.0.1:8080")
    assert config.bind == ["127.0.0.1:8080"]
    assert config.keep_alive_timeout == KEEP_ALIVE_TIMEOUT == 5.0
    assert config.read_timeout is None
    assert (config.accesslog, config.errorlog) == (None, None)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], 0),
        ([(b"content-length", b"12")], 12),
        ([(b"Content-Length", b"0")], 0),
        ([(b"transfer-encoding", b"chunked")], None),
        ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], None),
    ],
)
def test_declared_body_length(headers: list[tuple[bytes, bytes]], expected: int | None) -> None:
    assert declared_body_length(headers) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"close", True), (b"Keep-Alive, Close", True), (b"keep-alive", False), (b"closed", False)],
)
def test_has_connection_close(value: bytes, expected: bool) -> None:
    assert has_connection_close([(b"Connection", value)]) is expected


# ---------------------------------------------------------------- the real service


async def test_service_serves_http_hardened(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "db")) as service:
        port = int(service.base_url.rsplit(":", 1)[1])
        connect = Served(port).connect
        body = json.dumps({"name": "bank", "compartments": []}).encode()
        for _ in range(10):
            client = await connect()
            await client.send(post_head("/api/admin/locker-banks", len(body)) + body[:5])
            await client.send(body[5:])
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            first = await client.reply()
            assert (first.status, first.json()["error"]) == (401, "unauthorized")
            assert (await client.reply()).status in {200, 503}
            await client.aclose()
        client = await connect()
        admin = f"Authorization: Bearer {ADMIN_TOKEN}"
        await client.send(post_head("/api/admin/locker-banks", MAX_BODY_BYTES + 1, admin))
        reply = await client.reply()
        assert (reply.status, reply.json()["error"]) == (413, "payload_too_large")
        assert reply.closes, reply.headers
        await client.closed_by_server(within=2 * STALL)  # after the 1 s drain of the body
