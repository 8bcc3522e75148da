"""The MQTT router at unit speed: ``Gateway.route`` with in-memory fakes (contract §2).

Every inbound topic family becomes the right command for the right bank (or a call of the
metric sink); anything malformed is dropped with its reason and never reaches a bank.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
import structlog.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import commands as c
from domain import events as e
from domain.keys import Keyring
from domain.outbound import ProvisioningRefused
from domain.qr import issue_qr
from gateway.mqtt import InboundMessage
from gateway.payloads import MAX_PAYLOAD_BYTES
from gateway.router import REGISTRATION_FAILURES, REGISTRATION_WINDOW_SECONDS, Gateway
from tests.support.fakes import (
    Answer,
    FakeMonotonic,
    InboxCall,
    RecordingInbox,
    RecordingMetricSink,
    RecordingObserver,
    RecordingQueue,
    TokenTable,
    json_payload,
    no_mqtt,
)

BANK = "0b6d3c8e-5a1f-4c2b-9d7e-1f2a3b4c5d6e"
UNKNOWN_BANK = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
TENANT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
KEYRING = Keyring(b"router-test-master-key")
TOKEN = "tok-valid-123"
TIMEOUT = 30
NOW = "2026-03-01T12:00:00.000Z"


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    """Keep structlog's output (tracebacks of the crashes these tests cause) out of the way."""
    with structlog.testing.capture_logs():
        yield


@dataclass
class Router:
    gateway: Gateway
    inbox: RecordingInbox
    tokens: TokenTable
    outbox: RecordingQueue
    observer: RecordingObserver
    sink: RecordingMetricSink
    clock: FakeMonotonic

    async def route(
        self, topic: str, payload: bytes | dict[str, Any], *, retain: bool = False
    ) -> None:
        await self.gateway.route(InboundMessage(topic, json_payload(payload), 1, retain))

    def outcomes(self) -> int:
        """How many ways the last messages were accounted for: inbox calls, drops, metrics."""
        return len(self.inbox.calls) + self.observer.drops() + len(self.sink.calls)


def make_router(*, accept_status: bool = True, metrics: bool = True) -> Router:
    inbox = RecordingInbox(known=[BANK])
    tokens = TokenTable({KEYRING.hash("provisioning-token", TOKEN): BANK})
    outbox = RecordingQueue()
    observer = RecordingObserver()
    sink = RecordingMetricSink()
    clock = FakeMonotonic()
    gateway = Gateway(
        no_mqtt(),
        inbox,
        tokens,
        outbox,
        KEYRING,
        observer,
        command_timeout=TIMEOUT,
        accept_status_topic=accept_status,
        metric_sink=sink if metrics else None,
        clock=clock,
    )
    return Router(gateway, inbox, tokens, outbox, observer, sink, clock)


@pytest.fixture
def router() -> Router:
    return make_router()


def only_call(router: Router) -> InboxCall:
    assert len(router.inbox.calls) == 1, router.inbox.calls
    assert router.observer.drops() == 0, router.observer.dropped
    return router.inbox.calls[0]


def assert_dropped(router: Router, kind: str | None, reason: str) -> None:
    assert router.observer.dropped == {(kind, reason): 1}
    assert router.inbox.calls == []
    assert router.sink.calls == []


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


# --- payloads as devices send them -----------------------------------------------------------


def heartbeat(session: str | None = "s-1", uptime: int = 100) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "state",
        "state": "heartbeat",
        "data": {"timestamp": NOW, "uptime_seconds": uptime},
    }
    if session is not None:
        payload["session_id"] = session
    return payload


def last_will(session: str | None = "s-1") -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "state",
        "state": "connection_lost",
        "status": "offline",
        "timestamp": NOW,
        "reason": "mqtt_last_will",
    }
    if session is not None:
        payload["session_id"] = session
    return payload


def response(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "command_response",
        "action": "open_compartment",
        "result": "success",
        "transaction_id": "tx-1",
        "timestamp": NOW,
    }
    payload.update(overrides)
    return payload


