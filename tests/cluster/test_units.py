"""The cluster layer's parts at unit speed: shards, the wire format, fleet payloads, the event
feed, the registry's placement port and the bank actor's record-before-publish mode.

These need no PostgreSQL (SQLite and in-memory fakes), so they always run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from pyrsistent import pmap

from actors.bank import Outcome
from actors.fleet import FleetView
from actors.registry import MOVED, BankCameHere, BankUnavailable
from domain import commands as c
from domain import events as e
from domain.actor import Actor
from domain.records import NewEvent, StoredEvent
from domain.state import BankState, Transaction
from lockerd.cluster.feed import EventFeed
from lockerd.cluster.fleetsync import MAX_PAYLOAD, FleetSync, apply_status, encode_batches
from lockerd.cluster.node import FLEET_TOPICS, BankSubscriptions, bank_filters, topic_filters
from lockerd.cluster.shards import SHARD_COUNT, desired_owner, desired_shards, shard_of
from lockerd.cluster.wire import (
    WireError,
    decode_ask,
    decode_command,
    decode_outcome,
    encode_ask,
    encode_command,
    encode_outcome,
)
from store import open_store
from tests.actors.test_bank_actor import (
    BANK,
    OTHER_BANK,
    TIMEOUT,
    answer,
    create,
    online_bank,
    open_cmd,
    spec,
    types,
    world,
)
from tests.support.fakes import EPOCH, MemoryEventLog

# ---------------------------------------------------------------------------------- shards


def test_every_shard_has_exactly_one_desired_owner_and_shares_are_fair() -> None:
    for count in (1, 2, 3, 4):
        nodes = [f"node-{n}" for n in range(count)]
        shares = [desired_shards(node, nodes) for node in nodes]
        assert sum(len(share) for share in shares) == SHARD_COUNT
        assert set().union(*shares) == set(range(SHARD_COUNT))
        fair = SHARD_COUNT / count
        assert all(0.6 * fair <= len(share) <= 1.4 * fair for share in shares), shares


def test_a_joining_node_only_takes_shards_and_a_leaving_one_only_gives_its_own() -> None:
    before = {s: desired_owner(s, ["a", "b", "c"]) for s in range(SHARD_COUNT)}
    joined = {s: desired_owner(s, ["a", "b", "c", "d"]) for s in range(SHARD_COUNT)}
    assert all(joined[s] in (before[s], "d") for s in range(SHARD_COUNT))
    left = {s: desired_owner(s, ["a", "c"]) for s in range(SHARD_COUNT)}
    assert all(left[s] == before[s] for s in range(SHARD_COUNT) if before[s] != "b")
    assert desired_owner(0, []) is None


def test_shard_of_is_stable_and_in_range() -> None:
    assert shard_of(BANK) == shard_of(str(BANK))
    assert all(0 <= shard_of(f"bank-{n}") < SHARD_COUNT for n in range(1000))


# ---------------------------------------------------------------------------------- wire

SAMPLES: list[c.BankCommand] = [
    c.CreateBank(BANK, "Bank", None, 10, (spec(1), spec(2)), "hash", EPOCH),
    c.IssueProvisioningToken("hash", EPOCH),
    c.Provision("hash", "client", "dev-user", "cred"),
    c.RecordProvisioningReplyFailed("client", "dev-user", "lost"),
    c.NoteCredentialsUsed("dev-user"),
    c.GrantAccess("comp-1", "user-1", EPOCH + timedelta(days=1)),
    c.RevokeAccess("comp-1", "user-1"),
    c.RequestOpen("comp-1", "user-1", "tx-1", 30),
    c.RequestOpen("comp-1", "user-1", "tx-1", 30, frozenset({"group-1", "group-2"})),
    c.GrantGroupAccess("comp-1", "group-1", None, Actor.user("admin-1")),
    c.RevokeGroupAccess("comp-1", "group-1", Actor.admin_token()),
    c.RequestApplyConfig("tx-2", 30, "admin"),
    c.MarkDispatched("tx-1"),
    c.RecordAnswer("tx-1", "open_compartment", "error", "DOOR_JAMMED", "jammed", None),
    c.RecordHeartbeat(12, "s-1", "spare", 30),
    c.RecordLastWill(None),
    c.Tick(),
    c.RecordDeviceEvent(
        "qr_scanned",
        "ev-1",
        {"qr_payload": "x", "n": [1, 2]},
        c.QrClaim("user-1", "comp-1", EPOCH, "nonce", frozenset({"group-1"})),
        "spare",
        30,
    ),
    c.RecordActorFailed(5, "RuntimeError"),
    c.RecordActorRestarted(),
    c.RecordActorRestarted(Actor.user("admin-1")),
    c.AcknowledgeAlert("alert-1", Actor.user("admin-1")),
    c.RequestOperatorOpen("comp-1", Actor.admin_token(), "admin", "stuck", "tx-3", 30),
    c.EditBank(Actor.user("admin-1"), "tx-4", 30, name="B", set_location=True),
    c.AddCompartment(Actor.admin_token(), "tx-5", 30, "comp-3", 3, 1, 2),
    c.EditCompartment(Actor.admin_token(), "tx-6", 30, "comp-1", out_of_service=True),
    c.RetireCompartment(Actor.admin_token(), "tx-7", 30, "comp-2"),
    c.Decommission(Actor.user("admin-1")),
    c.RecordAnswer("cfg", "apply_config", "success", None, None, "h", "spare-cfg", 30),
]


def test_every_kind_of_command_is_sampled() -> None:
    assert {type(s) for s in SAMPLES} == set(c.BankCommand.__args__)


@pytest.mark.parametrize("command", SAMPLES, ids=lambda s: type(s).__name__)
def test_commands_survive_the_wire(command: c.BankCommand) -> None:
    body = encode_ask(command, kind="response", secret="pw", allow_new=True)
    ask = decode_ask(body)
    assert (ask.kind, ask.secret, ask.allow_new, ask.tell) == ("response", "pw", True, False)
    assert decode_command(ask.command) == command


@pytest.mark.parametrize(
    "wire",
    [
        {"type": "DropTables", "data": {}},
        {"type": "RequestOpen", "data": {"compartment_id": 1}},
        {"type": "__class__", "data": {}},
        {"data": {}},
    ],
)
def test_a_body_that_is_no_command_is_a_wire_error(wire: dict[str, Any]) -> None:
    with pytest.raises(WireError):
        decode_command(wire)


def test_a_body_that_is_not_an_ask_is_a_wire_error() -> None:
    for body in (b"", b"[]", b'{"command": {}, "extra": 1}', b"\xff"):
        with pytest.raises(WireError):
            decode_ask(body)


def test_outcomes_survive_the_wire() -> None:
    moment = datetime(2026, 3, 1, 12, tzinfo=UTC)
    old = Transaction("tx-old", "open_compartment", "success", moment, moment, 1)
    state = dataclasses.replace(
        BankState(),
        version=7,
        name="Bank",
        presence="online",
        last_seen=moment,
        transactions=pmap({"tx-old": old}),
        seen_event_ids=pmap({"ev-1": moment}),
    )
    stored = StoredEvent(41, BANK, 7, "CompartmentOpened", {"transaction_id": "tx"}, moment)
    event = e.CommandDispatched(transaction_id="tx", dispatched_at=moment)
    outcome = Outcome(state, (event,), (stored,), c.CommandRejected("conflict", "busy"))
    back = decode_outcome(encode_outcome(outcome))
    assert back.state.version == 7 and back.state.name == "Bank"
    assert (back.state.presence, back.state.last_seen) == ("online", moment)
    # the deduplication memory stays with the owner (it can be large)
    assert dict(back.state.transactions) == {} and dict(back.state.seen_event_ids) == {}
    assert back.events == (event,)
    assert back.stored == (stored,)
    assert back.rejected is not None
    assert (back.rejected.code, back.rejected.message) == ("conflict", "busy")
    with pytest.raises(WireError):
        decode_outcome(b'{"state": 1}')
    assert encode_command(c.Tick()) == {"type": "Tick", "data": {}}


# ---------------------------------------------------------------------------------- fleet


def test_fleet_payloads_stay_below_the_notify_limit_and_apply_elsewhere() -> None:
    here, there = FleetView(), FleetView()
    for n in range(300):
        status = here.status(f"bank-{n}", f"Bank {n}")
        status.presence = "online"
        status.last_seen = datetime(2026, 3, 1, 12, 0, n % 60, tzinfo=UTC)
        status.doors = {1: "closed", 2: "open"}
        status.alerts = [{"type": "CommandTimedOut", "transaction_id": "x" * 40}] * 30
    batches = encode_batches("node-a", [s.to_json() for s in here.banks.values()])
    assert all(len(b.encode()) < MAX_PAYLOAD for b in batches)
    sync = FleetSync("node-b", there, lambda bank_id: bank_id == "bank-0", _never)
    changes = there.subscribe()
    for batch in batches:
        sync.received(batch)
    assert "bank-0" not in there.banks  # owned by node-b itself: its own status wins
    sent = {k: v for k, v in here.banks["bank-7"].to_json().items() if k != "alerts"}
    assert {**sent, "alerts": []} == there.banks["bank-7"].to_json()  # alerts: each node's own
    assert len(changes.dirty) == 299
    sync.received("not json")  # ignored, logged
    mine = encode_batches("node-b", [here.banks["bank-1"].to_json()])
    there.banks["bank-1"].presence = "offline"
    sync.received(mine[0])  # a node ignores its own payloads
    assert there.banks["bank-1"].presence == "offline"
    assert apply_status(FleetView(), json.loads(batches[0])["banks"][0]) == "bank-0"


async def _never(payload: str) -> None:
    raise AssertionError("not sent in this test")


# ---------------------------------------------------------------------------------- feed


async def test_the_feed_hands_on_only_what_other_nodes_appended_in_order(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []
    announced = 0

    async def announce() -> None:
        nonlocal announced
        announced += 1

    async with open_store(f"sqlite:///{tmp_path / 'feed.db'}") as store:
        feed = EventFeed(
            store,
            [lambda bank_id, events: seen.extend((bank_id, ev.position) for ev in events)],
            announce,
            after_position=0,
        )
        mine = await store.append("mine", 0, [NewEvent("Happened", {"n": 1})])
        feed.note_local("mine", mine)
        theirs = await store.append("theirs", 0, [NewEvent("Happened", {"n": n}) for n in range(3)])
        mine += await store.append("mine", 1, [NewEvent("Happened", {"n": 2})])
        feed.note_local("mine", mine[1:])
        await feed.catch_up()
        assert seen == [("theirs", ev.position) for ev in theirs]
        await feed.catch_up()  # nothing twice
        assert len(seen) == 3
        assert feed.position == mine[-1].position
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed.run)
            later = await store.append("theirs", 3, [NewEvent("Happened", {})])
            feed.wake()
            with trio.fail_after(5):
                while seen[-1] != ("theirs", later[0].position):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            await trio.sleep(0.1)  # the announcer coalesces the local appends into one NOTIFY
            assert announced == 1
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------- placement


class FakePlacement:
    def __init__(self, local: set[str]) -> None:
        self.local = local
        self.asked: list[tuple[str, c.BankCommand]] = []
        self.told: list[tuple[str, c.BankCommand]] = []

    def is_local(self, bank_id: str) -> bool:
        return bank_id in self.local

    async def ask_remote(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None,
        secret: str | None,
        allow_new: bool,
    ) -> Outcome:
        if bank_id in self.local:
            raise BankCameHere(bank_id)
        self.asked.append((bank_id, command))
        return Outcome(BankState(), crashed=None)

    async def tell_remote(self, bank_id: str, command: c.BankCommand, *, kind: str | None) -> None:
        self.told.append((bank_id, command))


async def test_banks_owned_elsewhere_are_asked_there_and_not_started_here(
    autojump_clock: trio.testing.MockClock,
) -> None:
    placement = FakePlacement({BANK})
    async with world(placement=placement) as w:
        await create(w)
        await w.registry.ask(OTHER_BANK, c.Tick(), allow_new=True)
        await w.registry.tell(OTHER_BANK, answer("tx-9"), kind="response")
        assert w.registry.tell_nowait(OTHER_BANK, c.Tick())  # the owner's timers tick it
        assert [b for b, _ in placement.asked] == [OTHER_BANK]
        assert [b for b, _ in placement.told] == [OTHER_BANK]
        assert set(w.registry.entries) == {BANK}
        assert w.registry.running_count() == 1


class GatedLog(MemoryEventLog):
    """Appends wait while the gate is closed (an actor busy with its store)."""

    def __init__(self) -> None:
        super().__init__(clock=None)
        self.gate = trio.Event()
        self.gate.set()

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[StoredEvent]:
        await self.gate.wait()
        return await super().append(stream_id, expected_version, events)


async def test_stopping_a_moved_bank_finishes_the_message_in_hand_and_sends_queued_asks_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    placement = FakePlacement({BANK})
    log = GatedLog()
    async with world(placement=placement, log=log, record_dispatch_first=True) as w:
        await online_bank(w)
        results: dict[str, Outcome] = {}

        async def ask(tx: str, number: int) -> None:
            results[tx] = await w.registry.ask(BANK, open_cmd(tx, number=number))

        log.gate = trio.Event()  # the first open waits in its append, the others queue up
        async with trio.open_nursery() as nursery:
            for n in (1, 2, 3):
                nursery.start_soon(ask, f"tx-{n}", n)
                await trio.testing.wait_all_tasks_blocked()
            assert w.registry.entries[BANK].mailbox.depth == 2
            placement.local.clear()  # the bank now belongs to another node
            left: list[Any] = []

            async def stop() -> None:
                left.extend(await w.registry.stop([BANK]))

            nursery.start_soon(stop)
            await trio.testing.wait_all_tasks_blocked()
            assert BANK in w.registry.entries  # waiting for the message in hand
            log.gate.set()
        assert left == []
        assert BANK not in w.registry.entries and w.registry.running_count() == 0
        assert types(results["tx-1"].events) == ["CompartmentOpeningRequested", "CommandDispatched"]
        # the queued ones were never handled here: they went to the new owner
        forwarded = sorted(getattr(cmd, "transaction_id", "") for _, cmd in placement.asked)
        assert forwarded == ["tx-2", "tx-3"]
        assert "tx-2" not in w.log.types(BANK) and MOVED == "bank moved to another node"


# ---------------------------------------------------------------------------------- outbox


async def test_with_several_nodes_a_command_is_recorded_dispatched_before_it_is_published(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world(record_dispatch_first=True) as w:
        await online_bank(w)
        w.publisher.block()
        outcome = await w.registry.ask(BANK, open_cmd("tx-1"))
        assert types(outcome.events) == ["CompartmentOpeningRequested", "CommandDispatched"]
        # one append: the request and its dispatch record, before the broker has the command
        stored = w.log.stored(BANK)[-2:]
        assert [s.type for s in stored] == ["CompartmentOpeningRequested", "CommandDispatched"]
        assert stored[0].recorded_at == stored[1].recorded_at
        await w.publisher.wait_until(lambda: w.publisher.in_flight == 1)
        w.publisher.release()
        await w.publisher.wait_until(lambda: len(w.publisher.commands("tx-1")) == 1)
        await trio.testing.wait_all_tasks_blocked()
        # recorded once, before the publish, never again after it (the bank's apply_config,
        # answered while it came online, has its own dispatch record)
        dispatched = [
            s.data["transaction_id"] for s in w.log.stored(BANK) if s.type == "CommandDispatched"
        ]
        assert dispatched.count("tx-1") == 1
        done = await w.registry.ask(BANK, answer("tx-1"), kind="response")
        assert types(done.events) == ["CompartmentOpened"]


async def test_with_several_nodes_a_crash_after_recording_ends_in_timeout_never_a_publish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world(record_dispatch_first=True) as w:
        await online_bank(w)
        # the store commits request + dispatch record, the actor dies before publishing
        w.log.fail_next_appends(1, after_commit=True)
        with pytest.raises(BankUnavailable):
            await w.registry.ask(BANK, open_cmd("tx-1"))
        assert w.log.types(BANK)[-2:] == ["CompartmentOpeningRequested", "CommandDispatched"]
        w.clock.advance(TIMEOUT + 1)
        await w.log.wait_for_type(BANK, "CommandTimedOut")
        await trio.testing.wait_all_tasks_blocked()
        # the restarted (or taken-over) actor never publishes what may have gone out already
        assert w.publisher.commands("tx-1") == []


# ---------------------------------------------------------------------------------- MQTT


class FakeMqtt:
    def __init__(self) -> None:
        self.calls: list[tuple[str, frozenset[str]]] = []

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> None:
        self.calls.append(("subscribe", frozenset(f for f, _ in filters)))

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        self.calls.append(("unsubscribe", frozenset(filters)))


async def test_bank_subscriptions_follow_ownership_with_a_linger_and_no_start_up_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mqtt = FakeMqtt()
    announced: list[float] = []
    subscriptions = BankSubscriptions(
        mqtt, {"kept", "gone"}, lambda: announced.append(trio.current_time())
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriptions.run)
        subscriptions.want(["kept", "new"])
        await trio.testing.wait_all_tasks_blocked()
        assert mqtt.calls == [("subscribe", frozenset(bank_filters("kept") + bank_filters("new")))]
        assert len(announced) == 1  # devices are told to beat once their topics are ours
        # an earlier life's subscriptions go only after the first share, and only unwanted ones
        subscriptions.first_share_taken()
        await trio.testing.wait_all_tasks_blocked()
        # the fleet topics and an earlier version's shared subscriptions count as stale too
        stale = (
            bank_filters("gone")
            + topic_filters(FLEET_TOPICS)
            + [
                "$share/lockerd/locker/register/+",
                "$share/lockerd/metrics/#",
            ]
        )
        assert mqtt.calls[-1] == ("unsubscribe", frozenset(stale))
        # a released bank keeps its topics for the linger time, then loses them
        released_at = trio.current_time()
        subscriptions.unwant(["new"], 3.0)
        await trio.testing.wait_all_tasks_blocked()
        assert "new" in subscriptions.subscribed
        await subscriptions.unsubscribed(["new"])
        assert trio.current_time() - released_at >= 3.0
        assert mqtt.calls[-1] == ("unsubscribe", frozenset(bank_filters("new")))
        assert subscriptions.subscribed == {"kept"}
        nursery.cancel_scope.cancel()


async def test_the_fleet_topics_are_plain_subscriptions_kept_like_a_bank(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # plain, not $share/…: Mosquitto keeps a plain subscription of a persistent session over a
    # broker restart and queues for it, a shared one it forgets
    assert topic_filters(FLEET_TOPICS) == ["locker/register/+", "metrics/#"]
    mqtt = FakeMqtt()
    subscriptions = BankSubscriptions(mqtt, set())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriptions.run)
        subscriptions.want([FLEET_TOPICS])
        subscriptions.first_share_taken()
        await trio.testing.wait_all_tasks_blocked()
        assert ("subscribe", frozenset(topic_filters(FLEET_TOPICS))) in mqtt.calls
        # wanted, so never unsubscribed as stale
        assert all(
            "metrics/#" not in filters for kind, filters in mqtt.calls if kind == "unsubscribe"
        )
        subscriptions.unwant([FLEET_TOPICS], 3.0)
        await subscriptions.unsubscribed([FLEET_TOPICS])
        assert mqtt.calls[-1] == ("unsubscribe", frozenset(topic_filters(FLEET_TOPICS)))
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------- gateway


async def test_a_clustered_gateway_answers_offline_on_server_status_with_online() -> None:
    from gateway import topics
    from gateway.mqtt import InboundMessage
    from tests.gateway.test_router import make_router

    router = make_router()
    gateway = router.gateway
    gateway.keep_server_online = True
    assert dict(topics.CLUSTER_SUBSCRIPTIONS) == {"server/status": 1}
    await gateway.route(InboundMessage("server/status", b'{"status":"online"}', 1, True))
    assert not gateway._online_wanted.is_set()  # our own announcement (or a peer's): nothing
    await gateway.route(InboundMessage("server/status", b'{"status":"offline"}', 1, False))
    assert gateway._online_wanted.is_set()  # another node's will: say online again
    assert router.inbox.calls == []
    assert router.observer.dropped == {("unknown", "server_status"): 2}  # counted once each
    gateway.announce_online()  # the cluster's hook after taking banks over
    assert gateway._online_wanted.is_set()
