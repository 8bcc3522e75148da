"""The bank actor and its registry at unit speed: in-memory fakes for the ports, the real
dispatcher, timer actor, fleet view and supervisor, Trio's virtual clock (``autojump_clock``).

Each test runs a small world (:func:`world`) and waits for what it expects through the fakes
(``wait_until``, ``wait_for_type``); nothing sleeps in real time.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
import trio
import trio.testing

from actors.bank import BankServices, Outcome
from actors.dispatcher import Dispatcher
from actors.fleet import FleetView
from actors.ports import StoredEventListener
from actors.registry import BankPlacement, BankRegistry, BankUnavailable, UnknownBank
from actors.supervisor import RestartPolicy
from actors.timers import TimerService
from domain import commands as c
from domain import events as e
from domain.actor import Actor
from domain.alerts import alert_id
from domain.outbound import DeviceCommand, ProvisioningGranted, ProvisioningRefused
from domain.records import ConcurrencyError, NewEvent, Snapshot, StoredEvent
from domain.snapshot import snapshot_interval
from tests.support.fakes import (
    EPOCH,
    FakeClock,
    InjectedStoreFailure,
    MemoryCatalog,
    MemoryEventLog,
    RecordingObserver,
    RecordingPublisher,
)

BANK = "0b6d3c8e-5a1f-4c2b-9d7e-1f2a3b4c5d6e"
OTHER_BANK = "5f0c2a9e-3d4b-4e6f-8a1b-2c3d4e5f6a7b"
TOKEN_HASH = "token-hash-1"
USER = "user-1"
CLIENT = "device-client-1"
TIMEOUT = 30  # LOCKERD_COMMAND_TIMEOUT
INTERVAL = 3600  # heartbeat interval: far beyond every test, so presence never times out
WORLD_DEADLINE = 600.0  # virtual seconds: a test waiting for something that never comes fails

POLICY = RestartPolicy(
    max_restarts=2, within_seconds=10.0, backoff_initial=0.01, backoff_max=0.1, jitter=0.0
)


@dataclass
class World:
    log: MemoryEventLog
    publisher: RecordingPublisher
    observer: RecordingObserver
    catalog: MemoryCatalog
    clock: FakeClock
    fleet: FleetView
    registry: BankRegistry
    listened: list[tuple[str, list[StoredEvent]]] = field(default_factory=list)


@asynccontextmanager
async def world(
    *,
    log: MemoryEventLog | None = None,
    catalog: MemoryCatalog | None = None,
    snapshot_every: int = 100,
    policy: RestartPolicy = POLICY,
    listeners: Sequence[StoredEventListener] = (),
    record_dispatch_first: bool = False,
    placement: BankPlacement | None = None,
) -> AsyncIterator[World]:
    """The bank actors as ``lockerd.service`` wires them, with fakes for the ports."""
    clock = FakeClock(EPOCH, follow_trio=True)
    log = log if log is not None else MemoryEventLog(clock=clock)
    catalog = catalog if catalog is not None else MemoryCatalog()
    publisher = RecordingPublisher()
    observer = RecordingObserver()
    fleet = FleetView()
    listened: list[tuple[str, list[StoredEvent]]] = []
    async with trio.open_nursery() as nursery:
        dispatcher = Dispatcher(publisher, observer, workers=4)

        def tick(bank_id: str) -> bool:
            return registry.tell_nowait(bank_id, c.Tick())

        timers = TimerService(tick, clock)
        services = BankServices(
            store=log,
            fleet=fleet,
            dispatcher=dispatcher,
            timers=timers,
            observer=observer,
            clock=clock,
            snapshot_every=snapshot_every,
            record_dispatch_first=record_dispatch_first,
            finish_in_flight=placement is not None,
            # the fake's injected failure stands for the store being down (a crash)
            transient_store_errors=(InjectedStoreFailure,),
            listeners=[
                catalog.follow,
                lambda bank_id, stored: listened.append((bank_id, list(stored))),
                *listeners,
            ],
        )
        registry = BankRegistry(nursery, services, catalog, policy=policy, placement=placement)
        nursery.start_soon(dispatcher.run)
        nursery.start_soon(timers.run)
        with trio.fail_after(WORLD_DEADLINE):
            yield World(log, publisher, observer, catalog, clock, fleet, registry, listened)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# commands


def spec(number: int) -> e.CompartmentSpec:
    return e.CompartmentSpec(id=f"comp-{number}", number=number, slave_id=1, address=number - 1)


async def create(w: World, bank_id: str = BANK, *, interval: int = INTERVAL) -> Outcome:
    return await w.registry.ask(
        bank_id,
        c.CreateBank(
            bank_id=bank_id,
            name="Bank A",
            location="Hall 1",
            heartbeat_interval_seconds=interval,
            compartments=(spec(1), spec(2), spec(3)),
            token_hash=TOKEN_HASH,
            token_expires_at=EPOCH + timedelta(days=7),
        ),
        allow_new=True,
    )


async def grant(w: World, number: int = 1, user: str = USER, bank_id: str = BANK) -> Outcome:
    return await w.registry.ask(bank_id, c.GrantAccess(f"comp-{number}", user, None))


def heartbeat(session: str = "s-1", uptime: int = 100) -> c.RecordHeartbeat:
    return c.RecordHeartbeat(
        uptime_seconds=uptime,
        session_id=session,
        spare_transaction_id=f"spare-{session}-{uptime}",
        command_timeout_seconds=TIMEOUT,
    )


def open_cmd(tx: str = "tx-1", number: int = 1, user: str = USER) -> c.RequestOpen:
    return c.RequestOpen(f"comp-{number}", user, tx, TIMEOUT)


def answer(
    tx: str = "tx-1", result: str = "success", error_code: str | None = None
) -> c.RecordAnswer:
    return c.RecordAnswer(
        transaction_id=tx,
        action="open_compartment",
        result=result,  # type: ignore[arg-type]
        error_code=error_code,
        message=None,
        applied_config_hash=None,
    )


async def online_bank(w: World, bank_id: str = BANK, *, interval: int = INTERVAL) -> None:
    """Created, USER granted on compartment 1, online (one heartbeat), configured: the device
    has answered the ``apply_config`` a new bank gets when it first comes online (contract §2).
    """
    await create(w, bank_id, interval=interval)
    await grant(w, bank_id=bank_id)
    outcome = await w.registry.ask(bank_id, heartbeat(), kind="state")
    assert outcome.state.presence == "online"
    await configure(w, bank_id)


async def configure(w: World, bank_id: str = BANK) -> None:
    """The device answers the bank's pending ``apply_config`` with its hash."""
    state = (await w.registry.ask(bank_id, c.Tick())).state
    push = state.pending_config()
    assert push is not None, "a bank whose device has applied nothing gets its configuration"
    await w.publisher.wait_until(lambda: bool(w.publisher.commands(push.transaction_id)))
    outcome = await w.registry.ask(
        bank_id,
        c.RecordAnswer(
            transaction_id=push.transaction_id,
            action="apply_config",
            result="success",
            error_code=None,
            message=None,
            applied_config_hash=push.config_hash,
        ),
        kind="response",
    )
    assert outcome.state.applied_config_hash == outcome.state.config_hash
    # The tests count what they do themselves: forget the configuration's round trip.
    w.publisher.attempts.clear()
    w.publisher.messages.clear()
    w.observer.processed.clear()
    w.observer.commands.clear()
    w.observer.sent.clear()


