"""The derived transaction indexes of a bank's state (``pending_ids``, ``opens_done_at``) always
equal what a scan of the remembered transactions gives, pruning included."""

from __future__ import annotations

from datetime import timedelta

import pytest

from domain import bank as b
from domain import events as e
from domain.state import BankState
from tests.domain._bank import BANK_ID, SPECS, T0, secs


def created() -> BankState:
    return b.fold(
        BankState(),
        [
            e.LockerBankCreated(
                bank_id=BANK_ID,
                name="Bank",
                location=None,
                heartbeat_interval_seconds=10,
                compartments=SPECS,
                created_at=T0,
            )
        ],
    )


def requested(n: int, number: int, at: float) -> e.CompartmentOpeningRequested:
    return e.CompartmentOpeningRequested(
        transaction_id=f"tx-{n}",
        compartment_id=f"comp-{number}",
        compartment_number=number,
        user_id="user-1",
        requested_at=T0 + secs(at),
        expires_at=T0 + secs(at + 30),
    )


def assert_indexed(state: BankState) -> None:
    assert state == state.reindexed()
    assert {tx.transaction_id for tx in state.pending()} == {
        tid for tid, tx in state.transactions.items() if tx.status == "pending"
    }


def test_indexes_follow_every_status_change() -> None:
    state = created()
    events: list[e.Event] = [
        requested(1, 1, 0),
        requested(2, 2, 1),
        requested(3, 3, 2),
        e.CompartmentOpened(
            transaction_id="tx-1", compartment_number=1, message=None, received_at=T0 + secs(3)
        ),
        e.CommandFailed(
            transaction_id="tx-2",
            action="open_compartment",
            error_code="DOOR_JAMMED",
            message=None,
            received_at=T0 + secs(4),
        ),
        e.CommandTimedOut(
            transaction_id="tx-3", action="open_compartment", timed_out_at=T0 + secs(40)
        ),
        e.LateAnswerReceived(
            transaction_id="tx-3", result="success", error_code=None, received_at=T0 + secs(41)
        ),
    ]
    for event in events:
        state = b.evolve(state, event)
        assert_indexed(state)
    assert state.pending() == []
    # a success and a timeout may open the door; an error may not
    assert dict(state.opens_done_at) == {1: T0 + secs(3), 3: T0 + secs(40)}
    assert b._open_expected(state, 1, T0 + secs(60))
    assert not b._open_expected(state, 2, T0 + secs(60))
    assert not b._open_expected(state, 1, T0 + secs(3) + timedelta(minutes=3))


def test_indexes_survive_pruning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(b, "MAX_REMEMBERED", 5)
    state = created()
    for n in range(12):
        at = n * 3600.0 * 6  # every 6 hours: older ones leave the 24 h window
        state = b.evolve(state, requested(n, 1 + n % 3, at))
        if n % 4:  # some stay pending
            state = b.evolve(
                state,
                e.CompartmentOpened(
                    transaction_id=f"tx-{n}",
                    compartment_number=1 + n % 3,
                    message=None,
                    received_at=T0 + secs(at + 1),
                ),
            )
        assert_indexed(state)
    assert len(state.transactions) < 12  # pruned
    assert {tx.transaction_id for tx in state.pending()} == {"tx-0", "tx-4", "tx-8"}