def device_event(event: str, data: dict[str, Any], event_id: str | None = "ev-1") -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "event", "event": event, "timestamp": NOW, "data": data}
    if event_id is not None:
        payload["event_id"] = event_id
    return payload


def state_topic(bank: str = BANK) -> str:
    return f"locker/{bank}/state"


# ---------------------------------------------------------------------------------------------
# state: heartbeat and last will


async def test_heartbeat_becomes_record_heartbeat_for_its_bank(router: Router) -> None:
    await router.route(state_topic(), heartbeat(session="s-9", uptime=4242))
    call = only_call(router)
    assert (call.method, call.bank_id, call.kind) == ("tell", BANK, "state")
    command = call.command
    assert isinstance(command, c.RecordHeartbeat)
    assert (command.uptime_seconds, command.session_id) == (4242, "s-9")
    assert command.command_timeout_seconds == TIMEOUT
    assert is_uuid(command.spare_transaction_id)


async def test_heartbeats_get_fresh_spare_transaction_ids(router: Router) -> None:
    await router.route(state_topic(), heartbeat())
    await router.route(state_topic(), heartbeat(session=None))
    spares = {call.command.spare_transaction_id for call in router.inbox.calls}  # type: ignore[union-attr]
    assert len(spares) == 2
    second = router.inbox.calls[1].command
    assert isinstance(second, c.RecordHeartbeat)
    assert second.session_id is None


async def test_last_will_becomes_record_last_will(router: Router) -> None:
    await router.route(state_topic(), last_will(session="s-7"))
    call = only_call(router)
    assert (call.method, call.bank_id, call.kind) == ("tell", BANK, "state")
    assert call.command == c.RecordLastWill(session_id="s-7")


async def test_retained_heartbeat_is_not_a_sign_of_life(router: Router) -> None:
    """Contract §2: a state message delivered with the retain flag set (the broker replaying
    the last heartbeat, e.g. after lockerd subscribed again) never makes a bank online and
    never refreshes last_seen. It is still counted exactly once."""
    await router.route(state_topic(), heartbeat(), retain=True)
    heartbeats = [
        call for call in router.inbox.calls if isinstance(call.command, c.RecordHeartbeat)
    ]
    assert heartbeats == []
    assert router.outcomes() == 1


# ---------------------------------------------------------------------------------------------
# response and its deprecated /status alias


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {},
            c.RecordAnswer("tx-1", "open_compartment", "success", None, None, None),
        ),
        (
            {"result": "error", "error_code": "DOOR_JAMMED", "message": "stuck"},
            c.RecordAnswer("tx-1", "open_compartment", "error", "DOOR_JAMMED", "stuck", None),
        ),
        (
            {"action": "apply_config", "transaction_id": "cfg-1", "applied_config_hash": "ab"},
            c.RecordAnswer("cfg-1", "apply_config", "success", None, None, "ab"),
        ),
    ],
    ids=["success", "error", "apply-config"],
)
async def test_response_becomes_record_answer(
    router: Router, overrides: dict[str, Any], expected: c.RecordAnswer
) -> None:
    await router.route(f"locker/{BANK}/response", response(**overrides))
    call = only_call(router)
    assert (call.method, call.bank_id, call.kind) == ("tell", BANK, "response")
    command = call.command
    assert isinstance(command, c.RecordAnswer)
    # a fresh spare id: the apply_config pushed if the configuration changed meanwhile
    assert is_uuid(command.spare_transaction_id)
    assert command.command_timeout_seconds == TIMEOUT
    assert replace(command, spare_transaction_id="", command_timeout_seconds=30) == expected


