"""What ``/ws/app`` sends a signed-in user, and the sessions that send it.

Per connection: first ``{"type":"snapshot","compartments":[…]}`` (as ``GET /api/compartments``),
then

* ``{"type":"compartment","granted":true,"compartment":{…}}`` when the presence or the door of
  one of the user's compartments changes or a grant appears, and ``"granted":false`` (the
  compartment as last known) when a grant ends: revoked, or expired;
* ``{"type":"transaction","transaction":{…}}`` (as ``GET /api/transactions/{id}``) when one
  of the user's own transactions appears (``pending``), changes status, or gets its late
  answer.

Changes come from the :class:`~lockerd.banks.live.LiveModel` as a coalescing subscription per
connection, so bank actors never wait for a client: rapid changes of one compartment or one
transaction coalesce into one message with the latest state, and a compartment is only sent
when what the client would see has changed. Everything about the socket itself (bounded
queue, a slow client dropped with 1013, 1001 on shutdown, TCP reset of a client that stopped
reading) is :class:`lockerd.http.websocket.LiveStreams`.

When the session behind the token ends (logout, password change elsewhere, account disabled,
sessions ended by an admin), the stream is closed with 1008 (policy violation, "session
ended"); the client must sign in again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import msgspec
import trio
from prometheus_client import CollectorRegistry

from lockerd.banks.live import LiveModel
from lockerd.http.websocket import (
    CLOSE_TIMEOUT_SECONDS,
    QUEUE_SIZE,
    SEND_TIMEOUT_SECONDS,
    LiveStreams,
    Outgoing,
    StreamMetrics,
    StreamSession,
    Transport,
    Verdict,
)
from lockerd.users.sessions import SessionsEnded

CLOSE_POLICY_VIOLATION: Final = 1008
SESSION_ENDED: Final[Verdict] = (CLOSE_POLICY_VIOLATION, "session ended", "session_ended")

_encode = msgspec.json.Encoder().encode


def encode(message: dict[str, Any]) -> str:
    return _encode(message).decode()


def app_stream_metrics(registry: CollectorRegistry) -> StreamMetrics:
    """``lockerd_app_stream_clients`` and ``lockerd_app_stream_disconnects_total{reason}``."""
    return StreamMetrics.register(registry, "lockerd_app_stream", "app stream")


class AppStreams(LiveStreams):
    """Serves the ``/ws/app`` websockets of one running service."""

    def __init__(
        self,
        *,
        live: LiveModel,
        shutdown: trio.Event,
        clock: Callable[[], datetime],
        metrics: StreamMetrics,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        close_timeout: float = CLOSE_TIMEOUT_SECONDS,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        super().__init__(
            "app",
            shutdown,
            metrics,
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            queue_size=queue_size,
        )
        self.live = live
        self.clock = clock
        # (user id, token hash) of each open session, to end them with their sign-in session
        self._owners: dict[StreamSession, tuple[str, str]] = {}

    async def stream(self, transport: Transport, user_id: str, token_hash: str) -> None:
        """Stream the user's compartments and transactions until the connection ends."""

        async def feed(session: StreamSession, outgoing: Outgoing) -> None:
            self._owners[session] = (user_id, token_hash)

            def forget() -> None:
                self._owners.pop(session, None)

            session.on_finish.append(forget)
            await self._feed(session, outgoing, user_id)

        await self.run(transport, feed)

    def sessions_ended(self, ended: SessionsEnded) -> None:
        """Close the streams of sign-in sessions that have ended (a ``SessionService`` hook)."""
        for session, (user_id, token_hash) in list(self._owners.items()):
            if ended.covers(user_id, token_hash):
                session.finish(SESSION_ENDED)

    async def _feed(self, session: StreamSession, outgoing: Outgoing, user_id: str) -> None:
        """Subscribe before the snapshot, so nothing between the two is lost."""
        live = self.live
        subscription = live.subscribe(user_id)
        session.on_finish.append(subscription.close)
        try:
            now = self.clock()
            snapshot = live.compartments_of(user_id, now)
            sent: dict[str, dict[str, Any]] = {c["id"]: c for c in snapshot}
            await outgoing.send(encode({"type": "snapshot", "compartments": snapshot}))
            while True:
                expiry = live.next_expiry(user_id, now)
                deadline = math.inf
                if expiry is not None:
                    deadline = trio.current_time() + max(0.0, (expiry - now).total_seconds())
                compartments, transactions = await subscription.changes(deadline)
                now = self.clock()
                if expiry is not None and now >= expiry:
                    compartments |= sent.keys()  # some grant has just expired
                for compartment_id in sorted(compartments):
                    current = live.compartment_of(user_id, compartment_id, now)
                    previous = sent.get(compartment_id)
                    if current == previous:
                        continue
                    if current is None:
                        del sent[compartment_id]
                        ended = live.compartment(compartment_id) or previous
                        message = {"type": "compartment", "granted": False, "compartment": ended}
                    else:
                        sent[compartment_id] = current
                        message = {"type": "compartment", "granted": True, "compartment": current}
                    await outgoing.send(encode(message))
                for transaction_id in sorted(transactions):
                    view = live.transaction(transaction_id)
                    if view is not None and view.user_id == user_id:
                        await outgoing.send(
                            encode({"type": "transaction", "transaction": view.to_json()})
                        )
        finally:
            subscription.close()