async def until_dispatched(w: World) -> None:
    """Until a command after the configuration's push is recorded as dispatched."""
    await w.log.wait_until(lambda: "CommandDispatched" in since_configured(w))


def since_configured(w: World, bank_id: str = BANK) -> list[str]:
    """The types of the bank's stored events after its configuration was applied."""
    stored = w.log.types(bank_id)
    return stored[len(stored) - stored[::-1].index("ConfigApplied") :]


def types(events: Sequence[e.Event]) -> list[str]:
    return [e.event_type(ev) for ev in events]


# ---------------------------------------------------------------------------------------------
# loading


async def test_created_bank_loads_again_from_its_snapshot_and_the_tail() -> None:
    log = MemoryEventLog()
    async with world(log=log, snapshot_every=3) as w:
        created = await create(w)
        assert types(created.events) == ["LockerBankCreated", "ProvisioningTokenIssued"]
        await grant(w, 1)  # version 3: the snapshot is taken
        await grant(w, 2)
        last = await grant(w, 3)  # versions 4 and 5 form the tail
        assert log.snapshots[BANK].version == 3
        catalog = w.catalog
        live = last.state
    assert live.version == 5

    log.reads.clear()
    async with world(log=log, catalog=catalog) as again:
        # a command that changes nothing answers with the state as loaded
        loaded = await again.registry.ask(BANK, c.MarkDispatched("no-such-transaction"))
    assert loaded.events == ()
    assert log.reads == [(BANK, 3)]  # the snapshot, then only the events after it
    assert loaded.state == live.rehydrated()
    assert loaded.state.version == 5
    assert set(loaded.state.grants) == {"comp-1", "comp-2", "comp-3"}
    assert again.fleet.banks[BANK].name == "Bank A"


