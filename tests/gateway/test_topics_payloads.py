"""Contract §2 on the wire: inbound topic parsing and typed payload decoding."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.payloads import (
    MAX_PAYLOAD_BYTES,
    DevicePayload,
    HeartbeatData,
    PayloadError,
    RegisterPayload,
    ResponsePayload,
    StatePayload,
    decode,
)
from gateway.topics import (
    SERVER_STATUS,
    SUBSCRIPTIONS,
    ParsedTopic,
    TopicError,
    command_topic,
    parse_topic,
    provisioning_reply_topic,
)

BANK = "0b6d3c8e-5a1f-4c2b-9d7e-1f2a3b4c5d6e"
TENANT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"

# ---------------------------------------------------------------------------------------------
# topics: every inbound contract topic


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("locker/register/tok-123_ABC", ParsedTopic("register", "tok-123_ABC")),
        (f"locker/{BANK}/state", ParsedTopic("state", BANK)),
        (f"locker/{BANK}/response", ParsedTopic("response", BANK)),
        (f"locker/{BANK}/event", ParsedTopic("event", BANK)),
        (f"locker/{BANK}/status", ParsedTopic("response", BANK, deprecated_status=True)),
        (
            f"metrics/{TENANT}/agent-7/temperature",
            ParsedTopic("metric", TENANT, agent_id="agent-7", metric="temperature"),
        ),
    ],
)
def test_contract_topic_is_parsed(topic: str, expected: ParsedTopic) -> None:
    assert parse_topic(topic) == expected


def test_status_alias_is_accepted_while_enabled() -> None:
    assert parse_topic(f"locker/{BANK}/status", accept_status=True) == ParsedTopic(
        "response", BANK, deprecated_status=True
    )


def test_status_alias_is_refused_when_disabled() -> None:
    with pytest.raises(TopicError, match="status"):
        parse_topic(f"locker/{BANK}/status", accept_status=False)


@pytest.mark.parametrize("leaf", ["state", "response", "event"])
def test_disabling_status_does_not_affect_other_topics(leaf: str) -> None:
    assert parse_topic(f"locker/{BANK}/{leaf}", accept_status=False).kind == leaf


@pytest.mark.parametrize(
    "topic",
    [
        # missing / extra levels
        "locker",
        "locker/register",
        f"locker/{BANK}",
        f"locker/{BANK}/state/extra",
        "locker/register/tok/extra",
        f"metrics/{TENANT}/agent",
        f"metrics/{TENANT}/agent/m/extra",
        "metrics",
        # empty levels
        "",
        "locker/register/",
        f"locker/{BANK}/",
        "locker//state",
        f"/locker/{BANK}/state",
        f"locker/{BANK}//state",
        f"metrics/{TENANT}//m",
        f"metrics/{TENANT}/agent/",
        "metrics//agent/m",
        # wildcards where a literal is required
        "locker/register/+",
        "locker/register/#",
        "locker/register/tok+en",
        "locker/+/state",
        "locker/#",
        f"locker/{BANK}/+",
        f"locker/{BANK}/#",
        f"metrics/{TENANT}/+/m",
        f"metrics/{TENANT}/agent/#",
        "metrics/+/agent/m",
        "metrics/#",
        # bank id not a lowercase UUID
        f"locker/{BANK.upper()}/state",
        "locker/bank-1/state",
        f"locker/{BANK[:-1]}/state",
        f"locker/{BANK}0/state",
        f"locker/{{{BANK}}}/state",
        f"locker/{BANK.replace('-', '')}/state",
        f"locker/ {BANK}/state",
        f"locker/{BANK} /state",
        # not inbound contract topics
        f"locker/{BANK}/command",
        f"locker/{BANK}/State",
        "locker/provisioning/reply/client-1",
        "server/status",
        "something/else",
    ],
)
def test_malformed_topic_is_rejected(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


@pytest.mark.parametrize(
    "topic",
    [f"locker/{BANK}\n/state", f"locker/{BANK}\n/response", f"metrics/{TENANT}\n/agent/m"],
)
def test_uuid_with_trailing_newline_is_not_a_uuid(topic: str) -> None:
    """``re`` ``$`` also matches before a final newline: the bank id check must not."""
    with pytest.raises(TopicError):
        parse_topic(topic)


def test_outbound_topics() -> None:
    assert command_topic(BANK) == f"locker/{BANK}/command"
    assert provisioning_reply_topic("esp32-01") == "locker/provisioning/reply/esp32-01"
    assert SERVER_STATUS == "server/status"


def _matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (+ one level, # the rest)."""
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


