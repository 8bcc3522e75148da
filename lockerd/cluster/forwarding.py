"""Which banks this node owns, and asking the owner of the others (the registry's placement).

:class:`Ownership` is the :class:`actors.registry.BankPlacement` of a cluster node. A bank is
local while this node holds its shard's lock; any other bank is asked on its owner, found in
the last :class:`~lockerd.cluster.link.ClusterView`, through the owner's internal route
(``POST /internal/cluster/banks/{id}/ask``, see :mod:`lockerd.cluster.routes`), authenticated
with a bearer token derived from the cluster's shared key ring.

Failure cases (docs/architecture.md, "More than one node"):

* no owner yet (a handover or a takeover in progress): wait for the ownership view to change,
  within the registry's ask timeout (then ``trio.TooSlowError``, a 503);
* the owner refuses (``not_owner``: it released the shard meanwhile): look again;
* the owner cannot be reached before anything was sent (connection refused: it died): look
  again, the view will show the new owner;
* the owner dies after the request was sent: :class:`BankUnavailable` (503). Whether the
  command was applied is unknown, exactly as for any request to a single node that dies; the
  request is not sent twice.

Device messages for banks owned elsewhere (the broker still delivering them to this node's
session after a handover) go to the owner in the background; liveness messages (heartbeats,
last wills) that arrive here late are dropped: they would tell the owner something stale.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Final, Protocol

import httpx
import structlog
import trio

from actors.bank import Outcome
from actors.registry import BankCameHere, BankUnavailable, UnknownBank
from domain import commands as c
from domain.keys import Keyring
from lockerd.cluster.feed import EventFeed
from lockerd.cluster.link import ClusterView
from lockerd.cluster.shards import shard_of
from lockerd.cluster.wire import WireError, decode_outcome, encode_ask

log = structlog.get_logger("lockerd.cluster.forwarding")

ASK_PATH: Final = "/internal/cluster/banks/{bank_id}/ask"
#: Seconds to wait for a new ownership view before looking again anyway.
LOOK_AGAIN_SECONDS: Final = 0.25
#: Device messages queued for the background forwarder; beyond it they are dropped (counted).
TELL_QUEUE: Final = 10_000
STALE_WHEN_LATE = (c.RecordHeartbeat, c.RecordLastWill)


def cluster_token(keyring: Keyring) -> str:
    """The bearer token nodes use among themselves (the same on every node of one database)."""
    return keyring.hash("cluster-internal", "forward")


class LocalInbox(Protocol):
    """This node's bank registry, for messages whose bank has become local meanwhile."""

    async def tell(
        self, bank_id: str, command: c.BankCommand, *, kind: str | None = None
    ) -> None: ...


