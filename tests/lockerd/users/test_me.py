"""``GET /api/me``, ``POST /api/me/password``, disabled accounts and the session-ending methods
of ``SessionService`` (which issue 16's admin routes build on), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio

from lockerd.banks.projections import PROJECTIONS
from lockerd.users import tables
from lockerd.users.sessions import SessionService
from store import open_store
from store.base import SqlTx, Tables
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import ADMIN_TOKEN, database_url_for
from tests.support.users import PASSWORD, App, User, running_app

BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]
NEW_PASSWORD = "a much better passphrase"
T = TypeVar("T")


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(tmp_path, request.param)


def app_on(broker: MosquittoBroker, tmp_path: Path, database: str) -> Any:
    return running_app(broker.url, tmp_path / "unused.db", LOCKERD_DATABASE=database)


async def me(app: App, headers: dict[str, str]) -> httpx.Response:
    return await app.http.get("/api/me", headers=headers)


async def change(
    app: App, user: User, current: str, new: str = NEW_PASSWORD, **extra: Any
) -> httpx.Response:
    body = {"current_password": current, "new_password": new, **extra}
    return await app.http.post("/api/me/password", json=body, headers=user.headers)


async def test_me(mosquitto: MosquittoBroker, tmp_path: Path, database: str) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        user = await app.signed_in_user()
        admin = await app.signed_in_user(role="admin")
        response = await me(app, user.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "id": user.id,
            "email": user.email,
            "name": "Test User",
            "role": "user",
        }
        assert (await me(app, admin.headers)).json()["role"] == "admin"
        bootstrap = await me(app, app.admin_headers())
        assert bootstrap.json() == {
            "id": "admin",
            "email": None,
            "name": "admin token",
            "role": "admin",
        }
        assert (await app.http.get("/api/me")).status_code == 401
        bogus = {"Authorization": "Bearer nope"}
        assert (await me(app, bogus)).json()["error"] == "unauthorized"


async def test_changing_the_password_ends_every_other_session(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        user = await app.signed_in_user()
        other_device = await app.login(User(user.id, user.email, PASSWORD, "user"))
        someone_else = await app.signed_in_user()
        for session in (user, other_device, someone_else):
            assert (await me(app, session.headers)).status_code == 200  # cached now

        # 401 first, then the body (400), then the current password (403)
        no_token = await app.http.post(
            "/api/me/password", json={"current_password": PASSWORD, "new_password": "x"}
        )
        assert no_token.status_code == 401
        for body in (
            {"current_password": "wrong", "new_password": "short"},
            {"current_password": PASSWORD},
            {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "admin": True},
        ):
            response = await app.http.post("/api/me/password", json=body, headers=user.headers)
            assert response.status_code == 400, (body, response.text)
        wrong = await change(app, user, "not my password")
        assert wrong.status_code == 403, wrong.text
        assert wrong.json() == {"error": "forbidden", "message": "the current password is wrong"}
        assert (await me(app, other_device.headers)).status_code == 200  # nothing changed

        done = await change(app, user, PASSWORD)
        assert done.status_code == 204, done.text
        assert (await me(app, user.headers)).status_code == 200  # this session stays
        assert (await me(app, other_device.headers)).status_code == 401  # at once
        assert (await me(app, someone_else.headers)).status_code == 200
        old = await app.http.post("/api/login", json={"email": user.email, "password": PASSWORD})
        assert old.status_code == 401
        user.password = NEW_PASSWORD
        await app.login(user)
        # the bootstrap token has no password
        response = await app.http.post(
            "/api/me/password",
            json={"current_password": ADMIN_TOKEN, "new_password": NEW_PASSWORD},
            headers=app.admin_headers(),
        )
        assert response.status_code == 403


async def test_wrong_current_passwords_are_limited_like_sign_ins(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """A stolen token cannot be used to guess the account's password."""
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        user = await app.signed_in_user()
        for n in range(10):
            assert (await change(app, user, f"guess {n}")).status_code == 403
        limited = await change(app, user, PASSWORD)
        assert limited.status_code == 429, limited.text
        assert limited.json()["retry_after"] >= 1
        # and the account's sign-in is locked as well
        response = await app.http.post(
            "/api/login", json={"email": user.email, "password": PASSWORD}
        )
        assert response.status_code == 429


