"""Supervision: restart with backoff, the OTP restart budget, escalation."""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.testing

from actors.mailbox import Mailbox, MailboxFull
from actors.supervisor import ChildFailed, ChildInfo, RestartPolicy, Supervisor


class Boom(Exception):
    pass


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


POLICY = RestartPolicy(
    max_restarts=3, within_seconds=10.0, backoff_initial=0.1, backoff_max=1.0, jitter=0.0
)


async def test_crashing_child_is_restarted_with_exponential_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    recovered = trio.Event()

    async def flaky() -> None:
        starts.append(trio.current_time())
        if len(starts) <= 3:
            raise Boom(len(starts))
        recovered.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, name="test", policy=POLICY)
        info = supervisor.start_child("flaky", flaky)
        await recovered.wait()
        gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
        assert gaps == [0.1, 0.2, 0.4]
        assert info.restarts == 3
        assert info.status == "running"
        assert info.last_error == "Boom(3)"
        nursery.cancel_scope.cancel()


async def test_budget_exceeded_escalates(autojump_clock: trio.testing.MockClock) -> None:
    attempts = 0

    async def always_crashes() -> None:
        nonlocal attempts
        attempts += 1
        raise Boom(attempts)

    infos: list[str] = []
    with pytest.raises(ExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(
                nursery,
                name="test",
                policy=POLICY,
                on_change=lambda info: infos.append(info.status),
            )
            supervisor.start_child("doomed", always_crashes)
    failure = caught.value.exceptions[0]
    assert isinstance(failure, ChildFailed)
    assert failure.name == "doomed"
    assert isinstance(failure.cause, Boom)
    # 1 start + 3 restarts, the 4th crash within the period exceeds the budget
    assert attempts == 4
    assert infos[-1] == "failed"


async def test_without_escalation_failure_is_reported_and_siblings_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    changes: list[ChildInfo] = []
    sibling_alive = trio.Event()
    poison_failed = trio.Event()

    def changed(info: ChildInfo) -> None:
        changes.append(info)
        if info.name == "poison" and info.status == "failed":
            poison_failed.set()

    async def always_crashes() -> None:
        raise Boom()

    async def sibling() -> None:
        sibling_alive.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(
            nursery, name="banks", policy=POLICY, escalate=False, on_change=changed
        )
        supervisor.start_child("sibling", sibling)
        failed = supervisor.start_child("poison", always_crashes)
        await poison_failed.wait()
        await sibling_alive.wait()
        assert supervisor.children["sibling"].status == "running"
        assert failed.restarts == 3
        assert any(c.name == "poison" and c.status == "failed" for c in changes)
        nursery.cancel_scope.cancel()


async def test_crashes_spread_beyond_the_period_stay_within_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashes = 0
    survived = trio.Event()

    async def crashes_every_six_seconds() -> None:
        nonlocal crashes
        if crashes == 8:
            survived.set()
            await trio.sleep_forever()
        await trio.sleep(6.0)
        crashes += 1
        raise Boom(crashes)

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, name="test", policy=POLICY)
        info = supervisor.start_child("slow-crasher", crashes_every_six_seconds)
        await survived.wait()
        assert info.status == "running"
        assert info.restarts == 8
        nursery.cancel_scope.cancel()


async def test_child_that_returns_is_not_restarted(autojump_clock: trio.testing.MockClock) -> None:
    runs = 0

    async def finishes() -> None:
        nonlocal runs
        runs += 1

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, name="test", policy=POLICY)
        info = supervisor.start_child("once", finishes)
    assert runs == 1
    assert info.status == "stopped"


def test_backoff_jitter_stays_within_bounds() -> None:
    policy = RestartPolicy(backoff_initial=1.0, backoff_max=4.0, jitter=0.2)
    rng = random.Random(7)
    for failures, base in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)]:
        delays = [policy.backoff(failures, rng) for _ in range(200)]
        assert min(delays) >= base * 0.8
        assert max(delays) <= base * 1.2
        assert max(delays) - min(delays) > 0  # jitter actually spreads restarts


async def test_mailbox_is_bounded_and_never_drops() -> None:
    mailbox: Mailbox[int] = Mailbox(2)
    mailbox.put_nowait(1)
    mailbox.put_nowait(2)
    with pytest.raises(MailboxFull):
        mailbox.put_nowait(3)
    assert mailbox.depth == 2
    with trio.move_on_after(0.05) as scope:
        await mailbox.put(3)
    assert scope.cancelled_caught  # a full mailbox makes the sender wait
    assert [await mailbox.get(), await mailbox.get()] == [1, 2]
    assert mailbox.get_nowait() is None
