"""A load generator that costs almost nothing: pre-encoded MQTT 3.1.1 packets and sendall.

A paho publisher tops out around 27k QoS 1 msgs/s on this machine and competes with the
service for the two cores (research/limits.md §1, conclusion 3), so the ingestion benchmarks
encode every PUBLISH before the clock starts and write them with one ``sendall`` from a
thread. A second thread reads (and counts) the PUBACKs so the socket never stalls.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from types import TracebackType


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def connect_packet(
    client_id: str,
    *,
    clean: bool = True,
    keepalive: int = 0,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = 0x02 if clean else 0x00
    if username is not None:
        flags |= 0x80 | (0x40 if password is not None else 0)
    body = _string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body += _string(client_id.encode())
    if username is not None:
        body += _string(username.encode())
        if password is not None:
            body += _string(password.encode())
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(
    topic: str, payload: bytes, *, qos: int = 1, mid: int = 1, retain: bool = False
) -> bytes:
    header = 0x30 | (qos << 1) | (1 if retain else 0)
    body = _string(topic.encode())
    if qos:
        body += struct.pack("!H", mid)
    body += payload
    return bytes([header]) + _remaining_length(len(body)) + body


def publish_burst(
    messages: list[tuple[str, bytes]], *, qos: int = 1, retain: bool = False, first_mid: int = 1
) -> bytes:
    """One buffer with a PUBLISH per (topic, payload); packet ids cycle through 1..65535."""
    parts = []
    for index, (topic, payload) in enumerate(messages):
        mid = (first_mid + index - 1) % 65535 + 1
        parts.append(publish_packet(topic, payload, qos=qos, mid=mid, retain=retain))
    return b"".join(parts)


class RawPublisher:
    """One raw MQTT connection (keepalive 0, so no PINGREQ is needed)."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.username = username
        self.password = password
        self.sock: socket.socket | None = None
        self.acked_bytes = 0
        self._reader: threading.Thread | None = None
        self._closed = False

    def __enter__(self) -> RawPublisher:
        sock = socket.create_connection((self.host, self.port), timeout=10.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(connect_packet(self.client_id, username=self.username, password=self.password))
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            if not chunk:
                raise ConnectionError("broker closed the connection before CONNACK")
            connack += chunk
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"CONNACK refused: {connack!r}")
        sock.settimeout(None)
        self.sock = sock
        self._reader = threading.Thread(target=self._read, name="raw-mqtt-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.sock is not None
        while not self._closed:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            self.acked_bytes += len(data)  # only PUBACKs (4 bytes each) come back

    @property
    def acks(self) -> int:
        return self.acked_bytes // 4

    def send(self, blob: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(blob)

    def wait_acks(self, count: int, timeout: float = 60.0) -> None:
        """Block until ``count`` PUBACKs arrived (the broker has taken every message)."""
        deadline = time.monotonic() + timeout
        while self.acks < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.acks} of {count} PUBACKs in {timeout} s")
            time.sleep(0.005)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        if self.sock is not None:
            try:
                self.sock.sendall(b"\xe0\x00")  # DISCONNECT
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        if self._reader is not None:
            self._reader.join(timeout=5.0)
