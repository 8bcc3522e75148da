"""What the PostgreSQL backend adds to the shared store suite (``test_sqlite_store.py``).

The placeholder rewriting is pure and always tested. Everything else needs a server: it runs
when ``LOCKERD_TEST_POSTGRES_URL`` is set (``scripts/test.sh`` sets it when PostgreSQL answers on
127.0.0.1:5432), each test in a fresh schema that is dropped afterwards.

No test sleeps on a guess: where a test must know that a session is blocked inside PostgreSQL it
polls ``pg_stat_activity`` (the only place that state can be seen), bounded by ``fail_after``.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import trio
import trio.testing

from store import ConcurrencyError, NewEvent, SqlTx, StoreUnavailable, open_store
from store.migrations.postgres import LATEST_VERSION, MIGRATIONS
from store.postgres import (
    THREAD_NAME,
    WATCHDOG_THREAD_NAME,
    PostgresEventStore,
    SwallowedDatabaseError,
    open_postgres_store,
    to_pyformat,
)
from tests.support.postgres import create_schema, drop_schema, server_url, url_with_search_path

DEADLINE = 30

needs_postgres = pytest.mark.skipif(
    server_url() is None, reason="LOCKERD_TEST_POSTGRES_URL is not set (no PostgreSQL to test)"
)


def ev(type_: str = "Happened", **data: Any) -> NewEvent:
    return NewEvent(type=type_, data=data)


# =========================================================================== placeholders


@pytest.mark.parametrize(
    ("portable", "pyformat"),
    [
        ("SELECT * FROM t WHERE a = ? AND b > ?", "SELECT * FROM t WHERE a = %s AND b > %s"),
        ("SELECT position % 2 FROM events", "SELECT position %% 2 FROM events"),
        ("SELECT 'what?', ?", "SELECT 'what?', %s"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
        ("SELECT '100%' || ?", "SELECT '100%%' || %s"),
        ("SELECT E'\\' ?', ?", "SELECT E'\\' ?', %s"),
        ('SELECT "odd?col" FROM t WHERE x = ?', 'SELECT "odd?col" FROM t WHERE x = %s'),
        ("SELECT 1 -- really?\n, ?", "SELECT 1 -- really?\n, %s"),
        ("SELECT /* a /* nested? */ b? */ ?", "SELECT /* a /* nested? */ b? */ %s"),
        ("SELECT $$ ? $$, $q$ ?$ $q$, ?", "SELECT $$ ? $$, $q$ ?$ $q$, %s"),
        ("SELECT a$b, ?", "SELECT a$b, %s"),
        ("PREPARE p AS SELECT $1, ?", "PREPARE p AS SELECT $1, %s"),
        ("SELECT 'unterminated ?", "SELECT 'unterminated ?"),
        ("", ""),
    ],
)
def test_to_pyformat(portable: str, pyformat: str) -> None:
    assert to_pyformat(portable) == pyformat


# =========================================================================== fixtures


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose search_path is a fresh, empty schema (dropped afterwards)."""
    base = server_url()
    if base is None:  # pragma: no cover - the marker skips first
        pytest.skip("no PostgreSQL")
    schema = create_schema(base)
    try:
        yield url_with_search_path(base, schema)
    finally:
        drop_schema(base, schema)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresEventStore]:
    async with open_postgres_store(pg_url) as opened:
        yield opened


def raw(url: str) -> psycopg.Connection[Any]:
    """A separate connection, as another process would have."""
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


async def backend_pid(store: PostgresEventStore) -> int:
    return int(await store.read(lambda tx: tx.query("SELECT pg_backend_pid()")[0][0]))


async def lockerd_session_waiting_for_lock(url: str) -> int:
    """Poll until a lockerd session waits for a lock (advisory or row); returns its pid."""

    def find() -> int | None:
        with raw(url) as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'lockerd'"
                " AND wait_event_type = 'Lock' LIMIT 1"
            ).fetchone()
        return None if row is None else int(row[0])

    with trio.fail_after(DEADLINE):
        while (pid := await trio.to_thread.run_sync(find)) is None:  # noqa: ASYNC110
            await trio.sleep(0.01)  # the state lives in another process: nothing to await
    return pid


# =========================================================================== schema


@needs_postgres
async def test_migrations_are_recorded_and_reopen_is_harmless(pg_url: str) -> None:
    async with open_postgres_store(pg_url) as store:
        assert await store.schema_version() == LATEST_VERSION
        rows = await store.read(
            lambda tx: tx.query("SELECT version, description FROM schema_migrations ORDER BY 1")
        )
        assert rows == [(m.version, m.description) for m in MIGRATIONS]
    async with open_postgres_store(pg_url) as store:
        assert await store.read(lambda tx: tx.query("SELECT count(*) FROM schema_migrations")) == [
            (len(MIGRATIONS),)
        ]


