"""Broker authentication for mosquitto-go-auth's HTTP backend (contract §3, docs/broker-auth.md).

``POST /api/mosq/auth``, ``/api/mosq/superuser`` and ``/api/mosq/acl``, each with
``?mosq_secret=``. go-auth sends JSON (``{"acc":4,"clientid":…,"topic":…,"username":…}``, acc a
number) or form bodies (``acc=4&clientid=…``); amqtt's HTTP plugin sends ``client_id`` instead
of ``clientid``. The answer is 200 to allow and 403 to deny (go-auth's ``status`` response mode;
the tiny ``{"ok":…}`` body also satisfies its ``json`` mode). Anything malformed is a 403, never
a 5xx: go-auth treats a 5xx as a backend error, which disconnects the client.

Every check is answered from memory: the directory's device users, the configured backend and
provisioning users, and the agents registry's in-memory index. No database access per check:
go-auth calls /acl for every publish and every delivery, synchronously inside mosquitto's only
thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol
from urllib.parse import parse_qsl

import msgspec
import structlog
from prometheus_client import Counter

from domain import commands as c
from domain import jsonguard
from domain.keys import Keyring, constant_time_equals
from gateway import acl
from lockerd.banks.directory import DeviceCredential
from lockerd.config import Settings
from lockerd.telemetry.agents import AgentDirectory

log = structlog.get_logger("lockerd.mosq")

MAX_FIELD_CHARS = 70_000  # an MQTT topic is at most 65,535 bytes
_FIELDS = frozenset({"username", "password", "clientid", "client_id", "topic", "acc"})
# compared against when the username is unknown, so a miss costs what a hit costs
_DUMMY_HASH = "0" * 64


class CheckRequest(msgspec.Struct):
    """The union of go-auth's three bodies; unknown keys are ignored."""

    username: str | None = None
    password: str | None = None
    clientid: str | None = None
    client_id: str | None = None
    topic: str | None = None
    acc: int | None = None

    @property
    def client(self) -> str | None:
        return self.clientid if self.clientid is not None else self.client_id


class Malformed(ValueError):
    """The body is not one go-auth (or amqtt) would send."""


_json_decoder = msgspec.json.Decoder(CheckRequest)


