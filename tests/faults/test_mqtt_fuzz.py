"""Hypothesis-generated MQTT traffic of every topic family, through a real broker into lockerd.

Every generated message is malformed by construction (a mutation that contract §2 says makes a
message malformed: NUL or invalid UTF-8 anywhere, nesting deeper than 32 levels, a timestamp
without an offset, a bad ``uptime_seconds``, a missing or mistyped field, truncated JSON, random
bytes, an oversized payload, or a topic that is not one of the contract's), interleaved with
well-formed heartbeats. After each batch: every message was counted exactly once in
``lockerd_inbound_messages_total`` (the malformed ones ``dropped``, the heartbeats
``processed``), no bank actor crashed, and the bank's history, transactions and stored metric
points are exactly as before (rejected input changes nothing). Issue 14 findings 1, 4, 6 and 7.

Hypothesis drives the batches from a worker thread; each batch is published and checked in the
test's Trio loop (``trio.from_thread.run``), so a failure shrinks to a minimal batch.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import trio
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from gateway.mqtt import MqttClient, open_mqtt_client
from tests.faults.conftest import settings_for
from tests.support.device import client_settings, now_iso
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import RunningLockerd, eventually, lockerd

BATCHES = 25
WAIT = 30.0

Json = Any
Mutation = Callable[[dict[str, Any]], bytes]


@dataclass
class Target:
    """What the generated messages aim at: one online bank with a pending command, and a
    tenant's metrics agent."""

    bank_id: str
    transaction_id: str
    tenant_id: str
    agent_id: str


# --------------------------------------------------------------------------- well-formed bases


def heartbeat(uptime: int) -> dict[str, Any]:
    return {
        "type": "state",
        "state": "heartbeat",
        "session_id": "s-1",
        "data": {"timestamp": now_iso(), "uptime_seconds": uptime},
    }


def bases(target: Target) -> dict[str, tuple[str, dict[str, Any], tuple[str, ...]]]:
    """Per family: topic, a well-formed payload, and its required fields."""
    bank = target.bank_id
    return {
        "state": (f"locker/{bank}/state", heartbeat(10**6), ("type", "state")),
        "response": (
            f"locker/{bank}/response",
            {
                "type": "command_response",
                "action": "open_compartment",
                "result": "success",
                "transaction_id": target.transaction_id,
                "timestamp": now_iso(),
                "message": "door ok",
            },
            ("type", "action", "result", "transaction_id", "timestamp"),
        ),
        "event": (
            f"locker/{bank}/event",
            {
                "type": "event",
                "event": "door_state_changed",
                "event_id": str(uuid.uuid4()),
                "timestamp": now_iso(),
                "data": {"compartment_number": 1, "door_state": "open"},
            },
            ("type", "event", "timestamp", "data"),
        ),
        "metric": (
            f"metrics/{target.tenant_id}/{target.agent_id}/temp",
            {"value": 21.5, "timestamp": now_iso(), "dedupe_id": str(uuid.uuid4())},
            ("value",),
        ),
        "register": ("locker/register/no-such-token", {"client_id": "fuzz-box"}, ()),
    }


# --------------------------------------------------------------------------- mutations


