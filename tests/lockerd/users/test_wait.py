"""``GET /api/transactions/{id}?wait=N``: the long poll, answered the moment the status changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lockerd.banks.live import LiveModel
from tests.support.device import Answer, TestDevice, device
from tests.support.mosquitto import MosquittoBroker
from tests.support.users import App, User, running_app


async def pending_open(app: App, dev: TestDevice, user: User, cid: str) -> tuple[str, Any]:
    response = await app.open(user, cid)
    assert response.status_code == 202, response.text
    command = await dev.next_command("open_compartment")
    return response.json()["transaction_id"], command


async def setup(app: App, dev: TestDevice, bank: dict[str, Any]) -> tuple[User, str]:
    user = await app.signed_in_user()
    cid = bank["compartments"][0]["id"]
    await app.grant(cid, user)
    dev.answers["open_compartment"] = None  # answered by hand
    await dev.come_online(app.context.fleet)
    return user, cid


async def get(app: App, user: User, transaction_id: str, query: str) -> httpx.Response:
    return await app.http.get(
        f"/api/transactions/{transaction_id}{query}", headers=user.headers, timeout=40
    )


async def waiting(live: LiveModel, transaction_id: str) -> None:
    """Until a long poll waits on the transaction (the waiter is registered in memory)."""
    while transaction_id not in live._settled:  # noqa: ASYNC110 - the request is in flight
        await trio.sleep(0.005)


async def test_the_answer_comes_the_moment_the_status_changes(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        async with device(mosquitto.url, bank["id"]) as dev:
            user, cid = await setup(app, dev, bank)
            transaction_id, command = await pending_open(app, dev, user, cid)
            answers: list[httpx.Response] = []
            with trio.fail_after(15):  # far below the 30 s asked for: answered on the change
                async with trio.open_nursery() as nursery:

                    async def poll() -> None:
                        answers.append(await get(app, user, transaction_id, "?wait=30"))

                    for _ in range(3):  # several clients waiting for the same transaction
                        nursery.start_soon(poll)
                    await waiting(app.context.live, transaction_id)
                    await dev.respond(command, Answer(message="opened"))
            assert [a.status_code for a in answers] == [200] * 3
            assert {a.json()["status"] for a in answers} == {"success"}
            assert answers[0].json()["message"] == "opened"
            # a finished one is answered at once, as without wait
            again = await get(app, user, transaction_id, "?wait=30")
            assert again.json() == answers[0].json()


async def test_when_the_time_is_up_it_answers_as_it_stands(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        async with device(mosquitto.url, bank["id"]) as dev:
            user, cid = await setup(app, dev, bank)
            transaction_id, _ = await pending_open(app, dev, user, cid)
            started = trio.current_time()
            response = await get(app, user, transaction_id, "?wait=1")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "pending"
            assert trio.current_time() - started >= 0.9


BAD_WAITS = ["?wait=0", "?wait=31", "?wait=-1", "?wait=abc", "?wait=1.5", "?wait=",
             "?wait=1&wait=2", "?wait=%EF%BC%95", "?wait=99999999999999999999"]  # fmt: skip


@pytest.mark.parametrize("query", BAD_WAITS)
async def test_a_bad_wait_is_a_400(mosquitto: MosquittoBroker, tmp_path: Path, query: str) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        user = await app.signed_in_user()
        response = await get(app, user, "00000000-0000-0000-0000-000000000000", query)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_input"
        assert "wait" in response.json()["message"]
        # without a token it is a 401 first
        anonymous = await app.http.get(f"/api/transactions/x{query}")
        assert anonymous.status_code == 401


async def test_unknown_and_foreign_transactions_are_404_at_once(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        async with device(mosquitto.url, bank["id"]) as dev:
            user, cid = await setup(app, dev, bank)
            transaction_id, _ = await pending_open(app, dev, user, cid)
            stranger = await app.signed_in_user()
            with trio.fail_after(5):
                foreign = await get(app, stranger, transaction_id, "?wait=30")
                unknown = await get(app, user, "00000000-0000-0000-0000-000000000000", "?wait=30")
            assert foreign.status_code == unknown.status_code == 404
            # an admin may wait on anyone's
            admin_view = await app.http.get(
                f"/api/transactions/{transaction_id}?wait=1", headers=app.admin_headers()
            )
            assert admin_view.json()["status"] == "pending"


async def test_stopping_the_service_answers_the_waiting_polls(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        async with device(mosquitto.url, bank["id"]) as dev:
            user, cid = await setup(app, dev, bank)
            transaction_id, _ = await pending_open(app, dev, user, cid)
            answers: list[httpx.Response] = []
            with trio.fail_after(15):
                async with trio.open_nursery() as nursery:

                    async def poll() -> None:
                        answers.append(await get(app, user, transaction_id, "?wait=30"))

                    nursery.start_soon(poll)
                    await waiting(app.context.live, transaction_id)
                    app.context.shutdown.set()  # what SIGTERM does
            assert answers[0].json()["status"] == "pending"
