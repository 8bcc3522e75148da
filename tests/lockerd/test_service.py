"""End to end through the core: HTTP admin routes, MQTT routing, presence, restart."""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as paho

from store.base import StoreUnavailable
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import ADMIN_TOKEN, eventually, lockerd, test_settings

UNKNOWN_BANK = "8a0c5e4e-0000-4000-8000-000000000000"


def heartbeat(uptime: int = 5) -> bytes:
    return json.dumps(
        {
            "type": "state",
            "state": "heartbeat",
            "data": {"timestamp": "2026-11-24T10:00:00Z", "uptime_seconds": uptime},
        }
    ).encode()


def publish(broker: MosquittoBroker, topic: str, payload: bytes, retain: bool = False) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


async def test_create_list_get_bank_and_history(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        created = await svc.create_bank(compartments=3, name="Town hall", location="Foyer")
        assert set(created) == {"id", "name", "provisioning_token", "compartments"}
        assert [c["number"] for c in created["compartments"]] == [1, 2, 3]
        listed = (await svc.admin_get("/api/admin/locker-banks")).json()
        assert [b["id"] for b in listed] == [created["id"]]
        bank = (await svc.admin_get(f"/api/admin/locker-banks/{created['id']}")).json()
        assert bank["name"] == "Town hall"
        assert bank["location"] == "Foyer"
        assert bank["presence"] == "unknown"
        assert bank["provisioned_at"] is None
        assert [c["door_state"] for c in bank["compartments"]] == ["unknown"] * 3
        events = (await svc.admin_get(f"/api/admin/locker-banks/{created['id']}/events")).json()
        assert [e["type"] for e in events] == ["LockerBankCreated", "ProvisioningTokenIssued"]
        assert "token_hash" in events[1]["data"]
        assert created["provisioning_token"] not in json.dumps(events)


async def test_bad_input_gets_clear_errors(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        cases = [
            {},
            {"name": "x", "compartments": []},
            {"name": "x", "compartments": [{"number": 0, "slave_id": 1, "address": 0}]},
            {
                "name": "x",
                "compartments": [
                    {"number": 1, "slave_id": 1, "address": 0},
                    {"number": 1, "slave_id": 1, "address": 1},
                ],
            },
            {
                "name": "x",
                "heartbeat_interval_seconds": 0,
                "compartments": [{"number": 1, "slave_id": 1, "address": 0}],
            },
            {"name": "x", "compartments": [{"number": "1", "slave_id": 1, "address": 0}]},
        ]
        for body in cases:
            response = await svc.admin_post("/api/admin/locker-banks", body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"] == "invalid_input"
            assert response.json()["message"]
        raw = await svc.http.post(
            "/api/admin/locker-banks",
            content=b"{not json",
            headers={**svc.admin_headers(), "Content-Type": "application/json"},
        )
        assert raw.status_code == 400
        assert (await svc.http.get("/api/admin/locker-banks")).status_code == 401
        bad = await svc.http.get(
            "/api/admin/locker-banks", headers={"Authorization": "Bearer nope"}
        )
        assert bad.status_code == 401
        assert (await svc.admin_get("/api/admin/locker-banks/not-a-uuid")).status_code == 404
        missing = await svc.admin_get(f"/api/admin/locker-banks/{UNKNOWN_BANK}")
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"
        assert (await svc.admin_get("/api/admin/locker-banks")).json() == []


async def test_heartbeat_brings_bank_online_and_health(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank(heartbeat_interval_seconds=1)
        health = await svc.http.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {
            "status": "ok",
            "mqtt": "connected",
            "store": "ok",
            "node": svc.context.settings.node_id,
            "banks": 1,  # the bank just created; its actor runs on this (only) node
        }
        publish(mosquitto, f"locker/{bank['id']}/state", heartbeat())

        async def online() -> bool:
            got = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}")).json()
            return bool(got["presence"] == "online" and got["last_seen"])

        await eventually(online)

        async def offline() -> bool:
            got = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}")).json()
            return bool(got["presence"] == "offline")

        await eventually(offline)  # 3 x 1 s without heartbeat
        events = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}/events")).json()
        presence = [
            e for e in events if e["type"] in ("LockerBankCameOnline", "LockerBankWentOffline")
        ]
        assert [e["type"] for e in presence] == ["LockerBankCameOnline", "LockerBankWentOffline"]
        assert presence[-1]["data"]["reason"] == "heartbeat_timeout"
        # the new bank came online without its configuration: sent by itself (contract §2)
        # to a device that never answered (nothing here answers commands)
        types = [e["type"] for e in events]
        assert types.index("ConfigApplyRequested") == types.index("LockerBankCameOnline") + 1
        metrics = (await svc.http.get("/metrics")).text
        assert 'lockerd_inbound_messages_total{kind="state",outcome="processed"} 1.0' in metrics


async def test_malformed_messages_are_dropped_and_counted(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        bad = [
            (f"locker/{bank['id']}/state", b"not json"),
            (f"locker/{bank['id']}/state", b'{"type":"state"}'),
            (f"locker/{bank['id']}/response", b'{"result":"maybe"}'),
            (
                f"locker/{bank['id']}/event",
                b'{"type":"event","event":"door_state_changed",'
                b'"data":{"compartment_number":1,"state":"ajar"}}',
            ),
            (f"locker/{UNKNOWN_BANK}/state", heartbeat()),
        ]
        for topic, payload in bad:
            publish(mosquitto, topic, payload)

        async def all_dropped() -> bool:
            text = (await svc.http.get("/metrics")).text
            total = 0.0
            for line in text.splitlines():
                counter = line.startswith("lockerd_inbound_messages_total{")
                if counter and 'outcome="dropped"' in line:
                    total += float(line.rsplit(" ", 1)[1])
            return total == len(bad)

        await eventually(all_dropped)
        events = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}/events")).json()
        assert len(events) == 2
        assert (await svc.http.get("/healthz")).status_code == 200


async def test_restart_keeps_banks_and_history(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    settings = test_settings(mosquitto.url, tmp_path / "l.db")
    async with lockerd(settings) as svc:
        bank = await svc.create_bank(name="Survivor")
        before = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}/events")).json()
    async with lockerd(settings) as svc:
        got = await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}")
        assert got.status_code == 200
        assert got.json()["name"] == "Survivor"
        after = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}/events")).json()
        assert after == before
    assert ADMIN_TOKEN