@pytest.mark.parametrize(
    "topic",
    [
        "locker/register/tok",
        f"locker/{BANK}/state",
        f"locker/{BANK}/response",
        f"locker/{BANK}/status",
        f"locker/{BANK}/event",
        f"metrics/{TENANT}/agent/m",
    ],
)
def test_every_inbound_topic_is_subscribed_with_qos_1(topic: str) -> None:
    qos = [q for topic_filter, q in SUBSCRIPTIONS if _matches(topic_filter, topic)]
    assert qos == [1]


def test_backend_does_not_subscribe_to_its_own_commands() -> None:
    assert not any(_matches(f, f"locker/{BANK}/command") for f, _ in SUBSCRIPTIONS)


# ---------------------------------------------------------------------------------------------
# payloads: every contract example decodes to exact values


def test_register_payload() -> None:
    assert decode(RegisterPayload, b'{"client_id": "esp32-a1b2c3"}') == RegisterPayload(
        client_id="esp32-a1b2c3"
    )


def test_response_success_example() -> None:
    raw = b"""{
      "type": "command_response",
      "action": "open_compartment",
      "result": "success",
      "transaction_id": "xyz-789",
      "timestamp": "2023-10-27T10:00:01Z",
      "message": "Compartment opened successfully."
    }"""
    assert decode(ResponsePayload, raw) == ResponsePayload(
        type="command_response",
        action="open_compartment",
        result="success",
        transaction_id="xyz-789",
        timestamp=datetime.fromisoformat("2023-10-27T10:00:01Z"),
        message="Compartment opened successfully.",
        error_code=None,
        applied_config_hash=None,
    )


def test_response_error_example() -> None:
    raw = b"""{
      "type": "command_response",
      "action": "open_compartment",
      "result": "error",
      "transaction_id": "xyz-789",
      "timestamp": "2023-10-27T10:00:01Z",
      "error_code": "DOOR_JAMMED",
      "message": "Could not open compartment, mechanism is jammed."
    }"""
    payload = decode(ResponsePayload, raw)
    assert (payload.result, payload.error_code, payload.message) == (
        "error",
        "DOOR_JAMMED",
        "Could not open compartment, mechanism is jammed.",
    )


def test_response_apply_config_example() -> None:
    digest = "a" * 64
    raw = (
        b'{"type":"command_response","action":"apply_config","result":"success",'
        b'"transaction_id":"cfg-123","timestamp":"2023-10-27T10:05:02Z",'
        b'"applied_config_hash":"' + digest.encode() + b'","message":"Config applied."}'
    )
    payload = decode(ResponsePayload, raw)
    assert (payload.action, payload.transaction_id, payload.applied_config_hash) == (
        "apply_config",
        "cfg-123",
        digest,
    )


def test_event_door_state_changed_example() -> None:
    raw = b"""{
      "type": "event",
      "event": "door_state_changed",
      "event_id": "evt-111",
      "timestamp": "2023-10-27T10:00:00Z",
      "data": {"compartment_number": 3, "state": "closed"}
    }"""
    assert decode(DevicePayload, raw) == DevicePayload(
        type="event",
        event="door_state_changed",
        data={"compartment_number": 3, "state": "closed"},
        event_id="evt-111",
        timestamp=datetime.fromisoformat("2023-10-27T10:00:00Z"),
    )


def test_event_qr_scanned_example() -> None:
    raw = (
        b'{"type":"event","event":"qr_scanned","event_id":"evt-222",'
        b'"timestamp":"2023-10-27T10:02:00Z","data":{"qr_payload":"abc.def","scanner":"locker"}}'
    )
    payload = decode(DevicePayload, raw)
    assert payload.event == "qr_scanned"
    assert payload.data == {"qr_payload": "abc.def", "scanner": "locker"}


def test_event_without_event_id() -> None:
    raw = b'{"type":"event","event":"battery_low","timestamp":"2023-10-27T10:02:00Z","data":{}}'
    payload = decode(DevicePayload, raw)
    assert (payload.event, payload.event_id, payload.data) == ("battery_low", None, {})


def test_state_heartbeat_example() -> None:
    raw = (
        b'{"type":"state","state":"heartbeat",'
        b'"data":{"timestamp":"2023-10-27T10:01:00Z","uptime_seconds":86400}}'
    )
    assert decode(StatePayload, raw) == StatePayload(
        type="state",
        state="heartbeat",
        data=HeartbeatData(
            timestamp=datetime.fromisoformat("2023-10-27T10:01:00Z"), uptime_seconds=86400
        ),
    )


def test_state_heartbeat_with_session_id() -> None:
    raw = (
        b'{"type":"state","state":"heartbeat","session_id":"boot-42",'
        b'"data":{"timestamp":"2023-10-27T10:01:00Z","uptime_seconds":5}}'
    )
    payload = decode(StatePayload, raw)
    assert payload.session_id == "boot-42"
    assert payload.data == HeartbeatData(
        timestamp=datetime.fromisoformat("2023-10-27T10:01:00Z"), uptime_seconds=5
    )


