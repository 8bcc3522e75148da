"""Presence, last wills, reboots and door events against a real Mosquitto (issue 5)."""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as paho

from tests.support.device import CONFIG_PUSHED, device
from tests.support.mosquitto import MosquittoBroker
from tests.support.users import App, running_app


async def history(app: App, bank_id: str) -> list[str]:
    return [ev["type"] for ev in await app.events(bank_id)]


async def test_last_will_marks_offline_at_once_and_stale_will_is_ignored(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "l.db") as app:
        bank = (await app.create_bank(heartbeat_interval_seconds=3600))["id"]
        async with device(mosquitto.url, bank, session_id="boot-2") as dev:
            await dev.heartbeat()
            await app.until_presence(bank, "online")
            # a will left over from an earlier session: ignored
            dev.session_id = "boot-1"
            await dev.last_will()
            dev.session_id = "boot-2"
            await app.until_inbound("state", 2)
            assert app.context.fleet.banks[bank].presence == "online"
            assert app.inbound("state", "dropped") == 1
            # the current session's will: offline immediately (interval is an hour)
            await dev.last_will()
            await app.until_presence(bank, "offline")
        events = await app.events(bank, "LockerBankWentOffline")
        assert [ev["data"]["reason"] for ev in events] == ["last_will"]


async def test_heartbeats_are_not_events_and_reboots_are(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "l.db") as app:
        bank = (await app.create_bank(heartbeat_interval_seconds=3600))["id"]
        async with device(mosquitto.url, bank) as dev:
            await dev.come_online(app.context.fleet, uptime_seconds=100)
            for uptime in (110, 120, 5, 15):
                await dev.heartbeat(uptime_seconds=uptime)
            await app.until_inbound("state", 5)
            assert app.inbound("state", "processed") == 5
        types = await history(app, bank)
        assert types == [
            "LockerBankCreated",
            "ProvisioningTokenIssued",
            "LockerBankCameOnline",
            *CONFIG_PUSHED,  # the new bank's configuration, applied by the device
            "DeviceRebooted",
        ]
        rebooted = (await app.events(bank, "DeviceRebooted"))[0]["data"]
        assert (rebooted["previous_uptime_seconds"], rebooted["uptime_seconds"]) == (120, 5)


async def test_door_events_update_state_dedupe_and_raise_alerts(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "l.db") as app:
        bank = (await app.create_bank(compartments=2, heartbeat_interval_seconds=3600))["id"]
        async with device(mosquitto.url, bank) as dev:
            await dev.come_online(app.context.fleet)
            await dev.event(
                "door_state_changed", {"compartment_number": 2, "state": "open"}, event_id="e-1"
            )
            await dev.event(
                "door_state_changed", {"compartment_number": 2, "state": "open"}, event_id="e-1"
            )  # QoS 1 duplicate
            await dev.event(
                "door_state_changed", {"compartment_number": 2, "state": "closed"}, event_id="e-2"
            )
            await dev.event("battery_low", {"level": 7}, event_id="e-3")  # unknown type: kept
            await dev.event("door_state_changed", {"compartment_number": 9, "state": "open"})
            await dev.event("door_state_changed", {"compartment_number": 1, "state": "ajar"})
            await app.until_inbound("event", 6)
        assert app.inbound("event", "processed") == 3
        assert app.inbound("event", "dropped") == 3
        types = await history(app, bank)
        assert types[2:] == [
            "LockerBankCameOnline",
            *CONFIG_PUSHED,
            "DoorStateChanged",
            "UncommandedDoorOpening",
            "DoorStateChanged",
            "DeviceEventRecorded",
        ]
        doors = [c["door_state"] for c in (await app.bank(bank))["compartments"]]
        assert doors == ["unknown", "closed"]
        status = app.context.fleet.banks[bank]
        assert [a["type"] for a in status.alerts] == ["uncommanded_door_opening"]
        recorded = (await app.events(bank, "DeviceEventRecorded"))[0]["data"]
        assert (recorded["event"], recorded["data"]) == ("battery_low", {"level": 7})


async def test_flood_of_malformed_device_messages_changes_nothing(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "l.db") as app:
        bank = (await app.create_bank())["id"]
        before = await app.events(bank)
        publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="flooder")
        publisher.connect(mosquitto.host, mosquitto.port)
        publisher.loop_start()
        bodies = [
            b"",
            b"\xff\xfe",
            b"[]",
            b'{"type":"state","state":"heartbeat","data":{"uptime_seconds":"x"}}',
            b'{"type":"event","event":"door_state_changed","timestamp":"2026-01-01T00:00:00Z",'
            b'"data":{"compartment_number":1,"state":"sideways"}}',
            b'{"type":"command_response","action":"open_compartment","result":"success",'
            b'"transaction_id":"unknown","timestamp":"2026-01-01T00:00:00Z"}',
            json.dumps({"type": "state", "state": "heartbeat", "data": "x" * 20000}).encode(),
            b'{"type":"event","event":"x","timestamp":"yesterday","data":{}}',
        ]
        leaves = ["state", "event", "response", "status"]
        sent = 0
        for index in range(200):
            leaf = leaves[index % len(leaves)]
            body = bodies[index % len(bodies)]
            publisher.publish(f"locker/{bank}/{leaf}", body, qos=1).wait_for_publish(5)
            sent += 1
        publisher.loop_stop()
        publisher.disconnect()

        async def all_handled() -> bool:
            total = sum(
                app.inbound(kind, outcome)
                for kind in ("state", "event", "response")
                for outcome in ("processed", "dropped")
            )
            return total >= sent

        await app.wait_until(all_handled, what="the flood handled")
        for kind in ("state", "event", "response"):
            assert app.inbound(kind, "processed") == 0
        assert await app.events(bank) == before
        assert (await app.http.get("/healthz")).status_code == 200
        assert app.context.fleet.banks[bank].presence == "unknown"
        assert app.context.registry.entries[bank].child is not None
        assert app.context.registry.entries[bank].child.restarts == 0


async def test_a_retained_heartbeat_after_restart_is_not_a_sign_of_life(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """The broker replays the retained heartbeat as lockerd subscribes again (contract §2):
    counted as handled, but the bank stays ``unknown`` until the device really beats."""
    db = tmp_path / "l.db"
    async with running_app(mosquitto.url, db) as app:
        bank = (await app.create_bank(heartbeat_interval_seconds=3600))["id"]
        async with device(mosquitto.url, bank, last_will=False) as dev:
            await dev.heartbeat(retain=True)
            await app.until_presence(bank, "online")
    async with running_app(mosquitto.url, db) as app:
        await app.until_inbound("state", 1)
        assert app.inbound("state", "dropped") == 1
        assert (await app.bank(bank))["presence"] == "unknown"
        async with device(mosquitto.url, bank, last_will=False) as dev:
            await dev.heartbeat()
            await app.until_presence(bank, "online")