class Ownership:
    def __init__(
        self,
        node_id: str,
        http: httpx.AsyncClient,
        token: str,
        feed: EventFeed,
        *,
        dropped: Callable[[str | None, str], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.http = http
        self.token = token
        self.feed = feed
        self._dropped = dropped
        self.held: set[int] = set()
        self.view = ClusterView({}, {})
        self._changed = trio.Event()
        self._tells_send, self._tells_receive = trio.open_memory_channel[
            tuple[str, c.BankCommand, str | None]
        ](TELL_QUEUE)

    # ------------------------------------------------------------------ state

    def is_local(self, bank_id: str) -> bool:
        return shard_of(bank_id) in self.held

    def owner_of(self, bank_id: str) -> str | None:
        return self.view.holders.get(shard_of(bank_id))

    def update(self, view: ClusterView | None = None) -> None:
        """A new view and/or a change of :attr:`held`: wake everyone waiting for an owner."""
        if view is not None:
            self.view = view
        self._changed.set()
        self._changed = trio.Event()

    def authorized(self, header: str | None) -> bool:
        expected = f"Bearer {self.token}"
        return header is not None and hmac.compare_digest(header.encode(), expected.encode())

    async def _look_again(self) -> None:
        with trio.move_on_after(LOOK_AGAIN_SECONDS):
            await self._changed.wait()

    # ------------------------------------------------------------------ BankPlacement

    async def ask_remote(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None,
        secret: str | None,
        allow_new: bool,
    ) -> Outcome:
        body = encode_ask(command, kind=kind, secret=secret, allow_new=allow_new)
        response = await self._post_to_owner(bank_id, body)
        if response.status_code == 200:
            try:
                outcome = decode_outcome(response.content)
            except WireError as exc:
                raise BankUnavailable(f"bank {bank_id}: {exc}") from None
            if outcome.stored:
                # read your writes: this node's directory and read models see them now
                await self.feed.catch_up(until=max(s.position for s in outcome.stored))
            return outcome
        if response.status_code == 404:
            raise UnknownBank(bank_id)
        raise BankUnavailable(f"bank {bank_id}: its node answered {response.status_code}")

    async def _post_to_owner(self, bank_id: str, body: bytes) -> httpx.Response:
        """POST ``body`` to the node that owns ``bank_id`` now, following ownership moves
        (no owner yet, owner gone before anything was sent, 409: not the owner any more) until
        a node answers otherwise. Raises :class:`BankCameHere` once this node owns the bank,
        and :class:`BankUnavailable` when the owner took the request but did not answer."""
        while True:
            if self.is_local(bank_id):
                raise BankCameHere(bank_id)
            owner = self.owner_of(bank_id)
            url = None if owner is None or owner == self.node_id else self.view.live.get(owner)
            if url is None:
                await self._look_again()
                continue
            try:
                response = await self.http.post(
                    url + ASK_PATH.format(bank_id=bank_id),
                    content=body,
                    headers={
                        "Authorization": f"Bearer {self.token}",
                        "Content-Type": "application/json",
                    },
                )
            except httpx.ConnectError:
                # nothing was sent: the owner is gone; the view will name the next one
                await self._look_again()
                continue
            except httpx.HTTPError as exc:
                raise BankUnavailable(f"bank {bank_id}: its node {owner} did not answer") from exc
            if response.status_code == 409:  # not the owner any more
                await self._look_again()
                continue
            return response

    async def tell_remote(self, bank_id: str, command: c.BankCommand, *, kind: str | None) -> None:
        self.tell_remote_nowait(bank_id, command, kind)

    def tell_remote_nowait(self, bank_id: str, command: c.BankCommand, kind: str | None) -> None:
        """Queue a device message for the owner (dropped and counted when stale or full)."""
        if isinstance(command, STALE_WHEN_LATE):
            self._drop(kind, "not_owner")
            return
        try:
            self._tells_send.send_nowait((bank_id, command, kind))
        except trio.WouldBlock:
            self._drop(kind, "forward_queue_full")

    def _drop(self, kind: str | None, reason: str) -> None:
        if self._dropped is not None:
            self._dropped(kind, reason)

    async def forward_tells(self, local: LocalInbox) -> None:
        """Deliver queued device messages to their owners, one at a time, in order; to
        ``local`` (the registry) when this node has become the owner meanwhile."""
        async for bank_id, command, kind in self._tells_receive:
            try:
                with trio.fail_after(10.0):
                    if self.is_local(bank_id):
                        await local.tell(bank_id, command, kind=kind)
                        continue
                    await self._tell_once(bank_id, command, kind)
            except BankCameHere:
                await local.tell(bank_id, command, kind=kind)
            except (trio.TooSlowError, BankUnavailable, UnknownBank) as exc:
                self._drop(kind, "forward_failed")
                log.warning("forward_failed", bank_id=bank_id, kind=kind, error=repr(exc))

    async def _tell_once(self, bank_id: str, command: c.BankCommand, kind: str | None) -> None:
        body = encode_ask(command, kind=kind, secret=None, allow_new=False, tell=True)
        response = await self._post_to_owner(bank_id, body)
        if response.status_code >= 300:
            raise BankUnavailable(f"bank {bank_id}: its node answered {response.status_code}")
