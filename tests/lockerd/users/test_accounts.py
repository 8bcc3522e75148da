"""User accounts and sessions: creation and its validation, sign-in, rate limits, tokens."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from domain.ratelimit import SlidingWindowLimiter
from lockerd.users.sessions import SessionService
from store.base import SqlTx
from tests.support.mosquitto import MosquittoBroker
from tests.support.users import PASSWORD, App, running_app

VALID = {"email": "ada@example.org", "password": PASSWORD, "name": "Ada", "role": "user"}


def sessions_of(app: App) -> SessionService:
    service: SessionService = app.context.sessions
    return service


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({k: v for k, v in VALID.items() if k != "email"}, "email"),
        ({k: v for k, v in VALID.items() if k != "password"}, "password"),
        ({k: v for k, v in VALID.items() if k != "name"}, "name"),
        ({**VALID, "email": "no-at-sign"}, "email"),
        ({**VALID, "email": "two@@example.org"}, "email"),
        ({**VALID, "email": "sp ace@example.org"}, "email"),
        ({**VALID, "email": 42}, "email"),
        ({**VALID, "password": "short"}, "password"),
        ({**VALID, "password": "x" * 2000}, "password"),
        ({**VALID, "name": ""}, "name"),
        ({**VALID, "name": "   "}, "name"),
        ({**VALID, "role": "root"}, "role"),
        ({**VALID, "role": None}, "role"),
        ({**VALID, "admin": True}, "admin"),
        ([VALID], ""),
        ("ada@example.org", ""),
        (None, ""),
    ],
)
async def test_create_user_validation(
    mosquitto: MosquittoBroker, tmp_path: Path, body: Any, mentions: str
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        response = await app.admin_post("/api/admin/users", body)
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["error"] == "invalid_input"
        assert mentions in error["message"]


async def test_create_user_bodies_that_are_not_json(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        for content, content_type in (
            (b"{not json", "application/json"),
            (b"email=a@b.c", "application/x-www-form-urlencoded"),
            (b"\xff\xfe", "application/json"),
            (b"", "application/json"),
        ):
            response = await app.http.post(
                "/api/admin/users",
                content=content,
                headers={**app.admin_headers(), "Content-Type": content_type},
            )
            assert 400 <= response.status_code < 500, (content, response.text)
            assert response.json()["error"] != "internal_error"


async def test_create_user_access_and_uniqueness(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        response = await app.http.post("/api/admin/users", json=VALID)
        assert response.status_code == 401
        first = await app.admin_post("/api/admin/users", VALID)
        assert first.status_code == 201, first.text
        assert set(first.json()) == {"id"}
        # email is unique, case-insensitive and trimmed
        again = await app.admin_post(
            "/api/admin/users", {**VALID, "email": "  ADA@Example.ORG ", "name": "Other"}
        )
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "conflict"
        assert "email" in again.json()["message"]
        # a user token on an admin route: 403, even with an invalid body
        user = await app.signed_in_user()
        for body in (VALID, {"nonsense": 1}):
            response = await app.http.post("/api/admin/users", json=body, headers=user.headers)
            assert response.status_code == 403, response.text
        # an admin-role user may use admin routes
        admin = await app.signed_in_user(role="admin")
        response = await app.http.post(
            "/api/admin/users",
            json={**VALID, "email": "grace@example.org"},
            headers=admin.headers,
        )
        assert response.status_code == 201, response.text


async def test_passwords_and_tokens_are_stored_only_as_hashes(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        user = await app.signed_in_user()

        def read(tx: SqlTx) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            return (
                tx.query("SELECT password_hash FROM users"),
                tx.query("SELECT token_hash, user_id FROM user_sessions"),
            )

        users, tokens = await app.context.tables.read(read)
        [(password_hash,)] = users
        assert password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert PASSWORD not in password_hash
        [(token_hash, user_id)] = tokens
        assert user_id == user.id
        assert token_hash == app.context.keyring.hash("session-token", user.token)
        assert token_hash != user.token


async def test_login_logout_and_bad_credentials(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        user = await app.create_user()
        wrong = await app.http.post(
            "/api/login", json={"email": user.email, "password": "wrong password"}
        )
        unknown = await app.http.post(
            "/api/login", json={"email": "nobody@example.org", "password": PASSWORD}
        )
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        assert wrong.json()["error"] == "unauthorized"
        bad_bodies: list[Any] = [{"email": user.email}, {"password": "x"}, {"email": 1}, []]
        for body in bad_bodies:
            response = await app.http.post("/api/login", json=body)
            assert response.status_code == 400, (body, response.text)

        response = await app.http.post(
            "/api/login", json={"email": user.email.upper(), "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"token"}
        user.token = response.json()["token"]
        assert (await app.http.get("/api/compartments", headers=user.headers)).status_code == 200
        # a user token is not an admin token
        response = await app.http.get("/api/admin/locker-banks", headers=user.headers)
        assert response.status_code == 403

        # a second session is independent of the first
        other = await app.login(await app.create_user())
        assert (await app.http.post("/api/logout", headers=user.headers)).status_code == 204
        response = await app.http.get("/api/compartments", headers=user.headers)
        assert response.status_code == 401
        assert (await app.http.post("/api/logout", headers=user.headers)).status_code == 401
        assert (await app.http.get("/api/compartments", headers=other.headers)).status_code == 200
        assert (await app.http.post("/api/logout")).status_code == 401


async def test_sessions_expire_and_survive_a_restart(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    db = tmp_path / "lockerd.db"
    async with running_app(mosquitto.url, db) as app:
        user = await app.signed_in_user()
    async with running_app(mosquitto.url, db) as app:
        sessions = sessions_of(app)
        assert sessions.db_lookups == 0
        for _ in range(5):
            response = await app.http.get("/api/compartments", headers=user.headers)
            assert response.status_code == 200, response.text
        # the first request read the table, the others were served from memory
        assert sessions.db_lookups == 1
        # unknown tokens are remembered as unknown for a while, too
        bogus = {"Authorization": "Bearer not-a-session"}
        for _ in range(3):
            assert (await app.http.get("/api/compartments", headers=bogus)).status_code == 401
        assert sessions.db_lookups == 2

        app.clock.advance(timedelta(hours=11, minutes=59))
        assert (await app.http.get("/api/compartments", headers=user.headers)).status_code == 200
        app.clock.advance(timedelta(minutes=2))
        response = await app.http.get("/api/compartments", headers=user.headers)
        assert response.status_code == 401
        # a new sign-in works and purges expired sessions
        await app.login(user)

        def count(tx: SqlTx) -> int:
            return int(tx.query("SELECT COUNT(*) FROM user_sessions")[0][0])

        assert await app.context.tables.read(count) == 1


def test_sliding_window_limiter() -> None:
    now = [0.0]
    limiter = SlidingWindowLimiter(3, 60.0, max_keys=2, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.record("a")
        now[0] += 10
    assert limiter.retry_after("a") == 30  # the first attempt leaves the window at t=60
    now[0] = 60.0
    assert limiter.retry_after("a") is None
    limiter.record("b")
    limiter.record("c")  # only two keys are tracked: "a" is forgotten
    assert limiter.retry_after("a") is None


async def test_openapi_documents_the_request_bodies(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        spec = (await app.http.get("/openapi.json")).json()
        paths = spec["paths"]
        for path in (
            "/api/admin/users",
            "/api/login",
            "/api/admin/compartments/{compartment_id}/grants",
        ):
            assert "requestBody" in paths[path]["post"], path
        for path in (
            "/api/logout",
            "/api/compartments/{compartment_id}/open",
            "/api/compartments/{compartment_id}/qr",
        ):
            assert "post" in paths[path], path
        assert "get" in paths["/api/transactions/{transaction_id}"]
        assert "get" in paths["/api/me"]
        assert "requestBody" in paths["/api/me/password"]["post"]
        parameters = paths["/api/transactions/{transaction_id}"]["get"]["parameters"]
        [wait] = [p for p in parameters if p["name"] == "wait"]
        assert wait["in"] == "query"
        assert (wait["schema"]["minimum"], wait["schema"]["maximum"]) == (1, 30)
        assert "delete" in paths["/api/admin/compartments/{compartment_id}/grants/{user_id}"]
