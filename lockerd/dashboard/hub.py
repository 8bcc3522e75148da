"""The operators' live fleet stream behind the ``/ws/status`` websocket.

Every websocket is one subscriber of the :class:`~actors.fleet.FleetView`. Bank actors only
mark a bank dirty in each subscriber's set (O(1), never blocking), so the actors never wait for
a browser. Each connection then runs three small tasks:

* the *feeder* takes the coalesced set of changed banks, renders each bank's latest status
  and puts it into a bounded outgoing queue. While the queue is full it stops taking changes:
  further updates of a bank coalesce in the subscription's dirty set, bounded by the fleet.
* the *writer* sends the queued messages; a send that takes longer than ``send_timeout``
  trips a watchdog.
* the *watchdog* and a queue that stays full for ``send_timeout`` both mean the browser has
  fallen behind: the subscription is dropped at once and the socket is closed with 1013
  (try again later); the page reconnects and gets a fresh snapshot.

On service shutdown (``context.shutdown``, or cancellation of the service) every socket is
closed with 1001 (going away) rather than vanishing with a 1006.

A client that has stopped reading altogether leaves a send stuck in a full TCP window, and
Hypercorn writes inside a shielded cancel scope, so that send cannot be interrupted. The
subscription is dropped regardless (nothing of the fleet waits for it), and if the close frame
cannot be written within ``close_timeout`` the TCP connection is reset, so neither the session
nor the service's shutdown waits on a dead browser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgspec
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from actors.fleet import FleetSubscription, FleetView
from domain.wiretime import iso
from lockerd.http.websocket import CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN_LATER, Transport

log = structlog.get_logger("lockerd.dashboard")

SEND_TIMEOUT_SECONDS: Final = 2.0
CLOSE_TIMEOUT_SECONDS: Final = 3.0
QUEUE_SIZE: Final = 256

_encode = msgspec.json.Encoder().encode


def encode(message: dict[str, Any]) -> str:
    return _encode(message).decode()


def snapshot_message(fleet: FleetView, now: datetime) -> str:
    banks = sorted(fleet.snapshot(), key=lambda bank: (str(bank["name"]).casefold(), bank["id"]))
    return encode({"type": "snapshot", "server_time": iso(now), "banks": banks})


def bank_message(bank: dict[str, Any]) -> str:
    return encode({"type": "bank", "bank": bank})


@dataclass(slots=True)
class DashboardMetrics:
    clients: Gauge
    closed: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> DashboardMetrics:
        return cls(
            clients=Gauge(
                "lockerd_dashboard_clients", "Open dashboard websockets", registry=registry
            ),
            closed=Counter(
                "lockerd_dashboard_disconnects",
                "Closed dashboard websockets by reason (slow: fell behind and was dropped;"
                " shutdown: service stopping; ended: the client left or the service was cancelled)",
                ["reason"],
                registry=registry,
            ),
        )


Verdict = tuple[int, str, str]  # (close code, close reason, metric label)

SLOW_QUEUE: Final[Verdict] = (CLOSE_TRY_AGAIN_LATER, "too slow: update queue full", "slow")
SLOW_SEND: Final[Verdict] = (CLOSE_TRY_AGAIN_LATER, "too slow: send timed out", "slow")
SHUTDOWN: Final[Verdict] = (CLOSE_GOING_AWAY, "server shutting down", "shutdown")
ENDED: Final[Verdict] = (CLOSE_GOING_AWAY, "server shutting down", "ended")


class Session:
    """One websocket subscriber: its subscription, its verdict and the scope that ends it."""

    def __init__(self, subscription: FleetSubscription, metrics: DashboardMetrics) -> None:
        self.subscription = subscription
        self.metrics = metrics
        self.scope = trio.CancelScope()
        self.send_deadline = trio.CancelScope(deadline=math.inf)
        self.verdict: Verdict | None = None
        self.decided = trio.Event()
        # shielded so that it runs even while the service is being cancelled; cancelled
        # itself once the close frame is out
        self.abort_timer = trio.CancelScope(shield=True)

    def finish(self, verdict: Verdict) -> None:
        """End the session; the first verdict wins. The fleet stops feeding it at once."""
        if self.verdict is not None:
            return
        self.verdict = verdict
        self.subscription.close()
        self.scope.cancel()
        self.decided.set()
        self.metrics.closed.labels(verdict[2]).inc()
        if verdict[2] == "slow":
            log.info("dashboard_client_dropped", reason=verdict[1])


@dataclass(slots=True)
class StatusHub:
    """Serves the status websockets of one running service."""

    fleet: FleetView
    shutdown: trio.Event
    clock: Callable[[], datetime]
    metrics: DashboardMetrics
    send_timeout: float = SEND_TIMEOUT_SECONDS
    close_timeout: float = CLOSE_TIMEOUT_SECONDS
    queue_size: int = QUEUE_SIZE
    sessions: set[Session] = field(default_factory=set)

    async def run(self, transport: Transport) -> None:
        """Stream the fleet to one accepted websocket until it ends, then close it.

        Subscribes before taking the snapshot, so no change between the two is lost (a bank
        may be sent twice; the later message is always the newer status). Whatever ends the
        session (falling behind, shutdown, cancellation), the socket gets a close frame, or is
        aborted if the close cannot be written within ``close_timeout``.
        """
        session = Session(self.fleet.subscribe(), self.metrics)
        outgoing, queued = trio.open_memory_channel[str](self.queue_size)
        outgoing.send_nowait(snapshot_message(self.fleet, self.clock()))
        self.sessions.add(session)
        self.metrics.clients.inc()
        try:
            async with trio.open_nursery() as guard:
                guard.start_soon(self._abort_if_stuck, session, transport)
                try:
                    with session.scope:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._write, session, queued, transport)
                            nursery.start_soon(self._watchdog, session)
                            nursery.start_soon(self._discard_incoming, transport)
                            nursery.start_soon(self._watch_shutdown, session)
                            await self._feed(session, outgoing)
                finally:
                    # cancelled from outside: the client left or the service is stopping
                    session.finish(ENDED)
                    assert session.verdict is not None
                    code, reason, _ = session.verdict
                    with trio.CancelScope(shield=True):
                        await transport.close(code, reason)
                    session.abort_timer.cancel()
        finally:
            session.subscription.close()
            self.sessions.discard(session)
            self.metrics.clients.dec()

    async def _feed(self, session: Session, outgoing: trio.MemorySendChannel[str]) -> None:
        while True:
            changed = await session.subscription.changes()
            for bank_id in sorted(changed):
                status = self.fleet.banks.get(bank_id)
                if status is None:
                    continue
                message = bank_message(status.to_json())
                with trio.move_on_after(self.send_timeout) as waited:
                    await outgoing.send(message)
                if waited.cancelled_caught:
                    session.finish(SLOW_QUEUE)
                    return

    async def _write(
        self, session: Session, queued: trio.MemoryReceiveChannel[str], transport: Transport
    ) -> None:
        async for message in queued:
            session.send_deadline.deadline = trio.current_time() + self.send_timeout
            await transport.send(message)
            session.send_deadline.deadline = math.inf

    async def _watchdog(self, session: Session) -> None:
        """A send cannot be interrupted (Hypercorn shields it), so time it from beside it."""
        with session.send_deadline:
            await trio.sleep_forever()
        session.finish(SLOW_SEND)

    @staticmethod
    async def _discard_incoming(transport: Transport) -> None:
        """The stream is one-way; read and drop whatever the client sends so it never piles up."""
        while True:
            await transport.receive()

    async def _watch_shutdown(self, session: Session) -> None:
        await self.shutdown.wait()
        session.finish(SHUTDOWN)

    async def _abort_if_stuck(self, session: Session, transport: Transport) -> None:
        """Once the session is over, give the close frame ``close_timeout``, then cut TCP.

        A client that has stopped reading leaves a send stuck in a full TCP window; cutting the
        connection frees it, so neither the session nor the service's shutdown waits on it.
        """
        try:
            await session.decided.wait()
        finally:
            with session.abort_timer:
                await trio.sleep(self.close_timeout)
                log.info("dashboard_client_aborted", reason="close frame not written in time")
                transport.abort()
