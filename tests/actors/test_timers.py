"""The timer actor fires each bank's deadline when due, once, and follows reschedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from actors.timers import TimerService

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def wall() -> datetime:
    return EPOCH + timedelta(seconds=trio.current_time())


async def test_deadlines_fire_in_order_and_follow_reschedules(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[str, float]] = []
    all_fired = trio.Event()

    def deliver(bank_id: str) -> bool:
        fired.append((bank_id, round(trio.current_time(), 6)))
        if len(fired) == 3:
            all_fired.set()
        return True

    timers = TimerService(deliver, wall)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        start = wall()
        timers.schedule("a", start + timedelta(seconds=5))
        timers.schedule("b", start + timedelta(seconds=2))
        timers.schedule("c", start + timedelta(seconds=3))
        timers.schedule("c", start + timedelta(seconds=8))  # moved later: fires once, at 8
        timers.schedule("d", start + timedelta(seconds=1))
        timers.schedule("d", None)  # cleared: never fires
        await all_fired.wait()
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert fired == [("b", 2.0), ("a", 5.0), ("c", 8.0)]


async def test_full_mailbox_is_retried_not_lost(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []
    delivered = trio.Event()

    def deliver(bank_id: str) -> bool:
        attempts.append(trio.current_time())
        if len(attempts) < 3:
            return False
        delivered.set()
        return True

    timers = TimerService(deliver, wall)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        timers.schedule("x", wall() + timedelta(seconds=1))
        await delivered.wait()
        nursery.cancel_scope.cancel()
    assert len(attempts) == 3
    assert attempts[2] > attempts[0]
