"""The in-memory live read model agrees with the store's read models: while running, after a
restart, and after ``rebuild-projections``; on SQLite and PostgreSQL. And the app's hot reads
are answered from it, not from the store's thread."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lockerd.banks import queries
from lockerd.banks.live import LiveModel
from lockerd.commands.store_ops import rebuild
from store.base import SqlTx
from tests.support.device import Answer, device
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import database_url_for
from tests.support.users import App, MovableClock, User, running_app

BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]
T = TypeVar("T")


def grant_valid(expires_at: object, now: datetime) -> bool:
    return expires_at is None or now < datetime.fromisoformat(str(expires_at))


async def store_view(app: App, users: list[User]) -> dict[str, Any]:
    """What the store's read models say, in the shapes the app is given."""
    now = app.context.clock()

    def everything(tx: SqlTx) -> tuple[list[str], list[tuple[Any, ...]]]:
        ids = [row[0] for row in tx.query("SELECT transaction_id FROM transactions")]
        grants = tx.query("SELECT compartment_id, user_id, expires_at FROM grants")
        return ids, grants

    ids, grants = await app.context.tables.read(everything)
    transactions = {}
    for transaction_id in ids:
        view = await app.context.tables.read(queries.transaction(transaction_id))
        assert view is not None
        transactions[transaction_id] = (view.user_id, view.to_json())
    compartments = {}
    for user in users:
        rows = await app.context.tables.read(queries.granted_compartments(user.id))
        listed = [
            {
                "id": cid,
                "number": number,
                "locker_bank_id": bank_id,
                "locker_bank_name": name,
                "presence": app.context.fleet.banks[bank_id].presence,
                "door_state": door,
                "out_of_service": bool(out_of_service),
            }
            for cid, number, bank_id, name, door, expires_at, out_of_service in rows
            if grant_valid(expires_at, now)
        ]
        listed.sort(key=lambda c: (c["locker_bank_name"], c["locker_bank_id"], c["number"]))
        compartments[user.id] = listed
    grant_map = {
        (cid, uid): None if expires is None else datetime.fromisoformat(str(expires))
        for cid, uid, expires in grants
    }
    return {"transactions": transactions, "compartments": compartments, "grants": grant_map}


def live_view(app: App, users: list[User], stored: dict[str, Any]) -> dict[str, Any]:
    """The same questions asked of the live model."""
    live: LiveModel = app.context.live
    now = app.context.clock()
    transactions = {}
    for transaction_id in stored["transactions"]:
        view = live.transaction(transaction_id)
        assert view is not None, transaction_id
        transactions[transaction_id] = (view.user_id, view.to_json())
    grants = {}
    for cid, uid in stored["grants"]:
        exists, expires = live.grant(cid, uid)
        assert exists, (cid, uid)
        grants[(cid, uid)] = expires
    return {
        "transactions": transactions,
        "compartments": {user.id: live.compartments_of(user.id, now) for user in users},
        "grants": grants,
    }


async def assert_agree(app: App, users: list[User]) -> dict[str, Any]:
    stored = await store_view(app, users)
    assert live_view(app, users, stored) == stored
    return stored


