"""``lockerd serve`` whose event store can hold one append forever: a crash between delivery
and apply, on demand (tests/broker/test_ack_kill.py).

Configured like ``lockerd serve`` from LOCKERD_* variables. ``READY`` is printed on stdout once
the service runs. A line ``ARM <n>`` on stdin makes the append that records the n-th device
answer (``CompartmentOpened``) from then on wait forever, after printing ``BLOCKED``: the answer
has been delivered to lockerd but not applied (a bank actor may store several answers in one
append: then those after it in the append are held too). The test then kills the process
(kill -9) and starts it again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import trio

from domain.records import NewEvent, StoredEvent
from lockerd.config import load_settings
from lockerd.service import running_service


async def main() -> None:
    settings = load_settings(os.environ, {})
    block_at = 0
    async with running_service(settings) as service, trio.open_nursery() as nursery:
        store = service.store
        original = store.append
        answers = 0

        async def append(
            stream_id: str, expected_version: int, events: Sequence[NewEvent]
        ) -> list[StoredEvent]:
            nonlocal answers
            opened = sum(1 for event in events if event.type == "CompartmentOpened")
            if opened:
                answers += opened
                if answers - opened < block_at <= answers:
                    print("BLOCKED", flush=True)
                    await trio.sleep_forever()
            return await original(stream_id, expected_version, events)

        async def commands() -> None:
            nonlocal block_at
            stdin = trio.lowlevel.FdStream(os.dup(0))
            buffer = b""
            while chunk := await stdin.receive_some(1024):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    word, _, count = line.decode().partition(" ")
                    if word == "ARM":
                        block_at = answers + int(count)

        store.append = append  # type: ignore[method-assign]
        nursery.start_soon(commands)
        print("READY", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
