"""The ingestion actor: one pipeline for metric points from MQTT and from HTTP.

Shape
-----
* **Admission** runs on the caller's task: the MQTT bridge (the gateway's ``metric_sink``) and
  ``POST /api/metrics`` both check tenant and agent against the in-memory directory, decode and
  validate the point (:mod:`lockerd.telemetry.points`). A refused point never enters the
  channel. MQTT refusals are logged and counted as dropped with their reason; HTTP ones raise
  :class:`~lockerd.telemetry.points.Rejected` for a 400.
* **The channel** is a bounded Trio memory channel. When it is full, ``send`` waits: the gateway
  stops reading its socket (TCP backpressure to the broker) and HTTP requests wait, nothing is
  lost or reordered.
* **The actor** (:meth:`MetricsPipeline.run`) takes whatever has queued up, up to ``max_batch``
  points, and writes them in ONE ``store.write`` transaction. No timer is needed: while one batch
  commits, the next one fills by itself, so a lone point is written at once and a burst is
  written in large batches.
* **Dedupe**: a ``dedupe_id`` is unique per agent across both paths. The actor is the only
  writer, so a set of recently seen ``(agent, dedupe_id)`` keys answers almost every repeat
  without the database; the partial unique index catches the rest (after a restart, or once a
  key has left the bounded set) through ``INSERT ... ON CONFLICT DO NOTHING RETURNING``.
* **After the commit** MQTT points are counted as processed (or dropped ``duplicate``), HTTP
  callers get their outcome, and stored points go to subscribers. A subscriber whose bounded
  buffer is full is dropped (its channel closes) rather than slowing ingestion.
* **Nothing half-stored, nobody else's loss**: a batch is one savepoint of the store's
  transaction. If the store is down (``StoreUnavailable``), none of its points is stored, the
  MQTT ones are dropped ``store_unavailable`` and the HTTP callers get the failure (503). If the
  write failed for another reason, it is the fault of some point in it (a value the database
  refuses): the batch is split in halves and each half written again, down to single points, so
  only the points the store refuses fail (MQTT: dropped ``store_rejected``; HTTP: 400) and every
  other point of the batch, another tenant's included, is stored. A bad point costs about
  ``2 log2(batch)`` extra writes; the boundary refuses such values first
  (:mod:`lockerd.telemetry.points`), so this is the safety net.
* **Acknowledgement**: an MQTT point's ``on_done`` (its PUBACK) is called once the point was
  stored, found a duplicate or refused (by the boundary or by the store: it can never be
  stored), never when its batch failed because the store is down: the broker then delivers it
  again on the next connection (contract §2).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Final, Literal

import structlog
import trio
from prometheus_client import Counter, Histogram

from lockerd.metrics import Metrics
from lockerd.telemetry.agents import Agent, AgentDirectory
from lockerd.telemetry.points import (
    MetricPoint,
    Rejected,
    decode_http,
    decode_mqtt,
    make_point,
)
from lockerd.telemetry.schema import to_us
from store.base import SqlTx, StoreUnavailable, Tables

log = structlog.get_logger("lockerd.telemetry")

Outcome = Literal["stored", "duplicate", "failed", "refused"]
"""A point's fate: stored; a repeat of its ``dedupe_id``; not written because the store is down
(``failed``); or refused by the store itself (``refused``: a value it cannot hold)."""

DEFAULT_CAPACITY: Final = 10_000
DEFAULT_MAX_BATCH: Final = 2_000
DEFAULT_RECENT_DEDUPE: Final = 100_000
DEFAULT_SUBSCRIBER_BUFFER: Final = 1_000

_COLUMNS: Final = (
    "INSERT INTO metric_points (seq, tenant_id, agent_id, metric, value, ts_us, dedupe_id) VALUES "
)
_ROW: Final = "(?, ?, ?, ?, ?, ?, ?)"
_INSERT: Final = _COLUMNS + _ROW
#: Rows per multi-row INSERT of points that carry a dedupe id (7 parameters each, well inside
#: SQLite's 32,766 and PostgreSQL's 65,535 parameters per statement).
DEDUPE_CHUNK: Final = 500

Row = tuple[int, str, str, str, float, int, str | None]


@lru_cache(maxsize=64)
def _insert_deduped(rows: int) -> str:
    """One statement for ``rows`` points; RETURNING names the rows that were not repeats."""
    return _COLUMNS + ", ".join([_ROW] * rows) + " ON CONFLICT DO NOTHING RETURNING seq"


def _write_rows(tx: SqlTx, plain: list[Row], deduped: list[Row]) -> list[int]:
    """Insert a batch; returns the indexes in ``deduped`` that the unique index refused.

    Points without a dedupe id cannot conflict and go in with one ``executemany``. The others go
    in with multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING seq`` (one round trip per
    chunk, also on PostgreSQL), and a row whose ``seq`` does not come back was a repeat.
    """
    if plain:
        tx.executemany(_INSERT, plain)
    inserted: set[int] = set()
    for first in range(0, len(deduped), DEDUPE_CHUNK):
        chunk = deduped[first : first + DEDUPE_CHUNK]
        params = [value for row in chunk for value in row]
        inserted.update(int(found[0]) for found in tx.query(_insert_deduped(len(chunk)), params))
    return [i for i, row in enumerate(deduped) if row[0] not in inserted]


class PipelineUnavailable(Exception):
    """The batch holding the point could not be written; nothing of it was stored."""


class _Reply:
    """Where the actor puts an HTTP caller's outcome."""

    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: Outcome = "failed"

    def resolve(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.done.set()


Item = tuple[MetricPoint, _Reply | None, Callable[[], None] | None]
Unwritten = Literal["failed", "refused"]


@dataclass(slots=True)
class PipelineStats:
    """Plain counters, for tests, the bench and the docs; Prometheus has the same figures."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0
    batches: int = 0
    largest_batch: int = 0
    subscribers_dropped: int = 0


@dataclass(slots=True)
class _Subscriber:
    tenant_id: str | None
    send: trio.MemorySendChannel[MetricPoint]
    #: also points stored by other nodes (:meth:`MetricsPipeline.publish_remote`)
    remote: bool = True


class MetricsPipeline:
    def __init__(
        self,
        store: Tables,
        agents: AgentDirectory,
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        next_seq: int = 1,
        capacity: int = DEFAULT_CAPACITY,
        max_batch: int = DEFAULT_MAX_BATCH,
        recent_dedupe: int = DEFAULT_RECENT_DEDUPE,
        subscriber_buffer: int = DEFAULT_SUBSCRIBER_BUFFER,
    ) -> None:
        if capacity < 1 or max_batch < 1 or recent_dedupe < 1:
            raise ValueError("capacity, max_batch and recent_dedupe must be positive")
        self.store = store
        self.agents = agents
        self.metrics = metrics
        self.clock = clock
        self.max_batch = max_batch
        self.recent_dedupe = recent_dedupe
        self.subscriber_buffer = subscriber_buffer
        self.stats = PipelineStats()
        self._seq = next_seq
        self._send, self._receive = trio.open_memory_channel[Item](capacity)
        self._recent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._subscribers: list[_Subscriber] = []
        self._change: trio.Event | None = None
        self._points = Counter(
            "lockerd_metric_points",
            "Metric points by source (mqtt, http) and outcome (stored, duplicate, rejected,"
            " failed)",
            ["source", "outcome"],
            registry=metrics.registry,
        )
        self._batch_sizes = Histogram(
            "lockerd_metric_batch_points",
            "Points written per metric batch transaction",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=metrics.registry,
        )
        self._mqtt_processed = metrics.inbound.labels("metric", "processed")
        for source in ("mqtt", "http"):
            for outcome in ("stored", "duplicate", "rejected", "failed"):
                self._points.labels(source, outcome)

    # ---------------------------------------------------------------- admission

    def queued(self) -> int:
        return self._send.statistics().current_buffer_used

    async def mqtt_sink(
        self,
        tenant_id: str,
        agent_id: str,
        metric: str,
        payload: bytes,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """The gateway's ``metric_sink`` (``metrics/{tenant}/{agent}/{metric}``): admit one
        MQTT point or drop it with a reason. ``on_done`` is called once it is stored or
        dropped (not when its batch failed)."""
        try:
            point = self._mqtt_point(tenant_id, agent_id, metric, payload)
        except Rejected as exc:
            self._drop_mqtt(exc.reason, tenant_id, agent_id, metric, exc.message)
            self._points.labels("mqtt", "rejected").inc()
            self.stats.rejected += 1
            self._changed()
            if on_done is not None:
                on_done()
            return
        item: Item = (point, None, on_done)
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            await self._send.send(item)

    def _mqtt_point(
        self, tenant_id: str, agent_id: str, metric: str, payload: bytes
    ) -> MetricPoint:
        if not self.agents.has_tenant(tenant_id):
            raise Rejected("unknown_tenant", "no such tenant")
        agent = self.agents.agent(agent_id)
        if agent is None:
            raise Rejected("unknown_agent", "no such agent")
        if agent.tenant_id != tenant_id:
            raise Rejected("agent_tenant_mismatch", "the agent belongs to another tenant")
        body = decode_mqtt(payload)
        return make_point(
            tenant_id=tenant_id,
            agent_id=agent_id,
            metric=metric,
            value=body.value,
            timestamp=body.timestamp,
            dedupe_id=body.dedupe_id,
            now_us=to_us(self.clock()),
            source="mqtt",
        )

    def _drop_mqtt(
        self, reason: str, tenant_id: str, agent_id: str, metric: str, detail: str
    ) -> None:
        self.metrics.message_dropped("metric", reason)
        log.warning(
            "metric_dropped",
            reason=reason,
            tenant_id=tenant_id,
            agent_id=agent_id[:64],
            metric=metric[:64],
            detail=detail,
        )

    async def submit_http(self, agent: Agent, body: bytes) -> Outcome:
        """Admit one point of ``POST /api/metrics`` and wait until it is written.

        Raises :class:`Rejected` for invalid input and :class:`PipelineUnavailable` when the
        write failed.
        """
        try:
            decoded = decode_http(body)
            point = make_point(
                tenant_id=agent.tenant_id,
                agent_id=agent.agent_id,
                metric=decoded.metric,
                value=decoded.value,
                timestamp=decoded.timestamp,
                dedupe_id=decoded.dedupe_id,
                now_us=to_us(self.clock()),
                source="http",
            )
        except Rejected as exc:
            self._points.labels("http", "rejected").inc()
            self.stats.rejected += 1
            log.info(
                "metric_rejected", reason=exc.reason, agent_id=agent.agent_id, detail=exc.message
            )
            self._changed()
            raise
        return await self.submit(point)

    async def submit(self, point: MetricPoint) -> Outcome:
        """Queue an already valid point and wait for its outcome ("stored" or "duplicate").

        Raises :class:`PipelineUnavailable` when the store is down and :class:`Rejected`
        (``store_rejected``) when the store refused the point itself.
        """
        reply = _Reply()
        await self._send.send((point, reply, None))
        await reply.done.wait()
        if reply.outcome == "failed":
            raise PipelineUnavailable("the metric store is unavailable; nothing was stored")
        if reply.outcome == "refused":
            raise Rejected("store_rejected", "the point holds a value that cannot be stored")
        return reply.outcome

    # ---------------------------------------------------------------- subscribers

    def subscribe(
        self, tenant_id: str | None = None, buffer: int | None = None, *, remote: bool = True
    ) -> trio.MemoryReceiveChannel[MetricPoint]:
        """Stored points from now on (of one tenant, or all). Close the channel when done.

        The buffer is bounded; a subscriber that falls behind by more than ``buffer`` points
        is dropped: its channel ends (``EndOfChannel``) and it may subscribe again.
        ``remote=False``: only the points this node stored (the cluster's relay, which sends
        them to the other nodes, must not send theirs back).
        """
        size = self.subscriber_buffer if buffer is None else buffer
        send, receive = trio.open_memory_channel[MetricPoint](size)
        self._subscribers.append(_Subscriber(tenant_id, send, remote))
        return receive

    def publish_remote(self, points: list[MetricPoint]) -> None:
        """Points another node stored (the cluster relay): to the subscribers that want them."""
        self._publish(points, remote=True)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _publish(self, points: list[MetricPoint], *, remote: bool = False) -> None:
        if not self._subscribers or not points:
            return
        keep: list[_Subscriber] = []
        for subscriber in self._subscribers:
            if remote and not subscriber.remote:
                keep.append(subscriber)
                continue
            alive = True
            for point in points:
                if subscriber.tenant_id is not None and point.tenant_id != subscriber.tenant_id:
                    continue
                try:
                    subscriber.send.send_nowait(point)
                except trio.WouldBlock:
                    self.stats.subscribers_dropped += 1
                    log.warning(
                        "metric_subscriber_dropped",
                        reason="too_slow",
                        tenant_id=subscriber.tenant_id,
                    )
                    alive = False
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    alive = False  # the subscriber went away
                if not alive:
                    subscriber.send.close()
                    break
            if alive:
                keep.append(subscriber)
        self._subscribers = keep

    # ---------------------------------------------------------------- observation

    def _changed(self) -> None:
        change = self._change
        if change is not None:
            self._change = None
            change.set()

    async def wait_until(self, predicate: Callable[[PipelineStats], bool]) -> None:
        """Return once ``predicate(stats)`` holds; wakes on every change, never polls."""
        while not predicate(self.stats):
            if self._change is None:
                self._change = trio.Event()
            await self._change.wait()

    # ---------------------------------------------------------------- the actor

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        receive = self._receive
        while True:
            batch = [await receive.receive()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[Item]) -> None:
        fresh: list[Item] = []
        repeats: list[tuple[Item, tuple[str, str] | None]] = []  # (item, key of this batch)
        added: set[tuple[str, str]] = set()
        recent = self._recent
        for item in batch:
            point = item[0]
            if point.dedupe_id is not None:
                key = (point.agent_id, point.dedupe_id)
                if key in recent:
                    repeats.append((item, key if key in added else None))
                    continue
                recent[key] = None
                added.add(key)
            fresh.append(item)

        pairs: list[tuple[Item, Row]] = []
        seq = self._seq
        for item in fresh:
            point = item[0]
            row: Row = (
                seq,
                point.tenant_id,
                point.agent_id,
                point.metric,
                point.value,
                point.ts_us,
                point.dedupe_id,
            )
            seq += 1
            pairs.append((item, row))
        self._seq = seq

        conflicted: set[int] = set()
        unwritten: dict[int, Unwritten] = {}
        if pairs:
            conflicted, unwritten = await self._write_isolating(pairs)

        stored: list[MetricPoint] = []
        mqtt_stored = 0
        fate: dict[tuple[str, str], Unwritten] = {}
        for item in fresh:
            point = item[0]
            lost = unwritten.get(id(item))
            if lost is not None:
                if point.dedupe_id is not None:
                    key = (point.agent_id, point.dedupe_id)
                    recent.pop(key, None)  # not stored: a retry must not count as a repeat
                    fate[key] = lost
                self._finish(item, lost)
                continue
            if id(item) in conflicted:
                self._finish(item, "duplicate")
                continue
            stored.append(point)
            if item[1] is None:
                mqtt_stored += 1
                if item[2] is not None:
                    item[2]()  # stored: acknowledge the MQTT message
            else:
                item[1].resolve("stored")
        for item, batch_key in repeats:
            # a repeat of a point of this very batch shares its fate
            shared = fate.get(batch_key) if batch_key is not None else None
            self._finish(item, shared or "duplicate")
        http_stored = len(stored) - mqtt_stored
        if mqtt_stored:
            self._mqtt_processed.inc(mqtt_stored)
            self._points.labels("mqtt", "stored").inc(mqtt_stored)
        if http_stored:
            self._points.labels("http", "stored").inc(http_stored)
        while len(recent) > self.recent_dedupe:
            recent.popitem(last=False)
        if fresh:
            self._batch_sizes.observe(len(fresh))
        stats = self.stats
        stats.stored += len(stored)
        stats.batches += 1
        stats.largest_batch = max(stats.largest_batch, len(batch))
        self._publish(stored)
        self._changed()

    async def _write_isolating(
        self, pairs: list[tuple[Item, Row]]
    ) -> tuple[set[int], dict[int, Unwritten]]:
        """Write the rows; a failure that is not the store being down fails only its cause.

        Returns the ids of the items whose ``dedupe_id`` the unique index refused (repeats) and
        the ids of the items that were not written, each ``failed`` (the store is down: nothing
        of the batch is written) or ``refused`` (the store cannot hold this point). A write that
        fails for another reason is split in halves, each written again, until the points the
        store refuses are alone (see the module doc).
        """
        conflicted: set[int] = set()
        unwritten: dict[int, Unwritten] = {}

        async def write(part: list[tuple[Item, Row]]) -> None:
            plain = [row for _, row in part if row[6] is None]
            deduped = [(item, row) for item, row in part if row[6] is not None]
            deduped_rows = [row for _, row in deduped]

            def job(tx: SqlTx) -> list[int]:
                return _write_rows(tx, plain, deduped_rows)

            try:
                conflicts = await self.store.write(job)
            except StoreUnavailable as exc:
                log.error("metric_batch_failed", points=len(part), error=str(exc))
                unwritten.update((id(item), "failed") for item, _ in part)
                return
            except Exception as exc:  # the fault of some point in it (or a bug: logged)
                if len(part) == 1:
                    point = part[0][0][0]
                    log.error(
                        "metric_point_refused_by_store",
                        tenant_id=point.tenant_id,
                        agent_id=point.agent_id,
                        metric=point.metric[:64],
                        error=repr(exc),
                    )
                    unwritten[id(part[0][0])] = "refused"
                    return
                log.warning("metric_batch_split", points=len(part), error=repr(exc))
                middle = len(part) // 2
                await write(part[:middle])
                await write(part[middle:])
                return
            conflicted.update(id(deduped[index][0]) for index in conflicts)

        await write(pairs)
        return conflicted, unwritten

    def _finish(self, item: Item, outcome: Literal["duplicate", "failed", "refused"]) -> None:
        """A point that was not stored: tell its HTTP caller, or count and log the MQTT drop
        (and acknowledge a duplicate or a refused one; a failed one must come again)."""
        point, reply, on_done = item
        source = point.source
        if outcome == "duplicate":
            self.stats.duplicates += 1
        else:
            self.stats.failed += 1
        self._points.labels(source, "duplicate" if outcome == "duplicate" else "failed").inc()
        if reply is not None:
            reply.resolve(outcome)
            return
        reason = {
            "duplicate": "duplicate",
            "failed": "store_unavailable",
            "refused": "store_rejected",
        }[outcome]
        if outcome != "failed" and on_done is not None:
            on_done()
        self.metrics.message_dropped("metric", reason)
        log.warning(
            "metric_dropped",
            reason=reason,
            tenant_id=point.tenant_id,
            agent_id=point.agent_id,
            metric=point.metric,
            dedupe_id=point.dedupe_id,
        )