async def test_status_alias_is_routed_as_a_response_while_accepted(router: Router) -> None:
    await router.route(f"locker/{BANK}/status", response())
    call = only_call(router)
    assert (call.method, call.bank_id, call.kind) == ("tell", BANK, "response")
    assert isinstance(call.command, c.RecordAnswer)
    assert replace(call.command, spare_transaction_id="", command_timeout_seconds=30) == (
        c.RecordAnswer("tx-1", "open_compartment", "success", None, None, None)
    )


async def test_status_alias_is_dropped_once_no_longer_accepted() -> None:
    router = make_router(accept_status=False)
    await router.route(f"locker/{BANK}/status", response())
    assert router.inbox.calls == []
    assert [reason for _, reason in router.observer.dropped] == ["malformed_topic"]
    await router.route(f"locker/{BANK}/response", response())
    assert len(router.inbox.calls) == 1


# ---------------------------------------------------------------------------------------------
# device events, QR codes


@pytest.mark.parametrize(
    ("event", "data", "event_id"),
    [
        ("door_state_changed", {"compartment_number": 2, "state": "open"}, "ev-1"),
        ("battery_low", {"level": 7}, None),  # unknown types are recorded, not dropped
    ],
    ids=["door", "unknown-type"],
)
async def test_device_event_becomes_record_device_event(
    router: Router, event: str, data: dict[str, Any], event_id: str | None
) -> None:
    await router.route(f"locker/{BANK}/event", device_event(event, data, event_id))
    call = only_call(router)
    assert (call.method, call.bank_id, call.kind) == ("tell", BANK, "event")
    command = call.command
    assert isinstance(command, c.RecordDeviceEvent)
    assert (command.event, command.event_id, command.data) == (event, event_id, data)
    assert command.qr_claim is None
    assert command.command_timeout_seconds == TIMEOUT
    assert is_uuid(command.spare_transaction_id)


async def test_qr_scanned_with_a_valid_code_carries_the_verified_claim(router: Router) -> None:
    expires = datetime(2026, 3, 1, 12, 5, tzinfo=UTC)
    code = issue_qr(KEYRING, "user-1", "comp-1", expires)
    await router.route(f"locker/{BANK}/event", device_event("qr_scanned", {"qr_payload": code}))
    command = only_call(router).command
    assert isinstance(command, c.RecordDeviceEvent)
    assert command.event == "qr_scanned"
    claim = command.qr_claim
    assert claim is not None
    assert (claim.user_id, claim.compartment_id, claim.expires_at) == ("user-1", "comp-1", expires)
    assert claim.nonce
    assert is_uuid(command.spare_transaction_id)  # the transaction id of the open it may cause


def _tampered(code: str) -> str:
    version, body, signature = code.split(".")
    return f"{version}.{body}.{signature[::-1]}"


@pytest.mark.parametrize(
    "code",
    [
        issue_qr(Keyring(b"another-server"), "user-1", "comp-1", datetime(2030, 1, 1, tzinfo=UTC)),
        _tampered(issue_qr(KEYRING, "user-1", "comp-1", datetime(2030, 1, 1, tzinfo=UTC))),
        "v1.not-base64!.x",
        "hello",
        "",
    ],
    ids=["foreign-key", "tampered", "garbage", "plain-text", "empty"],
)
async def test_qr_scanned_with_an_invalid_code_reaches_the_bank_without_a_claim(
    router: Router, code: str
) -> None:
    # the bank records the refused scan (reason qr_invalid): it is not a malformed message
    await router.route(f"locker/{BANK}/event", device_event("qr_scanned", {"qr_payload": code}))
    command = only_call(router).command
    assert isinstance(command, c.RecordDeviceEvent)
    assert command.qr_claim is None


@pytest.mark.parametrize("data", [{}, {"qr_payload": 42}, {"qr_payload": None}])
async def test_qr_scanned_without_a_string_payload_is_malformed(
    router: Router, data: dict[str, Any]
) -> None:
    await router.route(f"locker/{BANK}/event", device_event("qr_scanned", data))
    assert_dropped(router, "event", "malformed_payload")


# ---------------------------------------------------------------------------------------------
# metrics


