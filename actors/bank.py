"""The bank actor: the imperative shell around ``decide`` and ``evolve``.

One incarnation loads the bank (snapshot + tail of events), then handles its mailbox in
*batches*: it takes the next message and, without waiting, every message already queued
behind it (at most :data:`MAX_BATCH`), decides each in turn against the state the ones before
it lead to (at the actor's clock), appends all their durable events in one append with the
expected version, folds them in, and only then acts on them, message by message in their
order (acknowledge, hand device messages to the dispatcher, answer), updating the fleet view,
the listeners and the next deadline once. The result is the same as handling the messages
one at a time; under load it costs one append (one commit, one round trip to the store's
thread) for many messages instead of one each, and a message queued behind another no longer
waits for the other's commit before its own. An idle bank's batch is one message.

If anything raises, the incarnation dies; its supervisor starts a new one, which rebuilds the
state from the store, so no half-applied change survives a crash. The message being handled
gets an error answer, never silence, and is dropped (counted ``actor_crashed`` and logged),
never handed to the next incarnation: one bad message cannot crash an actor twice. Batches
keep this one-message semantics: a message on which ``decide`` itself raises (a bug) crashes
the actor alone (the messages of its batch before it are stored and answered first, those
behind it stay in the mailbox), and when the append of a batch fails (below) only its first
message goes down with the actor; the others are handed back to the front of the mailbox
(:meth:`~actors.mailbox.Mailbox.put_back`) for the next incarnation, as if never taken.

An append can fail in two ways, told apart here. The store is down or another writer got there
first (``ConcurrencyError``, or one of ``BankServices.transient_store_errors``, the store's
``StoreUnavailable`` in production): that is the crash above, the restart reloads. Any other
append failure is this message's fault (a value the database cannot hold, e.g. PostgreSQL's
``DataError`` for NUL in text): nothing was stored, so the state is unchanged; the message is
dropped (counted ``store_rejected``, logged), its asker gets a rejection (``invalid``), and the
actor carries on. When that happens to a batch of several messages, nothing of it was stored,
so each of its messages is handled again on its own, which finds the one to refuse. The
boundaries refuse such values first; this is the safety net.

A bank whose actor has failed (past its restart budget) still gets its deadlines: the registry
runs a *deadlines-only* incarnation (``deadlines_only=True``) that handles ticks and the
consequences of work done before the failure (``MarkDispatched``, a failed provisioning
reply), so its pending commands end ``timeout`` on time; every other message is refused.

Imports: the domain and this package's own ports (``actors.ports``); never a gateway, HTTP or
application module.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
import trio

from actors.dispatcher import Delivery, Dispatcher
from actors.fleet import FleetView
from actors.mailbox import Mailbox
from actors.ports import ActorObserver, EventLog, StoredEventListener
from actors.timers import TimerService
from domain import commands as c
from domain import events as e
from domain.actor import Actor
from domain.bank import decide, fold
from domain.outbound import ProvisioningGranted, ProvisioningRefused, device_command
from domain.records import ConcurrencyError, NewEvent, Snapshot, StoredEvent
from domain.snapshot import decode_snapshot, encode_snapshot, snapshot_interval
from domain.state import BankState

log = structlog.get_logger("lockerd.bank")

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What handling one command did: the state after it and the events it caused.

    ``rejected`` is set when ``decide`` refused the command (nothing changed); ``crashed``
    when the actor died on it (nothing of it was applied).
    """

    state: BankState
    events: tuple[e.Event, ...] = ()
    stored: tuple[StoredEvent, ...] = ()
    rejected: c.CommandRejected | None = None
    crashed: str | None = None


@dataclass(slots=True, eq=False)  # compared by identity: the actor tracks the ones in hand
class Envelope:
    command: c.BankCommand
    kind: str | None = None  # inbound message kind, for the processed/dropped counter
    reply: trio.MemorySendChannel[Outcome] | None = None
    secret: str | None = None  # the plaintext password for a provisioning reply; never stored
    # Called exactly once when the command has been applied (its events stored), rejected,
    # found a duplicate, or crashed the actor; never when storing its events failed (the
    # store is down: the device message stays unacknowledged and the broker delivers it
    # again) or the actor was cancelled with it. For a device message it is the PUBACK.
    on_done: Callable[[], None] | None = None

    def done(self) -> None:
        """Call ``on_done`` if it has not been called (or withheld) yet."""
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            try:
                on_done()
            except Exception as exc:  # an acknowledgement must never crash the actor
                log.error("on_done_failed", error=repr(exc))

    def withhold(self) -> None:
        """Never call ``on_done``: the command was not applied and must come again."""
        self.on_done = None


