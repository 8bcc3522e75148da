"""The timer actor: wakes bank actors when one of their deadlines is due.

Bank actors tell it their next deadline (a command's ``expires_at``, 3 x the heartbeat interval
after the last heartbeat) after every change; it keeps one heap for the whole fleet and, when a
deadline passes, sends the bank a tick. The bank then decides with the current time what is
due, so a stale or early tick is harmless. Deadlines fire when they are due, not at the next
sweep, and a bank whose actor is not running is started by the tick.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime

import trio

Deliver = Callable[[str], bool]
RETRY_DELAY = 0.05


class TimerService:
    def __init__(self, deliver: Deliver, wall_clock: Callable[[], datetime]) -> None:
        self._deliver = deliver
        self._wall_clock = wall_clock
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._wake = trio.Event()

    def schedule(self, bank_id: str, deadline: datetime | None) -> None:
        """Set (or clear, with None) the bank's next deadline."""
        if deadline is None:
            self._due.pop(bank_id, None)
            return
        seconds = (deadline - self._wall_clock()).total_seconds()
        at = trio.current_time() + max(0.0, seconds)
        previous = self._due.get(bank_id)
        self._due[bank_id] = at
        if previous is None or at < previous:
            heapq.heappush(self._heap, (at, bank_id))
            self._wake.set()

    async def run(self) -> None:
        while True:
            next_at = self._heap[0][0] if self._heap else float("inf")
            with trio.move_on_at(next_at):
                await self._wake.wait()
            self._wake = trio.Event()
            self._fire_due()

    def _fire_due(self) -> None:
        now = trio.current_time()
        while self._heap and self._heap[0][0] <= now:
            _, bank_id = heapq.heappop(self._heap)
            due = self._due.get(bank_id)
            if due is None:
                continue  # cleared
            if due > now:
                # moved later since pushed (duplicates are skipped once _due is cleared)
                heapq.heappush(self._heap, (due, bank_id))
                continue
            del self._due[bank_id]
            if not self._deliver(bank_id):
                # mailbox full: try again shortly rather than block every other bank's timer
                self._due[bank_id] = now + RETRY_DELAY
                heapq.heappush(self._heap, (now + RETRY_DELAY, bank_id))
