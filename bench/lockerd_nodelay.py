"""``lockerd`` with TCP_NODELAY on its MQTT socket: the fix suggested in docs/benchmarks.md,
applied by monkeypatching for a what-if measurement. Benchmarks only; not for production.

    python bench/lockerd_nodelay.py serve   # same arguments as ``lockerd``
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import mqtt
from lockerd.cli import main

_original = mqtt.MqttClient._on_socket_open


def _on_socket_open(self: mqtt.MqttClient, client: Any, userdata: Any, sock: Any) -> None:
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _original(self, client, userdata, sock)


mqtt.MqttClient._on_socket_open = _on_socket_open  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
