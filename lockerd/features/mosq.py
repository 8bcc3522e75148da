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

from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl

import msgspec
import structlog
import trio
from quart import Blueprint, Response, request

from lockerd import acl
from lockerd.config import Settings
from lockerd.context import ServiceContext
from lockerd.domain import commands as c
from lockerd.security import constant_time_equals

log = structlog.get_logger("lockerd.mosq")

ALLOW_BODY = b'{"ok":true}'
DENY_BODY = b'{"ok":false}'
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
        parsed = _json_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
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


class AgentCredentials(Protocol):
    """What the metrics feature registers as ``context.extensions["agents"]`` (duck-typed)."""

    def credential(self, username: str) -> tuple[str, str, str] | None: ...


class BrokerAuth:
    """The three checks, over the running service's in-memory state."""

    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        metrics = context.metrics.goauth_checks
        self._counters = {
            (endpoint, result): metrics.labels(endpoint, result)
            for endpoint in ("auth", "superuser", "acl")
            for result in ("allow", "deny")
        }
        self._noted_in_use: set[str] = set()

    # ---------------------------------------------------------------- helpers

    @property
    def settings(self) -> Settings:
        return self.context.settings

    def secret_ok(self, given: str | None) -> bool:
        """Constant-time; an unset LOCKERD_MOSQ_SECRET denies everything."""
        expected = self.settings.mosq_secret
        if not expected:
            return False
        return constant_time_equals(given, expected)

    def count(self, endpoint: str, allowed: bool) -> None:
        self._counters[(endpoint, "allow" if allowed else "deny")].inc()

    def _agents(self) -> AgentCredentials | None:
        agents = self.context.extensions.get("agents")
        if agents is None or not callable(getattr(agents, "credential", None)):
            return None
        found: AgentCredentials = agents
        return found

    def _agent_lookup(self) -> Callable[[str], tuple[str, str, str] | None] | None:
        agents = self._agents()
        if agents is None:
            return None

        def lookup(username: str) -> tuple[str, str, str] | None:
            try:
                return agents.credential(username)
            except Exception as exc:  # a broken registry must deny, not 500
                log.warning("agent_lookup_failed", error=repr(exc))
                return None

        return lookup

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
        keyring = self.context.keyring
        device = self.context.directory.device_users.get(username)
        if device is not None:
            if not keyring.verify("device-password", password, device.credential_hash):
                return False
            self._note_in_use(username, device.bank_id)
            return True
        lookup = self._agent_lookup()
        agent = lookup(username) if lookup is not None else None
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
            devices=self.context.directory.device_users,
            agent=self._agent_lookup(),
        )
        return acl.allowed(
            identity, body.topic, body.acc, accept_status=settings.accept_status_topic
        )

    def _note_in_use(self, username: str, bank_id: str) -> None:
        """The device connected with its issued credentials, so its provisioning reply
        arrived: the lost-reply rule must no longer let the token be redeemed again."""
        if username in self._noted_in_use:
            return
        command = c.NoteCredentialsUsed(mqtt_user=username, now=self.context.clock())
        if self.context.registry.tell_nowait(bank_id, command):
            if len(self._noted_in_use) >= 100_000:
                self._noted_in_use.clear()
            self._noted_in_use.add(username)


def _answer(allowed: bool) -> Response:
    return Response(
        ALLOW_BODY if allowed else DENY_BODY,
        status=200 if allowed else 403,
        content_type="application/json",
    )


def build_blueprint(auth: BrokerAuth) -> Blueprint:
    blueprint = Blueprint("mosq", __name__)

    def endpoint(name: str, check: Callable[[CheckRequest], bool]) -> Callable[[], Awaitable[Any]]:
        async def handle() -> Response:
            allowed = False
            try:
                if auth.secret_ok(request.args.get("mosq_secret")):
                    body = await request.get_data(cache=False)
                    assert isinstance(body, bytes)
                    allowed = check(parse_body(request.content_type or "", body))
            except Malformed as exc:
                log.info("goauth_malformed", endpoint=name, reason=str(exc))
            except Exception as exc:  # go-auth must get a deny, never a 5xx
                log.warning("goauth_check_failed", endpoint=name, error=repr(exc))
                allowed = False
            auth.count(name, allowed)
            return _answer(allowed)

        handle.__name__ = f"mosq_{name}"
        return handle

    blueprint.add_url_rule(
        "/api/mosq/auth", view_func=endpoint("auth", auth.authenticate), methods=["POST"]
    )
    blueprint.add_url_rule(
        "/api/mosq/superuser", view_func=endpoint("superuser", auth.superuser), methods=["POST"]
    )
    blueprint.add_url_rule(
        "/api/mosq/acl", view_func=endpoint("acl", auth.check_acl), methods=["POST"]
    )
    return blueprint


async def install(context: ServiceContext, nursery: trio.Nursery) -> list[Blueprint]:
    auth = BrokerAuth(context)
    context.extensions["broker_auth"] = auth
    return [build_blueprint(auth)]


__all__ = ["BrokerAuth", "CheckRequest", "Malformed", "build_blueprint", "install"]