class SnapshotHistory(MemoryEventLog):
    """Remembers the version of every snapshot saved, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[int] = []

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await super().save_snapshot(snapshot)
        self.saved.append(snapshot.version)


async def test_a_bank_that_remembers_many_transactions_is_snapshotted_less_often() -> None:
    """Snapshots are spaced by ``snapshot_interval``, which grows with what the bank
    remembers (a snapshot encodes every remembered transaction). Real clock: snapshots are
    encoded in a worker thread, which a virtual clock would jump over."""
    log = SnapshotHistory()
    async with world(log=log, snapshot_every=2) as w:
        await online_bank(w)
        for n in range(40):
            await w.registry.ask(BANK, open_cmd(f"tx-{n}"))
            state = (await w.registry.ask(BANK, answer(f"tx-{n}"), kind="response")).state
        # answered once the actor is done with the last answer, its snapshot included
        await w.registry.ask(BANK, c.MarkDispatched("no-such-transaction"))
    assert len(state.transactions) > 40  # the opens and the configuration
    spacing = [later - earlier for earlier, later in itertools.pairwise(log.saved)]
    assert min(spacing) >= 2
    # at the end about 40 remembered: a snapshot every 10 events or so, not every 2
    assert spacing[-1] >= snapshot_interval(2, 36) > 2
    assert len(log.saved) < (state.version - 10) / 2


@pytest.mark.parametrize(
    "raw",
    [b"not json{", b'{"format": 999}', b'{"format": 1, "state": {}}', b"[]"],
    ids=["bad-json", "unknown-format", "incomplete", "not-an-object"],
)
async def test_unreadable_snapshot_is_ignored_and_the_whole_stream_replayed(
    raw: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    log = MemoryEventLog()
    async with world(log=log) as w:
        await create(w)
        live = (await grant(w, 1)).state
        catalog = w.catalog
    log.snapshots[BANK] = Snapshot(BANK, 3, raw)
    log.reads.clear()
    async with world(log=log, catalog=catalog) as again:
        loaded = await again.registry.ask(BANK, c.MarkDispatched("no-such-transaction"))
        assert loaded.state == live.rehydrated()
        assert log.reads == [(BANK, 0)]
        assert again.observer.restarts == 0


# ---------------------------------------------------------------------------------------------
# commands to the device


async def test_open_while_online_dispatches_one_command_then_records_it_dispatched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        w.publisher.block()
        now = w.clock()
        outcome = await w.registry.ask(BANK, open_cmd("tx-1"))
        assert types(outcome.events) == ["CompartmentOpeningRequested"]
        assert outcome.state.transactions["tx-1"].status == "pending"

        await w.publisher.wait_until(lambda: w.publisher.in_flight == 1)
        await trio.testing.wait_all_tasks_blocked()
        assert "CommandDispatched" not in since_configured(w)  # not before the broker has it
        assert w.fleet.banks[BANK].pending_commands == 1

        w.publisher.release()
        await until_dispatched(w)
        assert w.publisher.commands("tx-1") == [
            DeviceCommand(
                bank_id=BANK,
                action="open_compartment",
                transaction_id="tx-1",
                requested_at=now,
                expires_at=now + timedelta(seconds=TIMEOUT),
                data={"compartment_number": 1},
            )
        ]
        assert [m for m in w.publisher.commands() if m.action == "open_compartment"] == (
            w.publisher.commands("tx-1")
        )
        dispatched = w.log.stored(BANK)[-1]
        assert dispatched.type == "CommandDispatched"
        assert dispatched.data["transaction_id"] == "tx-1"
        assert w.observer.sent["command"] == len(w.publisher.commands())
        await trio.testing.wait_all_tasks_blocked()
        assert since_configured(w).count("CommandDispatched") == 1


async def test_open_while_not_online_is_denied_and_dispatches_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await create(w)
        await grant(w)
        outcome = await w.registry.ask(BANK, open_cmd("tx-1"))
        assert types(outcome.events) == ["CompartmentOpeningDenied"]
        denied = w.log.stored(BANK)[-1]
        assert denied.type == "CompartmentOpeningDenied"
        assert (denied.data["user_id"], denied.data["compartment_id"]) == (USER, "comp-1")
        assert denied.data["reason"] == "offline"
        await trio.testing.wait_all_tasks_blocked()
        assert w.publisher.attempts == []
        assert "tx-1" not in outcome.state.transactions


async def test_answer_is_applied_once_and_a_duplicate_is_counted_under_its_kind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        await w.registry.ask(BANK, open_cmd("tx-1"))
        await until_dispatched(w)

        first = await w.registry.ask(BANK, answer("tx-1"), kind="response")
        assert types(first.events) == ["CompartmentOpened"]
        assert first.state.transactions["tx-1"].status == "success"
        assert w.observer.processed["response"] == 1
        assert w.observer.commands[("open_compartment", "success")] == 1
        version = w.log.version(BANK)

        again = await w.registry.ask(BANK, answer("tx-1", "error", "DOOR_JAMMED"), kind="response")
        assert again.events == ()
        assert again.state == first.state
        assert w.log.version(BANK) == version
        assert w.observer.dropped[("response", "duplicate")] == 1
        assert w.observer.processed["response"] == 1
        assert w.observer.commands[("open_compartment", "success")] == 1
        assert ("open_compartment", "error") not in w.observer.commands


async def test_pending_command_times_out_at_expires_at_and_a_late_answer_is_recorded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        requested = await w.registry.ask(BANK, open_cmd("tx-1"))
        expires_at = requested.state.transactions["tx-1"].expires_at
        asked_at = trio.current_time()

        # nothing answers: the timer actor ticks the bank when the command expires
        await w.log.wait_for_type(BANK, "CommandTimedOut")
        assert trio.current_time() - asked_at == pytest.approx(TIMEOUT, abs=0.01)
        timed_out = w.log.events(BANK)[-1]
        assert isinstance(timed_out, e.CommandTimedOut)
        assert timed_out.transaction_id == "tx-1"
        assert abs(timed_out.timed_out_at - expires_at) < timedelta(milliseconds=10)
        assert w.observer.commands[("open_compartment", "timeout")] == 1
        status = w.fleet.banks[BANK]
        assert status.pending_commands == 0

        late = await w.registry.ask(BANK, answer("tx-1"), kind="response")
        assert types(late.events) == ["LateAnswerReceived"]
        assert late.state.transactions["tx-1"].status == "timeout"
        assert w.log.types(BANK)[-1] == "LateAnswerReceived"
        assert w.observer.processed["response"] == 1

        later = await w.registry.ask(BANK, answer("tx-1", "error", "X"), kind="response")
        assert later.events == ()
        assert w.log.types(BANK).count("LateAnswerReceived") == 1
        assert w.observer.dropped[("response", "duplicate")] == 1
        assert w.observer.commands[("open_compartment", "success")] == 0


async def test_telling_a_bank_with_room_in_its_mailbox_takes_no_scheduler_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The gateway tells every device message from one task: each is queued at once, and all
    of them are handled (tests/actors/test_handoffs.py has the mailbox's side)."""
    async with world() as w:
        await online_bank(w)
        before = w.observer.processed["state"]
        with trio.testing.assert_no_checkpoints():
            for uptime in range(200, 210):
                await w.registry.tell(BANK, heartbeat(uptime=uptime), kind="state")
        await w.observer.wait_until(lambda: w.observer.processed["state"] == before + 10)


