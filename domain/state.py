"""The state of one locker bank: an immutable value folded from its events.

Frozen dataclasses hold the scalars; pyrsistent maps hold the collections, so every ``evolve``
step shares structure with the previous state instead of copying it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from pyrsistent import PMap, PSet, pmap, pset

from domain.events import Action, DoorState, Presence

TxStatus = Literal["pending", "success", "error", "timeout"]

# How long answers to finished transactions and seen device event ids are remembered for
# deduplication. Older duplicates are treated as unknown and dropped.
DEDUP_WINDOW = timedelta(hours=24)
MAX_REMEMBERED = 10_000


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
        return replace(self, pending_ids=pset(pending), opens_done_at=pmap(done))

    def rehydrated(self) -> BankState:
        """The state as a freshly (re)started actor holds it: presence is live knowledge, so it
        is ``unknown`` until the retained state or a new heartbeat arrives (a decommissioned
        bank, which applies none, stays ``offline``)."""
        return replace(
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
