"""One node of a cluster: joins, takes its fair share of shards, hands them over, recovers.

The loop (:meth:`ClusterNode.run`) reads who is live and who holds which shard from
PostgreSQL (``pg_locks``, :meth:`~lockerd.cluster.link.ClusterLink.view`) at least once a
second and at once when a node announces a change (NOTIFY), then:

* **releases** the shards it holds but should not (a node joined): it stops their bank actors
  first (the message in hand is finished, queued asks are sent on to the new owner), then
  unlocks and announces; it keeps their MQTT subscriptions a few seconds longer
  (:data:`LINGER_SECONDS`), forwarding what still arrives, so no device answer falls into the
  gap before the new owner has subscribed;
* **acquires** the free shards it should own (a node left or died: its session's locks are
  gone): it catches up with the event log (the directory must know every bank), takes the
  locks, subscribes to the banks' topics and starts their actors at once, so their pending
  commands time out and their presence is tracked here.

The fleet-wide topics (registrations and metrics, :data:`FLEET_TOPICS`) are subscribed like a
bank: by the node that holds :data:`FLEET_SHARD`, with a plain subscription. An MQTT shared
subscription would spread them over the nodes, but Mosquitto (2.0) does not keep a shared
subscription of a persistent session over a broker restart, so everything published before the
node had subscribed again was lost; a plain subscription is restored with the session and the
broker queues for it. In a handover both nodes are subscribed for :data:`LINGER_SECONDS`: a
message published then reaches both (at least once: metric points carry a ``dedupe_id`` for
that, a registration is answered twice under the lost-reply rule).

When the cluster connection is lost, the node owns nothing from that moment: it stops every
bank actor at once (another node may be given the shards as soon as the server has noticed)
and then connects again and starts over. A graceful stop (:meth:`ClusterNode.leave`) stops the
actors, releases everything and waits (briefly) until the others hold the shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx
import structlog
import trio

from actors.bank import Envelope
from actors.fleet import FleetView
from actors.ports import StoredEventListener
from actors.registry import BankRegistry
from domain import commands as c
from domain.keys import Keyring
from domain.records import StoredEvent
from lockerd.cluster.feed import EventFeed
from lockerd.cluster.fleetsync import FleetSync
from lockerd.cluster.forwarding import Ownership, cluster_token
from lockerd.cluster.link import (
    CHANNEL_EVENTS,
    CHANNEL_FLEET,
    CHANNEL_MEMBERS,
    CHANNEL_POINTS,
    ClusterLink,
    LinkLost,
)
from lockerd.cluster.pointsync import PointSync
from lockerd.cluster.shards import desired_shards, shard_of
from lockerd.telemetry.pipeline import MetricsPipeline
from store.base import EventStore

log = structlog.get_logger("lockerd.cluster")

#: Seconds between two looks at the membership when nobody announces anything.
REBALANCE_SECONDS: Final = 1.0
#: Seconds a released bank's MQTT subscriptions are kept (what arrives is forwarded).
LINGER_SECONDS: Final = 3.0
#: Seconds a leaving node waits for the others to hold its shards.
HANDOVER_WAIT_SECONDS: Final = 3.0
#: Seconds a starting service waits for its node's first share and subscriptions.
CLUSTER_SETTLE_SECONDS: Final = 15.0
#: Topic filters subscribed or unsubscribed in one MQTT packet.
FILTERS_PER_PACKET: Final = 400
#: Commands a stopped actor had queued that are not sent on (the new owner ticks by itself).
NOT_FORWARDED = (c.Tick, c.MarkDispatched)


#: The subscription key of the fleet-wide topics (never a bank id: those are UUIDs).
FLEET_TOPICS: Final = "fleet"
#: The shard whose holder subscribes to :data:`FLEET_TOPICS`.
FLEET_SHARD: Final = 0
#: The key of the shared subscriptions an earlier version kept in this session.
_LEGACY_SHARED: Final = "legacy-shared"


def bank_filters(bank_id: str) -> list[str]:
    """The inbound topics of one bank (``/status`` too: it may still be accepted)."""
    return [f"locker/{bank_id}/{leaf}" for leaf in ("state", "response", "event", "status")]


def topic_filters(key: str) -> list[str]:
    """The topic filters behind one subscription key: a bank id or :data:`FLEET_TOPICS`."""
    if key == FLEET_TOPICS:
        return ["locker/register/+", "metrics/#"]
    if key == _LEGACY_SHARED:
        return ["$share/lockerd/locker/register/+", "$share/lockerd/metrics/#"]
    return bank_filters(key)


class MqttSubscriber(Protocol):
    """The part of the MQTT client the node uses (gateway.mqtt.MqttClient)."""

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> None: ...

    async def unsubscribe(self, filters: Sequence[str]) -> None: ...


class BankSubscriptions:
    """Keeps this node's MQTT subscriptions in line with the banks it owns.

    Keys are bank ids and :data:`FLEET_TOPICS` (:func:`topic_filters`). A task of its own does
    the MQTT work, so that ownership changes never wait for the broker; unwanted keys are
    unsubscribed only after their linger time. At start every known key counts as possibly
    subscribed (a persistent session keeps an earlier life's subscriptions) and is
    unsubscribed unless owned.
    """

    def __init__(
        self,
        mqtt: MqttSubscriber,
        maybe_subscribed: set[str],
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        self._mqtt = mqtt
        self._on_subscribed = on_subscribed
        self.wanted: set[str] = set()
        self.subscribed: set[str] = set()
        #: banks an earlier life of this session may still be subscribed to
        self._stale = set(maybe_subscribed) | {FLEET_TOPICS, _LEGACY_SHARED}
        self._stale_ready = trio.Event()
        self._linger_until: dict[str, float] = {}
        self._wake = trio.Event()
        self._progress = trio.Event()
        #: set once the first share's subscriptions are in place (see :meth:`run`)
        self.settled = trio.Event()

    def want(self, bank_ids: Sequence[str]) -> None:
        for bank_id in bank_ids:
            self.wanted.add(bank_id)
            self._linger_until.pop(bank_id, None)
        self._wake.set()

    def unwant(self, bank_ids: Sequence[str], linger: float) -> None:
        until = trio.current_time() + linger
        for bank_id in bank_ids:
            self.wanted.discard(bank_id)
            self._linger_until[bank_id] = until
        self._wake.set()

    def first_share_taken(self) -> None:
        """The node has taken its first share: subscriptions of an earlier life that it does
        not want any more can go (the ones it wants are kept: no gap at start-up)."""
        self._stale_ready.set()
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake = trio.Event()  # a change from now on wakes the wait below
            if self._stale_ready.is_set() and self._stale:
                stale = sorted(self._stale - self.wanted)
                self._stale.clear()
                for start in range(0, len(stale), FILTERS_PER_PACKET // 4):
                    chunk = stale[start : start + FILTERS_PER_PACKET // 4]
                    await self._mqtt.unsubscribe([f for b in chunk for f in topic_filters(b)])
            now = trio.current_time()
            adding = sorted(self.wanted - self.subscribed)
            removing = sorted(
                b for b in self.subscribed - self.wanted if self._linger_until.get(b, 0.0) <= now
            )
            for start in range(0, len(adding), FILTERS_PER_PACKET // 4):
                chunk = adding[start : start + FILTERS_PER_PACKET // 4]
                await self._mqtt.subscribe([(f, 1) for b in chunk for f in topic_filters(b)])
                self.subscribed.update(chunk)
            if adding and self._on_subscribed is not None:
                self._on_subscribed()
            for start in range(0, len(removing), FILTERS_PER_PACKET // 4):
                chunk = removing[start : start + FILTERS_PER_PACKET // 4]
                await self._mqtt.unsubscribe([f for b in chunk for f in topic_filters(b)])
                self.subscribed.difference_update(chunk)
                for b in chunk:
                    self._linger_until.pop(b, None)
            pending = [t for b, t in self._linger_until.items() if b in self.subscribed]
            if self._stale_ready.is_set():
                self.settled.set()
            self._progress.set()
            self._progress = trio.Event()
            with trio.move_on_at(min(pending, default=now + 3600.0)):
                await self._wake.wait()

    async def unsubscribed(self, bank_ids: Sequence[str]) -> None:
        """Wait until none of ``bank_ids`` is subscribed any more."""
        while any(b in self.subscribed for b in bank_ids):
            await self._progress.wait()


class ClusterNode:
    """The running node; built by :func:`open_cluster`, run by the service's root supervisor."""

    def __init__(
        self,
        node_id: str,
        link: ClusterLink,
        ownership: Ownership,
        feed: EventFeed,
        fleet_sync: FleetSync,
        notes: trio.MemoryReceiveChannel[tuple[str, str]],
        known_banks: Callable[[], Sequence[str]],
        base_listeners: Sequence[StoredEventListener],
        point_sync: PointSync | None = None,
    ) -> None:
        self.node_id = node_id
        #: relays metric points between the nodes' live streams (None: no pipeline given)
        self.point_sync = point_sync
        self.link = link
        self.ownership = ownership
        self.feed = feed
        self.fleet_sync = fleet_sync
        self.notes = notes
        #: the banks known to this node (the directory's ``banks``)
        self.known_banks = known_banks
        self._runner: _Runner | None = None
        self._started = trio.Event()  # set once :meth:`run` has built its runner
        self._base_listeners = list(base_listeners)

    @property
    def token(self) -> str:
        return self.ownership.token

    async def settled(self) -> None:
        """Wait until the node has taken its first share and subscribed to its topics: from
        then on, what devices and agents publish to this node's share is queued for it."""
        await self._started.wait()
        assert self._runner is not None
        await self._runner.subscriptions.settled.wait()

    def follow(self, bank_id: str, events: Sequence[StoredEvent]) -> None:
        """A stored-event listener (local appends and the feed): a bank created in a shard
        this node holds is subscribed to at once (and started, if created elsewhere); one
        created elsewhere appears in this node's fleet view."""
        created = [event for event in events if event.type == "LockerBankCreated"]
        if not created:
            return
        if not self.ownership.is_local(bank_id):
            # shown at once in this node's fleet view (dashboards), before its owner's first
            # live status arrives
            self.fleet_sync.bank_created(bank_id, created[0].data)
            return
        runner = self._runner
        if runner is not None:
            runner.subscriptions.want([bank_id])
            runner.registry.start([bank_id])

    def local_listeners(self) -> list[StoredEventListener]:
        """What the bank actors of this node call, around the application's listeners."""
        return [self.feed.note_local, *self._base_listeners, self.follow]

    async def run(
        self,
        registry: BankRegistry,
        mqtt: MqttSubscriber,
        *,
        announce_online: Callable[[], None] | None = None,
    ) -> None:
        """Run the node until cancelled (a child of the service's root supervisor).

        ``announce_online`` (the gateway's) is called once banks taken over are subscribed:
        devices beat at once on ``server/status`` online (docs/firmware.md), so the banks of a
        node that died are online again at their new owner within a round trip instead of
        after their next heartbeat interval.
        """
        subscriptions = BankSubscriptions(mqtt, set(self.known_banks()), announce_online)
        runner = _Runner(self, registry, subscriptions)
        self._runner = runner
        self._started.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.subscriptions.run)
            nursery.start_soon(self._notifications, runner)
            nursery.start_soon(self.feed.run)
            nursery.start_soon(self.fleet_sync.run)
            if self.point_sync is not None:
                nursery.start_soon(self.point_sync.run)
            nursery.start_soon(self.ownership.forward_tells, registry)
            await runner.balance_forever()

    async def _notifications(self, runner: _Runner) -> None:
        async for channel, payload in self.notes:
            if channel == CHANNEL_EVENTS:
                self.feed.wake()
            elif channel == CHANNEL_FLEET:
                self.fleet_sync.received(payload)
            elif channel == CHANNEL_POINTS:
                if self.point_sync is not None:
                    self.point_sync.received(payload)
            elif channel == CHANNEL_MEMBERS:
                runner.poke.set()
            elif channel == "lost":
                await runner.link_lost()

    async def leave(self) -> None:
        """Hand every bank over at once (graceful stop); bounded by the caller's scope."""
        runner = self._runner
        if runner is not None:
            await runner.leave()
        else:
            await self.link.leave()