# ---------------------------------------------------------------------------------------------
# crashes, the outbox, the restart budget


async def test_outbox_republishes_an_undispatched_command_after_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        # the store commits the request but the actor never hears back: it dies before
        # handing the command to the dispatcher
        w.log.fail_next_appends(1, after_commit=True)
        with pytest.raises(BankUnavailable):
            await w.registry.ask(BANK, open_cmd("tx-1"))
        assert w.log.types(BANK)[-1] == "CompartmentOpeningRequested"
        assert w.observer.dropped[(None, "actor_crashed")] == 1

        await until_dispatched(w)
        assert [m.transaction_id for m in w.publisher.commands()] == ["tx-1"]
        status = w.fleet.banks[BANK]
        assert (status.restarts, status.supervision) == (1, "running")
        assert "InjectedStoreFailure" in (status.last_error or "")
        assert w.observer.restarts == 1
        # the restarted incarnation works on
        done = await w.registry.ask(BANK, answer("tx-1"), kind="response")
        assert types(done.events) == ["CompartmentOpened"]


async def test_outbox_leaves_an_expired_command_to_time_out_after_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        w.log.fail_next_appends(1, after_commit=True)
        with pytest.raises(BankUnavailable):
            await w.registry.ask(BANK, open_cmd("tx-1"))
        w.clock.advance(TIMEOUT + 1)  # before the restart: the command has expired meanwhile
        await w.log.wait_for_type(BANK, "CommandTimedOut")
        await trio.testing.wait_all_tasks_blocked()
        assert w.publisher.attempts == []  # a device must not act on an expired command
        assert "CommandDispatched" not in since_configured(w)


