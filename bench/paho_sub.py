"""Baseline subscriber: bare paho-mqtt 2.x, its own process, no work per message.

    python bench/paho_sub.py HOST PORT FILTER QOS COUNT TIMEOUT [distinct]

Prints ``ready`` once subscribed, then one JSON line when COUNT live messages (retained
ones delivered at subscribe time are skipped) have arrived or TIMEOUT seconds passed
(with ``distinct``: COUNT different topics, e.g. every bank's first heartbeat):
``{"received", "first", "last", "cpu_seconds"}`` with monotonic times, comparable with the
parent's ``time.monotonic()`` (CLOCK_MONOTONIC is system-wide on Linux).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def main() -> int:
    host, port, topic, qos, count, timeout = sys.argv[1:7]
    distinct = sys.argv[7:8] == ["distinct"]
    topics: set[str] = set()
    wanted = int(count)
    state: dict[str, Any] = {"received": 0, "first": None, "last": None, "subscribed": False}

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(topic, qos=int(qos))

    def on_subscribe(client: paho.Client, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
        state["subscribed"] = True

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.retain:
            return
        now = time.monotonic()
        if distinct:
            if message.topic in topics:
                return
            topics.add(message.topic)
        if state["first"] is None:
            state["first"] = now
        state["received"] += 1
        state["last"] = now

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-baseline-{os.getpid()}",
        clean_session=True,
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, int(port), keepalive=60)
    deadline = time.monotonic() + float(timeout)
    while not state["subscribed"] and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    print("ready", flush=True)
    cpu_start = os.times()
    while state["received"] < wanted and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    cpu_end = os.times()
    client.disconnect()
    cpu = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
    print(
        json.dumps(
            {
                "received": state["received"],
                "first": state["first"],
                "last": state["last"],
                "cpu_seconds": cpu,
            }
        ),
        flush=True,
    )
    return 0 if state["received"] >= wanted else 1


if __name__ == "__main__":
    sys.exit(main())
