"""apply_config end to end (contract §2: a bank's configuration exists from its creation and is
pushed whenever the bank comes online without it), and the outbox: a command recorded while the
broker is down is published once the service is back."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.support.device import Answer, config_hash, device
from tests.support.mosquitto import MosquittoBroker
from tests.support.users import running_app

EXPECTED_LIST = [
    {"id": 1, "slaveId": 1, "address": 0},
    {"id": 2, "slaveId": 1, "address": 1},
    {"id": 3, "slaveId": 1, "address": 2},
]
EXPECTED_HASH = config_hash(EXPECTED_LIST, 15)


async def test_a_new_bank_gets_its_configuration_once_as_it_first_comes_online(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank(compartments=3, heartbeat_interval_seconds=15)
        before = await app.bank(bank["id"])
        assert before["config_hash"] == EXPECTED_HASH  # from its creation
        assert before["applied_config_hash"] is None
        async with device(mosquitto.url, bank["id"], session_id="boot-1") as dev:
            await dev.heartbeat()
            command = await dev.next_command()  # the first command it ever gets
            assert command["action"] == "apply_config"
            assert command["data"] == {
                "heartbeat_interval_seconds": 15,
                "compartments": EXPECTED_LIST,
                "config_hash": EXPECTED_HASH,
            }
            assert set(command) == {"action", "transaction_id", "timestamp", "expires_at", "data"}
            tx = await app.until_transaction(command["transaction_id"], status="success")
            assert tx["action"] == "apply_config"
            after = await app.bank(bank["id"])
            assert after["config_hash"] == after["applied_config_hash"] == EXPECTED_HASH

            # in step now: more heartbeats, and coming back online, send nothing more
            await dev.heartbeat()
            await dev.last_will()
            await app.until_presence(bank["id"], "offline")
            await dev.heartbeat()
            await app.until_presence(bank["id"], "online")
            await app.until_inbound("state", 4)
        (requested,) = await app.events(bank["id"], "ConfigApplyRequested")
        assert requested["data"]["transaction_id"] == command["transaction_id"]
        assert requested["data"]["config_hash"] == EXPECTED_HASH
        assert requested["data"]["actor"] is None  # sent by itself, not by an operator
        applied = await app.events(bank["id"], "ConfigApplied")
        assert [ev["data"]["applied_config_hash"] for ev in applied] == [EXPECTED_HASH]
        assert dev.commands == [command]


async def test_apply_config_round_trip(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank(compartments=3, heartbeat_interval_seconds=15)
        async with device(mosquitto.url, bank["id"]) as dev:
            pushed = await dev.come_online(app.context.fleet)
            assert pushed is not None
            response = await app.admin_post(f"/api/admin/locker-banks/{bank['id']}/apply-config")
            assert response.status_code == 202, response.text
            transaction_id = response.json()["transaction_id"]
            command = await dev.next_command("apply_config")
            assert command["transaction_id"] == transaction_id
            assert command["data"] == {
                "heartbeat_interval_seconds": 15,
                "compartments": EXPECTED_LIST,
                "config_hash": EXPECTED_HASH,
            }
            await app.until_transaction(transaction_id, status="success")
            after = await app.bank(bank["id"])
            assert after["config_hash"] == EXPECTED_HASH
            assert after["applied_config_hash"] == EXPECTED_HASH
            applied = await app.events(bank["id"], "ConfigApplied")
            assert [ev["data"]["transaction_id"] for ev in applied] == [
                pushed["transaction_id"],
                transaction_id,
            ]
            assert [ev["data"]["applied_config_hash"] for ev in applied] == [EXPECTED_HASH] * 2


async def test_config_is_sent_again_when_the_bank_comes_back_online(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank(compartments=2)
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["apply_config"] = Answer(result="error", error_code="modbus_timeout")
            await dev.heartbeat()
            # the new bank's configuration, sent as it comes online: the device fails it
            pushed = await dev.next_command("apply_config")
            first = pushed["transaction_id"]
            failed = await app.until_transaction(first, status="error")
            assert failed["error_code"] == "modbus_timeout"
            state = await app.bank(bank["id"])
            assert state["config_hash"] == pushed["data"]["config_hash"]
            assert state["applied_config_hash"] is None

            dev.answers["apply_config"] = Answer()  # echoes the config_hash
            await dev.last_will()
            await app.until_presence(bank["id"], "offline")
            assert [c["action"] for c in dev.commands] == ["apply_config"]
            await dev.heartbeat()
            resent = await dev.next_command("apply_config")
            assert resent["transaction_id"] != first
            assert resent["data"]["config_hash"] == state["config_hash"]
            tx = await app.until_transaction(resent["transaction_id"], status="success")
            assert tx["action"] == "apply_config"
            state = await app.bank(bank["id"])
            assert state["applied_config_hash"] == state["config_hash"]

            # in step now: coming back online again sends nothing
            await dev.last_will()
            await app.until_presence(bank["id"], "offline")
            await dev.heartbeat()
            await app.until_presence(bank["id"], "online")
            requested = await app.events(bank["id"], "ConfigApplyRequested")
            assert len(requested) == 2


async def test_open_recorded_while_the_broker_is_down_is_sent_after_a_restart(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    db = tmp_path / "lockerd.db"
    async with running_app(mosquitto.url, db) as app:
        bank = await app.create_bank()
        compartment = bank["compartments"][0]
        user = await app.signed_in_user()
        await app.grant(compartment["id"], user)
    # A persistent session: the broker keeps the device's subscription across its restart.
    # No last will: mosquitto would publish it on shutting down, and an offline bank is not
    # sent commands at all.
    async with device(
        mosquitto.url,
        bank["id"],
        client_id="outbox-device",
        clean_session=False,
        last_will=False,
    ) as dev:
        async with running_app(mosquitto.url, db) as app:
            # retained: the restarted service sees it on subscribing
            pushed = await dev.come_online(app.context.fleet)
            assert pushed is not None

            await trio.to_thread.run_sync(mosquitto.stop)
            response = await app.open(user, compartment["id"])  # the session survived
            assert response.status_code == 202, response.text
            transaction_id = response.json()["transaction_id"]
            types = [ev["type"] for ev in await app.events(bank["id"])]
            assert "CompartmentOpeningRequested" in types
            dispatched = await app.events(bank["id"], "CommandDispatched")
            assert [ev["data"]["transaction_id"] for ev in dispatched] == [pushed["transaction_id"]]
        # the service stopped with the command recorded but never published
        assert dev.commands == [pushed]

        await trio.to_thread.run_sync(mosquitto.start)
        with trio.fail_after(10):
            await dev.client.wait_connected()
        async with running_app(mosquitto.url, db) as app:
            command = await dev.next_command("open_compartment")
            assert command["transaction_id"] == transaction_id
            assert command["data"] == {"compartment_number": 1}
            tx = await app.until_transaction(transaction_id, status="success")
            assert tx["late_answer"] is None
            dispatched = await app.events(bank["id"], "CommandDispatched")
            assert [ev["data"]["transaction_id"] for ev in dispatched] == [
                pushed["transaction_id"],
                transaction_id,
            ]
            assert dev.commands == [pushed, command]