def parse_json(body: bytes) -> CheckRequest:
    try:
        jsonguard.check_raw(body)  # UTF-8 and depth; NUL is checked field by field below
        parsed = _json_decoder.decode(body)
    except (jsonguard.UnsafeJson, msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise Malformed(str(exc)) from None
    _check_consistent(parsed)
    return parsed


def parse_form(body: bytes) -> CheckRequest:
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            max_num_fields=16,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise Malformed(f"bad form body: {exc}") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise Malformed(f"field {key!r} given twice")
        fields[key] = value
    acc_text = fields.get("acc")
    acc: int | None = None
    if acc_text is not None:
        if not (acc_text.isascii() and acc_text.isdigit() and len(acc_text) <= 10):
            raise Malformed("acc is not a number")
        acc = int(acc_text)
    parsed = CheckRequest(
        username=fields.get("username"),
        password=fields.get("password"),
        clientid=fields.get("clientid"),
        client_id=fields.get("client_id"),
        topic=fields.get("topic"),
        acc=acc,
    )
    _check_consistent(parsed)
    return parsed


def _check_consistent(parsed: CheckRequest) -> None:
    if (
        parsed.clientid is not None
        and parsed.client_id is not None
        and parsed.clientid != parsed.client_id
    ):
        raise Malformed("clientid and client_id disagree")
    for value in (parsed.username, parsed.password, parsed.client, parsed.topic):
        if value is not None and len(value) > MAX_FIELD_CHARS:
            raise Malformed("field too long")
        if value is not None and "\x00" in value:
            # no user, client id or topic holds NUL (MQTT forbids it in topics and ids)
            raise Malformed("a field contains NUL (U+0000)")


def parse_body(content_type: str, body: bytes) -> CheckRequest:
    """JSON or form-encoded, by Content-Type; sniffed when the type says neither."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        return parse_json(body)
    if kind == "application/x-www-form-urlencoded":
        return parse_form(body)
    if body.lstrip()[:1] == b"{":
        return parse_json(body)
    return parse_form(body)


class Notifier(Protocol):
    """Tells a bank's actor something without waiting (the bank registry)."""

    def tell_nowait(self, bank_id: str, command: c.BankCommand) -> bool: ...


class BrokerAuth:
    """The three checks, over the running service's in-memory state."""

    def __init__(
        self,
        settings: Settings,
        keyring: Keyring,
        devices: Mapping[str, DeviceCredential],
        agents: AgentDirectory,
        banks: Notifier,
        checks: Counter,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self.devices = devices
        self.agents = agents
        self.banks = banks
        self._counters = {
            (endpoint, result): checks.labels(endpoint, result)
            for endpoint in ("auth", "superuser", "acl")
            for result in ("allow", "deny")
        }
        self._noted_in_use: set[str] = set()

    # ---------------------------------------------------------------- helpers

    def secret_ok(self, given: str | None) -> bool:
        """Constant-time; an unset LOCKERD_MOSQ_SECRET denies everything."""
        expected = self.settings.mosq_secret
        if not expected:
            return False
        return constant_time_equals(given, expected)

    def count(self, endpoint: str, allowed: bool) -> None:
        self._counters[(endpoint, "allow" if allowed else "deny")].inc()

    def _agent(self, username: str) -> tuple[str, str, str] | None:
        try:
            return self.agents.credential(username)
        except Exception as exc:  # a broken registry must deny, not 500
            log.warning("agent_lookup_failed", error=repr(exc))
            return None

    def is_backend_user(self, username: str | None) -> bool:
        return constant_time_equals(username, self.settings.mqtt.username)

    # ---------------------------------------------------------------- checks

    def authenticate(self, body: CheckRequest) -> bool:
        username, password = body.username, body.password
        if not username or password is None:
            return False
        settings = self.settings
        if self.is_backend_user(username):
            # an unset (or empty) configured password never matches
            return bool(settings.mqtt.password) and constant_time_equals(
                password, settings.mqtt.password
            )
        if username == settings.provisioning_user:
            return bool(settings.provisioning_password) and constant_time_equals(
                password, settings.provisioning_password
            )
        keyring = self.keyring
        device = self.devices.get(username)
        if device is not None:
            if not keyring.verify("device-password", password, device.credential_hash):
                return False
            self._note_in_use(username, device.bank_id)
            return True
        agent = self._agent(username)
        if agent is not None:
            return keyring.verify("agent-password", password, agent[2])
        keyring.verify("device-password", password, _DUMMY_HASH)
        return False

    def superuser(self, body: CheckRequest) -> bool:
        return bool(body.username) and self.is_backend_user(body.username)

    def check_acl(self, body: CheckRequest) -> bool:
        if body.topic is None or body.acc is None:
            return False
        settings = self.settings
        identity = acl.identify(
            body.username,
            body.client,
            backend_user=settings.mqtt.username,
            provisioning_user=settings.provisioning_user,
            devices=self.devices,
            agent=self._agent,
        )
        return acl.allowed(
            identity, body.topic, body.acc, accept_status=settings.accept_status_topic
        )

    def _note_in_use(self, username: str, bank_id: str) -> None:
        """The device connected with its issued credentials, so its provisioning reply
        arrived: the lost-reply rule must no longer let the token be redeemed again."""
        if username in self._noted_in_use:
            return
        command = c.NoteCredentialsUsed(mqtt_user=username)
        if self.banks.tell_nowait(bank_id, command):
            if len(self._noted_in_use) >= 100_000:
                self._noted_in_use.clear()
            self._noted_in_use.add(username)