class _Runner:
    def __init__(
        self, node: ClusterNode, registry: BankRegistry, subscriptions: BankSubscriptions
    ) -> None:
        self.node = node
        self.registry = registry
        self.subscriptions = subscriptions
        self.poke = trio.Event()
        self.link_down = False
        self.leaving = False
        self._lock = trio.Lock()  # one ownership change at a time

    @property
    def ownership(self) -> Ownership:
        return self.node.ownership

    def banks_in(self, shards: set[int]) -> list[str]:
        return [b for b in self.node.known_banks() if shard_of(b) in shards]

    def topics_of(self, shards: set[int]) -> list[str]:
        """The subscription keys that come with ``shards``: their banks, and the fleet-wide
        topics with :data:`FLEET_SHARD`."""
        return self.banks_in(shards) + ([FLEET_TOPICS] if FLEET_SHARD in shards else [])

    async def balance_forever(self) -> None:
        failures = 0
        while not self.leaving:
            try:
                if self.link_down:
                    await self.node.link.reconnect()
                    self.link_down = False
                    log.info("cluster_link_restored", node=self.node.node_id)
                async with self._lock:
                    if not self.leaving:
                        await self.balance()
                        self.subscriptions.first_share_taken()
                failures = 0
            except LinkLost as exc:
                failures += 1
                log.warning("cluster_link_unavailable", error=str(exc))
                await trio.sleep(min(0.2 * 2**failures, 5.0))
                continue
            except Exception as exc:  # e.g. DuplicateNode while our old session lingers
                failures += 1
                log.warning("cluster_rebalance_failed", error=repr(exc))
                await trio.sleep(min(0.2 * 2**failures, 5.0))
                continue
            with trio.move_on_after(REBALANCE_SECONDS):
                await self.poke.wait()
            self.poke = trio.Event()
        await trio.sleep_forever()

    async def balance(self) -> None:
        link = self.node.link
        me = self.node.node_id
        view = await link.view()
        self.ownership.update(view)
        held = set(self.ownership.held)
        desired = desired_shards(me, set(view.live) | {me})
        release = held - desired
        if release:
            await self.release(release)
        free = sorted(s for s in desired - held if view.holders.get(s) in (None, me))
        if free:
            got = set(await link.try_lock(free))
            if got:
                await self.acquire(got)
        if release or free:
            self.ownership.update(await link.view())

    async def acquire(self, shards: set[int]) -> None:
        # every bank must be known before its shard is served (created elsewhere a moment ago)
        await self.node.feed.catch_up()
        banks = self.banks_in(shards)
        self.ownership.held |= shards
        self.ownership.update()
        self.subscriptions.want(self.topics_of(shards))
        self.registry.start(banks)
        log.info("shards_acquired", node=self.node.node_id, shards=len(shards), banks=len(banks))
        with contextlib.suppress(LinkLost):
            await self.node.link.notify(CHANNEL_MEMBERS, f"acquired {self.node.node_id}")

    async def release(self, shards: set[int], *, unlock: bool = True) -> None:
        banks = self.banks_in(shards)
        self.ownership.held -= shards
        self.ownership.update()
        left = await self.registry.stop(
            [b for b in list(self.registry.entries) if shard_of(b) in shards]
        )
        if unlock:
            await self.node.link.unlock(sorted(shards))
            with contextlib.suppress(LinkLost):
                await self.node.link.notify(CHANNEL_MEMBERS, f"released {self.node.node_id}")
        self.subscriptions.unwant(self.topics_of(shards), LINGER_SECONDS)
        self._forward(left)
        log.info("shards_released", node=self.node.node_id, shards=len(shards), banks=len(banks))

    def _forward(self, left: list[tuple[str, Envelope]]) -> None:
        """Messages that were queued for stopped actors go to the banks' new owners."""
        for bank_id, envelope in left:
            if not isinstance(envelope.command, NOT_FORWARDED):
                self.node.ownership.tell_remote_nowait(bank_id, envelope.command, envelope.kind)

    async def link_lost(self) -> None:
        """The cluster connection is gone and with it every lock: stop every actor at once."""
        if self.link_down:
            return
        self.link_down = True
        async with self._lock:
            held = set(self.ownership.held)
            log.error("cluster_link_lost", node=self.node.node_id, shards=len(held))
            self.ownership.held.clear()
            self.ownership.update()
            left = await self.registry.stop(list(self.registry.entries))
            self.subscriptions.unwant(self.topics_of(held), LINGER_SECONDS)
            self._forward(left)
        self.poke.set()

    async def leave(self) -> None:
        self.leaving = True
        self.poke.set()
        async with self._lock:
            held = set(self.ownership.held)
            keys = self.topics_of(held)
            self.ownership.held.clear()
            self.ownership.update()
            left = await self.registry.stop(list(self.registry.entries))
            await self.node.link.leave()
            self._forward(left)
            log.info("cluster_left", node=self.node.node_id, shards=len(held))
            # keep the subscriptions until the others hold the shards (what arrives meanwhile
            # is forwarded), then drop them so the broker stops queueing for this session.
            # The last node keeps them: the broker queues for its session until it is back,
            # as it does for a single node.
            others = True
            with trio.move_on_after(HANDOVER_WAIT_SECONDS), contextlib.suppress(LinkLost):
                while True:
                    view = await self.node.link.view()
                    self.ownership.update(view)
                    others = bool(set(view.live) - {self.node.node_id})
                    taken = all(view.holders.get(s) not in (None, self.node.node_id) for s in held)
                    if not others or taken:
                        break
                    await trio.sleep(0.05)
            if others:
                self.subscriptions.unwant(keys, 0.0)
                with trio.move_on_after(2.0):
                    await self.subscriptions.unsubscribed(keys)