def test_state_last_will_example() -> None:
    raw = (
        b'{"type":"state","state":"connection_lost","status":"offline",'
        b'"timestamp":"2023-10-27T10:00:00Z","reason":"mqtt_last_will","session_id":"boot-42"}'
    )
    assert decode(StatePayload, raw) == StatePayload(
        type="state",
        state="connection_lost",
        status="offline",
        timestamp=datetime.fromisoformat("2023-10-27T10:00:00Z"),
        reason="mqtt_last_will",
        session_id="boot-42",
        data=None,
    )


def test_unknown_extra_fields_are_tolerated() -> None:
    raw = b'{"client_id": "c-1", "firmware": "2.3.1"}'
    assert decode(RegisterPayload, raw) == RegisterPayload(client_id="c-1")


# ---------------------------------------------------------------------------------------------
# payloads: errors with clear messages


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"client_id":',
        b'{"client_id": "a"} trailing',
        b"{'a': 1}",
        b'{"value": NaN}',
        b"not json",
    ],
)
def test_bad_json_is_a_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        decode(RegisterPayload, raw)
    assert str(info.value).startswith("malformed JSON: ")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe{}",
        b'{"client_id": "a", "extra": "\xff"}',  # a skipped field is checked too
        b'{"client_id": "a\xc3"}',
    ],
)
def test_invalid_utf8_anywhere_is_a_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError, match="not valid UTF-8"):
        decode(RegisterPayload, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"client_id": "a\\u0000b"}',
        b'{"client_id": "a", "extra": {"deep": ["x\\u0000"]}}',
    ],
)
def test_nul_in_any_string_is_a_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError, match="NUL"):
        decode(RegisterPayload, raw)


def test_an_escaped_backslash_before_u0000_is_no_nul() -> None:
    assert decode(RegisterPayload, b'{"client_id": "a\\\\u0000"}').client_id == "a\\u0000"


def test_nesting_deeper_than_32_levels_is_a_payload_error() -> None:
    deep = b'{"client_id": "a", "x": ' + b"[" * 33 + b"]" * 33 + b"}"
    with pytest.raises(PayloadError, match="nested deeper than 32"):
        decode(RegisterPayload, deep)
    shallow = b'{"client_id": "a", "x": ' + b"[" * 31 + b"]" * 31 + b"}"
    assert decode(RegisterPayload, shallow).client_id == "a"
    brackets_in_strings = b'{"client_id": "' + b"[" * 100 + b'"}'
    assert decode(RegisterPayload, brackets_in_strings).client_id == "[" * 100


@pytest.mark.parametrize("uptime", [-5, 2**64, 1.5])
def test_uptime_must_be_a_whole_non_negative_number(uptime: object) -> None:
    raw = (
        b'{"type":"state","state":"heartbeat","data":{"uptime_seconds":%s}}' % str(uptime).encode()
    )
    with pytest.raises(PayloadError, match="uptime_seconds"):
        decode(StatePayload, raw)


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null", b"true"])
def test_non_object_json_is_a_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        decode(ResponsePayload, raw)
    assert str(info.value).startswith("invalid payload: Expected `object`, got ")


