"""Human passwords: argon2id off the Trio loop, at most two hashes at a time.

The parameters are OWASP's minimum for argon2id (t=2, m=19 MiB, p=1). One hash takes tens of
milliseconds of CPU and 19 MiB of memory, so it runs in a worker thread and a capacity limiter
keeps a burst of logins from eating every core and a lot of memory at once: they queue instead.
"""

from __future__ import annotations

import argon2
import trio
from argon2.exceptions import InvalidHashError, VerificationError

TIME_COST = 2
MEMORY_KIB = 19 * 1024
PARALLELISM = 1


class PasswordHasher:
    def __init__(
        self,
        *,
        concurrency: int = 2,
        time_cost: int = TIME_COST,
        memory_kib: int = MEMORY_KIB,
        parallelism: int = PARALLELISM,
    ) -> None:
        self._argon2 = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        self._limiter = trio.CapacityLimiter(concurrency)
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        result: str = await trio.to_thread.run_sync(
            self._argon2.hash, password, limiter=self._limiter
        )
        return result

    async def verify(self, stored_hash: str, password: str) -> bool:
        return await trio.to_thread.run_sync(
            self._verify_sync, stored_hash, password, limiter=self._limiter
        )

    def _verify_sync(self, stored_hash: str, password: str) -> bool:
        try:
            return self._argon2.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._argon2.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    async def prepare(self) -> None:
        """Make the dummy hash up front, so that even the first unknown email costs the same."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash("dummy password that matches no account")

    async def verify_dummy(self, password: str) -> None:
        """Spend the time of a real verification, for unknown emails (no timing oracle)."""
        await self.prepare()
        assert self._dummy_hash is not None
        await self.verify(self._dummy_hash, password)
