"""Sign-in, sessions and the bearer-token resolver behind ``require_user()``.

A session token is a 256-bit random value handed out once; the server keeps only its keyed
hash (``Keyring.hash("session-token", token)``), with the user and an absolute expiry. Tokens
resolve from an in-memory LRU cache backed by the ``user_sessions`` table, so a token in use
costs a dictionary lookup and an HMAC, not a database round trip. A miss reads the table once
and the answer is remembered (briefly, for unknown tokens). This process is the only writer of
the table, so the cache cannot go stale: logout removes the entry from both.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from domain.keys import Keyring, new_token
from domain.ratelimit import SlidingWindowLimiter
from domain.wiretime import iso
from lockerd.http.auth import Principal, Role
from lockerd.users import tables
from lockerd.users.passwords import PasswordHasher
from store.base import Tables

log = structlog.get_logger("lockerd.users")

TOKEN_PURPOSE = "session-token"
SESSION_TTL = timedelta(hours=12)
MAX_TOKEN_LENGTH = 256
LOGIN_ATTEMPTS_PER_MINUTE = 10


class InvalidCredentials(Exception):
    """Unknown email or wrong password: deliberately the same thing to the caller."""


class TooManyAttempts(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many login attempts; retry in {retry_after} s")
        self.retry_after = retry_after


class EmailTaken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class CachedSession:
    principal: Principal
    expires_at: int  # unix seconds


def normalize_email(email: str) -> str:
    return email.strip().lower()


def _role(text: str) -> Role:
    return "admin" if text == "admin" else "user"


class SessionService:
    """Sign-in, sessions, users; the resolver behind :func:`lockerd.http.auth.authenticate`."""

    def __init__(
        self,
        store: Tables,
        keyring: Keyring,
        clock: Callable[[], datetime],
        *,
        hasher: PasswordHasher | None = None,
        ttl: timedelta = SESSION_TTL,
        attempts_per_minute: int = LOGIN_ATTEMPTS_PER_MINUTE,
        cache_size: int = 50_000,
        negative_ttl: float = 30.0,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        self.ttl = ttl
        self.email_limiter = SlidingWindowLimiter(attempts_per_minute, 60.0)
        self.ip_limiter = SlidingWindowLimiter(attempts_per_minute, 60.0)
        self.cache_size = cache_size
        self.negative_ttl = negative_ttl
        self._cache: OrderedDict[str, CachedSession] = OrderedDict()
        # token hash -> monotonic time until which "no such session" is believed
        self._unknown: OrderedDict[str, float] = OrderedDict()
        # logged-out token hashes: a revoked token never becomes valid again, and a lookup
        # that raced with its logout must not put it back into the cache
        self._revoked: OrderedDict[str, None] = OrderedDict()
        self.db_lookups = 0

    # --- users --------------------------------------------------------------------------

    async def create_user(self, email: str, password: str, name: str, role: Role) -> str:
        user_id = str(uuid.uuid4())
        password_hash = await self.hasher.hash(password)
        row = tables.UserRow(user_id, normalize_email(email), name, role, password_hash)
        if not await self.store.write(tables.insert_user(row, iso(self.clock()))):
            raise EmailTaken(email)
        log.info("user_created", user_id=user_id, role=role)
        return user_id

    async def user_exists(self, user_id: str) -> bool:
        return await self.store.read(tables.user_exists(user_id))

    # --- sign-in ------------------------------------------------------------------------

    async def login(self, email: str, password: str, client_ip: str | None) -> str:
        email_key = normalize_email(email)
        ip_key = client_ip or "unknown"
        waits = [
            wait
            for wait in (
                self.email_limiter.retry_after(email_key),
                self.ip_limiter.retry_after(ip_key),
            )
            if wait is not None
        ]
        if waits:
            log.warning("login_rate_limited", client_ip=ip_key)
            raise TooManyAttempts(max(waits))
        self.email_limiter.record(email_key)
        self.ip_limiter.record(ip_key)
        user = await self.store.read(tables.user_by_email(email_key))
        if user is None:
            await self.hasher.verify_dummy(password)
            log.info("login_failed", client_ip=ip_key)
            raise InvalidCredentials
        if not await self.hasher.verify(user.password_hash, password):
            log.info("login_failed", client_ip=ip_key, user_id=user.id)
            raise InvalidCredentials
        if self.hasher.needs_rehash(user.password_hash):
            new_hash = await self.hasher.hash(password)
            await self.store.write(tables.update_password_hash(user.id, new_hash))
        token = new_token()
        token_hash = self.keyring.hash(TOKEN_PURPOSE, token)
        now = self.clock()
        expires_at = int((now + self.ttl).timestamp())
        await self.store.write(
            tables.insert_session(token_hash, user.id, int(now.timestamp()), expires_at)
        )
        self._remember(token_hash, CachedSession(Principal(user.id, _role(user.role)), expires_at))
        log.info("login", user_id=user.id)
        return token

    async def logout(self, token: str) -> None:
        token_hash = self.keyring.hash(TOKEN_PURPOSE, token)
        self._revoked[token_hash] = None
        while len(self._revoked) > self.cache_size:
            self._revoked.popitem(last=False)
        self._cache.pop(token_hash, None)
        await self.store.write(tables.delete_session(token_hash))
        log.info("logout")

    # --- the resolver -------------------------------------------------------------------

    async def resolve(self, token: str) -> Principal | None:
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        token_hash = self.keyring.hash(TOKEN_PURPOSE, token)
        if token_hash in self._revoked:
            return None
        now = int(self.clock().timestamp())
        cached = self._cache.get(token_hash)
        if cached is not None:
            if now < cached.expires_at:
                self._cache.move_to_end(token_hash)
                return cached.principal
            del self._cache[token_hash]
            return None
        unknown_until = self._unknown.get(token_hash)
        if unknown_until is not None:
            if time.monotonic() < unknown_until:
                return None
            del self._unknown[token_hash]
        self.db_lookups += 1
        row = await self.store.read(tables.session_by_hash(token_hash))
        if token_hash in self._revoked:  # logged out while we were reading
            return None
        if row is None or now >= row.expires_at:
            self._unknown[token_hash] = time.monotonic() + self.negative_ttl
            while len(self._unknown) > self.cache_size:
                self._unknown.popitem(last=False)
            return None
        session = CachedSession(Principal(row.user_id, _role(row.role)), row.expires_at)
        self._remember(token_hash, session)
        return session.principal

    def _remember(self, token_hash: str, session: CachedSession) -> None:
        self._unknown.pop(token_hash, None)
        self._cache[token_hash] = session
        self._cache.move_to_end(token_hash)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