async def test_metric_goes_to_the_metric_sink_and_never_to_a_bank(router: Router) -> None:
    payload = json_payload({"value": 21.5, "timestamp": NOW, "dedupe_id": "d-1"})
    await router.route(f"metrics/{TENANT}/agent-7/temperature", payload)
    assert router.sink.calls == [(TENANT, "agent-7", "temperature", payload)]
    assert router.inbox.calls == []
    assert router.observer.drops() == 0


async def test_metric_without_a_pipeline_is_dropped_as_not_supported() -> None:
    router = make_router(metrics=False)
    await router.route(f"metrics/{TENANT}/agent-7/temperature", {"value": 1})
    assert_dropped(router, "metric", "not_supported")


# ---------------------------------------------------------------------------------------------
# malformed topics and payloads, unknown banks

MALFORMED_TOPICS = [
    "",
    "/",
    "server/status",
    "foo/bar/baz",
    "locker",
    f"locker/{BANK}",
    f"locker/{BANK}/command",
    f"locker/{BANK}/state/extra",
    f"locker/{BANK.upper()}/state",
    "locker/not-a-uuid/response",
    "locker/+/event",
    "locker/register/",
    "locker/register/a/b",
    "locker/register/+",
    "metrics/not-a-uuid/agent/m",
    f"metrics/{TENANT}/agent",
    f"metrics/{TENANT}//m",
    f"metrics/{TENANT}/agent/m/extra",
]


@pytest.mark.parametrize("topic", MALFORMED_TOPICS)
async def test_malformed_topic_is_dropped_and_never_reaches_the_inbox(
    router: Router, topic: str
) -> None:
    await router.route(topic, heartbeat())
    assert [reason for _, reason in router.observer.dropped] == ["malformed_topic"]
    assert sum(router.observer.dropped.values()) == 1
    assert router.inbox.calls == []
    assert router.sink.calls == []
    assert router.outbox.messages == []


@pytest.mark.parametrize(
    ("topic", "kind"),
    [
        ("foo/bar/baz", "unknown"),
        ("server/status", "unknown"),
        (f"locker/{BANK}/command", "unknown"),
        ("locker/not-a-uuid/state", "state"),
        ("locker/not-a-uuid/response", "response"),
        ("locker/not-a-uuid/event", "event"),
        ("locker/register/", "register"),
        ("metrics/not-a-uuid/agent/m", "metric"),
    ],
)
async def test_malformed_topic_is_counted_under_its_topic_family_or_unknown(
    router: Router, topic: str, kind: str
) -> None:
    """Contract §2: every message is counted exactly once, malformed topics included, with
    the kind of its topic family, ``unknown`` when none fits (a kind of None is not counted
    by the metrics)."""
    await router.route(topic, heartbeat())
    assert router.observer.dropped == {(kind, "malformed_topic"): 1}


BAD_UTF8 = b'{"type":"state","state":"heartbeat","session_id":"a\xff\xfeb"}'

MALFORMED_PAYLOADS = [
    ("state", b"not json"),
    ("state", b"[]"),
    ("state", b""),
    ("state", {"type": "state"}),
    ("state", {"type": "event", "state": "heartbeat"}),
    ("state", {"type": "state", "state": "dancing"}),
    ("state", {"type": "state", "state": "heartbeat", "data": {"uptime_seconds": "long"}}),
    ("state", {"type": "state", "state": "heartbeat", "data": {"uptime_seconds": 1.5}}),
    ("state", {"type": "state", "state": "heartbeat", "data": {"uptime_seconds": -1}}),
    ("state", {"type": "state", "state": "heartbeat", "data": {"timestamp": "2026-03-01T12:00"}}),
    ("state", {"type": "state", "state": "heartbeat", "session_id": "a\u0000b"}),
    ("state", BAD_UTF8),
    ("response", {"type": "command_response", "action": "open_compartment"}),
    ("response", response(result="maybe")),
    ("response", response(transaction_id="")),
    ("response", response(timestamp="2026-03-01T12:00:00")),
    ("response", response(message="nul\u0000inside")),
    ("event", {"type": "event", "event": "x", "timestamp": NOW}),
    ("event", device_event("x", [1, 2])),  # type: ignore[arg-type]
    ("event", device_event("", {})),
    ("event", device_event("x", {"nested": {"deep": ["ok", "nul\u0000"]}})),
    ("event", b"\x00" * (MAX_PAYLOAD_BYTES + 1)),
]


