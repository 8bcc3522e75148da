"""Provisioning end to end: a real Mosquitto, the in-process service, devices over MQTT (§2).

Mosquitto here allows anonymous clients (go-auth is not installed on this box); the go-auth side
of each rule is checked against lockerd's /api/mosq endpoints in the same test, and
test_goauth_amqtt.py has a real broker enforcing lockerd's answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import trio

from tests.support.device import device
from tests.support.goauth import (
    FakeClock,
    Reply,
    acl_check,
    auth,
    lockerd_with_clock,
    metric_value,
    register_once,
    registrar,
    wait_for_metric,
)
from tests.support.mosquitto import MosquittoBroker, free_port
from tests.support.service import RunningLockerd, eventually, lockerd, test_settings

DROPPED = {"kind": "register", "outcome": "dropped"}
INBOUND = "lockerd_inbound_messages_total"
TOKEN_ERROR = "Invalid or expired provisioning token."
USED_ERROR = "Provisioning token has already been used."


async def history(svc: RunningLockerd, bank_id: str) -> list[dict[str, Any]]:
    response = await svc.admin_get(f"/api/admin/locker-banks/{bank_id}/events")
    assert response.status_code == 200
    events: list[dict[str, Any]] = response.json()
    return events


async def bank_view(svc: RunningLockerd, bank_id: str) -> dict[str, Any]:
    response = await svc.admin_get(f"/api/admin/locker-banks/{bank_id}")
    assert response.status_code == 200
    bank: dict[str, Any] = response.json()
    return bank


def durable_types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def assert_error(reply: Reply, message: str) -> None:
    assert reply.body == {"status": "error", "message": message}


async def heartbeat_with(broker: MosquittoBroker, reply: Reply, client_id: str) -> None:
    """Connect as the provisioned device and send one heartbeat."""
    async with device(
        broker.url,
        reply.data["locker_bank_id"],
        client_id=client_id,
        username=reply.data["mqtt_user"],
        password=reply.data["mqtt_password"],
    ) as dev:
        await dev.heartbeat()


async def wait_online(svc: RunningLockerd, bank_id: str) -> None:
    async def online() -> bool:
        return bool((await bank_view(svc, bank_id))["presence"] == "online")

    await eventually(online)


# --------------------------------------------------------------------------- success


async def test_provisioning_success(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        assert (await bank_view(svc, bank["id"]))["provisioned_at"] is None
        client_id = f"box-{uuid.uuid4().hex[:8]}"
        reply = await register_once(mosquitto.url, bank["provisioning_token"], client_id)
        assert reply.topic == f"locker/provisioning/reply/{client_id}"
        assert reply.body["status"] == "success"
        assert set(reply.body) == {"status", "data"}
        assert set(reply.data) == {"locker_bank_id", "mqtt_user", "mqtt_password"}
        assert reply.data["locker_bank_id"] == bank["id"]
        assert all(isinstance(value, str) and value for value in reply.data.values())
        assert len(reply.data["mqtt_password"]) >= 32
        view = await bank_view(svc, bank["id"])
        assert view["provisioned_at"] is not None
        # the issued credentials pass go-auth; the plaintext secret is stored nowhere
        assert await auth(svc.http, reply.data["mqtt_user"], reply.data["mqtt_password"]) == 200
        events = await history(svc, bank["id"])
        # the go-auth login above also recorded that the credentials are in use
        assert durable_types(events)[-2:] == ["LockerBankProvisioned", "DeviceCredentialsUsed"]
        assert events[-2]["data"]["client_id"] == client_id
        dumped = json.dumps(events)
        assert reply.data["mqtt_password"] not in dumped
        assert bank["provisioning_token"] not in dumped
        assert await metric_value(svc.http, INBOUND, kind="register", outcome="processed") == 1
        # the device goes on with its issued credentials
        await heartbeat_with(mosquitto, reply, client_id)
        await wait_online(svc, bank["id"])


# --------------------------------------------------------------------------- refusals


async def test_unknown_token_gets_the_error_reply_and_changes_nothing(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        before = await history(svc, bank["id"])
        reply = await register_once(mosquitto.url, "no-such-token")
        assert_error(reply, TOKEN_ERROR)
        assert await history(svc, bank["id"]) == before
        assert (await bank_view(svc, bank["id"]))["provisioned_at"] is None
        # the bank's real token still works afterwards
        assert (await register_once(mosquitto.url, bank["provisioning_token"])).ok


async def test_used_token_is_refused_and_the_bank_keeps_its_credentials(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        token = bank["provisioning_token"]
        first = await register_once(mosquitto.url, token, "box-a")
        assert first.ok
        # a different device cannot redeem it (single use)
        assert_error(await register_once(mosquitto.url, token, "box-b"), USED_ERROR)
        # nor can the same device once its credentials were used
        await heartbeat_with(mosquitto, first, "box-a")
        await wait_online(svc, bank["id"])
        assert_error(await register_once(mosquitto.url, token, "box-a"), USED_ERROR)
        events = await history(svc, bank["id"])
        assert durable_types(events).count("LockerBankProvisioned") == 1
        user, password = first.data["mqtt_user"], first.data["mqtt_password"]
        assert await auth(svc.http, user, password) == 200


async def test_expired_token_is_refused(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    clock = FakeClock()
    settings = test_settings(
        mosquitto.url, tmp_path / "l.db", LOCKERD_PROVISIONING_TOKEN_TTL="3600"
    )
    async with lockerd_with_clock(settings, clock) as svc:
        bank = await svc.create_bank()
        clock.advance(3600)
        assert_error(await register_once(mosquitto.url, bank["provisioning_token"]), TOKEN_ERROR)
        view = await bank_view(svc, bank["id"])
        assert view["provisioned_at"] is None
        events = await history(svc, bank["id"])
        assert "LockerBankProvisioned" not in durable_types(events)
        assert events[-1]["type"] == "ProvisioningFailed"
        assert events[-1]["data"]["reason"] == "token_expired"
        # a fresh token from the admin works
        rotated = await svc.admin_post(f"/api/admin/locker-banks/{bank['id']}/provisioning-token")
        assert rotated.status_code == 200
        assert (await register_once(mosquitto.url, rotated.json()["provisioning_token"])).ok


async def test_token_one_second_before_expiry_still_works(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    clock = FakeClock()
    settings = test_settings(
        mosquitto.url, tmp_path / "l.db", LOCKERD_PROVISIONING_TOKEN_TTL="3600"
    )
    async with lockerd_with_clock(settings, clock) as svc:
        bank = await svc.create_bank()
        clock.advance(3599)
        assert (await register_once(mosquitto.url, bank["provisioning_token"])).ok


# --------------------------------------------------------------------------- malformed


async def test_malformed_registrations_are_dropped_and_counted(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        token = bank["provisioning_token"]
        before = await history(svc, bank["id"])
        payloads = [
            b"{}",
            b'{"clientid": "box-1"}',
            b'{"client_id": 5}',
            b'{"client_id": null}',
            b"not json",
            b"",
            b'["box-1"]',
            json.dumps({"client_id": "a/b"}).encode(),
            json.dumps({"client_id": "+"}).encode(),
            json.dumps({"client_id": "#"}).encode(),
            json.dumps({"client_id": "box+1"}).encode(),
            json.dumps({"client_id": ""}).encode(),
            json.dumps({"client_id": "x" * 129}).encode(),
            json.dumps({"client_id": "box-1", "padding": "x" * 20_000}).encode(),
        ]
        async with registrar(mosquitto.url, "observer") as observer:
            await observer.client.subscribe([("locker/provisioning/reply/#", 1)])
            for payload in payloads:
                await observer.send(token, payload)
            await wait_for_metric(
                svc.http, INBOUND, len(payloads), kind="register", outcome="dropped"
            )
            # a well-formed registration afterwards is the barrier: its reply is the only one
            await observer.send("no-such-token")
            with trio.fail_after(10):
                replies = []
                async for message in observer.client.messages():
                    replies.append(message.topic)
                    break
        assert replies == ["locker/provisioning/reply/observer"]
        assert await metric_value(svc.http, INBOUND, **DROPPED) == len(payloads) + 1
        assert await history(svc, bank["id"]) == before
        # the token was not consumed and the service is healthy
        assert (await svc.http.get("/healthz")).status_code == 200
        assert (await register_once(mosquitto.url, token)).ok


# --------------------------------------------------------------------------- rotation


async def test_rotation_voids_the_old_token(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        old = bank["provisioning_token"]
        rotated = await svc.admin_post(f"/api/admin/locker-banks/{bank['id']}/provisioning-token")
        assert rotated.status_code == 200
        new = rotated.json()["provisioning_token"]
        assert new != old
        assert_error(await register_once(mosquitto.url, old), TOKEN_ERROR)
        assert (await bank_view(svc, bank["id"]))["provisioned_at"] is None
        assert (await register_once(mosquitto.url, new)).ok
        missing = await svc.admin_post(f"/api/admin/locker-banks/{uuid.uuid4()}/provisioning-token")
        assert missing.status_code == 404


async def test_reprovisioning_revokes_the_old_credentials(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        first = await register_once(mosquitto.url, bank["provisioning_token"], "box-a")
        assert first.ok
        await heartbeat_with(mosquitto, first, "box-a")
        await wait_online(svc, bank["id"])
        old_user, old_password = first.data["mqtt_user"], first.data["mqtt_password"]
        assert await auth(svc.http, old_user, old_password) == 200
        # the used token is void after a rotation, even for the lost-reply rule
        rotated = await svc.admin_post(f"/api/admin/locker-banks/{bank['id']}/provisioning-token")
        assert_error(
            await register_once(mosquitto.url, bank["provisioning_token"], "box-a"), TOKEN_ERROR
        )
        assert await auth(svc.http, old_user, old_password) == 200
        second = await register_once(mosquitto.url, rotated.json()["provisioning_token"], "box-b")
        assert second.ok
        assert second.data["locker_bank_id"] == bank["id"]
        assert second.data["mqtt_user"] != old_user
        assert await auth(svc.http, old_user, old_password) == 403
        state_topic = f"locker/{bank['id']}/state"
        assert await acl_check(svc.http, old_user, state_topic, 2) == 403
        new_user, new_password = second.data["mqtt_user"], second.data["mqtt_password"]
        assert await auth(svc.http, new_user, new_password) == 200
        assert await acl_check(svc.http, new_user, state_topic, 2) == 200
        events = await history(svc, bank["id"])
        provisioned = [ev for ev in events if ev["type"] == "LockerBankProvisioned"]
        assert [ev["data"]["mqtt_user"] for ev in provisioned] == [old_user, new_user]
        assert provisioned[-1]["data"]["previous_mqtt_user"] == old_user


# --------------------------------------------------------------------------- lost reply


async def test_lost_reply_same_device_gets_fresh_credentials_until_they_are_used(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        token = bank["provisioning_token"]
        lost = await register_once(mosquitto.url, token, "box-a")
        assert lost.ok  # pretend the device never saw this reply
        again = await register_once(mosquitto.url, token, "box-a")
        assert again.ok
        assert again.data["locker_bank_id"] == bank["id"]
        assert again.data["mqtt_user"] != lost.data["mqtt_user"]
        assert again.data["mqtt_password"] != lost.data["mqtt_password"]
        # only the latest credentials work
        assert await auth(svc.http, lost.data["mqtt_user"], lost.data["mqtt_password"]) == 403
        # another device still cannot use the token
        assert_error(await register_once(mosquitto.url, token, "box-b"), USED_ERROR)
        # after a heartbeat with the new credentials the token is used up
        await heartbeat_with(mosquitto, again, "box-a")
        await wait_online(svc, bank["id"])
        assert_error(await register_once(mosquitto.url, token, "box-a"), USED_ERROR)
        assert await auth(svc.http, again.data["mqtt_user"], again.data["mqtt_password"]) == 200


async def test_lost_reply_rule_ends_when_the_broker_authenticates_the_device(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """A go-auth /auth success with the issued credentials proves the reply arrived."""
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        token = bank["provisioning_token"]
        reply = await register_once(mosquitto.url, token, "box-a")
        assert await auth(svc.http, reply.data["mqtt_user"], reply.data["mqtt_password"]) == 200

        async def noted() -> bool:
            return "DeviceCredentialsUsed" in durable_types(await history(svc, bank["id"]))

        await eventually(noted)
        assert_error(await register_once(mosquitto.url, token, "box-a"), USED_ERROR)
        assert await auth(svc.http, reply.data["mqtt_user"], reply.data["mqtt_password"]) == 200


# --------------------------------------------------------------------------- rate limit


async def test_repeated_wrong_tokens_are_rate_limited_per_client_id(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        limit = svc.context.gateway.registration_failures.limit
        async with registrar(mosquitto.url, "guesser") as guesser:
            for attempt in range(limit):
                assert_error(await guesser.register(f"guess-{attempt}"), TOKEN_ERROR)
            limited = await guesser.register("guess-more")
            assert limited.body["status"] == "error"
            assert "Too many" in limited.body["message"]
            # while blocked, even the right token is refused for this client id
            blocked = await guesser.register(bank["provisioning_token"])
            assert "Too many" in blocked.body["message"]
        assert (await bank_view(svc, bank["id"]))["provisioned_at"] is None
        # other devices are not affected
        assert (await register_once(mosquitto.url, bank["provisioning_token"], "honest")).ok


# --------------------------------------------------------------------------- CLI


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "lockerd.cli", "--log-level", "warning", "provision-test", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_provision_test_command_against_the_running_service(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        bank = await svc.create_bank()
        token = bank["provisioning_token"]
        common = [
            "--broker",
            mosquitto.url,
            "--provisioning-user",
            "provisioning_client",
            "--provisioning-password",
            "provisioning-password",
            "--timeout",
            "10",
        ]
        result = await run_cli("--token", token, "--client-id", "cli-box", *common)
        out = result.stdout.decode()
        assert result.returncode == 0, (out, result.stderr.decode())
        for step in range(1, 7):
            assert f"[{step}/6]" in out
        assert f"locker_bank_id={bank['id']}" in out
        assert "locker/provisioning/reply/cli-box" in out
        assert '"state": "heartbeat"' in out
        assert "provision-test: OK" in out
        assert token not in out  # the token is masked
        await wait_online(svc, bank["id"])
        assert (await bank_view(svc, bank["id"]))["provisioned_at"] is not None
        # the token is consumed: a second run fails with the backend's reason
        again = await run_cli("--token", token, "--client-id", "cli-box", *common)
        assert again.returncode == 1
        assert USED_ERROR in again.stderr.decode()
        unknown = await run_cli("--token", "nope", *common)
        assert unknown.returncode == 1
        assert TOKEN_ERROR in unknown.stderr.decode()


async def test_provision_test_command_failures(tmp_path: Path) -> None:
    dead = await run_cli(
        "--token", "t", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--timeout", "2"
    )
    assert dead.returncode == 1
    assert "FAILED" in dead.stderr.decode()
    usage = await run_cli("--token", "a/b", "--broker", "mqtt://127.0.0.1:1")
    assert usage.returncode == 2
    bad_url = await run_cli("--token", "t", "--broker", "http://x")
    assert bad_url.returncode == 2


async def test_provision_test_command_times_out_without_a_backend(
    mosquitto: MosquittoBroker,
) -> None:
    result = await run_cli("--token", "t", "--broker", mosquitto.url, "--timeout", "1")
    assert result.returncode == 1
    assert "no answer within 1 s" in result.stderr.decode()
