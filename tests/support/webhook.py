"""A real HTTP receiver for webhook tests: a tiny ASGI app on Hypercorn (trio), on a free
loopback port, answering each request with the next status of a script (then 200), unless
``refuse`` gives a status for its body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


@dataclass
class Received:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Receiver:
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    #: a status to answer for this body instead of the script's (None: the script decides)
    refuse: Callable[[dict[str, Any]], int | None] = lambda body: None
    url: str = ""
    _arrived: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        decoded = json.loads(body)
        status = self.refuse(decoded)
        if status is None:
            status = self.statuses.pop(0) if self.statuses else 200
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(status, decoded, headers))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        self._arrived.set()
        self._arrived = trio.Event()

    async def until(self, count: int, within: float = 30.0) -> list[Received]:
        """Wait until ``count`` requests have arrived."""
        with trio.fail_after(within):
            while len(self.received) < count:
                await self._arrived.wait()
        return self.received

    def delivered(self) -> list[dict[str, Any]]:
        """The alerts of the requests answered with a 2xx, in order."""
        return [r.body["alert"] for r in self.received if 200 <= r.status < 300]


@asynccontextmanager
async def receiver(statuses: list[int] | None = None) -> AsyncIterator[Receiver]:
    app = Receiver(list(statuses or []))
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve, app, config)  # type: ignore[arg-type]
        app.url = binds[0] + "/hooks/alerts"
        try:
            yield app
        finally:
            nursery.cancel_scope.cancel()