@pytest.mark.parametrize(
    ("leaf", "payload"),
    MALFORMED_PAYLOADS,
    ids=[
        "bad-json",
        "array",
        "empty",
        "missing-state",
        "wrong-type",
        "unknown-state",
        "uptime-string",
        "uptime-float",
        "uptime-negative",
        "timestamp-without-offset",
        "nul-in-session-id",
        "invalid-utf8",
        "response-missing-fields",
        "response-bad-result",
        "response-empty-transaction-id",
        "response-timestamp-without-offset",
        "response-nul-in-message",
        "event-missing-data",
        "event-data-not-object",
        "event-empty-name",
        "event-nul-in-nested-data",
        "oversized",
    ],
)
async def test_malformed_payload_is_dropped_and_never_reaches_the_inbox(
    router: Router, leaf: str, payload: bytes | dict[str, Any]
) -> None:
    await router.route(f"locker/{BANK}/{leaf}", payload)
    assert_dropped(router, leaf, "malformed_payload")


@pytest.mark.parametrize(
    ("leaf", "payload"),
    [("state", heartbeat()), ("response", response()), ("event", device_event("x", {}))],
)
async def test_message_for_an_unknown_bank_is_dropped(
    router: Router, leaf: str, payload: dict[str, Any]
) -> None:
    await router.route(f"locker/{UNKNOWN_BANK}/{leaf}", payload)
    assert_dropped(router, leaf, "unknown_bank")


# ---------------------------------------------------------------------------------------------
# registration


def register_topic(token: str = TOKEN) -> str:
    return f"locker/register/{token}"


async def test_register_with_a_known_token_asks_the_bank_to_provision(router: Router) -> None:
    await router.route(register_topic(), {"client_id": "box-1"})
    call = only_call(router)
    assert (call.method, call.bank_id, call.kind) == ("ask", BANK, "register")
    command = call.command
    assert isinstance(command, c.Provision)
    assert command.token_hash == KEYRING.hash("provisioning-token", TOKEN)
    assert command.client_id == "box-1"
    assert command.new_mqtt_user.startswith("dev-")
    assert call.secret is not None and len(call.secret) >= 32
    # only the hash of the fresh password goes to the bank's history
    assert command.new_credential_hash == KEYRING.hash("device-password", call.secret)
    assert call.secret not in repr(command)
    assert router.outbox.messages == []  # the bank replies once it has recorded it


async def test_each_registration_gets_fresh_credentials(router: Router) -> None:
    await router.route(register_topic(), {"client_id": "box-1"})
    await router.route(register_topic(), {"client_id": "box-1"})
    first, second = router.inbox.calls
    assert first.secret != second.secret
    assert first.command.new_mqtt_user != second.command.new_mqtt_user  # type: ignore[union-attr]


async def test_register_with_an_unknown_token_is_refused_and_counted(router: Router) -> None:
    await router.route(register_topic("no-such-token"), {"client_id": "box-1"})
    assert router.outbox.messages == [ProvisioningRefused("box-1", "token_unknown")]
    assert_dropped(router, "register", "token_unknown")


