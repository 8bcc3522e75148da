"""Live metric points as server-sent events (``GET /api/admin/tenants/{id}/metrics/stream``).

Each stream is one subscriber of the :class:`~lockerd.telemetry.pipeline.MetricsPipeline`
(tenant-filtered, bounded buffer). The pipeline never waits for a stream: a stream that falls
more than :data:`STREAM_BUFFER` points behind is dropped by the pipeline (counted there and in
``lockerd_metric_streams_dropped_total``); the client is told with a last ``event: dropped``
and the response ends (a browser's ``EventSource`` connects again by itself after ``retry``).

What a client reads::

    retry: 3000          (once: reconnect delay for EventSource, milliseconds)
    : subscribed         (once: from here on every stored point is sent)
    data: {"agent_id":"…","metric":"…","value":1.5,"timestamp":"…Z"}
    : keep-alive         (after KEEPALIVE_SECONDS without a point)
    event: dropped       (only when the client was too slow; then the stream ends)

On shutdown every stream ends cleanly (its channel is closed, the generator returns). With a
cluster, the points stored by other nodes arrive through the cluster relay
(:mod:`lockerd.cluster.pointsync`) and are sent like local ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import msgspec
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from lockerd.telemetry.pipeline import MetricsPipeline
from lockerd.telemetry.points import MetricPoint

log = structlog.get_logger("lockerd.telemetry.stream")

KEEPALIVE_SECONDS: Final = 15.0
#: Points a stream may fall behind before the pipeline drops it.
STREAM_BUFFER: Final = 1000
RETRY_MS: Final = 3000

_encode = msgspec.json.Encoder().encode


def point_event(point: MetricPoint) -> bytes:
    """One ``data:`` event (JSON never holds a raw newline, so one line is enough)."""
    return b"data: " + _encode(point.as_json()) + b"\n\n"


class PointStreams:
    """The open metric streams of one service; ends them all on shutdown."""

    def __init__(
        self,
        pipeline: MetricsPipeline,
        shutdown: trio.Event,
        registry: CollectorRegistry,
        *,
        keepalive: float = KEEPALIVE_SECONDS,
        buffer: int = STREAM_BUFFER,
    ) -> None:
        self.pipeline = pipeline
        self.shutdown = shutdown
        self.keepalive = keepalive
        self.buffer = buffer
        self._open: set[trio.MemoryReceiveChannel[MetricPoint]] = set()
        self._clients = Gauge(
            "lockerd_metric_stream_clients", "Open live metric streams", registry=registry
        )
        self._dropped = Counter(
            "lockerd_metric_streams_dropped",
            "Live metric streams ended because the client fell behind",
            registry=registry,
        )
        self.dropped = 0

    @property
    def open_count(self) -> int:
        return len(self._open)

    async def end_on_shutdown(self) -> None:
        """Owned task: when the service stops, close every stream's channel (each generator
        then returns and its response ends)."""
        await self.shutdown.wait()
        for channel in list(self._open):
            channel.close()

    async def events(
        self, tenant_id: str, still_allowed: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[bytes]:
        """The body of one stream. ``still_allowed`` is asked at every keep-alive: a token
        that has ended (logout, disabled, no longer admin) ends the stream."""
        points = self.pipeline.subscribe(tenant_id, self.buffer)
        self._open.add(points)
        self._clients.inc()
        try:
            yield f"retry: {RETRY_MS}\n: subscribed\n\n".encode()
            while not self.shutdown.is_set():
                try:
                    point = await self._next(points)
                except trio.EndOfChannel:  # the pipeline dropped us: too slow
                    self.dropped += 1
                    self._dropped.inc()
                    log.info("metric_stream_dropped", tenant_id=tenant_id, reason="too_slow")
                    yield b'event: dropped\ndata: {"reason":"too_slow"}\n\n'
                    return
                except trio.ClosedResourceError:  # shutdown
                    return
                if point is None:
                    if not await still_allowed():
                        return
                    yield b": keep-alive\n\n"
                else:
                    yield point_event(point)
        finally:
            self._open.discard(points)
            self._clients.dec()
            points.close()

    async def _next(self, points: trio.MemoryReceiveChannel[MetricPoint]) -> MetricPoint | None:
        """The next point, or None after ``keepalive`` seconds without one. (Not inlined in
        the generator: a cancel scope must not be held across a ``yield``.)"""
        with trio.move_on_after(self.keepalive):
            return await points.receive()
        return None