async def test_a_disabled_account_cannot_sign_in_and_its_tokens_stop_at_once(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        sessions: SessionService = app.context.sessions
        user = await app.signed_in_user()
        second = await app.login(User(user.id, user.email, PASSWORD, "user"))
        bystander = await app.signed_in_user()
        for session in (user, second, bystander):
            assert (await me(app, session.headers)).status_code == 200  # cached

        assert await sessions.set_disabled(user.id, True)
        for session in (user, second):
            response = await me(app, session.headers)
            assert response.status_code == 401, response.text
        assert (await me(app, bystander.headers)).status_code == 200
        right = await app.http.post("/api/login", json={"email": user.email, "password": PASSWORD})
        assert right.status_code == 401
        assert right.json() == {"error": "unauthorized", "message": "this account is disabled"}
        wrong = await app.http.post("/api/login", json={"email": user.email, "password": "x"})
        assert wrong.status_code == 401
        assert wrong.json()["message"] == "invalid email or password"
        assert (await app.context.tables.read(tables.user_by_id(user.id))).disabled  # type: ignore[union-attr]

        assert not await sessions.set_disabled("no-such-user", True)
        # enabled again: signing in works, the old sessions stay ended
        assert await sessions.set_disabled(user.id, False)
        assert (await me(app, user.headers)).status_code == 401
        await app.login(user)
        assert (await me(app, user.headers)).status_code == 200


async def test_disabled_survives_a_restart(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        user = await app.signed_in_user()
        await app.context.sessions.set_disabled(user.id, True)
    async with app_on(mosquitto, tmp_path, database) as app:
        assert (await me(app, user.headers)).status_code == 401
        response = await app.http.post(
            "/api/login", json={"email": user.email, "password": PASSWORD}
        )
        assert response.status_code == 401


async def test_end_sessions_keeps_only_the_one_asked_for(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        sessions: SessionService = app.context.sessions
        user = await app.signed_in_user()
        kept = await app.login(User(user.id, user.email, PASSWORD, "user"))
        ended = await app.login(User(user.id, user.email, PASSWORD, "user"))
        for session in (user, kept, ended):
            assert (await me(app, session.headers)).status_code == 200
        count = await sessions.end_sessions(
            user.id, except_token_hash=sessions.token_hash(kept.token)
        )
        assert count == 2
        assert [(await me(app, s.headers)).status_code for s in (user, kept, ended)] == [
            401,
            200,
            401,
        ]
        assert await sessions.end_sessions(user.id) == 1
        assert (await me(app, kept.headers)).status_code == 401
        # the user still signs in
        await app.login(user)


class GatedReads:
    """A ``Tables`` that runs reads at once but holds their answers until ``gate`` is set: a
    lookup that read the table before a change committed, and returns after it."""

    def __init__(self, inner: Tables) -> None:
        self.inner = inner
        self.gate = trio.Event()
        self.holding = trio.Event()

    async def read(self, fn: Callable[[SqlTx], T]) -> T:
        result = await self.inner.read(fn)
        if not self.gate.is_set():
            self.holding.set()
            await self.gate.wait()
        return result

    async def write(self, fn: Callable[[SqlTx], T]) -> T:
        return await self.inner.write(fn)


async def test_a_lookup_racing_with_end_sessions_cannot_bring_a_session_back(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        user = await app.signed_in_user()
        context = app.context
        gated = GatedReads(context.tables)
        fresh = SessionService(gated, context.keyring, context.clock)  # an empty cache
        results: list[Any] = []
        gated.gate.set()  # no holding for this first lookup
        assert (await fresh.resolve(user.token)) is not None  # a real session
        fresh = SessionService(gated, context.keyring, context.clock)
        gated.gate = trio.Event()
        async with trio.open_nursery() as nursery:

            async def look_up() -> None:
                results.append(await fresh.resolve(user.token))

            nursery.start_soon(look_up)
            await gated.holding.wait()  # it has read the row, the session still existed
            gated.gate.set()  # later reads answer at once
            await fresh.end_sessions(user.id)
        assert results == [None]
        assert await fresh.resolve(user.token) is None


OLD_USERS_DDL = """CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
)"""


async def test_an_existing_database_gets_the_disabled_column(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    """A database written by the previous release (users without ``disabled``) is upgraded
    in place; its users sign in as before."""
    async with app_on(mosquitto, tmp_path, database) as app:
        user = await app.create_user()

        def password_hash(tx: SqlTx) -> str:
            return str(tx.query("SELECT password_hash FROM users")[0][0])

        stored_hash = await app.context.tables.read(password_hash)

    def recreate_old_shape(tx: SqlTx) -> None:
        tx.execute("DROP TABLE users")
        tx.execute("DROP TABLE table_migrations")
        tx.execute(OLD_USERS_DDL)
        tx.execute(
            "INSERT INTO users (id, email, name, role, password_hash, created_at)"
            " VALUES (?, ?, 'Old', 'user', ?, '2026-01-01T00:00:00+00:00')",
            (user.id, user.email, stored_hash),
        )

    async with open_store(database, PROJECTIONS) as store:
        await store.write(recreate_old_shape)

    for _ in range(2):  # the second start finds the migration done
        async with app_on(mosquitto, tmp_path, database) as app:
            await app.login(user)
            row = await app.context.tables.read(tables.user_by_id(user.id))
            assert row is not None and row.disabled is False and row.name == "Old"
            assert (await me(app, user.headers)).json()["name"] == "Old"
            await app.context.sessions.set_disabled(user.id, True)
            await app.context.sessions.set_disabled(user.id, False)


async def test_forget_user_makes_the_next_request_read_the_role_again(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        user = await app.signed_in_user()
        sessions: SessionService = app.context.sessions
        assert (await me(app, user.headers)).json()["role"] == "user"
        lookups = sessions.db_lookups

        def promote(tx: SqlTx) -> None:
            tx.execute("UPDATE users SET role = 'admin' WHERE id = ?", (user.id,))

        await app.context.tables.write(promote)
        assert (await me(app, user.headers)).json()["role"] == "user"  # still cached
        await sessions.forget_user(user.id)
        assert (await me(app, user.headers)).json()["role"] == "admin"
        assert sessions.db_lookups == lookups + 1
        admin_route = await app.http.get("/api/admin/locker-banks", headers=user.headers)
        assert admin_route.status_code == 200
