"""``GET /api/admin/audit`` (contract §5): every bank's history and every operator action,
newest first, its filters and their validation, on both stores; rebuildable from the log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from domain import commands as c
from lockerd.commands.store_ops import rebuild
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import database_url_for
from tests.support.users import App, running_app

BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(tmp_path, request.param)


def app_on(broker: MosquittoBroker, tmp_path: Path, database: str) -> Any:
    return running_app(broker.url, tmp_path / "unused.db", LOCKERD_DATABASE=database)


async def audit(app: App, **params: Any) -> list[dict[str, Any]]:
    response = await app.http.get("/api/admin/audit", params=params, headers=app.admin_headers())
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


async def test_the_audit_log_filters_every_bank_and_operator_action(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        started = datetime.now(UTC) - timedelta(seconds=1)
        admin = await app.signed_in_user(role="admin")
        user = await app.signed_in_user()
        bank = await app.create_bank()
        other_bank = await app.create_bank()
        compartment = bank["compartments"][0]["id"]
        response = await app.http.post(
            f"/api/admin/compartments/{compartment}/grants",
            json={"user_id": user.id},
            headers=admin.headers,
        )
        assert response.status_code == 201
        response = await app.http.post(
            "/api/admin/groups", json={"name": "g"}, headers=admin.headers
        )
        group_id = response.json()["id"]

        everything = await audit(app, limit="1000")
        positions = [entry["position"] for entry in everything]
        assert positions == sorted(positions, reverse=True)  # newest first
        assert set(everything[0]) == {"position", "recorded_at", "bank_id", "type", "actor", "data"}
        assert everything[0]["type"] == "GroupCreated"
        assert everything[0]["bank_id"] is None
        assert everything[0]["actor"] == {"kind": "user", "id": admin.id}
        assert everything[0]["data"]["group_id"] == group_id
        assert everything[0]["recorded_at"].endswith("Z")
        types = {entry["type"] for entry in everything}
        assert {"UserCreated", "LockerBankCreated", "CompartmentAccessGranted"} <= types

        mine = await audit(app, actor_id=admin.id)
        assert [entry["type"] for entry in mine] == ["GroupCreated", "CompartmentAccessGranted"]
        by_token = await audit(app, actor_id="admin_token", type="UserCreated")
        assert {entry["data"]["user_id"] for entry in by_token} == {admin.id, user.id}
        assert all(entry["actor"] == {"kind": "admin_token"} for entry in by_token)

        of_bank = await audit(app, bank_id=bank["id"])
        assert {entry["bank_id"] for entry in of_bank} == {bank["id"]}
        assert of_bank[-1]["type"] == "LockerBankCreated"
        assert other_bank["id"] not in {entry["bank_id"] for entry in of_bank}
        granted = await audit(app, bank_id=bank["id"], type="CompartmentAccessGranted")
        assert [entry["actor"] for entry in granted] == [{"kind": "user", "id": admin.id}]

        # time window, limit and paging
        assert len(await audit(app, since=started.isoformat())) == len(everything)
        assert await audit(app, until=started.isoformat()) == []
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert await audit(app, since=later) == []
        first = await audit(app, limit="2")
        assert first == everything[:2]
        page = await audit(app, limit="2", before=str(first[-1]["position"]))
        assert page == everything[2:4]
        assert await audit(app, actor_id=str(uuid.uuid4())) == []

        # a rebuild of the read models gives the same log
        await rebuild(database)
        assert await audit(app, limit="1000") == everything


async def test_the_audit_log_shows_every_lifecycle_action_with_its_actor(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    """Contract §5: edit, add, out of service, retire, an operator's open (refused: the bank is
    offline), decommission; each filed under its actor, a user or the admin token."""
    async with app_on(mosquitto, tmp_path, database) as app:
        admin = await app.signed_in_user(role="admin")
        bank = await app.create_bank(compartments=2)
        path = f"/api/admin/locker-banks/{bank['id']}"
        first, second = (c["id"] for c in bank["compartments"])
        by_admin = admin.headers
        token = app.admin_headers()
        steps = [
            ("PATCH", path, {"name": "Renamed"}, by_admin),
            ("POST", f"{path}/compartments", {"number": 3, "slave_id": 1, "address": 2}, token),
            ("PATCH", f"/api/admin/compartments/{first}", {"out_of_service": True}, by_admin),
            ("DELETE", f"/api/admin/compartments/{second}", None, token),
            ("POST", f"/api/admin/compartments/{first}/open", {"reason": "check"}, by_admin),
            ("POST", f"{path}/decommission", None, by_admin),
        ]
        for method, url, body, headers in steps:
            kwargs: dict[str, Any] = {} if body is None else {"json": body}
            response = await app.http.request(method, url, headers=headers, **kwargs)
            assert response.status_code < 300 or response.status_code == 409, response.text
        mine = await audit(app, actor_id=admin.id, bank_id=bank["id"])
        assert [entry["type"] for entry in mine] == [
            "LockerBankDecommissioned",
            "CompartmentOpeningDenied",
            "CompartmentEdited",
            "LockerBankEdited",
        ]
        assert all(entry["actor"] == {"kind": "user", "id": admin.id} for entry in mine)
        assert mine[1]["data"]["request_reason"] == "check"
        assert mine[1]["data"]["reason"] == "out_of_service"
        tokens = await audit(app, actor_id="admin_token", bank_id=bank["id"])
        assert [entry["type"] for entry in tokens] == [
            "CompartmentRetired",
            "CompartmentAdded",
            "ProvisioningTokenIssued",  # with the creation: it names its actor too
            "LockerBankCreated",
        ]
        await rebuild(database)
        assert await audit(app, actor_id=admin.id, bank_id=bank["id"]) == mine


async def test_audit_parameters_are_validated(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        user = await app.signed_in_user()
        assert (await app.http.get("/api/admin/audit")).status_code == 401
        response = await app.http.get(
            "/api/admin/audit", params={"limit": "x"}, headers=user.headers
        )
        assert response.status_code == 403  # the role before the input
        bad: list[dict[str, str] | list[tuple[str, str]]] = [
            {"limit": "0"},
            {"limit": "1001"},
            {"limit": "-1"},
            {"limit": "ten"},
            {"limit": "1.5"},
            {"before": "0"},
            {"before": "x"},
            {"since": "yesterday"},
            {"since": "2026-01-01T00:00:00"},  # no offset
            {"until": "2026-13-01T00:00:00Z"},
            {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
            {"since": "0001-01-01T00:00:00+01:00"},
            {"actor_id": "someone"},
            {"bank_id": "nope"},
            {"type": "Not A Type"},
            {"type": ""},
            [("limit", "1"), ("limit", "2")],
        ]
        for params in bad:
            response = await app.http.get(
                "/api/admin/audit", params=params, headers=app.admin_headers()
            )
            assert response.status_code == 400, (params, response.text)
            assert response.json()["error"] == "invalid_input"
        # other parameters are ignored
        response = await app.http.get(
            "/api/admin/audit", params={"page": "2"}, headers=app.admin_headers()
        )
        assert response.status_code == 200
        assert len(await audit(app)) <= 100  # the default limit


async def test_acknowledging_an_alert_is_audited_with_its_actor(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        admin = await app.signed_in_user(role="admin")
        bank = await app.create_bank()
        # a door that opened by itself, as the bank's device would report it
        await app.context.registry.ask(
            bank["id"],
            c.RecordDeviceEvent(
                event="door_state_changed",
                event_id=None,
                data={"compartment_number": 1, "state": "open"},
            ),
        )
        (alert,) = (await app.admin_get("/api/admin/alerts")).json()
        response = await app.http.post(
            f"/api/admin/alerts/{alert['id']}/acknowledge", headers=admin.headers
        )
        assert response.status_code == 200, response.text
        (entry,) = await audit(app, actor_id=admin.id)
        assert entry["type"] == "AlertAcknowledged"
        assert entry["bank_id"] == bank["id"]
        assert entry["actor"] == {"kind": "user", "id": admin.id}
        assert entry["data"]["alert_id"] == alert["id"]
        assert entry["data"]["alert_type"] == "uncommanded_door_opening"
        # the alert itself is raised by the bank (no operator): in the log without an actor
        (raised,) = await audit(app, bank_id=bank["id"], type="UncommandedDoorOpening")
        assert raised["actor"] is None
        await rebuild(database)
        assert (await audit(app, actor_id=admin.id)) == [entry]
