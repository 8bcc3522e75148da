"""Provisioning, ACL and presence through the deployment's broker configuration.

Mosquitto runs the configuration docker/mosquitto/ generates (go-auth's files backend for
lockerd's own user, then the HTTP backend, cache on, no superuser requests), with our go-auth
plugin in go-auth's place. Every check a device makes is decided by lockerd over HTTP; lockerd's
own user never costs a request.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.mqtt import ConnectionRefusedByBroker, MqttError, open_mqtt_client
from tests.broker._stack import (
    PROVISIONING_PASSWORD,
    PROVISIONING_USER,
    Broker,
    heartbeat_payload,
    lockerd_at,
    provision,
)
from tests.support.device import client_settings, device
from tests.support.goauth import registrar
from tests.support.service import BACKEND_PASSWORD, BACKEND_USER


async def test_a_device_provisions_reports_and_is_confined_to_its_bank(
    broker: Broker, tmp_path: Path
) -> None:
    async with lockerd_at(broker, tmp_path / "l.db") as app:
        bank = await app.create_bank()
        other = await app.create_bank()
        bank_id = bank["id"]
        creds = await provision(broker, bank["provisioning_token"], "box-1")
        assert creds.locker_bank_id == bank_id

        # the shared provisioning login cannot read another device's reply
        async with registrar(
            broker.url, "box-2", username=PROVISIONING_USER, password=PROVISIONING_PASSWORD
        ) as second:
            with pytest.raises(MqttError, match="refused subscription"):
                await second.client.subscribe([("locker/provisioning/reply/box-1", 1)])

        async with device(
            broker.url,
            bank_id,
            client_id="box-1",
            username=creds.mqtt_user,
            password=creds.mqtt_password,
            session_id="s-1",
        ) as dev:
            for forbidden in (f"locker/{other['id']}/command", "locker/+/command", "#"):
                with pytest.raises(MqttError, match="refused subscription"):
                    await dev.client.subscribe([(forbidden, 1)])
            # a publish to another bank is dropped by the broker (PUBACKed under 3.1.1)
            await dev.client.publish(f"locker/{other['id']}/state", heartbeat_payload(1), qos=1)
            await dev.heartbeat(retain=False)
            await app.until_presence(bank_id, "online")
            await app.until_inbound("state", 1)
            assert app.inbound("state", "processed") + app.inbound("state", "dropped") == 1
            assert app.context.fleet.banks[other["id"]].presence == "unknown"

        for username, password in (
            (creds.mqtt_user, creds.mqtt_password + "x"),
            ("stranger", "whatever"),
            (PROVISIONING_USER, "wrong"),
        ):
            settings = client_settings(broker.url, "intruder", username=username, password=password)
            with pytest.raises(ConnectionRefusedByBroker) as refused:
                async with open_mqtt_client(settings, reconnect=False):
                    pass
            assert refused.value.code == 5

    # lockerd's own login, subscriptions, publishes and deliveries never asked lockerd
    assert broker.requests(username=BACKEND_USER) == []
    assert broker.log_entries(event="files", username=BACKEND_USER)
    # and no check cost a /superuser round trip
    assert broker.requests(check="superuser") == []
    # the device's repeated checks came from the cache
    device_acl = broker.requests(check="acl", username=creds.mqtt_user)
    assert len(device_acl) == len({(e["topic"], e["acc"]) for e in device_acl})


async def test_a_wrong_backend_password_is_refused_by_the_files_and_by_lockerd(
    broker: Broker, tmp_path: Path
) -> None:
    async with lockerd_at(broker, tmp_path / "l.db"):
        settings = client_settings(
            broker.url, "fake-lockerd", username=BACKEND_USER, password=BACKEND_PASSWORD + "x"
        )
        with pytest.raises(ConnectionRefusedByBroker):
            async with open_mqtt_client(settings, reconnect=False):
                pass
    # go-auth asks the next backend when the files say no; lockerd says no as well
    assert [e["outcome"] for e in broker.requests(check="user", username=BACKEND_USER)] == ["deny"]
