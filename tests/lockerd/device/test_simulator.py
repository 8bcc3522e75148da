"""The reference device (lockerd.device) against the in-process service and a real mosquitto.

The test broker allows anonymous clients and does not ask the go-auth endpoints, so the
devices' logins are not checked here; the protocol is.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from domain.config_hash import config_compartments
from domain.config_hash import config_hash as backend_config_hash
from gateway.mqtt import MqttClient, MqttSettings, open_mqtt_client
from lockerd.device import protocol as p
from lockerd.device.fleet import BankTicket, Fleet
from lockerd.device.simulated import Behaviour, Delay, Link, SimulatedDevice
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import (
    ADMIN_TOKEN,
    RunningLockerd,
    eventually,
    lockerd,
    test_settings,
)

WAIT = 20.0  # upper bound for anything awaited here; normally well under a second


@asynccontextmanager
async def running_fleet(
    mosquitto: MosquittoBroker, banks: list[dict[str, Any]], behaviour: Behaviour = Behaviour()
) -> AsyncIterator[Fleet]:
    tickets = [
        BankTicket(
            compartments=len(bank["compartments"]),
            provisioning_token=bank["provisioning_token"],
            bank_id=bank["id"],
        )
        for bank in banks
    ]
    link = Link(mosquitto.host, mosquitto.port, "provisioning_client", "provisioning-password")
    fleet = Fleet(link, tickets, behaviour, seed=7)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        try:
            yield fleet
        finally:
            with trio.CancelScope(shield=True):
                await fleet.stop()


@asynccontextmanager
async def command_tap(mosquitto: MosquittoBroker) -> AsyncIterator[MqttClient]:
    """A plain client that sees every command the backend publishes (and can publish)."""
    settings = MqttSettings(mosquitto.host, mosquitto.port, f"tap-{uuid.uuid4().hex[:8]}")
    async with open_mqtt_client(settings, reconnect=False) as client:
        await client.subscribe([("locker/+/command", 1)])
        yield client


async def next_command(tap: MqttClient, transaction_id: str, bank_id: str) -> bytes:
    """The command ``transaction_id`` as the tap saw it published to ``bank_id``'s device (the
    tap also sees the ``apply_config`` a bank gets by itself as it comes online)."""
    with trio.fail_after(WAIT):
        async for message in tap.messages():
            if message.topic != p.command_topic(bank_id):
                continue
            if json.loads(message.payload)["transaction_id"] == transaction_id:
                return message.payload
    raise AssertionError("tap closed")


async def bank(svc: RunningLockerd, bank_id: str) -> dict[str, Any]:
    response = await svc.admin_get(f"/api/admin/locker-banks/{bank_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def history(svc: RunningLockerd, bank_id: str) -> list[dict[str, Any]]:
    response = await svc.admin_get(f"/api/admin/locker-banks/{bank_id}/events")
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


async def until_configured(svc: RunningLockerd, banks: list[dict[str, Any]]) -> None:
    """Until every bank's device has applied the configuration pushed as it came online."""

    async def all_applied() -> bool:
        views = [await bank(svc, created["id"]) for created in banks]
        return all(v["applied_config_hash"] == v["config_hash"] is not None for v in views)

    await eventually(all_applied, within=WAIT)


async def request_apply_config(svc: RunningLockerd, bank_id: str) -> str:
    """POST apply-config; a 409 means the one sent when the bank came online is still
    pending, so ask again once it has been answered."""
    transaction: dict[str, str] = {}

    async def accepted() -> bool:
        response = await svc.admin_post(f"/api/admin/locker-banks/{bank_id}/apply-config")
        if response.status_code == 409:
            return False
        assert response.status_code == 202, response.text
        transaction.update(response.json())
        return True

    await eventually(accepted, within=WAIT)
    return transaction["transaction_id"]


def command(action: str, data: dict[str, Any], *, expires_in: float = 30.0) -> tuple[str, bytes]:
    tid = str(uuid.uuid4())
    now = datetime.now(UTC)
    body = {
        "action": action,
        "transaction_id": tid,
        "timestamp": p.iso(now),
        "expires_at": p.iso(now + timedelta(seconds=expires_in)),
        "data": data,
    }
    return tid, json.dumps(body).encode()