@dataclass(frozen=True, slots=True)
class ClusterStart:
    """What :func:`open_cluster` needs from the composition root."""

    database_url: str
    node_id: str
    http_url: str
    store: EventStore
    keyring: Keyring
    listeners: Sequence[StoredEventListener]
    fleet: FleetView
    known_banks: Callable[[], Sequence[str]]
    #: the event log's end, read before the directory was loaded (the feed starts there)
    after_position: int
    dropped: Callable[[str | None, str], None] | None = None
    #: the metrics pipeline, whose stored points are relayed to the other nodes' streams
    pipeline: MetricsPipeline | None = None


@asynccontextmanager
async def open_cluster(start: ClusterStart) -> AsyncIterator[ClusterNode]:
    """Join the cluster for the block's duration: the link's thread, its connection, the
    node lock (raises :class:`~lockerd.cluster.link.DuplicateNode` if the id is taken) and the
    HTTP client for forwarding. Closing it closes the connection (releasing every lock)."""
    notes_send, notes_receive = trio.open_memory_channel[tuple[str, str]](float("inf"))

    def on_notify(channel: str, payload: str) -> None:
        notes_send.send_nowait((channel, payload))

    def on_lost() -> None:
        notes_send.send_nowait(("lost", ""))

    link = ClusterLink(
        start.database_url,
        node_id=start.node_id,
        http_url=start.http_url,
        on_notify=on_notify,
        on_lost=on_lost,
    )
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=2.0), limits=limits) as http:

        async def announce() -> None:
            await link.notify(CHANNEL_EVENTS, start.node_id)

        feed_listeners = list(start.listeners)
        feed = EventFeed(start.store, feed_listeners, announce, after_position=start.after_position)
        ownership = Ownership(
            start.node_id, http, cluster_token(start.keyring), feed, dropped=start.dropped
        )

        async def send_fleet(payload: str) -> None:
            await link.notify(CHANNEL_FLEET, payload)

        fleet_sync = FleetSync(start.node_id, start.fleet, ownership.is_local, send_fleet)

        async def send_points(payload: str) -> None:
            await link.notify(CHANNEL_POINTS, payload)

        point_sync = (
            None
            if start.pipeline is None
            else PointSync(start.node_id, start.pipeline, send_points)
        )
        node = ClusterNode(
            start.node_id,
            link,
            ownership,
            feed,
            fleet_sync,
            notes_receive,
            start.known_banks,
            start.listeners,
            point_sync,
        )
        feed_listeners.append(node.follow)
        await link.start()
        try:
            yield node
        finally:
            with trio.CancelScope(shield=True):
                await link.stop()


def take_startup_turn(tx: Any) -> None:
    """Make nodes that start at the same moment create their plain tables one at a time.

    ``CREATE TABLE IF NOT EXISTS`` races in PostgreSQL (both see no table, one fails on the
    catalog's unique index); a transaction-level advisory lock per schema serialises them. Run
    it first inside the ``Tables.write`` function that creates the tables.
    """
    tx.query("SELECT pg_advisory_xact_lock(hashtext('lockerd.startup:' || current_schema()))")


def log_end(tx: Any) -> int:
    """The position of the last event in the log (0 when empty); a ``Tables.read`` function."""
    rows = tx.query("SELECT COALESCE(MAX(position), 0) FROM events")
    return int(rows[0][0])