async def test_failed_append_crashes_the_actor_and_leaves_nothing_half_applied(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        version = w.log.version(BANK)
        w.log.fail_next_appends(1)
        with pytest.raises(BankUnavailable):
            await w.registry.ask(BANK, open_cmd("tx-1"))
        assert w.log.version(BANK) == version
        # the next message is handled by a fresh incarnation rebuilt from the store
        state = (await w.registry.ask(BANK, c.MarkDispatched("nothing"))).state
        assert "tx-1" not in state.transactions
        assert state.version == version
        await trio.testing.wait_all_tasks_blocked()
        assert w.publisher.attempts == []
        assert w.observer.restarts == 1


async def test_concurrent_writer_fails_the_append_and_the_restart_reloads_its_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await create(w)
        # another writer (say a node that still believes it owns the bank) appends behind
        # the actor's back
        foreign = e.CompartmentAccessGranted(
            compartment_id="comp-2", user_id="user-2", expires_at=None, granted_at=EPOCH
        )
        await w.log.append(BANK, 2, [NewEvent(e.event_type(foreign), e.event_data(foreign))])
        with pytest.raises(ConcurrencyError):
            await w.log.append(BANK, 2, [NewEvent(e.event_type(foreign), e.event_data(foreign))])
        with pytest.raises(BankUnavailable):
            await grant(w, 1)
        assert w.log.version(BANK) == 3
        retried = await grant(w, 1)
        assert types(retried.events) == ["CompartmentAccessGranted"]
        assert retried.state.version == 4
        assert set(retried.state.grants) == {"comp-1", "comp-2"}
        assert [ev.version for ev in w.log.stored(BANK)] == [1, 2, 3, 4]


async def test_bank_past_its_restart_budget_is_failed_and_unavailable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await create(w)
        w.log.fail_next_appends(POLICY.max_restarts + 1)
        for _ in range(POLICY.max_restarts + 1):
            with pytest.raises(BankUnavailable):
                await grant(w, 1)
        await w.observer.wait_until(lambda: w.observer.failed == 1)
        status = w.fleet.banks[BANK]
        assert status.supervision == "failed"
        assert status.restarts == POLICY.max_restarts
        assert w.registry.entries[BANK].failed

        with pytest.raises(BankUnavailable):
            await grant(w, 1)
        assert w.observer.dropped[(None, "bank_failed")] == 1
        await w.registry.tell(BANK, heartbeat(), kind="state")
        assert w.observer.dropped[("state", "bank_failed")] == 1
        # ticks still reach a failed bank (its deadlines-only incarnation), nothing else does
        assert w.registry.tell_nowait(BANK, c.Tick())
        assert not w.registry.tell_nowait(BANK, c.NoteCredentialsUsed("dev-user-1"))
        await trio.testing.wait_all_tasks_blocked()
        assert w.registry.entries[BANK].mailbox.depth == 0
        # none of the failed messages left a trace; the failure itself is recorded (an alert)
        assert w.log.types(BANK)[2:] == ["BankActorFailed"]
        (failed,) = w.log.events(BANK)[2:]
        assert isinstance(failed, e.BankActorFailed)
        assert failed.restarts == POLICY.max_restarts
        assert failed.error_type is not None and "(" not in failed.error_type

        # one poisoned bank does not stop the others
        assert types((await create(w, OTHER_BANK)).events)[0] == "LockerBankCreated"
        assert w.fleet.banks[OTHER_BANK].supervision == "running"


async def fail_bank(w: World) -> None:
    """Exhaust the bank's restart budget with store failures, as a store outage would."""
    w.log.fail_next_appends(POLICY.max_restarts + 1)
    for _ in range(POLICY.max_restarts + 1):
        with pytest.raises(BankUnavailable):
            await grant(w, 2)
    await w.observer.wait_until(lambda: w.observer.failed == 1)
    assert w.registry.is_failed(BANK)
    await w.log.wait_for_type(BANK, "BankActorFailed")  # recorded by its deadlines incarnation


async def test_a_failed_banks_pending_commands_still_time_out_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 14 finding 1: a failed bank's pending transactions never timed out (the timer's
    ticks were dropped). They end ``timeout`` at their ``expires_at``, and the fleet view keeps
    showing why the bank failed."""
    async with world() as w:
        await online_bank(w)
        requested = await w.registry.ask(BANK, open_cmd("tx-1"))
        expires_at = requested.state.transactions["tx-1"].expires_at
        asked_at = trio.current_time()
        await until_dispatched(w)
        await fail_bank(w)
        status = w.fleet.banks[BANK]
        assert status.supervision == "failed"
        assert "InjectedStoreFailure" in (status.last_error or "")
        assert status.pending_commands == 1

        await w.log.wait_for_type(BANK, "CommandTimedOut")
        assert trio.current_time() - asked_at == pytest.approx(TIMEOUT, abs=0.01)
        timed_out = w.log.events(BANK)[-1]
        assert isinstance(timed_out, e.CommandTimedOut)
        assert timed_out.transaction_id == "tx-1"
        assert abs(timed_out.timed_out_at - expires_at) < timedelta(milliseconds=10)
        assert w.observer.commands[("open_compartment", "timeout")] == 1
        await trio.testing.wait_all_tasks_blocked()
        assert status.pending_commands == 0
        assert status.supervision == "failed"  # still failed: only deadlines are handled
        # a device answer is refused, the late answer is not recorded
        await w.registry.tell(BANK, answer("tx-1"), kind="response")
        assert w.observer.dropped[("response", "bank_failed")] == 1
        await trio.testing.wait_all_tasks_blocked()
        assert w.log.types(BANK)[-1] == "CommandTimedOut"


async def test_a_failed_banks_deadlines_survive_a_store_that_is_still_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        await w.registry.ask(BANK, open_cmd("tx-1"))
        await until_dispatched(w)
        await fail_bank(w)
        w.log.fail_next_appends(3)  # the first timeouts cannot be stored either
        await w.log.wait_for_type(BANK, "CommandTimedOut")
        assert w.log.pending_failures == 0
        assert w.log.types(BANK).count("CommandTimedOut") == 1


async def test_restart_starts_a_failed_bank_again_with_a_fresh_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        assert not await w.registry.restart(BANK)  # running: nothing to do
        with pytest.raises(UnknownBank):
            await w.registry.restart(OTHER_BANK)
        await fail_bank(w)
        version = w.log.version(BANK)

        assert await w.registry.restart(BANK)
        assert not w.registry.is_failed(BANK)
        assert w.observer.recovered == 1
        outcome = await grant(w, 2)
        assert types(outcome.events) == ["CompartmentAccessGranted"]
        # the restarted actor recorded that it runs again (resolving the alert), then the grant
        assert w.log.types(BANK)[version:] == ["BankActorRestarted", "CompartmentAccessGranted"]
        await trio.testing.wait_all_tasks_blocked()
        status = w.fleet.banks[BANK]
        assert status.supervision == "running"
        assert status.restarts == 0  # a fresh budget
        # the budget is whole again: as many crashes as before are tolerated once more
        w.log.fail_next_appends(POLICY.max_restarts)
        for _ in range(POLICY.max_restarts):
            with pytest.raises(BankUnavailable):
                await grant(w, 3)
        assert types((await grant(w, 3)).events) == ["CompartmentAccessGranted"]
        assert not w.registry.is_failed(BANK)


async def test_a_failed_banks_alert_can_be_acknowledged_while_it_is_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        await fail_bank(w)
        failed_at = w.log.types(BANK).index("BankActorFailed") + 1  # its stream version
        the_id = alert_id(BANK, failed_at)
        outcome = await w.registry.ask(BANK, c.AcknowledgeAlert(the_id, Actor.admin_token()))
        assert types(outcome.events) == ["AlertAcknowledged"]
        assert w.registry.is_failed(BANK)  # still failed: only the acknowledgement got through
        with pytest.raises(BankUnavailable):
            await grant(w, 3)


class ValueTheStoreCannotHold(Exception):
    """Stands for PostgreSQL's DataError (NUL in text): the event's fault, not the store's."""


