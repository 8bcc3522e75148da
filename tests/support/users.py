"""Helpers for end-to-end tests of the user-facing API: a service with a movable clock, users,
sign-in, grants, opening, and reading transactions and bank histories."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from lockerd.service import running_service
from tests.support.device import wait_until
from tests.support.service import RunningLockerd, gateway_subscribed, http_base, test_settings

PASSWORD = "correct horse battery staple"


@dataclass
class MovableClock:
    """Wall-clock UTC plus an offset that a test can move forward (grant expiry, QR expiry)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class User:
    id: str
    email: str
    password: str
    role: str
    token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        assert self.token, "log in first"
        return {"Authorization": f"Bearer {self.token}"}


class App(RunningLockerd):
    """The running service plus user-facing helpers."""

    clock: MovableClock

    async def admin_delete(self, path: str) -> httpx.Response:
        return await self.http.delete(path, headers=self.admin_headers())

    async def create_user(self, *, role: str = "user", email: str | None = None) -> User:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.org"
        response = await self.admin_post(
            "/api/admin/users",
            {"email": email, "password": PASSWORD, "name": "Test User", "role": role},
        )
        assert response.status_code == 201, response.text
        return User(response.json()["id"], email, PASSWORD, role)

    async def login(self, user: User) -> User:
        response = await self.http.post(
            "/api/login", json={"email": user.email, "password": user.password}
        )
        assert response.status_code == 200, response.text
        user.token = response.json()["token"]
        return user

    async def signed_in_user(self, *, role: str = "user") -> User:
        return await self.login(await self.create_user(role=role))

    async def grant(
        self, compartment_id: str, user: User, expires_at: datetime | None = None
    ) -> httpx.Response:
        body: dict[str, Any] = {"user_id": user.id}
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        return await self.admin_post(f"/api/admin/compartments/{compartment_id}/grants", body)

    async def open(self, user: User, compartment_id: str) -> httpx.Response:
        return await self.http.post(
            f"/api/compartments/{compartment_id}/open", headers=user.headers
        )

    async def transaction(self, user: User | None, transaction_id: str) -> httpx.Response:
        headers = self.admin_headers() if user is None else user.headers
        return await self.http.get(f"/api/transactions/{transaction_id}", headers=headers)

    async def events(self, bank_id: str, *types: str) -> list[dict[str, Any]]:
        response = await self.admin_get(f"/api/admin/locker-banks/{bank_id}/events")
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()
        return [ev for ev in events if not types or ev["type"] in types]

    async def bank(self, bank_id: str) -> dict[str, Any]:
        response = await self.admin_get(f"/api/admin/locker-banks/{bank_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def wait_until(
        self, check: Callable[[], Awaitable[Any]], *, what: str = "the condition"
    ) -> Any:
        return await wait_until(self.context.fleet, check, what=what)

    async def until_presence(self, bank_id: str, presence: str) -> None:
        async def check() -> bool:
            status = self.context.fleet.banks.get(bank_id)
            return status is not None and status.presence == presence

        await wait_until(self.context.fleet, check, what=f"bank {presence}")

    async def until_transaction(
        self, transaction_id: str, *, status: str | None = None, late: bool = False
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            response = await self.transaction(None, transaction_id)
            assert response.status_code == 200, response.text
            tx: dict[str, Any] = response.json()
            if status is not None and tx["status"] != status:
                return None
            if late and tx["late_answer"] is None:
                return None
            return tx

        result: dict[str, Any] = await wait_until(
            self.context.fleet, check, what=f"transaction {status or ''} late={late}"
        )
        return result

    def inbound(self, kind: str, outcome: str) -> float:
        value = self.context.metrics.registry.get_sample_value(
            "lockerd_inbound_messages_total", {"kind": kind, "outcome": outcome}
        )
        return value or 0.0

    async def until_inbound(self, kind: str, handled: int) -> None:
        """Wait until ``handled`` messages of ``kind`` were processed or dropped in total."""

        async def check() -> bool:
            return self.inbound(kind, "processed") + self.inbound(kind, "dropped") >= handled

        await wait_until(self.context.fleet, check, what=f"{handled} {kind} messages handled")


@asynccontextmanager
async def running_app(
    broker_url: str, db_path: Path, clock: MovableClock | None = None, **env: str
) -> AsyncIterator[App]:
    """``lockerd`` in-process against ``broker_url`` (env: LOCKERD_* overrides)."""
    clock = clock or MovableClock()
    settings = test_settings(broker_url, db_path, **env)
    async with running_service(settings, clock=clock) as context:
        await gateway_subscribed(context)
        base = http_base(context)
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
            app = App(context, client, base)
            app.clock = clock
            yield app
