"""``GET /api/admin/alerts`` and ``POST /api/admin/alerts/{id}/acknowledge`` end to end: alerts
raised by a device over a real Mosquitto, the offline alert in virtual time, acknowledging as
an audited operator action, every unhappy path, and alerts that survive a restart (both
stores)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from domain import commands as c
from tests.faults.test_failed_banks import BrokenAppends
from tests.support.device import Answer, device
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import database_url_for
from tests.support.users import App, MovableClock, running_app

BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(tmp_path, request.param)


def app_on(
    broker: MosquittoBroker, tmp_path: Path, database: str, clock: MovableClock | None = None
) -> Any:
    return running_app(broker.url, tmp_path / "unused.db", clock, LOCKERD_DATABASE=database)


async def alerts(app: App, **params: str) -> list[dict[str, Any]]:
    response = await app.http.get("/api/admin/alerts", params=params, headers=app.admin_headers())
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


async def until_alerts(app: App, count: int, **params: str) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        found = await alerts(app, **params)
        return found if len(found) >= count else None

    result: list[dict[str, Any]] = await app.wait_until(check, what=f"{count} alerts {params}")
    return result


async def tick(app: App, bank_id: str) -> None:
    """Time has passed (the test's clock moved): fire the bank's deadlines now."""
    await app.context.registry.ask(bank_id, c.Tick())


async def test_device_alerts_are_listed_and_acknowledged_by_an_audited_operator(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        admin = await app.signed_in_user(role="admin")
        user = await app.signed_in_user()
        bank = await app.create_bank(heartbeat_interval_seconds=3600)
        bank_id = bank["id"]
        first, second = (comp["id"] for comp in bank["compartments"])
        assert (await app.grant(first, user)).status_code == 201
        async with device(mosquitto.url, bank_id) as dev:
            dev.answers["open_compartment"] = Answer(result="error", error_code="DOOR_JAMMED")
            await dev.come_online(app.context.fleet, retain=False)
            await dev.event("door_state_changed", {"compartment_number": 2, "state": "open"})
            (opened,) = await until_alerts(app, 1)
            response = await app.open(user, first)
            assert response.status_code == 202
            await app.until_transaction(response.json()["transaction_id"], status="error")
            listed = await until_alerts(app, 2)
        assert second  # the door that opened by itself
        jammed, opened = listed  # newest first
        assert set(jammed) == {"id", "bank_id", "type", "raised_at", "state", "data"}
        assert (jammed["type"], jammed["state"], jammed["bank_id"]) == (
            "command_failed",
            "open",
            bank_id,
        )
        assert jammed["data"]["error_code"] == "DOOR_JAMMED"
        assert opened["type"] == "uncommanded_door_opening"
        assert opened["data"]["compartment_number"] == 2
        assert await alerts(app, state="acknowledged") == []
        assert await alerts(app, bank_id=bank_id, limit="1") == [jammed]

        response = await app.http.post(
            f"/api/admin/alerts/{jammed['id']}/acknowledge", headers=admin.headers
        )
        assert response.status_code == 200, response.text
        assert response.json() == {**jammed, "state": "acknowledged"}
        assert await alerts(app, state="acknowledged") == [{**jammed, "state": "acknowledged"}]
        assert await alerts(app, state="open") == [opened]
        # a second time: a conflict, nothing recorded
        response = await app.http.post(
            f"/api/admin/alerts/{jammed['id']}/acknowledge", headers=admin.headers
        )
        assert response.status_code == 409
        assert response.json()["error"]

        # the acknowledgement is in the bank's history and the audit log, naming its actor
        (acknowledged,) = await app.events(bank_id, "AlertAcknowledged")
        assert acknowledged["data"]["alert_id"] == jammed["id"]
        assert acknowledged["data"]["actor"] == {"kind": "user", "id": admin.id}
        response = await app.http.get(
            "/api/admin/audit",
            params={"type": "AlertAcknowledged", "actor_id": admin.id},
            headers=app.admin_headers(),
        )
        (entry,) = response.json()
        assert entry["bank_id"] == bank_id
        assert entry["actor"] == {"kind": "user", "id": admin.id}
        # the admin token acknowledges as itself
        response = await app.admin_post(f"/api/admin/alerts/{opened['id']}/acknowledge")
        assert response.status_code == 200
        response = await app.http.get(
            "/api/admin/audit",
            params={"type": "AlertAcknowledged", "actor_id": "admin_token"},
            headers=app.admin_headers(),
        )
        assert [entry["data"]["alert_id"] for entry in response.json()] == [opened["id"]]


async def test_unhappy_paths(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with running_app(mosquitto.url, tmp_path / "a.db") as app:
        user = await app.signed_in_user()
        bank_id = (await app.create_bank(heartbeat_interval_seconds=3600))["id"]
        async with device(mosquitto.url, bank_id) as dev:
            await dev.come_online(app.context.fleet, retain=False)
            await dev.event("door_state_changed", {"compartment_number": 1, "state": "open"})
            (alert,) = await until_alerts(app, 1)
        acknowledge = f"/api/admin/alerts/{alert['id']}/acknowledge"

        assert (await app.http.get("/api/admin/alerts")).status_code == 401
        assert (await app.http.post(acknowledge)).status_code == 401
        bad_token = {"Authorization": "Bearer nope"}
        assert (await app.http.get("/api/admin/alerts", headers=bad_token)).status_code == 401
        assert (await app.http.get("/api/admin/alerts", headers=user.headers)).status_code == 403
        # the role before the input
        response = await app.http.get(
            "/api/admin/alerts", params={"state": "bogus"}, headers=user.headers
        )
        assert response.status_code == 403
        assert (await app.http.post(acknowledge, headers=user.headers)).status_code == 403
        response = await app.http.post(
            f"/api/admin/alerts/{uuid.uuid4()}/acknowledge", headers=user.headers
        )
        assert response.status_code == 403

        bad: list[dict[str, str] | list[tuple[str, str]]] = [
            {"state": "bogus"},
            {"state": "OPEN"},
            {"state": ""},
            [("state", "open"), ("state", "resolved")],
            {"bank_id": "not-an-id"},
            {"limit": "0"},
            {"limit": "1001"},
            {"limit": "x"},
            [("limit", "1"), ("limit", "2")],
        ]
        for params in bad:
            response = await app.http.get(
                "/api/admin/alerts", params=params, headers=app.admin_headers()
            )
            assert response.status_code == 400, params
            body = response.json()
            assert set(body) == {"error", "message"} and body["message"], params

        for unknown in (str(uuid.uuid4()), "not-an-id"):
            response = await app.admin_post(f"/api/admin/alerts/{unknown}/acknowledge")
            assert response.status_code == 404, unknown
        assert (await app.admin_post(acknowledge)).status_code == 200
        assert (await app.admin_post(acknowledge)).status_code == 409
        assert [ev["type"] for ev in await app.events(bank_id, "AlertAcknowledged")] == [
            "AlertAcknowledged"
        ]


async def test_offline_for_three_intervals_raises_and_coming_back_resolves(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    clock = MovableClock()
    async with running_app(mosquitto.url, tmp_path / "o.db", clock) as app:
        bank_id = (await app.create_bank(heartbeat_interval_seconds=10))["id"]
        async with device(mosquitto.url, bank_id, session_id="boot-1") as dev:
            await dev.come_online(app.context.fleet, retain=False)
            await dev.last_will()
            await app.until_presence(bank_id, "offline")
            # (the real time that passes meanwhile counts too: a wide margin below 30 s)
            clock.advance(timedelta(seconds=20))
            await tick(app, bank_id)
            assert await alerts(app) == []  # not yet 3 intervals
            clock.advance(timedelta(seconds=11))
            await tick(app, bank_id)
            (alert,) = await alerts(app)
            assert (alert["type"], alert["state"]) == ("bank_offline", "open")
            assert alert["data"]["heartbeat_interval_seconds"] == 10
            await tick(app, bank_id)
            assert len(await alerts(app)) == 1  # once per outage
            await dev.come_online(app.context.fleet, retain=False)
            (resolved,) = await until_alerts(app, 1, state="resolved")
        assert resolved == {**alert, "state": "resolved"}
        assert await alerts(app, state="open") == []


async def test_alerts_and_an_outage_deadline_survive_a_restart(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    clock = MovableClock()
    async with app_on(mosquitto, tmp_path, database, clock) as app:
        bank_id = (await app.create_bank(heartbeat_interval_seconds=10))["id"]
        async with device(mosquitto.url, bank_id, session_id="boot-1") as dev:
            await dev.come_online(app.context.fleet, retain=False)
            await dev.event("door_state_changed", {"compartment_number": 1, "state": "open"})
            (door,) = await until_alerts(app, 1)
            await dev.last_will()
            await app.until_presence(bank_id, "offline")
    # down for longer than 3 intervals: the restarted service raises the outage's alert by
    # itself (the bank's actor is woken for its deadline), and the door alert is still there
    clock.advance(timedelta(seconds=60))
    async with app_on(mosquitto, tmp_path, database, clock) as app:
        offline, again = await until_alerts(app, 2)
        assert again == door
        assert (offline["type"], offline["bank_id"]) == ("bank_offline", bank_id)
        response = await app.admin_post(f"/api/admin/alerts/{door['id']}/acknowledge")
        assert response.status_code == 200
    async with app_on(mosquitto, tmp_path, database, clock) as app:
        assert [a["state"] for a in await alerts(app)] == ["open", "acknowledged"]


async def test_a_failed_bank_actor_raises_an_alert_that_its_restart_resolves(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_on(mosquitto, tmp_path, database) as app:
        bank_id = (await app.create_bank())["id"]
        registry = app.context.registry
        rotate = f"/api/admin/locker-banks/{bank_id}/provisioning-token"
        with BrokenAppends(app, bank_id):  # the store refuses the bank's appends: it fails
            while not registry.is_failed(bank_id):
                assert (await app.admin_post(rotate)).status_code == 503
        # recorded by the failed bank once its appends work again
        (alert,) = await until_alerts(app, 1)
        assert (alert["type"], alert["state"]) == ("bank_actor_failed", "open")
        assert alert["data"]["error_type"] == "StoreUnavailable"
        assert "secret detail" not in json.dumps(alert)  # the crash's text stays internal
        assert registry.is_failed(bank_id)
        # acknowledged while the bank is still failed (the only request it takes)
        response = await app.admin_post(f"/api/admin/alerts/{alert['id']}/acknowledge")
        assert response.status_code == 200, response.text
        assert registry.is_failed(bank_id)
        assert (await app.admin_post(rotate)).status_code == 503
        # an operator starts it again (POST …/restart): the alert is resolved
        response = await app.admin_post(f"/api/admin/locker-banks/{bank_id}/restart")
        assert response.status_code == 202, response.text
        (resolved,) = await until_alerts(app, 1, state="resolved")
        assert resolved == {**alert, "state": "resolved"}
        history = await app.events(bank_id)
        assert [ev["type"] for ev in history][-3:] == [
            "BankActorFailed",
            "AlertAcknowledged",
            "BankActorRestarted",
        ]
        assert history[-1]["data"]["actor"] == {"kind": "admin_token"}
