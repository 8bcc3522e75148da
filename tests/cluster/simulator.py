"""A lean simulator of many locker banks on one MQTT connection, for the cluster tests.

One :class:`BankSet` plays every bank of a test: heartbeats for all of them at a fixed
interval and at once when ``server/status`` says online, an answer to every command
(``success``; ``apply_config`` with the hash it computes itself), and a log of every command
received by transaction id, so a test can check that no command was ever published twice,
whichever node published it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import trio

from gateway.mqtt import InboundMessage, MqttClient, MqttSettings, running
from lockerd.device.protocol import config_hash


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BankSet:
    def __init__(self, host: str, port: int, bank_ids: Sequence[str], *, interval: float) -> None:
        self.bank_ids = list(bank_ids)
        self.interval = interval
        self.client = MqttClient(
            MqttSettings(host=host, port=port, client_id="cluster-bank-set", clean_session=True)
        )
        #: transaction id -> how many times its command arrived
        self.received: Counter[str] = Counter()
        self.answered = 0
        self._heartbeats_sent = 0
        self._boot = trio.current_time()
        self.beating = True
        #: every ``server/status`` payload seen, in order (retained replay first)
        self.server_status: list[str] = []
        self.server_status_changed = trio.Event()

    @property
    def duplicates(self) -> list[str]:
        return [tx for tx, count in self.received.items() if count > 1]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with running(self.client), trio.open_nursery() as nursery:
            await self.client.subscribe([("locker/+/command", 1), ("server/status", 1)])
            nursery.start_soon(self._answer_commands)
            task_status.started()
            await self._heartbeat_forever()

    async def beat_all(self) -> None:
        uptime = int(trio.current_time() - self._boot)
        payload = json.dumps(
            {
                "type": "state",
                "state": "heartbeat",
                "data": {"timestamp": _now(), "uptime_seconds": uptime},
            }
        ).encode()
        async with trio.open_nursery() as nursery:
            for bank_id in self.bank_ids:
                nursery.start_soon(self.client.publish, f"locker/{bank_id}/state", payload, 1)
        self._heartbeats_sent += len(self.bank_ids)

    async def _heartbeat_forever(self) -> None:
        while True:
            if self.beating:
                await self.beat_all()
            await trio.sleep(self.interval)

    async def _answer_commands(self) -> None:
        async with trio.open_nursery() as nursery:
            async for message in self.client.messages():
                nursery.start_soon(self._answer, message)

    async def _answer(self, message: InboundMessage) -> None:
        if message.topic == "server/status":
            status = json.loads(message.payload)["status"]
            self.server_status.append(status)
            self.server_status_changed.set()
            self.server_status_changed = trio.Event()
            if status == "online" and self.beating:
                await self.beat_all()  # as firmware does (docs/firmware.md §5)
            return
        bank_id = message.topic.split("/")[1]
        command = json.loads(message.payload)
        transaction_id = command["transaction_id"]
        self.received[transaction_id] += 1
        if self.received[transaction_id] > 1:
            return  # a real device answers a duplicate from its journal; counting is enough
        answer: dict[str, object] = {
            "type": "command_response",
            "action": command["action"],
            "result": "success",
            "transaction_id": transaction_id,
            "timestamp": _now(),
        }
        if command["action"] == "apply_config":
            data = command["data"]
            answer["applied_config_hash"] = config_hash(
                data["compartments"], data["heartbeat_interval_seconds"]
            )
        await self.client.publish(f"locker/{bank_id}/response", json.dumps(answer).encode(), qos=1)
        self.answered += 1
