"""A bank's lifecycle over HTTP (contract §5) against a real Mosquitto and the test device:
edit, add/edit/retire compartments with the configuration pushed (§2), out of service,
operator opens, decommissioning with the device credentials revoked; on SQLite and
PostgreSQL; and every unhappy path (400/401/403/404/409/415)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.device import config_hash, device
from tests.support.goauth import acl_check, auth, register_once
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import database_url_for
from tests.support.users import App, User, running_app

BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]
ADMIN_TOKEN_ACTOR = {"kind": "admin_token"}


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(tmp_path, request.param)


def app_on(broker: MosquittoBroker, tmp_path: Path, database: str | None = None) -> Any:
    env = {} if database is None else {"LOCKERD_DATABASE": database}
    return running_app(broker.url, tmp_path / "lockerd.db", **env)


async def patch(
    app: App, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await app.http.patch(path, json=body, headers=headers or app.admin_headers())


async def operator_open(
    app: App, compartment_id: str, reason: Any = "item stuck", headers: dict[str, str] | None = None
) -> httpx.Response:
    return await app.http.post(
        f"/api/admin/compartments/{compartment_id}/open",
        json={"reason": reason},
        headers=headers or app.admin_headers(),
    )


async def audit(app: App, **params: str) -> list[dict[str, Any]]:
    response = await app.http.get("/api/admin/audit", params=params, headers=app.admin_headers())
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def assert_refused(response: httpx.Response, status: int, reason: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "message"}, body
    if reason is not None:
        assert body["reason"] == reason, body


async def test_configuration_changes_are_pushed_to_the_online_bank(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        admin = await app.signed_in_user(role="admin")
        bank = await app.create_bank(compartments=2, name="Hall", location="Ground floor")
        bank_path = f"/api/admin/locker-banks/{bank['id']}"
        c1, c2 = (c["id"] for c in bank["compartments"])
        created_hash = config_hash(
            [{"id": 1, "slaveId": 1, "address": 0}, {"id": 2, "slaveId": 1, "address": 1}], 10
        )
        created = await app.bank(bank["id"])
        assert (created["config_hash"], created["applied_config_hash"]) == (created_hash, None)
        async with device(mosquitto.url, bank["id"]) as dev:
            # the configuration it was created with: pushed as the bank first comes online
            await dev.heartbeat()
            command = await dev.next_command("apply_config")
            assert command["data"]["config_hash"] == created_hash
            await app.until_transaction(command["transaction_id"], status="success")

            # a new name and location only: no configuration change, nothing sent
            renamed = await patch(app, bank_path, {"name": "Town hall", "location": None})
            assert renamed.status_code == 200, renamed.text
            view = renamed.json()
            assert (view["name"], view["location"], view["config_hash"]) == (
                "Town hall",
                None,
                created_hash,
            )
            assert view["applied_config_hash"] == created_hash
            assert view["decommissioned"] is False
            assert view["presence"] == "online"

            # a new heartbeat interval: a new config_hash, pushed by itself
            edited = await patch(app, bank_path, {"heartbeat_interval_seconds": 20}, admin.headers)
            assert edited.status_code == 200, edited.text
            new_hash = edited.json()["config_hash"]
            assert edited.json()["heartbeat_interval_seconds"] == 20
            command = await dev.next_command("apply_config")
            assert command["data"]["heartbeat_interval_seconds"] == 20
            assert command["data"]["config_hash"] == new_hash
            await app.until_transaction(command["transaction_id"], status="success")

            # a compartment added
            added = await app.admin_post(
                f"{bank_path}/compartments", {"number": 3, "slave_id": 2, "address": 5}
            )
            assert added.status_code == 201, added.text
            c3 = added.json()
            assert c3 == {
                "id": c3["id"],
                "number": 3,
                "slave_id": 2,
                "address": 5,
                "door_state": "unknown",
                "out_of_service": False,
            }
            command = await dev.next_command("apply_config")
            assert {"id": 3, "slaveId": 2, "address": 5} in command["data"]["compartments"]
            await app.until_transaction(command["transaction_id"], status="success")

            # a compartment's Modbus address changed
            moved = await patch(app, f"/api/admin/compartments/{c2}", {"address": 9})
            assert moved.status_code == 200, moved.text
            assert (moved.json()["number"], moved.json()["address"]) == (2, 9)
            command = await dev.next_command("apply_config")
            assert {"id": 2, "slaveId": 1, "address": 9} in command["data"]["compartments"]
            await app.until_transaction(command["transaction_id"], status="success")

            # out of service: not configuration, nothing sent
            off = await patch(app, f"/api/admin/compartments/{c1}", {"out_of_service": True})
            assert off.status_code == 200, off.text
            assert off.json()["out_of_service"] is True

            # retired
            retired = await app.admin_delete(f"/api/admin/compartments/{c3['id']}")
            assert retired.status_code == 204, retired.text
            command = await dev.next_command("apply_config")
            assert [c["id"] for c in command["data"]["compartments"]] == [1, 2]
            await app.until_transaction(command["transaction_id"], status="success")

            final = await app.bank(bank["id"])
            assert (
                final["config_hash"]
                == final["applied_config_hash"]
                == (command["data"]["config_hash"])
            )
            assert [(c["number"], c["out_of_service"]) for c in final["compartments"]] == [
                (1, True),
                (2, False),
            ]
            assert [c["action"] for c in dev.commands] == ["apply_config"] * 5

        listed = (await app.admin_get("/api/admin/locker-banks")).json()
        assert listed[0]["compartments"][0]["out_of_service"] is True
        assert (
            await app.http.delete(
                f"/api/admin/compartments/{c3['id']}", headers=app.admin_headers()
            )
        ).status_code == 404

        # every change names its actor, in the history and in the audit log
        history = await app.events(
            bank["id"],
            "LockerBankEdited",
            "CompartmentAdded",
            "CompartmentEdited",
            "CompartmentRetired",
        )
        assert [(ev["type"], ev["data"]["actor"]) for ev in history] == [
            ("LockerBankEdited", ADMIN_TOKEN_ACTOR),
            ("LockerBankEdited", {"kind": "user", "id": admin.id}),
            ("CompartmentAdded", ADMIN_TOKEN_ACTOR),
            ("CompartmentEdited", ADMIN_TOKEN_ACTOR),
            ("CompartmentEdited", ADMIN_TOKEN_ACTOR),
            ("CompartmentRetired", ADMIN_TOKEN_ACTOR),
        ]
        by_admin = await audit(app, actor_id=admin.id, bank_id=bank["id"])
        assert [entry["type"] for entry in by_admin] == ["LockerBankEdited"]
        assert by_admin[0]["actor"] == {"kind": "user", "id": admin.id}


async def test_out_of_service_refuses_opens_of_users_and_operators(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with app_on(mosquitto, tmp_path) as app:
        bank = await app.create_bank(compartments=1)
        cid = bank["compartments"][0]["id"]
        user = await app.signed_in_user()
        await app.grant(cid, user)
        async with device(mosquitto.url, bank["id"]) as dev:
            pushed = await dev.come_online(app.context.fleet)
            assert (
                await patch(app, f"/api/admin/compartments/{cid}", {"out_of_service": True})
            ).status_code == 200
            mine = (await app.http.get("/api/compartments", headers=user.headers)).json()
            assert [c["out_of_service"] for c in mine] == [True]
            assert_refused(await app.open(user, cid), 409, "out_of_service")
            assert_refused(await operator_open(app, cid), 409, "out_of_service")
            denied = await app.events(bank["id"], "CompartmentOpeningDenied")
            assert [ev["data"]["reason"] for ev in denied] == ["out_of_service"] * 2
            assert denied[0]["data"]["user_id"] == user.id
            assert denied[1]["data"]["actor"] == ADMIN_TOKEN_ACTOR
            assert denied[1]["data"]["request_reason"] == "item stuck"
            assert dev.commands == [pushed]
            # back in service: it opens again
            assert (
                await patch(app, f"/api/admin/compartments/{cid}", {"out_of_service": False})
            ).status_code == 200
            opened = await app.open(user, cid)
            assert opened.status_code == 202, opened.text
            await app.until_transaction(opened.json()["transaction_id"], status="success")


async def test_an_operator_opens_without_a_grant_and_is_refused_like_a_user(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        admin = await app.signed_in_user(role="admin")
        bank = await app.create_bank(compartments=2)
        c1, c2 = (c["id"] for c in bank["compartments"])
        # offline: refused and recorded with the actor
        assert_refused(await operator_open(app, c1, headers=admin.headers), 409, "offline")
        async with device(mosquitto.url, bank["id"]) as dev:
            await dev.come_online(app.context.fleet)
            opened = await operator_open(app, c1, "  cleaning  ", admin.headers)
            assert opened.status_code == 202, opened.text
            assert opened.json()["status"] == "pending"
            transaction_id = opened.json()["transaction_id"]
            command = await dev.next_command("open_compartment")
            assert command["transaction_id"] == transaction_id
            assert command["data"] == {"compartment_number": 1}
            await app.until_transaction(transaction_id, status="success")
            # the admin reads the transaction like the user who asked
            seen = await app.transaction(admin, transaction_id)
            assert seen.status_code == 200 and seen.json()["action"] == "open_compartment"

            # a command pending for the compartment: refused
            dev.answers["open_compartment"] = None
            pending = await operator_open(app, c2)
            assert pending.status_code == 202, pending.text
            assert_refused(await operator_open(app, c2), 409, "command_pending")

        requested = await app.events(bank["id"], "CompartmentOpeningRequested")
        assert requested[0]["data"]["actor"] == {"kind": "user", "id": admin.id}
        assert requested[0]["data"]["reason"] == "cleaning"
        assert requested[0]["data"]["via"] == "operator"
        assert requested[1]["data"]["actor"] == ADMIN_TOKEN_ACTOR
        denied = await app.events(bank["id"], "CompartmentOpeningDenied")
        assert [(ev["data"]["reason"], ev["data"]["actor"]) for ev in denied] == [
            ("offline", {"kind": "user", "id": admin.id}),
            ("command_pending", ADMIN_TOKEN_ACTOR),
        ]
        logged = await audit(app, actor_id=admin.id, type="CompartmentOpeningRequested")
        assert [entry["data"]["transaction_id"] for entry in logged] == [transaction_id]


async def test_decommissioning_revokes_the_device_and_freezes_the_bank(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        bank = await app.create_bank(compartments=2)
        bank_path = f"/api/admin/locker-banks/{bank['id']}"
        c1, c2 = (c["id"] for c in bank["compartments"])
        user = await app.signed_in_user()
        await app.grant(c1, user)
        reply = await register_once(mosquitto.url, bank["provisioning_token"], "box-a")
        assert reply.ok
        mqtt_user, password = reply.data["mqtt_user"], reply.data["mqtt_password"]
        state_topic = f"locker/{bank['id']}/state"
        async with device(
            mosquitto.url, bank["id"], client_id="box-a", username=mqtt_user, password=password
        ) as dev:
            pushed = await dev.come_online(app.context.fleet, retain=False)
            assert await auth(app.http, mqtt_user, password) == 200
            assert await acl_check(app.http, mqtt_user, state_topic, 2) == 200
            rotated = await app.admin_post(f"{bank_path}/provisioning-token")
            token = rotated.json()["provisioning_token"]

            gone = await app.admin_post(f"{bank_path}/decommission")
            assert gone.status_code == 200, gone.text
            view = gone.json()
            assert view["decommissioned"] is True
            assert view["id"] == bank["id"]

            # the credentials are revoked at once, the token is void
            assert await auth(app.http, mqtt_user, password) == 403
            assert await acl_check(app.http, mqtt_user, state_topic, 2) == 403
            assert (await register_once(mosquitto.url, token, "box-b")).ok is False

            # what the revoked device still publishes (the broker here lets it) is not applied
            before = await app.events(bank["id"])
            dropped = app.inbound("state", "dropped")
            await dev.heartbeat(retain=False)
            await dev.event("door_state_changed", {"compartment_number": 1, "state": "open"})

            async def both_dropped() -> bool:
                return (
                    app.inbound("state", "dropped") > dropped
                    and app.inbound("event", "dropped") >= 1
                )

            await app.wait_until(both_dropped, what="the revoked device's messages dropped")
            assert await app.events(bank["id"]) == before
            assert app.context.fleet.banks[bank["id"]].presence == "offline"

            # opens refused and recorded; no command is published to it
            assert_refused(await app.open(user, c1), 409, "decommissioned")
            assert_refused(await operator_open(app, c1), 409, "decommissioned")
            assert_refused(await app.admin_post(f"{bank_path}/apply-config"), 409)
            assert dev.commands == [pushed]

        # no further lifecycle change, no second decommission
        for response in (
            await app.admin_post(f"{bank_path}/decommission"),
            await patch(app, bank_path, {"name": "again"}),
            await app.admin_post(
                f"{bank_path}/compartments", {"number": 9, "slave_id": 3, "address": 0}
            ),
            await patch(app, f"/api/admin/compartments/{c2}", {"out_of_service": True}),
            await app.admin_delete(f"/api/admin/compartments/{c2}"),
            await app.admin_post(f"{bank_path}/provisioning-token"),
            await app.grant(c2, user),
        ):
            assert_refused(response, 409)
        # the app no longer offers it; its history stays readable
        assert (await app.http.get("/api/compartments", headers=user.headers)).json() == []
        types = [ev["type"] for ev in await app.events(bank["id"])]
        assert types.count("LockerBankDecommissioned") == 1
        assert types[-2:] == ["CompartmentOpeningDenied", "CompartmentOpeningDenied"]
        decommissioned = await audit(app, type="LockerBankDecommissioned")
        assert decommissioned[0]["actor"] == ADMIN_TOKEN_ACTOR
        assert decommissioned[0]["data"]["revoked_mqtt_user"] == mqtt_user
        assert (await app.bank(bank["id"]))["decommissioned"] is True

    # after a restart: still revoked, still decommissioned
    async with app_on(mosquitto, tmp_path, database) as app:
        assert await auth(app.http, mqtt_user, password) == 403
        assert (await app.bank(bank["id"]))["decommissioned"] is True
        assert app.context.fleet.banks[bank["id"]].decommissioned
        assert (await app.bank(bank["id"]))["presence"] == "offline"


async def test_refusals_of_the_lifecycle_routes(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with app_on(mosquitto, tmp_path) as app:
        bank = await app.create_bank(compartments=2)
        bank_path = f"/api/admin/locker-banks/{bank['id']}"
        c1, c2 = (c["id"] for c in bank["compartments"])
        user: User = await app.signed_in_user()
        unknown_bank = f"/api/admin/locker-banks/{uuid.uuid4()}"
        unknown_compartment = f"/api/admin/compartments/{uuid.uuid4()}"
        routes: list[tuple[str, str, Any, str]] = [
            ("PATCH", bank_path, {"name": "x"}, unknown_bank),
            ("POST", f"{bank_path}/compartments", {"number": 7, "slave_id": 1, "address": 7},
             f"{unknown_bank}/compartments"),
            ("PATCH", f"/api/admin/compartments/{c1}", {"address": 3}, unknown_compartment),
            ("DELETE", f"/api/admin/compartments/{c1}", None, unknown_compartment),
            ("POST", f"{bank_path}/decommission", None, f"{unknown_bank}/decommission"),
            ("POST", f"{bank_path}/restart", None, f"{unknown_bank}/restart"),
            ("POST", f"/api/admin/compartments/{c1}/open", {"reason": "r"},
             f"{unknown_compartment}/open"),
        ]  # fmt: skip
        for method, path, body, missing in routes:
            kwargs: dict[str, Any] = {} if body is None else {"json": body}
            assert_refused(await app.http.request(method, path, **kwargs), 401)
            assert_refused(
                await app.http.request(
                    method, path, headers={"Authorization": "Bearer nope"}, **kwargs
                ),
                401,
            )
            assert_refused(
                await app.http.request(method, path, headers=user.headers, **kwargs), 403
            )
            assert_refused(
                await app.http.request(method, missing, headers=app.admin_headers(), **kwargs), 404
            )
            not_an_id = missing.replace(missing.split("/")[4], "not-an-id")
            assert_refused(
                await app.http.request(method, not_an_id, headers=app.admin_headers(), **kwargs),
                404,
            )
            if body is not None:
                # the role first, whatever the body
                assert_refused(
                    await app.http.request(method, path, headers=user.headers, content=b"{"), 403
                )
                plain = {**app.admin_headers(), "Content-Type": "text/plain"}
                assert_refused(
                    await app.http.request(method, path, headers=plain, content=b"{}"), 415
                )
                assert_refused(
                    await app.http.request(
                        method, path, headers=app.admin_headers(), json={**body, "extra": 1}
                    ),
                    400,
                )
        # bad bodies, route by route
        bad: list[tuple[str, str, Any]] = [
            ("PATCH", bank_path, {"heartbeat_interval_seconds": 0}),
            ("PATCH", bank_path, {"heartbeat_interval_seconds": 3601}),
            ("PATCH", bank_path, {"heartbeat_interval_seconds": "10"}),
            ("PATCH", bank_path, {"name": ""}),
            ("PATCH", bank_path, {"name": "   "}),
            ("PATCH", bank_path, {"name": "a\u0000b"}),
            ("PATCH", bank_path, []),
            ("POST", f"{bank_path}/compartments", {"number": 0, "slave_id": 1, "address": 0}),
            ("POST", f"{bank_path}/compartments", {"number": -1, "slave_id": 1, "address": 0}),
            ("POST", f"{bank_path}/compartments", {"number": 5, "slave_id": 1}),
            ("POST", f"{bank_path}/compartments", {"number": 5, "slave_id": 256, "address": 0}),
            ("PATCH", f"/api/admin/compartments/{c1}", {"out_of_service": "yes"}),
            ("PATCH", f"/api/admin/compartments/{c1}", {"address": -1}),
            ("POST", f"/api/admin/compartments/{c1}/open", {}),
            ("POST", f"/api/admin/compartments/{c1}/open", {"reason": ""}),
            ("POST", f"/api/admin/compartments/{c1}/open", {"reason": "   "}),
            ("POST", f"/api/admin/compartments/{c1}/open", {"reason": "x" * 501}),
            ("POST", f"/api/admin/compartments/{c1}/open", {"reason": 5}),
        ]
        for method, path, body in bad:
            response = await app.http.request(method, path, headers=app.admin_headers(), json=body)
            assert_refused(response, 400)
        # state conflicts
        assert_refused(
            await app.admin_post(
                f"{bank_path}/compartments", {"number": 1, "slave_id": 9, "address": 9}
            ),
            409,
        )
        assert_refused(
            await app.admin_post(
                f"{bank_path}/compartments", {"number": 8, "slave_id": 1, "address": 0}
            ),
            409,
        )
        assert_refused(await patch(app, f"/api/admin/compartments/{c2}", {"address": 0}), 409)
        not_failed = await app.admin_post(f"{bank_path}/restart")
        assert_refused(not_failed, 409)  # it has not failed
        assert not_failed.json()["error"] == "not_failed"
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["open_compartment"] = None
            await dev.come_online(app.context.fleet)
            assert (await operator_open(app, c1)).status_code == 202
            assert_refused(await app.admin_delete(f"/api/admin/compartments/{c1}"), 409)
        assert (await app.admin_delete(f"/api/admin/compartments/{c2}")).status_code == 204
        assert_refused(await app.admin_delete(f"/api/admin/compartments/{c1}"), 409)  # the last
        # nothing of the refused changes was recorded
        recorded = [ev["type"] for ev in await app.events(bank["id"])]
        assert recorded.count("CompartmentAdded") == 0
        assert recorded.count("CompartmentEdited") == 0
        assert recorded.count("LockerBankEdited") == 0
        assert recorded.count("CompartmentRetired") == 1
