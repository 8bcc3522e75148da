"""A burst from one device reaches lockerd completely (contract §6; issue 13, finding 4).

Through the deployment's broker configuration (go-auth's cache on, the queue limits of
docker/mosquitto/), 5,000 heartbeats written at once by one device are all handled by lockerd:
``lockerd_inbound_messages_total`` (processed + dropped) reaches 5,000, and the broker drops
nothing. lockerd acknowledges each only after its bank actor handled it (manual PUBACK), so
the broker holds the backlog. The full 20,000 run is ``bench/broker_bench.py``.
"""

from __future__ import annotations

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
    publish_blob,
    send_burst,
)

BURST = 5_000


async def test_a_burst_from_one_device_reaches_lockerd_completely(
    broker: Broker, tmp_path: Path
) -> None:
    async with lockerd_at(broker, tmp_path / "l.db") as app:
        bank = await app.create_bank(heartbeat_interval_seconds=3600)
        creds = await provision(broker, bank["provisioning_token"], "box-1")
        topic = f"locker/{bank['id']}/state"
        start = datetime.now(UTC) - timedelta(seconds=BURST)
        messages = [
            (
                topic,
                heartbeat_payload(
                    n, "s-1", (start + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
                ),
            )
            for n in range(1, BURST + 1)
        ]
        blob = publish_blob(messages)
        conn = RawMqtt(broker.goauth.host, broker.goauth.port)
        code, _ = await trio.to_thread.run_sync(
            partial(conn.connect, "box-1", creds.mqtt_user, creds.mqtt_password, clean=True)
        )
        assert code == 0
        await trio.to_thread.run_sync(send_burst, conn, blob, BURST)
        with trio.fail_after(120):
            await app.until_inbound("state", BURST)
        assert app.inbound("state", "processed") == BURST
        assert app.inbound("state", "dropped") == 0
        conn.abort()
    assert "dropped" not in broker.goauth.log_text()
    # one device, one topic: go-auth asked lockerd once, then answered from its cache
    assert len(broker.requests(check="acl", username=creds.mqtt_user, acc=2)) == 1
