"""In-memory indexes over all banks, answering the broker's and the router's hot-path questions.

go-auth calls /superuser and /acl for every publish and every delivery (research/goauth.md),
and the gateway must map a provisioning token to its bank for every register: these lookups are
dictionary reads here, never a database round trip. The directory is loaded once from the read
models at start-up and then follows every appended event.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.base import SqlTx, StoredEvent


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

    def load(self, tx: SqlTx) -> None:
        """Fill from the read models (runs on the store's thread)."""
        rows = tx.query(
            "SELECT id, name, location, heartbeat_interval_seconds, token_hash, used_token_hash,"
            " mqtt_user, credential_hash FROM banks"
        )
        for bank_id, name, location, interval, token, used, user, credential in rows:
            self.banks[bank_id] = BankInfo(bank_id, name, location, int(interval))
            for token_hash in (token, used):
                if token_hash:
                    self._add_token(bank_id, token_hash)
            if user and credential:
                self.device_users[user] = DeviceCredential(bank_id, credential)
        for compartment_id, bank_id, number in tx.query(
            "SELECT id, bank_id, number FROM compartments"
        ):
            self.compartments[compartment_id] = CompartmentRef(bank_id, int(number))

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

    def _add_token(self, bank_id: str, token_hash: str) -> None:
        self.token_to_bank[token_hash] = bank_id
        self._tokens_of.setdefault(bank_id, set()).add(token_hash)

    def _forget_tokens(self, bank_id: str) -> None:
        for token_hash in self._tokens_of.pop(bank_id, set()):
            self.token_to_bank.pop(token_hash, None)

    def bank_of_device_user(self, username: str) -> str | None:
        credential = self.device_users.get(username)
        return None if credential is None else credential.bank_id
