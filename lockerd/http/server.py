"""How lockerd's HTTP/1.1 connections are served: Hypercorn settings and one ASGI wrapper.

Two things here, both used by :func:`lockerd.service.serve_http`:

* :func:`hypercorn_config` - the Hypercorn configuration (bind address, timeouts).
* :func:`harden` - an ASGI middleware around the Quart-Trio app that makes every HTTP/1.x
  request end in an answer or in a clear close.

Why the wrapper exists (details, file and line references: ``docs/http-server.md``). With
Hypercorn 0.18.0 (trio worker) and Quart-Trio 0.12.0, Hypercorn finishes each exchange -
decides to keep or close the connection, closes the socket, re-arms the keep-alive timer -
*inside the app's* ``send()`` of the last response message, and part of that work is to put
``http.disconnect`` on the app's receive channel. Quart-Trio's receiving task cancels the
handler's nursery as soon as it sees ``http.disconnect``, so the handler task is cancelled in
the middle of Hypercorn's bookkeeping, at its next checkpoint. Observed effects:

1. an answer sent before the request body had arrived (an early 404/401/413): the
   cancellation lands in ``TCPServer._close`` before the socket is closed, so the connection
   is never closed and never recycled; the rest of the body and the next request are then
   read but never answered (a stall: 1-45 % of tries depending on the client), and with no
   more bytes the connection is held forever;
2. after every normal keep-alive request the idle timer is not re-armed (the cancellation
   lands in ``TrioSingleTask.restart``), so ``keep_alive_timeout`` never closes the idle
   connection.

:func:`harden` fixes the cause without touching Hypercorn: it holds back ``http.disconnect``
from the app until the app's ``send()`` call that is in progress has returned, so Hypercorn's
bookkeeping always completes. On top of that it decides, per exchange, what happens to a
request body the app has not waited for (RFC 9112 section 9.3: a server must read the whole
body or close the connection after its response), see :class:`_Exchange`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio
from hypercorn.config import Config

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

KEEP_ALIVE_TIMEOUT = 5.0
"""Seconds an HTTP/1.1 connection may sit idle (no request, or an incomplete request head)."""

BODY_READ_TIMEOUT = 10.0
"""Seconds a route that reads the body waits for all of it: Quart's ``BODY_TIMEOUT``, a 408."""

DRAIN_TIMEOUT = 1.0
"""Seconds to wait for the rest of a request body the app answered without reading."""

DRAIN_LIMIT = 64 * 1024
"""Unread body bytes beyond which the rest is not waited for: the connection is closed."""

CLOSING_STATUSES = frozenset({408, 413})
"""Responses after which the connection is always closed (the request's framing is suspect)."""


def hypercorn_config(
    bind: str,
    *,
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
) -> Config:
    """The Hypercorn configuration lockerd serves HTTP with, on ``bind`` (``host:port``, or
    ``fd://N`` for a socket the caller has bound already).

    * ``keep_alive_timeout``: an idle connection, or one whose request head is incomplete, is
      closed after this many seconds. Hypercorn arms this timer when a connection opens and
      again after each exchange; it only works with :func:`harden` around a Quart-Trio app.
    * ``read_timeout`` stays ``None`` on purpose: in Hypercorn 0.18 it bounds every socket
      read of the connection's whole life, so it would also cut quiet dashboard websockets and
      requests whose handler takes longer, and it closes without an answer. Incomplete bodies
      are bounded instead by :data:`BODY_READ_TIMEOUT` (408) and :data:`DRAIN_TIMEOUT`.
    * access and error logs are off (lockerd logs through structlog); shutdown waits at most
      2 s for in-flight requests.
    """
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 2.0
    config.keep_alive_timeout = keep_alive_timeout
    config.read_timeout = None
    return config


