"""What a bank remembers for deduplication stays bounded, and keeping it bounded costs a scan
once per quarter of the cap, not at every event (domain.state, ``MAX_REMEMBERED``).

Before: with more than the cap of event ids inside the 24 h window, every further door event
re-scanned and sorted all of them (15 ms per event at 10,000), and transactions inside the
window were never forgotten, so every open past the cap re-scanned them all.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from pyrsistent import pmap

from domain import bank as b
from domain.state import Transaction
from tests.domain._bank import T0, secs

CAP = 8  # monkeypatched MAX_REMEMBERED: low water 6


@pytest.fixture(autouse=True)
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(b, "MAX_REMEMBERED", CAP)


def test_event_ids_past_the_cap_are_cut_to_the_low_water_mark_keeping_the_newest() -> None:
    seen = pmap({f"ev-{n}": T0 + secs(n) for n in range(CAP)})
    seen = b._remember(seen, "ev-new", T0 + secs(100))
    assert len(seen) == 6
    assert set(seen) == {"ev-3", "ev-4", "ev-5", "ev-6", "ev-7", "ev-new"}


def test_event_ids_older_than_the_window_go_first() -> None:
    old = T0 - timedelta(hours=25)
    seen = pmap({**{f"old-{n}": old for n in range(5)}, "ev-a": T0, "ev-b": T0, "ev-c": T0})
    seen = b._remember(seen, "ev-new", T0 + secs(1))
    assert set(seen) == {"ev-a", "ev-b", "ev-c", "ev-new"}


def test_a_scan_happens_once_per_quarter_of_the_cap() -> None:
    seen = pmap({f"ev-{n}": T0 for n in range(CAP)})
    sizes = []
    for n in range(12):
        seen = b._remember(seen, f"new-{n}", T0 + secs(n))
        sizes.append(len(seen))
    # cut at 9 to 6, then it grows untouched (no scan) until the cap is passed again
    assert sizes == [6, 7, 8, 6, 7, 8, 6, 7, 8, 6, 7, 8]


def tx(n: int, status: str, at: float) -> Transaction:
    return Transaction(
        transaction_id=f"tx-{n}",
        action="open_compartment",
        compartment_number=1,
        user_id="user-1",
        requested_at=T0 + secs(at),
        expires_at=T0 + secs(at + 30),
        status=status,  # type: ignore[arg-type]
        completed_at=None if status == "pending" else T0 + secs(at + 1),
    )


def test_transactions_past_the_cap_keep_the_pending_and_the_newest_finished() -> None:
    txs = pmap({f"tx-{n}": tx(n, "pending" if n in (0, 1) else "success", n) for n in range(9)})
    pruned = b._prune(txs, T0 + secs(100))
    assert set(pruned) == {"tx-0", "tx-1", "tx-5", "tx-6", "tx-7", "tx-8"}


def test_pending_transactions_are_never_forgotten_even_past_the_cap() -> None:
    txs = pmap({f"tx-{n}": tx(n, "pending", n) for n in range(9)})
    assert b._prune(txs, T0 + secs(100)) == txs


def test_transactions_within_the_cap_are_left_alone() -> None:
    txs = pmap({f"tx-{n}": tx(n, "success", n) for n in range(CAP)})
    assert b._prune(txs, T0 + secs(100)) is txs
