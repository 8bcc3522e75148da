"""/api/mosq/{auth,superuser,acl} with the exact bodies mosquitto-go-auth sends (contract §3).

Bodies are built as go-auth 3.0.0 marshals them (tests/support/goauth.py), in both its params
modes; every row of the ACL table is checked allowed and denied against a running lockerd with
real provisioned device users.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.goauth import (
    MODES,
    Mode,
    acl_check,
    auth,
    goauth,
    metric_value,
    register_once,
)
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import (
    MOSQ_SECRET,
    RunningLockerd,
    lockerd,
    test_settings,
)

BACKEND_USER = "lockerd-backend"
BACKEND_PASSWORD = "backend-password"
PROVISIONING_USER = "provisioning_client"
PROVISIONING_PASSWORD = "provisioning-password"


def backend_url(broker: MosquittoBroker) -> str:
    return f"mqtt://{BACKEND_USER}:{BACKEND_PASSWORD}@{broker.host}:{broker.port}"


@dataclasses.dataclass
class AgentLogin:
    tenant_id: str
    agent_id: str
    user: str
    password: str


async def registered_agent(svc: RunningLockerd) -> AgentLogin:
    """A tenant and one metrics agent of it, created through the admin API."""
    tenant = await svc.admin_post("/api/admin/tenants", {"name": "City"})
    assert tenant.status_code == 201, tenant.text
    tenant_id = tenant.json()["id"]
    agent = await svc.admin_post(f"/api/admin/tenants/{tenant_id}/agents", {"name": "probe"})
    assert agent.status_code == 201, agent.text
    body = agent.json()
    return AgentLogin(tenant_id, body["agent_id"], body["mqtt_user"], body["mqtt_password"])


@dataclasses.dataclass
class Device:
    bank_id: str
    user: str
    password: str


async def provisioned_device(svc: RunningLockerd, broker: MosquittoBroker) -> Device:
    bank = await svc.create_bank()
    reply = await register_once(broker.url, bank["provisioning_token"])
    assert reply.ok, reply.body
    return Device(
        reply.data["locker_bank_id"], reply.data["mqtt_user"], reply.data["mqtt_password"]
    )


# --------------------------------------------------------------------------- /auth


@pytest.mark.parametrize("mode", MODES)
async def test_auth_accepts_each_known_user_and_nothing_else(
    mosquitto: MosquittoBroker, tmp_path: Path, mode: Mode
) -> None:
    settings = test_settings(backend_url(mosquitto), tmp_path / "l.db")
    async with lockerd(settings) as svc:
        device = await provisioned_device(svc, mosquitto)
        agent = await registered_agent(svc)
        http = svc.http
        assert await auth(http, BACKEND_USER, BACKEND_PASSWORD, mode) == 200
        assert await auth(http, BACKEND_USER, "wrong", mode) == 403
        assert await auth(http, PROVISIONING_USER, PROVISIONING_PASSWORD, mode) == 200
        assert await auth(http, PROVISIONING_USER, "wrong", mode) == 403
        assert await auth(http, device.user, device.password, mode) == 200
        assert await auth(http, device.user, device.password + "x", mode) == 403
        assert await auth(http, device.user, "", mode) == 403
        assert await auth(http, agent.user, agent.password, mode) == 200
        assert await auth(http, agent.user, "wrong", mode) == 403
        assert await auth(http, "stranger", "whatever", mode) == 403
        assert await auth(http, "", BACKEND_PASSWORD, mode) == 403
        # the device's password does not work under another name
        assert await auth(http, PROVISIONING_USER, device.password, mode) == 403


async def test_auth_with_amqtt_field_name_client_id(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(backend_url(mosquitto), tmp_path / "l.db")) as svc:
        device = await provisioned_device(svc, mosquitto)
        fields = {"username": device.user, "password": device.password, "client_id": "dev1"}
        assert await goauth(svc.http, "auth", fields) == 200


async def test_a_broken_agent_registry_denies(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(username: str) -> tuple[str, str, str] | None:
        raise RuntimeError("registry bug")

    async with lockerd(test_settings(backend_url(mosquitto), tmp_path / "l.db")) as svc:
        agent = await registered_agent(svc)
        topic = f"metrics/{agent.tenant_id}/{agent.agent_id}/temperature"
        assert await auth(svc.http, agent.user, agent.password) == 200
        monkeypatch.setattr(svc.context.agents, "credential", broken)
        assert await auth(svc.http, agent.user, agent.password) == 403
        assert await acl_check(svc.http, agent.user, topic, 2) == 403


async def test_unset_or_empty_passwords_never_match(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    settings = test_settings(mosquitto.url, tmp_path / "l.db", LOCKERD_PROVISIONING_PASSWORD="")
    async with lockerd(settings) as svc:
        # LOCKERD_MQTT_URL without credentials: there is no backend user at all
        assert await auth(svc.http, PROVISIONING_USER, "") == 403
        assert await auth(svc.http, PROVISIONING_USER, "provisioning-password") == 403
        assert await goauth(svc.http, "superuser", {"username": ""}) == 403
    unset = dataclasses.replace(settings, provisioning_password=None)
    async with lockerd(unset) as svc:
        assert await auth(svc.http, PROVISIONING_USER, "") == 403


# --------------------------------------------------------------------------- /superuser


@pytest.mark.parametrize("mode", MODES)
async def test_superuser_is_the_backend_user_only(
    mosquitto: MosquittoBroker, tmp_path: Path, mode: Mode
) -> None:
    async with lockerd(test_settings(backend_url(mosquitto), tmp_path / "l.db")) as svc:
        device = await provisioned_device(svc, mosquitto)
        agent = await registered_agent(svc)
        for username, expected in [
            (BACKEND_USER, 200),
            (PROVISIONING_USER, 403),
            (device.user, 403),
            (agent.user, 403),
            ("stranger", 403),
            ("", 403),
            (BACKEND_USER + " ", 403),
        ]:
            status = await goauth(svc.http, "superuser", {"username": username}, mode)
            assert status == expected, username


# --------------------------------------------------------------------------- /acl


def acl_rows(
    own: Device, other: Device, agent: AgentLogin
) -> list[tuple[str, str, int, int, str | None]]:
    """(username, topic, acc, expected status, clientid) for every row of contract §3."""
    bank, other_bank = own.bank_id, other.bank_id
    metrics = f"metrics/{agent.tenant_id}/{agent.agent_id}"
    rows: list[tuple[str, str, int, int, str | None]] = [
        # backend: everything
        (BACKEND_USER, "#", 4, 200, None),
        (BACKEND_USER, "locker/+/state", 4, 200, None),
        (BACKEND_USER, f"locker/{bank}/command", 2, 200, None),
        (BACKEND_USER, f"locker/{bank}/state", 1, 200, None),
        (BACKEND_USER, "server/status", 2, 200, None),
        # provisioning user
        (PROVISIONING_USER, "locker/register/sometoken", 2, 200, "box-1"),
        (PROVISIONING_USER, "locker/register/", 2, 403, "box-1"),
        (PROVISIONING_USER, "locker/register/+", 2, 403, "box-1"),
        (PROVISIONING_USER, "locker/register/a/b", 2, 403, "box-1"),
        (PROVISIONING_USER, "locker/provisioning/reply/box-1", 2, 403, "box-1"),
        (PROVISIONING_USER, "locker/provisioning/reply/box-1", 4, 200, "box-1"),
        (PROVISIONING_USER, "locker/provisioning/reply/box-1", 1, 200, "box-1"),
        (PROVISIONING_USER, "locker/provisioning/reply/box-2", 4, 403, "box-1"),
        (PROVISIONING_USER, "locker/provisioning/reply/box-2", 1, 403, "box-1"),
        (PROVISIONING_USER, "locker/provisioning/reply/+", 4, 403, "box-1"),
        (PROVISIONING_USER, "locker/provisioning/reply/#", 4, 403, "box-1"),
        (PROVISIONING_USER, "locker/provisioning/reply/+", 4, 403, "+"),
        (PROVISIONING_USER, "server/status", 4, 403, "box-1"),
        (PROVISIONING_USER, f"locker/{bank}/state", 2, 403, "box-1"),
        # device user
        (own.user, f"locker/{bank}/state", 2, 200, None),
        (own.user, f"locker/{bank}/response", 2, 200, None),
        (own.user, f"locker/{bank}/event", 2, 200, None),
        (own.user, f"locker/{bank}/status", 2, 200, None),
        (own.user, f"locker/{bank}/command", 2, 403, None),
        (own.user, f"locker/{other_bank}/state", 2, 403, None),
        (own.user, "locker/register/x", 2, 403, None),
        (own.user, "server/status", 2, 403, None),
        (own.user, f"locker/{bank}/command", 4, 200, None),
        (own.user, f"locker/{bank}/command", 1, 200, None),
        (own.user, "server/status", 4, 200, None),
        (own.user, "server/status", 1, 200, None),
        (own.user, f"locker/{other_bank}/command", 4, 403, None),
        (own.user, f"locker/{other_bank}/command", 1, 403, None),
        (own.user, "locker/+/command", 4, 403, None),
        (own.user, f"locker/{bank}/#", 4, 403, None),
        (own.user, "#", 4, 403, None),
        (own.user, f"locker/{bank}/state", 4, 403, None),
        (other.user, f"locker/{other_bank}/state", 2, 200, None),
        (other.user, f"locker/{bank}/state", 2, 403, None),
        # metrics agent
        (agent.user, f"{metrics}/temperature", 2, 200, None),
        (agent.user, f"{metrics}/a/b", 2, 403, None),
        (agent.user, f"{metrics}/+", 2, 403, None),
        (agent.user, f"metrics/{agent.tenant_id}/other-agent/temperature", 2, 403, None),
        (agent.user, f"{metrics}/temperature", 4, 403, None),
        (agent.user, f"{metrics}/temperature", 1, 403, None),
        (agent.user, "server/status", 4, 403, None),
        # anyone else
        ("stranger", "server/status", 4, 403, None),
        ("stranger", "locker/register/abc", 2, 403, None),
        ("stranger", f"locker/{bank}/state", 2, 403, None),
        ("", "server/status", 4, 403, None),
        # acc values other than 1, 2, 4
        (BACKEND_USER, "server/status", 3, 403, None),
        (own.user, f"locker/{bank}/state", 3, 403, None),
        (own.user, f"locker/{bank}/command", 8, 403, None),
        (own.user, f"locker/{bank}/command", 0, 403, None),
    ]
    return rows


@pytest.mark.parametrize("mode", MODES)
async def test_acl_table_row_by_row(mosquitto: MosquittoBroker, tmp_path: Path, mode: Mode) -> None:
    async with lockerd(test_settings(backend_url(mosquitto), tmp_path / "l.db")) as svc:
        own = await provisioned_device(svc, mosquitto)
        other = await provisioned_device(svc, mosquitto)
        agent = await registered_agent(svc)
        failures = []
        for username, topic, acc, expected, clientid in acl_rows(own, other, agent):
            status = await acl_check(svc.http, username, topic, acc, mode, clientid)
            if status != expected:
                failures.append((username, topic, acc, clientid, status, expected))
        assert failures == []


async def test_acl_provisioning_reply_with_amqtt_client_id(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(backend_url(mosquitto), tmp_path / "l.db")) as svc:
        base = {"username": PROVISIONING_USER, "topic": "locker/provisioning/reply/box-1", "acc": 4}
        assert await goauth(svc.http, "acl", {**base, "client_id": "box-1"}) == 200
        assert await goauth(svc.http, "acl", {**base, "client_id": "box-2"}) == 403
        # both names present and disagreeing: malformed, denied
        both = {**base, "client_id": "box-1", "clientid": "box-2"}
        assert await goauth(svc.http, "acl", both) == 403


async def test_deprecated_status_topic_follows_the_setting(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    settings = test_settings(
        backend_url(mosquitto), tmp_path / "l.db", LOCKERD_ACCEPT_STATUS_TOPIC="false"
    )
    async with lockerd(settings) as svc:
        device = await provisioned_device(svc, mosquitto)
        status_topic = f"locker/{device.bank_id}/status"
        assert await acl_check(svc.http, device.user, status_topic, 2) == 403
        state_topic = f"locker/{device.bank_id}/state"
        assert await acl_check(svc.http, device.user, state_topic, 2) == 200


async def test_exact_documented_go_auth_bodies(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    """The literal request bodies from research/goauth.md §1, with a provisioned ``dev1``."""
    async with lockerd(test_settings(backend_url(mosquitto), tmp_path / "l.db")) as svc:
        device = await provisioned_device(svc, mosquitto)
        user, pw, bank = device.user, device.password, device.bank_id
        json_headers = {"Content-Type": "application/json", "User-Agent": "mosquitto-2.0.11"}
        form_headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "Go-http-client/1.1",
        }
        cases = [
            ("auth", f'{{"clientid":"dev1","password":"{pw}","username":"{user}"}}', "j", 200),
            ("auth", f"clientid=dev1&password={pw}&username={user}", "f", 200),
            ("superuser", f'{{"username":"{user}"}}', "j", 403),
            ("superuser", f"username={user}", "f", 403),
            (
                "acl",
                f'{{"acc":4,"clientid":"dev1","topic":"locker/{bank}/command","username":"{user}"}}',
                "j",
                200,
            ),
            (
                "acl",
                f"acc=4&clientid=dev1&topic=locker%2F{bank}%2Fcommand&username={user}",
                "f",
                200,
            ),
            (
                "acl",
                f'{{"acc":2,"clientid":"dev1","topic":"locker/{bank}/command","username":"{user}"}}',
                "j",
                403,
            ),
        ]
        for endpoint, body, kind, expected in cases:
            response = await svc.http.post(
                f"/api/mosq/{endpoint}?mosq_secret={MOSQ_SECRET}",
                content=body.encode(),
                headers=json_headers if kind == "j" else form_headers,
            )
            assert response.status_code == expected, (endpoint, body)
            assert response.json() == {"ok": expected == 200}


# --------------------------------------------------------------------------- secret, malformed


async def test_wrong_missing_or_unset_secret_denies(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    settings = test_settings(backend_url(mosquitto), tmp_path / "l.db")
    async with lockerd(settings) as svc:
        backend = {"clientid": "x", "password": BACKEND_PASSWORD, "username": BACKEND_USER}
        superuser = {"username": BACKEND_USER}
        acl = {"acc": 4, "clientid": "x", "topic": "#", "username": BACKEND_USER}
        for endpoint, fields in (("auth", backend), ("superuser", superuser), ("acl", acl)):
            assert await goauth(svc.http, endpoint, fields) == 200
            for secret in (None, "", "wrong", MOSQ_SECRET + "x", MOSQ_SECRET.upper()):
                assert await goauth(svc.http, endpoint, fields, secret=secret) == 403, secret
    async with lockerd(dataclasses.replace(settings, mosq_secret=None)) as svc:
        for endpoint, fields in (("auth", backend), ("superuser", superuser), ("acl", acl)):
            assert await goauth(svc.http, endpoint, fields) == 403
            assert await goauth(svc.http, endpoint, fields, secret=None) == 403
            assert await goauth(svc.http, endpoint, fields, secret="") == 403


MALFORMED: list[tuple[str, bytes, str]] = [
    ("acl", b"{not json", "application/json"),
    ("acl", b"[1, 2]", "application/json"),
    ("acl", b'"text"', "application/json"),
    ("acl", b"", "application/json"),
    ("acl", b"\xff\xfe\x00garbage", "application/json"),
    (
        "acl",
        b'{"acc":"4","clientid":"x","topic":"#","username":"lockerd-backend"}',
        "application/json",
    ),
    (
        "acl",
        b'{"acc":true,"clientid":"x","topic":"#","username":"lockerd-backend"}',
        "application/json",
    ),
    (
        "acl",
        b'{"acc":4.0,"clientid":"x","topic":"#","username":"lockerd-backend"}',
        "application/json",
    ),
    ("acl", b'{"clientid":"x","topic":"#","username":"lockerd-backend"}', "application/json"),
    ("acl", b'{"acc":4,"clientid":"x","username":"lockerd-backend"}', "application/json"),
    ("acl", b'{"acc":4,"clientid":"x","topic":5,"username":"lockerd-backend"}', "application/json"),
    (
        "acl",
        b'{"acc":4,"clientid":"x","topic":"#","username":["lockerd-backend"]}',
        "application/json",
    ),
    (
        "acl",
        b"acc=four&clientid=x&topic=%23&username=lockerd-backend",
        "application/x-www-form-urlencoded",
    ),
    (
        "acl",
        b"acc=-4&clientid=x&topic=%23&username=lockerd-backend",
        "application/x-www-form-urlencoded",
    ),
    (
        "acl",
        b"acc=4&acc=4&clientid=x&topic=%23&username=lockerd-backend",
        "application/x-www-form-urlencoded",
    ),
    (
        "acl",
        b"acc=4&clientid=x&topic=%23&username=lockerd-backend&username=x",
        "application/x-www-form-urlencoded",
    ),
    ("acl", b"acc=4&&&clientid", "application/x-www-form-urlencoded"),
    (
        "acl",
        b"acc=%ff&clientid=x&topic=%23&username=lockerd-backend",
        "application/x-www-form-urlencoded",
    ),
    (
        "acl",
        b"acc=99999999999999999999&clientid=x&topic=%23&username=lockerd-backend",
        "application/x-www-form-urlencoded",
    ),
    ("auth", b'{"username":"lockerd-backend"}', "application/json"),
    ("auth", b'{"username":"lockerd-backend","password":null}', "application/json"),
    ("auth", b'{"username":"lockerd-backend","password":12}', "application/json"),
    ("auth", b"username=lockerd-backend", "application/x-www-form-urlencoded"),
    ("superuser", b"{}", "application/json"),
    ("superuser", b'{"username":null}', "application/json"),
    ("superuser", b"", "application/x-www-form-urlencoded"),
]


async def test_malformed_bodies_are_denied_never_an_error(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(backend_url(mosquitto), tmp_path / "l.db")) as svc:
        for endpoint, body, content_type in MALFORMED:
            response = await svc.http.post(
                f"/api/mosq/{endpoint}?mosq_secret={MOSQ_SECRET}",
                content=body,
                headers={"Content-Type": content_type, "User-Agent": "mosquitto-2.0.11"},
            )
            assert response.status_code == 403, (endpoint, body, response.text)
        # larger than the server's body limit
        huge = json.dumps(
            {"acc": 4, "clientid": "x", "topic": "a" * 70_000, "username": BACKEND_USER}
        ).encode()
        response = await svc.http.post(
            f"/api/mosq/acl?mosq_secret={MOSQ_SECRET}",
            content=huge,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 403
        # without a Content-Type the body is sniffed: a JSON object or a form
        for body in (
            b'{"acc":4,"clientid":"x","topic":"#","username":"lockerd-backend"}',
            b"acc=4&clientid=x&topic=%23&username=lockerd-backend",
        ):
            response = await svc.http.post(
                f"/api/mosq/acl?mosq_secret={MOSQ_SECRET}", content=body, headers={}
            )
            assert response.status_code == 200, body
        # GET is not how go-auth is configured here: a 4xx, never a 5xx
        response = await svc.http.get(f"/api/mosq/acl?mosq_secret={MOSQ_SECRET}")
        assert 400 <= response.status_code < 500
        health = await svc.http.get("/healthz")
        assert health.status_code == 200


async def test_checks_are_counted_in_metrics(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with lockerd(test_settings(backend_url(mosquitto), tmp_path / "l.db")) as svc:
        name = "lockerd_goauth_checks_total"
        assert await metric_value(svc.http, name, endpoint="acl", result="allow") == 0
        fields: dict[str, Any] = {"acc": 4, "clientid": "x", "topic": "#"}
        for _ in range(3):
            await goauth(svc.http, "acl", {**fields, "username": BACKEND_USER})
        for _ in range(2):
            await goauth(svc.http, "acl", {**fields, "username": "stranger"})
        await goauth(svc.http, "acl", {**fields, "username": BACKEND_USER}, secret="wrong")
        await goauth(svc.http, "auth", {"username": "x", "password": "y"})
        await goauth(svc.http, "superuser", {"username": BACKEND_USER})
        assert await metric_value(svc.http, name, endpoint="acl", result="allow") == 3
        assert await metric_value(svc.http, name, endpoint="acl", result="deny") == 3
        assert await metric_value(svc.http, name, endpoint="auth", result="deny") == 1
        assert await metric_value(svc.http, name, endpoint="superuser", result="allow") == 1


async def test_real_metrics_agents_from_the_admin_api(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Agents created through ``POST /api/admin/tenants/{id}/agents`` (the metrics feature's
    registry in ``agents``) log in and may publish only their own metrics."""
    async with lockerd(test_settings(backend_url(mosquitto), tmp_path / "l.db")) as svc:
        tenant = await svc.admin_post("/api/admin/tenants", {"name": "Acme"})
        assert tenant.status_code == 201, tenant.text
        tenant_id = tenant.json()["id"]
        created = await svc.admin_post(f"/api/admin/tenants/{tenant_id}/agents", {"name": "a1"})
        assert created.status_code == 201, created.text
        agent = created.json()
        user, password, agent_id = agent["mqtt_user"], agent["mqtt_password"], agent["agent_id"]
        assert await auth(svc.http, user, password) == 200
        assert await auth(svc.http, user, password + "x") == 403
        own = f"metrics/{tenant_id}/{agent_id}/temperature"
        assert await acl_check(svc.http, user, own, 2) == 200
        assert await acl_check(svc.http, user, own, 4) == 403
        assert await acl_check(svc.http, user, f"metrics/{tenant_id}/other/temperature", 2) == 403
        assert await acl_check(svc.http, user, f"metrics/{tenant_id}/{agent_id}/#", 2) == 403
        assert await goauth(svc.http, "superuser", {"username": user}) == 403
