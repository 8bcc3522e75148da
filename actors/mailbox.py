"""A bounded mailbox that outlives the actor incarnations reading it.

The mailbox belongs to the actor's *identity*, not to one run of it: when the supervisor
restarts a crashed actor, the messages queued behind the one that crashed are still there.
A full mailbox never drops: senders either wait (``put``, bounded by their own cancel scope)
or get :class:`MailboxFull` (``put_nowait``), which the caller turns into a visible error.

The reader may hand messages it took but did not handle back to the front
(:meth:`Mailbox.put_back`): the bank actor takes a batch at a time, and when the store fails
under it only the first message of the batch is lost to the crash; the rest are read again,
in their order, by the next incarnation, as if they had never been taken.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class MailboxFull(Exception):
    """The mailbox stayed full for longer than the sender was willing to wait."""


class Mailbox(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._send, self._receive = trio.open_memory_channel[T](capacity)
        # taken and handed back: read before the channel (admitted already, so they do not
        # count against the capacity; at most one batch of them)
        self._returned: deque[T] = deque()

    @property
    def depth(self) -> int:
        return self._send.statistics().current_buffer_used + len(self._returned)

    async def put(self, message: T) -> None:
        """Queue ``message``: at once when there is room, else wait for room (bound the wait
        with the caller's cancel scope).

        With room it does not yield to the scheduler. The gateway routes every device message
        through here from one task; a yield per message made each wait a whole scheduler round
        (every HTTP request in flight takes a step first), so under load messages queued in
        front of the gateway for ~150 ms (docs/benchmarks.md). The sender's own loop yields.
        """
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            await self._send.send(message)

    def put_nowait(self, message: T) -> None:
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull(f"mailbox full ({self.capacity})") from None

    async def get(self) -> T:
        if self._returned:
            await trio.lowlevel.checkpoint()
            if self._returned:
                return self._returned.popleft()
        return await self._receive.receive()

    def get_nowait(self) -> T | None:
        if self._returned:
            return self._returned.popleft()
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            return None

    def put_back(self, messages: Sequence[T]) -> None:
        """Return ``messages`` (taken by the reader, in the order taken) to the front: the
        next reads get them first, in that order."""
        self._returned.extendleft(reversed(messages))
