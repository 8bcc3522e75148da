"""Websocket plumbing shared by the live streams (the operators' status, the app's updates).

:class:`Transport` is the few operations a streaming session needs; :class:`QuartTransport`
provides them over Quart's websocket served by Hypercorn, plus an :meth:`~Transport.abort`
that resets the TCP connection when a close frame cannot be written (a client that stopped
reading leaves Hypercorn's shielded send stuck in a full TCP window).

:class:`LiveStreams` runs one-way streams (server to client) with the rules every live stream
of lockerd follows. Producers (bank actors, listeners) never wait for a client: they mark what
changed in a coalescing subscription of their own (a set of dirty ids and a wake-up event), so
a slow client costs them nothing. Each connection then runs small tasks:

* the *feed* (given by the stream's owner) waits for changes, renders the latest state of
  what changed and hands each message to :meth:`Outgoing.send`, which puts it in a bounded
  queue. While the queue is full the feed waits and stops taking changes, which meanwhile
  coalesce in its subscription (bounded by what exists, not by how often it changes);
* the *writer* sends the queued messages; a send that takes longer than ``send_timeout``
  trips a watchdog;
* the *watchdog*, and a queue that stays full for ``send_timeout``, both mean that the client
  has fallen behind: the session ends at once (its subscription with it) and the socket is
  closed with 1013 (try again later); a client reconnects and gets a fresh snapshot;
* incoming messages are read and dropped, so they never pile up.

On service shutdown (the ``shutdown`` event, or cancellation of the service) every socket is
closed with 1001 (going away) rather than vanishing with a 1006. A client that has stopped
reading altogether leaves a send stuck in a full TCP window, and Hypercorn writes inside a
shielded cancel scope, so that send cannot be interrupted: if the close frame cannot be written
within ``close_timeout`` the TCP connection is reset, so neither the session nor the service's
shutdown waits on a dead client.
"""

from __future__ import annotations

import math
import socket
import struct
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge
from quart.wrappers import Websocket

log = structlog.get_logger("lockerd.websocket")

CLOSE_GOING_AWAY: Final = 1001
CLOSE_TRY_AGAIN_LATER: Final = 1013

SEND_TIMEOUT_SECONDS: Final = 2.0
CLOSE_TIMEOUT_SECONDS: Final = 3.0
QUEUE_SIZE: Final = 256

Verdict = tuple[int, str, str]  # (close code, close reason, metric label)

SLOW_QUEUE: Final[Verdict] = (CLOSE_TRY_AGAIN_LATER, "too slow: update queue full", "slow")
SLOW_SEND: Final[Verdict] = (CLOSE_TRY_AGAIN_LATER, "too slow: send timed out", "slow")
SHUTDOWN: Final[Verdict] = (CLOSE_GOING_AWAY, "server shutting down", "shutdown")
ENDED: Final[Verdict] = (CLOSE_GOING_AWAY, "server shutting down", "ended")


class Transport(Protocol):
    """The few websocket operations a session needs (Quart's websocket in production)."""

    async def send(self, message: str) -> None: ...

    async def receive(self) -> object: ...

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None:
        """Drop the TCP connection at once, unsent data and all."""


class QuartTransport:
    """Quart's websocket, plus an abort that reaches through to the TCP socket."""

    def __init__(self, ws: Websocket) -> None:
        self._ws = ws

    async def send(self, message: str) -> None:
        await self._ws.send(message)

    async def receive(self) -> object:
        return await self._ws.receive()

    async def close(self, code: int, reason: str) -> None:
        with suppress(Exception):  # already closed by the client, or the connection is gone
            await self._ws.close(code, reason)

    def abort(self) -> None:
        stream = socket_stream_of(self._ws)
        if stream is None:
            log.warning("websocket_abort_unsupported")
            return
        with suppress(OSError):
            stream.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )  # reset, do not linger over unsent data
        stream.socket.close()  # wakes a blocked send with ClosedResourceError


def socket_stream_of(ws: Websocket) -> trio.SocketStream | None:
    """The TCP stream under a Quart websocket served by Hypercorn (trio worker), if found.

    Quart keeps the ASGI ``send`` callable in ``ws._send`` (a partial); Hypercorn's is a bound
    method of its stream, whose ``send`` is bound to the protocol, and so on down to the
    ``TCPServer`` that owns the ``trio.SocketStream``. This follows ``__self__.send`` a few
    hops and gives up (returns None) if the shape is not what Hypercorn 0.18 has.
    """
    send: Any = getattr(getattr(ws, "_send", None), "args", (None,))[0]
    for _ in range(8):
        owner = getattr(send, "__self__", None)
        if owner is None:
            return None
        stream = getattr(owner, "stream", None)
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if isinstance(stream, trio.SocketStream):
            return stream
        send = getattr(owner, "send", None)
    return None


@dataclass(slots=True)
class StreamMetrics:
    """Open connections and closed ones by reason, for one kind of stream."""

    clients: Gauge
    closed: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry, prefix: str, what: str) -> StreamMetrics:
        """``{prefix}_clients`` and ``{prefix}_disconnects`` (by reason) in ``registry``."""
        return cls(
            clients=Gauge(f"{prefix}_clients", f"Open {what} websockets", registry=registry),
            closed=Counter(
                f"{prefix}_disconnects",
                f"Closed {what} websockets by reason (slow: fell behind and was dropped;"
                " shutdown: service stopping; ended: the client left or the service was cancelled)",
                ["reason"],
                registry=registry,
            ),
        )


