"""Delivering alerts to ``LOCKERD_ALERT_WEBHOOK_URL``: the sender of the alert outbox.

The projection writes one ``alert_outbox`` row per alert change in the append transaction
(:mod:`lockerd.alerts.projection`), so nothing raised is lost to a crash. This sender, a task of
the service's nursery (one per node), takes the oldest due row under a *lease* (an owner and an
expiry, written in one conditional UPDATE: with several nodes on PostgreSQL only one of them
holds a row at a time), POSTs its ``{"alert":{…}}`` and marks it delivered on a 2xx. Anything
else (an error status, a refused connection, a timeout) schedules the row again after an
exponential backoff with jitter, capped (:class:`Backoff`). When the receiver itself failed (no
connection, a timeout, a 5xx, 408 or 429) every other undelivered row waits until then too, so a
receiver that is down is asked once per backoff period, not once per alert; a request it
refused (another 4xx, or a redirect, which is not followed) waits alone, so one refused alert
never holds back the others. A node that dies while it holds a lease leaves the row to the
others when the lease expires. Deliveries are therefore *at least once*: a receiver may see one
twice (after such a death) and can tell by the ``Idempotency-Key`` header (the row's id). Rows
go out in the order their changes were stored. Leases compare the nodes' own clocks: keep them
in sync (NTP), well within the lease's 30 s.

Without a URL, rows are marked done (``outcome`` = ``no_webhook``) as they come: alerts raised
while no webhook is configured are not sent later when one is.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import httpx
import structlog
import trio

from domain.backoff import jittered_backoff
from store.base import SqlTx, StoreUnavailable, Tables

log = structlog.get_logger("lockerd.alerts.webhook")

#: seconds a sender waits at most between two looks at the outbox (other nodes' rows, leases
#: that expired); new alerts on this node or any other wake it at once
POLL_SECONDS: Final = 5.0
REQUEST_TIMEOUT_SECONDS: Final = 10.0
#: how long a claimed row is this node's: longer than one request can take
LEASE_SECONDS: Final = 3 * REQUEST_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before the n-th retry: ``initial * 2**(n-1)``, at most ``maximum``, times a
    random factor in [0.5, 1] (jitter, so that many lockerds do not retry in step)."""

    initial: float = 1.0
    maximum: float = 300.0

    def delay(self, attempts: int, draw: Callable[[], float] = random.random) -> float:
        return jittered_backoff(attempts, self.initial, self.maximum, draw)


@dataclass(frozen=True, slots=True)
class Delivery:
    delivery_id: str
    payload: str
    attempts: int


