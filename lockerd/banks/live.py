"""The app's hot reads, answered from memory that the bank actors keep current.

``GET /api/transactions/{id}`` (and its long poll), ``GET /api/compartments``, QR codes' grant
check and the ``/ws/app`` stream read here instead of queueing reads on the store's one thread
behind the appends. :class:`LiveModel` holds, per process:

* **transactions**: every pending one, plus the most recently finished ones (bounded by
  ``recent_transactions``, least recently finished forgotten first). A transaction that is
  not here is finished and older: the caller reads it from the store
  (:func:`lockerd.banks.queries.transaction`), which is the same answer;
* **grants** per user and per compartment, with their expiry, and **group grants** per group
  and per compartment with the groups' **members** (a member may open what the group may,
  while a member: membership events come from the operator streams, :mod:`domain.operations`);
* **compartments** (bank, number, door state) and the banks' names;
* the **presence** of a bank is not copied: it is read from the live
  :class:`~actors.fleet.FleetView`, which is what the admin API shows too.

How it is kept current, in one place each:

* :meth:`LiveModel.load` fills it from the read models at start-up
  (:func:`lockerd.banks.queries.live_start`), so after a restart (or a
  ``rebuild-projections``) it starts from exactly what the store holds;
* :meth:`LiveModel.follow` is **the one entry point for events**: registered as a stored-event
  listener of the bank actors, it is called with the events of every append right after the
  append committed and before the actor answers its asker, so a 202 from ``POST …/open``
  is never followed by a ``GET`` that does not know the transaction yet. It mirrors the SQL
  projections (:mod:`lockerd.banks.projections`): every event that changes what the app sees
  must be handled in both (``tests/lockerd/banks/test_live.py`` compares them). With several
  nodes every node's model gets every node's events through this same method (it is one of
  the listeners the cluster's event feed calls, see ``lockerd/service.py``);
* :meth:`LiveModel.watch_presence` is one subscriber of the fleet view (one coalesced dirty
  set, whatever the number of app clients) that notices presence changes.

Change notification for app clients (:meth:`LiveModel.subscribe`): per connected user a
coalescing set of changed compartment ids and transaction ids plus a wake-up event, marked in
O(1) per interested connection; nothing here ever waits for a client. Long polls wait on a
per-transaction event set when the transaction leaves ``pending``.

Never blocks, never does I/O; everything runs on the Trio loop.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

import trio

from actors.fleet import FleetView
from domain.records import StoredEvent
from domain.wiretime import iso_from_stored
from lockerd.banks.projections import TIMEOUT_MESSAGE
from lockerd.banks.queries import LiveStart, TransactionView

RECENT_TRANSACTIONS: Final = 10_000

_FINISHED: Final = {
    "CompartmentOpened": ("success", "received_at"),
    "ConfigApplied": ("success", "received_at"),
    "CommandFailed": ("error", "received_at"),
}
_LIFECYCLE: Final = frozenset(
    {
        "LockerBankEdited",
        "CompartmentAdded",
        "CompartmentEdited",
        "CompartmentRetired",
        "LockerBankDecommissioned",
    }
)
_REQUESTED: Final = {
    "CompartmentOpeningRequested": "open_compartment",
    "ConfigApplyRequested": "apply_config",
}


@dataclass(slots=True)
class LiveCompartment:
    id: str
    bank_id: str
    number: int
    door_state: str
    out_of_service: bool = False


def _expiry(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _valid(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is None or now < expires_at


class AppSubscription:
    """What changed for one app client since it last looked: compartment ids (presence, door,
    grant) and transaction ids (status), coalesced, with a wake-up event."""

    def __init__(self, model: LiveModel, user_id: str) -> None:
        self._model = model
        self.user_id = user_id
        self.compartments: set[str] = set()
        self.transactions: set[str] = set()
        self._wake = trio.Event()

    def compartment_changed(self, compartment_id: str) -> None:
        self.compartments.add(compartment_id)
        self._wake.set()

    def transaction_changed(self, transaction_id: str) -> None:
        self.transactions.add(transaction_id)
        self._wake.set()

    async def changes(self, deadline: float = math.inf) -> tuple[set[str], set[str]]:
        """Wait for a change (or the Trio ``deadline``); return what changed since last time."""
        with trio.move_on_at(deadline):
            await self._wake.wait()
        self._wake = trio.Event()
        compartments, self.compartments = self.compartments, set()
        transactions, self.transactions = self.transactions, set()
        return compartments, transactions

    def close(self) -> None:
        self._model._unsubscribe(self)


class LiveModel:
    """See the module docstring."""

    def __init__(
        self,
        fleet: FleetView,
        *,
        recent_transactions: int = RECENT_TRANSACTIONS,
    ) -> None:
        self.fleet = fleet
        self.recent_transactions = recent_transactions
        self._pending: dict[str, TransactionView] = {}
        self._finished: OrderedDict[str, TransactionView] = OrderedDict()
        self._bank_names: dict[str, str] = {}
        self._compartments: dict[str, LiveCompartment] = {}
        self._by_number: dict[tuple[str, int], str] = {}
        self._of_bank: dict[str, list[str]] = {}
        # compartment id -> user id -> expiry; and the same by user
        self._grants: dict[str, dict[str, datetime | None]] = {}
        self._grants_of_user: dict[str, dict[str, datetime | None]] = {}
        # compartment id -> group id -> expiry; the same by group; members both ways
        self._group_grants: dict[str, dict[str, datetime | None]] = {}
        self._grants_of_group: dict[str, dict[str, datetime | None]] = {}
        self._members: dict[str, set[str]] = {}
        self._groups_of_user: dict[str, set[str]] = {}
        self._subscriptions: dict[str, set[AppSubscription]] = {}
        self._settled: dict[str, trio.Event] = {}
        self._presence: dict[str, str] = {}
        self._decommissioned: set[str] = set()
        self._released = False

    # --- keeping up ---------------------------------------------------------------------

    def load(self, start: LiveStart) -> None:
        """Fill from the read models (at start-up, before any actor runs)."""
        for bank_id, name, decommissioned in start.banks:
            self._bank_names[bank_id] = name
            if decommissioned:
                self._decommissioned.add(bank_id)
        for compartment_id, bank_id, number, door_state, out_of_service in start.compartments:
            self._add_compartment(
                LiveCompartment(compartment_id, bank_id, number, door_state, out_of_service)
            )
        for compartment_id, user_id, _bank_id, expires_at in start.grants:
            self._set_grant(compartment_id, user_id, _expiry(expires_at))
        for view in start.transactions:
            self._put_transaction(view)

    def load_groups(
        self,
        group_grants: Sequence[tuple[str, str, str | None]],
        members: Sequence[tuple[str, str]],
    ) -> None:
        """Fill group grants ``(compartment id, group id, expires_at)`` and memberships
        ``(group id, user id)`` from the read models (at start-up, with :meth:`load`)."""
        for compartment_id, group_id, expires_at in group_grants:
            self._set_group_grant(compartment_id, group_id, _expiry(expires_at))
        for group_id, user_id in members:
            self._members.setdefault(group_id, set()).add(user_id)
            self._groups_of_user.setdefault(user_id, set()).add(group_id)

    def follow(self, bank_id: str, events: Sequence[StoredEvent]) -> None:
        """The stored-event listener: apply the events just appended to ``bank_id``."""
        for event in events:
            self.apply(event)

    def apply(self, event: StoredEvent) -> None:
        """Apply one stored event (mirrors :mod:`lockerd.banks.projections`)."""
        data = event.data
        kind = event.type
        if kind in _REQUESTED:
            self._requested(event, _REQUESTED[kind])
        elif kind in _FINISHED:
            status, at_field = _FINISHED[kind]
            self._finish(
                data["transaction_id"],
                status=status,
                completed_at=iso_from_stored(data[at_field]),
                error_code=data.get("error_code"),
                message=data.get("message"),
            )
        elif kind == "CommandTimedOut":
            self._finish(
                data["transaction_id"],
                status="timeout",
                completed_at=iso_from_stored(data["timed_out_at"]),
                message=TIMEOUT_MESSAGE,
            )
        elif kind == "LateAnswerReceived":
            self._late(data)
        elif kind == "DoorStateChanged":
            compartment_id = self._by_number.get((event.stream_id, data["compartment_number"]))
            if compartment_id is not None:
                self._compartments[compartment_id].door_state = data["state"]
                self._compartment_changed(compartment_id)
        elif kind == "CompartmentAccessGranted":
            self._set_grant(data["compartment_id"], data["user_id"], _expiry(data["expires_at"]))
            self._notify_user(data["user_id"], data["compartment_id"])
        elif kind == "CompartmentAccessRevoked":
            self._drop_grant(data["compartment_id"], data["user_id"])
            self._notify_user(data["user_id"], data["compartment_id"])
        elif kind == "CompartmentGroupAccessGranted":
            group_id = data["group_id"]
            self._set_group_grant(data["compartment_id"], group_id, _expiry(data["expires_at"]))
            self._notify_members(group_id, data["compartment_id"])
        elif kind == "CompartmentGroupAccessRevoked":
            self._drop_group_grant(data["compartment_id"], data["group_id"])
            self._notify_members(data["group_id"], data["compartment_id"])
        elif kind == "GroupMemberAdded":
            group_id, user_id = data["group_id"], data["user_id"]
            self._members.setdefault(group_id, set()).add(user_id)
            self._groups_of_user.setdefault(user_id, set()).add(group_id)
            for compartment_id in self._grants_of_group.get(group_id, {}):
                self._notify_user(user_id, compartment_id)
        elif kind == "GroupMemberRemoved":
            self._leave(data["group_id"], data["user_id"])
        elif kind == "UserDeleted":
            for group_id in list(self._groups_of_user.get(data["user_id"], ())):
                self._leave(group_id, data["user_id"])
        elif kind == "LockerBankCreated":
            self._bank_names[event.stream_id] = data["name"]
            for spec in data["compartments"]:
                self._add_compartment(
                    LiveCompartment(spec["id"], event.stream_id, spec["number"], "unknown")
                )
        elif kind in _LIFECYCLE:
            self._lifecycle(event)

    def _lifecycle(self, event: StoredEvent) -> None:
        """Lifecycle events (mirrors the banks' and the lifecycle projections)."""
        data, bank_id = event.data, event.stream_id
        match event.type:
            case "LockerBankEdited":
                self._bank_names[bank_id] = data["name"]
                for compartment_id in self._of_bank.get(bank_id, ()):
                    self._compartment_changed(compartment_id)
            case "CompartmentAdded":
                self._add_compartment(
                    LiveCompartment(data["compartment_id"], bank_id, data["number"], "unknown")
                )
            case "CompartmentEdited":
                compartment = self._compartments.get(data["compartment_id"])
                if compartment is not None:
                    compartment.out_of_service = bool(data["out_of_service"])
                    self._compartment_changed(compartment.id)
            case "CompartmentRetired":
                self._retire(data["compartment_id"])
            case "LockerBankDecommissioned":
                self._decommissioned.add(bank_id)
                for compartment_id in self._of_bank.get(bank_id, ()):
                    self._compartment_changed(compartment_id)

    async def watch_presence(self) -> None:
        """Notice presence changes in the fleet view and tell the clients concerned; forever.

        One fleet subscription for the whole model: the actors mark a bank dirty once,
        whatever the number of app clients.
        """
        subscription = self.fleet.subscribe()
        try:
            for bank_id, status in self.fleet.banks.items():
                self._presence[bank_id] = status.presence
            while True:
                for bank_id in await subscription.changes():
                    changed = self.fleet.banks.get(bank_id)
                    if changed is None or self._presence.get(bank_id) == changed.presence:
                        continue
                    self._presence[bank_id] = changed.presence
                    for compartment_id in self._of_bank.get(bank_id, ()):
                        self._compartment_changed(compartment_id)
        finally:
            subscription.close()

    async def release_waiters_on(self, shutdown: trio.Event) -> None:
        """When the service stops, answer every long poll as it stands; then forever."""
        await shutdown.wait()
        self._released = True
        for event in self._settled.values():
            event.set()
        self._settled.clear()
        await trio.sleep_forever()

    # --- reads --------------------------------------------------------------------------

    def transaction(self, transaction_id: str) -> TransactionView | None:
        """The transaction if held in memory (every pending one and the recent others)."""
        view = self._pending.get(transaction_id)
        if view is None:
            view = self._finished.get(transaction_id)
        return view

    async def settled(self, transaction_id: str) -> None:
        """Return once the transaction is no longer pending, or when the service stops.

        Call it for a transaction the caller has seen pending. At once if it is finished here;
        if it is not held here at all (with several nodes, the event feed may not have
        brought it yet), it waits for its end to arrive like a pending one.
        """
        if self._released or transaction_id in self._finished:
            return
        event = self._settled.get(transaction_id)
        if event is None:
            event = self._settled[transaction_id] = trio.Event()
        await event.wait()

    def groups_of(self, user_id: str) -> frozenset[str]:
        """The groups the user is a member of now (handed to the bank's open decision)."""
        return frozenset(self._groups_of_user.get(user_id, ()))

    def may_open(self, user_id: str, compartment_id: str, now: datetime) -> bool:
        """Whether the user holds a valid grant, their own or one of a group of theirs, for
        a compartment of a bank that is not decommissioned (the app offers none of those)."""
        compartment = self._compartments.get(compartment_id)
        if compartment is None or compartment.bank_id in self._decommissioned:
            return False
        return any(_valid(expiry, now) for expiry in self._expiries(user_id, compartment_id))

    def compartments_of(self, user_id: str, now: datetime) -> list[dict[str, Any]]:
        """``GET /api/compartments``: what the user may open now, by bank name, bank, number."""
        found = [
            self._render(self._compartments[compartment_id])
            for compartment_id in self._granted_compartments(user_id)
            if compartment_id in self._compartments and self.may_open(user_id, compartment_id, now)
        ]
        found.sort(key=lambda c: (c["locker_bank_name"], c["locker_bank_id"], c["number"]))
        return found

    def compartment_of(
        self, user_id: str, compartment_id: str, now: datetime
    ) -> dict[str, Any] | None:
        """One compartment as in :meth:`compartments_of`, or None if the user may not open it."""
        compartment = self._compartments.get(compartment_id)
        if compartment is None or not self.may_open(user_id, compartment_id, now):
            return None
        return self._render(compartment)

    def compartment(self, compartment_id: str) -> dict[str, Any] | None:
        """A compartment as the app shows it, whoever may open it (None: no such one)."""
        compartment = self._compartments.get(compartment_id)
        return None if compartment is None else self._render(compartment)

    def grant(self, compartment_id: str, user_id: str) -> tuple[bool, datetime | None]:
        """(whether the user holds a grant for the compartment, its expiry or None)."""
        users = self._grants.get(compartment_id, {})
        if user_id not in users:
            return False, None
        return True, users[user_id]

    def next_expiry(self, user_id: str, now: datetime) -> datetime | None:
        """The earliest future expiry among the user's grants (when a compartment goes)."""
        moments = [
            expires_at
            for compartment_id in self._granted_compartments(user_id)
            for expires_at in self._expiries(user_id, compartment_id)
            if expires_at is not None and now < expires_at
        ]
        return min(moments, default=None)

    def subscribe(self, user_id: str) -> AppSubscription:
        subscription = AppSubscription(self, user_id)
        self._subscriptions.setdefault(user_id, set()).add(subscription)
        return subscription

    # --- inside -------------------------------------------------------------------------

    def _granted_compartments(self, user_id: str) -> set[str]:
        """Every compartment the user holds some grant for, valid or not."""
        found = set(self._grants_of_user.get(user_id, {}))
        for group_id in self._groups_of_user.get(user_id, ()):
            found.update(self._grants_of_group.get(group_id, {}))
        return found

    def _expiries(self, user_id: str, compartment_id: str) -> list[datetime | None]:
        """The expiries of every grant that lets the user open the compartment."""
        found: list[datetime | None] = []
        own = self._grants_of_user.get(user_id, {})
        if compartment_id in own:
            found.append(own[compartment_id])
        groups = self._group_grants.get(compartment_id, {})
        for group_id in self._groups_of_user.get(user_id, ()):
            if group_id in groups:
                found.append(groups[group_id])
        return found

    def _set_group_grant(
        self, compartment_id: str, group_id: str, expires_at: datetime | None
    ) -> None:
        self._group_grants.setdefault(compartment_id, {})[group_id] = expires_at
        self._grants_of_group.setdefault(group_id, {})[compartment_id] = expires_at

    def _drop_group_grant(self, compartment_id: str, group_id: str) -> None:
        groups = self._group_grants.get(compartment_id)
        if groups is not None:
            groups.pop(group_id, None)
            if not groups:
                del self._group_grants[compartment_id]
        compartments = self._grants_of_group.get(group_id)
        if compartments is not None:
            compartments.pop(compartment_id, None)
            if not compartments:
                del self._grants_of_group[group_id]

    def _leave(self, group_id: str, user_id: str) -> None:
        members = self._members.get(group_id)
        if members is not None:
            members.discard(user_id)
            if not members:
                del self._members[group_id]
        groups = self._groups_of_user.get(user_id)
        if groups is not None:
            groups.discard(group_id)
            if not groups:
                del self._groups_of_user[user_id]
        for compartment_id in self._grants_of_group.get(group_id, {}):
            self._notify_user(user_id, compartment_id)

    def _notify_members(self, group_id: str, compartment_id: str) -> None:
        for user_id in self._members.get(group_id, ()):
            self._notify_user(user_id, compartment_id)

    def _render(self, compartment: LiveCompartment) -> dict[str, Any]:
        status = self.fleet.banks.get(compartment.bank_id)
        return {
            "id": compartment.id,
            "number": compartment.number,
            "locker_bank_id": compartment.bank_id,
            "locker_bank_name": self._bank_names.get(compartment.bank_id, ""),
            "presence": "unknown" if status is None else status.presence,
            "door_state": compartment.door_state,
            "out_of_service": compartment.out_of_service,
        }

    def _add_compartment(self, compartment: LiveCompartment) -> None:
        if compartment.id in self._compartments:
            return
        self._compartments[compartment.id] = compartment
        self._by_number[(compartment.bank_id, compartment.number)] = compartment.id
        self._of_bank.setdefault(compartment.bank_id, []).append(compartment.id)

    def _retire(self, compartment_id: str) -> None:
        """The compartment is gone, and its grants with it: tell whoever could open it."""
        self._compartment_changed(compartment_id)
        compartment = self._compartments.pop(compartment_id, None)
        if compartment is not None:
            self._by_number.pop((compartment.bank_id, compartment.number), None)
            of_bank = self._of_bank.get(compartment.bank_id, [])
            if compartment_id in of_bank:
                of_bank.remove(compartment_id)
        for user_id in list(self._grants.get(compartment_id, {})):
            self._drop_grant(compartment_id, user_id)
        for group_id in list(self._group_grants.get(compartment_id, {})):
            self._drop_group_grant(compartment_id, group_id)

    def _set_grant(self, compartment_id: str, user_id: str, expires_at: datetime | None) -> None:
        self._grants.setdefault(compartment_id, {})[user_id] = expires_at
        self._grants_of_user.setdefault(user_id, {})[compartment_id] = expires_at

    def _drop_grant(self, compartment_id: str, user_id: str) -> None:
        users = self._grants.get(compartment_id)
        if users is not None:
            users.pop(user_id, None)
            if not users:
                del self._grants[compartment_id]
        compartments = self._grants_of_user.get(user_id)
        if compartments is not None:
            compartments.pop(compartment_id, None)
            if not compartments:
                del self._grants_of_user[user_id]

    def _requested(self, event: StoredEvent, action: str) -> None:
        data = event.data
        view = TransactionView(
            transaction_id=data["transaction_id"],
            action=action,
            status="pending",
            error_code=None,
            message=None,
            requested_at=iso_from_stored(data["requested_at"]),
            completed_at=None,
            user_id=data.get("user_id", data.get("requested_by")),
            late_answer=None,
        )
        if view.transaction_id in self._pending or view.transaction_id in self._finished:
            return  # the projection's INSERT would fail the append: cannot happen
        self._pending[view.transaction_id] = view
        self._transaction_changed(view)

    def _finish(self, transaction_id: str, **changes: Any) -> None:
        settled = self._settled.pop(transaction_id, None)
        if settled is not None:
            settled.set()
        view = self._pending.pop(transaction_id, None)
        if view is None:
            view = self._finished.get(transaction_id)
            if view is None:
                return  # not held here (forgotten, or not yet fed); the store has it
        view = replace(view, **changes)
        self._put_transaction(view)
        self._transaction_changed(view)

    def _late(self, data: Any) -> None:
        transaction_id = data["transaction_id"]
        view = self.transaction(transaction_id)
        if view is None or view.late_answer is not None:
            return
        late = {
            "result": data["result"],
            "error_code": data["error_code"],
            "received_at": iso_from_stored(data["received_at"]),
        }
        view = replace(view, late_answer=late)
        self._put_transaction(view)
        self._transaction_changed(view)

    def _put_transaction(self, view: TransactionView) -> None:
        if view.status == "pending":
            self._pending[view.transaction_id] = view
            return
        self._finished[view.transaction_id] = view
        self._finished.move_to_end(view.transaction_id)
        while len(self._finished) > self.recent_transactions:
            self._finished.popitem(last=False)

    def _transaction_changed(self, view: TransactionView) -> None:
        if view.user_id is None:
            return
        for subscription in self._subscriptions.get(view.user_id, ()):
            subscription.transaction_changed(view.transaction_id)

    def _compartment_changed(self, compartment_id: str) -> None:
        for user_id in self._grants.get(compartment_id, ()):
            self._notify_user(user_id, compartment_id)
        for group_id in self._group_grants.get(compartment_id, ()):
            self._notify_members(group_id, compartment_id)

    def _notify_user(self, user_id: str, compartment_id: str) -> None:
        for subscription in self._subscriptions.get(user_id, ()):
            subscription.compartment_changed(compartment_id)

    def _unsubscribe(self, subscription: AppSubscription) -> None:
        subscriptions = self._subscriptions.get(subscription.user_id)
        if subscriptions is not None:
            subscriptions.discard(subscription)
            if not subscriptions:
                del self._subscriptions[subscription.user_id]
