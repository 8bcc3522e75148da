"""Events appended on other nodes, handed to this node's stored-event listeners in order.

Every node keeps in-memory indexes and read models fed by stored-event listeners (the
directory: tokens, device users, compartments; the app read models). A bank actor calls them
for its own appends; with several nodes the events of banks owned elsewhere must reach them
too. The feed tails the global event log (``read_all`` by position, which never skips: see
``store/postgres.py``) and calls the listeners for every event this node did not append itself.
It reads when a node announces new events (NOTIFY on :data:`~lockerd.cluster.link.CHANNEL_EVENTS`,
coalesced) and at least once a second.

Exactly once per node: positions appended here are noted by :meth:`EventFeed.note_local` (a
listener that runs before the others) and skipped when the tail reaches them; everything else
is handed on exactly once, in position order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import structlog
import trio

from actors.ports import StoredEventListener
from domain.records import StoredEvent
from store.base import EventStore

log = structlog.get_logger("lockerd.cluster.feed")

#: Events read per page.
PAGE = 500
#: Seconds between reads when no node announced anything (a lost NOTIFY costs at most this).
POLL_SECONDS = 1.0
#: Seconds a node gathers its own appends before it announces them.
ANNOUNCE_SECONDS = 0.02


class EventFeed:
    def __init__(
        self,
        store: EventStore,
        listeners: Sequence[StoredEventListener],
        announce: Callable[[], Awaitable[None]],
        *,
        after_position: int,
    ) -> None:
        self._store = store
        self._listeners = listeners
        self._announce = announce
        self.position = after_position
        self._local: set[int] = set()
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._appended = trio.Event()

    def note_local(self, bank_id: str, events: Sequence[StoredEvent]) -> None:
        """The listener for this node's own appends (registered first): remember, announce."""
        for event in events:
            if event.position > self.position:
                self._local.add(event.position)
        self._appended.set()

    def wake(self) -> None:
        """Another node appended events (its NOTIFY arrived)."""
        self._wake.set()

    async def catch_up(self, until: int | None = None) -> None:
        """Hand on every event up to the end of the log (or at least up to ``until``)."""
        async with self._lock:
            while True:
                if until is not None and self.position >= until:
                    return
                page = await self._store.read_all(self.position, PAGE)
                if not page:
                    return
                for event in page:
                    self.position = event.position
                    if event.position in self._local:
                        self._local.discard(event.position)
                        continue
                    for listener in self._listeners:
                        try:
                            listener(event.stream_id, [event])
                        except Exception:  # one broken listener must not stop the others
                            log.exception("listener_failed", position=event.position)
                # positions at or below the cursor can never come again
                if self._local:
                    self._local = {p for p in self._local if p > self.position}
                if len(page) < PAGE and until is None:
                    return

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announcer)
            while True:
                with trio.move_on_after(POLL_SECONDS):
                    await self._wake.wait()
                self._wake = trio.Event()
                try:
                    await self.catch_up()
                except Exception as exc:  # the store is down: try again on the next round
                    log.warning("feed_read_failed", error=repr(exc))

    async def _announcer(self) -> None:
        while True:
            await self._appended.wait()
            await trio.sleep(ANNOUNCE_SECONDS)  # coalesce a burst into one NOTIFY
            self._appended = trio.Event()
            try:
                await self._announce()
            except Exception as exc:  # the others poll anyway
                log.warning("announce_failed", error=repr(exc))