@pytest.mark.parametrize(
    ("cls", "raw", "path"),
    [
        (RegisterPayload, b'{"client_id": 17}', "$.client_id"),
        (RegisterPayload, b'{"client_id": null}', "$.client_id"),
        (
            ResponsePayload,
            b'{"type":"command_response","action":"open_compartment","result":"ok",'
            b'"transaction_id":"t","timestamp":"2023-10-27T10:00:01Z"}',
            "$.result",
        ),
        (
            ResponsePayload,
            b'{"type":"event","action":"open_compartment","result":"success",'
            b'"transaction_id":"t","timestamp":"2023-10-27T10:00:01Z"}',
            "$.type",
        ),
        (
            ResponsePayload,
            b'{"type":"command_response","action":"open_compartment","result":"success",'
            b'"transaction_id":5,"timestamp":"2023-10-27T10:00:01Z"}',
            "$.transaction_id",
        ),
        (
            ResponsePayload,
            b'{"type":"command_response","action":"open_compartment","result":"error",'
            b'"transaction_id":"t","timestamp":"2023-10-27T10:00:01Z","error_code":7}',
            "$.error_code",
        ),
        (
            DevicePayload,
            b'{"type":"event","event":"x","timestamp":"2026-01-01T00:00:00Z","data":[]}',
            "$.data",
        ),
        (
            DevicePayload,
            b'{"type":"event","event":1,"timestamp":"2026-01-01T00:00:00Z","data":{}}',
            "$.event",
        ),
        (
            DevicePayload,
            b'{"type":"state","event":"x","timestamp":"2026-01-01T00:00:00Z","data":{}}',
            "$.type",
        ),
        (
            StatePayload,
            b'{"type":"state","state":"heartbeat","data":{"uptime_seconds":"5"}}',
            "$.data.uptime_seconds",
        ),
        (
            StatePayload,
            b'{"type":"state","state":"heartbeat","data":{"uptime_seconds":1.5}}',
            "$.data.uptime_seconds",
        ),
        (StatePayload, b'{"type":"state","state":"heartbeat","data":"x"}', "$.data"),
        (
            StatePayload,
            b'{"type":"state","state":"connection_lost","session_id":3}',
            "$.session_id",
        ),
    ],
)
def test_wrong_type_is_a_payload_error_naming_the_field(cls: type, raw: bytes, path: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode(cls, raw)
    message = str(info.value)
    assert message.startswith("invalid payload: ")
    assert f"`{path}`" in message


@pytest.mark.parametrize(
    ("cls", "raw", "field"),
    [
        (RegisterPayload, b"{}", "client_id"),
        (
            ResponsePayload,
            b'{"type":"command_response","result":"success","transaction_id":"t",'
            b'"timestamp":"2023-10-27T10:00:01Z"}',
            "action",
        ),
        (
            ResponsePayload,
            b'{"type":"command_response","action":"open_compartment",'
            b'"transaction_id":"t","timestamp":"2023-10-27T10:00:01Z"}',
            "result",
        ),
        (
            ResponsePayload,
            b'{"type":"command_response","action":"open_compartment",'
            b'"result":"success","timestamp":"2023-10-27T10:00:01Z"}',
            "transaction_id",
        ),
        (DevicePayload, b'{"event":"x","timestamp":"2026-01-01T00:00:00Z","data":{}}', "type"),
        (DevicePayload, b'{"type":"event","timestamp":"2026-01-01T00:00:00Z","data":{}}', "event"),
        (StatePayload, b'{"state":"heartbeat","data":{"uptime_seconds":1}}', "type"),
        (StatePayload, b'{"type":"state","data":{"uptime_seconds":1}}', "state"),
    ],
)
def test_missing_field_is_a_payload_error_naming_the_field(
    cls: type, raw: bytes, field: str
) -> None:
    with pytest.raises(PayloadError) as info:
        decode(cls, raw)
    assert str(info.value) == f"invalid payload: Object missing required field `{field}`"


@pytest.mark.parametrize(
    ("cls", "raw", "field"),
    [
        (
            ResponsePayload,
            b'{"action":"open_compartment","result":"success",'
            b'"transaction_id":"t","timestamp":"2023-10-27T10:00:01Z"}',
            "type",
        ),
        (
            ResponsePayload,
            b'{"type":"command_response","action":"open_compartment",'
            b'"result":"success","transaction_id":"t"}',
            "timestamp",
        ),
        (DevicePayload, b'{"type":"event","event":"x","data":{}}', "timestamp"),
        (DevicePayload, b'{"type":"event","event":"x","timestamp":"2023-10-27T10:00:00Z"}', "data"),
    ],
)
def test_contract_required_field_missing_is_a_payload_error(
    cls: type, raw: bytes, field: str
) -> None:
    """Contract §2 marks optional fields with ``?``; ``type``/``timestamp`` of a response and
    ``timestamp``/``data`` of an event are not optional, and a payload with a missing field is
    malformed and dropped."""
    with pytest.raises(PayloadError) as info:
        decode(cls, raw)
    assert field in str(info.value)


def test_oversized_payload_is_refused_before_parsing() -> None:
    raw = b'{"client_id": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    with pytest.raises(PayloadError) as info:
        decode(RegisterPayload, raw)
    assert str(info.value) == f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD_BYTES}"


def test_oversized_garbage_reports_the_size_not_the_json() -> None:
    raw = b"\x00" * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(PayloadError) as info:
        decode(StatePayload, raw)
    expected = f"payload of {MAX_PAYLOAD_BYTES + 1} bytes exceeds {MAX_PAYLOAD_BYTES}"
    assert str(info.value) == expected


def test_payload_of_exactly_the_limit_is_accepted() -> None:
    prefix, suffix = b'{"client_id": "', b'"}'
    raw = prefix + b"x" * (MAX_PAYLOAD_BYTES - len(prefix) - len(suffix)) + suffix
    assert len(raw) == MAX_PAYLOAD_BYTES
    assert decode(RegisterPayload, raw).client_id == "x" * (MAX_PAYLOAD_BYTES - 17)


def test_limit_is_16_kib() -> None:
    assert MAX_PAYLOAD_BYTES == 16 * 1024
