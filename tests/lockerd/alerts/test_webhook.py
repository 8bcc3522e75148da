"""Alerts POSTed to ``LOCKERD_ALERT_WEBHOOK_URL`` through the outbox, against a real local HTTP
receiver: each change once on the happy path, failures retried with backoff until a 2xx, a
restart in between loses nothing; leases keep two senders off one row (both stores)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from domain import commands as c
from lockerd.alerts.webhook import AlertWebhook, Backoff
from lockerd.projections import EVERY_PROJECTION
from store import Store, open_store
from store.base import SqlTx
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import database_url_for, eventually
from tests.support.users import App, running_app
from tests.support.webhook import receiver

BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(tmp_path, request.param)


def app_with_webhook(broker: MosquittoBroker, tmp_path: Path, database: str, url: str) -> Any:
    return running_app(
        broker.url,
        tmp_path / "unused.db",
        LOCKERD_DATABASE=database,
        LOCKERD_ALERT_WEBHOOK_URL=url,
    )


async def door_opened(app: App, bank_id: str, number: int = 1) -> None:
    """The bank's device reports a door that opened by itself (an alert)."""
    await app.context.registry.ask(
        bank_id,
        c.RecordDeviceEvent(
            event="door_state_changed",
            event_id=None,
            data={"compartment_number": number, "state": "open"},
        ),
    )


def outbox_rows(tx: SqlTx) -> list[tuple[Any, ...]]:
    return tx.query(
        "SELECT delivery_id, attempts, outcome, delivered_at IS NOT NULL FROM alert_outbox"
        " ORDER BY position"
    )


