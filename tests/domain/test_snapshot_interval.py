"""How often a bank is snapshotted: every ``every`` events, spaced out as it remembers more."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from domain.snapshot import SNAPSHOT_SPREAD, snapshot_interval


def test_a_small_bank_is_snapshotted_every_so_many_events() -> None:
    assert snapshot_interval(100, 0) == 100
    assert snapshot_interval(100, 399) == 100


def test_a_bank_that_remembers_many_transactions_is_snapshotted_less_often() -> None:
    assert snapshot_interval(100, 400) == 100
    assert snapshot_interval(100, 4_000) == 1_000
    assert snapshot_interval(100, 10_000) == 2_500


@given(every=st.integers(1, 1_000), remembered=st.integers(0, 100_000))
def test_snapshot_cost_per_event_stays_bounded(every: int, remembered: int) -> None:
    """Transactions encoded per event (a snapshot encodes every remembered one) never exceed
    the spread, and the tail a load replays is no longer than the interval."""
    interval = snapshot_interval(every, remembered)
    assert interval >= every
    assert remembered / interval <= SNAPSHOT_SPREAD
    assert interval <= max(every, remembered)
