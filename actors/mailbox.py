"""A bounded mailbox that outlives the actor incarnations reading it.

The mailbox belongs to the actor's *identity*, not to one run of it: when the supervisor
restarts a crashed actor, the messages queued behind the one that crashed are still there.
A full mailbox never drops: senders either wait (``put``, bounded by their own cancel scope)
or get :class:`MailboxFull` (``put_nowait``), which the caller turns into a visible error.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class MailboxFull(Exception):
    """The mailbox stayed full for longer than the sender was willing to wait."""


class Mailbox(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._send, self._receive = trio.open_memory_channel[T](capacity)

    @property
    def depth(self) -> int:
        return self._send.statistics().current_buffer_used

    async def put(self, message: T) -> None:
        """Wait for room; bound the wait with the caller's cancel scope."""
        await self._send.send(message)

    def put_nowait(self, message: T) -> None:
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull(f"mailbox full ({self.capacity})") from None

    async def get(self) -> T:
        return await self._receive.receive()

    def get_nowait(self) -> T | None:
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            return None
