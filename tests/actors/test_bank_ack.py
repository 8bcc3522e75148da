"""The bank actor acknowledges a device message exactly when the contract says (§2).

``on_done`` (the PUBACK of the MQTT message behind a command) is called exactly once once the
command was applied (its events stored), rejected, found a duplicate, or crashed the actor,
and never when storing its events failed (the store is down: the broker must deliver it again)
or the actor was cancelled with it.
"""

from __future__ import annotations

from datetime import datetime

import pytest
import trio
import trio.testing

from actors.registry import BankUnavailable
from domain import commands as c
from tests.actors.test_bank_actor import (
    BANK,
    POLICY,
    World,
    answer,
    create,
    heartbeat,
    online_bank,
    open_cmd,
    until_dispatched,
    world,
)


class Acks:
    """Counts the calls of each message's ``on_done``."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.changed = trio.Event()

    def of(self, name: str):  # type: ignore[no-untyped-def]
        self.calls.setdefault(name, 0)

        def on_done() -> None:
            self.calls[name] += 1
            self.changed.set()
            self.changed = trio.Event()

        return on_done

    async def wait(self, name: str) -> None:
        while self.calls.get(name, 0) == 0:
            await self.changed.wait()


async def test_applied_rejected_and_duplicate_messages_are_acknowledged_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    acks = Acks()
    async with world() as w:
        await online_bank(w)
        await w.registry.ask(BANK, open_cmd("tx-1"))
        await w.registry.tell(BANK, heartbeat(uptime=101), kind="state", on_done=acks.of("beat"))
        await w.registry.tell(BANK, answer("tx-1"), kind="response", on_done=acks.of("answer"))
        await w.registry.tell(BANK, answer("tx-1"), kind="response", on_done=acks.of("dup"))
        await w.registry.tell(BANK, answer("nope"), kind="response", on_done=acks.of("unknown"))
        await acks.wait("unknown")  # the mailbox is handled in order
        assert acks.calls == {"beat": 1, "answer": 1, "dup": 1, "unknown": 1}
        assert w.log.types(BANK).count("CompartmentOpened") == 1


async def test_acknowledged_only_after_the_events_are_stored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    acks = Acks()
    async with world() as w:
        await online_bank(w)
        await w.registry.ask(BANK, open_cmd("tx-1"))
        seen_at_ack: list[list[str]] = []
        on_done = acks.of("answer")

        def check_then_ack() -> None:
            seen_at_ack.append(w.log.types(BANK))
            on_done()

        await w.registry.tell(BANK, answer("tx-1"), kind="response", on_done=check_then_ack)
        await acks.wait("answer")
        assert "CompartmentOpened" in seen_at_ack[0]


async def test_a_failed_append_is_never_acknowledged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    acks = Acks()
    async with world() as w:
        await online_bank(w)
        await w.registry.ask(BANK, open_cmd("tx-1"))
        await until_dispatched(w)  # nothing else is appended now
        w.log.fail_next_appends(1)
        await w.registry.tell(BANK, answer("tx-1"), kind="response", on_done=acks.of("lost"))
        # the incarnation crashed on the append and a new one handles the next message
        await w.registry.tell(BANK, heartbeat(uptime=102), kind="state", on_done=acks.of("next"))
        await acks.wait("next")
        await trio.testing.wait_all_tasks_blocked()
        assert acks.calls == {"lost": 0, "next": 1}
        assert "CompartmentOpened" not in w.log.types(BANK)
        assert w.observer.restarts == 1
        # the broker delivers it again (next connection): now it is applied and acknowledged
        await w.registry.tell(BANK, answer("tx-1"), kind="response", on_done=acks.of("again"))
        await acks.wait("again")
        assert w.log.types(BANK).count("CompartmentOpened") == 1


async def test_a_message_that_crashes_the_actor_is_acknowledged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    acks = Acks()
    async with world() as w:
        await online_bank(w)
        services = w.registry.services
        clock = services.clock
        armed = True

        def exploding_clock() -> datetime:
            nonlocal armed
            if armed:
                armed = False
                raise RuntimeError("a bug while deciding")
            return clock()

        services.clock = exploding_clock
        await w.registry.tell(BANK, heartbeat(uptime=101), kind="state", on_done=acks.of("poison"))
        await acks.wait("poison")
        assert acks.calls == {"poison": 1}  # acknowledged: it must not come back forever
        assert w.observer.dropped[("state", "actor_crashed")] == 1
        services.clock = clock


async def test_messages_drained_from_a_failed_bank_are_acknowledged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    acks = Acks()
    async with world() as w:
        await create(w)
        w.log.fail_next_appends(POLICY.max_restarts + 1)
        for _ in range(POLICY.max_restarts + 1):
            with pytest.raises(BankUnavailable):
                await w.registry.ask(BANK, c.GrantAccess("comp-1", "u", None))
        await w.observer.wait_until(lambda: w.observer.failed == 1)
        await w.registry.tell(BANK, heartbeat(), kind="state", on_done=acks.of("to-failed"))
        assert acks.calls == {"to-failed": 1}  # dropped bank_failed, acknowledged at once
        with pytest.raises(BankUnavailable):
            await w.registry.ask(
                BANK, c.GrantAccess("comp-1", "u", None), on_done=acks.of("ask-failed")
            )
        assert acks.calls["ask-failed"] == 1


async def test_cancelled_with_a_message_in_hand_leaves_it_unacknowledged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    acks = Acks()
    done: World | None = None
    async with world() as w:
        done = w
        await online_bank(w)
        await w.registry.ask(BANK, open_cmd("tx-1"))
        await until_dispatched(w)
        hold = trio.Event()
        append = w.log.append

        async def slow_append(*args, **kwargs):  # type: ignore[no-untyped-def]
            await hold.wait()
            return await append(*args, **kwargs)

        w.log.append = slow_append  # type: ignore[method-assign]
        await w.registry.tell(BANK, answer("tx-1"), kind="response", on_done=acks.of("held"))
        await trio.testing.wait_all_tasks_blocked()
        # lockerd stops (or is killed) while the answer's append is in progress
    assert done is not None
    assert acks.calls == {"held": 0}
