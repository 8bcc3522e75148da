"""Groups and group grants (contract §5): every member may open while a member; the app's list
and ``/ws/app`` follow grants, joins and leaves; unhappy paths on both stores."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from domain.qr import issue_qr
from lockerd.commands.store_ops import rebuild
from store.base import SqlTx
from tests.lockerd.appstream.test_app_ws import next_matching, receive, ws_client, ws_url
from tests.support.device import Answer, device, provision
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import database_url_for
from tests.support.users import App, MovableClock, running_app

BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(tmp_path, request.param)


def app_on(broker: MosquittoBroker, tmp_path: Path, database: str) -> Any:
    return running_app(broker.url, tmp_path / "unused.db", LOCKERD_DATABASE=database)


async def create_group(app: App, name: str) -> str:
    response = await app.admin_post("/api/admin/groups", {"name": name})
    assert response.status_code == 201, response.text
    group_id: str = response.json()["id"]
    return group_id


async def join(app: App, group_id: str, user_id: str) -> None:
    response = await app.admin_post(f"/api/admin/groups/{group_id}/members", {"user_id": user_id})
    assert response.status_code == 204, response.text


async def leave(app: App, group_id: str, user_id: str) -> None:
    response = await app.admin_delete(f"/api/admin/groups/{group_id}/members/{user_id}")
    assert response.status_code == 204, response.text


async def listed(app: App, headers: dict[str, str]) -> list[str]:
    response = await app.http.get("/api/compartments", headers=headers)
    assert response.status_code == 200, response.text
    return [entry["id"] for entry in response.json()]


async def test_a_member_opens_through_a_group_grant_while_a_member(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank(compartments=2)
        compartment = bank["compartments"][0]
        credentials = await provision(mosquitto.url, bank["provisioning_token"])
        member = await app.signed_in_user()
        group_id = await create_group(app, "cleaners")
        response = await app.admin_post(
            f"/api/admin/compartments/{compartment['id']}/grants", {"group_id": group_id}
        )
        assert response.status_code == 201, response.text
        assert response.json() == {
            "compartment_id": compartment["id"],
            "group_id": group_id,
            "expires_at": None,
        }
        async with device(
            mosquitto.url,
            bank["id"],
            client_id=credentials.client_id,
            username=credentials.mqtt_user,
            password=credentials.mqtt_password,
        ) as dev:
            dev.answers["open_compartment"] = Answer(message="opened")
            await dev.come_online(app.context.fleet)
            # not a member yet: no grant
            response = await app.open(member, compartment["id"])
            assert response.status_code == 403
            assert response.json()["reason"] == "no_grant"
            async with ws_client(ws_url(app, member.token)) as ws:
                assert (await receive(ws))["compartments"] == []
                await join(app, group_id, member.id)
                appeared = await next_matching(ws, lambda m: m.get("type") == "compartment")
                assert appeared["granted"] is True
                assert appeared["compartment"]["id"] == compartment["id"]
                assert await listed(app, member.headers) == [compartment["id"]]

                response = await app.open(member, compartment["id"])
                assert response.status_code == 202, response.text
                command = await dev.next_command("open_compartment")
                assert command["transaction_id"] == response.json()["transaction_id"]
                tx = await app.until_transaction(command["transaction_id"], status="success")
                assert tx["message"] == "opened"
                # a QR code works for a member too
                response = await app.http.post(
                    f"/api/compartments/{compartment['id']}/qr", headers=member.headers
                )
                assert response.status_code == 201, response.text

                await leave(app, group_id, member.id)
                ended = await next_matching(ws, lambda m: m.get("type") == "compartment")
                assert ended["granted"] is False
                assert ended["compartment"]["id"] == compartment["id"]
            assert await listed(app, member.headers) == []
            response = await app.open(member, compartment["id"])
            assert response.status_code == 403
            # a QR code issued while a member no longer opens after leaving
            expires_at = app.context.clock().replace(microsecond=0) + timedelta(minutes=1)
            payload = issue_qr(app.context.keyring, member.id, compartment["id"], expires_at)
            await dev.event("qr_scanned", {"qr_payload": payload})
            denied = await app.wait_until(
                lambda: _denied_qr(app, bank["id"]), what="the QR scan refused"
            )
            assert denied["data"]["reason"] == "no_grant"

            # the group grant itself ends: members cannot open any more
            await join(app, group_id, member.id)
            assert await listed(app, member.headers) == [compartment["id"]]
            response = await app.admin_delete(
                f"/api/admin/compartments/{compartment['id']}/grants/groups/{group_id}"
            )
            assert response.status_code == 204, response.text
            assert await listed(app, member.headers) == []
            revoked = await app.events(bank["id"], "CompartmentGroupAccessRevoked")
            assert revoked[0]["data"]["actor"] == {"kind": "admin_token"}


async def _denied_qr(app: App, bank_id: str) -> dict[str, Any] | None:
    for event in await app.events(bank_id, "CompartmentOpeningDenied"):
        if event["data"].get("via") == "qr":
            return event
    return None


async def test_groups_listing_and_unhappy_paths(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        user = await app.signed_in_user()
        other = await app.create_user()
        group_id = await create_group(app, "Drivers")
        await join(app, group_id, user.id)
        await join(app, group_id, user.id)  # already a member: nothing changes
        await join(app, group_id, other.id)
        response = await app.admin_get("/api/admin/groups")
        assert response.status_code == 200
        assert response.json() == [
            {"id": group_id, "name": "Drivers", "members": sorted([user.id, other.id])}
        ]
        missing = str(uuid.uuid4())
        members = f"/api/admin/groups/{group_id}/members"

        # 401 / 403 first, whatever the resource or body
        for headers, status in (({}, 401), (user.headers, 403)):
            assert (await app.http.get("/api/admin/groups", headers=headers)).status_code == status
            response = await app.http.post("/api/admin/groups", json={}, headers=headers)
            assert response.status_code == status
            for target in (group_id, missing):
                response = await app.http.post(
                    f"/api/admin/groups/{target}/members", json={"x": 1}, headers=headers
                )
                assert response.status_code == status
                response = await app.http.delete(
                    f"/api/admin/groups/{target}/members/{user.id}", headers=headers
                )
                assert response.status_code == status
        # 409: a taken name (case-insensitive)
        response = await app.admin_post("/api/admin/groups", {"name": "drivers"})
        assert response.status_code == 409
        # 400: bad bodies
        for body in ({}, {"name": ""}, {"name": "  "}, {"name": 5}, {"name": "x", "more": 1}):
            response = await app.admin_post("/api/admin/groups", body)
            assert response.status_code == 400, (body, response.text)
        for body in ({}, {"user_id": ""}, {"user_id": 5}, {"user_id": user.id, "x": 1}):
            response = await app.admin_post(members, body)
            assert response.status_code == 400, (body, response.text)
        # 404: no such group, user or membership
        for target in (missing, "nope"):
            response = await app.admin_post(
                f"/api/admin/groups/{target}/members", {"user_id": user.id}
            )
            assert response.status_code == 404
            response = await app.admin_delete(f"/api/admin/groups/{target}/members/{user.id}")
            assert response.status_code == 404
        response = await app.admin_post(members, {"user_id": missing})
        assert response.status_code == 404
        assert "user" in response.json()["message"]
        await leave(app, group_id, other.id)
        response = await app.admin_delete(f"{members}/{other.id}")
        assert response.status_code == 404
        assert (await app.admin_delete(f"{members}/nope")).status_code == 404

        # group grants: exactly one of user_id and group_id; a known group; 404 on revoke
        bank = await app.create_bank()
        grants = f"/api/admin/compartments/{bank['compartments'][0]['id']}/grants"
        for body in ({}, {"user_id": user.id, "group_id": group_id}, {"group_id": ""}):
            response = await app.admin_post(grants, body)
            assert response.status_code == 400, (body, response.text)
        response = await app.admin_post(grants, {"group_id": missing})
        assert response.status_code == 404
        assert "group" in response.json()["message"]
        response = await app.admin_post(
            f"/api/admin/compartments/{missing}/grants", {"group_id": group_id}
        )
        assert response.status_code == 404
        response = await app.admin_post(
            grants, {"group_id": group_id, "expires_at": "2000-01-01T00:00:00Z"}
        )
        assert response.status_code == 400
        response = await app.admin_post(
            grants, {"group_id": group_id, "expires_at": "2999-01-01T00:00:00Z"}
        )
        assert response.status_code == 201
        assert (await app.admin_get(grants)).json()[0]["group_id"] == group_id
        for target in (missing, "nope"):
            response = await app.admin_delete(f"{grants}/groups/{target}")
            assert response.status_code == 404
        for headers, status in (({}, 401), (user.headers, 403)):
            response = await app.http.delete(f"{grants}/groups/{group_id}", headers=headers)
            assert response.status_code == status
        assert (await app.admin_delete(f"{grants}/groups/{group_id}")).status_code == 204
        assert (await app.admin_delete(f"{grants}/groups/{group_id}")).status_code == 404

        # deleting a user ends their memberships
        assert (await app.admin_delete(f"/api/admin/users/{user.id}")).status_code == 204
        groups = (await app.admin_get("/api/admin/groups")).json()
        assert groups[0]["members"] == []


def grant_valid(expires_at: object, now: Any) -> bool:
    return expires_at is None or now < datetime.fromisoformat(str(expires_at))


async def store_compartments(app: App, user_id: str) -> list[dict[str, Any]]:
    """What the read models say the user may open now: own grants and their groups' grants."""
    now = app.context.clock()

    def read(tx: SqlTx) -> list[tuple[Any, ...]]:
        return tx.query(
            "SELECT c.id, c.number, c.bank_id, b.name, c.door_state, g.expires_at,"
            " o.since IS NOT NULL"
            " FROM access_grants g JOIN compartments c ON c.id = g.compartment_id"
            " JOIN banks b ON b.id = c.bank_id"
            " LEFT JOIN out_of_service o ON o.compartment_id = c.id"
            " WHERE (g.user_id = ? OR g.group_id IN"
            " (SELECT group_id FROM group_members WHERE user_id = ?))"
            " AND NOT EXISTS (SELECT 1 FROM decommissioned_banks d WHERE d.bank_id = c.bank_id)",
            (user_id, user_id),
        )

    found: dict[str, dict[str, Any]] = {}
    rows = await app.context.tables.read(read)
    for cid, number, bank_id, name, door, expires_at, out_of_service in rows:
        if grant_valid(expires_at, now):
            status = app.context.fleet.banks.get(bank_id)
            found[cid] = {
                "id": cid,
                "number": number,
                "locker_bank_id": bank_id,
                "locker_bank_name": name,
                "presence": "unknown" if status is None else status.presence,
                "door_state": door,
                "out_of_service": bool(out_of_service),
            }
    return sorted(
        found.values(), key=lambda c: (c["locker_bank_name"], c["locker_bank_id"], c["number"])
    )


