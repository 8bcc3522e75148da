"""Retained state messages are not liveness (contract §2; issue 13, finding 5).

The broker replays the last retained message of ``locker/{bank}/state`` whenever lockerd
subscribes again, e.g. after a restart. That says nothing about the device now: the bank stays
``unknown`` until a live heartbeat, also when the device has been silent for much longer than
three heartbeat intervals.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.broker._push import until_configured
from tests.broker._stack import Broker, LockerdRun, lockerd_at, provision
from tests.support.device import Credentials, device
from tests.support.users import App


def retained_drops(app: App) -> float:
    value = app.context.metrics.registry.get_sample_value(
        "lockerd_dropped_messages_total", {"kind": "state", "reason": "retained"}
    )
    return value or 0.0


async def until_retained_drops(app: App, count: int) -> None:
    async def check() -> bool:
        return retained_drops(app) >= count

    await app.wait_until(check, what=f"{count} retained heartbeat(s) dropped")


async def provisioned_bank(app: App, broker: Broker, interval: int) -> tuple[str, Credentials]:
    bank = await app.create_bank(heartbeat_interval_seconds=interval)
    return bank["id"], await provision(broker, bank["provisioning_token"], f"box-{bank['id'][:8]}")


async def test_a_retained_heartbeat_after_long_silence_does_not_bring_the_bank_online(
    broker: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "l.db"
    async with lockerd_at(broker, db) as app:
        bank_id, creds = await provisioned_bank(app, broker, interval=1)
        async with device(
            broker.url,
            bank_id,
            client_id=creds.client_id,
            username=creds.mqtt_user,
            password=creds.mqtt_password,
            last_will=False,  # the device dies silently: no will, only silence
        ) as dev:
            await dev.heartbeat(retain=True)
            await app.until_presence(bank_id, "online")
        # three intervals (3 s here; 6 minutes stand for it in production) without a heartbeat
        await app.until_presence(bank_id, "offline")

    async with lockerd_at(broker, db) as app:
        # lockerd subscribed again: the broker replayed the retained heartbeat to it
        await until_retained_drops(app, 1)
        assert app.context.fleet.banks[bank_id].presence == "unknown"
        assert app.inbound("state", "processed") == 0
        history = await app.events(bank_id, "LockerBankCameOnline")
        assert len(history) == 1  # only the live heartbeat of the first run


async def test_after_a_restart_the_bank_is_unknown_until_the_next_live_heartbeat(
    broker: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "l.db"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            first = await LockerdRun.start(broker, db, nursery)
            bank_id, creds = await provisioned_bank(first.app, broker, interval=3600)
            async with device(
                broker.url,
                bank_id,
                client_id=creds.client_id,
                username=creds.mqtt_user,
                password=creds.mqtt_password,
            ) as dev:
                await dev.heartbeat(retain=True)
                await first.app.until_presence(bank_id, "online")
                # the new bank's apply_config answered before lockerd stops, not left in flight
                await until_configured(first.app, bank_id)
                await first.stop()
                # the device beats while lockerd is down: the broker allows it from its cache
                # and queues it for lockerd's persistent session
                await dev.heartbeat(retain=True)

                second = await LockerdRun.start(broker, db, nursery)
                # the queued live heartbeat counts; the replay of the retained copy does not
                await until_retained_drops(second.app, 1)
                await second.app.until_presence(bank_id, "online")
                assert second.app.inbound("state", "processed") == 1
                await second.stop()

                third = await LockerdRun.start(broker, db, nursery)  # the device is silent
                await until_retained_drops(third.app, 1)
                assert third.app.context.fleet.banks[bank_id].presence == "unknown"
                assert third.app.inbound("state", "processed") == 0
                await dev.heartbeat(retain=True)  # as a device answers server/status online
                await third.app.until_presence(bank_id, "online")
                await third.stop()
