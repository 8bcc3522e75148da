"""A keep-alive HTTP/1.1 client that costs the benchmark almost nothing.

httpx spends about a millisecond of CPU per request; on a two-core machine the client would
then compete with the service it measures (and become the bottleneck long before lockerd).
:class:`RawHttp` writes pre-built request heads over one persistent trio TCP stream and reads
the answer by ``Content-Length`` (which every lockerd answer has): tens of microseconds per
request. One connection carries one request at a time; a benchmark opens one per worker.
A connection idle for longer than ``IDLE_SECONDS`` is replaced before it is used (the server
closes idle keep-alive connections after 5 s). Benchmarks only: no chunked bodies, no
redirects, no TLS.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio

IDLE_SECONDS = 3.0


@dataclass(slots=True)
class RawResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawHttp:
    """One keep-alive connection to ``base`` (``http://host:port``)."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base)
        assert parts.hostname is not None and parts.port is not None
        self.host = parts.hostname
        self.port = parts.port
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._common = f"Host: {self.host}:{self.port}\r\n{extra}"
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()
        self._used = 0.0

    async def connect(self) -> None:
        self._stream = await trio.open_tcp_stream(self.host, self.port)
        self._buffer.clear()
        self._used = time.monotonic()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def request(self, method: str, path: str, body: bytes = b"") -> RawResponse:
        if self._stream is not None and time.monotonic() - self._used > IDLE_SECONDS:
            await self.aclose()
        if self._stream is None:
            await self.connect()
        assert self._stream is not None
        head = f"{method} {path} HTTP/1.1\r\n{self._common}"
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        await self._stream.send_all(head.encode() + b"\r\n" + body)
        return await self._read()

    async def get(self, path: str) -> RawResponse:
        return await self.request("GET", path)

    async def post(self, path: str, body: bytes = b"") -> RawResponse:
        return await self.request("POST", path, body)

    async def _read(self) -> RawResponse:
        assert self._stream is not None
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(buffer[:end]).decode("latin1").split("\r\n")
        del buffer[: end + 4]
        status = int(head[0].split(" ", 2)[1])
        length = 0
        closing = False
        for line in head[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            if key == "content-length":
                length = int(value)
            elif key == "connection" and "close" in value.lower():
                closing = True
        while len(buffer) < length:
            await self._fill()
        body = bytes(buffer[:length])
        del buffer[:length]
        if closing:
            await self.aclose()
        self._used = time.monotonic()
        return RawResponse(status, body)

    async def _fill(self) -> None:
        assert self._stream is not None
        data = await self._stream.receive_some(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buffer += data
