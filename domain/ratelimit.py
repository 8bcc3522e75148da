"""Sliding-window attempt counting, per key (an email address, a client IP, an MQTT client id).

Pure bookkeeping with an injected clock; the one rate limiter of lockerd (sign-in attempts,
failed device registrations).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class SlidingWindowLimiter:
    """At most ``limit`` attempts per key within any ``window`` seconds.

    Memory is bounded: at most ``max_keys`` keys are tracked; the least recently used one is
    forgotten first (a forgotten attacker key merely starts a fresh window).
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None if it may try now."""
        attempts = self._current(key)
        if attempts is None or len(attempts) < self.limit:
            return None
        return max(1, math.ceil(attempts[0] + self.window - self._clock()))

    def count(self, key: str) -> int:
        """Attempts of ``key`` within the window now."""
        attempts = self._current(key)
        return 0 if attempts is None else len(attempts)

    def _current(self, key: str) -> deque[float] | None:
        """The attempts of ``key`` still inside the window (None, and forgotten, if none)."""
        attempts = self._attempts.get(key)
        if attempts is None:
            return None
        now = self._clock()
        while attempts and attempts[0] <= now - self.window:
            attempts.popleft()
        if not attempts:
            del self._attempts[key]
            return None
        return attempts

    def record(self, key: str) -> None:
        attempts = self._attempts.get(key)
        if attempts is None:
            attempts = self._attempts[key] = deque()
            while len(self._attempts) > self.max_keys:
                self._attempts.popitem(last=False)
        else:
            self._attempts.move_to_end(key)
        attempts.append(self._clock())
        while len(attempts) > self.limit:
            attempts.popleft()
