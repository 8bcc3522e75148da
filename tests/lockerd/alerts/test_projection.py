"""The alerts read model over a real store (both backends): each alert type raised by the
domain's own events, acknowledged, resolved; a rebuild gives the same alerts and sends nothing
again (the webhook outbox keeps its rows)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from domain import bank as b
from domain import commands as c
from domain import events as e
from domain.actor import Actor
from domain.alerts import alert_id
from domain.records import NewEvent
from domain.state import BankState
from lockerd.alerts import queries
from lockerd.alerts.queries import AlertFilter
from lockerd.projections import EVERY_PROJECTION, refill_once
from lockerd.users import tables as user_tables
from store import Store, open_store
from store.base import SqlTx
from tests.domain._bank import (
    BANK_ID,
    CLIENT,
    INTERVAL,
    T0,
    TIMEOUT,
    TOKEN,
    USER,
    Timed,
    answer,
    at,
    create_command,
    device_event,
    heartbeat,
    open_cmd,
    secs,
)
from tests.support.postgres import server_url
from tests.support.service import database_url_for

BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]
T_ONLINE = T0 + secs(120)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(database_url_for(tmp_path, request.param), EVERY_PROJECTION) as opened:
        yield opened


class Bank:
    """A bank driven through ``decide`` whose durable events go to the store, as its actor
    would append them (the whole history from creation on)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.state = BankState()

    async def run(self, timed: Timed) -> list[e.Event]:
        events = b.decide(self.state, timed.command, timed.now)
        durable = [ev for ev in events if e.is_durable(ev)]
        if durable:
            await self.store.append(
                BANK_ID,
                self.state.version,
                [NewEvent(e.event_type(ev), e.event_data(ev)) for ev in durable],
            )
        self.state = b.fold(self.state, events)
        return events


async def online(store: Store) -> Bank:
    """A bank created, provisioned, granted on every compartment, online and running its
    configuration (its device answered the ``apply_config`` its first heartbeat brought,
    contract §2), all stored."""
    bank = Bank(store)
    await bank.run(create_command())
    await bank.run(
        at(
            c.Provision(
                token_hash=TOKEN,
                client_id=CLIENT,
                new_mqtt_user="mqtt-user-1",
                new_credential_hash="cred-hash-1",
            ),
            T0 + secs(60),
        )
    )
    for number in (1, 2, 3):
        await bank.run(at(c.GrantAccess(f"comp-{number}", USER, None), T0 + secs(61)))
    pushed = await bank.run(heartbeat(T_ONLINE))
    (push,) = [ev for ev in pushed if isinstance(ev, e.ConfigApplyRequested)]
    await bank.run(
        answer(
            push.transaction_id,
            T_ONLINE,
            action="apply_config",
            applied_config_hash=push.config_hash,
        )
    )
    assert bank.state.applied_config_hash == bank.state.config_hash
    return bank


async def listed(store: Store, **filters: Any) -> list[dict[str, Any]]:
    return await store.read(queries.alerts(AlertFilter(**filters)))


async def outbox(store: Store) -> list[tuple[str, str]]:
    def read(tx: SqlTx) -> list[tuple[str, str]]:
        rows = tx.query("SELECT alert_id, payload FROM alert_outbox ORDER BY position, alert_id")
        return [(row[0], json.loads(row[1])["alert"]["state"]) for row in rows]

    return await store.read(read)


