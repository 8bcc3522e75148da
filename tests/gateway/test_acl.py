"""Contract §3 as a pure function: every row, allowed and denied, wildcards, acc codes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway import acl
from gateway.acl import READ, SUBSCRIBE, WRITE, Identity

BANK = "0b6d3c8e-5a1f-4c2b-9d7e-1f2a3b4c5d6e"
OTHER_BANK = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
TENANT = "11111111-2222-4333-8444-555555555555"
AGENT = "agent-7"

BACKEND = Identity("backend", "lockerd-backend")
PROVISIONING = Identity("provisioning", "dev-abc")
DEVICE = Identity("device", "dev-abc", bank_id=BANK)
METRICS_AGENT = Identity("agent", "agent-client", tenant_id=TENANT, agent_id=AGENT)


@dataclass(frozen=True)
class Cred:
    bank_id: str


def identify(username: str | None, client_id: str | None = "c1") -> Identity:
    agents = {"agent-user": (TENANT, AGENT, "hash")}
    return acl.identify(
        username,
        client_id,
        backend_user="lockerd-backend",
        provisioning_user="provisioning_client",
        devices={"dev-user": Cred(BANK)},
        agent=agents.get,
    )


# --------------------------------------------------------------------------- identify


def test_identify_each_role() -> None:
    assert identify("lockerd-backend").role == "backend"
    assert identify("provisioning_client", "box-1") == Identity("provisioning", "box-1")
    assert identify("dev-user") == Identity("device", "c1", bank_id=BANK)
    assert identify("agent-user") == Identity("agent", "c1", tenant_id=TENANT, agent_id=AGENT)
    assert identify("stranger") == acl.NOBODY
    assert identify("") == acl.NOBODY
    assert identify(None) == acl.NOBODY


def test_identify_without_agents_registry_or_backend_user() -> None:
    identity = acl.identify(
        "agent-user", "c", backend_user=None, provisioning_user="p", devices={}, agent=None
    )
    assert identity == acl.NOBODY
    # no backend user configured: an empty username never becomes the superuser
    assert acl.identify("", "c", backend_user="", provisioning_user="p", devices={}) == acl.NOBODY


# --------------------------------------------------------------------------- backend


@pytest.mark.parametrize("acc", [READ, WRITE, SUBSCRIBE])
@pytest.mark.parametrize("topic", ["#", "locker/+/state", f"locker/{BANK}/command", "$SYS/x"])
def test_backend_may_do_everything(topic: str, acc: int) -> None:
    assert acl.allowed(BACKEND, topic, acc)


# --------------------------------------------------------------------------- provisioning


@pytest.mark.parametrize("token", ["abc", "tok_-en.123", "x" * 200])
def test_provisioning_may_publish_a_register_with_one_level(token: str) -> None:
    assert acl.allowed(PROVISIONING, f"locker/register/{token}", WRITE)


@pytest.mark.parametrize(
    "topic",
    [
        "locker/register/",
        "locker/register",
        "locker/register/a/b",
        "locker/register/+",
        "locker/register/#",
        "locker/register/a+b",
        "locker/register/a#",
        "locker/register/a\x00b",
        "/locker/register/abc",
        "Locker/register/abc",
        "locker/provisioning/reply/dev-abc",
        f"locker/{BANK}/state",
        "server/status",
        "#",
    ],
)
def test_provisioning_may_not_publish_elsewhere(topic: str) -> None:
    assert not acl.allowed(PROVISIONING, topic, WRITE)


@pytest.mark.parametrize("acc", [READ, SUBSCRIBE])
def test_provisioning_reads_only_its_own_reply_topic(acc: int) -> None:
    assert acl.allowed(PROVISIONING, "locker/provisioning/reply/dev-abc", acc)
    for topic in [
        "locker/provisioning/reply/dev-other",
        "locker/provisioning/reply/+",
        "locker/provisioning/reply/#",
        "locker/provisioning/#",
        "locker/provisioning/reply/dev-abc/x",
        "locker/provisioning/reply/",
        "locker/register/abc",
        "server/status",
        "#",
    ]:
        assert not acl.allowed(PROVISIONING, topic, acc), topic


@pytest.mark.parametrize("client_id", ["+", "#", "a/b", "", None, "a+", "dev#"])
def test_provisioning_client_id_must_be_a_plain_level(client_id: str | None) -> None:
    identity = Identity("provisioning", client_id)
    topic = f"locker/provisioning/reply/{client_id or ''}"
    assert not acl.allowed(identity, topic, SUBSCRIBE)
    assert not acl.allowed(identity, topic, READ)


# --------------------------------------------------------------------------- device


@pytest.mark.parametrize("leaf", ["state", "response", "event", "status"])
def test_device_publishes_its_own_topics(leaf: str) -> None:
    assert acl.allowed(DEVICE, f"locker/{BANK}/{leaf}", WRITE)


def test_device_status_topic_follows_the_setting() -> None:
    assert acl.allowed(DEVICE, f"locker/{BANK}/status", WRITE, accept_status=True)
    assert not acl.allowed(DEVICE, f"locker/{BANK}/status", WRITE, accept_status=False)
    assert acl.allowed(DEVICE, f"locker/{BANK}/state", WRITE, accept_status=False)


@pytest.mark.parametrize(
    "topic",
    [
        f"locker/{OTHER_BANK}/state",
        f"locker/{OTHER_BANK}/response",
        f"locker/{BANK}/command",  # the backend's topic, never the device's
        f"locker/{BANK}/config",
        f"locker/{BANK}/state/x",
        f"locker/{BANK}",
        "locker/+/state",
        f"locker/{BANK}/#",
        "server/status",
        "locker/register/abc",
        f"metrics/{TENANT}/{AGENT}/temp",
    ],
)
def test_device_may_not_publish_elsewhere(topic: str) -> None:
    assert not acl.allowed(DEVICE, topic, WRITE)


@pytest.mark.parametrize("acc", [READ, SUBSCRIBE])
def test_device_reads_its_command_topic_and_server_status(acc: int) -> None:
    assert acl.allowed(DEVICE, f"locker/{BANK}/command", acc)
    assert acl.allowed(DEVICE, "server/status", acc)
    for topic in [
        f"locker/{OTHER_BANK}/command",
        "locker/+/command",
        f"locker/{BANK}/+",
        f"locker/{BANK}/#",
        "#",
        "server/+",
        f"locker/{BANK}/state",
        f"locker/{BANK}/response",
        "locker/provisioning/reply/dev-abc",
    ]:
        assert not acl.allowed(DEVICE, topic, acc), topic


def test_device_without_a_bank_is_nobody() -> None:
    assert not acl.allowed(Identity("device", "c", bank_id=None), "server/status", SUBSCRIBE)
    assert not acl.allowed(Identity("device", "c", bank_id="+"), "locker/+/state", WRITE)


# --------------------------------------------------------------------------- agents


def test_agent_publishes_its_metrics_with_one_level() -> None:
    assert acl.allowed(METRICS_AGENT, f"metrics/{TENANT}/{AGENT}/temperature", WRITE)


@pytest.mark.parametrize(
    "topic",
    [
        f"metrics/{TENANT}/{AGENT}",
        f"metrics/{TENANT}/{AGENT}/",
        f"metrics/{TENANT}/{AGENT}/a/b",
        f"metrics/{TENANT}/{AGENT}/+",
        f"metrics/{TENANT}/{AGENT}/#",
        f"metrics/{TENANT}/other-agent/temperature",
        f"metrics/{OTHER_BANK}/{AGENT}/temperature",
        f"metrics/+/{AGENT}/temperature",
        f"locker/{BANK}/state",
    ],
)
def test_agent_may_not_publish_elsewhere(topic: str) -> None:
    assert not acl.allowed(METRICS_AGENT, topic, WRITE)


@pytest.mark.parametrize("acc", [READ, SUBSCRIBE])
def test_agent_reads_nothing(acc: int) -> None:
    for topic in [f"metrics/{TENANT}/{AGENT}/temperature", "server/status", "#"]:
        assert not acl.allowed(METRICS_AGENT, topic, acc)


# --------------------------------------------------------------------------- everyone else


@pytest.mark.parametrize("acc", [READ, WRITE, SUBSCRIBE])
@pytest.mark.parametrize(
    "topic", ["server/status", "locker/register/abc", f"locker/{BANK}/state", "#", "a"]
)
def test_nobody_may_do_anything(topic: str, acc: int) -> None:
    assert not acl.allowed(acl.NOBODY, topic, acc)


@pytest.mark.parametrize("acc", [0, 3, 5, 8, 16, -1, 2**40])
@pytest.mark.parametrize("identity", [BACKEND, PROVISIONING, DEVICE, METRICS_AGENT])
def test_unknown_access_codes_are_denied_for_everyone(identity: Identity, acc: int) -> None:
    topics = {
        "backend": "server/status",
        "provisioning": "locker/register/abc",
        "device": f"locker/{BANK}/state",
        "agent": f"metrics/{TENANT}/{AGENT}/m",
    }
    assert not acl.allowed(identity, topics[identity.role], acc)


@pytest.mark.parametrize("identity", [BACKEND, PROVISIONING, DEVICE, METRICS_AGENT])
def test_empty_or_nul_topics_are_denied(identity: Identity) -> None:
    assert not acl.allowed(identity, "", WRITE)
    assert not acl.allowed(identity, "locker/register/a\x00", WRITE)