async def test_repeated_failed_registrations_are_rate_limited_per_client_id(
    router: Router,
) -> None:
    for _ in range(REGISTRATION_FAILURES):
        await router.route(register_topic("wrong"), {"client_id": "box-1"})
    assert router.outbox.messages == [ProvisioningRefused("box-1", "token_unknown")] * 5
    assert router.observer.dropped == {("register", "token_unknown"): REGISTRATION_FAILURES}

    # blocked now, even with a valid token
    await router.route(register_topic(), {"client_id": "box-1"})
    assert router.inbox.calls == []
    assert router.outbox.messages[-1] == ProvisioningRefused("box-1", "rate_limited")
    assert router.observer.dropped[("register", "rate_limited")] == 1

    # other client ids are not affected
    await router.route(register_topic(), {"client_id": "box-2"})
    assert [call.command.client_id for call in router.inbox.calls] == ["box-2"]  # type: ignore[union-attr]

    # the window slides: once the failures are old enough the client id may try again
    router.clock.advance(REGISTRATION_WINDOW_SECONDS - 1)
    await router.route(register_topic(), {"client_id": "box-1"})
    assert router.observer.dropped[("register", "rate_limited")] == 2
    router.clock.advance(1)
    await router.route(register_topic(), {"client_id": "box-1"})
    assert [call.command.client_id for call in router.inbox.calls] == ["box-2", "box-1"]  # type: ignore[union-attr]


async def test_failures_reported_by_the_bank_count_toward_the_rate_limit(router: Router) -> None:
    failed = e.ProvisioningFailed(
        client_id="box-1", reason="token_used", at=datetime(2026, 3, 1, tzinfo=UTC)
    )
    router.inbox.answers.extend([Answer((failed,))] * REGISTRATION_FAILURES)
    for _ in range(REGISTRATION_FAILURES):
        await router.route(register_topic(), {"client_id": "box-1"})
    assert len(router.inbox.calls) == REGISTRATION_FAILURES
    await router.route(register_topic(), {"client_id": "box-1"})
    assert len(router.inbox.calls) == REGISTRATION_FAILURES
    assert router.outbox.messages == [ProvisioningRefused("box-1", "rate_limited")]


async def test_successful_registrations_are_never_rate_limited(router: Router) -> None:
    for _ in range(REGISTRATION_FAILURES + 2):
        await router.route(register_topic(), {"client_id": "box-1"})
    assert len(router.inbox.calls) == REGISTRATION_FAILURES + 2
    assert router.outbox.messages == []


@pytest.mark.parametrize(
    "client_id",
    ["", "a/b", "box+1", "box#", "x" * 129],
    ids=["empty", "slash", "plus", "hash", "long"],
)
async def test_register_with_an_invalid_client_id_is_dropped_without_reply(
    router: Router, client_id: str
) -> None:
    await router.route(register_topic(), {"client_id": client_id})
    assert_dropped(router, "register", "invalid_client_id")
    assert router.outbox.messages == []


async def test_register_with_a_nul_in_the_client_id_is_dropped_without_reply(
    router: Router,
) -> None:
    await router.route(register_topic(), {"client_id": "box\u00001"})
    assert router.inbox.calls == []
    assert router.outbox.messages == []
    assert set(router.observer.dropped) <= {
        ("register", "malformed_payload"),
        ("register", "invalid_client_id"),
    }
    assert router.observer.drops() == 1


@pytest.mark.parametrize(
    "payload",
    [b"nope", b"[]", {}, {"client_id": 7}, {"client_id": None}],
    ids=["bad-json", "array", "missing", "number", "null"],
)
async def test_register_with_a_malformed_payload_is_dropped_without_reply(
    router: Router, payload: bytes | dict[str, Any]
) -> None:
    await router.route(register_topic(), payload)
    assert_dropped(router, "register", "malformed_payload")
    assert router.outbox.messages == []


async def test_register_when_the_bank_cannot_answer_does_not_raise(router: Router) -> None:
    # a slow mailbox (or BankUnavailable): counted where it happened (the registry, the actor)
    router.inbox.answers.append(None)  # the bank could not answer in time
    await router.route(register_topic(), {"client_id": "box-1"})
    assert len(router.inbox.calls) == 1
    assert router.outbox.messages == []


