"""Running lockerd in-process against a test broker, with an HTTP client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from lockerd.config import Settings, load_settings
from lockerd.service import running_service
from lockerd.wiring import Service

ADMIN_TOKEN = "test-admin-token"
MOSQ_SECRET = "test-mosq-secret"
BACKEND_USER = "lockerd-backend"
BACKEND_PASSWORD = "backend-password"


def test_settings(broker_url: str, db_path: Path, **overrides: str) -> Settings:
    values = {
        "LOCKERD_HTTP": "127.0.0.1:0",
        "LOCKERD_MQTT_URL": broker_url,
        "LOCKERD_DATABASE": f"sqlite:///{db_path}",
        "LOCKERD_ADMIN_TOKEN": ADMIN_TOKEN,
        "LOCKERD_MOSQ_SECRET": MOSQ_SECRET,
        "LOCKERD_PROVISIONING_PASSWORD": "provisioning-password",
        "LOCKERD_SECRET_KEY": "test-secret-key",
        **overrides,
    }
    return load_settings({}, values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@dataclass
class RunningLockerd:
    context: Service
    http: httpx.AsyncClient
    base_url: str

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def admin_post(self, path: str, json: Any = None) -> httpx.Response:
        return await self.http.post(path, json=json, headers=self.admin_headers())

    async def admin_get(self, path: str) -> httpx.Response:
        return await self.http.get(path, headers=self.admin_headers())

    async def create_bank(self, compartments: int = 2, **fields: Any) -> dict[str, Any]:
        body = {
            "name": fields.pop("name", "Test bank"),
            "compartments": [
                {"number": n, "slave_id": 1, "address": n - 1} for n in range(1, compartments + 1)
            ],
            **fields,
        }
        response = await self.admin_post("/api/admin/locker-banks", body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result


async def gateway_subscribed(context: Service, within: float = 10.0) -> None:
    """Wait (bounded) until lockerd's gateway holds its subscriptions, so that a test's first
    device message is not published before anyone listens. Returns anyway after ``within``
    (some tests start lockerd without a reachable broker)."""
    with trio.move_on_after(within):
        await context.gateway.subscribed.wait()


def http_base(context: Service) -> str:
    return context.http_url


@asynccontextmanager
async def lockerd(
    settings: Settings, *, wait_subscribed: bool = True
) -> AsyncIterator[RunningLockerd]:
    """lockerd in-process; by default the block starts once its gateway is subscribed
    (``wait_subscribed=False`` for a broker that is started after lockerd)."""
    async with running_service(settings) as context:
        if wait_subscribed:
            await gateway_subscribed(context)
        base = http_base(context)
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
            yield RunningLockerd(context, client, base)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    """Poll an outside view (HTTP, /metrics) until ``check`` holds; fail after ``within`` s.

    Used only where no event can be awaited: the state lives behind an HTTP API.
    """
    with trio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - nothing to await across HTTP
            await trio.sleep(0.02)


_DATABASE_URLS: dict[tuple[Path, str], str] = {}


def database_url_for(tmp_path: Path, backend: str) -> str:
    """A database URL for a service under test: ``"sqlite"`` or ``"postgresql"``.

    SQLite: a file in ``tmp_path``. PostgreSQL (``LOCKERD_TEST_POSTGRES_URL`` must be set): a
    fresh schema on that server, dropped when the test process exits. The same ``tmp_path`` and
    backend give the same URL again, so a test can restart the service on the same data.
    """
    key = (tmp_path, backend)
    if key in _DATABASE_URLS:
        return _DATABASE_URLS[key]
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'lockerd.db'}"
    elif backend == "postgresql":
        import atexit

        from tests.support import postgres

        base = postgres.server_url()
        if base is None:
            raise RuntimeError(f"{postgres.POSTGRES_URL_ENV} is not set")
        schema = postgres.create_schema(base)
        atexit.register(postgres.drop_schema, base, schema)
        url = postgres.url_with_search_path(base, schema)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    _DATABASE_URLS[key] = url
    return url
