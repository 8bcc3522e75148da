"""Issue 7 admin side: tenants, agents, and reading metric points back (JSON and CSV)."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path

import pytest

from lockerd.telemetry.agents import AgentDirectory
from tests.lockerd.telemetry.test_mqtt_bridge import (
    BACKENDS,
    new_agent,
    new_tenant,
    post_point,
    query,
    settings_for,
    wait_stats,
)
from tests.support.goauth import acl_check, auth
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import RunningLockerd, lockerd

PASSWORD = "correct horse battery staple"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def user_headers(svc: RunningLockerd) -> dict[str, str]:
    """A signed-in user without the admin role."""
    email = f"u-{uuid.uuid4().hex[:8]}@example.org"
    created = await svc.admin_post(
        "/api/admin/users", {"email": email, "password": PASSWORD, "name": "U", "role": "user"}
    )
    assert created.status_code == 201, created.text
    login = await svc.http.post("/api/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['token']}"}


async def test_tenants_and_agents(mosquitto: MosquittoBroker, tmp_path: Path, backend: str) -> None:
    settings = settings_for(mosquitto, tmp_path, backend)
    async with lockerd(settings) as svc:
        tenant = await new_tenant(svc, "Acme")
        agent = await new_agent(svc, tenant, "boiler room")
        assert agent.mqtt_user and len(agent.mqtt_password) >= 40
        directory: AgentDirectory = svc.context.agents
        credential = directory.credential(agent.mqtt_user)
        assert credential is not None
        assert credential[:2] == (tenant, agent.agent_id)
        assert credential[2] == svc.context.keyring.hash("agent-password", agent.mqtt_password)
        listed = (await svc.admin_get("/api/admin/tenants")).json()
        assert listed == [
            {
                "id": tenant,
                "name": "Acme",
                "agents": [
                    {
                        "agent_id": agent.agent_id,
                        "name": "boiler room",
                        "mqtt_user": agent.mqtt_user,
                    }
                ],
            }
        ]
        assert agent.mqtt_password not in str(listed)
    # both survive a restart, and the password still works
    async with lockerd(settings) as svc:
        directory = svc.context.agents
        assert directory.credential(agent.mqtt_user) == credential
        assert (await post_point(svc, agent, {"metric": "m", "value": 1})).status_code == 202


async def test_agents_are_broker_users_of_their_own_topics(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    """The go-auth endpoints read the agent directory (contract §3, metrics agent row)."""
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        agent = await new_agent(svc, tenant)
        other = await new_agent(svc, await new_tenant(svc, "other"))
        assert await auth(svc.http, agent.mqtt_user, agent.mqtt_password) == 200
        assert await auth(svc.http, agent.mqtt_user, other.mqtt_password) == 403
        assert await acl_check(svc.http, agent.mqtt_user, agent.topic("cpu"), 2) == 200
        assert await acl_check(svc.http, agent.mqtt_user, other.topic("cpu"), 2) == 403
        assert await acl_check(svc.http, agent.mqtt_user, agent.topic("cpu"), 4) == 403


async def test_admin_routes_check_role_then_resource_then_body(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        user = await user_headers(svc)
        missing = str(uuid.uuid4())
        routes: list[tuple[str, str, dict[str, object] | None]] = [
            ("POST", "/api/admin/tenants", {"name": "x"}),
            ("GET", "/api/admin/tenants", None),
            ("POST", f"/api/admin/tenants/{tenant}/agents", {"name": "x"}),
            ("GET", f"/api/admin/tenants/{tenant}/metrics", None),
            ("POST", f"/api/admin/tenants/{missing}/agents", {}),
            ("GET", f"/api/admin/tenants/{missing}/metrics?limit=0", None),
        ]
        for method, path, payload in routes:
            anonymous = await svc.http.request(method, path, json=payload)
            assert anonymous.status_code == 401, (method, path)
            bad_token = await svc.http.request(
                method, path, json=payload, headers={"Authorization": "Bearer nope"}
            )
            assert bad_token.status_code == 401, (method, path)
            as_user = await svc.http.request(method, path, json=payload, headers=user)
            assert as_user.status_code == 403, (method, path, as_user.text)
        for path in (f"/api/admin/tenants/{missing}/agents", "/api/admin/tenants/nope/agents"):
            response = await svc.admin_post(path, {"name": "x"})
            assert response.status_code == 404
            assert response.json() == {"error": "not_found", "message": "no such tenant"}
            assert (await svc.admin_post(path, {})).status_code == 404  # 404 before 400
        for path in ("/api/admin/tenants", f"/api/admin/tenants/{tenant}/agents"):
            bodies: list[dict[str, object]] = [
                {},
                {"name": ""},
                {"name": 5},
                {"name": "x" * 201},
                {"name": "x", "extra": 1},
            ]
            for body in bodies:
                response = await svc.admin_post(path, body)
                assert response.status_code == 400, (path, body, response.text)
                assert response.json()["error"] == "invalid_input"
                assert response.json()["message"]
        assert len((await svc.admin_get("/api/admin/tenants")).json()) == 1


async def test_query_filters_limit_since_and_csv(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        a1 = await new_agent(svc, tenant, "a1")
        a2 = await new_agent(svc, tenant, "a2")
        elsewhere = await new_agent(svc, await new_tenant(svc, "other"), "x")
        points = [
            (a1, "temp", 1, "2026-11-24T10:00:03Z"),
            (a1, "temp", 2, "2026-11-24T10:00:01Z"),
            (a2, "temp", 3, "2026-11-24T10:00:02Z"),
            (a1, "hum", 4, "2026-11-24T10:00:02.5Z"),
            (elsewhere, "temp", 5, "2026-11-24T10:00:00Z"),
        ]
        for agent, metric, value, ts in points:
            response = await post_point(
                svc, agent, {"metric": metric, "value": value, "timestamp": ts}
            )
            assert response.status_code == 202
        await wait_stats(svc, lambda s: s.stored == len(points))

        def values(rows: list[dict[str, object]]) -> list[object]:
            return [row["value"] for row in rows]

        assert values(await query(svc, tenant)) == [2.0, 3.0, 4.0, 1.0]
        assert values(await query(svc, tenant, "?agent_id=&metric=&since=")) == [2.0, 3.0, 4.0, 1.0]
        assert values(await query(svc, tenant, "?metric=temp")) == [2.0, 3.0, 1.0]
        assert values(await query(svc, tenant, f"?agent_id={a1.agent_id}")) == [2.0, 4.0, 1.0]
        both = f"?agent_id={a1.agent_id}&metric=temp"
        assert values(await query(svc, tenant, both)) == [2.0, 1.0]
        assert values(await query(svc, tenant, "?limit=2")) == [4.0, 1.0]  # newest two, in order
        since = "?since=2026-11-24T10:00:02Z"
        assert values(await query(svc, tenant, since)) == [3.0, 4.0, 1.0]  # inclusive
        offset = "?since=2026-11-24T12:00:02%2B02:00"  # the same instant with an offset
        assert values(await query(svc, tenant, offset)) == [3.0, 4.0, 1.0]
        unencoded = "?since=2026-11-24T12:00:02+02:00"  # '+' arrives as a space
        assert values(await query(svc, tenant, unencoded)) == [3.0, 4.0, 1.0]
        assert values(await query(svc, elsewhere.tenant_id)) == [5.0]
        assert await query(svc, tenant, f"?agent_id={elsewhere.agent_id}") == []
        first = (await query(svc, tenant))[0]
        assert first == {
            "agent_id": a1.agent_id,
            "metric": "temp",
            "value": 2.0,
            "timestamp": "2026-11-24T10:00:01.000Z",
        }

        response = await svc.admin_get(f"/api/admin/tenants/{tenant}/metrics?format=csv&limit=3")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        table = list(csv.reader(io.StringIO(response.text)))
        assert table == [
            ["agent_id", "metric", "value", "timestamp"],
            [a2.agent_id, "temp", "3.0", "2026-11-24T10:00:02.000Z"],
            [a1.agent_id, "hum", "4.0", "2026-11-24T10:00:02.500Z"],
            [a1.agent_id, "temp", "1.0", "2026-11-24T10:00:03.000Z"],
        ]
        empty = await svc.admin_get(f"/api/admin/tenants/{tenant}/metrics?format=csv&metric=none")
        assert list(csv.reader(io.StringIO(empty.text))) == [
            ["agent_id", "metric", "value", "timestamp"]
        ]

        for params in (
            "?since=yesterday",
            "?since=2026-13-01",
            "?limit=0",
            "?limit=-1",
            "?limit=abc",
            "?limit=100001",
            "?format=xml",
        ):
            response = await svc.admin_get(f"/api/admin/tenants/{tenant}/metrics{params}")
            assert response.status_code == 400, (params, response.text)
            assert response.json()["error"] == "invalid_input"
        for bad_tenant in (str(uuid.uuid4()), "not-a-uuid"):
            response = await svc.admin_get(f"/api/admin/tenants/{bad_tenant}/metrics")
            assert response.status_code == 404
