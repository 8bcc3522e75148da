"""The state of one locker bank: an immutable value folded from its events.

Frozen dataclasses hold the scalars; pyrsistent maps hold the collections, so every ``evolve``
step shares structure with the previous state instead of copying it. :func:`copy_with` is the
copy-with-changes of these values (``dataclasses.replace``, several times cheaper).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import repeat
from operator import attrgetter
from types import MemberDescriptorType
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

from pyrsistent import PMap, PSet, pmap, pset

from domain.events import Action, DoorState, Presence

TxStatus = Literal["pending", "success", "error", "timeout"]

# How long answers to finished transactions and seen device event ids are remembered for
# deduplication. Older duplicates are treated as unknown and dropped. A bank remembers at
# most MAX_REMEMBERED of each: past that, what is older than the window is forgotten and, if
# that is not enough, the oldest (finished) ones, down to three quarters of the cap, so that
# the scan this takes happens once per quarter of the cap, not at every event
# (domain.bank._remember, _prune).
DEDUP_WINDOW = timedelta(hours=24)
MAX_REMEMBERED = 10_000

_T = TypeVar("_T")
_store = MemberDescriptorType.__set__

# the classes :func:`copy_with` copies slot by slot (:func:`_fast_copies`): class -> its
# fields' slot descriptors, one getter of all their values, each field name's position
_LAYOUTS: dict[type, tuple[tuple[MemberDescriptorType, ...], attrgetter[Any], dict[str, int]]] = {}


def _copy_with(obj: _T, /, **changes: Any) -> _T:
    """``obj`` with ``changes``: equal to ``dataclasses.replace(obj, **changes)``, and as strict
    (a name that is not a field raises ``TypeError``), but for the classes of this module the
    slots are copied straight into a new instance instead of going through the field list and
    ``__init__`` each time (a ``BankState``: several times cheaper); any other object goes to
    ``dataclasses.replace``. ``obj`` is never modified; the copy is a new object that nothing
    else holds yet."""
    cls = type(obj)
    layout = _LAYOUTS.get(cls)
    if layout is None:
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    slots, getter, index = layout
    values = list(getter(obj))
    for name, value in changes.items():
        i = index.get(name)
        if i is None:
            raise TypeError(
                f"{cls.__qualname__}.__init__() got an unexpected keyword argument {name!r}"
            )
        values[i] = value
    new: _T = object.__new__(cls)
    # one C-level loop storing every slot through its descriptor (what object.__setattr__
    # would end up doing; the frozen dataclass's own __setattr__ refuses)
    deque(map(_store, slots, repeat(new, len(slots)), values), maxlen=0)
    return new


def _fast_copies(*classes: type) -> None:
    """Let :func:`copy_with` copy ``classes`` slot by slot. Only right for a class whose
    ``__init__`` does nothing but store every field: a frozen, slotted dataclass with the
    generated ``__init__``, every field in it, no ``InitVar`` nor ``ClassVar`` pseudo-field and
    no ``__post_init__`` (which ``dataclasses.replace`` would run)."""
    for cls in classes:
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        fields = dataclasses.fields(cls)
        assert params.frozen and params.init and "__slots__" in cls.__dict__, cls
        assert not hasattr(cls, "__post_init__"), cls
        assert all(f.init for f in fields), cls
        assert len(fields) == len(cls.__dataclass_fields__), cls  # type: ignore[attr-defined]
        names = tuple(f.name for f in fields)
        assert len(names) > 1, cls  # attrgetter of one name gives the value, not a tuple
        slots = tuple(cls.__dict__[name] for name in names)
        assert all(isinstance(slot, MemberDescriptorType) for slot in slots), cls
        _LAYOUTS[cls] = (slots, attrgetter(*names), {name: i for i, name in enumerate(names)})


if TYPE_CHECKING:
    # to the type checker it is ``dataclasses.replace``, whose plugin checks the field names
    # and the types of the changes
    from dataclasses import replace as copy_with
else:
    copy_with = _copy_with


@dataclass(frozen=True, slots=True)
class Compartment:
    id: str
    number: int
    slave_id: int
    address: int
    door_state: DoorState = "unknown"
    #: opens are refused (``out_of_service``); not part of the Modbus configuration
    out_of_service: bool = False


@dataclass(frozen=True, slots=True)
class Transaction:
    transaction_id: str
    action: Action
    status: TxStatus
    requested_at: datetime
    expires_at: datetime
    compartment_number: int | None = None
    user_id: str | None = None
    dispatched: bool = False
    completed_at: datetime | None = None
    has_late_answer: bool = False
    config_hash: str | None = None


def opens_the_door(tx: Transaction) -> bool:
    """An open that succeeded or timed out (the door may then open): ``opens_done_at``."""
    return (
        tx.action == "open_compartment"
        and tx.status in ("success", "timeout")
        and tx.compartment_number is not None
    )


@dataclass(frozen=True, slots=True)
class BankState:
    """``version`` is the number of stored events folded in (0: the bank does not exist)."""

    version: int = 0
    bank_id: str = ""
    name: str = ""
    location: str | None = None
    heartbeat_interval_seconds: int = 10
    compartments: PMap[int, Compartment] = field(default_factory=pmap)
    # provisioning
    token_hash: str | None = None
    token_expires_at: datetime | None = None
    used_token_hash: str | None = None
    provisioned_client_id: str | None = None
    provisioned_at: datetime | None = None
    mqtt_user: str | None = None
    credential_hash: str | None = None
    credentials_seen_in_use: bool = False
    last_provisioning_failure_at: datetime | None = None
    # revocation of the previous device credentials (re-provisioning; decommissioning may set
    # these too): until ``revocation_window_ends_at`` the broker may still serve cached allows
    # to the revoked session, so nothing is sent to the bank and nothing from it is applied
    # (docs/broker-auth.md, "Revocation with a caching broker")
    credentials_revoked_at: datetime | None = None
    revocation_window_ends_at: datetime | None = None
    # access: compartment id -> user id -> expiry (None: no expiry)
    grants: PMap[str, PMap[str, datetime | None]] = field(default_factory=pmap)
    # group access: compartment id -> group id -> expiry (None: no expiry)
    group_grants: PMap[str, PMap[str, datetime | None]] = field(default_factory=pmap)
    # commands
    transactions: PMap[str, Transaction] = field(default_factory=pmap)
    config_hash: str | None = None
    applied_config_hash: str | None = None
    # presence (live; presence is "unknown" again whenever the actor is rebuilt)
    presence: Presence = "unknown"
    last_seen: datetime | None = None
    session_id: str | None = None
    uptime_seconds: int | None = None
    # the device's own clock (data.timestamp) in the latest in-order heartbeat
    heartbeat_device_time: datetime | None = None
    # deduplication of device events and single use of QR codes: id -> first seen
    seen_event_ids: PMap[str, datetime] = field(default_factory=pmap)
    used_qr_nonces: PMap[str, datetime] = field(default_factory=pmap)
    alerts: int = 0
    # decommissioned (contract §5): no command to it, nothing from it applied, no changes
    decommissioned_at: datetime | None = None
    # the bank's alerts that are open (raised, not yet acknowledged nor resolved): alert id ->
    # alert type (domain.alerts); acknowledged and resolved ones live in the read model only
    open_alerts: PMap[str, str] = field(default_factory=pmap)
    # when the bank went offline (a stored LockerBankWentOffline; None once it came back), and
    # whether BankOfflineTooLong was recorded for that outage: folded from stored events, so
    # the offline alert's deadline survives a restart of the actor
    offline_since: datetime | None = None
    offline_alerted: bool = False
    # BankActorFailed recorded and no BankActorRestarted since
    actor_failed: bool = False
    # indexes derived from ``transactions`` (kept by ``domain.bank``, rebuilt by
    # :meth:`reindexed`, never in a snapshot), so that no message costs a scan of every
    # remembered transaction (up to MAX_REMEMBERED per bank):
    # the ids of the pending transactions
    pending_ids: PSet[str] = field(default_factory=pset)
    # compartment number -> latest completion of a successful or timed-out open
    opens_done_at: PMap[int, datetime] = field(default_factory=pmap)

    def reindexed(self) -> BankState:
        """The state with its derived indexes rebuilt from ``transactions``."""
        pending = [tid for tid, tx in self.transactions.items() if tx.status == "pending"]
        done: dict[int, datetime] = {}
        for tx in self.transactions.values():
            if opens_the_door(tx) and tx.completed_at is not None:
                number = tx.compartment_number
                assert number is not None
                if number not in done or done[number] < tx.completed_at:
                    done[number] = tx.completed_at
        return copy_with(self, pending_ids=pset(pending), opens_done_at=pmap(done))

    def rehydrated(self) -> BankState:
        """The state as a freshly (re)started actor holds it: presence is live knowledge, so it
        is ``unknown`` until the retained state or a new heartbeat arrives (a decommissioned
        bank, which applies none, stays ``offline``)."""
        return copy_with(
            self,
            presence="offline" if self.decommissioned else "unknown",
            last_seen=None,
            session_id=None,
            uptime_seconds=None,
            heartbeat_device_time=None,
        )

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def decommissioned(self) -> bool:
        return self.decommissioned_at is not None

    def revocation_pending(self, now: datetime) -> bool:
        """Whether revoked device credentials may still pass the broker's cached checks at
        ``now``: then no command may be published to the bank and nothing it publishes may be
        applied, because MQTT 3.1.1 cannot tell the revoked session's messages from the new
        device's."""
        ends = self.revocation_window_ends_at
        return ends is not None and now < ends

    def compartment_by_id(self, compartment_id: str) -> Compartment | None:
        for compartment in self.compartments.values():
            if compartment.id == compartment_id:
                return compartment
        return None

    def pending(self) -> list[Transaction]:
        return [self.transactions[tid] for tid in self.pending_ids]

    def pending_for(self, compartment_number: int) -> Transaction | None:
        for tx in self.pending():
            if tx.compartment_number == compartment_number:
                return tx
        return None

    def pending_config(self) -> Transaction | None:
        for tx in self.pending():
            if tx.action == "apply_config":
                return tx
        return None

    def grant_valid(self, compartment_id: str, user_id: str, now: datetime) -> bool:
        users = self.grants.get(compartment_id)
        if users is None or user_id not in users:
            return False
        expires_at = users[user_id]
        return expires_at is None or now < expires_at

    def group_grant_valid(
        self, compartment_id: str, group_ids: frozenset[str], now: datetime
    ) -> bool:
        """Whether one of ``group_ids`` holds a valid grant for the compartment."""
        groups = self.group_grants.get(compartment_id)
        if not groups or not group_ids:
            return False
        for group_id in group_ids & set(groups):
            expires_at = groups[group_id]
            if expires_at is None or now < expires_at:
                return True
        return False

    def heartbeat_deadline(self) -> datetime | None:
        if self.presence != "online" or self.last_seen is None:
            return None
        return self.last_seen + timedelta(seconds=3 * self.heartbeat_interval_seconds)

    def offline_alert_deadline(self) -> datetime | None:
        """When an outage becomes an alert: 3 heartbeat intervals after going offline."""
        if self.offline_since is None or self.offline_alerted or self.decommissioned:
            return None  # a decommissioned bank is not expected back: no alert
        return self.offline_since + timedelta(seconds=3 * self.heartbeat_interval_seconds)

    def next_deadline(self) -> datetime | None:
        """The earliest moment at which time alone changes this bank (a timeout, going
        offline, an outage becoming an alert)."""
        deadlines = [tx.expires_at for tx in self.pending()]
        heartbeat = self.heartbeat_deadline()
        if heartbeat is not None:
            deadlines.append(heartbeat)
        offline = self.offline_alert_deadline()
        if offline is not None:
            deadlines.append(offline)
        return min(deadlines, default=None)

    def config_entries(self) -> list[tuple[int, int, int]]:
        return [(c.number, c.slave_id, c.address) for c in self.compartments.values()]