async def assert_agree(app: App, user_ids: list[str]) -> dict[str, list[str]]:
    now = app.context.clock()
    seen = {}
    for user_id in user_ids:
        stored = await store_compartments(app, user_id)
        assert app.context.live.compartments_of(user_id, now) == stored, user_id
        seen[user_id] = [c["id"] for c in stored]
    return seen


async def test_the_live_model_agrees_with_the_store_on_groups_after_restart_and_rebuild(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    clock = MovableClock()
    env = {"LOCKERD_DATABASE": database}
    async with running_app(mosquitto.url, tmp_path / "unused.db", clock, **env) as app:
        bank = await app.create_bank(compartments=3)
        a1, a2, a3 = (c["id"] for c in bank["compartments"])
        u1, u2, u3 = [await app.create_user() for _ in range(3)]
        g = await create_group(app, "g")
        h = await create_group(app, "h")
        await join(app, g, u1.id)
        await join(app, h, u1.id)
        await join(app, h, u2.id)
        await join(app, h, u3.id)
        grants = "/api/admin/compartments/{}/grants"
        soon = (clock() + timedelta(hours=1)).isoformat()
        for cid, body in (
            (a1, {"group_id": g}),
            (a2, {"group_id": h, "expires_at": soon}),
            (a3, {"group_id": h}),
            (a2, {"user_id": u1.id}),
        ):
            assert (await app.admin_post(grants.format(cid), body)).status_code == 201
        revoked = await app.admin_delete(f"{grants.format(a3)}/groups/{h}")
        assert revoked.status_code == 204
        await leave(app, h, u3.id)
        users = [u1.id, u2.id, u3.id]
        seen = await assert_agree(app, users)
        assert seen == {u1.id: [a1, a2], u2.id: [a2], u3.id: []}
        clock.advance(timedelta(hours=2))  # h's grant of a2 has expired; u1's own has not
        before = await assert_agree(app, users)
        assert before == {u1.id: [a1, a2], u2.id: [], u3.id: []}
    async with running_app(mosquitto.url, tmp_path / "unused.db", clock, **env) as app:
        assert await assert_agree(app, users) == before  # loaded from the read models
    await rebuild(database)
    async with running_app(mosquitto.url, tmp_path / "unused.db", clock, **env) as app:
        assert await assert_agree(app, users) == before
