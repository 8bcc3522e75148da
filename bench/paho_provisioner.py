"""Baseline provisioner: bare paho-mqtt 2.x in its own process, answering every registration
at once with made-up credentials (no token check, no store, no actor).

    python bench/paho_provisioner.py HOST PORT

Prints ``ready`` once subscribed to ``locker/register/+``; runs until killed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    state = {"subscribed": False, "answered": 0}

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe("locker/register/+", qos=1)

    def on_subscribe(client: paho.Client, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
        state["subscribed"] = True

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        client_id = json.loads(message.payload)["client_id"]
        state["answered"] += 1
        n = state["answered"]
        reply = {
            "status": "success",
            "data": {
                "locker_bank_id": f"00000000-0000-4000-8000-{n:012d}",
                "mqtt_user": f"dev-{n}",
                "mqtt_password": "password",
            },
        }
        client.publish(f"locker/provisioning/reply/{client_id}", json.dumps(reply), qos=1)

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-provisioner-{os.getpid()}",
        clean_session=True,
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.max_inflight_messages_set(1000)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=60)
    while not state["subscribed"]:
        client.loop(timeout=0.1)
    print("ready", flush=True)
    client.loop_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