class BankChanges(TypedDict, total=False):
    """Changes to some of a :class:`BankState`'s fields (``copy_with(state, **changes)``), so
    that ``domain.bank.evolve`` gathers an event's changes and copies the state once; the same
    names and types as the fields (tests/domain/test_state_copy.py keeps them so)."""

    version: int
    bank_id: str
    name: str
    location: str | None
    heartbeat_interval_seconds: int
    compartments: PMap[int, Compartment]
    token_hash: str | None
    token_expires_at: datetime | None
    used_token_hash: str | None
    provisioned_client_id: str | None
    provisioned_at: datetime | None
    mqtt_user: str | None
    credential_hash: str | None
    credentials_seen_in_use: bool
    last_provisioning_failure_at: datetime | None
    credentials_revoked_at: datetime | None
    revocation_window_ends_at: datetime | None
    grants: PMap[str, PMap[str, datetime | None]]
    group_grants: PMap[str, PMap[str, datetime | None]]
    transactions: PMap[str, Transaction]
    config_hash: str | None
    applied_config_hash: str | None
    presence: Presence
    last_seen: datetime | None
    session_id: str | None
    uptime_seconds: int | None
    heartbeat_device_time: datetime | None
    seen_event_ids: PMap[str, datetime]
    used_qr_nonces: PMap[str, datetime]
    alerts: int
    decommissioned_at: datetime | None
    open_alerts: PMap[str, str]
    offline_since: datetime | None
    offline_alerted: bool
    actor_failed: bool
    pending_ids: PSet[str]
    opens_done_at: PMap[int, datetime]


_fast_copies(Compartment, Transaction, BankState)

__all__ = [
    "DEDUP_WINDOW",
    "MAX_REMEMBERED",
    "BankChanges",
    "BankState",
    "Compartment",
    "Transaction",
    "TxStatus",
    "copy_with",
    "opens_the_door",
]
