"""The outbox's sending side: publishes commands and replies without blocking bank actors.

A QoS 1 publish waits for the broker's PUBACK, and during a broker outage it waits for the
reconnect. Bank actors must keep deciding meanwhile, so they hand deliveries to this actor,
whose workers publish and report back. A delivery with a deadline (a command's ``expires_at``)
is abandoned when the deadline passes: a device must not act on it any more anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
import trio

from actors.ports import ActorObserver, DevicePublisher
from domain.outbound import DeviceMessage

log = structlog.get_logger("lockerd.dispatcher")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to send, with what to do once the broker has it (or it could not be sent).

    ``deadline`` is on the Trio clock; past it the delivery is abandoned and ``on_failed``
    called, because a device must not act on an expired command anyway.
    """

    message: DeviceMessage
    deadline: float | None = None
    on_sent: Callable[[], Awaitable[None]] | None = None
    on_failed: Callable[[str], Awaitable[None]] | None = None


class Dispatcher:
    def __init__(
        self,
        publisher: DevicePublisher,
        observer: ActorObserver,
        *,
        capacity: int = 10_000,
        workers: int = 16,
    ) -> None:
        self._publisher = publisher
        self._observer = observer
        self._send, self._receive = trio.open_memory_channel[Delivery](capacity)
        self._workers = workers

    @property
    def backlog(self) -> int:
        return self._send.statistics().current_buffer_used

    async def submit(self, delivery: Delivery) -> None:
        """Queue a delivery; waits only while the outbox is full (capacity), never for MQTT.

        With room it does not yield to the scheduler: a bank actor submits one delivery per
        command of a batch, and each yield would cost it a whole scheduler round under load
        (see :meth:`actors.mailbox.Mailbox.put`).
        """
        try:
            self._send.send_nowait(delivery)
        except trio.WouldBlock:
            await self._send.send(delivery)

    async def enqueue(self, message: DeviceMessage) -> None:
        """Queue a message that needs no deadline and no follow-up."""
        await self.submit(Delivery(message))

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
                await self._publisher.publish(delivery.message)
            except Exception as exc:  # a failed publish is reported, never fatal to the outbox
                failure = f"publish failed: {exc!r}"
            else:
                self._observer.device_message_sent(delivery.message.kind)
                if delivery.on_sent is not None:
                    await delivery.on_sent()
                return
        failure = failure or "deadline passed before the broker acknowledged"
        log.warning("delivery_failed", kind=delivery.message.kind, reason=failure)
        if delivery.on_failed is not None:
            await delivery.on_failed(failure)