@needs_postgres
async def test_newer_schema_is_refused(pg_url: str) -> None:
    async with open_postgres_store(pg_url):
        pass
    with raw(pg_url) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, description) VALUES (%s, 'from the future')",
            (LATEST_VERSION + 1,),
        )
    with pytest.raises(StoreUnavailable, match="newer"):
        async with open_postgres_store(pg_url):
            pass  # pragma: no cover


@needs_postgres
async def test_many_stores_opening_a_fresh_schema_at_once(pg_url: str) -> None:
    """Concurrent ``CREATE TABLE IF NOT EXISTS`` races in PostgreSQL; the migration lock doesn't."""
    opened: list[int] = []

    async def open_one() -> None:
        async with open_postgres_store(pg_url) as store:
            opened.append(await store.schema_version())

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(open_one)
    assert opened == [LATEST_VERSION] * 5


@needs_postgres
async def test_missing_schema_is_a_clear_open_error() -> None:
    base = server_url()
    assert base is not None
    with pytest.raises(StoreUnavailable, match="no schema has been selected"):
        async with open_postgres_store(url_with_search_path(base, "lockerd_test_absent")):
            pass  # pragma: no cover


@needs_postgres
async def test_open_store_dispatches_to_postgres(pg_url: str) -> None:
    async with open_store(pg_url) as store:
        assert isinstance(store, PostgresEventStore)
        await store.ping()


# =========================================================================== high-water mark


def insert_uncommitted(conn: psycopg.Connection[Any], stream_id: str) -> int:
    """Begin a transaction that inserts one event as another writer would, and leave it open."""
    conn.execute("BEGIN")
    row = conn.execute(
        "INSERT INTO events (stream_id, version, type, data, recorded_at)"
        " VALUES (%s, 1, 'Outside', '{}', now()) RETURNING position",
        (stream_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


@needs_postgres
async def test_positions_wait_for_uncommitted_inserts(pg_url: str) -> None:
    """The high-water-mark guard: no position is handed out above an uncommitted one.

    Another session has inserted (position p) and not committed. Our append must wait for it
    instead of taking p+1 and committing first, which would let a reader page past p for good.
    """
    async with open_postgres_store(pg_url) as writer, open_postgres_store(pg_url) as reader:
        with raw(pg_url) as other:
            first = insert_uncommitted(other, "outside")
            appended: list[int] = []

            async def append() -> None:
                stored = await writer.append("inside", 0, [ev(n=1)])
                appended.append(stored[0].position)

            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(append)
                    await lockerd_session_waiting_for_lock(pg_url)
                    assert await reader.read_all() == []
                    assert appended == []
                    other.execute("COMMIT")
        everything = await reader.read_all()
    assert [(e.stream_id, e.position) for e in everything] == [
        ("outside", first),
        ("inside", appended[0]),
    ]
    assert first < appended[0]


@needs_postgres
async def test_without_the_guard_a_pager_would_skip_events(pg_url: str) -> None:
    """Control experiment: with the trigger disabled the hazard is real (so the test above is)."""
    async with open_postgres_store(pg_url) as store:
        with raw(pg_url) as other:
            other.execute("ALTER TABLE events DISABLE TRIGGER events_position_lock")
            first = insert_uncommitted(other, "outside")
            with trio.fail_after(DEADLINE):
                inside = await store.append("inside", 0, [ev()])
            page = await store.read_all()
            assert [e.stream_id for e in page] == ["inside"]
            other.execute("COMMIT")
        assert first < inside[0].position
        # Paging on from the last position seen never returns "outside": it was skipped.
        assert await store.read_all(after_position=page[-1].position) == []


@needs_postgres
async def test_unique_constraint_catches_what_the_version_check_cannot_see(
    pg_url: str,
) -> None:
    """Another writer inserted version 1 but has not committed when our check runs.

    lockerd's own writers cannot get there (they take the position lock before checking), so
    the writer here bypasses it, with the trigger disabled: the constraint must still hold.
    """
    async with open_postgres_store(pg_url) as store:
        with raw(pg_url) as other:
            other.execute("ALTER TABLE events DISABLE TRIGGER events_position_lock")
            insert_uncommitted(other, "s")
            outcome: list[BaseException] = []

            async def append() -> None:
                try:
                    await store.append("s", 0, [ev(mine=True)])
                except ConcurrencyError as exc:
                    outcome.append(exc)

            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(append)
                    await lockerd_session_waiting_for_lock(pg_url)
                    other.execute("COMMIT")
        assert len(outcome) == 1
        error = outcome[0]
        assert isinstance(error, ConcurrencyError)
        assert (error.expected, error.actual) == (0, 1)
        assert isinstance(error.__cause__, psycopg.errors.UniqueViolation)
        assert [e.type for e in await store.read_stream("s")] == ["Outside"]
        assert (await store.append("s", 1, [ev()]))[0].version == 2


# =========================================================================== failures


@needs_postgres
async def test_statement_timeout_gives_store_unavailable_and_the_store_carries_on(
    pg_url: str,
) -> None:
    async with open_postgres_store(pg_url, statement_timeout=0.3, client_grace=5) as store:
        with trio.fail_after(DEADLINE), pytest.raises(StoreUnavailable, match="cancelled"):
            await store.read(lambda tx: tx.query("SELECT pg_sleep(10)"))
        with pytest.raises(StoreUnavailable, match="cancelled"):
            await store.write(lambda tx: tx.execute("SELECT pg_sleep(10)"))
        await store.ping()
        assert (await store.append("s", 0, [ev()]))[0].version == 1
        assert store.connects == 1  # a cancelled statement does not cost the connection


@needs_postgres
async def test_lost_connection_fails_the_call_and_the_next_one_reconnects(pg_url: str) -> None:
    async with open_postgres_store(pg_url) as store:
        await store.append("s", 0, [ev()])
        pid = await backend_pid(store)
        with raw(pg_url) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreUnavailable):
            await store.append("s", 1, [ev()])
        assert (await store.append("s", 1, [ev()]))[0].version == 2
        assert await backend_pid(store) != pid
        assert store.connects == 2
        with raw(pg_url) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (await backend_pid(store),))
        with pytest.raises(StoreUnavailable):
            await store.ping()
        await store.ping()
        assert await store.stream_version("s") == 2


