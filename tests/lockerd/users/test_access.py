"""Grants, the app's list of compartments, QR codes and who may read a transaction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.device import device
from tests.support.mosquitto import MosquittoBroker
from tests.support.users import running_app


async def test_grant_and_revoke_rules(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        user = await app.signed_in_user()
        grants = f"/api/admin/compartments/{compartment['id']}/grants"

        expires = datetime.now(UTC) + timedelta(days=1)
        response = await app.grant(compartment["id"], user, expires_at=expires)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["compartment_id"] == compartment["id"]
        assert body["user_id"] == user.id
        assert body["expires_at"].endswith("Z")
        assert datetime.fromisoformat(body["expires_at"]) - expires < timedelta(seconds=1)
        # any UTC offset is accepted and answered in UTC
        response = await app.admin_post(
            grants, {"user_id": user.id, "expires_at": "2999-01-01T02:00:00+02:00"}
        )
        assert response.status_code == 201, response.text
        assert response.json()["expires_at"] == "2999-01-01T00:00:00.000Z"
        # granting again replaces the expiry (here: none)
        response = await app.grant(compartment["id"], user)
        assert response.status_code == 201, response.text
        assert response.json()["expires_at"] is None
        granted = await app.events(bank["id"], "CompartmentAccessGranted")
        assert [ev["data"]["user_id"] for ev in granted] == [user.id] * 3

        # unknown compartment or user: 404
        for path_id in (str(uuid.uuid4()), "nope"):
            response = await app.admin_post(
                f"/api/admin/compartments/{path_id}/grants", {"user_id": user.id}
            )
            assert response.status_code == 404, response.text
        for user_id in (str(uuid.uuid4()), "nope", ""):
            response = await app.admin_post(grants, {"user_id": user_id})
            assert response.status_code in (400, 404), response.text
        response = await app.admin_post(grants, {"user_id": str(uuid.uuid4())})
        assert response.status_code == 404
        assert "user" in response.json()["message"]

        # bad expiry: in the past, without a time zone, not a time
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        for expires_at in (past, "2999-01-01T00:00:00", "tomorrow", 5):
            response = await app.admin_post(grants, {"user_id": user.id, "expires_at": expires_at})
            assert response.status_code == 400, (expires_at, response.text)
            assert response.json()["error"] == "invalid_input"
        response = await app.admin_post(grants, {"user_id": user.id, "expires_at": past})
        assert "expires_at" in response.json()["message"]
        for body in ({}, {"user_id": user.id, "extra": 1}, [user.id]):
            assert (await app.admin_post(grants, body)).status_code == 400

        # non-admins: 401 / 403 whatever the compartment or body
        response = await app.http.post(grants, json={"user_id": user.id})
        assert response.status_code == 401
        for path_id in (compartment["id"], str(uuid.uuid4())):
            for payload in ({"user_id": user.id}, {"bad": True}):
                response = await app.http.post(
                    f"/api/admin/compartments/{path_id}/grants", json=payload, headers=user.headers
                )
                assert response.status_code == 403, response.text
            response = await app.http.delete(
                f"/api/admin/compartments/{path_id}/grants/{user.id}", headers=user.headers
            )
            assert response.status_code == 403, response.text

        # revoke: 204 once, then 404; unknown compartment 404
        revoke = f"{grants}/{user.id}"
        assert (await app.admin_delete(revoke)).status_code == 204
        response = await app.admin_delete(revoke)
        assert response.status_code == 404
        assert (await app.admin_delete(f"{grants}/not-a-user")).status_code == 404
        response = await app.admin_delete(
            f"/api/admin/compartments/{uuid.uuid4()}/grants/{user.id}"
        )
        assert response.status_code == 404
        revoked = await app.events(bank["id"], "CompartmentAccessRevoked")
        assert [ev["data"]["user_id"] for ev in revoked] == [user.id]


async def test_my_compartments(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        north = await app.create_bank(compartments=3, name="North")
        south = await app.create_bank(compartments=1, name="South")
        user = await app.signed_in_user()
        other = await app.signed_in_user()
        n1, n2, n3 = north["compartments"]
        (s1,) = south["compartments"]
        await app.grant(n3["id"], user)
        await app.grant(n1["id"], user, expires_at=app.clock() + timedelta(hours=1))
        await app.grant(n2["id"], user, expires_at=app.clock() + timedelta(hours=3))
        await app.grant(s1["id"], user)
        await app.grant(s1["id"], other)
        await app.admin_delete(f"/api/admin/compartments/{n3['id']}/grants/{user.id}")

        async with device(mosquitto.url, north["id"]) as dev:
            await dev.come_online(app.context.fleet)
            await dev.event("door_state_changed", {"compartment_number": 2, "state": "open"})

            async def door_open() -> bool:
                listed = await app.http.get("/api/compartments", headers=user.headers)
                return any(c["door_state"] == "open" for c in listed.json())

            await app.wait_until(door_open, what="door open in the list")

        response = await app.http.get("/api/compartments", headers=user.headers)
        assert response.status_code == 200, response.text
        assert response.json() == [
            {
                "id": n1["id"],
                "number": 1,
                "locker_bank_id": north["id"],
                "locker_bank_name": "North",
                "presence": "online",
                "door_state": "unknown",
                "out_of_service": False,
            },
            {
                "id": n2["id"],
                "number": 2,
                "locker_bank_id": north["id"],
                "locker_bank_name": "North",
                "presence": "online",
                "door_state": "open",
                "out_of_service": False,
            },
            {
                "id": s1["id"],
                "number": 1,
                "locker_bank_id": south["id"],
                "locker_bank_name": "South",
                "presence": "unknown",
                "door_state": "unknown",
                "out_of_service": False,
            },
        ]
        # expired grants drop out of the list
        app.clock.advance(timedelta(hours=2))
        listed = (await app.http.get("/api/compartments", headers=user.headers)).json()
        assert [c["id"] for c in listed] == [n2["id"], s1["id"]]
        listed = (await app.http.get("/api/compartments", headers=other.headers)).json()
        assert [c["id"] for c in listed] == [s1["id"]]
        assert (await app.http.get("/api/compartments")).status_code == 401
        # the bootstrap admin holds no grants
        assert (await app.admin_get("/api/compartments")).json() == []


async def test_qr_code_opens_once(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][1]
        user = await app.signed_in_user()
        stranger = await app.signed_in_user()
        await app.grant(compartment["id"], user)
        qr = f"/api/compartments/{compartment['id']}/qr"

        assert (await app.http.post(qr)).status_code == 401
        response = await app.http.post(qr, headers=stranger.headers)
        assert response.status_code == 403, response.text
        assert response.json()["reason"] == "no_grant"
        for path_id in (str(uuid.uuid4()), "x"):
            response = await app.http.post(
                f"/api/compartments/{path_id}/qr", headers=stranger.headers
            )
            assert response.status_code == 404, response.text

        response = await app.http.post(qr, headers=user.headers)
        assert response.status_code == 201, response.text
        code = response.json()
        assert set(code) == {"qr_payload", "expires_at"}
        expires_at = datetime.fromisoformat(code["expires_at"])
        assert timedelta(seconds=100) < expires_at - app.clock() <= timedelta(seconds=120)

        async with device(mosquitto.url, bank["id"]) as dev:
            pushed = await dev.come_online(app.context.fleet)
            await dev.event("qr_scanned", {"qr_payload": code["qr_payload"]}, event_id="scan-1")
            command = await dev.next_command("open_compartment")
            assert command["data"] == {"compartment_number": 2}
            tx = await app.until_transaction(command["transaction_id"], status="success")
            mine = await app.transaction(user, command["transaction_id"])
            assert mine.status_code == 200
            assert mine.json() == tx

            # the same code again: refused as used
            await dev.event("qr_scanned", {"qr_payload": code["qr_payload"]}, event_id="scan-2")

            async def denied() -> list[dict[str, object]]:
                return await app.events(bank["id"], "CompartmentOpeningDenied")

            [refusal] = await app.wait_until(denied, what="the second scan refused")
            assert refusal["data"]["reason"] == "qr_used"
            assert refusal["data"]["user_id"] == user.id
            assert refusal["data"]["compartment_id"] == compartment["id"]

            # an expired code: refused as expired
            fresh = (await app.http.post(qr, headers=user.headers)).json()
            app.clock.advance(timedelta(minutes=3))
            await dev.heartbeat()
            await dev.event("qr_scanned", {"qr_payload": fresh["qr_payload"]}, event_id="scan-3")

            async def two_denied() -> list[dict[str, object]]:
                found = await denied()
                return found if len(found) == 2 else []

            reasons = [ev["data"]["reason"] for ev in await app.wait_until(two_denied)]
            assert reasons == ["qr_used", "qr_expired"]
            assert dev.commands == [pushed, command]


async def test_who_may_read_a_transaction(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        owner = await app.signed_in_user()
        other = await app.signed_in_user()
        admin = await app.signed_in_user(role="admin")
        await app.grant(compartment["id"], owner)
        async with device(mosquitto.url, bank["id"]) as dev:
            await dev.come_online(app.context.fleet)
            opened = await app.open(owner, compartment["id"])
            transaction_id = opened.json()["transaction_id"]
            tx = await app.until_transaction(transaction_id, status="success")
            assert set(tx) == {
                "transaction_id",
                "action",
                "status",
                "error_code",
                "message",
                "requested_at",
                "completed_at",
                "late_answer",
            }
            for reader in (owner, admin, None):
                response = await app.transaction(reader, transaction_id)
                assert response.status_code == 200, response.text
                assert response.json() == tx
            response = await app.transaction(other, transaction_id)
            assert response.status_code == 404
            assert response.json()["error"] == "not_found"
            for bad_id in (str(uuid.uuid4()), "not-a-uuid", "1"):
                assert (await app.transaction(owner, bad_id)).status_code == 404
                assert (await app.transaction(None, bad_id)).status_code == 404
            assert (await app.http.get(f"/api/transactions/{transaction_id}")).status_code == 401

            # an admin's apply-config is readable by admins only
            applied = await app.admin_post(f"/api/admin/locker-banks/{bank['id']}/apply-config")
            assert applied.status_code == 202, applied.text
            config_tx = applied.json()["transaction_id"]
            tx = await app.until_transaction(config_tx, status="success")
            assert tx["action"] == "apply_config"
            assert (await app.transaction(admin, config_tx)).status_code == 200
            assert (await app.transaction(owner, config_tx)).status_code == 404
