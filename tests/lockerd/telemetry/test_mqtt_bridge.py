"""Issue 7 end to end: metric points over MQTT (real mosquitto) and over POST /api/metrics.

Both paths feed one pipeline and one table. Waiting is event-driven: the pipeline's
``wait_until`` wakes on every outcome (stored, duplicate, rejected), so no test polls.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.mqtt import MqttClient, open_mqtt_client
from lockerd.config import Settings
from lockerd.telemetry.pipeline import MetricsPipeline, PipelineStats
from tests.support.device import client_settings
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import RunningLockerd, database_url_for, lockerd, test_settings

DEADLINE = 15
#: Every test runs on SQLite, and on PostgreSQL too when LOCKERD_TEST_POSTGRES_URL is set.
BACKENDS = ["sqlite", *(["postgresql"] if server_url() else [])]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def settings_for(broker: MosquittoBroker, tmp_path: Path, backend: str) -> Settings:
    """The same tmp_path and backend give the same database (restarts keep the data)."""
    return test_settings(
        broker.url, tmp_path / "unused.db", LOCKERD_DATABASE=database_url_for(tmp_path, backend)
    )


@dataclass
class AgentCreds:
    tenant_id: str
    agent_id: str
    mqtt_user: str
    mqtt_password: str

    @property
    def auth(self) -> tuple[str, str]:
        return self.mqtt_user, self.mqtt_password

    def topic(self, metric: str) -> str:
        return f"metrics/{self.tenant_id}/{self.agent_id}/{metric}"


async def new_tenant(svc: RunningLockerd, name: str = "acme") -> str:
    response = await svc.admin_post("/api/admin/tenants", {"name": name})
    assert response.status_code == 201, response.text
    tenant_id: str = response.json()["id"]
    return tenant_id


async def new_agent(svc: RunningLockerd, tenant_id: str, name: str = "probe") -> AgentCreds:
    response = await svc.admin_post(f"/api/admin/tenants/{tenant_id}/agents", {"name": name})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"agent_id", "mqtt_user", "mqtt_password"}
    return AgentCreds(tenant_id, body["agent_id"], body["mqtt_user"], body["mqtt_password"])


def pipeline_of(svc: RunningLockerd) -> MetricsPipeline:
    found: MetricsPipeline = svc.context.pipeline
    return found


async def wait_stats(svc: RunningLockerd, predicate: Callable[[PipelineStats], bool]) -> None:
    with trio.fail_after(DEADLINE):
        await pipeline_of(svc).wait_until(predicate)


async def sample(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    text = (await http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


@asynccontextmanager
async def agent_client(broker: MosquittoBroker) -> AsyncIterator[MqttClient]:
    settings = client_settings(broker.url, f"agent-{uuid.uuid4().hex[:8]}")
    async with open_mqtt_client(settings, reconnect=False) as client:
        yield client


async def post_point(
    svc: RunningLockerd, creds: AgentCreds | tuple[str, str] | None, body: Any
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    pair = creds.auth if isinstance(creds, AgentCreds) else creds
    if pair is not None:
        headers["Authorization"] = "Basic " + _b64(f"{pair[0]}:{pair[1]}")
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await svc.http.post("/api/metrics", content=content, headers=headers)


async def query(svc: RunningLockerd, tenant_id: str, params: str = "") -> list[dict[str, Any]]:
    response = await svc.admin_get(f"/api/admin/tenants/{tenant_id}/metrics{params}")
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


# ------------------------------------------------------------------------------------------


async def test_mqtt_and_http_points_land_in_one_store(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        agent = await new_agent(svc, tenant)
        live = pipeline_of(svc).subscribe(tenant_id=tenant)
        async with agent_client(mosquitto) as mqtt:
            await mqtt.publish(
                agent.topic("temp"),
                json.dumps({"value": 21.5, "timestamp": "2026-11-24T10:00:00Z"}).encode(),
            )
            await mqtt.publish(agent.topic("temp"), b'{"value": 22, "dedupe_id": "m-1"}')
        # a PUBACK is the broker's; wait until lockerd has them, so the order below is known
        await wait_stats(svc, lambda s: s.stored == 2)
        response = await post_point(
            svc, agent, {"metric": "temp", "value": 20, "timestamp": "2026-11-24T09:00:00Z"}
        )
        assert response.status_code == 202, response.text
        assert response.json() == {"status": "stored"}
        await wait_stats(svc, lambda s: s.stored == 3)

        rows = await query(svc, tenant)
        assert [(r["value"], r["metric"], r["agent_id"]) for r in rows] == [
            (20.0, "temp", agent.agent_id),
            (21.5, "temp", agent.agent_id),
            (22.0, "temp", agent.agent_id),  # no timestamp: the receive time, the newest
        ]
        assert rows[0]["timestamp"] == "2026-11-24T09:00:00.000Z"
        assert rows[1]["timestamp"] == "2026-11-24T10:00:00.000Z"
        assert [point.source for point in [live.receive_nowait() for _ in range(3)]] == [
            "mqtt",
            "mqtt",
            "http",
        ]
        assert (
            await sample(
                svc.http, "lockerd_inbound_messages_total", kind="metric", outcome="processed"
            )
            == 2
        )  # MQTT points only


async def test_dedupe_id_is_unique_per_agent_across_both_paths(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    settings = settings_for(mosquitto, tmp_path, backend)
    async with lockerd(settings) as svc:
        tenant = await new_tenant(svc)
        agent = await new_agent(svc, tenant)
        other = await new_agent(svc, tenant, "second")
        first = await post_point(svc, agent, {"metric": "m", "value": 1, "dedupe_id": "d-1"})
        assert first.json() == {"status": "stored"}
        async with agent_client(mosquitto) as mqtt:
            await mqtt.publish(agent.topic("m"), b'{"value": 2, "dedupe_id": "d-1"}')
            await mqtt.publish(agent.topic("m"), b'{"value": 3, "dedupe_id": "d-2"}')
            await mqtt.publish(other.topic("m"), b'{"value": 4, "dedupe_id": "d-1"}')
        await wait_stats(svc, lambda s: s.stored == 3 and s.duplicates == 1)
        again = await post_point(svc, agent, {"metric": "m", "value": 5, "dedupe_id": "d-2"})
        assert again.status_code == 202
        assert again.json() == {"status": "duplicate"}
        assert [r["value"] for r in await query(svc, tenant, "?metric=m")] == [1.0, 3.0, 4.0]
        assert (
            await sample(
                svc.http, "lockerd_dropped_messages_total", kind="metric", reason="duplicate"
            )
            == 1
        )
    # after a restart (empty memory) the database still knows the ids
    async with lockerd(settings) as svc:
        async with agent_client(mosquitto) as mqtt:
            await mqtt.publish(agent.topic("m"), b'{"value": 6, "dedupe_id": "d-1"}')
        await wait_stats(svc, lambda s: s.duplicates == 1)
        repeat = await post_point(svc, agent, {"metric": "m", "value": 7, "dedupe_id": "d-2"})
        assert repeat.json() == {"status": "duplicate"}
        assert len(await query(svc, tenant)) == 3


async def test_bad_mqtt_points_are_dropped_counted_and_logged(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        agent = await new_agent(svc, tenant)
        foreign = await new_agent(svc, await new_tenant(svc, "globex"))
        unknown_tenant = str(uuid.uuid4())
        bad = [
            (f"metrics/{unknown_tenant}/{agent.agent_id}/temp", b'{"value": 1}', "unknown_tenant"),
            (f"metrics/{tenant}/{uuid.uuid4()}/temp", b'{"value": 1}', "unknown_agent"),
            (f"metrics/{tenant}/{foreign.agent_id}/temp", b'{"value": 1}', "agent_tenant_mismatch"),
            (agent.topic("temp"), b'{"value": "warm"}', "invalid_value"),
            (agent.topic("temp"), b'{"timestamp": "2026-11-24T10:00:00Z"}', "invalid_value"),
            (agent.topic("temp"), b'{"value": NaN}', "invalid_value"),
            (agent.topic("temp"), b'{"value": 1e400}', "invalid_value"),
            (agent.topic("temp"), b'{"value": true}', "invalid_value"),
            (agent.topic("temp"), b"22.5", "malformed_payload"),
            (
                agent.topic("temp"),
                b'{"value": 1, "timestamp": "2099-01-01T00:00:00Z"}',
                "future_timestamp",
            ),
            (
                agent.topic("temp"),
                b'{"value": 1, "timestamp": "last tuesday"}',
                "invalid_timestamp",
            ),
            (agent.topic("x" * 200), b'{"value": 1}', "invalid_metric"),
            (
                agent.topic("temp"),
                json.dumps({"value": 1, "pad": "x" * 20_000}).encode(),
                "payload_too_large",
            ),
        ]
        async with agent_client(mosquitto) as mqtt:
            for topic, payload, _ in bad:
                await mqtt.publish(topic, payload)
            await mqtt.publish(agent.topic("temp"), b'{"value": 7}')
        await wait_stats(svc, lambda s: s.rejected == len(bad) and s.stored == 1)
        for reason in {case[2] for case in bad}:
            expected = sum(1 for case in bad if case[2] == reason)
            assert (
                await sample(
                    svc.http, "lockerd_dropped_messages_total", kind="metric", reason=reason
                )
                == expected
            ), reason
        assert await sample(
            svc.http, "lockerd_inbound_messages_total", kind="metric", outcome="dropped"
        ) == len(bad)
        # nothing of them was stored, in this tenant or the other
        assert [r["value"] for r in await query(svc, tenant)] == [7.0]
        assert await query(svc, foreign.tenant_id) == []
        assert (await svc.http.get("/healthz")).status_code == 200


async def test_bad_http_points_get_400_and_store_nothing(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        agent = await new_agent(svc, tenant)
        cases: list[tuple[Any, str]] = [
            (b"", "empty"),
            (b"{not json", "JSON"),
            (b"[]", "object"),
            ({"value": 1}, "metric"),
            ({"metric": "m"}, "value"),
            ({"metric": "m", "value": "1"}, "value"),
            ({"metric": "m", "value": True}, "value"),
            (b'{"metric": "m", "value": NaN}', "finite"),
            (b'{"metric": "m", "value": -Infinity}', "finite"),
            (b'{"metric": "m", "value": 1e999}', "value"),
            ({"metric": "m", "value": 1, "timestamp": "2099-01-01T00:00:00Z"}, "ahead"),
            ({"metric": "m", "value": 1, "timestamp": "noon"}, "ISO 8601"),
            ({"metric": "a/b", "value": 1}, "one topic level"),
            ({"metric": "", "value": 1}, "empty"),
            ({"metric": "x" * 129, "value": 1}, "exceeds 128"),
            ({"metric": "m", "value": 1, "dedupe_id": ""}, "dedupe_id"),
            ({"metric": "m", "value": 1, "pad": "x" * 17_000}, "exceeds 16384"),
        ]
        for body, hint in cases:
            response = await post_point(svc, agent, body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"] == "invalid_input"
            assert hint in response.json()["message"], (hint, response.json())
        too_big = await post_point(svc, agent, {"metric": "m", "value": 1, "pad": "x" * 70_000})
        assert too_big.status_code == 413  # past the app-wide body limit
        assert await query(svc, tenant) == []
        assert pipeline_of(svc).stats.rejected == len(cases)
        assert await sample(
            svc.http, "lockerd_metric_points_total", source="http", outcome="rejected"
        ) == len(cases)


async def test_http_ingest_needs_an_agents_basic_credentials(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        agent = await new_agent(svc, tenant)
        other = await new_agent(svc, tenant, "other")
        body = {"metric": "m", "value": 1}
        bad_auth: list[dict[str, str]] = [
            {},
            {"Authorization": "Bearer " + agent.mqtt_password},
            {"Authorization": "Basic !!!not-base64!!!"},
            {"Authorization": "Basic " + _b64("no-colon")},
            {"Authorization": "Basic " + _b64(f"{agent.mqtt_user}:wrong")},
            {"Authorization": "Basic " + _b64(f"{agent.mqtt_user}:{other.mqtt_password}")},
            {"Authorization": "Basic " + _b64(f"nobody:{agent.mqtt_password}")},
            {"Authorization": "Basic " + _b64(f"{agent.agent_id}:{agent.mqtt_password}")},
        ]
        for headers in bad_auth:
            response = await svc.http.post("/api/metrics", json=body, headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["error"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Basic ")
        # bad credentials win over a bad body
        assert (await post_point(svc, ("nobody", "x"), b"{bad")).status_code == 401
        # the admin token is no agent credential
        admin = await svc.http.post("/api/metrics", json=body, headers=svc.admin_headers())
        assert admin.status_code == 401
        assert await query(svc, tenant) == []
        assert (await post_point(svc, agent, body)).status_code == 202


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_a_burst_over_mqtt_is_batched(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        agent = await new_agent(svc, tenant)
        count = 2_000
        async with agent_client(mosquitto) as mqtt, trio.open_nursery() as nursery:
            for n in range(count):
                nursery.start_soon(mqtt.publish, agent.topic("load"), b'{"value": %d}' % n, 1)
        await wait_stats(svc, lambda s: s.stored == count)
        stats = pipeline_of(svc).stats
        assert stats.batches < count  # many points per transaction
        assert stats.largest_batch > 1
        rows = await query(svc, tenant, f"?metric=load&limit={count}")
        assert sorted(r["value"] for r in rows) == [float(n) for n in range(count)]
        assert (
            await sample(
                svc.http, "lockerd_inbound_messages_total", kind="metric", outcome="processed"
            )
            == count
        )
