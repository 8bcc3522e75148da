"""Hand-offs between tasks: the mailbox and the outbox queue without a scheduler round while
they have room, and make the sender wait (never drop) while they are full.

Why it matters (docs/benchmarks.md, "One scheduler round per routed message"): the gateway
routes every device message from one task and a bank actor submits one delivery per command;
a yield per hand-off made each wait for every other runnable task (every HTTP request in
flight) under load.
"""

from __future__ import annotations

import trio
import trio.testing

from actors.dispatcher import Delivery, Dispatcher
from actors.mailbox import Mailbox
from domain.outbound import ProvisioningRefused
from tests.support.fakes import RecordingObserver, RecordingPublisher


async def test_mailbox_put_with_room_queues_without_yielding() -> None:
    mailbox: Mailbox[int] = Mailbox(3)
    with trio.testing.assert_no_checkpoints():
        for number in range(3):
            await mailbox.put(number)
    assert [mailbox.get_nowait() for _ in range(3)] == [0, 1, 2]


async def test_mailbox_put_when_full_waits_for_room_and_keeps_the_order() -> None:
    mailbox: Mailbox[int] = Mailbox(1)
    await mailbox.put(1)
    queued = trio.Event()

    async def sender() -> None:
        await mailbox.put(2)
        queued.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert not queued.is_set()  # full: the sender waits, nothing is dropped
        assert await mailbox.get() == 1
        await queued.wait()
    assert mailbox.get_nowait() == 2


def refusal(number: int) -> Delivery:
    return Delivery(ProvisioningRefused(f"client-{number}", "unknown token"))


async def test_dispatcher_submit_with_room_queues_without_yielding() -> None:
    dispatcher = Dispatcher(RecordingPublisher(), RecordingObserver(), capacity=2)
    with trio.testing.assert_no_checkpoints():
        await dispatcher.submit(refusal(1))
        await dispatcher.submit(refusal(2))
    assert dispatcher.backlog == 2


async def test_dispatcher_submit_when_full_waits_until_a_worker_takes_one() -> None:
    publisher = RecordingPublisher()
    dispatcher = Dispatcher(publisher, RecordingObserver(), capacity=1, workers=1)
    publisher.block()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        await dispatcher.submit(refusal(1))
        await trio.testing.wait_all_tasks_blocked()
        assert publisher.in_flight == 1  # the worker took it and waits for the broker
        await dispatcher.submit(refusal(2))  # queued: the outbox is now full
        submitted = trio.Event()

        async def third() -> None:
            await dispatcher.submit(refusal(3))
            submitted.set()

        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert not submitted.is_set()  # full: the sender waits, nothing is dropped
        publisher.release()
        await submitted.wait()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [m.client_id for m in publisher.attempts] == ["client-1", "client-2", "client-3"]
