"""In-memory indexes over all banks, answering the broker's and the router's hot-path questions.

go-auth calls /superuser and /acl for every publish and every delivery (research/goauth.md),
and the gateway must map a provisioning token to its bank for every register: these lookups are
dictionary reads here, never a database round trip. The directory is filled once from the read
models at start-up (:meth:`Directory.load`) and then follows every appended event
(:meth:`Directory.apply`, registered with the bank actors as a stored-event listener).

It is the actors' :class:`~actors.ports.BankCatalog` and the gateway's
:class:`~gateway.router.TokenDirectory`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from domain.records import StoredEvent
from lockerd.banks.queries import StartingPoint


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    bank_id: str
    credential_hash: str


@dataclass(slots=True)
class BankInfo:
    bank_id: str
    name: str
    location: str | None
    heartbeat_interval_seconds: int
    decommissioned: bool = False


@dataclass(frozen=True, slots=True)
class CompartmentRef:
    bank_id: str
    number: int


class Directory:
    def __init__(self) -> None:
        self.banks: dict[str, BankInfo] = {}
        self.token_to_bank: dict[str, str] = {}
        self._tokens_of: dict[str, set[str]] = {}
        self.device_users: dict[str, DeviceCredential] = {}
        self.compartments: dict[str, CompartmentRef] = {}

    # --- the questions --------------------------------------------------------------------

    def is_bank(self, bank_id: str) -> bool:
        return bank_id in self.banks

    def bank_for_token(self, token_hash: str) -> str | None:
        return self.token_to_bank.get(token_hash)

    # --- keeping up -----------------------------------------------------------------------

    def load(self, start: StartingPoint) -> None:
        """Fill from the read models as the service starts."""
        for row in start.banks:
            self.banks[row.bank_id] = BankInfo(
                row.bank_id,
                row.name,
                row.location,
                row.heartbeat_interval_seconds,
                row.decommissioned,
            )
            for token_hash in (row.token_hash, row.used_token_hash):
                if token_hash:
                    self._add_token(row.bank_id, token_hash)
            if row.mqtt_user and row.credential_hash:
                self.device_users[row.mqtt_user] = DeviceCredential(
                    row.bank_id, row.credential_hash
                )
        for compartment in start.compartments:
            self.compartments[compartment.compartment_id] = CompartmentRef(
                compartment.bank_id, compartment.number
            )

    def follow(self, bank_id: str, events: Sequence[StoredEvent]) -> None:
        """The stored-event listener: apply events just appended to ``bank_id``."""
        for event in events:
            self.apply(event)

    def apply(self, event: StoredEvent) -> None:
        data = event.data
        bank_id = event.stream_id
        match event.type:
            case "LockerBankCreated":
                self.banks[bank_id] = BankInfo(
                    bank_id, data["name"], data["location"], data["heartbeat_interval_seconds"]
                )
                for compartment in data["compartments"]:
                    self.compartments[compartment["id"]] = CompartmentRef(
                        bank_id, compartment["number"]
                    )
            case "ProvisioningTokenIssued":
                # a new token voids every earlier one of this bank, used or not
                self._forget_tokens(bank_id)
                self._add_token(bank_id, data["token_hash"])
            case "LockerBankProvisioned":
                self._forget_tokens(bank_id)
                # the used token still maps here, for the lost-reply rule and clear errors
                self._add_token(bank_id, data["token_hash"])
                previous = data.get("previous_mqtt_user")
                if previous:
                    self.device_users.pop(previous, None)
                self.device_users[data["mqtt_user"]] = DeviceCredential(
                    bank_id, data["credential_hash"]
                )
            case "LockerBankEdited":
                info = self.banks.get(bank_id)
                if info is not None:
                    info.name = data["name"]
                    info.location = data["location"]
                    info.heartbeat_interval_seconds = data["heartbeat_interval_seconds"]
            case "CompartmentAdded":
                self.compartments[data["compartment_id"]] = CompartmentRef(bank_id, data["number"])
            case "CompartmentRetired":
                self.compartments.pop(data["compartment_id"], None)
            case "LockerBankDecommissioned":
                # the device credentials stop working at once (the broker's next check)
                self._forget_tokens(bank_id)
                revoked = data.get("revoked_mqtt_user")
                if revoked:
                    self.device_users.pop(revoked, None)
                info = self.banks.get(bank_id)
                if info is not None:
                    info.decommissioned = True

    def _add_token(self, bank_id: str, token_hash: str) -> None:
        self.token_to_bank[token_hash] = bank_id
        self._tokens_of.setdefault(bank_id, set()).add(token_hash)

    def _forget_tokens(self, bank_id: str) -> None:
        for token_hash in self._tokens_of.pop(bank_id, set()):
            self.token_to_bank.pop(token_hash, None)
