"""Reboot detection survives QoS 1 redelivery order (issue 13, finding 5).

A heartbeat in flight (unacknowledged) when the device's connection died is sent again with
the DUP flag once it has reconnected, by clients such as ESP-IDF's esp-mqtt after the first
heartbeat of the new connection. lockerd then sees an older uptime after a newer one, from the
previous connection's session: no reboot. A real reboot (new session, lower uptime, a later
device clock) is still one. The device here speaks MQTT byte for byte (tests.broker._stack.
RawMqtt) with a persistent session, through the deployment's broker configuration.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import trio

from tests.broker._stack import (
    Broker,
    RawMqtt,
    heartbeat_payload,
    lockerd_at,
    provision,
)
from tests.support.users import App


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def will(session: str) -> bytes:
    return json.dumps(
        {
            "type": "state",
            "state": "connection_lost",
            "status": "offline",
            "timestamp": iso(datetime.now(UTC)),
            "reason": "mqtt_last_will",
            "session_id": session,
        }
    ).encode()


async def until_state_handled(app: App, count: int) -> None:
    await app.until_inbound("state", count)


async def test_a_redelivered_heartbeat_of_the_previous_connection_is_no_reboot(
    broker: Broker, tmp_path: Path
) -> None:
    async with lockerd_at(broker, tmp_path / "l.db") as app:
        bank = await app.create_bank(heartbeat_interval_seconds=3600)
        bank_id = bank["id"]
        creds = await provision(broker, bank["provisioning_token"], "box-1")
        topic = f"locker/{bank_id}/state"
        t0 = datetime.now(UTC) - timedelta(seconds=60)

        # blocking socket calls run in a thread: the broker asks lockerd (this Trio loop)
        # before it answers them
        async def connect(session: str) -> RawMqtt:
            conn = RawMqtt(broker.goauth.host, broker.goauth.port)
            code, _ = await trio.to_thread.run_sync(
                partial(
                    conn.connect,
                    creds.client_id,
                    creds.mqtt_user,
                    creds.mqtt_password,
                    clean=False,
                    will=(topic, will(session)),
                )
            )
            assert code == 0
            return conn

        async def beat(
            conn: RawMqtt, uptime: int, session: str, at: float, packet_id: int, dup: bool = False
        ) -> None:
            payload = heartbeat_payload(uptime, session, iso(t0 + timedelta(seconds=at)))
            await trio.to_thread.run_sync(
                partial(conn.publish, topic, payload, packet_id=packet_id, dup=dup)
            )

        first = await connect("s-1")
        await beat(first, 90, "s-1", 0, packet_id=1)
        await app.until_presence(bank_id, "online")
        # the next heartbeat (uptime 100) was written into a connection that then died:
        # never acknowledged, so the device keeps it for a retransmission
        first.abort()
        await app.until_presence(bank_id, "offline")  # the broker sent s-1's will

        second = await connect("s-2")  # the same client id, its persistent session
        await beat(second, 130, "s-2", 40, packet_id=1)
        # ... and now the retransmission of the one in flight, from the earlier connection
        await beat(second, 100, "s-1", 10, packet_id=2, dup=True)
        await until_state_handled(app, 4)  # 3 heartbeats and a will
        assert await app.events(bank_id, "DeviceRebooted") == []
        assert app.context.fleet.banks[bank_id].presence == "online"

        # the latest heartbeat is still s-2's: its will takes the bank offline (a will of the
        # session the redelivered heartbeat named would be ignored)
        second.abort()
        await app.until_presence(bank_id, "offline")

        # a real reboot: new connection, uptime from zero, the device's clock moved on
        third = await connect("s-3")
        await beat(third, 3, "s-3", 90, packet_id=3)
        await app.until_presence(bank_id, "online")
        rebooted = await app.events(bank_id, "DeviceRebooted")
        assert [
            (e["data"]["previous_uptime_seconds"], e["data"]["uptime_seconds"]) for e in rebooted
        ] == [(130, 3)]
        third.abort()
