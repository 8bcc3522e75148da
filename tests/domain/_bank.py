"""Builders shared by the pure domain tests: a bank in a known state, one command at a time."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from domain import bank as b
from domain import commands as c
from domain import events as e
from domain.state import BankState

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
BANK_ID = "0b6d3c8e-5a1f-4c2b-9d7e-1f2a3b4c5d6e"
TOKEN = "token-hash-1"
TOKEN_TTL = timedelta(days=7)
TIMEOUT = 30  # LOCKERD_COMMAND_TIMEOUT
INTERVAL = 10  # heartbeat_interval_seconds
CLIENT = "device-client-1"
USER = "user-1"
OTHER_USER = "user-2"


def secs(n: float) -> timedelta:
    return timedelta(seconds=n)


def spec(number: int, slave_id: int = 1, address: int | None = None) -> e.CompartmentSpec:
    return e.CompartmentSpec(
        id=f"comp-{number}",
        number=number,
        slave_id=slave_id,
        address=number - 1 if address is None else address,
    )


def comp_id(number: int) -> str:
    return f"comp-{number}"


SPECS = (spec(1), spec(2), spec(3))


@dataclass(frozen=True, slots=True)
class Timed:
    """A command and the moment it is decided at (commands carry no time of their own)."""

    command: c.BankCommand
    now: datetime


def at(command: c.BankCommand, now: datetime) -> Timed:
    return Timed(command, now)


def decide(state: BankState, timed: Timed) -> list[e.Event]:
    return b.decide(state, timed.command, timed.now)


def step(state: BankState, timed: Timed) -> tuple[BankState, list[e.Event]]:
    """Decide and fold the result in, as the actor does."""
    events = decide(state, timed)
    return b.fold(state, events), events


def apply(state: BankState, timed: Timed) -> BankState:
    return step(state, timed)[0]


def create_command(
    specs: tuple[e.CompartmentSpec, ...] = SPECS,
    interval: int = INTERVAL,
    now: datetime = T0,
) -> Timed:
    return at(
        c.CreateBank(
            bank_id=BANK_ID,
            name="Bank A",
            location="Hall 1",
            heartbeat_interval_seconds=interval,
            compartments=specs,
            token_hash=TOKEN,
            token_expires_at=now + TOKEN_TTL,
        ),
        now,
    )


def created(
    specs: tuple[e.CompartmentSpec, ...] = SPECS,
    interval: int = INTERVAL,
    *,
    applied: bool = True,
) -> BankState:
    """A created bank; ``applied``: its device already runs the bank's configuration.

    A new bank's device has applied nothing, so its first heartbeat brings an ``apply_config``
    (contract §2); the tests about everything else start from a device that has answered it,
    as a real one does within a round trip. ``applied=False`` is the bank as created.
    """
    state = apply(BankState(), create_command(specs, interval))
    return configured(state) if applied else state


def configured(state: BankState) -> BankState:
    """``state`` with the device having applied its current configuration (its last answer)."""
    return replace(state, applied_config_hash=state.config_hash)


def provisioned(now: datetime = T0 + secs(60)) -> BankState:
    return apply(
        created(),
        at(
            c.Provision(
                token_hash=TOKEN,
                client_id=CLIENT,
                new_mqtt_user="mqtt-user-1",
                new_credential_hash="cred-hash-1",
            ),
            now,
        ),
    )


def heartbeat(
    now: datetime,
    uptime: int | None = 100,
    session: str | None = "session-1",
    spare: str = "spare-tx",
) -> Timed:
    return at(
        c.RecordHeartbeat(
            uptime_seconds=uptime,
            session_id=session,
            spare_transaction_id=spare,
            command_timeout_seconds=TIMEOUT,
        ),
        now,
    )


def grant(
    state: BankState,
    number: int = 1,
    user: str = USER,
    expires_at: datetime | None = None,
    now: datetime = T0,
) -> BankState:
    command = c.GrantAccess(compartment_id=comp_id(number), user_id=user, expires_at=expires_at)
    return apply(state, at(command, now))


def online_bank(at: datetime = T0 + secs(120), numbers: tuple[int, ...] = (1, 2, 3)) -> BankState:
    """Provisioned, online since ``at`` (session-1), USER granted on ``numbers`` without expiry."""
    state = provisioned()
    for number in numbers:
        state = grant(state, number)
    return apply(state, heartbeat(at))


def open_cmd(now: datetime, number: int = 1, tx: str = "tx-1", user: str = USER) -> Timed:
    return at(
        c.RequestOpen(
            compartment_id=comp_id(number),
            user_id=user,
            transaction_id=tx,
            command_timeout_seconds=TIMEOUT,
        ),
        now,
    )


def answer(
    tx: str,
    now: datetime,
    result: str = "success",
    action: str = "open_compartment",
    error_code: str | None = None,
    message: str | None = None,
    applied_config_hash: str | None = None,
) -> Timed:
    return at(
        c.RecordAnswer(
            transaction_id=tx,
            action=action,
            result=result,  # type: ignore[arg-type]
            error_code=error_code,
            message=message,
            applied_config_hash=applied_config_hash,
        ),
        now,
    )


def device_event(
    event: str,
    data: dict[str, object],
    now: datetime,
    event_id: str | None = None,
    qr_claim: c.QrClaim | None = None,
    spare: str = "qr-tx",
) -> Timed:
    return at(
        c.RecordDeviceEvent(
            event=event,
            event_id=event_id,
            data=dict(data),
            qr_claim=qr_claim,
            spare_transaction_id=spare,
            command_timeout_seconds=TIMEOUT,
        ),
        now,
    )