async def test_an_event_the_store_refuses_drops_its_message_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 14 finding 1: five answers the store refused made the bank ``failed``. Such a
    message is dropped (``store_rejected``), its asker gets a rejection, the actor goes on."""
    async with world() as w:
        await online_bank(w)
        await w.registry.ask(BANK, open_cmd("tx-1"))
        await until_dispatched(w)
        version = w.log.version(BANK)
        w.log.fail_next_appends(POLICY.max_restarts * 3, error=ValueTheStoreCannotHold)
        for _ in range(POLICY.max_restarts * 3):
            refused = await w.registry.ask(BANK, answer("tx-1"), kind="response")
            assert refused.rejected is not None and refused.rejected.code == "invalid"
            assert refused.state.transactions["tx-1"].status == "pending"
        assert w.observer.dropped[("response", "store_rejected")] == POLICY.max_restarts * 3
        assert w.observer.restarts == 0 and w.observer.failed == 0
        assert w.log.version(BANK) == version
        assert w.fleet.banks[BANK].presence == "online"  # nothing was reset
        accepted = await w.registry.ask(BANK, answer("tx-1"), kind="response")
        assert types(accepted.events) == ["CompartmentOpened"]


async def test_a_message_that_crashes_the_actor_is_dropped_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        w.log.fail_next_appends(1)
        await w.registry.tell(BANK, c.RecordLastWill(session_id="s-1"), kind="state")
        await w.registry.tell(BANK, heartbeat(uptime=200), kind="state")
        await w.observer.wait_until(lambda: w.observer.processed["state"] == 1)
        # the last will crashed the actor: counted once, dropped, not handed to the next
        # incarnation (the bank never went offline); the heartbeat behind it was handled
        assert w.observer.dropped[("state", "actor_crashed")] == 1
        assert w.observer.restarts == 1
        assert "LockerBankWentOffline" not in w.log.types(BANK)
        assert w.fleet.banks[BANK].presence == "online"


async def test_a_refused_creation_leaves_no_bank_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 14 finding 10: a rejected bank creation left a phantom bank in the live view."""
    async with world() as w:
        changes = w.fleet.subscribe()
        refused = await w.registry.ask(
            BANK,
            c.CreateBank(
                bank_id=BANK,
                name="Bad",
                location=None,
                heartbeat_interval_seconds=10,
                compartments=(spec(1), spec(1)),  # numbers must be unique
                token_hash=TOKEN_HASH,
                token_expires_at=EPOCH + timedelta(days=7),
            ),
            allow_new=True,
        )
        assert refused.rejected is not None
        w.log.fail_next_appends(1)  # and one whose append fails
        with pytest.raises(BankUnavailable):
            await create(w, OTHER_BANK)
        await trio.testing.wait_all_tasks_blocked()
        assert w.fleet.banks == {}
        assert changes.dirty == set()
        assert w.registry.entries == {}
        assert not w.registry.is_known(BANK) and not w.registry.is_known(OTHER_BANK)
        assert w.observer.running == 0
        # the same id can still be created for real afterwards
        assert types((await create(w)).events)[0] == "LockerBankCreated"
        assert set(w.fleet.banks) == {BANK}


