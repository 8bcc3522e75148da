"""The framework-free answer of ``GET /api/transactions/{id}`` (lockerd/users/hot_routes.py) is
exactly the Quart route's, and every case it does not handle reaches the Quart route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from lockerd.http.app import create_app
from lockerd.users.hot_routes import with_hot_routes
from tests.support.device import Answer, device
from tests.support.mosquitto import MosquittoBroker
from tests.support.users import App, User, running_app


class Inner:
    """Stands in for the Quart app: records that the request reached it."""

    def __init__(self) -> None:
        self.calls = 0
        self.json = create_app(None, ()).json  # type: ignore[arg-type]  # the real provider

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1


async def hot_answer(app: App, path: str, query: bytes, token: str | None) -> tuple[Any, Inner]:
    """(status, headers, body) when the hot route answered, else None; and the inner app."""
    inner = Inner()
    hot = with_hot_routes(inner, app.context)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query,
             "headers": headers}  # fmt: skip
    await hot(scope, None, send)
    if not sent:
        return None, inner
    return (sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]), inner


async def test_the_hot_answer_is_the_quart_answer(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        cid = bank["compartments"][0]["id"]
        user = await app.signed_in_user()
        stranger = await app.signed_in_user()
        await app.grant(cid, user)
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["open_compartment"] = Answer(message="Tür geöffnet")  # non-ASCII
            await dev.come_online(app.context.fleet)
            response = await app.open(user, cid)
            transaction_id = response.json()["transaction_id"]
            await app.until_transaction(transaction_id, status="success")
        path = f"/api/transactions/{transaction_id}"
        for token, query in ((user.token, b""), ("test-admin-token", b""), (user.token, b"wait=3")):
            answered, inner = await hot_answer(app, path, query, token)
            assert inner.calls == 0
            status, headers, body = answered
            # the Quart route: an id in capitals is not taken by the hot route
            quart = await app.http.get(
                path.upper().replace("/API/TRANSACTIONS/", "/api/transactions/"),
                params={"wait": "3"} if query else None,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert quart.status_code == status == 200
            assert quart.content == body
            assert quart.headers["content-type"] == headers[b"content-type"].decode()
            assert int(quart.headers["content-length"]) == len(body)

        # what the hot route leaves to the Quart route
        declined = [
            (path, b"", None),
            (path, b"", "not-a-token"),
            (path, b"", stranger.token),
            (path, b"wait=0", user.token),
            (path, b"wait=", user.token),
            (path, b"wait=1&wait=2", user.token),
            (path, b"other=1", user.token),
            (path.upper(), b"", user.token),
            ("/api/transactions/00000000-0000-0000-0000-000000000000", b"", user.token),
            ("/api/transactions/not-a-uuid", b"", user.token),
        ]
        for declined_path, query, token in declined:
            answered, inner = await hot_answer(app, declined_path, query, token)
            assert answered is None and inner.calls == 1, (declined_path, query, token)
        # and what the Quart route then says: unchanged
        assert (await app.http.get(path)).status_code == 401
        assert (await app.transaction(stranger, transaction_id)).status_code == 404
        bad = await app.http.get(path, params={"wait": "0"}, headers=user.headers)
        assert bad.status_code == 400


async def test_a_hot_long_poll_waits_for_the_change(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank()
        cid = bank["compartments"][0]["id"]
        user: User = await app.signed_in_user()
        await app.grant(cid, user)
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["open_compartment"] = None
            await dev.come_online(app.context.fleet)
            transaction_id = (await app.open(user, cid)).json()["transaction_id"]
            command = await dev.next_command("open_compartment")
            answers: list[Any] = []
            with trio.fail_after(15):
                async with trio.open_nursery() as nursery:

                    async def poll() -> None:
                        path = f"/api/transactions/{transaction_id}"
                        answers.append(await hot_answer(app, path, b"wait=30", user.token))

                    nursery.start_soon(poll)
                    while transaction_id not in app.context.live._settled:  # noqa: ASYNC110
                        await trio.sleep(0.005)
                    await dev.respond(command, Answer())
            (status, _, body), inner = answers[0]
            assert inner.calls == 0 and status == 200
            assert b'"status":"success"' in body


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_other_methods_are_left_alone(
    mosquitto: MosquittoBroker, tmp_path: Path, method: str
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        inner = Inner()
        hot = with_hot_routes(inner, app.context)
        scope = {"type": "http", "method": method, "path": "/api/transactions/x",
                 "query_string": b"", "headers": []}  # fmt: skip
        await hot(scope, None, None)
        assert inner.calls == 1


async def hot_open(app: App, cid: str, token: str | None, body: bool = False) -> tuple[Any, Inner]:
    inner = Inner()
    hot = with_hot_routes(inner, app.context)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    if body:
        headers.append((b"content-length", b"2"))
    scope = {"type": "http", "method": "POST", "path": f"/api/compartments/{cid}/open",
             "query_string": b"", "headers": headers}  # fmt: skip
    await hot(scope, None, send)
    if not sent:
        return None, inner
    return (sent[0]["status"], sent[1]["body"]), inner


async def quart_open(app: App, cid: str, user: User) -> Any:
    """The Quart route: a request with a (meaningless) body is left to it."""
    return await app.http.post(f"/api/compartments/{cid}/open", content=b"{}", headers=user.headers)


async def test_the_hot_open_answers_as_the_quart_route(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        bank = await app.create_bank(compartments=3)
        c1, c2, c3 = (c["id"] for c in bank["compartments"])
        user = await app.signed_in_user()
        await app.grant(c1, user)
        await app.grant(c2, user)
        unknown = "00000000-0000-0000-0000-000000000000"
        # refusals: offline (409), no grant (403), unknown (404), malformed (404)
        for cid in (c1, c3, unknown, "not-a-uuid"):
            (status, body), inner = await hot_open(app, cid, user.token)
            assert inner.calls == 0
            quart = await quart_open(app, cid, user)
            assert (quart.status_code, quart.content) == (status, body), cid
        async with device(mosquitto.url, bank["id"]) as dev:
            dev.answers["open_compartment"] = None  # stays pending
            await dev.come_online(app.context.fleet)
            (status, body), _ = await hot_open(app, c1, user.token)
            assert status == 202
            accepted = json.loads(body)
            assert accepted["status"] == "pending"
            assert (await app.transaction(user, accepted["transaction_id"])).status_code == 200
            quart = await quart_open(app, c2, user)
            assert quart.status_code == 202 and set(quart.json()) == set(accepted)
            # both pending now: the same 409 either way
            (status, body), _ = await hot_open(app, c1, user.token)
            quart = await quart_open(app, c1, user)
            assert (quart.status_code, quart.content) == (status, body)
            assert status == 409 and b"command_pending" in body
        # left to the Quart route: a body, no token, a bad token, a longer path
        for token, with_body in ((user.token, True), (None, False), ("nope", False)):
            answered, inner = await hot_open(app, c1, token, with_body)
            assert answered is None and inner.calls == 1
        answered, inner = await hot_open(app, f"{c1}/x", user.token)
        assert answered is None and inner.calls == 1
