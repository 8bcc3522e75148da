"""Failed banks, refused creations and unstorable input, end to end on both stores.

Issue 14 finding 1: a bank past its restart budget answered every open with 503 and its pending
transactions never timed out until lockerd restarted. Finding 10: a refused bank creation left
a phantom bank in the live view and the websocket snapshot. Contract §5: pending commands of a
failed bank still time out on time; ``BankRegistry.restart`` starts it again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
from trio_websocket import open_websocket_url

from domain import commands as c
from store.base import NewEvent, StoredEvent, StoreUnavailable
from tests.faults.conftest import settings_for
from tests.support.device import Answer, TestDevice, device
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import ADMIN_TOKEN, RunningLockerd, eventually, lockerd

TIMEOUT = 3  # LOCKERD_COMMAND_TIMEOUT of these tests
WAIT = 30.0


@pytest.fixture
async def short_timeout_svc(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> AsyncIterator[RunningLockerd]:
    settings = settings_for(mosquitto, tmp_path, backend, LOCKERD_COMMAND_TIMEOUT=str(TIMEOUT))
    async with lockerd(settings) as running:
        yield running


async def user_token(svc: RunningLockerd, compartment_id: str) -> str:
    email = f"{uuid.uuid4().hex[:8]}@x.org"
    user = await svc.admin_post(
        "/api/admin/users", {"email": email, "password": "long-password", "name": "U"}
    )
    granted = await svc.admin_post(
        f"/api/admin/compartments/{compartment_id}/grants", {"user_id": user.json()["id"]}
    )
    assert granted.status_code == 201
    login = await svc.http.post("/api/login", json={"email": email, "password": "long-password"})
    token: str = login.json()["token"]
    return token


async def online(svc: RunningLockerd, dev: TestDevice) -> None:
    """The bank online, its configuration applied: a new bank's first heartbeat brings an
    ``apply_config`` (contract §2), which the device answers; settled before the test goes on,
    so that its answer does not meet the broken store."""
    await dev.heartbeat(retain=False)

    async def is_online() -> bool:
        view = (await svc.admin_get(f"/api/admin/locker-banks/{dev.bank_id}")).json()
        configured = view["applied_config_hash"] == view["config_hash"]
        return bool(view["presence"] == "online" and configured)

    await eventually(is_online, within=WAIT)


class BrokenAppends:
    """Makes appends to one stream fail as a store that is down does, until ``healed``."""

    def __init__(self, svc: RunningLockerd, bank_id: str) -> None:
        self.store = svc.context.store
        self.original = self.store.append
        self.bank_id = bank_id
        self.failures = 0

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[StoredEvent]:
        if stream_id == self.bank_id:
            self.failures += 1
            raise StoreUnavailable("connection to server at 10.1.2.3 lost: secret detail")
        return await self.original(stream_id, expected_version, events)

    def __enter__(self) -> BrokenAppends:
        self.store.append = self.append  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.append = self.original  # type: ignore[method-assign]


async def test_a_failed_banks_commands_time_out_on_time_and_it_can_be_restarted(
    short_timeout_svc: RunningLockerd, mosquitto: MosquittoBroker
) -> None:
    svc = short_timeout_svc
    bank = await svc.create_bank(heartbeat_interval_seconds=3600)
    compartment = bank["compartments"][0]["id"]
    token = await user_token(svc, compartment)
    user = {"Authorization": f"Bearer {token}"}
    registry = svc.context.registry
    async with device(mosquitto.url, bank["id"]) as dev:
        dev.answers["open_compartment"] = None  # the device never answers
        await online(svc, dev)
        opened = await svc.http.post(f"/api/compartments/{compartment}/open", headers=user)
        assert opened.status_code == 202, opened.text
        tx = opened.json()["transaction_id"]
        opened_at = trio.current_time()
        await dev.next_command("open_compartment", within=WAIT)

        rotate = f"/api/admin/locker-banks/{bank['id']}/provisioning-token"
        with BrokenAppends(svc, bank["id"]):
            while not registry.is_failed(bank["id"]):
                crashed = await svc.admin_post(rotate)
                assert crashed.status_code == 503
                assert "secret detail" not in crashed.text and "10.1.2.3" not in crashed.text
            refused = await svc.http.post(f"/api/compartments/{compartment}/open", headers=user)
        body = refused.json()
        assert refused.status_code == 503, body
        assert "out of service" in body["message"] and "restart" in body["message"]
        assert "secret detail" not in body["message"]
        status = svc.context.fleet.banks[bank["id"]]
        assert status.supervision == "failed"
        assert "StoreUnavailable" in (status.last_error or "")  # the operator sees why

        # the pending open still ends "timeout", on time, although the bank has failed
        async def timed_out() -> bool:
            view = (await svc.http.get(f"/api/transactions/{tx}", headers=user)).json()
            return bool(view["status"] == "timeout")

        await eventually(timed_out, within=WAIT)
        assert trio.current_time() - opened_at < TIMEOUT + 5
        assert svc.context.fleet.banks[bank["id"]].pending_commands == 0
        snapshot = json.dumps(svc.context.fleet.snapshot())
        assert '"supervision": "failed"' in snapshot and "StoreUnavailable" in snapshot

        # an operator starts it again (POST …/restart), with a fresh budget: it works as
        # before, and the restart is recorded with its actor
        restart = f"/api/admin/locker-banks/{bank['id']}/restart"
        restarted = await svc.admin_post(restart)
        assert restarted.status_code == 202, restarted.text
        assert restarted.json() == {"id": bank["id"], "restarted": True}
        assert not registry.is_failed(bank["id"])
        again_restart = await svc.admin_post(restart)  # running: nothing to restart
        assert again_restart.status_code == 409, again_restart.text
        assert again_restart.json()["error"] == "not_failed"
        history = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}/events")).json()
        recorded = [ev for ev in history if ev["type"] == "BankActorRestarted"]
        assert [ev["data"]["actor"] for ev in recorded] == [{"kind": "admin_token"}]
        await online(svc, dev)
        dev.answers["open_compartment"] = Answer()
        again = await svc.http.post(f"/api/compartments/{compartment}/open", headers=user)
        assert again.status_code == 202, again.text
        assert svc.context.fleet.banks[bank["id"]].supervision == "running"


async def test_a_refused_bank_creation_leaves_no_phantom_bank(
    svc: RunningLockerd,
) -> None:
    existing = await svc.create_bank()
    url = f"{svc.base_url.replace('http', 'ws', 1)}/ws/status?token={quote(ADMIN_TOKEN)}"
    duplicate_numbers = {
        "name": "Twice the same number",
        "compartments": [
            {"number": 1, "slave_id": 1, "address": 0},
            {"number": 1, "slave_id": 1, "address": 1},
        ],
    }
    for _ in range(3):
        refused = await svc.admin_post("/api/admin/locker-banks", duplicate_numbers)
        assert refused.status_code == 400, refused.text
    listed = (await svc.admin_get("/api/admin/locker-banks")).json()
    assert [bank["id"] for bank in listed] == [existing["id"]]
    assert set(svc.context.fleet.banks) == {existing["id"]}
    assert set(svc.context.registry.entries) <= {existing["id"]}
    async with open_websocket_url(url) as ws:
        snapshot: dict[str, Any] = json.loads(await ws.get_message())
    assert snapshot["type"] == "snapshot"
    assert [bank["id"] for bank in snapshot["banks"]] == [existing["id"]]


async def test_input_the_store_cannot_hold_never_crashes_the_bank(svc: RunningLockerd) -> None:
    """Past the boundary (which refuses such values first), a value the store refuses drops its
    message alone: a NUL in an answer (PostgreSQL text cannot hold it; SQLite stores it) and a
    value no JSON holds (refused by both)."""
    bank = await svc.create_bank()
    registry = svc.context.registry
    for _ in range(10):
        outcome = await registry.ask(
            bank["id"],
            c.RecordDeviceEvent(event="custom", event_id=None, data={"x": object()}),
            kind="event",
        )
        assert outcome.rejected is not None and outcome.rejected.code == "invalid"
    nul = await registry.ask(
        bank["id"],
        c.RecordDeviceEvent(event="custom", event_id=None, data={"note": "a\x00b"}),
        kind="event",
    )
    if nul.rejected is None:  # SQLite holds NUL: the event is stored
        assert [type(ev).__name__ for ev in nul.events] == ["DeviceEventRecorded"]
    else:
        assert nul.rejected.code == "invalid"
    status = svc.context.fleet.banks[bank["id"]]
    assert (status.restarts, status.supervision) == (0, "running")
    dropped = svc.context.metrics.registry.get_sample_value(
        "lockerd_dropped_messages_total", {"kind": "event", "reason": "store_rejected"}
    )
    assert dropped == 10 + (0 if nul.rejected is None else 1)
    fine = await registry.ask(
        bank["id"], c.RecordDeviceEvent(event="custom", event_id=None, data={"ok": 1})
    )
    assert fine.rejected is None and fine.events