# ---------------------------------------------------------------------------------------------
# rejections and listeners


@pytest.mark.parametrize(
    ("setup", "command", "kind", "code"),
    [
        ((), answer("no-such-tx"), "response", "unknown_transaction"),
        (
            (),
            c.RecordDeviceEvent(
                event="door_state_changed",
                event_id="ev-1",
                data={"compartment_number": 1, "state": "ajar"},
            ),
            "event",
            "invalid",
        ),
        ((), c.GrantAccess("comp-9", USER, None), None, "not_found"),
        (
            (c.RequestApplyConfig("cfg-1", TIMEOUT),),
            c.RequestApplyConfig("cfg-2", TIMEOUT),
            None,
            "conflict",
        ),
    ],
    ids=["unknown-transaction", "bad-door-state", "unknown-compartment", "second-apply-config"],
)
async def test_rejected_command_changes_nothing_and_is_counted_with_its_code(
    setup: tuple[c.BankCommand, ...],
    command: c.BankCommand,
    kind: str | None,
    code: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w)
        for earlier in setup:
            await w.registry.ask(BANK, earlier)
        await trio.testing.wait_all_tasks_blocked()
        before_state = (await w.registry.ask(BANK, c.MarkDispatched("nothing"))).state
        before_log = w.log.stored(BANK)
        before_sent = list(w.publisher.attempts)
        processed = +w.observer.processed

        outcome = await w.registry.ask(BANK, command, kind=kind)
        assert outcome.rejected is not None
        assert outcome.rejected.code == code
        assert outcome.events == ()
        assert outcome.state == before_state
        assert w.log.stored(BANK) == before_log
        assert w.observer.dropped[(kind, code)] == 1
        assert +w.observer.processed == processed
        await trio.testing.wait_all_tasks_blocked()
        assert w.publisher.attempts == before_sent