class StreamSession:
    """One websocket stream: its verdict and the scopes that end it."""

    def __init__(self, metrics: StreamMetrics, name: str) -> None:
        self.metrics = metrics
        self.name = name
        self.scope = trio.CancelScope()
        self.send_deadline = trio.CancelScope(deadline=math.inf)
        self.verdict: Verdict | None = None
        self.decided = trio.Event()
        # run when the session ends, at once (e.g. closing the producers' subscription)
        self.on_finish: list[Callable[[], None]] = []
        # shielded so that it runs even while the service is being cancelled; cancelled
        # itself once the close frame is out
        self.abort_timer = trio.CancelScope(shield=True)

    def finish(self, verdict: Verdict) -> None:
        """End the session; the first verdict wins. Its producers stop feeding it at once."""
        if self.verdict is not None:
            return
        self.verdict = verdict
        for callback in self.on_finish:
            callback()
        self.scope.cancel()
        self.decided.set()
        self.metrics.closed.labels(verdict[2]).inc()
        if verdict[2] == "slow":
            log.info("websocket_client_dropped", stream=self.name, reason=verdict[1])


class Outgoing:
    """What a feed hands its messages to: a bounded queue that never blocks for long."""

    def __init__(
        self, session: StreamSession, channel: trio.MemorySendChannel[str], timeout: float
    ) -> None:
        self._session = session
        self._channel = channel
        self._timeout = timeout

    async def send(self, message: str) -> None:
        """Queue ``message``; if the queue stays full for the send timeout, the client is too
        slow: the session ends (1013) and this raises ``trio.Cancelled``."""
        with trio.move_on_after(self._timeout) as waited:
            await self._channel.send(message)
        if waited.cancelled_caught:
            self._session.finish(SLOW_QUEUE)
            await trio.lowlevel.checkpoint()  # the session's scope is cancelled: raises
            raise AssertionError("unreachable: the session was cancelled")  # pragma: no cover


Feed = Callable[[StreamSession, Outgoing], Awaitable[None]]


@dataclass(slots=True)
class LiveStreams:
    """Serves the websockets of one kind of live stream (see the module docstring)."""

    name: str
    shutdown: trio.Event
    metrics: StreamMetrics
    send_timeout: float = SEND_TIMEOUT_SECONDS
    close_timeout: float = CLOSE_TIMEOUT_SECONDS
    queue_size: int = QUEUE_SIZE
    sessions: set[StreamSession] = field(default_factory=set)

    async def run(self, transport: Transport, feed: Feed) -> None:
        """Stream to one accepted websocket until the session ends, then close it.

        ``feed(session, outgoing)`` produces the messages (a snapshot first, then changes)
        and runs until cancelled; it should register anything to undo at once when the
        session ends in ``session.on_finish``. Whatever ends the session (falling behind,
        shutdown, cancellation, the client leaving), the socket gets a close frame, or is
        aborted if the close cannot be written within ``close_timeout``.
        """
        session = StreamSession(self.metrics, self.name)
        outgoing, queued = trio.open_memory_channel[str](self.queue_size)
        self.sessions.add(session)
        self.metrics.clients.inc()
        try:
            async with trio.open_nursery() as guard:
                guard.start_soon(self._abort_if_stuck, session, transport)
                try:
                    with session.scope:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._write, session, queued, transport)
                            nursery.start_soon(self._watchdog, session)
                            nursery.start_soon(self._discard_incoming, transport)
                            nursery.start_soon(self._watch_shutdown, session)
                            await feed(session, Outgoing(session, outgoing, self.send_timeout))
                            await trio.sleep_forever()  # a feed that ends leaves the socket open
                finally:
                    # cancelled from outside: the client left or the service is stopping
                    session.finish(ENDED)
                    assert session.verdict is not None
                    code, reason, _ = session.verdict
                    with trio.CancelScope(shield=True):
                        await transport.close(code, reason)
                    session.abort_timer.cancel()
        finally:
            self.sessions.discard(session)
            self.metrics.clients.dec()

    async def _write(
        self,
        session: StreamSession,
        queued: trio.MemoryReceiveChannel[str],
        transport: Transport,
    ) -> None:
        async for message in queued:
            session.send_deadline.deadline = trio.current_time() + self.send_timeout
            await transport.send(message)
            session.send_deadline.deadline = math.inf

    async def _watchdog(self, session: StreamSession) -> None:
        """A send cannot be interrupted (Hypercorn shields it), so time it from beside it."""
        with session.send_deadline:
            await trio.sleep_forever()
        session.finish(SLOW_SEND)

    @staticmethod
    async def _discard_incoming(transport: Transport) -> None:
        """The stream is one-way; read and drop whatever the client sends so it never piles up."""
        while True:
            await transport.receive()

    async def _watch_shutdown(self, session: StreamSession) -> None:
        await self.shutdown.wait()
        session.finish(SHUTDOWN)

    async def _abort_if_stuck(self, session: StreamSession, transport: Transport) -> None:
        """Once the session is over, give the close frame ``close_timeout``, then cut TCP.

        A client that has stopped reading leaves a send stuck in a full TCP window; cutting the
        connection frees it, so neither the session nor the service's shutdown waits on it.
        """
        try:
            await session.decided.wait()
        finally:
            with session.abort_timer:
                await trio.sleep(self.close_timeout)
                log.info(
                    "websocket_client_aborted",
                    stream=self.name,
                    reason="close frame not written in time",
                )
                transport.abort()