async def test_each_alert_change_is_posted_once(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with (
        receiver() as rx,
        app_with_webhook(mosquitto, tmp_path, database, rx.url) as app,
    ):
        bank_id = (await app.create_bank())["id"]
        await door_opened(app, bank_id)
        (first,) = await rx.until(1)
        (alert,) = (await app.admin_get("/api/admin/alerts")).json()
        assert first.body == {"alert": alert}
        assert first.headers["content-type"] == "application/json"
        response = await app.admin_post(f"/api/admin/alerts/{alert['id']}/acknowledge")
        assert response.status_code == 200
        _, second = await rx.until(2)
        assert second.body == {"alert": {**alert, "state": "acknowledged"}}
        keys = [r.headers["idempotency-key"] for r in rx.received]
        assert len(set(keys)) == 2

        async def all_delivered() -> bool:
            rows = await app.context.tables.read(outbox_rows)
            return len(rows) == 2 and all(row[3] for row in rows)

        await eventually(all_delivered)
        rows = await app.context.tables.read(outbox_rows)
        assert [(row[1], row[2]) for row in rows] == [(1, "delivered"), (1, "delivered")]
        assert len(rx.received) == 2  # nothing twice


async def test_failures_are_retried_until_a_2xx(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    database = database_url_for(tmp_path, "sqlite")
    async with (
        receiver([500, 503]) as rx,
        app_with_webhook(mosquitto, tmp_path, database, rx.url) as app,
    ):
        bank_id = (await app.create_bank())["id"]
        await door_opened(app, bank_id)
        received = await rx.until(3)
        assert [r.status for r in received] == [500, 503, 200]
        assert len({r.headers["idempotency-key"] for r in received}) == 1
        assert received[0].body == received[2].body
        (alert,) = (await app.admin_get("/api/admin/alerts")).json()
        assert rx.delivered() == [alert]

        async def delivered() -> bool:
            rows = await app.context.tables.read(outbox_rows)
            return bool(rows) and rows[0][3]

        await eventually(delivered)
        ((_, attempts, outcome, _),) = await app.context.tables.read(outbox_rows)
        assert (attempts, outcome) == (3, "delivered")
        registry = app.context.metrics.registry
        counted = {
            outcome: registry.get_sample_value(
                "lockerd_alert_webhook_deliveries_total", {"outcome": outcome}
            )
            for outcome in ("delivered", "failed")
        }
        assert counted == {"delivered": 1.0, "failed": 2.0}


async def test_a_refused_alert_does_not_hold_back_the_others(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    database = database_url_for(tmp_path, "sqlite")
    refusing = [True]

    def refuse(body: dict[str, Any]) -> int | None:
        compartment = body["alert"]["data"].get("compartment_number")
        return 422 if refusing[0] and compartment == 1 else None

    async with (
        receiver() as rx,
        app_with_webhook(mosquitto, tmp_path, database, rx.url) as app,
    ):
        rx.refuse = refuse
        bank_id = (await app.create_bank())["id"]
        await door_opened(app, bank_id, 1)
        (refused,) = await rx.until(1)
        assert refused.status == 422
        await door_opened(app, bank_id, 2)  # sent although the first still waits

        def delivered_numbers() -> list[int]:
            return [a["data"]["compartment_number"] for a in rx.delivered()]

        while 2 not in delivered_numbers():
            await rx.until(len(rx.received) + 1)
        assert delivered_numbers() == [2]  # the refused one is still refused (and retried)
        refusing[0] = False  # the receiver accepts it now: the retry delivers it
        while 1 not in delivered_numbers():
            await rx.until(len(rx.received) + 1)
        assert delivered_numbers() == [2, 1]


def closed_port_url() -> str:
    """A loopback URL nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/alerts"


async def test_a_restart_loses_no_alert(
    mosquitto: MosquittoBroker, tmp_path: Path, database: str
) -> None:
    async with app_with_webhook(mosquitto, tmp_path, database, closed_port_url()) as app:
        bank_id = (await app.create_bank())["id"]
        await door_opened(app, bank_id, 1)
        await door_opened(app, bank_id, 2)

        async def tried() -> bool:
            rows = await app.context.tables.read(outbox_rows)
            return len(rows) == 2 and rows[0][1] >= 1

        await eventually(tried)  # the receiver was unreachable: nothing delivered
        rows = await app.context.tables.read(outbox_rows)
        assert not any(row[3] for row in rows)
        alerts = (await app.admin_get("/api/admin/alerts")).json()
    async with (
        receiver() as rx,
        app_with_webhook(mosquitto, tmp_path, database, rx.url) as app,
    ):
        received = await rx.until(2)
        assert [r.body["alert"] for r in received] == alerts[::-1]  # in the order raised

        async def all_delivered() -> bool:
            rows = await app.context.tables.read(outbox_rows)
            return all(row[3] for row in rows)

        await eventually(all_delivered)
        assert len(rx.received) == 2


# ----------------------------------------------------------------------------- the sender


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(database_url_for(tmp_path, request.param), EVERY_PROJECTION) as opened:
        yield opened


def now() -> datetime:
    return datetime.now(UTC)


def pending(count: int) -> Any:
    def write(tx: SqlTx) -> None:
        for n in range(count):
            tx.execute(
                "INSERT INTO alert_outbox (delivery_id, position, alert_id, payload)"
                " VALUES (?, ?, ?, ?)",
                (f"{n + 1}:a-{n}", n + 1, f"a-{n}", '{"alert":{}}'),
            )

    return write


async def test_a_leased_row_is_not_handed_to_a_second_sender(store: Store) -> None:
    await store.write(pending(40))
    senders = [AlertWebhook(store, "http://127.0.0.1:9/x", f"node-{n}", now) for n in range(2)]
    claimed: dict[str, list[str]] = {"node-0": [], "node-1": []}

    async def claim_all(sender: AlertWebhook) -> None:
        while (delivery := await store.write(sender._claim)) is not None:
            claimed[sender.node_id].append(delivery.delivery_id)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for sender in senders:
            nursery.start_soon(claim_all, sender)
    every = claimed["node-0"] + claimed["node-1"]
    assert sorted(every) == sorted(f"{n + 1}:a-{n}" for n in range(40))  # each exactly once
    assert await store.write(senders[0]._claim) is None  # all leased


async def test_without_a_url_rows_are_settled_not_sent(store: Store) -> None:
    await store.write(pending(3))
    sender = AlertWebhook(store, None, "node-0", now, poll_seconds=3600)
    with trio.move_on_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)

            async def settled() -> bool:
                rows = await store.read(outbox_rows)
                return all(row[2] == "no_webhook" for row in rows)

            await eventually(settled)
            nursery.cancel_scope.cancel()
    rows = await store.read(outbox_rows)
    assert [row[2] for row in rows] == ["no_webhook"] * 3


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0)
    assert [backoff.delay(n, lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff.delay(3, lambda: 0.0) == 2.0  # half of it at the least
    assert backoff.delay(30, lambda: 1.0) == 60.0
    assert backoff.delay(10_000, lambda: 1.0) == 60.0  # no overflow
