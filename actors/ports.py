"""What the actors need from the world, as small protocols declared here, on the actors' side.

The composition root (``lockerd.service``) plugs real parts in: the store backend satisfies
:class:`EventLog`, the gateway's MQTT outbox satisfies :class:`DevicePublisher`, Prometheus
metrics satisfy :class:`ActorObserver`, the bank directory satisfies :class:`BankCatalog`.
Tests plug in-memory fakes in. Nothing here imports a gateway, HTTP or application module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from domain.outbound import DeviceMessage
from domain.records import NewEvent, Snapshot, StoredEvent


class EventLog(Protocol):
    """The part of the event store a bank actor uses."""

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[StoredEvent]:
        """Append atomically at ``expected_version``; raises ``ConcurrencyError`` otherwise."""
        ...

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[StoredEvent]: ...

    async def save_snapshot(self, snapshot: Snapshot) -> None: ...

    async def load_snapshot(self, stream_id: str) -> Snapshot | None: ...


class DevicePublisher(Protocol):
    """Sends one message to devices and returns once the broker has acknowledged it.

    While the broker is unreachable it waits (the caller's cancel scope bounds the wait);
    it raises on a failure that waiting cannot cure.
    """

    async def publish(self, message: DeviceMessage) -> None: ...


class ActorObserver(Protocol):
    """Where actors report what they did (Prometheus in production).

    ``kind`` is the inbound message kind (``state``, ``response``, ``event``, ``register``)
    when the work was caused by a device message, None for internal work (ticks, API calls).
    """

    def message_processed(self, kind: str | None) -> None: ...

    def message_dropped(self, kind: str | None, reason: str) -> None: ...

    def append_took(self, seconds: float) -> None: ...

    def command_finished(self, action: str, status: str) -> None: ...

    def bank_actors_running(self, count: int) -> None: ...

    def bank_actor_restarted(self) -> None: ...

    def bank_actor_failed(self) -> None: ...

    def bank_actor_recovered(self) -> None:
        """A failed bank actor was started again (``BankRegistry.restart``)."""
        ...

    def device_message_sent(self, kind: str) -> None: ...


class BankCatalog(Protocol):
    """Which banks exist (created and not yet forgotten), answered from memory."""

    def is_bank(self, bank_id: str) -> bool: ...


StoredEventListener = Callable[[str, Sequence[StoredEvent]], None]
"""Called with a bank id and the events just appended for it, after the append committed."""
