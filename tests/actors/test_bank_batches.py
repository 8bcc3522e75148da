"""The bank actor handles what has queued up in its mailbox as one batch (actors/bank.py).

A batch is an optimisation that nothing but the store may notice: each message is decided
against the state the messages before it lead to and gets its own answer; all their events go
into one append; when the store fails under a batch, or ``decide`` raises on one of its
messages, the outcome is the one of handling the messages one at a time.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import actors.bank
from actors.bank import MAX_BATCH, Outcome
from actors.registry import BankUnavailable
from domain import commands as c
from domain import events as e
from domain.bank import decide
from tests.actors.test_bank_actor import (
    BANK,
    World,
    answer,
    grant,
    heartbeat,
    online_bank,
    open_cmd,
    types,
    until_dispatched,
    world,
)
from tests.support.fakes import InjectedStoreFailure

Answer = Outcome | BankUnavailable


async def queued_behind_a_held_append(
    w: World, commands: list[c.BankCommand], nursery: trio.Nursery
) -> list[Answer]:
    """Hold the store, let one grant's append wait there, queue ``commands`` behind it (asked
    concurrently, in this order), release: the commands are taken as one batch. Returns their
    outcomes (or the registry's ``BankUnavailable``: the actor crashed on it), in the order
    given, once all are answered."""
    outcomes: list[Answer | None] = [None] * len(commands)
    answered = trio.Event()

    async def ask(index: int | None, command: c.BankCommand) -> None:
        try:
            outcome: Answer = await w.registry.ask(BANK, command)
        except BankUnavailable as exc:
            outcome = exc
        if index is not None:
            outcomes[index] = outcome
        if all(outcome is not None for outcome in outcomes):
            answered.set()

    w.log.hold_appends()
    nursery.start_soon(ask, None, c.GrantAccess("comp-3", "someone-else", None))
    await w.log.wait_until(lambda: w.log.appends_waiting == 1)
    for index, command in enumerate(commands):
        nursery.start_soon(ask, index, command)
        await trio.testing.wait_all_tasks_blocked()  # queued: the mailbox keeps their order
    assert w.registry.entries[BANK].mailbox.depth == len(commands)
    w.log.release_appends()
    await answered.wait()
    return [outcome for outcome in outcomes if outcome is not None]


def outcomes(answers: list[Answer]) -> list[Outcome]:
    """The answers, each checked to be an outcome (not the actor crashing)."""
    assert all(isinstance(answer, Outcome) for answer in answers), answers
    return [answer for answer in answers if isinstance(answer, Outcome)]


async def test_queued_messages_are_stored_in_one_append_and_answered_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w, trio.open_nursery() as nursery:
        await online_bank(w)
        await grant(w, 2)
        answers = await queued_behind_a_held_append(
            w,
            [
                open_cmd("tx-a", 1),
                open_cmd("tx-b", 2),
                open_cmd("tx-c", 1),
                c.GrantAccess("comp-9", "someone", None),
                heartbeat(uptime=150),
            ],
            nursery,
        )
        first, second, again, refused, beat = outcomes(answers)
        # decided in order, each against the state the ones before it left
        assert types(first.events) == ["CompartmentOpeningRequested"]
        assert types(second.events) == ["CompartmentOpeningRequested"]
        assert types(again.events) == ["CompartmentOpeningDenied"]
        denied = again.events[0]
        assert isinstance(denied, e.CompartmentOpeningDenied) and denied.reason == "command_pending"
        assert refused.rejected is not None and refused.rejected.code == "not_found"
        assert "tx-b" not in first.state.transactions
        assert {"tx-a", "tx-b"} <= set(second.state.transactions)
        # one append for the batch; each answer names its own stored events
        assert [
            "CompartmentOpeningRequested",
            "CompartmentOpeningRequested",
            "CompartmentOpeningDenied",
        ] in w.log.appended
        assert [ev.version for ev in second.stored] == [first.stored[0].version + 1]
        assert beat.state.uptime_seconds == 150
        assert w.observer.dropped[(None, "not_found")] == 1
        # and each request is published once
        await until_dispatched(w)
        await w.publisher.wait_until(
            lambda: bool(w.publisher.commands("tx-a")) and bool(w.publisher.commands("tx-b"))
        )
        assert not w.publisher.commands("tx-c")
        nursery.cancel_scope.cancel()


async def test_a_batch_is_at_most_max_batch_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w, trio.open_nursery() as nursery:
        await online_bank(w)
        beats: list[c.BankCommand] = [
            c.RecordDeviceEvent(
                event="door_state_changed",
                event_id=f"event-{n}",
                data={"compartment_number": 1, "state": "closed" if n % 2 else "open"},
            )
            for n in range(MAX_BATCH + 3)
        ]
        await queued_behind_a_held_append(w, beats, nursery)
        sizes = [batch.count("DoorStateChanged") for batch in w.log.appended]
        assert max(sizes) <= MAX_BATCH
        assert sum(sizes) == MAX_BATCH + 3
        nursery.cancel_scope.cancel()


async def test_a_store_failure_under_a_batch_loses_only_its_first_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As one at a time: the message whose append failed goes down with the actor; the
    messages behind it are handled by the next incarnation."""
    async with world() as w, trio.open_nursery() as nursery:
        await online_bank(w)
        w.log.fail_next_appends(2)  # the held grant's append, then the batch's
        first, second = await queued_behind_a_held_append(
            w, [grant_to("user-a"), grant_to("user-b")], nursery
        )
        assert isinstance(first, BankUnavailable)
        assert isinstance(second, Outcome)
        assert types(second.events) == ["CompartmentAccessGranted"]
        assert set(second.state.grants["comp-2"]) == {"user-b"}
        assert w.observer.restarts == 2
        nursery.cancel_scope.cancel()


def grant_to(user: str) -> c.GrantAccess:
    return c.GrantAccess("comp-2", user, None)


async def test_a_value_the_store_refuses_in_a_batch_refuses_its_message_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing of the batch was stored; each message is handled again on its own, and only
    the one whose events the store refuses is refused."""

    class RefusedValue(Exception):
        pass

    async with world() as w, trio.open_nursery() as nursery:
        w.registry.services.transient_store_errors = (InjectedStoreFailure,)
        await online_bank(w)
        await grant(w, 2)
        # the held append passes; the batch's append is refused; alone, the first message is
        # refused again, the second stored
        refusals = iter([False, True, True, False])

        original = w.log.append

        async def refusing_append(stream_id, expected_version, events):  # type: ignore[no-untyped-def]
            if next(refusals, False):
                await trio.lowlevel.checkpoint()
                raise RefusedValue("a value the database cannot hold")
            return await original(stream_id, expected_version, events)

        w.log.append = refusing_append  # type: ignore[method-assign]
        first, second = outcomes(
            await queued_behind_a_held_append(
                w, [open_cmd("tx-a", 1), open_cmd("tx-b", 2)], nursery
            )
        )
        assert first.rejected is not None and first.rejected.code == "invalid"
        assert second.rejected is None
        assert types(second.events) == ["CompartmentOpeningRequested"]
        assert "tx-a" not in second.state.transactions
        assert w.observer.dropped[(None, "store_rejected")] == 1
        assert w.observer.restarts == 0
        nursery.cancel_scope.cancel()


async def test_decide_raising_in_a_batch_crashes_on_that_message_alone(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The messages before it are stored and answered, the one it raised on is dropped,
    the ones behind it are handled by the next incarnation."""

    def buggy_decide(state, command, now):  # type: ignore[no-untyped-def]
        if command == grant_to("user-bug"):
            raise RuntimeError("a bug while deciding")
        return decide(state, command, now)

    monkeypatch.setattr(actors.bank, "decide", buggy_decide)
    async with world() as w, trio.open_nursery() as nursery:
        await online_bank(w)
        before, bug, behind = await queued_behind_a_held_append(
            w, [grant_to("user-a"), grant_to("user-bug"), grant_to("user-c")], nursery
        )
        assert isinstance(before, Outcome) and isinstance(behind, Outcome)
        assert types(before.events) == ["CompartmentAccessGranted"]
        assert isinstance(bug, BankUnavailable)
        assert set(behind.state.grants["comp-2"]) == {"user-a", "user-c"}
        assert w.observer.restarts == 1
        assert w.observer.dropped[(None, "actor_crashed")] == 1
        nursery.cancel_scope.cancel()


async def test_an_answer_queued_behind_its_dispatch_record_is_stored_with_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The open path's reason for batches: the device's answer no longer waits for the
    commit of ``CommandDispatched`` ahead of it."""
    async with world() as w, trio.open_nursery() as nursery:
        await online_bank(w)
        await w.registry.ask(BANK, open_cmd("tx-1"))
        await until_dispatched(w)
        outcome, beat = outcomes(
            await queued_behind_a_held_append(w, [answer("tx-1"), heartbeat(uptime=160)], nursery)
        )
        assert types(outcome.events) == ["CompartmentOpened"]
        assert beat.state.transactions["tx-1"].status == "success"
        nursery.cancel_scope.cancel()
