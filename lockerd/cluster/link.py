"""This node's line to PostgreSQL for the cluster: one owned thread, one connection.

Why a connection of its own (not the event store's): the advisory locks that say which node
owns which shard are *session-level* locks, so they live exactly as long as this connection.
When the node dies (kill -9 included) the kernel closes the socket, the server ends the session
at once and every lock of the node is released; the other nodes see that in ``pg_locks`` and
take the shards over. The store's connection reconnects freely after a failure; this one must
not silently come back holding nothing while the node believes it still owns its shards, so a
lost connection is reported (:attr:`ClusterLink.on_lost`) and the node stops its actors.

How long until the server notices a vanished node: at once when the node's host is alive (the
kernel sends FIN/RST); when the host or the network is gone, the session's own
``tcp_keepalives_*`` and ``tcp_user_timeout`` (set below: about 10 s) bound it. The node itself
notices a dead server through its heartbeat statement, bounded by libpq's keepalives and
``tcp_user_timeout`` (5 s), so it stops its actors before the server can give its shards away.

Threading: psycopg's async connection does not run under Trio, so, as the store does, the
link owns one named thread (``lockerd-cluster``) with a *sync* connection. The Trio side
submits jobs (functions of the connection) and awaits their results; the thread waits on the
connection's socket and a wake-up socket, so notifications arrive without polling delay.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, cast

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict

__all__ = [
    "CHANNEL_EVENTS",
    "CHANNEL_FLEET",
    "CHANNEL_MEMBERS",
    "CHANNEL_POINTS",
    "THREAD_NAME",
    "ClusterLink",
    "ClusterView",
    "DuplicateNode",
    "LinkLost",
]

logger = logging.getLogger(__name__)

THREAD_NAME: Final = "lockerd-cluster"
#: NOTIFY channels: membership and ownership changes, new events, live fleet status.
CHANNEL_MEMBERS: Final = "lockerd_members"
CHANNEL_EVENTS: Final = "lockerd_events"
CHANNEL_FLEET: Final = "lockerd_fleet"
#: metric points each node stored, for the live metric streams on the others
CHANNEL_POINTS: Final = "lockerd_points"
#: Seconds between heartbeats (the ``seen_at`` update that also proves the connection lives).
HEARTBEAT_SECONDS: Final = 1.0
#: Base of this node's lock key; shard locks use the shard number (0..SHARD_COUNT-1).
NODE_KEY_BASE: Final = 1_000_000
#: Key of the transaction lock that serialises creating the table (below every node key).
DDL_KEY: Final = NODE_KEY_BASE - 1

_TABLE_DDL: Final = """
CREATE TABLE IF NOT EXISTS cluster_nodes (
    node_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    lock_key BIGINT NOT NULL,
    backend_pid INTEGER NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL
)
"""

T = TypeVar("T")


class LinkLost(Exception):
    """The cluster connection is gone: every lock it held is gone with it."""


class DuplicateNode(Exception):
    """Another live node already runs under this node id."""


@dataclass(frozen=True, slots=True)
class ClusterView:
    """Who is live and who holds which shard, as ``pg_locks`` says at one moment."""

    live: dict[str, str]  # node id -> internal HTTP URL
    holders: dict[int, str]  # shard -> node id holding its lock


def namespace_for(schema: str) -> int:
    """The first advisory-lock key of this database schema's cluster (a positive int4).

    Advisory locks are per database, not per schema; keying them by schema keeps two
    deployments (or two test runs) in one database apart.
    """
    return zlib.crc32(f"lockerd.cluster:{schema}".encode()) & 0x3FFFFFFF


def node_key(node_id: str) -> int:
    return NODE_KEY_BASE + zlib.crc32(node_id.encode()) % 1_000_000_000


class _Job(Generic[T]):
    __slots__ = ("connects", "done", "error", "fn", "value")

    def __init__(self, fn: Callable[[Any], T], *, connects: bool = False) -> None:
        self.fn = fn
        self.connects = connects  # runs without a live connection: it makes one
        self.done = trio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None


class ClusterLink:
    """The cluster connection and its thread. Start with :meth:`start`, stop with :meth:`stop`.

    :meth:`call` runs a function of the connection on the thread. ``on_notify(channel,
    payload)`` and ``on_lost()`` are called on the Trio thread. After a loss the link does not
    reconnect by itself: :meth:`reconnect` (from the node's recovery loop) does, so nothing runs
    on a fresh session before the node has set it up again.
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        http_url: str,
        on_notify: Callable[[str, str], None],
        on_lost: Callable[[], None],
        connect_timeout: int = 5,
    ) -> None:
        self._url = url
        self.node_id = node_id
        self.http_url = http_url
        self._on_notify = on_notify
        self._on_lost = on_lost
        self._connect_timeout = connect_timeout
        self._token = trio.lowlevel.current_trio_token()
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._closing = False
        self.namespace = 0
        self.node_key = node_key(node_id)
        self.backend_pid = 0

    # ------------------------------------------------------------------ Trio side

    async def start(self) -> None:
        """Start the thread, connect and join; raises :class:`DuplicateNode` or LinkLost."""
        self._thread.start()
        await self.reconnect()

    async def reconnect(self) -> None:
        """A fresh session: connect, create the table, take the node lock, LISTEN, announce."""
        await self._submit(_Job(self._t_connect, connects=True))

    async def stop(self) -> None:
        """Close the connection (releasing every lock it holds) and join the thread."""
        self._closing = True
        self._jobs.put(None)
        self._wake()
        await trio.to_thread.run_sync(self._thread.join)
        self._wake_r.close()
        self._wake_w.close()

    async def call(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn(connection)`` on the link's thread; raises :class:`LinkLost` if it is gone."""
        return await self._submit(_Job(fn))

    async def _submit(self, job: _Job[T]) -> T:
        self._jobs.put(job)
        self._wake()
        await job.done.wait()
        if job.error is not None:
            raise job.error
        return cast(T, job.value)

    async def view(self) -> ClusterView:
        return await self.call(self._t_view)

    async def try_lock(self, shards: list[int]) -> list[int]:
        """The shards of ``shards`` whose lock this node now holds (it may hold some already)."""

        def job(conn: psycopg.Connection[Any]) -> list[int]:
            got: list[int] = []
            for shard in shards:
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (self.namespace, shard)
                ).fetchone()
                if row is not None and row[0]:
                    got.append(shard)
            return got

        return await self.call(job)

    async def unlock(self, shards: list[int]) -> None:
        def job(conn: psycopg.Connection[Any]) -> None:
            for shard in shards:
                # a session lock taken twice needs two unlocks; loop until it is really free
                while True:
                    row = conn.execute(
                        "SELECT pg_advisory_unlock(%s, %s)", (self.namespace, shard)
                    ).fetchone()
                    if row is None or not row[0]:
                        break

        with contextlib.suppress(LinkLost):
            await self.call(job)

    async def notify(self, channel: str, payload: str) -> None:
        def job(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

        await self.call(job)

    async def leave(self) -> None:
        """Release every lock, remove this node's row and tell the others (graceful stop)."""

        def job(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_advisory_unlock_all()")
            conn.execute("DELETE FROM cluster_nodes WHERE node_id = %s", (self.node_id,))
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL_MEMBERS, f"left {self.node_id}"))

        with contextlib.suppress(LinkLost):
            await self.call(job)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _deliver_notify(self, channel: str, payload: str) -> None:
        try:
            self._on_notify(channel, payload)
        except Exception:  # a broken handler must not kill the link
            logger.exception("cluster notification handler failed")

    def _deliver_lost(self) -> None:
        try:
            self._on_lost()
        except Exception:
            logger.exception("cluster loss handler failed")

    def _finish(self, job: _Job[Any]) -> None:
        job.done.set()

    # ------------------------------------------------------------------ thread side

    def _t_connect(self, _: psycopg.Connection[Any] | None) -> None:
        self._t_close()
        given = conninfo_to_dict(self._url)
        defaults: dict[str, Any] = {
            "connect_timeout": self._connect_timeout,
            "application_name": f"lockerd-cluster:{self.node_id}"[:63],
            "keepalives": 1,
            "keepalives_idle": 2,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": 5000,
        }
        options = {key: value for key, value in defaults.items() if key not in given}
        try:
            conn = psycopg.connect(self._url, autocommit=True, **options)
        except psycopg.Error as exc:
            raise LinkLost(f"cannot connect the cluster link: {exc}") from exc
        try:
            # the server's side of the same bound: a node whose host vanished without FIN/RST
            # loses its session (and its shards) after about 10 s
            conn.execute(
                "SET tcp_keepalives_idle = 4; SET tcp_keepalives_interval = 2;"
                " SET tcp_keepalives_count = 3; SET tcp_user_timeout = 10000;"
                " SET statement_timeout = 5000; SET TIME ZONE 'UTC'"
            )
            schema = conn.execute("SELECT current_schema()").fetchone()
            self.namespace = namespace_for(str(schema[0] if schema else "public"))
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)", (self.namespace, DDL_KEY)
                )  # CREATE TABLE IF NOT EXISTS races without it
                conn.execute(cast(Any, _TABLE_DDL))
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (self.namespace, self.node_key)
            ).fetchone()
            if row is None or not row[0]:
                raise DuplicateNode(
                    f"LOCKERD_NODE_ID: a node named {self.node_id!r} is already running on this"
                    " database"
                )
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()
            self.backend_pid = int(pid[0]) if pid else 0
            with conn.transaction():
                # a row that names our backend pid is stale (its session is gone)
                conn.execute(
                    "DELETE FROM cluster_nodes WHERE backend_pid = %s AND node_id <> %s",
                    (self.backend_pid, self.node_id),
                )
                conn.execute(
                    "INSERT INTO cluster_nodes"
                    " (node_id, url, lock_key, backend_pid, started_at, seen_at)"
                    " VALUES (%s, %s, %s, %s, now(), now())"
                    " ON CONFLICT (node_id) DO UPDATE SET url = EXCLUDED.url,"
                    " lock_key = EXCLUDED.lock_key, backend_pid = EXCLUDED.backend_pid,"
                    " started_at = EXCLUDED.started_at, seen_at = EXCLUDED.seen_at",
                    (self.node_id, self.http_url, self.node_key, self.backend_pid),
                )
            for channel in (CHANNEL_MEMBERS, CHANNEL_EVENTS, CHANNEL_FLEET, CHANNEL_POINTS):
                conn.execute(cast(Any, f"LISTEN {channel}"))
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL_MEMBERS, f"joined {self.node_id}"))
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _t_view(self, conn: psycopg.Connection[Any]) -> ClusterView:
        rows = conn.execute(
            "SELECT n.node_id, n.url, l.objid::bigint"
            " FROM pg_locks l JOIN cluster_nodes n ON n.backend_pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
            " AND l.classid = %s::bigint::oid"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (self.namespace,),
        ).fetchall()
        live: dict[str, str] = {}
        holders: dict[int, str] = {}
        node_keys = {
            node_id: key
            for node_id, key in conn.execute(
                "SELECT node_id, lock_key FROM cluster_nodes"
            ).fetchall()
        }
        for node_id, url, key in rows:
            if key == node_keys.get(node_id):
                live[node_id] = url
        for node_id, _, key in rows:
            if key < DDL_KEY and node_id in live:
                holders[int(key)] = node_id
        return ClusterView(live, holders)

    def _t_close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _t_lost(self, exc: BaseException) -> None:
        logger.error("cluster link lost: %s", exc)
        self._t_close()
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._deliver_lost)

    def _run(self) -> None:
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        try:
            while True:
                conn = self._conn
                timeout = max(0.0, next_beat - time.monotonic())
                watched: list[Any] = [self._wake_r]
                if conn is not None:
                    with contextlib.suppress(Exception):
                        watched.append(conn.fileno())
                with contextlib.suppress(OSError, ValueError):
                    select.select(watched, [], [], timeout)
                with contextlib.suppress(BlockingIOError, OSError):
                    while self._wake_r.recv(4096):
                        pass
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        return
                    self._t_run_job(job)
                conn = self._conn
                if conn is None:
                    next_beat = time.monotonic() + HEARTBEAT_SECONDS
                    continue
                try:
                    if time.monotonic() >= next_beat:
                        conn.execute(
                            "UPDATE cluster_nodes SET seen_at = now() WHERE node_id = %s",
                            (self.node_id,),
                        )
                        next_beat = time.monotonic() + HEARTBEAT_SECONDS
                    for note in conn.notifies(timeout=0.0):
                        with contextlib.suppress(trio.RunFinishedError):
                            self._token.run_sync_soon(
                                self._deliver_notify, note.channel, note.payload
                            )
                except psycopg.Error as exc:
                    self._t_lost(exc)
        finally:
            self._t_close()
            while True:  # nobody will run what is still queued
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.error = LinkLost("the cluster link is closed")
                    with contextlib.suppress(trio.RunFinishedError):
                        self._token.run_sync_soon(self._finish, job)

    def _t_run_job(self, job: _Job[Any]) -> None:
        if job.connects:
            try:
                job.value = job.fn(None)
            except Exception as exc:
                known = isinstance(exc, (DuplicateNode, LinkLost))
                job.error = exc if known else LinkLost(str(exc))
        elif self._conn is None:
            job.error = LinkLost("the cluster link is down")
        else:
            try:
                job.value = job.fn(self._conn)
            except psycopg.OperationalError as exc:
                job.error = LinkLost(str(exc))
                self._t_lost(exc)
            except Exception as exc:
                if self._conn is not None and self._conn.broken:
                    job.error = LinkLost(str(exc))
                    self._t_lost(exc)
                else:
                    job.error = exc
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._finish, job)
