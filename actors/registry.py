"""Where bank actors live: started on demand, supervised, addressed by bank id.

A message for a known bank whose actor is not running starts it (virtual actors, as in
Orleans); only a ``CreateBank`` may start the actor of a bank the directory does not know yet,
and if the bank does not exist once that creation is decided (refused, or the store failed),
the actor is stopped and forgotten again: a refused creation leaves nothing behind, in the
fleet view or anywhere else.

All bank actors share one supervisor that does not escalate: a bank that exceeds its restart
budget is ``failed``. It answers every request with :class:`BankUnavailable` and shows up on the
dashboard with the error that failed it, while the rest of the fleet carries on; and its
deadlines still fire: a *deadlines-only* incarnation (see :mod:`actors.bank`) handles the
timer's ticks, so its pending commands end ``timeout`` on time. :meth:`BankRegistry.restart`
starts a failed bank's actor again with a fresh budget.

With more than one node (a :class:`BankPlacement`), a bank owned elsewhere is asked there, and
:meth:`BankRegistry.stop` hands this node's actors over when their banks move away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import trio
import trio.lowlevel

from actors.bank import FAILED_BANK_ASKS, BankActor, BankServices, Envelope, Outcome
from actors.mailbox import Mailbox, MailboxFull
from actors.ports import BankCatalog
from actors.supervisor import ChildInfo, RestartPolicy, Supervisor
from domain import commands as c
from domain.actor import Actor
from domain.state import BankState

log = structlog.get_logger("lockerd.registry")

#: How soon a failed bank's deadlines-only incarnation is tried again after it crashed (the
#: store is down, say), doubling up to the maximum.
DEADLINES_RETRY_INITIAL = 0.5
DEADLINES_RETRY_MAX = 30.0


NOT_FAILED = c.CommandRejected(
    "not_failed", "the locker bank's actor has not failed: there is nothing to restart"
)


def _error_type(last_error: str | None) -> str | None:
    """The class name in a supervisor's ``last_error`` (``repr`` of the exception)."""
    if not last_error:
        return None
    return last_error.split("(", 1)[0].strip() or None


class BankUnavailable(Exception):
    """The bank's actor crashed on this message, has failed, or did not answer in time.

    The message is meant for clients (an HTTP 503): it never carries an error's text, which
    goes to the log and, for a failed bank, to the fleet view (``last_error``).
    """


class UnknownBank(Exception):
    pass


class NotOwner(Exception):
    """This node does not own the bank (more than one node): ask its owner."""


class BankCameHere(Exception):
    """Raised by a placement: while it looked for the bank's owner, this node became it."""


#: ``Outcome.crashed`` of a message that was still queued when its bank's actor was handed
#: over to another node: nothing of it was applied, and the registry sends it on to the owner.
MOVED = "bank moved to another node"


class BankPlacement(Protocol):
    """Where banks live when there is more than one node (``lockerd.cluster``).

    Without a placement every bank lives here. With one, a message for a bank this node does
    not own is handed to :meth:`ask_remote` / :meth:`tell_remote`, which deliver it to the
    owner; a timer tick for such a bank is dropped (its owner has its own timers).
    """

    def is_local(self, bank_id: str) -> bool: ...

    async def ask_remote(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None,
        secret: str | None,
        allow_new: bool,
    ) -> Outcome:
        """The owner's outcome; raises UnknownBank, BankUnavailable or trio.TooSlowError."""
        ...

    async def tell_remote(self, bank_id: str, command: c.BankCommand, *, kind: str | None) -> None:
        """Deliver to the owner without waiting for the outcome (dropped, counted, if stale)."""
        ...


@dataclass(slots=True)
class BankEntry:
    bank_id: str
    mailbox: Mailbox[Envelope]
    child: ChildInfo | None = None
    #: set when the actor is being stopped for good (its bank moves to another node)
    stopping: bool = False
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)
    #: the deadlines-only incarnation's scope while the bank is failed
    deadlines: trio.CancelScope | None = None
    deadlines_done: trio.Event | None = None
    restarting: bool = False

    @property
    def failed(self) -> bool:
        return self.child is not None and self.child.status == "failed"