async def test_refused_connection_is_store_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on ``port`` any more.
    with trio.fail_after(DEADLINE), pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1"):
        async with open_postgres_store(f"postgresql://nobody@127.0.0.1:{port}/none"):
            pass  # pragma: no cover
    assert not [t for t in threading.enumerate() if t.name in (THREAD_NAME, WATCHDOG_THREAD_NAME)]


async def test_silent_server_is_bounded_by_connect_timeout() -> None:
    """A server that accepts TCP and never answers: the open fails after connect_timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = trio.current_time()
        with trio.fail_after(DEADLINE), pytest.raises(StoreUnavailable):
            async with open_postgres_store(
                f"postgresql://nobody@127.0.0.1:{port}/none", connect_timeout=2
            ):
                pass  # pragma: no cover
        assert 1.5 <= trio.current_time() - started < 10


class FreezableProxy:
    """A TCP proxy to the test server that can stop forwarding without closing anything.

    That is what a hung server (stuck disk, stopped process) looks like from the client: the
    connection stays up, nothing comes back, and the server's own timeouts cannot fire.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.flowing = trio.Event()
        self.flowing.set()
        self.port = 0

    def freeze(self) -> None:
        self.flowing = trio.Event()

    def thaw(self) -> None:
        self.flowing.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream(*self.target) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self.pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self.pump, server, client, nursery.cancel_scope)

    async def pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some():
                await self.flowing.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


@needs_postgres
async def test_hung_server_is_cut_off_by_the_client_watchdog(pg_url: str) -> None:
    info = psycopg.conninfo.conninfo_to_dict(pg_url)
    proxy = FreezableProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        parts = urlsplit(pg_url)
        user = f"{parts.username}@" if parts.username else ""
        url = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
        async with open_postgres_store(url, statement_timeout=0.5, client_grace=0.5) as store:
            await store.append("s", 0, [ev()])
            proxy.freeze()
            started = trio.current_time()
            with trio.fail_after(DEADLINE), pytest.raises(StoreUnavailable, match="did not answer"):
                await store.append("s", 1, [ev()])
            assert trio.current_time() - started < 10
            proxy.thaw()
            # The cut connection is gone; the next call connects again through the proxy.
            assert (await store.append("s", 1, [ev()]))[0].version == 2
            assert store.connects == 2
        nursery.cancel_scope.cancel()


# =========================================================================== SQL behaviour