@dataclass(slots=True)
class BankServices:
    """Everything a bank actor works with; built once by the composition root."""

    store: EventLog
    fleet: FleetView
    dispatcher: Dispatcher
    timers: TimerService
    observer: ActorObserver
    clock: Clock
    #: events between two snapshots of a bank, at least: more for a bank that remembers many
    #: transactions (:func:`domain.snapshot.snapshot_interval`)
    snapshot_every: int = 100
    listeners: list[StoredEventListener] = field(default_factory=list)
    #: what the store raises when it is down (not the event's fault): an append failing with
    #: one of these (or ``ConcurrencyError``) crashes the actor; any other failure refuses the
    #: message alone (see the module doc)
    transient_store_errors: tuple[type[Exception], ...] = ()
    #: More than one node: ``CommandDispatched`` is stored with the request, before the
    #: publish, so an owner that takes over after a crash never publishes a command the dead
    #: node may already have published (a crash in between ends in ``timeout``, never twice).
    record_dispatch_first: bool = False
    #: More than one node: a message being handled is finished even when the actor is stopped
    #: (its bank moves to another node), so a handover never leaves an asker without an answer.
    finish_in_flight: bool = False


#: What a failed bank's deadlines-only incarnation still handles (internal messages only).
DEADLINE_COMMANDS = (c.Tick, c.MarkDispatched, c.RecordProvisioningReplyFailed)
#: What a failed bank still answers when asked: an operator acknowledging one of its alerts
#: (its ``bank_actor_failed`` alert above all) needs no working actor, only the store.
FAILED_BANK_ASKS = (c.AcknowledgeAlert,)
UNSTORABLE = c.CommandRejected("invalid", "the request holds a value that cannot be stored")
#: Most messages handled in one batch (one append). Bounded so that one batch's append, and
#: the wait of the first message in it, stay short however deep the mailbox is.
MAX_BATCH = 32


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``decide`` made of one message of a batch: its events (or its rejection) and the
    bank's state once the messages of the batch up to and including it are applied."""

    envelope: Envelope
    events: list[e.Event]
    rejected: c.CommandRejected | None
    after: BankState


_OUTCOME_STATUS: dict[type[e.Event], str] = {
    e.CompartmentOpened: "success",
    e.ConfigApplied: "success",
    e.CommandFailed: "error",
    e.CommandTimedOut: "timeout",
}


