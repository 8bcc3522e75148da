"""``domain.backoff.jittered_backoff``: doubling from ``initial``, capped, at least half."""

from __future__ import annotations

import random

from domain.backoff import jittered_backoff


def test_doubles_per_failure_up_to_the_maximum() -> None:
    top = [jittered_backoff(n, 0.5, 3.0, lambda: 1.0 - 1e-12) for n in (1, 2, 3, 4, 5)]
    assert [round(d, 6) for d in top] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_the_jitter_keeps_it_between_half_and_all_of_the_delay() -> None:
    assert jittered_backoff(3, 1.0, 60.0, lambda: 0.0) == 2.0
    rng = random.Random(7)
    for failures in range(0, 40):
        d = min(60.0, 1.0 * 2.0 ** max(failures - 1, 0))
        assert d / 2 <= jittered_backoff(failures, 1.0, 60.0, rng.random) <= d


def test_no_overflow_however_many_failures() -> None:
    assert jittered_backoff(10**9, 1.0, 60.0, lambda: 1.0) == 60.0
