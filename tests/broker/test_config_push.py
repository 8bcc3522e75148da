"""A new bank's configuration reaches its device by itself (contract §2), through the
deployment's broker.

A bank's configuration (``config_hash``) exists from its creation; its device has applied
nothing (``applied_config_hash`` null). When the bank comes online, lockerd sends exactly one
``apply_config`` with the contract's data; the device's answer makes ``applied_config_hash``
equal ``config_hash``, and coming online again after that sends nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.broker._push import until_configured
from tests.broker._stack import Broker, lockerd_at, provision
from tests.support.device import ECHO, Answer, config_hash, device
from tests.support.users import App

INTERVAL = 3600  # no heartbeat but the test's own
# created out of order: the command lists them sorted by compartment number
COMPARTMENTS = [
    {"number": 3, "slave_id": 2, "address": 7},
    {"number": 1, "slave_id": 1, "address": 0},
    {"number": 2, "slave_id": 1, "address": 1},
]
CONTRACT_COMPARTMENTS = [
    {"id": 1, "slaveId": 1, "address": 0},
    {"id": 2, "slaveId": 1, "address": 1},
    {"id": 3, "slaveId": 2, "address": 7},
]


async def create_bank(app: App) -> dict[str, Any]:
    body = {"name": "Config bank", "heartbeat_interval_seconds": INTERVAL}
    response = await app.admin_post(
        "/api/admin/locker-banks", {**body, "compartments": COMPARTMENTS}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def when(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


async def test_a_new_bank_coming_online_gets_its_configuration_once(
    broker: Broker, tmp_path: Path
) -> None:
    expected_hash = config_hash(CONTRACT_COMPARTMENTS, INTERVAL)
    async with lockerd_at(broker, tmp_path / "l.db") as app:
        bank = await create_bank(app)
        bank_id = bank["id"]
        # the configuration exists from the creation; nothing has applied it yet
        fresh = await app.bank(bank_id)
        assert (fresh["config_hash"], fresh["applied_config_hash"]) == (expected_hash, None)
        assert fresh["presence"] == "unknown"
        listed = (await app.admin_get("/api/admin/locker-banks")).json()
        assert [(b["config_hash"], b["applied_config_hash"]) for b in listed] == [
            (expected_hash, None)
        ]

        creds = await provision(broker, bank["provisioning_token"], "config-box")
        async with device(
            broker.url,
            bank_id,
            client_id=creds.client_id,
            username=creds.mqtt_user,
            password=creds.mqtt_password,
            session_id="s-1",
        ) as dev:
            dev.answers["apply_config"] = None  # answered by hand below
            await dev.heartbeat(retain=False)
            push = await dev.next_command()
            assert push["action"] == "apply_config"
            assert push["data"] == {
                "heartbeat_interval_seconds": INTERVAL,
                "compartments": CONTRACT_COMPARTMENTS,
                "config_hash": expected_hash,
            }
            timeout = timedelta(seconds=app.context.settings.command_timeout)
            assert when(push["expires_at"]) - when(push["timestamp"]) == timeout
            pending = await app.bank(bank_id)
            assert (pending["presence"], pending["applied_config_hash"]) == ("online", None)

            await dev.respond(push, Answer(applied_config_hash=ECHO))
            await until_configured(app, bank_id)
            await app.until_transaction(push["transaction_id"], status="success")
            applied = await app.bank(bank_id)
            assert applied["config_hash"] == applied["applied_config_hash"] == expected_hash

            # offline and online again, configured: nothing more to send
            await dev.last_will()
            await app.until_presence(bank_id, "offline")
            await dev.heartbeat(retain=False)
            await app.until_presence(bank_id, "online")

        history = [ev["type"] for ev in await app.events(bank_id)]
        assert history.count("LockerBankCameOnline") == 2
        # the online and its push are one append: a second push would be in the history now
        assert history.count("ConfigApplyRequested") == 1
        assert history.count("ConfigApplied") == 1
        assert [c["transaction_id"] for c in dev.commands] == [push["transaction_id"]]


async def test_a_device_that_applied_something_else_gets_the_configuration_when_back_online(
    broker: Broker, tmp_path: Path
) -> None:
    expected_hash = config_hash(CONTRACT_COMPARTMENTS, INTERVAL)
    async with lockerd_at(broker, tmp_path / "l.db") as app:
        bank = await create_bank(app)
        bank_id = bank["id"]
        creds = await provision(broker, bank["provisioning_token"], "config-box")
        async with device(
            broker.url,
            bank_id,
            client_id=creds.client_id,
            username=creds.mqtt_user,
            password=creds.mqtt_password,
            session_id="s-1",
        ) as dev:
            # a device that keeps its own older configuration answers with that one's hash
            dev.answers["apply_config"] = Answer(applied_config_hash="0" * 64)
            await dev.heartbeat(retain=False)
            first = await dev.next_command("apply_config")
            await app.until_transaction(first["transaction_id"], status="success")
            differs = await app.bank(bank_id)
            assert (differs["config_hash"], differs["applied_config_hash"]) == (
                expected_hash,
                "0" * 64,
            )

            # online again with a configuration that differs: the bank sends it again
            dev.answers["apply_config"] = Answer(applied_config_hash=ECHO)
            await dev.last_will()
            await app.until_presence(bank_id, "offline")
            await dev.heartbeat(retain=False)
            second = await dev.next_command("apply_config")
            assert second["transaction_id"] != first["transaction_id"]
            assert second["data"] == first["data"]
            await until_configured(app, bank_id)
        history = [ev["type"] for ev in await app.events(bank_id)]
        assert history.count("ConfigApplyRequested") == 2
        assert [c["action"] for c in dev.commands] == ["apply_config", "apply_config"]