class BankActor:
    """One incarnation of a bank's actor."""

    def __init__(
        self,
        bank_id: str,
        mailbox: Mailbox[Envelope],
        services: BankServices,
        *,
        deadlines_only: bool = False,
        failure: c.RecordActorFailed | None = None,
        restarted_by: Actor | None = None,
    ) -> None:
        self.bank_id = bank_id
        self.mailbox = mailbox
        self.s = services
        self.deadlines_only = deadlines_only
        #: why the bank failed, recorded by its deadlines-only incarnation (``BankActorFailed``)
        self.failure = failure
        #: the operator whose restart started this incarnation (recorded with the restart)
        self.restarted_by = restarted_by
        self.state = BankState()
        self._snapshot_version = 0
        #: the messages taken from the mailbox and not answered yet, in mailbox order
        self._in_hand: list[Envelope] = []

    async def run(self) -> None:
        await self._load()
        await self._record_supervision()
        if not self.deadlines_only:
            await self._resume_outbox()
        self._publish_status()
        self.s.timers.schedule(self.bank_id, self.state.next_deadline())
        while True:
            envelope = await self.mailbox.get()
            if self.deadlines_only and not _keeps_deadlines(envelope):
                self.refuse_failed(envelope)
                continue
            with trio.CancelScope(shield=self.s.finish_in_flight):
                try:
                    await self._handle_batch(envelope)
                except BaseException as exc:
                    self._drop_in_hand(exc)
                    raise

    def _drop_in_hand(self, exc: BaseException) -> None:
        """The actor dies on ``exc``: answer every message it holds and has not answered."""
        in_hand, self._in_hand = self._in_hand, []
        for envelope in in_hand:
            self._answer(envelope, Outcome(self.state, crashed=repr(exc)))
            if not isinstance(exc, trio.Cancelled):
                self._drop_failed(envelope, "actor_crashed", exc)
                # a message that crashed the actor must not come back forever
                envelope.done()

    def refuse_failed(self, envelope: Envelope) -> None:
        """Answer and count a message that a failed bank does not handle."""
        self.s.observer.message_dropped(envelope.kind, "bank_failed")
        self._answer(envelope, Outcome(self.state, crashed="bank actor failed"))
        envelope.done()

    async def _load(self) -> None:
        state = BankState()
        snapshot = await self.s.store.load_snapshot(self.bank_id)
        if snapshot is not None:
            try:
                state = decode_snapshot(snapshot.state)
            except ValueError as exc:
                log.warning("snapshot_ignored", bank_id=self.bank_id, error=repr(exc))
                state = BankState()
        tail = await self.s.store.read_stream(self.bank_id, after_version=state.version)
        state = fold(state, [e.event_from_stored(ev.type, dict(ev.data)) for ev in tail])
        self.state = state.rehydrated()
        self._snapshot_version = snapshot.version if snapshot is not None else 0

    async def _record_supervision(self) -> None:
        """Make the bank's failure durable and auditable: a failed bank's deadlines-only
        incarnation records ``BankActorFailed`` (once: it is tried again on every start until
        it is stored), a working incarnation of a bank recorded as failed records
        ``BankActorRestarted``, which resolves the alert; after an operator's restart it names
        the operator (and is recorded even if the failure could not be)."""
        if not self.state.exists:
            return
        if self.deadlines_only and self.failure is not None and not self.state.actor_failed:
            await self._handle(Envelope(self.failure))
        elif not self.deadlines_only and (self.state.actor_failed or self.restarted_by):
            await self._handle(Envelope(c.RecordActorRestarted(actor=self.restarted_by)))

    async def _resume_outbox(self) -> None:
        """Publish commands that were recorded but never acknowledged by the broker.

        This is the outbox: a crash between recording a request and publishing it must not
        lose the command. Expired ones are left to time out; the device must not act on them.
        """
        now = self.s.clock()
        if self.state.decommissioned:
            return  # its credentials are revoked: nothing is published to it any more
        for tx in self.state.pending():
            if not tx.dispatched and tx.expires_at > now:
                if self.s.record_dispatch_first:
                    # recorded before it goes out, as every command is with several nodes
                    await self._handle(Envelope(c.MarkDispatched(tx.transaction_id)))
                await self._dispatch_command(self.state, tx.transaction_id, now)

    async def _handle(self, envelope: Envelope) -> None:
        """Handle one message on its own (a batch of one)."""
        self._in_hand.append(envelope)
        await self._commit([self._decide(self.state, envelope, self.s.clock())])

    async def _handle_batch(self, first: Envelope) -> None:
        """Handle ``first`` and the messages queued behind it as one batch (module doc)."""
        self._in_hand.append(first)
        now = self.s.clock()
        batch: list[Decision] = []
        state = self.state
        envelope: Envelope | None = first
        while envelope is not None:
            if envelope is not first:
                self._in_hand.append(envelope)
            try:
                decision = self._decide(state, envelope, now)
            except Exception:
                # a bug in decide: the messages before this one are handled as ever, this one
                # crashes the actor (run() answers and drops it)
                self._in_hand.pop()
                try:
                    if batch:
                        await self._commit(batch)
                finally:
                    self._in_hand.append(envelope)
                raise
            batch.append(decision)
            state = decision.after
            if self.deadlines_only or len(batch) >= MAX_BATCH:
                break
            envelope = self.mailbox.get_nowait()
        await self._commit(batch)

    def _decide(self, state: BankState, envelope: Envelope, now: datetime) -> Decision:
        """``decide`` for one message against ``state``; raises only what decide raises
        other than a rejection (a bug)."""
        try:
            decided = decide(state, envelope.command, now)
        except c.CommandRejected as rejection:
            return Decision(envelope, [], rejection, state)
        if self.s.record_dispatch_first:
            decided, after = _with_dispatch_records(state, decided, now)
        else:
            after = fold(state, decided)
        return Decision(envelope, decided, None, after)

    async def _commit(self, batch: list[Decision]) -> None:
        """Append the batch's durable events in one append, then finish its messages in order.

        The messages of ``batch`` are the first ones of ``self._in_hand``; each leaves it once
        answered.
        """
        now = self.s.clock()
        # each message's durable events, once: appended together, then split among the answers
        durable_of = [[ev for ev in d.events if e.is_durable(ev)] for d in batch]
        durable = [ev for events in durable_of for ev in events]
        stored: list[StoredEvent] = []
        if durable:
            started = trio.current_time()
            try:
                stored = await self.s.store.append(
                    self.bank_id,
                    self.state.version,
                    [NewEvent(e.event_type(ev), e.event_data(ev)) for ev in durable],
                )
            except ConcurrencyError:
                # another writer got there first: crash, the restart reloads; not applied, so
                # a device message must be delivered again, not acknowledged
                self._hand_back(batch)
                raise
            except Exception as exc:
                if isinstance(exc, self.s.transient_store_errors):
                    self._hand_back(batch)  # the store is down: crash, redelivered later
                    raise
                if len(batch) > 1:
                    # nothing was stored: find the message at fault by handling each alone
                    for decision in batch:
                        await self._commit([self._decide(self.state, decision.envelope, now)])
                    return
                self._refuse_unstorable(batch[0].envelope, durable, exc)  # acknowledged
                return
            except BaseException:
                self._hand_back(batch)  # cancelled: not applied
                raise
            self.s.observer.append_took(trio.current_time() - started)
        self.state = batch[-1].after
        if stored:
            for listener in self.s.listeners:
                listener(self.bank_id, stored)
        for decision in batch:
            await self._apply(decision, now)
        self._publish_status([ev for d in batch for ev in d.events])
        self.s.timers.schedule(self.bank_id, self.state.next_deadline())
        position = 0
        for decision, own_durable in zip(batch, durable_of, strict=True):
            count = len(own_durable)
            if decision.rejected is not None:
                outcome = Outcome(decision.after, rejected=decision.rejected)
            else:
                own = tuple(stored[position : position + count])
                outcome = Outcome(decision.after, tuple(decision.events), own)
            position += count
            self._answer(decision.envelope, outcome)
            self._in_hand.remove(decision.envelope)
        interval = snapshot_interval(self.s.snapshot_every, len(self.state.transactions))
        if self.state.version - self._snapshot_version >= interval:
            state = self.state
            # encoding grows with the remembered transactions (about 35 ms at 10,000): off
            # the loop, so that other banks and HTTP are not stalled meanwhile (the state is
            # immutable, so the thread can read it while this actor waits)
            encoded = await trio.to_thread.run_sync(encode_snapshot, state)
            await self.s.store.save_snapshot(Snapshot(self.bank_id, state.version, encoded))
            self._snapshot_version = state.version

    def _hand_back(self, batch: list[Decision]) -> None:
        """Nothing of ``batch`` was applied and the actor is about to die: its first message
        goes down with it, unacknowledged (``run`` answers it); the others go back to the
        front of the mailbox, for the next incarnation."""
        first, *rest = (decision.envelope for decision in batch)
        first.withhold()
        for envelope in rest:
            self._in_hand.remove(envelope)
        self.mailbox.put_back(rest)

    async def _apply(self, decision: Decision, now: datetime) -> None:
        """Acknowledge, count and act on one message whose events are stored."""
        envelope = decision.envelope
        observer = self.s.observer
        rejection = decision.rejected
        if rejection is not None:
            observer.message_dropped(envelope.kind, rejection.code)
            if envelope.kind is not None:
                log.info(
                    "message_dropped",
                    bank_id=self.bank_id,
                    kind=envelope.kind,
                    reason=rejection.code,
                    detail=rejection.message,
                )
            envelope.done()
            return
        envelope.done()
        if envelope.kind is not None:
            if decision.events:
                observer.message_processed(envelope.kind)
            else:
                observer.message_dropped(envelope.kind, "duplicate")
        await self._react(envelope, decision.events, now, decision.after)

    def _refuse_unstorable(
        self, envelope: Envelope, durable: list[e.Event], error: Exception
    ) -> None:
        """The store refused this message's events: drop it alone, the state is unchanged."""
        event_types = [e.event_type(ev) for ev in durable]
        self._drop_failed(envelope, "store_rejected", error, event_types=event_types)
        self._answer(envelope, Outcome(self.state, rejected=UNSTORABLE))
        self._in_hand.remove(envelope)
        envelope.done()  # it can never be stored: it must not come back

    def _drop_failed(
        self, envelope: Envelope, reason: str, error: BaseException, **detail: Any
    ) -> None:
        """Count and log ``envelope`` as dropped because handling it failed (``reason``)."""
        self.s.observer.message_dropped(envelope.kind, reason)
        log.error(
            "message_dropped",
            bank_id=self.bank_id,
            kind=envelope.kind,
            reason=reason,
            command=type(envelope.command).__name__,
            **detail,
            error=repr(error),
        )

    def _answer(self, envelope: Envelope, outcome: Outcome) -> None:
        if envelope.reply is not None:
            # the asker may have given up waiting
            with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                envelope.reply.send_nowait(outcome)
            envelope.reply = None

    async def _react(
        self, envelope: Envelope, decided: list[e.Event], now: datetime, state: BankState
    ) -> None:
        """Act on one message's events; ``state``: the bank once they are applied."""
        for event in decided:
            match event:
                case e.CompartmentOpeningRequested() | e.ConfigApplyRequested():
                    await self._dispatch_command(state, event.transaction_id, now)
                case e.LockerBankProvisioned():
                    await self._reply_provisioned(event, envelope.secret or "")
                case e.ProvisioningFailed() | e.RegistrationRefused():
                    await self.s.dispatcher.submit(
                        Delivery(ProvisioningRefused(event.client_id, event.reason))
                    )
                case e.CompartmentOpened() | e.ConfigApplied() | e.CommandFailed():
                    action = state.transactions[event.transaction_id].action
                    self.s.observer.command_finished(action, _OUTCOME_STATUS[type(event)])
                case e.CommandTimedOut():
                    self.s.observer.command_finished(event.action, "timeout")
                case _:
                    pass
            if e.is_durable(event) and not isinstance(event, e.CommandDispatched):
                log.info(
                    "bank_event",
                    bank_id=self.bank_id,
                    event_type=e.event_type(event),
                    transaction_id=getattr(event, "transaction_id", None),
                )

    async def _dispatch_command(self, state: BankState, transaction_id: str, now: datetime) -> None:
        tx = state.transactions[transaction_id]
        mailbox = self.mailbox

        async def sent() -> None:
            await mailbox.put(Envelope(c.MarkDispatched(transaction_id)))

        remaining = (tx.expires_at - now).total_seconds()
        await self.s.dispatcher.submit(
            Delivery(
                device_command(state, tx),
                deadline=trio.current_time() + remaining,
                on_sent=None if self.s.record_dispatch_first else sent,
            )
        )

    async def _reply_provisioned(self, event: e.LockerBankProvisioned, password: str) -> None:
        mailbox = self.mailbox

        async def failed(reason: str) -> None:
            await mailbox.put(
                Envelope(c.RecordProvisioningReplyFailed(event.client_id, event.mqtt_user, reason))
            )

        await self.s.dispatcher.submit(
            Delivery(
                ProvisioningGranted(event.client_id, self.bank_id, event.mqtt_user, password),
                deadline=trio.current_time() + 30.0,
                on_failed=failed,
            )
        )

    def _publish_status(self, decided: list[e.Event] | None = None) -> None:
        state = self.state
        if not state.exists:
            return  # no bank (yet, or a refused creation): nothing to show
        status = self.s.fleet.status(self.bank_id, state.name)
        if decided is not None and all(type(ev) is e.HeartbeatReceived for ev in decided):
            # the steady state of a fleet: only liveness changed, skip the full refresh
            status.last_seen = state.last_seen
            status.mailbox = self.mailbox.depth
            self.s.fleet.changed(self.bank_id)
            return
        status.name = state.name
        status.location = state.location
        status.presence = state.presence
        if state.last_seen is not None:  # keep the persisted last_seen until a heartbeat
            status.last_seen = state.last_seen
        status.pending_commands = len(state.pending_ids)
        status.mailbox = self.mailbox.depth
        status.doors = {n: comp.door_state for n, comp in state.compartments.items()}
        status.config_hash = state.config_hash
        status.applied_config_hash = state.applied_config_hash
        status.decommissioned = state.decommissioned
        status.out_of_service = sorted(
            n for n, comp in state.compartments.items() if comp.out_of_service
        )
        self.s.fleet.changed(self.bank_id)


def _with_dispatch_records(
    state: BankState, decided: list[e.Event], now: datetime
) -> tuple[list[e.Event], BankState]:
    """``decided`` (decided against ``state``) plus a ``CommandDispatched`` for every command
    it requests, so the request and its dispatch record are appended in one transaction (no
    extra round trip on the open path), and the state they all lead to (folded once)."""
    interim = fold(state, decided)
    requested = [
        ev.transaction_id
        for ev in decided
        if isinstance(ev, (e.CompartmentOpeningRequested, e.ConfigApplyRequested))
    ]
    if not requested:
        return decided, interim
    records: list[e.Event] = []
    for transaction_id in requested:
        records += decide(interim, c.MarkDispatched(transaction_id), now)
    return [*decided, *records], fold(interim, records)


def _keeps_deadlines(envelope: Envelope) -> bool:
    """Whether a failed bank's deadlines-only incarnation handles this message."""
    if isinstance(envelope.command, FAILED_BANK_ASKS):
        return True
    return (
        envelope.kind is None
        and envelope.reply is None
        and isinstance(envelope.command, DEADLINE_COMMANDS)
    )
