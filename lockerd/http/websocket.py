"""Websocket plumbing shared by the live streams (the operators' status, the app's updates).

:class:`Transport` is the few operations a streaming session needs; :class:`QuartTransport`
provides them over Quart's websocket served by Hypercorn, plus an :meth:`~Transport.abort`
that resets the TCP connection when a close frame cannot be written (a client that stopped
reading leaves Hypercorn's shielded send stuck in a full TCP window).
"""

from __future__ import annotations

import socket
import struct
from contextlib import suppress
from typing import Any, Final, Protocol

import structlog
import trio
from quart.wrappers import Websocket

log = structlog.get_logger("lockerd.websocket")

CLOSE_GOING_AWAY: Final = 1001
CLOSE_TRY_AGAIN_LATER: Final = 1013


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
            log.warning("dashboard_abort_unsupported")
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