async def test_three_banks_provision_come_online_and_apply_config(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "db")) as svc:
        banks = [await svc.create_bank(compartments=3, name=f"Sim {n}") for n in range(3)]
        async with running_fleet(mosquitto, banks) as fleet, command_tap(mosquitto) as tap:
            with trio.fail_after(WAIT):
                await fleet.wait_online()
            assert fleet.stats.provisioned == 3
            assert {d.bank_id for d in fleet.devices} == {b["id"] for b in banks}

            async def all_online() -> bool:
                views = [await bank(svc, b["id"]) for b in banks]
                return all(v["presence"] == "online" and v["provisioned_at"] for v in views)

            await eventually(all_online, within=WAIT)

            for created in banks:
                device = fleet.device_for_bank(created["id"])

                # the configuration it was created with, sent by itself as the bank came
                # online (contract §2), applied by the device: once, and nothing sent again
                async def acknowledged(bank_id: str = created["id"]) -> bool:
                    view = await bank(svc, bank_id)
                    return bool(view["applied_config_hash"] == view["config_hash"] is not None)

                await eventually(acknowledged, within=WAIT)
                view = await bank(svc, created["id"])
                events = await history(svc, created["id"])
                pushes = [e for e in events if e["type"] == "ConfigApplyRequested"]
                assert [e["data"]["config_hash"] for e in pushes] == [view["config_hash"]]
                pushed = pushes[0]["data"]["transaction_id"]
                assert device.executions[pushed] == 1
                # The device's own hash (lockerd.device.protocol) is the backend's.
                assert device.applied_config is not None
                assert device.applied_config.config_hash == view["config_hash"]

                # and an operator's apply-config goes the same way
                tid = await request_apply_config(svc, created["id"])
                sent = json.loads(await next_command(tap, tid, created["id"]))
                assert sent["action"] == "apply_config"
                with trio.fail_after(WAIT):
                    await fleet.wait_answered(tid)
                assert device.executions[tid] == 1
                applied = device.applied_config
                assert applied is not None
                assert applied.config_hash == sent["data"]["config_hash"] == view["config_hash"]

                async def succeeded(transaction_id: str = tid) -> bool:
                    tx = await svc.admin_get(f"/api/transactions/{transaction_id}")
                    assert tx.status_code == 200, tx.text
                    return bool(tx.json()["status"] == "success")

                await eventually(succeeded, within=WAIT)
                view = await bank(svc, created["id"])
                assert view["applied_config_hash"] == applied.config_hash


async def test_duplicated_command_is_executed_once(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "db")) as svc:
        banks = [await svc.create_bank(compartments=2, name=f"Dup {n}") for n in range(3)]
        behaviour = Behaviour(door_open=Delay.fixed(0.05))
        async with (
            running_fleet(mosquitto, banks, behaviour) as fleet,
            command_tap(mosquitto) as tap,
        ):
            with trio.fail_after(WAIT):
                await fleet.wait_online()
            # every bank's own push is applied first: the fleet's counters must not move for
            # another bank while this one's duplicate is checked
            await until_configured(svc, banks)
            bank_id = banks[0]["id"]
            device = fleet.device_for_bank(bank_id)

            # 1. The backend's own apply_config, delivered twice (as QoS 1 may): one
            #    execution, the stored answer sent again, one ConfigApplied in the history.
            tid = await request_apply_config(svc, bank_id)
            original = await next_command(tap, tid, bank_id)
            with trio.fail_after(WAIT):
                await fleet.wait_answered(tid)
            applied_before = fleet.stats.configs_applied
            await tap.publish(p.command_topic(bank_id), original, qos=1)
            with trio.fail_after(WAIT):
                await device.wait_for(lambda d: d.responses_sent[tid] == 2)
            assert device.executions[tid] == 1
            assert fleet.stats.configs_applied == applied_before
            assert fleet.stats.duplicates >= 1

            async def settled() -> bool:
                # the second answer reached the backend and was recognised as a duplicate
                metrics = (await svc.http.get("/metrics")).text
                return 'lockerd_dropped_messages_total{kind="response",reason="duplicate"}' in (
                    metrics
                )

            await eventually(settled, within=WAIT)
            applied_events = [
                e
                for e in await history(svc, bank_id)
                if e["type"] == "ConfigApplied" and e["data"]["transaction_id"] == tid
            ]
            assert len(applied_events) == 1

            # 2. An open delivered twice, the second time while the first is still being
            #    executed: one door pulse, one open event, two identical answers.
            slow = fleet.device_for_bank(banks[1]["id"])
            tid, payload = command(p.OPEN_COMPARTMENT, {"compartment_number": 2})
            topic = p.command_topic(banks[1]["id"])
            await tap.publish(topic, payload, qos=1)
            await tap.publish(topic, payload, qos=1)
            with trio.fail_after(WAIT):
                await slow.wait_for(lambda d: d.responses_sent[tid] == 2)
                await slow.wait_for(lambda d: d.doors[2].state == "closed" and d.pulses[2] == 1)
            assert slow.executions[tid] == 1
            assert slow.pulses == {2: 1}


