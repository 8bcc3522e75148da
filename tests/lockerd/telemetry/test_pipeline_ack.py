"""The metrics pipeline acknowledges an MQTT point once it is stored or dropped (contract §2),
never before its batch committed and never when the batch failed (the broker then delivers
the message again)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import trio
import trio.testing

from tests.lockerd.telemetry.test_pipeline import Rig, body, db_url, rig, writer_held

__all__ = ["db_url", "rig"]  # the fixtures, imported for pytest


class Acks(Counter[str]):
    def of(self, name: str) -> Callable[[], None]:
        self[name] += 0

        def on_done() -> None:
            self[name] += 1

        return on_done


async def test_points_are_acknowledged_after_their_batch_committed(rig: Rig) -> None:
    acks = Acks()
    async with writer_held(rig.store):
        await rig.pipeline.mqtt_sink(*rig.topic(), body(1), acks.of("one"))
        await rig.pipeline.mqtt_sink(*rig.topic(), body(2, dedupe_id="d"), acks.of("two"))
        await rig.pipeline.mqtt_sink(*rig.topic(), body(3, dedupe_id="d"), acks.of("repeat"))
        await trio.testing.wait_all_tasks_blocked()
        assert sum(acks.values()) == 0  # queued or being written: not acknowledged yet
    await rig.wait(lambda s: s.stored == 2 and s.duplicates == 1)
    assert acks == {"one": 1, "two": 1, "repeat": 1}


async def test_rejected_points_are_acknowledged_at_once(rig: Rig) -> None:
    acks = Acks()
    await rig.pipeline.mqtt_sink(*rig.topic(), b"{not json", acks.of("bad"))
    assert acks == {"bad": 1}


async def test_a_failed_batch_is_not_acknowledged(rig: Rig) -> None:
    acks = Acks()
    rig.flaky.fail = True
    await rig.pipeline.mqtt_sink(*rig.topic(), body(1), acks.of("lost"))
    await rig.wait(lambda s: s.failed == 1)
    assert acks == {"lost": 0}
    rig.flaky.fail = False
    await rig.pipeline.mqtt_sink(*rig.topic(), body(1), acks.of("redelivered"))
    await rig.wait(lambda s: s.stored == 1)
    assert acks == {"lost": 0, "redelivered": 1}