async def test_gateway_reconnects_after_broker_restart_and_still_routes(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank(heartbeat_interval_seconds=3600)
        mosquitto.restart()

        async def reconnected() -> bool:
            return (await svc.http.get("/healthz")).json()["mqtt"] == "connected"

        await eventually(reconnected, within=20.0)
        publish(mosquitto, f"locker/{bank['id']}/state", heartbeat())

        async def online() -> bool:
            got = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}")).json()
            return bool(got["presence"] == "online")

        await eventually(online)


async def test_healthz_degraded_while_broker_is_down(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        mosquitto.stop()

        async def degraded() -> bool:
            response = await svc.http.get("/healthz")
            return response.status_code == 503 and response.json() == {
                "status": "degraded",
                "mqtt": "disconnected",
                "store": "ok",
                "node": svc.context.settings.node_id,
                "banks": 0,
            }

        await eventually(degraded)
        mosquitto.start()

        async def healthy() -> bool:
            return (await svc.http.get("/healthz")).status_code == 200

        await eventually(healthy, within=20.0)


async def test_bank_actor_crash_is_restarted_and_state_rebuilt(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        registry = svc.context.registry
        store = svc.context.store
        original_append = store.append
        failures = 1

        async def failing_append(*args: object, **kwargs: object) -> object:
            nonlocal failures
            if failures:
                failures -= 1
                raise StoreUnavailable("disk on fire")  # the store is down: the actor crashes
            return await original_append(*args, **kwargs)  # type: ignore[arg-type]

        store.append = failing_append  # type: ignore[method-assign]
        rotate = f"/api/admin/locker-banks/{bank['id']}/provisioning-token"
        first = await svc.admin_post(rotate)
        assert first.status_code == 503  # the crash answered, not swallowed
        second = await svc.admin_post(rotate)
        assert second.status_code == 200
        entry = registry.entries[bank["id"]]
        assert entry.child is not None
        assert entry.child.restarts == 1
        assert svc.context.fleet.banks[bank["id"]].restarts == 1
        metrics = (await svc.http.get("/metrics")).text
        assert 'lockerd_actor_restarts_total{actor="bank"} 1.0' in metrics
        events = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}/events")).json()
        assert [e["type"] for e in events] == [
            "LockerBankCreated",
            "ProvisioningTokenIssued",
            "ProvisioningTokenIssued",
        ]


async def test_openapi_describes_the_routes(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        spec = (await svc.http.get("/openapi.json")).json()
        create = spec["paths"]["/api/admin/locker-banks"]["post"]
        assert "requestBody" in create
        assert "/healthz" in spec["paths"]


async def test_role_is_checked_before_the_body(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        no_token = await svc.http.post("/api/admin/locker-banks", json={"bad": 1})
        assert no_token.status_code == 401
        bad_token = await svc.http.post(
            "/api/admin/locker-banks", json={}, headers={"Authorization": "Bearer x"}
        )
        assert bad_token.status_code == 401


async def test_bank_loads_from_snapshot_plus_tail(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    settings = test_settings(mosquitto.url, tmp_path / "l.db")
    async with lockerd(settings) as svc:
        svc.context.registry.services.snapshot_every = 3
        bank = await svc.create_bank()
        rotate = f"/api/admin/locker-banks/{bank['id']}/provisioning-token"
        for _ in range(4):
            assert (await svc.admin_post(rotate)).status_code == 200
        store = svc.context.store

        async def snapshot_at_6() -> bool:
            # taken every 3 events: at versions 3 and 6; the actor answers before it saves one
            snapshot = await store.load_snapshot(bank["id"])
            return snapshot is not None and snapshot.version == 6

        await eventually(snapshot_at_6, within=10.0)
    async with lockerd(settings) as svc:
        # the actor rebuilds from snapshot + tail and appends at the right version
        assert (await svc.admin_post(rotate)).status_code == 200
        events = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}/events")).json()
        assert len(events) == 7
        assert svc.context.registry.entries[bank["id"]].child.restarts == 0  # type: ignore[union-attr]


async def test_metrics_endpoint_is_prometheus_exposition(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        await svc.create_bank()
        response = await svc.http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        inbound = families["lockerd_inbound_messages"]
        labels = {
            (s.labels["kind"], s.labels["outcome"])
            for s in inbound.samples
            if s.name == "lockerd_inbound_messages_total"
        }
        assert labels == {
            (kind, outcome)
            for kind in ("register", "state", "response", "event", "metric", "unknown")
            for outcome in ("processed", "dropped")
        }
        for name in (
            "lockerd_dropped_messages",
            "lockerd_actor_restarts",
            "lockerd_mailbox_depth_total",
            "lockerd_command_outcomes",
            "lockerd_goauth_checks",
            "lockerd_store_append_seconds",
            "lockerd_outbound_messages",
            "lockerd_mqtt_connected",
        ):
            assert name in families, name
        append = families["lockerd_store_append_seconds"]
        count = next(s for s in append.samples if s.name.endswith("_count"))
        assert count.value >= 1  # the bank's creation was timed


async def test_gateway_survives_a_routing_bug(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        poisoned = await svc.create_bank()
        healthy = await svc.create_bank()
        registry = svc.context.registry
        original_tell = registry.tell

        async def buggy_tell(bank_id: str, *args: object, **kwargs: object) -> None:
            if bank_id == poisoned["id"]:
                raise RuntimeError("bug in routing")
            await original_tell(bank_id, *args, **kwargs)  # type: ignore[arg-type]

        registry.tell = buggy_tell  # type: ignore[method-assign]
        publish(mosquitto, f"locker/{poisoned['id']}/state", heartbeat())
        publish(mosquitto, f"locker/{healthy['id']}/state", heartbeat())

        async def healthy_online() -> bool:
            got = (await svc.admin_get(f"/api/admin/locker-banks/{healthy['id']}")).json()
            return bool(got["presence"] == "online")

        await eventually(healthy_online)
        gateway = svc.context.gateway
        assert svc.context.metrics.dropped.labels("state", "internal_error")._value.get() == 1
        assert gateway.mqtt.connected
