"""Sign-in, sessions, password changes, disabled accounts, and the bearer-token resolver.

A session token is a 256-bit random value handed out once; the server keeps only its keyed
hash (``Keyring.hash("session-token", token)``), with the user and an absolute expiry. Tokens
resolve from an in-memory LRU cache backed by the ``user_sessions`` table, so a token in use
costs a dictionary lookup and an HMAC, not a database round trip. A miss reads the table once
and the answer is remembered (briefly, for unknown tokens).

Every change that ends sessions goes through this class (:meth:`SessionService.logout`,
:meth:`~SessionService.end_sessions`, :meth:`~SessionService.set_disabled`,
:meth:`~SessionService.set_password`), which drops the affected entries from the cache as
well. A lookup that was reading the table while such a change committed is detected by a
generation counter (bumped before and after every change) and reads again, so an ended session
can never come back into the cache.

With several nodes (PostgreSQL, contract §7) each node has its own cache, so every such change
is also recorded in ``session_ends``, in the same transaction; each node reads that table once
a second (:meth:`SessionService.follow_other_nodes`) and drops what other nodes ended. A
session ended on one node therefore stops working on the others within about a second (on the
node that ended it: at once).

Sign-in limits (failed attempts only, per email and per client IP) are in
:mod:`lockerd.users.limits`.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
import trio

from domain import operations as ops
from domain.actor import Actor
from domain.keys import Keyring, new_token
from domain.records import NewEvent
from domain.wiretime import iso
from lockerd.http.auth import Principal, Role
from lockerd.users import tables
from lockerd.users.limits import SignInLimits, TooManyAttempts
from lockerd.users.passwords import PasswordHasher
from store.base import SqlTx, Tables

log = structlog.get_logger("lockerd.users")

TOKEN_PURPOSE = "session-token"
SESSION_TTL = timedelta(hours=12)
MAX_TOKEN_LENGTH = 256

__all__ = [
    "AccountDisabled",
    "EmailTaken",
    "InvalidCredentials",
    "SessionService",
    "SessionsEnded",
    "TooManyAttempts",
    "WrongPassword",
]


class InvalidCredentials(Exception):
    """Unknown email or wrong password: deliberately the same thing to the caller."""


class AccountDisabled(InvalidCredentials):
    """The credentials are right but the account is disabled (also a 401)."""


class WrongPassword(Exception):
    """The current password given to change it is wrong."""


class EmailTaken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class SessionsEnded:
    """Sessions that have just ended: the one of ``token_hash`` (a logout), or every one of
    ``user_id`` but ``keep_token_hash`` (a password change, a disabled account, an admin
    ending them). Told to the ``on_sessions_ended`` callbacks, e.g. to close live streams."""

    user_id: str | None = None
    token_hash: str | None = None
    keep_token_hash: str | None = None

    def covers(self, user_id: str, token_hash: str) -> bool:
        """Whether the session of ``token_hash`` (of ``user_id``) is one of those ended."""
        if self.token_hash is not None and token_hash == self.token_hash:
            return True
        return self.user_id == user_id and token_hash != self.keep_token_hash


@dataclass(frozen=True, slots=True)
class CachedSession:
    principal: Principal
    expires_at: int  # unix seconds


def normalize_email(email: str) -> str:
    return email.strip().lower()


def _role(text: str) -> Role:
    return "admin" if text == "admin" else "user"


class _SessionCache:
    """LRU of resolved sessions by token hash, indexed by user so a user's entries can go."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, CachedSession] = OrderedDict()
        self._of_user: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token_hash: str) -> CachedSession | None:
        entry = self._entries.get(token_hash)
        if entry is not None:
            self._entries.move_to_end(token_hash)
        return entry

    def put(self, token_hash: str, session: CachedSession) -> None:
        self.pop(token_hash)
        self._entries[token_hash] = session
        self._of_user.setdefault(session.principal.user_id, set()).add(token_hash)
        while len(self._entries) > self.size:
            self.pop(next(iter(self._entries)))

    def pop(self, token_hash: str) -> None:
        entry = self._entries.pop(token_hash, None)
        if entry is None:
            return
        hashes = self._of_user.get(entry.principal.user_id)
        if hashes is not None:
            hashes.discard(token_hash)
            if not hashes:
                del self._of_user[entry.principal.user_id]

    def drop_user(self, user_id: str, keep: str | None = None) -> None:
        for token_hash in list(self._of_user.get(user_id, ())):
            if token_hash != keep:
                self.pop(token_hash)