async def test_every_alert_type_is_raised_acknowledged_and_resolved(store: Store) -> None:
    bank = await online(store)
    assert await listed(store) == []

    await bank.run(
        device_event("door_state_changed", {"compartment_number": 2, "state": "open"}, T_ONLINE)
    )
    await bank.run(open_cmd(T_ONLINE + secs(1), number=1, tx="tx-jam"))
    await bank.run(answer("tx-jam", T_ONLINE + secs(2), result="error", error_code="DOOR_JAMMED"))
    await bank.run(open_cmd(T_ONLINE + secs(3), number=3, tx="tx-late"))
    await bank.run(at(c.Tick(), T_ONLINE + secs(3 + TIMEOUT)))  # the open times out
    gone = T_ONLINE + secs(3 + TIMEOUT)
    await bank.run(at(c.RecordLastWill(session_id="session-1"), gone))
    await bank.run(at(c.Tick(), gone + secs(3 * INTERVAL)))  # offline too long
    await bank.run(at(c.RecordActorFailed(restarts=5, error_type="RuntimeError"), gone))

    alerts = await listed(store)
    assert [a["type"] for a in alerts] == [
        "bank_actor_failed",
        "bank_offline",
        "command_timeout",
        "command_failed",
        "uncommanded_door_opening",
    ]  # newest first
    assert {a["state"] for a in alerts} == {"open"}
    assert {a["bank_id"] for a in alerts} == {BANK_ID}
    assert all(set(a) == {"id", "bank_id", "type", "raised_at", "state", "data"} for a in alerts)
    by_type = {a["type"]: a for a in alerts}
    assert by_type["command_failed"]["data"]["error_code"] == "DOOR_JAMMED"
    assert by_type["command_failed"]["data"]["transaction_id"] == "tx-jam"
    assert by_type["uncommanded_door_opening"]["data"]["compartment_number"] == 2
    assert by_type["command_timeout"]["data"]["transaction_id"] == "tx-late"
    assert by_type["bank_actor_failed"]["data"]["restarts"] == 5
    assert set(by_type) == set(bank.state.open_alerts.values())
    assert {a["id"] for a in alerts} == set(bank.state.open_alerts)  # one id, both sides
    assert all(a["raised_at"].endswith("Z") for a in alerts)

    # acknowledged by an operator; the offline one resolves when the bank comes back,
    # acknowledged or not
    offline_id = by_type["bank_offline"]["id"]
    jam_id = by_type["command_failed"]["id"]
    for the_id in (offline_id, jam_id):
        await bank.run(at(c.AcknowledgeAlert(the_id, Actor.user("u-1")), gone + secs(100)))
    assert {a["type"] for a in await store.read(queries.active)} >= {"bank_offline"}
    await bank.run(heartbeat(gone + secs(200)))
    await bank.run(at(c.RecordActorRestarted(), gone + secs(201)))
    states = {a["type"]: a["state"] for a in await listed(store)}
    assert states == {
        "bank_actor_failed": "resolved",
        "bank_offline": "resolved",
        "command_timeout": "open",
        "command_failed": "acknowledged",
        "uncommanded_door_opening": "open",
    }
    assert [a["type"] for a in await listed(store, state="open")] == [
        "command_timeout",
        "uncommanded_door_opening",
    ]
    assert [a["id"] for a in await listed(store, state="acknowledged")] == [jam_id]
    # active (the live board's start): open, or acknowledged while it may resolve by itself
    assert [a["type"] for a in await store.read(queries.active)] == [
        "uncommanded_door_opening",
        "command_timeout",
    ]
    assert await listed(store, bank_id="8d4b2c1a-0000-4000-8000-000000000000") == []
    assert len(await listed(store, limit=2)) == 2
    assert await store.read(queries.alert(offline_id)) is not None
    assert await store.read(queries.alert("no-such-alert")) is None

    # every change is one webhook delivery: 5 raised, 2 acknowledged, 2 resolved
    deliveries = await outbox(store)
    assert len(deliveries) == 9
    assert [s for i, s in deliveries if i == offline_id] == ["open", "acknowledged", "resolved"]

    # a rebuild gives the same alerts and writes no delivery again
    before = await listed(store)
    await store.rebuild_projections()
    assert await listed(store) == before
    assert await outbox(store) == deliveries


async def test_an_outage_is_watched_until_its_alert_or_the_bank_is_back(store: Store) -> None:
    bank = await online(store)
    await bank.run(at(c.RecordLastWill(session_id="session-1"), T_ONLINE + secs(1)))
    assert await store.read(queries.banks_in_outage) == [BANK_ID]
    await bank.run(heartbeat(T_ONLINE + secs(2)))  # back in time
    assert await store.read(queries.banks_in_outage) == []
    await bank.run(at(c.RecordLastWill(session_id="session-1"), T_ONLINE + secs(3)))
    await bank.run(at(c.Tick(), T_ONLINE + secs(3 + 3 * INTERVAL)))
    assert await store.read(queries.banks_in_outage) == []  # raised: nothing left to wake
    (offline,) = await listed(store)
    assert offline["id"] == alert_id(BANK_ID, bank.state.version)


async def test_the_first_fill_of_an_older_database_sends_none_of_its_old_alerts(
    store: Store,
) -> None:
    await store.write(user_tables.create_tables)  # table_migrations
    bank = await online(store)
    await bank.run(
        device_event("door_state_changed", {"compartment_number": 2, "state": "open"}, T_ONLINE)
    )
    # a database whose history predates alerts: no refill recorded yet
    assert await refill_once(store)

    def outcomes(tx: SqlTx) -> list[Any]:
        return [row[0] for row in tx.query("SELECT outcome FROM alert_outbox")]

    assert await store.read(outcomes) == ["history"]
    assert [a["type"] for a in await listed(store)] == ["uncommanded_door_opening"]
    assert not await refill_once(store)  # once


async def test_decommissioning_resolves_the_outage_and_stops_watching_it(store: Store) -> None:
    bank = await online(store)
    await bank.run(at(c.RecordLastWill(session_id="session-1"), T_ONLINE + secs(1)))
    await bank.run(at(c.Tick(), T_ONLINE + secs(1 + 3 * INTERVAL)))
    (offline,) = await listed(store, state="open")
    await bank.run(at(c.Decommission(actor=Actor.admin_token()), T_ONLINE + secs(100)))
    assert [a["id"] for a in await listed(store, state="resolved")] == [offline["id"]]


async def test_an_outage_decommissioned_before_its_alert_is_not_watched(store: Store) -> None:
    bank = await online(store)
    await bank.run(at(c.RecordLastWill(session_id="session-1"), T_ONLINE + secs(1)))
    assert await store.read(queries.banks_in_outage) == [BANK_ID]
    await bank.run(at(c.Decommission(actor=Actor.admin_token()), T_ONLINE + secs(2)))
    assert await store.read(queries.banks_in_outage) == []
    await bank.run(at(c.Tick(), T_ONLINE + secs(100)))
    assert await listed(store) == []