# ---------------------------------------------------------------------------------------------
# routing bugs


@pytest.mark.parametrize(
    ("topic", "payload", "kind"),
    [
        (state_topic(), heartbeat(), "state"),
        (f"locker/{BANK}/response", response(), "response"),
        (f"locker/{BANK}/event", device_event("x", {}), "event"),
        (register_topic(), {"client_id": "box-1"}, "register"),
    ],
    ids=["state", "response", "event", "register"],
)
async def test_an_inbox_that_raises_is_counted_internal_error_and_route_does_not_raise(
    router: Router, topic: str, payload: dict[str, Any], kind: str
) -> None:
    router.inbox.error = RuntimeError("a bug behind the inbox")
    await router.route(topic, payload)
    assert len(router.inbox.calls) == 1
    assert router.observer.dropped == {(kind, "internal_error"): 1}


async def test_a_metric_sink_that_raises_is_counted_internal_error() -> None:
    router = make_router()

    async def broken(tenant: str, agent: str, metric: str, payload: bytes) -> None:
        raise KeyError("bug")

    router.gateway.metric_sink = broken
    await router.route(f"metrics/{TENANT}/agent-7/temperature", {"value": 1})
    assert router.observer.dropped == {("metric", "internal_error"): 1}


# ---------------------------------------------------------------------------------------------
# anything at all

_level = st.text(max_size=12)
_topics = st.one_of(
    st.text(max_size=60),
    st.lists(_level, max_size=5).map("/".join),
    st.builds(
        lambda bank, leaf: f"locker/{bank}/{leaf}",
        st.sampled_from([BANK, UNKNOWN_BANK]) | _level,
        st.sampled_from(["state", "response", "event", "status", "command"]) | _level,
    ),
    st.builds(lambda token: f"locker/register/{token}", st.sampled_from([TOKEN]) | _level),
    st.builds(
        lambda tenant, agent, metric: f"metrics/{tenant}/{agent}/{metric}",
        st.just(TENANT) | _level,
        _level,
        _level,
    ),
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3)
    ),
    max_leaves=8,
)
_VALID = [
    heartbeat(),
    last_will(),
    response(),
    device_event("door_state_changed", {"compartment_number": 1, "state": "open"}),
    device_event("qr_scanned", {"qr_payload": "v1.x.y"}),
    {"client_id": "box-1"},
    {"value": 1.5},
]
_FIELDS = [
    "type",
    "state",
    "data",
    "session_id",
    "action",
    "result",
    "transaction_id",
    "timestamp",
    "event",
    "event_id",
    "client_id",
    "value",
    "message",
]
_payloads = st.one_of(
    st.binary(max_size=120),
    st.sampled_from(_VALID).map(json_payload),
    st.builds(
        lambda document, overrides: json_payload({**document, **overrides}),
        st.sampled_from(_VALID),
        st.dictionaries(
            st.sampled_from(_FIELDS),
            _json,
            max_size=3,
        ),
    ),
    _json.map(lambda value: json.dumps(value).encode()),
)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(topic=_topics, payload=_payloads, retain=st.booleans())
async def test_arbitrary_messages_never_raise_and_reach_the_inbox_at_most_once(
    topic: str, payload: bytes, retain: bool
) -> None:
    router = make_router()
    await router.gateway.route(InboundMessage(topic, payload, 1, retain))
    assert len(router.inbox.calls) <= 1
    # and every message is accounted for exactly once: a bank call, a drop or a metric point
    assert router.outcomes() == 1
    if router.inbox.calls:
        assert router.inbox.calls[0].bank_id == BANK


def test_router_stand_ins_are_used_only_through_their_protocols() -> None:
    mqtt = no_mqtt()
    with pytest.raises(AssertionError):
        mqtt.publish  # noqa: B018
    assert TokenTable({"h": BANK}).bank_for_token("h") == BANK
    assert TokenTable().bank_for_token("h") is None
