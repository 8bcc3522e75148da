"""The outbox's sending side: publishes commands and replies without blocking bank actors.

A QoS 1 publish waits for the broker's PUBACK, and during a broker outage it waits for the
reconnect. Bank actors must keep deciding meanwhile, so they hand deliveries to this actor,
whose workers publish and report back. A delivery with a deadline (a command's ``expires_at``)
is abandoned when the deadline passes: a device must not act on it any more anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

log = structlog.get_logger("lockerd.dispatcher")


class Publisher(Protocol):
    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    kind: str
    topic: str
    payload: bytes
    deadline: float | None = None  # trio clock
    on_sent: Callable[[], Awaitable[None]] | None = None
    on_failed: Callable[[str], Awaitable[None]] | None = None


class Dispatcher:
    def __init__(
        self,
        publisher: Publisher,
        *,
        capacity: int = 10_000,
        workers: int = 16,
        on_published: Callable[[str], None] | None = None,
    ) -> None:
        self._publisher = publisher
        self._send, self._receive = trio.open_memory_channel[Delivery](capacity)
        self._workers = workers
        self._on_published = on_published

    @property
    def backlog(self) -> int:
        return self._send.statistics().current_buffer_used

    async def submit(self, delivery: Delivery) -> None:
        await self._send.send(delivery)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for number in range(self._workers):
                nursery.start_soon(self._work, name=f"dispatcher-{number}")

    async def _work(self) -> None:
        async for delivery in self._receive:
            await self._deliver(delivery)

    async def _deliver(self, delivery: Delivery) -> None:
        deadline = delivery.deadline if delivery.deadline is not None else float("inf")
        failure: str | None = None
        with trio.move_on_at(deadline):
            try:
                await self._publisher.publish(delivery.topic, delivery.payload, qos=1)
            except Exception as exc:  # a failed publish is reported, never fatal to the outbox
                failure = f"publish failed: {exc!r}"
            else:
                if self._on_published is not None:
                    self._on_published(delivery.kind)
                if delivery.on_sent is not None:
                    await delivery.on_sent()
                return
        failure = failure or "deadline passed before the broker acknowledged"
        log.warning("delivery_failed", topic=delivery.topic, kind=delivery.kind, reason=failure)
        if delivery.on_failed is not None:
            await delivery.on_failed(failure)