async def test_expired_and_unknown_commands_are_refused(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "db")) as svc:
        banks = [await svc.create_bank(compartments=2)]
        async with running_fleet(mosquitto, banks) as fleet, command_tap(mosquitto) as tap:
            with trio.fail_after(WAIT):
                await fleet.wait_online()
            device = fleet.devices[0]
            topic = p.command_topic(banks[0]["id"])
            replies: dict[str, dict[str, Any]] = {}
            await tap.subscribe([(p.response_topic(banks[0]["id"]), 1)])
            cases = {
                "expired": command(p.OPEN_COMPARTMENT, {"compartment_number": 1}, expires_in=-1.0),
                "unknown": command(p.OPEN_COMPARTMENT, {"compartment_number": 9}),
                "action": command("self_destruct", {}),
            }
            for _, payload in cases.values():
                await tap.publish(topic, payload, qos=1)
            wanted = {tid for tid, _ in cases.values()}
            with trio.fail_after(WAIT):
                async for message in tap.messages():
                    if message.topic.endswith("/response"):
                        body = json.loads(message.payload)
                        replies[body["transaction_id"]] = body
                        if wanted <= set(replies):
                            break
            codes = {name: replies[tid]["error_code"] for name, (tid, _) in cases.items()}
            assert codes == {
                "expired": p.EXPIRED,
                "unknown": p.UNKNOWN_COMPARTMENT,
                "action": p.UNSUPPORTED_ACTION,
            }
            assert all(replies[tid]["result"] == "error" for tid in wanted)
            assert not device.pulses


async def test_crash_sends_the_last_will_and_the_device_comes_back(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "db")) as svc:
        banks = [await svc.create_bank(compartments=1)]
        behaviour = Behaviour(reboot_delay=Delay.fixed(0.5))
        async with running_fleet(mosquitto, banks, behaviour) as fleet:
            with trio.fail_after(WAIT):
                await fleet.wait_online()
            device: SimulatedDevice = fleet.devices[0]
            first_session = device.session_id
            device.crash()

            async def went_offline() -> bool:
                return any(
                    e["type"] == "LockerBankWentOffline" and e["data"]["reason"] == "last_will"
                    for e in await history(svc, banks[0]["id"])
                )

            await eventually(went_offline, within=WAIT)
            with trio.fail_after(WAIT):
                await device.wait_for(lambda d: d.status == "online")
            assert device.session_id != first_session

            async def back_online() -> bool:
                return (await bank(svc, banks[0]["id"]))["presence"] == "online"

            await eventually(back_online, within=WAIT)
            types = [e["type"] for e in await history(svc, banks[0]["id"])]
            assert types.count("LockerBankCameOnline") == 2
            assert "DeviceRebooted" in types or types.count("LockerBankWentOffline") == 1


def test_device_config_hash_matches_the_backend() -> None:
    entries = [(2, 1, 1), (1, 1, 0), (3, 2, 0)]
    wire = config_compartments(entries)
    assert p.config_hash(wire, 30) == backend_config_hash(wire, 30)
    shuffled = list(reversed(wire))
    assert p.config_hash(shuffled, 30) == backend_config_hash(wire, 30)
    parsed = p.parse_config({"heartbeat_interval_seconds": 30, "compartments": shuffled})
    assert parsed.config_hash == backend_config_hash(wire, 30)
    assert parsed.as_wire() == wire


def test_firmware_doc_worked_example_is_what_the_code_computes() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "firmware.md").read_text()
    wire = [
        {"id": 1, "slaveId": 1, "address": 0},
        {"id": 2, "slaveId": 1, "address": 1},
        {"id": 3, "slaveId": 2, "address": 0},
    ]
    canonical = p.canonical_config(wire, 10)
    assert canonical.decode() in doc
    assert f"one line, {len(canonical)} bytes" in doc
    assert p.config_hash(wire, 10) in doc
    assert p.config_hash(wire, 30) in doc
    assert p.config_hash(wire, 10) == backend_config_hash(wire, 10)


async def test_simulate_command_creates_banks_and_reports(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    import os
    import sys

    async with lockerd(test_settings(mosquitto.url, tmp_path / "db")) as svc:
        summary_path = tmp_path / "summary.json"
        credentials = tmp_path / "credentials.jsonl"
        env = {**os.environ, "LOCKERD_ADMIN_TOKEN": ADMIN_TOKEN}
        with trio.fail_after(60):
            done = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "lockerd.cli",
                    "simulate",
                    "--api",
                    svc.base_url,
                    "--banks",
                    "2",
                    "--compartments",
                    "3",
                    "--mqtt-url",
                    mosquitto.url,
                    "--heartbeat-interval",
                    "1",
                    "--duration",
                    "3",
                    "--summary-json",
                    str(summary_path),
                    "--save-credentials",
                    str(credentials),
                ],
                env=env,
                capture_stderr=True,
                check=False,
            )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert b"provisioning: 2 provisioned" in done.stderr
        report = json.loads(summary_path.read_text())
        assert report["counters"]["provisioned"] == 2
        assert report["counters"]["heartbeats"] >= 2
        assert report["devices"] == {"stopped": 2}
        lines = [json.loads(line) for line in credentials.read_text().splitlines()]
        assert len(lines) == 2
        listed = (await svc.admin_get("/api/admin/locker-banks")).json()
        assert {bank["id"] for bank in listed} == {line["bank_id"] for line in lines}
        # the devices said goodbye: offline at once, not after 3 missed heartbeats
        assert all(bank["presence"] == "offline" for bank in listed)