async def open_and_settle(app: App, user: User, compartment_id: str, status: str | None) -> str:
    response = await app.open(user, compartment_id)
    assert response.status_code == 202, response.text
    transaction_id: str = response.json()["transaction_id"]
    if status is not None:
        await app.until_transaction(transaction_id, status=status)
    return transaction_id


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_live_model_agrees_with_the_store_also_after_restart_and_rebuild(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    database = database_url_for(tmp_path, backend)
    clock = MovableClock()
    env = {"LOCKERD_DATABASE": database, "LOCKERD_COMMAND_TIMEOUT": "600"}
    async with running_app(mosquitto.url, tmp_path / "unused.db", clock, **env) as app:
        north = await app.create_bank(compartments=3, name="North")
        south = await app.create_bank(compartments=2, name="alpha south")  # sorts after N
        a1, a2, a3 = (c["id"] for c in north["compartments"])
        b1, b2 = (c["id"] for c in south["compartments"])
        users = [await app.signed_in_user() for _ in range(3)]
        u1, u2, u3 = users
        for cid in (a1, a2, a3, b1):
            assert (await app.grant(cid, u1)).status_code == 201
        assert (await app.grant(a1, u2, clock() + timedelta(hours=1))).status_code == 201
        assert (await app.grant(b2, u3)).status_code == 201
        assert (await app.grant(b1, u3)).status_code == 201
        revoked = await app.admin_delete(f"/api/admin/compartments/{b1}/grants/{u3.id}")
        assert revoked.status_code == 204
        await assert_agree(app, users)

        async with (
            device(mosquitto.url, north["id"]) as dev_n,
            device(mosquitto.url, south["id"]) as dev_s,
        ):
            for dev in (dev_n, dev_s):
                await dev.come_online(app.context.fleet)
            await open_and_settle(app, u1, a1, "success")
            dev_n.answers["open_compartment"] = Answer(
                result="error", error_code="DOOR_JAMMED", message="stuck"
            )
            await open_and_settle(app, u1, a2, "error")
            # no answer: pending, then timed out (the clock moves past expires_at), then late
            dev_s.answers["open_compartment"] = None
            timed_out = await open_and_settle(app, u1, b1, None)
            command = await dev_s.next_command("open_compartment")
            clock.advance(timedelta(seconds=601))
            await dev_s.heartbeat()  # the bank actor looks at its deadlines again
            await app.until_transaction(timed_out, status="timeout")
            await dev_s.respond(command, Answer(result="success"))
            await app.until_transaction(timed_out, late=True)
            # and one that stays pending across the restart
            pending = await open_and_settle(app, u1, b1, None)
            # doors
            await dev_n.event("door_state_changed", {"compartment_number": 3, "state": "open"})
            await dev_n.event("door_state_changed", {"compartment_number": 3, "state": "closed"})
            await dev_n.event("door_state_changed", {"compartment_number": 1, "state": "open"})
            await app.until_inbound("event", 3)
            await assert_agree(app, users)
        # the lifecycle (contract §5): out of service, a new compartment, a retired one, a
        # decommissioned bank (whose compartments the app no longer offers)
        edited = await app.http.patch(
            f"/api/admin/compartments/{a1}",
            json={"out_of_service": True},
            headers=app.admin_headers(),
        )
        assert edited.status_code == 200, edited.text
        added = await app.admin_post(
            f"/api/admin/locker-banks/{north['id']}/compartments",
            {"number": 4, "slave_id": 2, "address": 0},
        )
        assert added.status_code == 201, added.text
        assert (await app.grant(added.json()["id"], u1)).status_code == 201
        assert (await app.admin_delete(f"/api/admin/compartments/{a3}")).status_code == 204
        gone = await app.admin_post(f"/api/admin/locker-banks/{south['id']}/decommission")
        assert gone.status_code == 200, gone.text
        renamed = await app.http.patch(
            f"/api/admin/locker-banks/{north['id']}",
            json={"name": "North hall"},
            headers=app.admin_headers(),
        )
        assert renamed.status_code == 200, renamed.text
        clock.advance(timedelta(hours=2))  # u2's grant has expired
        before = await assert_agree(app, users)
        assert before["compartments"][u2.id] == []
        assert before["compartments"][u3.id] == []  # b2's bank is decommissioned
        assert before["transactions"][pending][1]["status"] == "pending"
        listed = before["compartments"][u1.id]
        assert [(c["locker_bank_name"], c["number"], c["out_of_service"]) for c in listed] == [
            ("North hall", 1, True),
            ("North hall", 2, False),
            ("North hall", 4, False),
        ]

    clock.offset = timedelta(seconds=601)  # back before the pending command's expiry
    async with running_app(mosquitto.url, tmp_path / "unused.db", clock, **env) as app:
        # loaded from the read models: the same answers (presence aside: nothing is online yet)
        after = await assert_agree(app, users)
        assert after["transactions"] == before["transactions"]
        assert after["grants"] == before["grants"]

    await rebuild(database)
    async with running_app(mosquitto.url, tmp_path / "unused.db", clock, **env) as app:
        rebuilt = await assert_agree(app, users)
        assert rebuilt["transactions"] == before["transactions"]
        assert rebuilt["grants"] == before["grants"]
        assert rebuilt["compartments"] == after["compartments"]


async def test_old_transactions_leave_memory_and_are_read_from_the_store(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        live: LiveModel = app.context.live
        live.recent_transactions = 2
        bank = await app.create_bank(compartments=1)
        cid = bank["compartments"][0]["id"]
        user = await app.signed_in_user()
        await app.grant(cid, user)
        async with device(mosquitto.url, bank["id"]) as dev:
            await dev.come_online(app.context.fleet)
            ids = [await open_and_settle(app, user, cid, "success") for _ in range(4)]
        assert [live.transaction(t) is not None for t in ids] == [False, False, True, True]
        for transaction_id in ids:  # the same answer either way
            response = await app.transaction(user, transaction_id)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "success"
        other = await app.signed_in_user()
        assert (await app.transaction(other, ids[0])).status_code == 404
        assert (await app.transaction(other, ids[3])).status_code == 404


class CountingReads:
    """Counts the store reads made while installed (the store object's own ``read``)."""

    def __init__(self, app: App) -> None:
        self.store = app.context.tables
        self.calls = 0
        self._original = self.store.read

    async def read(self, fn: Callable[[SqlTx], T]) -> T:
        self.calls += 1
        return await self._original(fn)

    def __enter__(self) -> CountingReads:
        self.store.read = self.read  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.read = self._original  # type: ignore[method-assign]


async def test_hot_reads_never_touch_the_store(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank(compartments=2)
        cid = bank["compartments"][0]["id"]
        user = await app.signed_in_user()
        await app.grant(cid, user)
        async with device(mosquitto.url, bank["id"]) as dev:
            await dev.come_online(app.context.fleet)
            transaction_id = await open_and_settle(app, user, cid, "success")
            await app.http.get("/api/compartments", headers=user.headers)  # token now cached
            with CountingReads(app) as reads:
                for _ in range(3):
                    listed = await app.http.get("/api/compartments", headers=user.headers)
                    assert [c["id"] for c in listed.json()] == [cid]
                    tx = await app.transaction(user, transaction_id)
                    assert tx.json()["status"] == "success"
                    waited = await app.http.get(
                        f"/api/transactions/{transaction_id}?wait=5", headers=user.headers
                    )
                    assert waited.json() == tx.json()
                    qr = await app.http.post(f"/api/compartments/{cid}/qr", headers=user.headers)
                    assert qr.status_code == 201
            assert reads.calls == 0