def _strings(value: Json, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every string value in a JSON document."""
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _strings(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _strings(v, (*path, i))]
    return []


def _set(document: Json, path: tuple[Any, ...], value: Json) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


def _get(document: Json, path: tuple[Any, ...]) -> Json:
    for key in path:
        document = document[key]
    return document


@st.composite
def malformed(draw: st.DrawFn, family: str, target: Target) -> tuple[str, bytes, str]:
    """One malformed message of ``family``: (topic, payload, what was done to it)."""
    topic, base, required = bases(target)[family]
    document = json.loads(json.dumps(base))
    strings = _strings(document)
    kinds = ["nul", "utf8", "deep", "truncated", "garbage", "huge", "not_object"]
    if strings:
        kinds.append("nul_in_key")
    if required:
        kinds += ["missing", "wrong_type"]
    if family in ("state", "response", "event", "metric"):
        kinds.append("naive_time")
    if family == "state":
        kinds.append("uptime")
    if family != "register":
        kinds.append("topic")
    kind = draw(st.sampled_from(kinds))
    if kind == "nul":
        path = draw(st.sampled_from(strings))
        text = _get(document, path)
        at = draw(st.integers(0, len(text)))
        _set(document, path, text[:at] + "\x00" + text[at:])
        return topic, json.dumps(document).encode(), kind
    if kind == "nul_in_key":
        document["x\x00" + draw(st.text(max_size=3))] = draw(st.integers())
        return topic, json.dumps(document).encode(), kind
    if kind == "utf8":
        path = draw(st.sampled_from(strings))
        marker = "\ue000MARK\ue000"
        _set(document, path, marker)
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc", b"\xf8\x88"]))
        raw = json.dumps(document, ensure_ascii=False).encode()
        return topic, raw.replace(marker.encode(), bad), kind
    if kind == "deep":
        depth = draw(st.integers(33, 3000))
        raw = json.dumps(document).encode()
        nested = b"[" * depth + b"]" * depth
        return topic, raw[:-1] + b', "deep": ' + nested + b"}", kind
    if kind == "truncated":
        raw = json.dumps(document).encode()
        return topic, raw[: draw(st.integers(0, len(raw) - 1))], kind
    if kind == "garbage":
        raw = draw(st.binary(max_size=200))
        hypothesis.assume(not raw.strip().startswith(b"{"))
        return topic, raw, kind
    if kind == "huge":
        document["padding"] = "x" * draw(st.integers(16 * 1024, 40 * 1024))
        return topic, json.dumps(document).encode(), kind
    if kind == "not_object":
        value = draw(st.one_of(st.integers(), st.text(max_size=20), st.lists(st.integers())))
        return topic, json.dumps(value).encode(), kind
    if kind == "missing":
        del document[draw(st.sampled_from(required))]
        return topic, json.dumps(document).encode(), kind
    if kind == "wrong_type":
        field = draw(st.sampled_from(required))
        current = document[field]
        replacement = draw(
            st.one_of(st.integers(), st.none(), st.lists(st.integers(), max_size=2))
            if isinstance(current, str | dict)
            else st.one_of(st.text(max_size=5), st.none(), st.booleans())
        )
        document[field] = replacement
        return topic, json.dumps(document).encode(), kind
    if kind == "naive_time":
        naive = draw(st.sampled_from(["2026-01-01T00:00:00", "2026-01-01", "20260101T000000"]))
        if family == "state":
            document["data"]["timestamp"] = naive
        else:
            document["timestamp"] = naive
        return topic, json.dumps(document).encode(), kind
    if kind == "uptime":
        document["data"]["uptime_seconds"] = draw(
            st.sampled_from([-5, -1, 2**64, 2**53 + 1, 1.5, "10", True])
        )
        return topic, json.dumps(document).encode(), kind
    # kind == "topic": a topic no contract family has, inside lockerd's subscriptions
    bank = target.bank_id
    bad_topic = draw(
        st.sampled_from(
            {
                "state": [f"locker/{bank.upper()}/state", "locker//state", "locker/x/state"],
                "response": [f"locker/{bank[:-1]}/response", "locker//response"],
                "event": ["locker//event", f"locker/{bank}0/event", "locker/BANK/event"],
                "metric": [
                    f"metrics/{target.tenant_id}/{target.agent_id}",
                    f"metrics/{target.tenant_id}//temp",
                    f"metrics/{target.tenant_id}/{target.agent_id}/temp/extra",
                    f"metrics/not-a-tenant/{target.agent_id}/temp",
                    "metrics",
                    "metrics/",
                ],
            }[family]
        )
    )
    return bad_topic, json.dumps(base).encode(), kind


def messages(target: Target) -> st.SearchStrategy[list[tuple[str, bytes, str]]]:
    families = ["state", "response", "event", "metric", "register"]
    one = st.sampled_from(families).flatmap(lambda family: malformed(family, target))
    return st.lists(one, min_size=1, max_size=40)


# --------------------------------------------------------------------------- the checks


def inbound(svc: RunningLockerd) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for family in svc.context.metrics.registry.collect():
        if family.name != "lockerd_inbound_messages":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels["kind"], sample.labels["outcome"])
                counts[key] = sample.value
    return counts


def kind_of(topic: str) -> str:
    parts = topic.split("/")
    if parts[0] == "metrics":
        return "metric"
    if parts[1] == "register":
        return "register"
    return {"state": "state", "response": "response", "event": "event"}.get(parts[-1], "unknown")


async def observed(svc: RunningLockerd, target: Target) -> tuple[Any, ...]:
    """Everything rejected input must not change: history, transactions, points, doors."""
    history = [
        (ev.type, dict(ev.data)) for ev in await svc.context.store.read_stream(target.bank_id)
    ]
    tx = (await svc.admin_get(f"/api/transactions/{target.transaction_id}")).json()
    points = (await svc.admin_get(f"/api/admin/tenants/{target.tenant_id}/metrics")).json()
    bank = (await svc.admin_get(f"/api/admin/locker-banks/{target.bank_id}")).json()
    bank.pop("last_seen", None)  # the interleaved heartbeats move it, and only it
    return history, tx, points, bank


async def setup(svc: RunningLockerd, client: MqttClient) -> Target:
    tenant = (await svc.admin_post("/api/admin/tenants", {"name": "acme"})).json()["id"]
    agent = (await svc.admin_post(f"/api/admin/tenants/{tenant}/agents", {"name": "a"})).json()
    bank = await svc.create_bank(heartbeat_interval_seconds=3600)
    await client.publish(f"locker/{bank['id']}/state", json.dumps(heartbeat(1)).encode(), qos=1)

    async def online() -> bool:
        view = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}")).json()
        return bool(view["presence"] == "online")

    await eventually(online, within=WAIT)
    user = await svc.admin_post(
        "/api/admin/users", {"email": "f@x.org", "password": "long-password", "name": "F"}
    )
    compartment = bank["compartments"][0]["id"]
    await svc.admin_post(
        f"/api/admin/compartments/{compartment}/grants", {"user_id": user.json()["id"]}
    )
    token = (
        await svc.http.post("/api/login", json={"email": "f@x.org", "password": "long-password"})
    ).json()["token"]
    opened = await svc.http.post(
        f"/api/compartments/{compartment}/open", headers={"Authorization": f"Bearer {token}"}
    )
    assert opened.status_code == 202, opened.text
    return Target(bank["id"], opened.json()["transaction_id"], tenant, agent["agent_id"])


@pytest.fixture
async def fuzz_svc(mosquitto: MosquittoBroker, tmp_path: Path, backend: str) -> Any:
    # commands and presence must not time out during the run: that would be a state change
    settings = settings_for(mosquitto, tmp_path, backend, LOCKERD_COMMAND_TIMEOUT="3600")
    async with lockerd(settings) as running:
        yield running


async def test_malformed_mqtt_changes_nothing_and_every_message_is_counted_once(
    fuzz_svc: RunningLockerd, mosquitto: MosquittoBroker
) -> None:
    svc = fuzz_svc
    settings = client_settings(mosquitto.url, f"fuzzer-{uuid.uuid4().hex[:8]}")
    async with open_mqtt_client(settings) as client:
        target = await setup(svc, client)
        uptime = 100
        sent_total = 0

        async def publish_and_check(batch: list[tuple[str, bytes, str]]) -> None:
            nonlocal uptime, sent_total
            before_counts = inbound(svc)
            before = await observed(svc, target)
            expected: dict[tuple[str, str], float] = {}
            for n, (topic, payload, _what) in enumerate(batch):
                await client.publish(topic, payload, qos=1)
                key = (kind_of(topic), "dropped")
                expected[key] = expected.get(key, 0) + 1
                if n % 5 == 0:  # well-formed traffic in between: processed, changes nothing
                    uptime += 1
                    beat = json.dumps(heartbeat(uptime)).encode()
                    await client.publish(f"locker/{target.bank_id}/state", beat, qos=1)
                    expected[("state", "processed")] = expected.get(("state", "processed"), 0) + 1
            sent_total += len(batch)

            def delta() -> dict[tuple[str, str], float]:
                now = inbound(svc)
                changed = {k: now.get(k, 0) - before_counts.get(k, 0) for k in now}
                return {k: v for k, v in changed.items() if v}

            async def counted() -> bool:
                return sum(delta().values()) >= sum(expected.values())

            await eventually(counted, within=WAIT)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert delta() == expected, [what for _, _, what in batch]
            assert await observed(svc, target) == before, [what for _, _, what in batch]
            status = svc.context.fleet.banks[target.bank_id]
            assert (status.restarts, status.supervision) == (0, "running")
            assert status.presence == "online"

        @hypothesis.settings(
            max_examples=BATCHES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(batch=messages(target))
        def run(batch: list[tuple[str, bytes, str]]) -> None:
            trio.from_thread.run(publish_and_check, batch)

        await trio.to_thread.run_sync(run)
        assert sent_total >= BATCHES
        print(f"mqtt fuzz: {sent_total} malformed messages in {BATCHES} batches")
        restarts = svc.context.metrics.registry.get_sample_value(
            "lockerd_actor_restarts_total", {"actor": "bank"}
        )
        assert not restarts


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