class SessionService:
    """Sign-in, sessions, users; the resolver behind :func:`lockerd.http.auth.authenticate`.

    The methods issue 16's admin routes build on (and that keep the cache right) are
    :meth:`set_disabled`, :meth:`end_sessions`, :meth:`forget_user` and :meth:`set_password`.
    """

    def __init__(
        self,
        store: Tables,
        keyring: Keyring,
        clock: Callable[[], datetime],
        *,
        hasher: PasswordHasher | None = None,
        ttl: timedelta = SESSION_TTL,
        limits: SignInLimits | None = None,
        cache_size: int = 50_000,
        negative_ttl: float = 30.0,
        on_sessions_ended: Sequence[Callable[[SessionsEnded], None]] = (),
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        self.ttl = ttl
        self.limits = limits or SignInLimits()
        self.cache_size = cache_size
        self.negative_ttl = negative_ttl
        self._cache = _SessionCache(cache_size)
        # token hash -> monotonic time until which "no such session" is believed
        self._unknown: OrderedDict[str, float] = OrderedDict()
        # logged-out token hashes: a revoked token never becomes valid again, and a lookup
        # that raced with its logout must not put it back into the cache
        self._revoked: OrderedDict[str, None] = OrderedDict()
        # bumped before and after every change that ends sessions (see the module docstring)
        self._generation = 0
        self._on_sessions_ended = tuple(on_sessions_ended)
        # ids of session ends already applied here (ours and other nodes'), by time recorded
        self._ends_seen: OrderedDict[str, int] = OrderedDict()
        self.db_lookups = 0

    def token_hash(self, token: str) -> str:
        return self.keyring.hash(TOKEN_PURPOSE, token)

    # --- users --------------------------------------------------------------------------

    async def create_user(
        self, email: str, password: str, name: str, role: Role, *, actor: Actor
    ) -> str:
        """A new user (``UserCreated`` by ``actor`` in the same transaction); raises
        :class:`EmailTaken`."""
        user_id = str(uuid.uuid4())
        password_hash = await self.hasher.hash(password)
        row = tables.UserRow(user_id, normalize_email(email), name, role, password_hash)
        now = self.clock()
        insert = tables.insert_user(row, iso(now))
        event = ops.UserCreated(actor=actor, at=now, user_id=user_id, email=row.email,
                                name=name, role=role)  # fmt: skip

        def write(tx: SqlTx) -> tuple[bool, list[NewEvent]]:
            created = insert(tx)
            return created, [ops.to_new_event(event)] if created else []

        created, _ = await self.store.record(ops.operator_stream("user", user_id), write)
        if not created:
            raise EmailTaken(email)
        log.info("user_created", user_id=user_id, role=role)
        return user_id

    async def users(self) -> list[tables.UserListing]:
        return await self.store.read(tables.list_users)

    async def listing(self, user_id: str) -> tables.UserListing | None:
        return await self.store.read(tables.listing_of(user_id))

    async def update_user(
        self,
        user_id: str,
        *,
        actor: Actor,
        name: str | None = None,
        role: Role | None = None,
        disabled: bool | None = None,
        password: str | None = None,
    ) -> bool:
        """Change what is given (``PATCH /api/admin/users/{id}``), recorded as ``UserUpdated``
        by ``actor`` in the same transaction. False: no such user.

        Disabling or a new password ends every session of the user at once, here and (through
        ``session_ends``) on every node; a role change makes every node read the user's
        sessions again. Enabling does not bring old sessions back.
        """
        password_hash = None if password is None else await self.hasher.hash(password)
        ends = bool(disabled) or password_hash is not None
        end = self._end(user_id=user_id, ended=ends)
        update = tables.recording(
            tables.update_user(
                user_id, name=name, role=role, disabled=disabled, password_hash=password_hash
            ),
            end,
        )
        event = ops.UserUpdated(actor=actor, at=self.clock(), user_id=user_id, name=name,
                                role=role, disabled=disabled,
                                password=None if password is None else True)  # fmt: skip

        def write(tx: SqlTx) -> tuple[bool, list[NewEvent]]:
            found = update(tx)
            return found, [ops.to_new_event(event)] if found else []

        self._bump()
        self._cache.drop_user(user_id)
        found, _ = await self.store.record(ops.operator_stream("user", user_id), write)
        self._bump()
        self._cache.drop_user(user_id)
        if found and ends:
            self._tell(SessionsEnded(user_id=user_id))
        log.info("user_updated", user_id=user_id, found=found, sessions_ended=ends)
        return found

    async def delete_user(self, user_id: str, *, actor: Actor) -> bool:
        """Delete the user and end every session of theirs at once (on every node), recorded
        as ``UserDeleted`` by ``actor``. False: no such user. Grants and group memberships are
        the caller's to end first (they are bank and group events)."""
        delete = tables.recording(tables.delete_user(user_id), self._end(user_id=user_id))
        event = ops.UserDeleted(actor=actor, at=self.clock(), user_id=user_id)

        def write(tx: SqlTx) -> tuple[bool, list[NewEvent]]:
            found = delete(tx)
            return found, [ops.to_new_event(event)] if found else []

        self._bump()
        self._cache.drop_user(user_id)
        found, _ = await self.store.record(ops.operator_stream("user", user_id), write)
        self._bump()
        self._cache.drop_user(user_id)
        if found:
            self._tell(SessionsEnded(user_id=user_id))
        log.info("user_deleted", user_id=user_id, found=found)
        return found

    async def user_exists(self, user_id: str) -> bool:
        return await self.store.read(tables.user_exists(user_id))

    async def user(self, user_id: str) -> tables.UserRow | None:
        """The user's row (None: no such user)."""
        return await self.store.read(tables.user_by_id(user_id))

    async def set_disabled(self, user_id: str, disabled: bool) -> bool:
        """Disable (or enable again) an account; False if there is no such user.

        Disabling ends every session of the user at once (their tokens get 401, cached ones
        included) and refuses their sign-in with 401 from then on. Enabling does not bring
        old sessions back: the user signs in again.
        """
        self._bump()
        self._cache.drop_user(user_id)
        write = tables.set_disabled(user_id, disabled)
        if disabled:
            write = tables.recording(write, self._end(user_id=user_id))
        found = await self.store.write(write)
        self._bump()
        self._cache.drop_user(user_id)
        if disabled:
            self._tell(SessionsEnded(user_id=user_id))
        log.info("user_disabled" if disabled else "user_enabled", user_id=user_id, found=found)
        return found

    async def end_sessions(self, user_id: str, except_token_hash: str | None = None) -> int:
        """End every session of the user, but the one whose token hash is given (if any).

        The ended tokens get 401 at once, also where they were cached. Returns how many
        sessions ended. For a deleted user call it after the user's row is gone.
        """
        self._bump()
        self._cache.drop_user(user_id, keep=except_token_hash)
        ended = await self.store.write(
            tables.recording(
                tables.delete_sessions_of(user_id, except_token_hash),
                self._end(user_id=user_id, keep_token_hash=except_token_hash),
            )
        )
        self._bump()
        self._cache.drop_user(user_id, keep=except_token_hash)
        self._tell(SessionsEnded(user_id=user_id, keep_token_hash=except_token_hash))
        log.info("sessions_ended", user_id=user_id, count=ended)
        return ended

    async def forget_user(self, user_id: str) -> None:
        """Drop the user's cached sessions (on every node), so that their next request reads
        the tables again.

        Call it *after* committing a change that a session carries (the role): requests then
        see the new role (on other nodes within about a second). A lookup racing with the
        change reads again (generation counter).
        """
        self._bump()
        self._cache.drop_user(user_id)
        await self.store.write(
            tables.recording(tables.nothing, self._end(user_id=user_id, ended=False))
        )

    async def set_password(
        self, user_id: str, password: str, *, keep_token_hash: str | None = None
    ) -> bool:
        """Set a new password; every session of the user but ``keep_token_hash`` ends.

        False if there is no such user.
        """
        password_hash = await self.hasher.hash(password)
        self._bump()
        self._cache.drop_user(user_id, keep=keep_token_hash)
        found = await self.store.write(
            tables.recording(
                tables.change_password(user_id, password_hash, keep_token_hash),
                self._end(user_id=user_id, keep_token_hash=keep_token_hash),
            )
        )
        self._bump()
        self._cache.drop_user(user_id, keep=keep_token_hash)
        self._tell(SessionsEnded(user_id=user_id, keep_token_hash=keep_token_hash))
        log.info("password_changed", user_id=user_id, found=found)
        return found

    async def change_password(
        self, user_id: str, token: str, current: str, new: str, client_ip: str | None
    ) -> None:
        """The signed-in user changes their own password (``POST /api/me/password``).

        Raises :class:`WrongPassword` if ``current`` is wrong, and :class:`TooManyAttempts`
        when the account or the client has too many failed attempts (a wrong current password
        counts like a failed sign-in, so a stolen token cannot be used to guess the
        password). Every other session of the user ends; the one of ``token`` stays valid.
        """
        user = await self.user(user_id)
        if user is None:
            raise WrongPassword
        async with self.limits.attempt(user.email, client_ip) as attempt:
            if not await self.hasher.verify(user.password_hash, current):
                attempt.failed()
                log.info("password_change_refused", user_id=user_id)
                raise WrongPassword
        await self.set_password(user_id, new, keep_token_hash=self.token_hash(token))

    # --- sign-in ------------------------------------------------------------------------

    async def login(self, email: str, password: str, client_ip: str | None) -> str:
        """A new session token for the credentials.

        Raises :class:`TooManyAttempts` (before checking anything) when the email address or
        the client has too many failed attempts, :class:`InvalidCredentials` for an unknown
        email or a wrong password (counted as a failure), :class:`AccountDisabled` for a
        disabled account with the right password (not counted: it was no guess).
        """
        email_key = normalize_email(email)
        generation = self._generation
        try:
            async with self.limits.attempt(email_key, client_ip) as attempt:
                user = await self.store.read(tables.user_by_email(email_key))
                if user is None:
                    await self.hasher.verify_dummy(password)
                    attempt.failed()
                    log.info("login_failed", client_ip=client_ip)
                    raise InvalidCredentials
                if not await self.hasher.verify(user.password_hash, password):
                    attempt.failed()
                    log.info("login_failed", client_ip=client_ip, user_id=user.id)
                    raise InvalidCredentials
        except TooManyAttempts:
            log.warning("login_rate_limited", client_ip=client_ip)
            raise
        if user.disabled:
            log.info("login_refused_disabled", user_id=user.id)
            raise AccountDisabled
        if self.hasher.needs_rehash(user.password_hash):
            new_hash = await self.hasher.hash(password)
            await self.store.write(tables.update_password_hash(user.id, new_hash))
        token = new_token()
        token_hash = self.token_hash(token)
        now = self.clock()
        expires_at = int((now + self.ttl).timestamp())
        await self.store.write(
            tables.insert_session(token_hash, user.id, int(now.timestamp()), expires_at)
        )
        if self._generation != generation:
            # sessions were ended meanwhile (the account disabled, say): look again
            current = await self.user(user.id)
            if current is None or current.disabled:
                await self.store.write(tables.delete_session(token_hash))
                raise AccountDisabled
        else:
            principal = Principal(user.id, _role(user.role))
            self._remember(token_hash, CachedSession(principal, expires_at))
        log.info("login", user_id=user.id)
        return token

    async def logout(self, token: str) -> None:
        token_hash = self.token_hash(token)
        self._revoked[token_hash] = None
        while len(self._revoked) > self.cache_size:
            self._revoked.popitem(last=False)
        self._cache.pop(token_hash)
        await self.store.write(
            tables.recording(tables.delete_session(token_hash), self._end(token_hash=token_hash))
        )
        self._tell(SessionsEnded(token_hash=token_hash))
        log.info("logout")

    # --- the resolver -------------------------------------------------------------------

    async def resolve(self, token: str) -> Principal | None:
        """The principal of a session token, or None (unknown, expired, ended, disabled)."""
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        token_hash = self.token_hash(token)
        if token_hash in self._revoked:
            return None
        now = int(self.clock().timestamp())
        cached = self._cache.get(token_hash)
        if cached is not None:
            if now < cached.expires_at:
                return cached.principal
            self._cache.pop(token_hash)
            return None
        unknown_until = self._unknown.get(token_hash)
        if unknown_until is not None:
            if time.monotonic() < unknown_until:
                return None
            del self._unknown[token_hash]
        while True:
            generation = self._generation
            self.db_lookups += 1
            row = await self.store.read(tables.session_by_hash(token_hash))
            if generation == self._generation:
                break  # no session ended while we were reading: the row is current
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
        self._cache.put(token_hash, session)

    # --- several nodes ------------------------------------------------------------------

    async def follow_other_nodes(self, *, interval: float = 1.0, lookback_ms: int = 60_000) -> None:
        """Apply the session ends other nodes record, forever (a supervised child with
        several nodes). Reads the last ``lookback_ms`` of ``session_ends`` every ``interval``
        seconds, so nodes whose clocks differ by less than that miss nothing; what was already
        applied (ours included) is skipped by id."""
        while True:
            since = int(time.time() * 1000) - lookback_ms
            for end in await self.store.read(tables.session_ends_since(since)):
                if end.id not in self._ends_seen:
                    self._seen(end)
                    self._apply_end(end)
            while self._ends_seen and next(iter(self._ends_seen.values())) < since:
                self._ends_seen.popitem(last=False)
            await trio.sleep(interval)  # the other nodes' changes are read, not announced

    def _end(
        self,
        *,
        user_id: str | None = None,
        token_hash: str | None = None,
        keep_token_hash: str | None = None,
        ended: bool = True,
    ) -> tables.SessionEnd:
        """A record of a change made here (applied here already; skipped when read back)."""
        end = tables.SessionEnd(
            uuid.uuid4().hex, int(time.time() * 1000), user_id, token_hash, keep_token_hash, ended
        )
        self._seen(end)
        return end

    def _seen(self, end: tables.SessionEnd) -> None:
        self._ends_seen[end.id] = end.at
        while len(self._ends_seen) > self.cache_size:
            self._ends_seen.popitem(last=False)

    def _apply_end(self, end: tables.SessionEnd) -> None:
        """Another node's change: drop what it ended (or changed) from this node's cache."""
        self._bump()
        if end.token_hash is not None:
            self._revoked[end.token_hash] = None
            while len(self._revoked) > self.cache_size:
                self._revoked.popitem(last=False)
            self._cache.pop(end.token_hash)
        if end.user_id is not None:
            self._cache.drop_user(end.user_id, keep=end.keep_token_hash)
        if end.ended:
            self._tell(SessionsEnded(end.user_id, end.token_hash, end.keep_token_hash))
        log.info("sessions_ended_elsewhere", user_id=end.user_id)

    def _tell(self, ended: SessionsEnded) -> None:
        for callback in self._on_sessions_ended:
            try:
                callback(ended)
            except Exception:  # a listener's bug must not undo the sessions' end
                log.exception("sessions_ended_listener_failed")

    def _bump(self) -> None:
        # ending sessions never makes an unknown token valid, so the "unknown" entries stay
        self._generation += 1
