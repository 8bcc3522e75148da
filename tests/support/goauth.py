"""Helpers for broker-auth and provisioning tests: go-auth requests, registering devices.

``goauth_body`` builds a request body byte for byte as mosquitto-go-auth 3.0.0 sends it
(research/goauth.md §1): JSON is a Go-marshalled map (keys sorted, compact, ``acc`` a number,
non-ASCII unescaped) with ``User-Agent: mosquitto-2.0.11``; form mode is ``url.Values.Encode()``
(keys sorted, ``/`` as ``%2F``) with ``User-Agent: Go-http-client/1.1``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.mqtt import MqttClient, open_mqtt_client
from lockerd.config import Settings
from lockerd.service import running_service
from tests.support.device import client_settings
from tests.support.service import MOSQ_SECRET, RunningLockerd, gateway_subscribed, http_base

Mode = Literal["json", "form"]
MODES: tuple[Mode, ...] = ("json", "form")


def goauth_body(fields: dict[str, Any], mode: Mode) -> tuple[bytes, dict[str, str]]:
    if mode == "json":
        body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        headers = {"Content-Type": "application/json", "User-Agent": "mosquitto-2.0.11"}
        return body.encode(), headers
    encoded = urlencode(sorted((key, str(value)) for key, value in fields.items()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "Go-http-client/1.1",
    }
    return encoded.encode(), headers


async def goauth(
    http: httpx.AsyncClient,
    endpoint: str,
    fields: dict[str, Any],
    mode: Mode = "json",
    *,
    secret: str | None = MOSQ_SECRET,
) -> int:
    """POST one go-auth check; returns the HTTP status (200 allow, 403 deny)."""
    body, headers = goauth_body(fields, mode)
    query = "" if secret is None else "?" + urlencode({"mosq_secret": secret})
    response = await http.post(f"/api/mosq/{endpoint}{query}", content=body, headers=headers)
    return response.status_code


async def auth(http: httpx.AsyncClient, username: str, password: str, mode: Mode = "json") -> int:
    fields = {"clientid": f"c-{username}", "password": password, "username": username}
    return await goauth(http, "auth", fields, mode)


async def acl_check(
    http: httpx.AsyncClient,
    username: str,
    topic: str,
    acc: int,
    mode: Mode = "json",
    clientid: str | None = None,
) -> int:
    fields = {
        "acc": acc,
        "clientid": clientid or f"c-{username}",
        "topic": topic,
        "username": username,
    }
    return await goauth(http, "acl", fields, mode)


# --------------------------------------------------------------------------- registering


@dataclass
class Reply:
    topic: str
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.body.get("status") == "success"

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.body["data"]
        return data


@asynccontextmanager
async def registrar(
    broker_url: str,
    client_id: str | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
) -> AsyncIterator[Registrar]:
    """An MQTT connection of a not-yet-provisioned device, subscribed to its reply topic."""
    client_id = client_id or f"dev-{uuid.uuid4().hex[:12]}"
    settings = client_settings(broker_url, client_id, username=username, password=password)
    async with open_mqtt_client(settings, reconnect=False) as client:
        registrar = Registrar(client, client_id)
        await client.subscribe([(registrar.reply_topic, 1)])
        yield registrar


class Registrar:
    def __init__(self, client: MqttClient, client_id: str) -> None:
        self.client = client
        self.client_id = client_id

    @property
    def reply_topic(self) -> str:
        return f"locker/provisioning/reply/{self.client_id}"

    async def send(self, token: str, payload: bytes | None = None) -> None:
        raw = payload if payload is not None else json.dumps({"client_id": self.client_id})
        data = raw if isinstance(raw, bytes) else raw.encode()
        await self.client.publish(f"locker/register/{token}", data, qos=1)

    async def reply(self, within: float = 30.0) -> Reply:
        with trio.fail_after(within):
            async for message in self.client.messages():
                if message.topic == self.reply_topic:
                    return Reply(message.topic, json.loads(message.payload))
        raise AssertionError("MQTT client stopped before a reply arrived")

    async def register(self, token: str, within: float = 30.0) -> Reply:
        await self.send(token)
        return await self.reply(within)


async def register_once(broker_url: str, token: str, client_id: str | None = None) -> Reply:
    async with registrar(broker_url, client_id) as device:
        return await device.register(token)


# --------------------------------------------------------------------------- service


class FakeClock:
    """Wall clock plus an offset the test moves forward (token expiry without waiting)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@asynccontextmanager
async def lockerd_with_clock(
    settings: Settings, clock: Callable[[], datetime]
) -> AsyncIterator[RunningLockerd]:
    async with running_service(settings, clock=clock) as context:
        await gateway_subscribed(context)
        base = http_base(context)
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
            yield RunningLockerd(context, client, base)


async def metric_value(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    """The current value of one sample of /metrics (0 when absent)."""
    text = (await http.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def wait_for_metric(
    http: httpx.AsyncClient, name: str, at_least: float, within: float = 30.0, **labels: str
) -> float:
    """Wait until a counter on /metrics reaches ``at_least`` (state behind HTTP: polled)."""
    with trio.fail_after(within):
        while True:
            value = await metric_value(http, name, **labels)
            if value >= at_least:
                return value
            await trio.sleep(0.02)
