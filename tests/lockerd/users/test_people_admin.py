"""Users admin (contract §5): list, edit, disable, delete, on both stores, with the actor of
every change recorded; grants listed with who granted them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import database_url_for
from tests.support.users import PASSWORD, App, User, running_app

BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(tmp_path, request.param)


def app_on(broker: MosquittoBroker, tmp_path: Path, database: str) -> Any:
    return running_app(broker.url, tmp_path / "unused.db", LOCKERD_DATABASE=database)


async def patch(app: App, user_id: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    return await app.http.patch(
        f"/api/admin/users/{user_id}", json=body, headers=headers or app.admin_headers()
    )


async def audit(app: App, **params: str) -> list[dict[str, Any]]:
    response = await app.http.get("/api/admin/audit", params=params, headers=app.admin_headers())
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


async def test_list_edit_disable_and_delete_users(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        admin = await app.signed_in_user(role="admin")
        user = await app.signed_in_user()

        listed = (await app.admin_get("/api/admin/users")).json()
        mine = next(entry for entry in listed if entry["id"] == user.id)
        assert mine == {
            "id": user.id,
            "email": user.email,
            "name": "Test User",
            "role": "user",
            "disabled": False,
            "created_at": mine["created_at"],
        }
        assert mine["created_at"].endswith("Z")
        assert {entry["id"] for entry in listed} >= {admin.id, user.id}

        # an admin user's changes name that user; the admin token's name the token
        response = await patch(
            app, user.id, {"name": "  Renamed  ", "role": "admin"}, admin.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "Renamed"
        assert response.json()["role"] == "admin"
        me = await app.http.get("/api/me", headers=user.headers)
        assert me.json()["role"] == "admin"  # the session follows the role at once
        assert (await patch(app, user.id, {"role": "user"})).status_code == 200

        updates = await audit(app, type="UserUpdated")
        assert updates[0]["actor"] == {"kind": "admin_token"}
        assert updates[1]["actor"] == {"kind": "user", "id": admin.id}
        assert updates[1]["data"]["user_id"] == user.id
        assert updates[1]["bank_id"] is None
        created = await audit(app, type="UserCreated", actor_id="admin_token")
        assert user.id in {entry["data"]["user_id"] for entry in created}
        assert all("password" not in str(entry["data"]) for entry in created)

        # disabling ends the sessions at once: the token is 401, sign-in too
        response = await patch(app, user.id, {"disabled": True})
        assert response.status_code == 200, response.text
        assert response.json()["disabled"] is True
        assert (await app.http.get("/api/me", headers=user.headers)).status_code == 401
        login = {"email": user.email, "password": PASSWORD}
        assert (await app.http.post("/api/login", json=login)).status_code == 401
        assert (await patch(app, user.id, {"disabled": False})).status_code == 200
        assert (await app.http.get("/api/me", headers=user.headers)).status_code == 401
        await app.login(user)

        # a new password ends the sessions too, and the new one signs in
        response = await patch(app, user.id, {"password": "another fine password"})
        assert response.status_code == 200
        assert (await app.http.get("/api/me", headers=user.headers)).status_code == 401
        user = await app.login(User(user.id, user.email, "another fine password", "user"))
        assert (await audit(app, type="UserUpdated"))[0]["data"]["password"] is True

        # delete: sessions and grants end, then the user is gone
        bank = await app.create_bank(compartments=2)
        first, second = bank["compartments"]
        assert (await app.grant(first["id"], user)).status_code == 201
        assert (await app.grant(second["id"], user)).status_code == 201
        response = await app.admin_delete(f"/api/admin/users/{user.id}")
        assert response.status_code == 204, response.text
        assert (await app.http.get("/api/me", headers=user.headers)).status_code == 401
        assert user.id not in {
            entry["id"] for entry in (await app.admin_get("/api/admin/users")).json()
        }
        revoked = await app.events(bank["id"], "CompartmentAccessRevoked")
        assert {ev["data"]["compartment_id"] for ev in revoked} == {first["id"], second["id"]}
        assert all(ev["data"]["actor"] == {"kind": "admin_token"} for ev in revoked)
        for compartment in (first, second):
            grants = await app.admin_get(f"/api/admin/compartments/{compartment['id']}/grants")
            assert grants.json() == []
        assert [e["data"]["user_id"] for e in await audit(app, type="UserDeleted")] == [user.id]
        assert (await app.admin_delete(f"/api/admin/users/{user.id}")).status_code == 404
        assert (await patch(app, user.id, {"name": "x"})).status_code == 404


async def test_users_admin_unhappy_paths(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        user = await app.signed_in_user()
        missing = str(uuid.uuid4())
        # 401 without a token, 403 for a user token (whatever the resource or body)
        for headers, status in (({}, 401), (user.headers, 403)):
            assert (await app.http.get("/api/admin/users", headers=headers)).status_code == status
            for target in (user.id, missing, "nope"):
                response = await app.http.patch(
                    f"/api/admin/users/{target}", json={"bad": 1}, headers=headers
                )
                assert response.status_code == status, response.text
                response = await app.http.delete(f"/api/admin/users/{target}", headers=headers)
                assert response.status_code == status
        # 404: no such user (also not an id)
        for target in (missing, "nope"):
            assert (await patch(app, target, {"name": "x"})).status_code == 404
            assert (await app.admin_delete(f"/api/admin/users/{target}")).status_code == 404
        # 400: bad bodies
        for body in (
            {},
            {"name": ""},
            {"name": "   "},
            {"name": None},
            {"role": "root"},
            {"disabled": "yes"},
            {"password": "short"},
            {"email": "x@example.org"},
            [],
            "name",
        ):
            response = await patch(app, user.id, body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"] == "invalid_input"
        response = await app.http.patch(
            f"/api/admin/users/{user.id}",
            content=b'{"name":"a\\u0000b"}',
            headers={**app.admin_headers(), "Content-Type": "application/json"},
        )
        assert response.status_code == 400
        response = await app.http.patch(
            f"/api/admin/users/{user.id}",
            content=b"name=x",
            headers={**app.admin_headers(), "Content-Type": "text/plain"},
        )
        assert response.status_code == 415
        # nothing changed
        assert (await app.http.get("/api/me", headers=user.headers)).status_code == 200


async def test_grants_are_listed_with_who_granted_them(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        admin = await app.signed_in_user(role="admin")
        user = await app.signed_in_user()
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        path = f"/api/admin/compartments/{compartment['id']}/grants"
        response = await app.http.post(
            path,
            json={"user_id": user.id, "expires_at": "2999-01-01T00:00:00Z"},
            headers=admin.headers,
        )
        assert response.status_code == 201, response.text
        listed = (await app.admin_get(path)).json()
        assert listed == [
            {
                "user_id": user.id,
                "expires_at": "2999-01-01T00:00:00.000Z",
                "granted_at": listed[0]["granted_at"],
                "granted_by": {"kind": "user", "id": admin.id},
            }
        ]
        granted = await app.events(bank["id"], "CompartmentAccessGranted")
        assert granted[-1]["data"]["actor"] == {"kind": "user", "id": admin.id}
        # unhappy: 401, 403 (before 404), 404
        assert (await app.http.get(path)).status_code == 401
        other = f"/api/admin/compartments/{uuid.uuid4()}/grants"
        for target in (path, other):
            assert (await app.http.get(target, headers=user.headers)).status_code == 403
        assert (await app.admin_get(other)).status_code == 404
        assert (await app.admin_get("/api/admin/compartments/nope/grants")).status_code == 404
        # revoking names its actor too
        response = await app.http.delete(f"{path}/{user.id}", headers=admin.headers)
        assert response.status_code == 204
        revoked = await app.events(bank["id"], "CompartmentAccessRevoked")
        assert revoked[-1]["data"]["actor"] == {"kind": "user", "id": admin.id}
        assert (await app.admin_get(path)).json() == []


async def test_tenant_and_agent_creation_are_recorded_with_their_actor(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        admin = await app.signed_in_user(role="admin")
        response = await app.http.post(
            "/api/admin/tenants", json={"name": "acme"}, headers=admin.headers
        )
        assert response.status_code == 201
        tenant_id = response.json()["id"]
        response = await app.admin_post(f"/api/admin/tenants/{tenant_id}/agents", {"name": "p"})
        assert response.status_code == 201
        secret = response.json()["mqtt_password"]
        entries = await audit(app, actor_id=admin.id, type="TenantCreated")
        assert [entry["data"]["tenant_id"] for entry in entries] == [tenant_id]
        agents = await audit(app, type="AgentCreated")
        assert agents[0]["actor"] == {"kind": "admin_token"}
        assert agents[0]["data"]["tenant_id"] == tenant_id
        assert secret not in str(agents[0])