@needs_postgres
async def test_portable_sql_placeholders_percent_and_question_marks(
    store: PostgresEventStore,
) -> None:
    def write(tx: SqlTx) -> int:
        tx.execute("CREATE TABLE notes (k TEXT PRIMARY KEY, body TEXT NOT NULL, n BIGINT)")
        tx.execute("INSERT INTO notes VALUES (?, 'what? 100%', ?)", ("a", 7))
        tx.executemany("INSERT INTO notes (k, body, n) VALUES (?, ?, ?)", [("b", "x?", 8)])
        return tx.execute("UPDATE notes SET n = n % 5 WHERE k LIKE 'a%'")

    assert await store.write(write) == 1
    assert await store.read(
        lambda tx: tx.query("SELECT k, body, n FROM notes WHERE body <> ? ORDER BY k", ["?"])
    ) == [("a", "what? 100%", 2), ("b", "x?", 8)]
    # SELECT and DDL change no rows, as in SQLite.
    assert await store.write(lambda tx: tx.execute("SELECT k FROM notes")) == 0
    assert await store.write(lambda tx: tx.execute("CREATE TABLE empty (a BIGINT)")) == 0
    assert await store.read(lambda tx: tx.query("SET LOCAL work_mem = '8MB'")) == []


@needs_postgres
async def test_numeric_results_are_int_or_float_never_decimal(store: PostgresEventStore) -> None:
    await store.write(lambda tx: tx.execute("CREATE TABLE nums (n BIGINT)"))
    await store.write(lambda tx: tx.executemany("INSERT INTO nums VALUES (?)", [(1,), (2,)]))
    ((total, average, precise),) = await store.read(
        lambda tx: tx.query("SELECT SUM(n), AVG(n), 2.5::numeric FROM nums")
    )
    assert (total, type(total)) == (3, int)
    assert (average, type(average)) == (1.5, float)
    assert (precise, type(precise)) == (2.5, float)


@needs_postgres
async def test_event_data_is_kept_verbatim(store: PostgresEventStore) -> None:
    data = {"big": 1e300, "tiny": 5e-324, "nul": "a\u0000b", "z": [1, {"y": 2, "x": 3}]}
    stored = await store.append("s", 0, [ev(**data)])
    assert (await store.read_stream("s"))[0].data == data == stored[0].data
    (text,) = await store.read(lambda tx: tx.query("SELECT data::text FROM events")[0])
    assert text == json.dumps(data, separators=(",", ":"), sort_keys=True)


@needs_postgres
async def test_stream_ids_sort_by_code_point(store: PostgresEventStore) -> None:
    names = ["b", "B", "a-1", "a1", "a", "ä", "a 2", "Z"]
    for name in names:
        await store.append(name, 0, [ev()])
    assert await store.stream_ids() == sorted(names)


@needs_postgres
async def test_a_write_function_that_swallows_a_database_error_is_rolled_back(
    store: PostgresEventStore,
) -> None:
    await store.write(lambda tx: tx.execute("CREATE TABLE u (email TEXT PRIMARY KEY)"))
    await store.write(lambda tx: tx.execute("INSERT INTO u VALUES ('taken')"))

    def sloppy(tx: SqlTx) -> bool:
        tx.execute("INSERT INTO u VALUES ('new')")
        try:
            tx.execute("INSERT INTO u VALUES ('taken')")
        except psycopg.errors.UniqueViolation:
            return False
        return True  # pragma: no cover

    results: dict[str, object] = {}

    async def run(name: str, fn: Any) -> None:
        try:
            results[name] = await fn()
        except Exception as exc:
            results[name] = exc

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "sloppy", lambda: store.write(sloppy))
            nursery.start_soon(run, "append", lambda: store.append("s", 0, [ev()]))
    assert isinstance(results["sloppy"], SwallowedDatabaseError)
    assert isinstance(results["append"], list)
    assert await store.read(lambda tx: tx.query("SELECT email FROM u")) == [("taken",)]


@needs_postgres
async def test_threads_live_exactly_as_long_as_the_store(pg_url: str) -> None:
    def mine() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name in (THREAD_NAME, WATCHDOG_THREAD_NAME)]

    before = set(mine())
    async with open_postgres_store(pg_url) as store:
        ours = [t for t in mine() if t not in before]
        assert sorted(t.name for t in ours) == [THREAD_NAME, WATCHDOG_THREAD_NAME]
        await store.ping()
    assert not any(t.is_alive() for t in ours)
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.ping()


@needs_postgres
async def test_session_settings(store: PostgresEventStore) -> None:
    rows = await store.read(
        lambda tx: tx.query(
            "SELECT current_setting('TimeZone'), current_setting('statement_timeout'),"
            " current_setting('application_name'), current_setting('transaction_read_only'),"
            " current_setting('transaction_isolation')"
        )
    )
    assert rows == [("UTC", "30s", "lockerd", "on", "repeatable read")]
    isolation = await store.write(
        lambda tx: tx.query("SELECT current_setting('transaction_isolation')")
    )
    assert isolation == [("read committed",)]