def harden(
    app: ASGIApp,
    *,
    drain_timeout: float = DRAIN_TIMEOUT,
    drain_limit: int = DRAIN_LIMIT,
) -> ASGIApp:
    """Wrap an ASGI app so that every HTTP/1.x request gets an answer or a clear close.

    Contract, for each ``http`` exchange (lifespan and websocket scopes pass through as they
    are):

    * ``http.disconnect`` reaches the app only once no ``send()`` of the app is in progress.
      (This is the fix of the stall; see the module docstring.)
    * If the app starts its response before the request body has fully arrived, the wrapper
      first waits up to ``drain_timeout`` for the rest (the app keeps consuming it; Quart
      stores at most ``MAX_CONTENT_LENGTH`` of it), unless more than ``drain_limit`` bytes are
      still declared. If it arrives, the exchange ends normally and the connection stays
      open for the next request (the body is discarded). If not, the response carries
      ``Connection: close`` and the connection is closed after it.
    * A 408 or 413 response always carries ``Connection: close`` and ends the connection.
    * When the connection is going to close while the body is still arriving, the response
      is written in full and the wrapper then waits up to ``drain_timeout`` more (reading and
      discarding) before Hypercorn closes, so that the close does not turn into a TCP reset
      that destroys the answer before the client has read it (RFC 9112 section 9.6).

    The app's requests are otherwise untouched; responses only gain ``Connection: close``.
    HTTP/2 exchanges only get the first point (HTTP/2 has no ``Connection`` header).
    """

    async def hardened(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send, drain_timeout, drain_limit)
        await app(scope, exchange.receive, exchange.send)

    return hardened


class _Exchange:
    """One HTTP request/response exchange between Hypercorn and the app.

    Tracks how much of the request body has passed to the app, whether one of the app's
    ``send()`` calls is in progress, and whether the connection is to close after the answer.
    """

    def __init__(
        self,
        scope: Message,
        receive: Receive,
        send: Send,
        drain_timeout: float,
        drain_limit: int,
    ) -> None:
        self._receive = receive
        self._send = send
        self._drain_timeout = drain_timeout
        self._drain_limit = drain_limit
        self._http1 = scope.get("http_version") in {"1.0", "1.1"}
        self._declared = declared_body_length(scope.get("headers", ()))
        self._received = 0
        self._body_done = trio.Event()  # the last body message or a disconnect has passed
        if self._declared == 0:
            self._body_done.set()
        self._sending = 0
        self._sends_over = trio.Event()
        self._sends_over.set()
        self._closing = False

    async def receive(self) -> Message:
        """The app's ``receive``: Hypercorn's, with ``http.disconnect`` held back during sends."""
        message = await self._receive()
        kind = message.get("type")
        if kind == "http.request":
            self._received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._body_done.set()
        elif kind == "http.disconnect":
            self._body_done.set()
            while self._sending:
                await self._sends_over.wait()
        return message

    async def send(self, message: Message) -> None:
        """The app's ``send``: Hypercorn's, after the wrapper's decisions about the body."""
        self._sending += 1
        if self._sending == 1:
            self._sends_over = trio.Event()
        try:
            await self._forward(message)
        finally:
            self._sending -= 1
            if self._sending == 0:
                self._sends_over.set()

    async def _forward(self, message: Message) -> None:
        kind = message.get("type")
        if not self._http1:
            await self._send(message)
        elif kind == "http.response.start":
            await self._send(await self._start(message))
        elif kind == "http.response.body" and self._closing and not message.get("more_body"):
            if message.get("body"):
                await self._send({**message, "more_body": True})
            await self._linger()
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await self._send(message)

    async def _start(self, message: Message) -> Message:
        headers = list(message.get("headers", ()))
        status = int(message.get("status", 200))
        if has_connection_close(headers) or status in CLOSING_STATUSES:
            self._closing = True
        elif not self._body_done.is_set():
            if self._unread_within_limit():
                with trio.move_on_after(self._drain_timeout):
                    await self._body_done.wait()
            self._closing = not self._body_done.is_set()
        if self._closing and not has_connection_close(headers):
            headers.append((b"connection", b"close"))
            return {**message, "headers": headers}
        return message

    def _unread_within_limit(self) -> bool:
        if self._declared is None:  # chunked: unknown; the wait is bounded by time only
            return True
        return self._declared - self._received <= self._drain_limit

    async def _linger(self) -> None:
        if not self._body_done.is_set():
            with trio.move_on_after(self._drain_timeout):
                await self._body_done.wait()


def declared_body_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The request body length the head declares: 0 for none, None when chunked.

    Mirrors h11's framing of requests: ``Transfer-Encoding`` wins over ``Content-Length``;
    neither means no body. (Hypercorn has already rejected heads h11 cannot frame.)
    """
    length = 0
    for name, value in headers:
        key = bytes(name).lower()
        if key == b"transfer-encoding":
            return None
        if key == b"content-length":
            try:
                length = int(bytes(value).split(b",")[0].strip())
            except ValueError:
                return None
    return length


def has_connection_close(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the headers carry the ``close`` connection option."""
    for name, value in headers:
        if bytes(name).lower() == b"connection":
            tokens = {token.strip().lower() for token in bytes(value).split(b",")}
            if b"close" in tokens:
                return True
    return False
