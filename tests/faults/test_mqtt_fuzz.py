"""Hypothesis-generated MQTT traffic of every topic family, through a real broker into lockerd.

A bounded run of :func:`tests.faults.fuzzing.run_mqtt_fuzz` (``bench/faults.py`` runs it long):
malformed messages of every family change nothing and are each counted once; no actor crashes.
Issue 14 findings 1, 4, 6 and 7.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.mqtt import open_mqtt_client
from tests.faults.conftest import settings_for
from tests.faults.fuzzing import MQTT_BATCHES, WAIT, inbound, run_mqtt_fuzz, setup
from tests.support.device import client_settings, now_iso
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import RunningLockerd, eventually, lockerd


@pytest.fixture
async def fuzz_svc(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> AsyncIterator[RunningLockerd]:
    # commands and presence must not time out during the run: that would be a state change
    settings = settings_for(mosquitto, tmp_path, backend, LOCKERD_COMMAND_TIMEOUT="3600")
    async with lockerd(settings) as running:
        yield running


async def test_malformed_mqtt_changes_nothing_and_every_message_is_counted_once(
    fuzz_svc: RunningLockerd, mosquitto: MosquittoBroker
) -> None:
    report = await run_mqtt_fuzz(fuzz_svc, mosquitto.url)
    print(f"mqtt fuzz: {report}")
    assert report.batches == MQTT_BATCHES
    assert report.malformed_sent >= MQTT_BATCHES
    assert len(report.by_mutation) >= 5, report.by_mutation


async def test_nul_in_a_device_answer_never_fails_the_bank(
    fuzz_svc: RunningLockerd, mosquitto: MosquittoBroker
) -> None:
    """Issue 14 finding 1 (PostgreSQL): five answers with a NUL in ``message`` made the bank
    ``failed``; its opens got 503 and its pending transactions never timed out."""
    svc = fuzz_svc
    settings = client_settings(mosquitto.url, f"fuzzer-{uuid.uuid4().hex[:8]}")
    async with open_mqtt_client(settings) as client:
        target = await setup(svc, client)
        topic = f"locker/{target.bank_id}/response"
        answer = {
            "type": "command_response",
            "action": "open_compartment",
            "result": "success",
            "transaction_id": target.transaction_id,
            "timestamp": now_iso(),
        }
        dropped_before = inbound(svc).get(("response", "dropped"), 0)
        for _ in range(10):
            bad = {**answer, "message": "door\u0000ok"}
            await client.publish(topic, json.dumps(bad).encode(), qos=1)

        async def all_dropped() -> bool:
            return inbound(svc).get(("response", "dropped"), 0) - dropped_before >= 10

        await eventually(all_dropped, within=WAIT)
        status = svc.context.fleet.banks[target.bank_id]
        assert (status.restarts, status.supervision, status.presence) == (0, "running", "online")
        await client.publish(topic, json.dumps({**answer, "message": "door ok"}).encode(), qos=1)

        async def answered() -> bool:
            tx = (await svc.admin_get(f"/api/transactions/{target.transaction_id}")).json()
            return bool(tx["status"] == "success")

        await eventually(answered, within=WAIT)
