"""Issue 16: ``GET /api/admin/tenants/{id}/metrics/stream``, live points as server-sent events.

Every wait is on something the test can await (a line of the stream, the pipeline's stats);
keep-alives come from a short keep-alive set on the running service, not from a sleep.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lockerd.telemetry.points import MetricPoint
from tests.lockerd.telemetry.test_mqtt_bridge import (
    BACKENDS,
    agent_client,
    new_agent,
    new_tenant,
    post_point,
    settings_for,
    wait_stats,
)
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import ADMIN_TOKEN, RunningLockerd, lockerd

DEADLINE = 15
PASSWORD = "correct horse battery staple"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Events:
    """The lines of one open event stream, read one at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def line(self) -> str | None:
        """The next non-empty line, or None at the end of the stream."""
        with trio.fail_after(DEADLINE):
            async for line in self._lines:
                if line:
                    return line
        return None

    async def data(self) -> dict[str, Any]:
        """The next ``data:`` event (comments skipped)."""
        while True:
            line = await self.line()
            assert line is not None, "the stream ended"
            if line.startswith("data: "):
                found: dict[str, Any] = json.loads(line[len("data: ") :])
                return found

    async def until_end(self) -> list[str]:
        rest: list[str] = []
        while (line := await self.line()) is not None:
            rest.append(line)
        return rest


@asynccontextmanager
async def stream(
    svc: RunningLockerd, tenant_id: str, *, token: str = ADMIN_TOKEN, in_query: bool = False
) -> AsyncIterator[Events]:
    """An open stream, once the server has subscribed it (the ``: subscribed`` comment)."""
    path = f"/api/admin/tenants/{tenant_id}/metrics/stream"
    headers = {} if in_query else {"Authorization": f"Bearer {token}"}
    params = {"token": token} if in_query else {}
    async with svc.http.stream(
        "GET", path, headers=headers, params=params, timeout=None
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = Events(response)
        assert await events.line() == "retry: 3000"
        assert await events.line() == ": subscribed"
        yield events


async def signed_in(svc: RunningLockerd, role: str) -> tuple[str, str]:
    """(user id, token) of a fresh user with ``role``."""
    email = f"u-{uuid.uuid4().hex[:8]}@example.org"
    created = await svc.admin_post(
        "/api/admin/users", {"email": email, "password": PASSWORD, "name": "U", "role": role}
    )
    assert created.status_code == 201, created.text
    login = await svc.http.post("/api/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return created.json()["id"], login.json()["token"]


async def test_points_from_both_paths_reach_the_stream(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        other = await new_tenant(svc, "other")
        agent = await new_agent(svc, tenant)
        stranger = await new_agent(svc, other)
        async with stream(svc, tenant) as events, stream(svc, tenant, in_query=True) as second:
            assert (await post_point(svc, stranger, {"metric": "x", "value": 9})).status_code == 202
            response = await post_point(
                svc, agent, {"metric": "temp", "value": 21.5, "timestamp": "2026-11-24T10:00:00Z"}
            )
            assert response.status_code == 202
            first = {
                "agent_id": agent.agent_id,
                "metric": "temp",
                "value": 21.5,
                "timestamp": "2026-11-24T10:00:00.000Z",
            }
            assert await events.data() == first  # the other tenant's point is not sent
            assert await second.data() == first
            async with agent_client(mosquitto) as mqtt:
                await mqtt.publish(agent.topic("hum"), b'{"value": 40, "dedupe_id": "d-1"}')
                got = await events.data()
                assert (got["agent_id"], got["metric"], got["value"]) == (agent.agent_id, "hum", 40)
                # a repeat of the dedupe id is not stored, so not streamed: the next point is
                await mqtt.publish(agent.topic("hum"), b'{"value": 40, "dedupe_id": "d-1"}')
                await mqtt.publish(agent.topic("hum"), b'{"value": 41}')
                assert (await events.data())["value"] == 41
            assert (await second.data())["metric"] == "hum"
        await wait_stats(svc, lambda s: s.duplicates == 1)


async def test_unhappy_paths(mosquitto: MosquittoBroker, tmp_path: Path, backend: str) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        path = f"/api/admin/tenants/{tenant}/metrics/stream"
        _, user_token = await signed_in(svc, "user")

        async def status(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
            response = await svc.http.get(url, headers=headers or {})
            return response.status_code, response.json()["error"]

        assert await status(path) == (401, "unauthorized")
        assert await status(f"{path}?token=nope") == (401, "unauthorized")
        assert await status(path, {"Authorization": "Bearer nope"}) == (401, "unauthorized")
        assert await status(path, {"Authorization": f"Bearer {user_token}"}) == (403, "forbidden")
        assert await status(f"{path}?token={user_token}") == (403, "forbidden")
        # the role before the resource: a user token gets 403 for an unknown tenant too
        unknown = f"/api/admin/tenants/{uuid.uuid4()}/metrics/stream"
        assert await status(f"{unknown}?token={user_token}") == (403, "forbidden")
        assert await status(f"{unknown}?token={ADMIN_TOKEN}") == (404, "not_found")
        assert (await status(f"{path}?token=%00"))[0] == 400  # NUL in the query string
        assert svc.context.point_streams.open_count == 0


async def test_keepalive_and_the_end_of_a_session(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        _, token = await signed_in(svc, "admin")
        svc.context.point_streams.keepalive = 0.05
        async with stream(svc, tenant, token=token, in_query=True) as events:
            assert await events.line() == ": keep-alive"
            logout = await svc.http.post(
                "/api/logout", headers={"Authorization": f"Bearer {token}"}
            )
            assert logout.status_code == 204, logout.text
            # the next keep-alive finds the session ended: the stream ends
            assert ": keep-alive" not in (await events.until_end())[1:]
        assert svc.context.point_streams.open_count == 0


async def test_a_slow_client_is_dropped_without_blocking_the_pipeline(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        agent = await new_agent(svc, tenant)
        streams = svc.context.point_streams
        streams.buffer = 2
        async with stream(svc, tenant) as events:
            # five points at once into a buffer of two: the pipeline drops the stream at once
            # instead of waiting for it
            burst = [
                MetricPoint(tenant, agent.agent_id, "m", float(n), 1_700_000_000_000_000 + n)
                for n in range(5)
            ]
            svc.context.pipeline.publish_remote(burst)
            rest = await events.until_end()
            assert rest[-2:] == ["event: dropped", 'data: {"reason":"too_slow"}']
            sent = [line for line in rest if line.startswith('data: {"agent_id"')]
            assert len(sent) < len(burst)  # what fitted (the buffer, and one in hand), no more
        assert streams.dropped == 1
        assert svc.context.pipeline.stats.subscribers_dropped == 1
        # the pipeline carried on: a new point is stored (and a new stream gets it)
        async with stream(svc, tenant) as events:
            assert (await post_point(svc, agent, {"metric": "m", "value": 7})).status_code == 202
            assert (await events.data())["value"] == 7


async def test_streams_end_cleanly_on_shutdown(
    mosquitto: MosquittoBroker, tmp_path: Path, backend: str
) -> None:
    async with lockerd(settings_for(mosquitto, tmp_path, backend)) as svc:
        tenant = await new_tenant(svc)
        async with stream(svc, tenant) as events:
            svc.context.shutdown.set()  # what SIGTERM does
            assert await events.until_end() == []
        assert svc.context.point_streams.open_count == 0