async def test_listeners_get_the_stored_events_after_the_append(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = MemoryEventLog()
    seen_committed: list[bool] = []

    def listener(bank_id: str, stored: Sequence[StoredEvent]) -> None:
        # called after the append committed: the log holds exactly these events at its end
        seen_committed.append(log.stored(bank_id)[-len(stored) :] == list(stored))

    async with world(log=log, listeners=[listener]) as w:
        await create(w)
        # comes online, and a new bank's configuration is pushed: one append
        await w.registry.ask(BANK, heartbeat(), kind="state")
        await w.log.wait_for_type(BANK, "CommandDispatched")  # the push reached the broker
        await w.registry.ask(BANK, heartbeat(uptime=110), kind="state")  # ephemeral only
        await w.registry.ask(BANK, answer("no-such-tx"), kind="response")  # rejected
        assert [(bank, [ev.type for ev in stored]) for bank, stored in w.listened] == [
            (BANK, ["LockerBankCreated", "ProvisioningTokenIssued"]),
            (BANK, ["LockerBankCameOnline", "ConfigApplyRequested"]),
            (BANK, ["CommandDispatched"]),
        ]
        assert [ev for _, stored in w.listened for ev in stored] == log.stored(BANK)
        assert seen_committed == [True, True, True]
        assert w.catalog.is_bank(BANK)


# ---------------------------------------------------------------------------------------------
# provisioning


def provision(client_id: str = CLIENT, user: str = "dev-user-1") -> c.Provision:
    return c.Provision(
        token_hash=TOKEN_HASH,
        client_id=client_id,
        new_mqtt_user=user,
        new_credential_hash=f"hash-of-{user}",
    )


async def test_provisioning_success_sends_the_granted_reply_with_the_secret(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await create(w)
        outcome = await w.registry.ask(BANK, provision(), kind="register", secret="s3cret-pw")
        assert types(outcome.events) == ["LockerBankProvisioned"]
        await w.publisher.wait_until(lambda: len(w.publisher.messages) == 1)
        assert w.publisher.messages == [
            ProvisioningGranted(CLIENT, BANK, "dev-user-1", "s3cret-pw")
        ]
        assert w.observer.processed["register"] == 1
        assert w.observer.sent["provisioning_reply"] == 1
        stored = json.dumps([dict(ev.data) for ev in w.log.stored(BANK)])
        assert "s3cret-pw" not in stored  # the plaintext password is never stored
        await trio.testing.wait_all_tasks_blocked()
        assert "ProvisioningReplyFailed" not in w.log.types(BANK)


@pytest.mark.parametrize("failure", ["publish-raises", "never-acknowledged"])
async def test_undelivered_provisioning_reply_is_recorded(
    failure: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with world() as w:
        await create(w)
        if failure == "publish-raises":
            w.publisher.fail_next(1)
        else:
            w.publisher.block()
        await w.registry.ask(BANK, provision(), kind="register", secret="s3cret-pw")
        await w.log.wait_for_type(BANK, "ProvisioningReplyFailed")
        failed = w.log.events(BANK)[-1]
        assert isinstance(failed, e.ProvisioningReplyFailed)
        assert (failed.client_id, failed.mqtt_user) == (CLIENT, "dev-user-1")
        assert failed.reason
        assert w.publisher.messages == []
        assert "s3cret-pw" not in json.dumps([dict(ev.data) for ev in w.log.stored(BANK)])


async def test_failed_provisioning_is_recorded_and_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await create(w)
        await w.registry.ask(BANK, provision(), kind="register", secret="pw-1")
        await w.registry.ask(BANK, heartbeat(), kind="state")  # the credentials are in use
        outcome = await w.registry.ask(
            BANK, provision("another-client", "dev-user-2"), kind="register", secret="pw-2"
        )
        assert types(outcome.events) == ["ProvisioningFailed"]
        assert outcome.state.mqtt_user == "dev-user-1"
        await w.publisher.wait_until(
            lambda: ProvisioningRefused("another-client", "token_used") in w.publisher.messages
        )
        assert w.observer.processed["register"] == 2


async def test_failed_registrations_record_at_most_one_provisioning_failed_per_bank_per_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Contract §2: failed registrations get the error reply and change nothing in a bank's
    history beyond at most one ``ProvisioningFailed`` per bank per minute."""
    async with world() as w:
        await create(w)
        await w.registry.ask(BANK, provision(), kind="register", secret="pw-1")
        await w.registry.ask(BANK, heartbeat(), kind="state")
        for attempt in range(3):
            await w.registry.ask(
                BANK, provision(f"client-{attempt}", f"u-{attempt}"), kind="register"
            )
            w.clock.advance(10)
        await w.publisher.wait_until(
            lambda: sum(isinstance(m, ProvisioningRefused) for m in w.publisher.messages) == 3
        )
        assert w.log.types(BANK).count("ProvisioningFailed") <= 1


async def test_online_bank_goes_offline_after_three_silent_heartbeat_intervals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await online_bank(w, interval=10)
        came_online = trio.current_time()
        await w.log.wait_for_type(BANK, "LockerBankWentOffline")
        assert trio.current_time() - came_online == pytest.approx(3 * 10, abs=0.01)
        went = w.log.events(BANK)[-1]
        assert isinstance(went, e.LockerBankWentOffline)
        assert went.reason == "heartbeat_timeout"
        assert w.fleet.banks[BANK].presence == "offline"


def test_world_clock_follows_trio_time() -> None:
    async def main() -> tuple[datetime, datetime]:
        clock = FakeClock(EPOCH, follow_trio=True)
        first = clock()
        await trio.sleep(5)
        return first, clock()

    first, later = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert (first, later) == (EPOCH, EPOCH + timedelta(seconds=5))


async def test_memory_event_log_is_optimistic_and_injects_failures() -> None:
    log = MemoryEventLog()
    stored = await log.append("s", 0, [NewEvent("A", {"n": 1}), NewEvent("B", {"n": 2})])
    assert [(ev.version, ev.type) for ev in stored] == [(1, "A"), (2, "B")]
    with pytest.raises(ConcurrencyError) as conflict:
        await log.append("s", 1, [NewEvent("C", {})])
    assert (conflict.value.expected, conflict.value.actual) == (1, 2)
    log.fail_next_appends(1)
    with pytest.raises(InjectedStoreFailure):
        await log.append("s", 2, [NewEvent("C", {})])
    log.fail_next_appends(1, after_commit=True)
    with pytest.raises(InjectedStoreFailure):
        await log.append("s", 2, [NewEvent("C", {})])
    assert log.types("s") == ["A", "B", "C"]
    assert [ev.position for ev in await log.read_stream("s", 1)] == [2, 3]
    assert log.pending_failures == 0
