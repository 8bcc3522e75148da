"""The router acknowledges what it drops and hands the acknowledgement on with what it routes.

Contract §2: a message is acknowledged (PUBACK) only after it has been applied or dropped. So a
message the router drops (malformed topic or payload, unknown bank, retained state, a routing
bug) is acknowledged by the router at once, and a routed one is acknowledged by whoever takes
it over (the bank actor, the metrics pipeline), never by the router before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from domain import commands as c
from gateway.mqtt import InboundMessage, MqttClient
from tests.gateway.test_router import (
    BANK,
    NOW,
    TENANT,
    TOKEN,
    UNKNOWN_BANK,
    Router,
    heartbeat,
    make_router,
)
from tests.support.fakes import json_payload


class CountingAcker:
    """Stands in for the MQTT client behind ``InboundMessage.ack``."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def _ack(self, message: InboundMessage) -> None:
        self.acked.append(message.mid)


def message(
    acker: CountingAcker, topic: str, payload: bytes | dict[str, Any], *, retain: bool = False
) -> InboundMessage:
    return InboundMessage(
        topic,
        json_payload(payload),
        1,
        retain,
        mid=len(acker.acked) + 100,
        acker=cast(MqttClient, acker),
    )


@pytest.fixture
def router() -> Router:
    return make_router()


DROPPED = [
    pytest.param("locker/not-a-uuid/state", heartbeat(), False, id="malformed-topic"),
    pytest.param("nowhere", b"x", False, id="unknown-topic"),
    pytest.param(f"locker/{BANK}/state", b"{not json", False, id="malformed-payload"),
    pytest.param(f"locker/{UNKNOWN_BANK}/state", heartbeat(), False, id="unknown-bank"),
    pytest.param(f"locker/{BANK}/state", heartbeat(), True, id="retained-state"),
    pytest.param("locker/register/tok", b'{"client_id": "a/b"}', False, id="bad-client-id"),
    pytest.param("locker/register/unknown-token", {"client_id": "box"}, False, id="bad-token"),
]


@pytest.mark.parametrize(("topic", "payload", "retain"), DROPPED)
async def test_dropped_messages_are_acknowledged_by_the_router(
    router: Router, topic: str, payload: bytes | dict[str, Any], retain: bool
) -> None:
    acker = CountingAcker()
    await router.gateway.route(message(acker, topic, payload, retain=retain))
    assert len(acker.acked) == 1
    assert router.observer.drops() == 1


async def test_a_routed_bank_message_is_acknowledged_by_its_taker_not_the_router(
    router: Router,
) -> None:
    acker = CountingAcker()
    await router.gateway.route(message(acker, f"locker/{BANK}/state", heartbeat()))
    assert acker.acked == []
    (call,) = router.inbox.calls
    assert call.on_done is not None
    call.on_done()
    assert acker.acked == [100]


async def test_the_heartbeat_command_carries_the_device_clock(router: Router) -> None:
    await router.gateway.route(message(CountingAcker(), f"locker/{BANK}/state", heartbeat()))
    command = router.inbox.calls[0].command
    assert isinstance(command, c.RecordHeartbeat)
    assert command.device_time == datetime.fromisoformat(NOW).astimezone(UTC)


async def test_a_registration_hands_its_acknowledgement_to_the_bank(router: Router) -> None:
    acker = CountingAcker()
    await router.gateway.route(message(acker, f"locker/register/{TOKEN}", {"client_id": "box"}))
    (call,) = router.inbox.calls
    assert call.method == "ask" and call.on_done is not None
    assert acker.acked == []
    assert isinstance(call.command, c.Provision)
    assert call.command.revocation_window_seconds == 0


async def test_the_provisioning_command_carries_the_revocation_window() -> None:
    router = make_router()
    router.gateway.revocation_window_seconds = 35
    await router.gateway.route(
        message(CountingAcker(), f"locker/register/{TOKEN}", {"client_id": "box"})
    )
    command = router.inbox.calls[0].command
    assert isinstance(command, c.Provision)
    assert command.revocation_window_seconds == 35


async def test_a_metric_point_hands_its_acknowledgement_to_the_pipeline(router: Router) -> None:
    acker = CountingAcker()
    await router.gateway.route(message(acker, f"metrics/{TENANT}/agent-1/temp", {"value": 1}))
    assert acker.acked == []
    (on_done,) = router.sink.acks
    on_done()
    assert len(acker.acked) == 1


async def test_a_routing_bug_is_counted_and_acknowledged(router: Router) -> None:
    acker = CountingAcker()
    router.inbox.error = RuntimeError("bug in routing")
    await router.gateway.route(message(acker, f"locker/{BANK}/state", heartbeat()))
    assert len(acker.acked) == 1
    assert router.observer.dropped == {("state", "internal_error"): 1}


async def test_qos0_and_auto_ack_messages_need_no_acknowledgement(router: Router) -> None:
    plain = InboundMessage(f"locker/{BANK}/state", json_payload(heartbeat()), 0, False)
    plain.ack()  # a no-op without an acknowledger
    await router.gateway.route(plain)
    assert len(router.inbox.calls) == 1
