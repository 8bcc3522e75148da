"""Decoding and validation of one metric point (lockerd.telemetry.points): pure, no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockerd.telemetry.points import (
    FUTURE_TOLERANCE_US,
    MAX_METRIC_NAME,
    MAX_PAYLOAD_BYTES,
    REASONS,
    Rejected,
    check_metric_name,
    check_timestamp,
    check_value,
    decode_http,
    decode_mqtt,
    make_point,
)
from lockerd.telemetry.schema import from_us, iso_us, to_us

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
NOW_US = to_us(NOW)


def reason_of(payload: bytes, *, http: bool = False) -> str:
    with pytest.raises(Rejected) as caught:
        (decode_http if http else decode_mqtt)(payload)
    assert caught.value.message
    assert caught.value.reason in REASONS
    return caught.value.reason


def test_minimal_and_full_payloads_decode() -> None:
    assert decode_mqtt(b'{"value": 1}').value == 1
    full = decode_mqtt(b'{"value": 2.5, "timestamp": "2026-01-01T00:00:00Z", "dedupe_id": "d"}')
    assert (full.value, full.timestamp, full.dedupe_id) == (2.5, "2026-01-01T00:00:00Z", "d")
    # unknown fields are tolerated: agents may send tags the backend does not use yet
    assert decode_mqtt(b'{"value": 1, "unit": "C"}').value == 1
    http = decode_http(b'{"metric": "cpu", "value": 3}')
    assert (http.metric, http.value) == ("cpu", 3)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "malformed_payload"),
        (b"[1, 2]", "malformed_payload"),
        (b"", "malformed_payload"),
        (b"\xff\xfe", "malformed_payload"),
        (b"[" * 10_000, "malformed_payload"),
        (b"{}", "invalid_value"),
        (b'{"value": "1"}', "invalid_value"),
        (b'{"value": true}', "invalid_value"),
        (b'{"value": null}', "invalid_value"),
        (b'{"value": NaN}', "invalid_value"),
        (b'{"value": Infinity}', "invalid_value"),
        (b'{"value": -Infinity}', "invalid_value"),
        (b'{"value": 1e999}', "invalid_value"),
        (b'{"value": 1, "timestamp": 5}', "invalid_timestamp"),
        (b'{"value": 1, "dedupe_id": 7}', "invalid_dedupe_id"),
        # issue 14: values no store can hold are refused at the boundary (domain.jsonguard)
        (b'{"value": 1, "dedupe_id": "d\\u0000"}', "malformed_payload"),
        (b'{"value": 1, "extra": {"x": ["\\u0000"]}}', "malformed_payload"),
        (b'{"value": 1, "dedupe_id": "\xff"}', "malformed_payload"),
        (b'{"value": 1, "extra": ' + b"[" * 33 + b"]" * 33 + b"}", "malformed_payload"),
        (b"[" * 1000 + b"]" * 1000, "malformed_payload"),
    ],
)
def test_bad_mqtt_payloads_name_their_reason(payload: bytes, reason: str) -> None:
    assert reason_of(payload) == reason


def test_http_body_reasons() -> None:
    assert reason_of(b"", http=True) == "malformed_payload"
    assert reason_of(b'{"value": 1}', http=True) == "invalid_metric"
    assert reason_of(b'{"metric": 5, "value": 1}', http=True) == "invalid_metric"
    assert reason_of(b'{"metric": "m", "value": false}', http=True) == "invalid_value"
    assert reason_of(b'{"metric": "m\\u0000", "value": 1}', http=True) == "malformed_payload"


def test_payload_size_limit() -> None:
    padding = "x" * (MAX_PAYLOAD_BYTES - 40)
    fits = json.dumps({"value": 1, "pad": padding}).encode()
    assert len(fits) <= MAX_PAYLOAD_BYTES
    decode_mqtt(fits)
    too_big = json.dumps({"value": 1, "pad": padding + "y" * 100}).encode()
    assert reason_of(too_big) == "payload_too_large"


@pytest.mark.parametrize("value", [0, -3, 2**53, 1.5, -1e300, 5e-324])
def test_finite_numbers_are_values(value: float) -> None:
    assert check_value(value) == float(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 10**400, True])
def test_non_finite_or_non_numbers_are_refused(value: float) -> None:
    with pytest.raises(Rejected) as caught:
        check_value(value)
    assert caught.value.reason == "invalid_value"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24T11:00:00Z", datetime(2026, 11, 24, 11, tzinfo=UTC)),
        ("2026-11-24T13:00:00+02:00", datetime(2026, 11, 24, 11, tzinfo=UTC)),
        ("2026-11-24T11:00:00.123456Z", datetime(2026, 11, 24, 11, 0, 0, 123456, tzinfo=UTC)),
        ("20261124T110000Z", datetime(2026, 11, 24, 11, tzinfo=UTC)),  # ISO 8601 basic format
        ("1969-07-20T20:17:40Z", datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC)),
    ],
)
def test_iso_8601_timestamps(text: str, expected: datetime) -> None:
    assert from_us(check_timestamp(text, NOW_US)) == expected


def test_missing_timestamp_is_receive_time() -> None:
    assert check_timestamp(None, NOW_US) == NOW_US


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "2026-13-01T00:00:00Z",
        "",
        "1700000000",
        # contract §2: a timestamp without a UTC offset makes the message malformed
        "2026-11-24T11:00:00",
        "2026-11-24",
        "20261124T110000",
    ],
)
def test_unparseable_or_offsetless_timestamps(text: str) -> None:
    with pytest.raises(Rejected) as caught:
        check_timestamp(text, NOW_US)
    assert caught.value.reason == "invalid_timestamp"


def test_future_tolerance_is_five_minutes() -> None:
    edge = iso_us(NOW_US + FUTURE_TOLERANCE_US)
    assert check_timestamp(edge, NOW_US) == NOW_US + FUTURE_TOLERANCE_US
    with pytest.raises(Rejected) as caught:
        check_timestamp(iso_us(NOW_US + FUTURE_TOLERANCE_US + 1000), NOW_US)
    assert caught.value.reason == "future_timestamp"


@pytest.mark.parametrize(
    "name", ["", "a/b", "cpu+", "#", "tab\there", "nul\x00", "x" * (MAX_METRIC_NAME + 1)]
)
def test_metric_names_must_be_one_plain_level(name: str) -> None:
    with pytest.raises(Rejected) as caught:
        check_metric_name(name)
    assert caught.value.reason == "invalid_metric"


@pytest.mark.parametrize("name", ["cpu", "temp.celsius", "disk:sda1 used %", "x" * MAX_METRIC_NAME])
def test_plain_metric_names(name: str) -> None:
    assert check_metric_name(name) == name


def test_dedupe_id_length() -> None:
    def point(dedupe_id: str) -> object:
        return make_point(
            tenant_id="t",
            agent_id="a",
            metric="m",
            value=1,
            timestamp=None,
            dedupe_id=dedupe_id,
            now_us=NOW_US,
            source="mqtt",
        )

    assert point("x" * 128)
    for bad in ("", "x" * 129, "a\x00b"):
        with pytest.raises(Rejected) as caught:
            point(bad)
        assert caught.value.reason == "invalid_dedupe_id"


def test_point_json_shape() -> None:
    point = make_point(
        tenant_id="t",
        agent_id="a",
        metric="m",
        value=2,
        timestamp="2026-11-24T11:00:00Z",
        dedupe_id=None,
        now_us=NOW_US,
        source="http",
    )
    assert point.as_json() == {
        "agent_id": "a",
        "metric": "m",
        "value": 2.0,
        "timestamp": "2026-11-24T11:00:00.000Z",
    }


@given(st.datetimes(timezones=st.just(UTC)))
def test_microsecond_time_round_trips(moment: datetime) -> None:
    assert from_us(to_us(moment)) == moment
    # on the wire, milliseconds (one formatter for every answer)
    truncated = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    assert datetime.fromisoformat(iso_us(to_us(moment))) == truncated
