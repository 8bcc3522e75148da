"""Where bank actors live: started on demand, supervised, addressed by bank id.

A message for a known bank whose actor is not running starts it (virtual actors, as in
Orleans); only a ``CreateBank`` may start the actor of a bank the directory does not know yet.
All bank actors share one supervisor that does not escalate: a bank that exceeds its restart
budget is marked failed, answers every message with :class:`BankUnavailable` and shows up on the
dashboard, while the rest of the fleet carries on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from actors.bank import BankActor, BankServices, Envelope, Outcome
from actors.mailbox import Mailbox, MailboxFull
from actors.ports import BankCatalog
from actors.supervisor import ChildInfo, RestartPolicy, Supervisor
from domain import commands as c
from domain.state import BankState

log = structlog.get_logger("lockerd.registry")


class BankUnavailable(Exception):
    """The bank's actor crashed on this message or has exceeded its restart budget."""


class UnknownBank(Exception):
    pass


@dataclass(slots=True)
class BankEntry:
    bank_id: str
    mailbox: Mailbox[Envelope]
    child: ChildInfo | None = None

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
    ) -> None:
        self.services = services
        self.catalog = catalog
        self.mailbox_capacity = mailbox_capacity
        self.ask_timeout = ask_timeout
        self.entries: dict[str, BankEntry] = {}
        self.supervisor = Supervisor(
            nursery, name="banks", policy=policy, escalate=False, on_change=self._child_changed
        )

    def is_known(self, bank_id: str) -> bool:
        return bank_id in self.entries or self.catalog.is_bank(bank_id)

    def _entry(self, bank_id: str, *, allow_new: bool = False) -> BankEntry:
        entry = self.entries.get(bank_id)
        if entry is not None:
            return entry
        if not allow_new and not self.catalog.is_bank(bank_id):
            raise UnknownBank(bank_id)
        entry = self.entries[bank_id] = BankEntry(bank_id, Mailbox(self.mailbox_capacity))
        services = self.services
        mailbox = entry.mailbox

        async def incarnation() -> None:
            await BankActor(bank_id, mailbox, services).run()

        entry.child = self.supervisor.start_child(bank_id, incarnation)
        self.services.observer.bank_actors_running(len(self.entries))
        return entry

    def _child_changed(self, child: ChildInfo) -> None:
        fleet = self.services.fleet
        status = fleet.status(child.name)
        status.supervision = child.status
        status.restarts = child.restarts
        status.last_error = child.last_error
        if child.status == "restarting":
            self.services.observer.bank_actor_restarted()
        if child.status == "failed":
            self.services.observer.bank_actor_failed()
            entry = self.entries.get(child.name)
            if entry is not None:
                self._drain_failed(entry)
        fleet.changed(child.name)

    def _drain_failed(self, entry: BankEntry) -> None:
        while (envelope := entry.mailbox.get_nowait()) is not None:
            self.services.observer.message_dropped(envelope.kind, "bank_failed")
            envelope.done()
            if envelope.reply is not None:
                envelope.reply.send_nowait(Outcome(BankState(), crashed="bank actor failed"))

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

        ``on_done`` (see :class:`~actors.bank.Envelope`) is called when the bank has handled
        the command, or at once when the bank has failed; not when it never got into the
        mailbox (too slow)."""
        entry = self._entry(bank_id, allow_new=allow_new)
        if entry.failed:
            self.services.observer.message_dropped(kind, "bank_failed")
            if on_done is not None:
                on_done()
            raise BankUnavailable(f"bank {bank_id} has failed")
        send, receive = trio.open_memory_channel[Outcome](1)
        with trio.fail_after(self.ask_timeout):
            await entry.mailbox.put(Envelope(command, kind, send, secret, on_done))
            outcome = await receive.receive()
        if outcome.crashed is not None:
            raise BankUnavailable(f"bank {bank_id}: {outcome.crashed}")
        return outcome

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

        ``on_done``: see :class:`~actors.bank.Envelope`; called at once for a failed bank."""
        entry = self._entry(bank_id)
        if entry.failed:
            self.services.observer.message_dropped(kind, "bank_failed")
            if on_done is not None:
                on_done()
            return
        await entry.mailbox.put(Envelope(command, kind, on_done=on_done))

    def tell_nowait(self, bank_id: str, command: c.BankCommand) -> bool:
        try:
            entry = self._entry(bank_id)
        except UnknownBank:
            return True  # nothing to deliver to
        if entry.failed:
            return True
        try:
            entry.mailbox.put_nowait(Envelope(command))
        except MailboxFull:
            return False
        return True

    def mailbox_total(self) -> int:
        return sum(entry.mailbox.depth for entry in self.entries.values())
