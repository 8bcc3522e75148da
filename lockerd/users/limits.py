"""Sign-in limits: failed attempts per email address and per client IP (contract §4).

Only *failed* attempts count (a wrong password, an unknown email): 10 a minute per email
address and 30 a minute per client IP, in a sliding window. Successful sign-ins are never
counted, so any number of people behind one proxy, carrier NAT or kiosk can sign in. Beyond a
limit the attempt is refused before any password is checked (:class:`TooManyAttempts`, a 429
with ``retry_after``).

Attempts still being checked count against the limit until they end, so a burst of concurrent
guesses cannot slip past it while the first ones are still hashing: an attempt that would
exceed the limit only because of attempts in progress waits until one of them ends (a success
frees its place). Password checks run at most two at a time anyway
(:mod:`lockerd.users.passwords`), so this costs honest users no throughput.

IPv6 clients are counted per /64 (one subscriber's prefix), since anyone with one address can
use any other of the same /64; IPv4 (and IPv4-mapped IPv6) per address.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio

from domain.ratelimit import SlidingWindowLimiter

FAILURES_PER_EMAIL: Final = 10
FAILURES_PER_IP: Final = 30
WINDOW_SECONDS: Final = 60.0


class TooManyAttempts(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-in attempts; retry in {retry_after} s")
        self.retry_after = retry_after


def client_key(address: str | None) -> str:
    """The key an address is counted under: the IPv4 address, or the IPv6 /64."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureLimit:
    """At most ``limit`` failures per key within ``window`` seconds; attempts in progress
    count as possible failures until they end."""

    def __init__(
        self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.failures = SlidingWindowLimiter(limit, window, clock=clock)
        self._in_flight: Counter[str] = Counter()
        self._settled: dict[str, trio.Event] = {}

    async def enter(self, key: str) -> None:
        """Take a place for one attempt of ``key``; raises :class:`TooManyAttempts`.

        Waits (bounded by the password checks in progress) while the place is taken only by
        attempts that have not ended yet.
        """
        while True:
            wait = self.failures.retry_after(key)
            if wait is not None:
                raise TooManyAttempts(wait)
            if self.failures.count(key) + self._in_flight[key] < self.limit:
                self._in_flight[key] += 1
                return
            settled = self._settled.get(key)
            if settled is None:
                settled = self._settled[key] = trio.Event()
            await settled.wait()

    def leave(self, key: str, *, failed: bool) -> None:
        """The attempt of ``key`` has ended; ``failed`` ones are counted in the window."""
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]
        if failed:
            self.failures.record(key)
        settled = self._settled.pop(key, None)
        if settled is not None:
            settled.set()


class Attempt:
    """One sign-in attempt in progress: mark it :meth:`failed` when the credentials were bad."""

    __slots__ = ("bad_credentials",)

    def __init__(self) -> None:
        self.bad_credentials = False

    def failed(self) -> None:
        self.bad_credentials = True


class SignInLimits:
    """The two limits of contract §4, used around every password check of a sign-in."""

    def __init__(
        self,
        *,
        per_email: int = FAILURES_PER_EMAIL,
        per_ip: int = FAILURES_PER_IP,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.email = FailureLimit(per_email, window, clock=clock)
        self.ip = FailureLimit(per_ip, window, clock=clock)

    @asynccontextmanager
    async def attempt(self, email: str, client_ip: str | None) -> AsyncIterator[Attempt]:
        """Hold a place under both limits while the block checks the credentials.

        Raises :class:`TooManyAttempts` before the block runs when either limit is reached.
        The attempt counts as a failure only if the block called :meth:`Attempt.failed`
        (an attempt cancelled half-way gave its client no answer, so it is not counted).
        """
        ip = client_key(client_ip)
        await self.email.enter(email)
        try:
            await self.ip.enter(ip)
        except BaseException:
            self.email.leave(email, failed=False)
            raise
        attempt = Attempt()
        try:
            yield attempt
        finally:
            self.ip.leave(ip, failed=attempt.bad_credentials)
            self.email.leave(email, failed=attempt.bad_credentials)