@dataclass(slots=True)
class AlertWebhook:
    tables: Tables
    url: str | None
    node_id: str
    clock: Callable[[], datetime]
    #: told ``delivered`` or ``failed`` after every request (``Metrics.alert_delivery``)
    observe: Callable[[str], None] = lambda outcome: None
    backoff: Backoff = field(default_factory=Backoff)
    poll_seconds: float = POLL_SECONDS
    timeout: float = REQUEST_TIMEOUT_SECONDS
    _wakeup: trio.Event = field(default_factory=trio.Event)

    def wake(self) -> None:
        """Look at the outbox now (an alert changed)."""
        self._wakeup.set()

    def _now(self) -> float:
        return self.clock().timestamp()

    async def run(self) -> None:
        """Send until cancelled (a supervised child of the service)."""
        if self.url is None:
            await self._discard_forever()
            return
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            while True:
                try:
                    await self._pass(client)
                except StoreUnavailable as exc:
                    # the outbox waits in the store: look again when it is back
                    log.warning("alert_outbox_unavailable", error=repr(exc))
                    await trio.sleep(self.poll_seconds)

    async def _pass(self, client: httpx.AsyncClient) -> None:
        """Send what is due, one row at a time, then wait for the next due row or a wake-up."""
        while True:
            self._wakeup = trio.Event()
            delivery = await self.tables.write(self._claim)
            if delivery is None:
                break
            await self._deliver(client, delivery)
        due_in = await self.tables.read(self._due_in)
        wait = self.poll_seconds if due_in is None else min(due_in, self.poll_seconds)
        with trio.move_on_after(max(wait, 0.0)):
            await self._wakeup.wait()

    async def _discard_forever(self) -> None:
        while True:
            self._wakeup = trio.Event()
            await self.tables.write(self._discard)
            with trio.move_on_after(self.poll_seconds):
                await self._wakeup.wait()

    def _discard(self, tx: SqlTx) -> None:
        tx.execute(
            "UPDATE alert_outbox SET delivered_at = ?, outcome = 'no_webhook'"
            " WHERE delivered_at IS NULL",
            (self._now(),),
        )

    def _claim(self, tx: SqlTx) -> Delivery | None:
        """Lease the oldest due row that nobody holds; None when there is none."""
        now = self._now()
        owner = f"{self.node_id}:{uuid.uuid4()}"
        free = "delivered_at IS NULL AND (lease_until IS NULL OR lease_until < ?)"
        # the outer conditions are checked again on the row itself (PostgreSQL re-reads a row
        # another transaction changed meanwhile), so two nodes never both get it
        changed = tx.execute(
            f"UPDATE alert_outbox SET lease_owner = ?, lease_until = ? WHERE {free}"
            " AND delivery_id = (SELECT delivery_id FROM alert_outbox"
            f" WHERE {free} AND next_attempt_at <= ?"
            " ORDER BY position, delivery_id LIMIT 1)",
            (owner, now + LEASE_SECONDS, now, now, now),
        )
        if not changed:
            return None
        rows = tx.query(
            "SELECT delivery_id, payload, attempts FROM alert_outbox WHERE lease_owner = ?",
            (owner,),
        )
        if not rows:
            return None
        the_id, payload, attempts = rows[0]
        return Delivery(str(the_id), str(payload), int(attempts))

    def _due_in(self, tx: SqlTx) -> float | None:
        """Seconds until the next undelivered row is due (or its lease ends); None: none."""
        rows = tx.query(
            "SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt_at"
            " THEN lease_until ELSE next_attempt_at END)"
            " FROM alert_outbox WHERE delivered_at IS NULL"
        )
        if not rows or rows[0][0] is None:
            return None
        return float(rows[0][0]) - self._now()

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        assert self.url is not None
        error: str | None = None
        receiver_down = False  # a failure of the receiver rather than a refusal of this request
        try:
            response = await client.post(
                self.url,
                content=delivery.payload.encode(),
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": delivery.delivery_id,
                    "User-Agent": "lockerd-alerts",
                },
            )
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
                receiver_down = response.status_code >= 500 or response.status_code in (408, 429)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            receiver_down = True
        self.observe("delivered" if error is None else "failed")
        if error is None:
            await self.tables.write(self._delivered(delivery))
            log.info("alert_delivered", delivery_id=delivery.delivery_id)
            return
        delay = self.backoff.delay(delivery.attempts + 1)
        await self.tables.write(self._failed(delivery, error, delay, hold_others=receiver_down))
        log.warning(
            "alert_delivery_failed",
            delivery_id=delivery.delivery_id,
            attempts=delivery.attempts + 1,
            error=error,
            retry_in=round(delay, 3),
        )

    def _delivered(self, delivery: Delivery) -> Callable[[SqlTx], None]:
        def write(tx: SqlTx) -> None:
            tx.execute(
                "UPDATE alert_outbox SET delivered_at = ?, outcome = 'delivered',"
                " attempts = attempts + 1, lease_owner = NULL, lease_until = NULL"
                " WHERE delivery_id = ?",
                (self._now(), delivery.delivery_id),
            )

        return write

    def _failed(
        self, delivery: Delivery, error: str, delay: float, *, hold_others: bool
    ) -> Callable[[SqlTx], None]:
        def write(tx: SqlTx) -> None:
            retry_at = self._now() + delay
            tx.execute(
                "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE delivery_id = ? AND delivered_at IS NULL",
                (retry_at, error, delivery.delivery_id),
            )
            if not hold_others:
                return  # this request was refused (a 4xx): the others go on meanwhile
            # the receiver is down: the rows after this one wait as long (in order, and one
            # request per backoff period rather than one per alert)
            tx.execute(
                "UPDATE alert_outbox SET next_attempt_at = ?"
                " WHERE delivered_at IS NULL AND next_attempt_at < ?",
                (retry_at, retry_at),
            )

        return write
