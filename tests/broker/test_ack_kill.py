"""A device answer the broker delivered survives a crash of lockerd (contract §2; issue 13,
finding 6).

lockerd acknowledges (PUBACK) a device message only after its bank actor has stored what it
means. Killed (kill -9) with an answer delivered but not applied, lockerd has not acknowledged
it: the broker delivers it again to lockerd's persistent session on the next connection, and
the transaction ends ``success``, recorded once, never ``timeout``. The crash is produced on
purpose (tests/broker/blocking_lockerd.py holds the append of one answer), over several
restarts with several opens in flight each time.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.broker._stack import Broker, provision, serve_env, wait_healthy
from tests.support.device import device
from tests.support.service import ADMIN_TOKEN, eventually

CHILD = Path(__file__).with_name("blocking_lockerd.py")
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
RESTARTS = 5
COMPARTMENTS = 4  # opens in flight per round


class Child:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def marker(self, name: str) -> None:
        """Wait for the line ``name`` on stdout (lockerd's own log lines go there too)."""
        assert self.process.stdout is not None
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.strip() == name.encode():
                    return
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise AssertionError(f"lockerd exited before {name}")
            self._buffer += chunk

    async def arm(self, nth_answer: int) -> None:
        """Hold the append of the ``nth_answer``-th answer from now on."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(f"ARM {nth_answer}\n".encode())

    async def kill(self) -> None:
        self.process.kill()  # SIGKILL: nothing runs on the way out
        await self.process.wait()


@asynccontextmanager
async def children(broker: Broker, db: Path) -> AsyncIterator[Any]:
    """Start lockerd children one after the other (``await start(block_answer)``); whatever
    still runs at the end is killed."""
    started: list[Child] = []

    async def start() -> Child:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(CHILD)],
            env=serve_env(broker, db),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        running = Child(process)
        started.append(running)
        with trio.fail_after(30):
            await running.marker("READY")
        await wait_healthy(f"http://127.0.0.1:{broker.http_port}")
        return running

    try:
        yield start
    finally:
        for running in started:
            if running.process.returncode is None:
                running.process.kill()
            await running.process.wait()


async def presence(http: httpx.AsyncClient, bank_id: str) -> str:
    response = await http.get(f"/api/admin/locker-banks/{bank_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    value: str = response.json()["presence"]
    return value


async def test_answers_delivered_to_a_killed_lockerd_are_applied_after_it_restarts(
    broker: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "l.db"
    base = f"http://127.0.0.1:{broker.http_port}"
    transactions: list[str] = []
    with trio.fail_after(240):
        async with (
            children(broker, db) as start,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
        ):
            running = await start()
            created = await http.post(
                "/api/admin/locker-banks",
                headers=ADMIN,
                json={
                    "name": "crash bank",
                    "heartbeat_interval_seconds": 3600,
                    "compartments": [
                        {"number": n, "slave_id": 1, "address": n}
                        for n in range(1, COMPARTMENTS + 1)
                    ],
                },
            )
            assert created.status_code == 201, created.text
            bank: dict[str, Any] = created.json()
            bank_id = bank["id"]
            creds = await provision(broker, bank["provisioning_token"], "box-1")
            user = {"email": "crash@example.org", "password": "correct horse battery"}
            made = await http.post(
                "/api/admin/users", headers=ADMIN, json={**user, "name": "U", "role": "user"}
            )
            assert made.status_code == 201, made.text
            for compartment in bank["compartments"]:
                granted = await http.post(
                    f"/api/admin/compartments/{compartment['id']}/grants",
                    headers=ADMIN,
                    json={"user_id": made.json()["id"]},
                )
                assert granted.status_code == 201, granted.text
            token = (await http.post("/api/login", json=user)).json()["token"]
            as_user = {"Authorization": f"Bearer {token}"}

            # the device logs in while lockerd answers the broker, then stays connected
            async with device(
                broker.url,
                bank_id,
                client_id="box-1",
                username=creds.mqtt_user,
                password=creds.mqtt_password,
                session_id="s-1",
                clean_session=False,
            ) as box:
                box.answers["open_compartment"] = None  # answered by hand below
                await running.kill()
                for round_ in range(RESTARTS):
                    running = await start()
                    # what the broker kept for lockerd's session comes first, then this
                    await box.heartbeat(retain=False)

                    async def online() -> bool:
                        return await presence(http, bank_id) == "online"

                    await eventually(online, within=20)
                    opened_now = []
                    for compartment in bank["compartments"]:
                        response = await http.post(
                            f"/api/compartments/{compartment['id']}/open", headers=as_user
                        )
                        assert response.status_code == 202, response.text
                        opened_now.append(response.json()["transaction_id"])
                    transactions.extend(opened_now)
                    # hold the 1st, 2nd, ... answer of this round: those before it are
                    # applied and acknowledged, it and those after are not
                    await running.arm(round_ % COMPARTMENTS + 1)
                    answered: set[str] = set()
                    while answered != set(opened_now):
                        command = await box.next_command("open_compartment", within=20)
                        if command["transaction_id"] in opened_now:
                            answered.add(command["transaction_id"])
                            await box.respond(command)
                    with trio.fail_after(30):
                        await running.marker("BLOCKED")
                    await running.kill()  # kill -9 between delivery and apply

                # one more start: it gets what the broker kept for its session
                await start()

                async def all_finished() -> bool:
                    for transaction in transactions:
                        response = await http.get(f"/api/transactions/{transaction}", headers=ADMIN)
                        if response.json()["status"] == "pending":
                            return False
                    return True

                await eventually(all_finished, within=60)
                statuses = [
                    (await http.get(f"/api/transactions/{t}", headers=ADMIN)).json()
                    for t in transactions
                ]
                history = (
                    await http.get(f"/api/admin/locker-banks/{bank_id}/events", headers=ADMIN)
                ).json()
    assert len(transactions) == RESTARTS * COMPARTMENTS
    assert [s["status"] for s in statuses] == ["success"] * len(transactions)
    opened = [e["data"]["transaction_id"] for e in history if e["type"] == "CompartmentOpened"]
    assert sorted(opened) == sorted(transactions)  # each applied exactly once
    assert not [e for e in history if e["type"] in ("CommandTimedOut", "LateAnswerReceived")]
    # the device did get every command (possibly twice: an unrecorded dispatch is resent)
    opens = {c["transaction_id"] for c in box.commands if c["action"] == "open_compartment"}
    assert opens == set(transactions)
    # and the new bank's configuration (contract §2), applied once, never sent again
    (push,) = [e["data"]["transaction_id"] for e in history if e["type"] == "ConfigApplyRequested"]
    applied = [e["data"]["transaction_id"] for e in history if e["type"] == "ConfigApplied"]
    assert applied == [push]
    assert {c["transaction_id"] for c in box.commands if c["action"] != "open_compartment"} == {
        push
    }
