"""Opening a compartment end to end: app -> bank actor -> MQTT -> device -> answer -> status."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.support.device import Answer, TestDevice, device, provision
from tests.support.mosquitto import MosquittoBroker
from tests.support.users import App, running_app


async def test_open_succeeds_for_a_provisioned_device(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank(compartments=2)
        compartment = bank["compartments"][1]
        credentials = await provision(mosquitto.url, bank["provisioning_token"])
        assert credentials.locker_bank_id == bank["id"]
        user = await app.signed_in_user()
        assert (await app.grant(compartment["id"], user)).status_code == 201
        async with device(
            mosquitto.url,
            bank["id"],
            client_id=credentials.client_id,
            username=credentials.mqtt_user,
            password=credentials.mqtt_password,
        ) as dev:
            dev.answers["open_compartment"] = Answer(message="opened")
            await dev.come_online(app.context.fleet)
            response = await app.open(user, compartment["id"])
            assert response.status_code == 202, response.text
            body = response.json()
            assert body["status"] == "pending"
            command = await dev.next_command("open_compartment")
            assert command["transaction_id"] == body["transaction_id"]
            assert command["data"] == {"compartment_number": 2}
            tx = await app.until_transaction(body["transaction_id"], status="success")
            mine = await app.transaction(user, body["transaction_id"])
            assert mine.json() == tx
            assert tx["action"] == "open_compartment"
            assert tx["error_code"] is None
            assert tx["message"] == "opened"
            assert tx["late_answer"] is None
            assert tx["requested_at"] <= tx["completed_at"]


async def online_bank(app: App, dev: TestDevice, bank_id: str) -> dict[str, Any] | None:
    """The bank online with its configuration applied: the ``apply_config`` it got (or None)."""
    assert dev.bank_id == bank_id
    return await dev.come_online(app.context.fleet)


async def test_device_error_is_the_transaction_error(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        user = await app.signed_in_user()
        await app.grant(compartment["id"], user)
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["open_compartment"] = Answer(
                result="error", error_code="lock_jammed", message="motor stalled"
            )
            await online_bank(app, dev, bank["id"])
            response = await app.open(user, compartment["id"])
            assert response.status_code == 202, response.text
            transaction_id = response.json()["transaction_id"]
            tx = await app.until_transaction(transaction_id, status="error")
            assert tx["error_code"] == "lock_jammed"
            assert tx["message"] == "motor stalled"
            assert tx["completed_at"] is not None
            failed = await app.events(bank["id"], "CommandFailed")
            assert [ev["data"]["transaction_id"] for ev in failed] == [transaction_id]
            assert failed[0]["data"]["error_code"] == "lock_jammed"


async def test_duplicate_answers_make_exactly_one_event(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        user = await app.signed_in_user()
        await app.grant(compartment["id"], user)
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["open_compartment"] = Answer(copies=3)
            await online_bank(app, dev, bank["id"])
            before = app.inbound("response", "processed") + app.inbound("response", "dropped")
            response = await app.open(user, compartment["id"])
            transaction_id = response.json()["transaction_id"]
            await app.until_inbound("response", int(before) + 3)
            tx = await app.until_transaction(transaction_id, status="success")
            assert tx["late_answer"] is None
            history = await app.events(bank["id"])
            concerning = [
                ev["type"] for ev in history if ev["data"].get("transaction_id") == transaction_id
            ]
            assert concerning == [
                "CompartmentOpeningRequested",
                "CommandDispatched",
                "CompartmentOpened",
            ]
            assert app.inbound("response", "dropped") >= 2


async def test_unanswered_command_times_out_and_a_late_answer_is_kept(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(
        mosquitto.url, tmp_path / "lockerd.db", LOCKERD_COMMAND_TIMEOUT="1"
    ) as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        user = await app.signed_in_user()
        await app.grant(compartment["id"], user)
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["open_compartment"] = None
            await online_bank(app, dev, bank["id"])
            response = await app.open(user, compartment["id"])
            assert response.status_code == 202, response.text
            transaction_id = response.json()["transaction_id"]
            command = await dev.next_command("open_compartment")
            assert command["expires_at"] > command["timestamp"]
            tx = await app.until_transaction(transaction_id, status="timeout")
            assert "unknown" in tx["message"]
            assert tx["error_code"] is None
            assert tx["late_answer"] is None
            assert tx["completed_at"] is not None

            await dev.respond(command, Answer(result="error", error_code="too_late"))
            late_tx = await app.until_transaction(transaction_id, late=True)
            assert late_tx["status"] == "timeout"
            assert late_tx["completed_at"] == tx["completed_at"]
            assert late_tx["message"] == tx["message"]
            late = late_tx["late_answer"]
            assert late["result"] == "error"
            assert late["error_code"] == "too_late"
            assert late["received_at"] >= tx["completed_at"]

            # only the first late answer counts; a second changes nothing
            handled = app.inbound("response", "processed") + app.inbound("response", "dropped")
            await dev.respond(command, Answer(result="success"))
            await app.until_inbound("response", int(handled) + 1)
            assert (await app.transaction(user, transaction_id)).json() == late_tx
            late_events = await app.events(bank["id"], "LateAnswerReceived")
            assert [ev["data"]["transaction_id"] for ev in late_events] == [transaction_id]
            timeouts = await app.events(bank["id"], "CommandTimedOut")
            assert [ev["data"]["transaction_id"] for ev in timeouts] == [transaction_id]


async def test_open_without_grant_is_refused_and_recorded(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        user = await app.signed_in_user()
        async with device(mosquitto.url, bank["id"]) as dev:
            pushed = await online_bank(app, dev, bank["id"])
            response = await app.open(user, compartment["id"])
            assert response.status_code == 403, response.text
            assert response.json()["error"] == "forbidden"
            assert response.json()["reason"] == "no_grant"
            assert response.json()["message"]
            denied = await app.events(bank["id"], "CompartmentOpeningDenied")
            assert len(denied) == 1
            data = denied[0]["data"]
            assert data["user_id"] == user.id
            assert data["compartment_id"] == compartment["id"]
            assert data["reason"] == "no_grant"
            assert dev.commands == [pushed]
            assert await app.events(bank["id"], "CompartmentOpeningRequested") == []


async def test_expired_and_revoked_grants_no_longer_open(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        first, second = bank["compartments"]
        user = await app.signed_in_user()
        soon = app.clock() + timedelta(hours=1)
        assert (await app.grant(first["id"], user, expires_at=soon)).status_code == 201
        assert (await app.grant(second["id"], user)).status_code == 201
        async with device(mosquitto.url, bank["id"]) as dev:
            await online_bank(app, dev, bank["id"])
            response = await app.open(user, first["id"])
            assert response.status_code == 202, response.text
            await app.until_transaction(response.json()["transaction_id"], status="success")

            app.clock.advance(timedelta(hours=2))
            await online_bank(app, dev, bank["id"])
            response = await app.open(user, first["id"])
            assert response.status_code == 403, response.text
            assert response.json()["reason"] == "no_grant"

            revoked = await app.admin_delete(
                f"/api/admin/compartments/{second['id']}/grants/{user.id}"
            )
            assert revoked.status_code == 204
            response = await app.open(user, second["id"])
            assert response.status_code == 403, response.text
            reasons = [
                ev["data"]["reason"]
                for ev in await app.events(bank["id"], "CompartmentOpeningDenied")
            ]
            assert reasons == ["no_grant", "no_grant"]


async def test_open_on_a_bank_that_is_not_online_is_a_conflict(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        user = await app.signed_in_user()
        await app.grant(compartment["id"], user)
        # never seen: presence unknown
        response = await app.open(user, compartment["id"])
        assert response.status_code == 409, response.text
        assert response.json() == {
            "error": "conflict",
            "message": "the locker bank is not online",
            "reason": "offline",
        }
        async with device(mosquitto.url, bank["id"]) as dev:
            pushed = await online_bank(app, dev, bank["id"])
            await dev.last_will()
            await app.until_presence(bank["id"], "offline")
            response = await app.open(user, compartment["id"])
            assert response.status_code == 409, response.text
            assert response.json()["reason"] == "offline"
            assert dev.commands == [pushed]
        denied = await app.events(bank["id"], "CompartmentOpeningDenied")
        assert [ev["data"]["reason"] for ev in denied] == ["offline", "offline"]
        assert all(ev["data"]["user_id"] == user.id for ev in denied)


async def test_second_open_while_one_is_pending_is_a_conflict(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        first, second = bank["compartments"]
        user = await app.signed_in_user()
        await app.grant(first["id"], user)
        await app.grant(second["id"], user)
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["open_compartment"] = None
            await online_bank(app, dev, bank["id"])
            pending = await app.open(user, first["id"])
            assert pending.status_code == 202, pending.text
            again = await app.open(user, first["id"])
            assert again.status_code == 409, again.text
            assert again.json()["reason"] == "command_pending"
            assert again.json()["error"] == "conflict"
            # another compartment of the same bank is not blocked
            other = await app.open(user, second["id"])
            assert other.status_code == 202, other.text

            command = await dev.next_command("open_compartment")
            assert command["transaction_id"] == pending.json()["transaction_id"]
            await dev.respond(command)
            await app.until_transaction(command["transaction_id"], status="success")
            after = await app.open(user, first["id"])
            assert after.status_code == 202, after.text
        denied = await app.events(bank["id"], "CompartmentOpeningDenied")
        assert [ev["data"]["reason"] for ev in denied] == ["command_pending"]


async def test_unknown_compartment_and_precedence(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        user = await app.signed_in_user()
        for path_id in (str(uuid.uuid4()), "not-a-uuid", "1", bank["id"]):
            response = await app.open(user, path_id)
            assert response.status_code == 404, (path_id, response.text)
            assert response.json()["error"] == "not_found"
        # 401 before 404
        response = await app.http.post(f"/api/compartments/{uuid.uuid4()}/open")
        assert response.status_code == 401
        response = await app.http.post(
            f"/api/compartments/{compartment['id']}/open",
            headers={"Authorization": "Bearer nonsense"},
        )
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        # 403 (no grant) before 409 (offline)
        response = await app.open(user, compartment["id"])
        assert response.status_code == 403
        assert response.json()["reason"] == "no_grant"


async def test_answers_on_the_deprecated_status_topic(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        user = await app.signed_in_user()
        await app.grant(compartment["id"], user)
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["open_compartment"] = Answer(topic="status", message="via status")
            await online_bank(app, dev, bank["id"])
            response = await app.open(user, compartment["id"])
            tx = await app.until_transaction(response.json()["transaction_id"], status="success")
            assert tx["message"] == "via status"


async def test_status_topic_ignored_when_not_accepted(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(
        mosquitto.url, tmp_path / "lockerd.db", LOCKERD_ACCEPT_STATUS_TOPIC="false"
    ) as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        user = await app.signed_in_user()
        await app.grant(compartment["id"], user)
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["open_compartment"] = None
            await online_bank(app, dev, bank["id"])
            response = await app.open(user, compartment["id"])
            command = await dev.next_command("open_compartment")
            await dev.respond(command, Answer(topic="status", result="error", message="status"))
            # the same client publishes in order: once this one is handled, so was the first
            await dev.respond(command, Answer(topic="response", message="response"))
            tx = await app.until_transaction(response.json()["transaction_id"], status="success")
            assert tx["message"] == "response"
