"""Live metric points shared between nodes, so a stream on any node sees every stored point.

Points are plain rows (no global order to follow), and an MQTT point is stored by whichever
node the shared subscription handed it to. So each node relays the points *it* stored, after
their commit, as JSON NOTIFY payloads on :data:`~lockerd.cluster.link.CHANNEL_POINTS`
(coalesced: whatever has queued up while the previous payload was sent, each under 8000
bytes); every other node hands them to its pipeline's stream subscribers
(:meth:`~lockerd.telemetry.pipeline.MetricsPipeline.publish_remote`).

This is a live feed, not a log: a point whose node dies between its commit and the NOTIFY, or
that is relayed while PostgreSQL's notification queue is unreachable, is stored (and in
``GET …/metrics``) but never streamed by the other nodes. The relay is itself a bounded
subscriber of the pipeline: if it falls more than :data:`RELAY_BUFFER` points behind it is
dropped, counts the gap (``dropped``) and subscribes again; ingestion never waits for it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
import trio

from lockerd.telemetry.pipeline import MetricsPipeline
from lockerd.telemetry.points import MetricPoint

log = structlog.get_logger("lockerd.cluster.points")

#: NOTIFY payloads must stay below 8000 bytes.
MAX_PAYLOAD: Final = 7800
RELAY_BUFFER: Final = 20_000


def encode_batches(node_id: str, points: list[MetricPoint]) -> list[str]:
    """``points`` as payloads ``{"node","points":[[tenant,agent,metric,value,ts_us],…]}``."""
    head = f'{{"node":{json.dumps(node_id)},"points":['
    batches: list[str] = []
    current: list[str] = []
    size = len(head) + 2
    for point in points:
        text = json.dumps(
            [point.tenant_id, point.agent_id, point.metric, point.value, point.ts_us],
            separators=(",", ":"),
        )
        if current and size + len(text) + 1 > MAX_PAYLOAD:
            batches.append(head + ",".join(current) + "]}")
            current, size = [], len(head) + 2
        current.append(text)
        size += len(text) + 1
    if current:
        batches.append(head + ",".join(current) + "]}")
    return batches


def decode_points(payload: str) -> tuple[str, list[MetricPoint]]:
    """(sending node, points) of one payload; raises ValueError/TypeError/KeyError if bad."""
    message = json.loads(payload)
    points = [
        MetricPoint(str(t), str(a), str(m), float(v), int(ts), source="node")
        for t, a, m, v, ts in message["points"]
    ]
    return str(message["node"]), points


class PointSync:
    def __init__(
        self,
        node_id: str,
        pipeline: MetricsPipeline,
        send: Callable[[str], Awaitable[None]],
        *,
        max_points: int = 500,
    ) -> None:
        self.node_id = node_id
        self.pipeline = pipeline
        self._send = send
        self.max_points = max_points
        #: times the relay fell behind and was dropped (points then not relayed)
        self.dropped = 0

    def received(self, payload: str) -> None:
        """A NOTIFY from a node (our own are ignored): to this node's streams."""
        try:
            node, points = decode_points(payload)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("metric_points_ignored", error=repr(exc))
            return
        if node != self.node_id:
            self.pipeline.publish_remote(points)

    async def run(self) -> None:
        """Relay this node's stored points until cancelled."""
        while True:
            with self.pipeline.subscribe(None, RELAY_BUFFER, remote=False) as points:
                try:
                    while True:
                        batch = [await points.receive()]
                        while len(batch) < self.max_points:
                            try:
                                batch.append(points.receive_nowait())
                            except trio.WouldBlock:
                                break
                        await self.send_now(batch)
                except trio.EndOfChannel:
                    self.dropped += 1
                    log.warning("metric_relay_fell_behind")

    async def send_now(self, points: list[MetricPoint]) -> None:
        for payload in encode_batches(self.node_id, points):
            try:
                await self._send(payload)
            except Exception as exc:  # a live feed: the others miss these points
                log.warning("metric_points_not_relayed", points=len(points), error=repr(exc))