class BankRegistry:
    def __init__(
        self,
        nursery: trio.Nursery,
        services: BankServices,
        catalog: BankCatalog,
        *,
        mailbox_capacity: int = 1000,
        policy: RestartPolicy = RestartPolicy(),
        ask_timeout: float = 10.0,
        placement: BankPlacement | None = None,
    ) -> None:
        self.services = services
        self.placement = placement
        self.catalog = catalog
        self.mailbox_capacity = mailbox_capacity
        self.ask_timeout = ask_timeout
        self.policy = policy
        self.entries: dict[str, BankEntry] = {}
        self._nursery = nursery
        self.supervisor = Supervisor(
            nursery, name="banks", policy=policy, escalate=False, on_change=self._child_changed
        )

    def is_known(self, bank_id: str) -> bool:
        return bank_id in self.entries or self.catalog.is_bank(bank_id)

    def is_failed(self, bank_id: str) -> bool:
        entry = self.entries.get(bank_id)
        return entry is not None and entry.failed

    def _entry(self, bank_id: str, *, allow_new: bool = False) -> BankEntry:
        entry = self.entries.get(bank_id)
        if entry is not None:
            return entry
        if not allow_new and not self.catalog.is_bank(bank_id):
            raise UnknownBank(bank_id)
        entry = self.entries[bank_id] = BankEntry(bank_id, Mailbox(self.mailbox_capacity))
        self._start_actor(entry)
        self.services.observer.bank_actors_running(len(self.entries))
        return entry

    def _start_actor(self, entry: BankEntry, restarted_by: Actor | None = None) -> None:
        """Supervise the bank's actor; ``restarted_by``: the operator whose restart this is
        (its first incarnation records the restart with them)."""
        services = self.services
        mailbox = entry.mailbox
        bank_id = entry.bank_id
        entry.stopped = trio.Event()
        by = [restarted_by]

        async def incarnation() -> None:
            if entry.stopping:
                return
            with trio.CancelScope() as scope:
                entry.scope = scope
                restarted, by[0] = by[0], None  # the first incarnation only
                await BankActor(bank_id, mailbox, services, restarted_by=restarted).run()

        entry.child = self.supervisor.start_child(bank_id, incarnation)

    def _forget(self, bank_id: str) -> None:
        """Stop and drop the actor of a bank that does not exist (a creation that failed)."""
        if self.catalog.is_bank(bank_id):
            return
        entry = self.entries.pop(bank_id, None)
        if entry is None:
            return
        self.supervisor.stop_child(bank_id)
        self.services.observer.bank_actors_running(len(self.entries))
        log.info("bank_actor_forgotten", bank_id=bank_id, reason="bank was not created")

    def _child_changed(self, child: ChildInfo) -> None:
        entry = self.entries.get(child.name)
        if entry is None or entry.child is not child:
            return  # a forgotten bank's actor, or an incarnation replaced by a restart
        observer = self.services.observer
        if child.status == "restarting":
            observer.bank_actor_restarted()
        if child.status == "failed":
            observer.bank_actor_failed()
            self._drain_failed(entry)
            # the scope exists before the task runs, so a restart right away can cancel it
            scope = entry.deadlines = trio.CancelScope()
            done = entry.deadlines_done = trio.Event()
            self._nursery.start_soon(
                self._keep_deadlines, entry, scope, done, name=f"deadlines:{child.name}"
            )
        if child.status in ("failed", "stopped"):
            entry.stopped.set()
        self._show_supervision(child)

    def _show_supervision(self, child: ChildInfo) -> None:
        fleet = self.services.fleet
        if child.name not in fleet.banks and not self.catalog.is_bank(child.name):
            return  # not created (yet): nothing to show
        status = fleet.status(child.name)
        status.supervision = child.status
        status.restarts = child.restarts
        status.last_error = child.last_error
        fleet.changed(child.name)

    def _drain_failed(self, entry: BankEntry) -> None:
        """Answer every request waiting for a bank that has just failed; keep what its
        deadlines-only incarnation handles (the messages it cannot handle it refuses too)."""
        keep: list[Envelope] = []
        while (envelope := entry.mailbox.get_nowait()) is not None:
            if envelope.kind is None and envelope.reply is None:
                keep.append(envelope)
                continue
            self.services.observer.message_dropped(envelope.kind, "bank_failed")
            envelope.done()
            if envelope.reply is not None:
                # the asker may have given up waiting
                with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    envelope.reply.send_nowait(Outcome(BankState(), crashed="bank actor failed"))
        for envelope in keep:
            entry.mailbox.put_nowait(envelope)

    async def _keep_deadlines(
        self, entry: BankEntry, scope: trio.CancelScope, done: trio.Event
    ) -> None:
        """Run the failed bank's deadlines-only incarnation until :meth:`restart` cancels it;
        if it crashes too (the store is down, say), try again with a growing delay."""
        try:
            with scope:
                delay = DEADLINES_RETRY_INITIAL
                child = entry.child
                failure = c.RecordActorFailed(
                    restarts=child.restarts if child is not None else 0,
                    error_type=_error_type(child.last_error if child is not None else None),
                )
                while True:
                    actor = BankActor(
                        entry.bank_id,
                        entry.mailbox,
                        self.services,
                        deadlines_only=True,
                        failure=failure,
                    )
                    started = trio.current_time()
                    try:
                        await actor.run()
                    except Exception as exc:
                        if trio.current_time() - started > DEADLINES_RETRY_MAX:
                            delay = DEADLINES_RETRY_INITIAL  # it ran well for a while
                        log.warning(
                            "failed_bank_deadlines_crashed",
                            bank_id=entry.bank_id,
                            error=repr(exc),
                            retry_in=delay,
                        )
                    await trio.sleep(delay)
                    delay = min(delay * 2, DEADLINES_RETRY_MAX)
        finally:
            done.set()

    async def restart(self, bank_id: str, actor: Actor | None = None) -> bool:
        """Start a failed bank's actor again, with a fresh restart budget.

        Returns True when the bank had failed and its actor has been started again (its
        deadlines-only incarnation has stopped first; the new actor reloads the bank from the
        store and records ``BankActorRestarted`` naming ``actor``), False when it had not
        failed (nothing is done: a running bank needs no restart, and one without an actor
        starts with its next message). Raises :class:`UnknownBank` for an id that names no bank.
        """
        entry = self.entries.get(bank_id)
        if entry is None:
            if not self.catalog.is_bank(bank_id):
                raise UnknownBank(bank_id)
            return False
        if not entry.failed or entry.restarting or entry.stopping:
            return False
        entry.restarting = True
        try:
            scope, done = entry.deadlines, entry.deadlines_done
            entry.deadlines = entry.deadlines_done = None
            if scope is not None and done is not None:
                scope.cancel()
                await done.wait()  # one reader of the mailbox at a time
            self._start_actor(entry, restarted_by=actor)
        finally:
            entry.restarting = False
        self.services.observer.bank_actor_recovered()
        log.info("bank_actor_restarted_by_operator", bank_id=bank_id)
        return True

    async def ask(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None = None,
        secret: str | None = None,
        allow_new: bool = False,
        on_done: Callable[[], None] | None = None,
    ) -> Outcome:
        """Send a command and wait for its outcome; raises UnknownBank or BankUnavailable.

        A bank owned by another node is asked there (through the placement). With
        ``allow_new`` (a ``CreateBank`` for a bank nobody knows yet) the actor is started for
        the occasion and forgotten again if the bank does not exist afterwards.

        ``on_done`` (see :class:`~actors.bank.Envelope`) is called when the bank has handled
        the command, at once when the bank has failed, and when a remote owner answered; not
        when it never got into a mailbox (too slow).
        """
        placement = self.placement
        with trio.fail_after(self.ask_timeout):
            while True:
                if placement is not None and not placement.is_local(bank_id):
                    try:
                        remote = await placement.ask_remote(
                            bank_id, command, kind=kind, secret=secret, allow_new=allow_new
                        )
                    except BankCameHere:
                        continue
                    if on_done is not None:
                        on_done()  # the owner has handled it
                    return remote
                try:
                    outcome = await self.ask_local(
                        bank_id,
                        command,
                        kind=kind,
                        secret=secret,
                        allow_new=allow_new,
                        on_done=on_done,
                    )
                except NotOwner:
                    continue  # it moved away between the two looks
                if outcome.crashed == MOVED and placement is not None:
                    # the handover is under way: ask wherever the bank is now
                    await trio.lowlevel.checkpoint()
                    continue
                if outcome.crashed is not None:
                    entry = self.entries.get(bank_id)
                    if entry is not None and entry.failed:
                        raise BankUnavailable(self._failed_message(entry))
                    raise BankUnavailable(
                        f"locker bank {bank_id} could not handle the request (its actor crashed"
                        " and is restarting); nothing was changed, try again"
                    )
                return outcome

    async def ask_local(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None = None,
        secret: str | None = None,
        allow_new: bool = False,
        on_done: Callable[[], None] | None = None,
    ) -> Outcome:
        """Ask the actor on this node; raises :class:`NotOwner` for a bank owned elsewhere.

        Unlike :meth:`ask`, a crashed outcome is returned, not raised (``MOVED`` included:
        then ``on_done`` has not been called and goes with the command to the new owner).
        """
        if self.placement is not None and not self.placement.is_local(bank_id):
            raise NotOwner(bank_id)
        if isinstance(command, c.RecordActorRestarted) and command.actor is not None:
            # an operator's restart, asked of the owner like any command (so it works on every
            # node): the restarted actor records it first; the command itself, queued behind
            # that, changes nothing and answers once the restart is recorded
            if not await self.restart(bank_id, actor=command.actor):
                return Outcome(BankState(), rejected=NOT_FAILED)
            command = c.RecordActorRestarted()
        entry = self._entry(bank_id, allow_new=allow_new)
        if entry.stopping:
            return Outcome(BankState(), crashed=MOVED)
        if entry.failed and not isinstance(command, FAILED_BANK_ASKS):
            self.services.observer.message_dropped(kind, "bank_failed")
            if on_done is not None:
                on_done()
            raise BankUnavailable(self._failed_message(entry))
        send, receive = trio.open_memory_channel[Outcome](1)
        outcome: Outcome | None = None
        try:
            with trio.fail_after(self.ask_timeout):
                await entry.mailbox.put(Envelope(command, kind, send, secret, on_done))
                outcome = await receive.receive()
        finally:
            if allow_new and (outcome is None or outcome.crashed != MOVED):
                if outcome is None or not outcome.state.exists:
                    self._forget(bank_id)  # a creation that did not happen leaves nothing
                elif entry.child is not None:
                    self._show_supervision(entry.child)  # now that there is a bank to show
        return outcome

    @staticmethod
    def _failed_message(entry: BankEntry) -> str:
        restarts = entry.child.restarts if entry.child is not None else 0
        return (
            f"locker bank {entry.bank_id} is out of service: its actor failed after {restarts}"
            " restarts and was stopped (the dashboard shows why); an operator can restart it"
        )

    async def ask_if_available(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None = None,
        secret: str | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> Outcome | None:
        """:meth:`ask`, with None instead of :class:`BankUnavailable` or ``trio.TooSlowError``.

        Still raises :class:`UnknownBank` (the caller should have checked :meth:`is_known`).
        """
        try:
            return await self.ask(bank_id, command, kind=kind, secret=secret, on_done=on_done)
        except (BankUnavailable, trio.TooSlowError):
            return None

    async def tell(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Send without waiting for the outcome; waits for mailbox room (backpressure).

        ``on_done``: see :class:`~actors.bank.Envelope`; called at once for a failed bank. A
        message for a bank owned by another node is acknowledged once it is handed to the
        forwarder (this node cannot learn when the owner applied it)."""
        placement = self.placement
        if placement is not None and not placement.is_local(bank_id):
            await placement.tell_remote(bank_id, command, kind=kind)
            if on_done is not None:
                on_done()
            return
        entry = self._entry(bank_id)
        if entry.stopping and placement is not None:
            await placement.tell_remote(bank_id, command, kind=kind)
            if on_done is not None:
                on_done()
            return
        if entry.failed:
            self.services.observer.message_dropped(kind, "bank_failed")
            if on_done is not None:
                on_done()
            return
        await entry.mailbox.put(Envelope(command, kind, on_done=on_done))

    def tell_nowait(self, bank_id: str, command: c.BankCommand) -> bool:
        """Queue an internal command without waiting; False if it was not delivered (the
        mailbox is full, or the bank has failed and the command is not a tick), True if it
        was, or if there is no such bank here (nothing to deliver to).

        A failed bank still gets its ticks: its deadlines-only incarnation fires them.
        """
        if self.placement is not None and not self.placement.is_local(bank_id):
            return True  # its owner's timers tick it there
        try:
            entry = self._entry(bank_id)
        except UnknownBank:
            return True  # nothing to deliver to
        if entry.stopping:
            return True
        if entry.failed and not isinstance(command, c.Tick):
            return False
        try:
            entry.mailbox.put_nowait(Envelope(command))
        except MailboxFull:
            return False
        return True

    def mailbox_total(self) -> int:
        return sum(entry.mailbox.depth for entry in self.entries.values())

    def running_count(self) -> int:
        """Bank actors on this node that have not been stopped (failed ones included)."""
        return sum(1 for entry in self.entries.values() if not entry.stopping)

    def start(self, bank_ids: Iterable[str]) -> None:
        """Start the actors of known banks now rather than on their first message.

        A node that takes banks over starts them at once, so that their deadlines (pending
        commands' timeouts, presence) fire on time here.
        """
        for bank_id in bank_ids:
            if self.catalog.is_bank(bank_id):
                self._entry(bank_id)

    async def stop(self, bank_ids: Iterable[str]) -> list[tuple[str, Envelope]]:
        """Stop these banks' actors for good (their banks now live on another node).

        The message being handled is finished first (the actor shields it when its services
        ask for that); messages still queued are not handled here: asks are answered
        :data:`MOVED` (the asker sends them on) and the rest is returned for the caller to
        deliver to the new owner. Returns once every actor has ended.
        """
        entries = [self.entries[b] for b in bank_ids if b in self.entries]
        left: list[tuple[str, Envelope]] = []
        for entry in entries:
            entry.stopping = True
            if entry.scope is not None:
                entry.scope.cancel()
            if entry.deadlines is not None:
                entry.deadlines.cancel()  # a failed bank's deadlines move with it
        for entry in entries:
            if entry.child is not None and entry.child.status not in ("failed", "stopped"):
                await entry.stopped.wait()
            if entry.deadlines_done is not None:
                await entry.deadlines_done.wait()
            while (envelope := entry.mailbox.get_nowait()) is not None:
                if envelope.reply is not None:
                    envelope.reply.send_nowait(Outcome(BankState(), crashed=MOVED))
                else:
                    # handed on to the new owner by the caller: acknowledged with the hand-over
                    envelope.done()
                    left.append((entry.bank_id, envelope))
            if self.entries.get(entry.bank_id) is entry:
                del self.entries[entry.bank_id]
            if entry.child is not None:
                self.supervisor.children.pop(entry.bank_id, None)
        self.services.observer.bank_actors_running(len(self.entries))
        return left
