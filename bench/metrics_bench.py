"""Metric points per second ingested over MQTT by lockerd, against the broker's raw delivery rate.

    .venv/bin/python bench/metrics_bench.py                 # 100,000 points, QoS 1, ~30 s
    .venv/bin/python bench/metrics_bench.py --qos 0 --runs 3
    .venv/bin/python bench/metrics_bench.py --dedupe        # every point carries a dedupe_id
    .venv/bin/python bench/metrics_bench.py --smoke         # ~2 s, for CI: fails on any loss

Each run has two phases on one private mosquitto on 127.0.0.1 (nothing leaves loopback):

1. **raw**: a bare paho subscriber (a child process: ``--role subscriber``) receives the burst on
   ``metrics/#``. This is what the broker and a paho receive loop deliver on this machine.
2. **lockerd**: the whole service runs in this process (HTTP, gateway, pipeline, SQLite store in
   a temporary directory) and ingests the same burst: received by the gateway's paho adapter,
   routed, validated, batched and committed. The phase ends when the pipeline reports that many
   points stored (an awaited event, not a poll).

The burst comes from a child process (``--role publisher``) that writes pre-encoded PUBLISH
packets to a raw socket (QoS 1 with a window of unacknowledged packets), so the load generator
costs little next to the broker and the consumer. Rates are points / (time the last point was
received or stored - time the publisher started sending). Every phase is bounded by
``--timeout``; on a timeout the partial count is reported and the exit status is 1.

Reported: both rates, their ratio, the pipeline's batch sizes, and CPU seconds per point of the
lockerd process, the broker and the publisher (getrusage / /proc), which show what limits the rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"  # loopback only, by design
METRICS = 10  # metric names the burst is spread over
QOS1_WINDOW = 2_000  # unacknowledged PUBLISH packets the raw publisher allows itself
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- MQTT packets


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str) -> bytes:
    body = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int, packet_id: int) -> bytes:
    body = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _remaining_length(len(body)) + body


def burst_payloads(count: int, dedupe: bool) -> list[tuple[str, bytes]]:
    """(metric, payload) pairs: values with a timestamp in the recent past, like an agent's."""
    start = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for n in range(count):
        fields: dict[str, Any] = {
            "value": n * 0.5,
            "timestamp": (start + timedelta(milliseconds=n)).isoformat().replace("+00:00", "Z"),
        }
        if dedupe:
            fields["dedupe_id"] = f"p-{n}"
        out.append((f"m{n % METRICS}", json.dumps(fields, separators=(",", ":")).encode()))
    return out


# --------------------------------------------------------------------------- child: publisher


def run_publisher(port: int, prefix: str, count: int, qos: int, dedupe: bool) -> None:
    """Connect, read a line from stdin (go), send the burst, report START/DONE wall times."""
    packets = []
    for n, (metric, payload) in enumerate(burst_payloads(count, dedupe)):
        packets.append(publish_packet(f"{prefix}/{metric}", payload, qos, n % 65535 + 1))
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(f"bench-pub-{os.getpid()}"))
    if sock.recv(4)[:2] != b"\x20\x02":
        raise SystemExit("publisher: no CONNACK")
    acked = 0
    done = threading.Condition()

    def read_acks() -> None:  # every PUBACK is exactly 4 bytes; nothing else arrives
        nonlocal acked
        pending = 0
        while True:
            data = sock.recv(65536)
            if not data:
                return
            pending += len(data)
            with done:
                acked += pending // 4
                pending %= 4
                done.notify_all()

    if qos:
        threading.Thread(target=read_acks, daemon=True).start()
    print("READY", flush=True)
    sys.stdin.readline()
    print("START", time.time(), flush=True)
    chunk = 500
    for first in range(0, count, chunk):
        if qos:
            with done:
                while first - acked > QOS1_WINDOW:
                    done.wait()
        sock.sendall(b"".join(packets[first : first + chunk]))
    if qos:
        with done:
            while acked < count:
                done.wait()
    print("DONE", time.time(), flush=True)
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()


# --------------------------------------------------------------------------- child: subscriber


def run_subscriber(port: int, count: int, qos: int) -> None:
    """A bare paho subscriber: counts ``count`` messages on metrics/#, reports FIRST/LAST."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
    received = 0
    first = 0.0

    def on_subscribe(*_: Any) -> None:
        print("READY", flush=True)

    def on_message(_client: Any, _userdata: Any, _message: Any) -> None:
        nonlocal received, first
        received += 1
        if received == 1:
            first = time.time()
        if received == count:
            print("LAST", time.time(), first, flush=True)
            client.disconnect()

    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(HOST, port)
    client.subscribe("metrics/#", qos=qos)
    client.loop_forever()


# --------------------------------------------------------------------------- harness


@dataclass
class Phase:
    name: str
    points: int
    received: int
    seconds: float
    rate: float
    cpu_us_per_point: dict[str, float]
    batches: int | None = None
    mean_batch: float | None = None
    largest_batch: int | None = None


def proc_cpu(pid: int) -> float:
    """utime + stime of a process in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def expect(proc: subprocess.Popen[str], word: str) -> list[str]:
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != word:
        raise RuntimeError(f"child said {line!r}, expected {word}")
    return line[1:]


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def publisher(port: int, prefix: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    proc = child(
        "--role",
        "publisher",
        "--port",
        str(port),
        "--prefix",
        prefix,
        "--points",
        str(args.points),
        "--qos",
        str(args.qos),
        *(["--dedupe"] if args.dedupe else []),
    )
    expect(proc, "READY")  # connected, packets encoded
    return proc


def go(proc: subprocess.Popen[str]) -> float:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return float(expect(proc, "START")[0])


def raw_phase(broker_port: int, broker_pid: int, prefix: str, args: argparse.Namespace) -> Phase:
    sub = child(
        "--role",
        "subscriber",
        "--port",
        str(broker_port),
        "--points",
        str(args.points),
        "--qos",
        str(args.qos),
    )
    pub = None
    try:
        expect(sub, "READY")
        pub = publisher(broker_port, prefix, args)
        broker_cpu, pub_cpu = proc_cpu(broker_pid), proc_cpu(pub.pid)
        sub_cpu = proc_cpu(sub.pid)
        started = go(pub)
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.extend(expect(sub, "LAST")), daemon=True)
        reader.start()
        reader.join(args.timeout)
        cpu = {
            "broker": proc_cpu(broker_pid) - broker_cpu,
            "publisher": proc_cpu(pub.pid) - pub_cpu,
            "subscriber": proc_cpu(sub.pid) - sub_cpu,
        }
        if not result:
            return Phase(
                "raw paho subscriber", args.points, 0, args.timeout, 0.0, per_point(cpu, 1)
            )
        seconds = float(result[0]) - started
        return Phase(
            "raw paho subscriber",
            args.points,
            args.points,
            seconds,
            args.points / seconds,
            per_point(cpu, args.points),
        )
    finally:
        stop(sub)
        if pub is not None:
            stop(pub)


def per_point(cpu: dict[str, float], points: int) -> dict[str, float]:
    return {name: round(seconds / max(points, 1) * 1e6, 2) for name, seconds in cpu.items()}


async def lockerd_phase(
    broker_url: str, broker_port: int, broker_pid: int, args: argparse.Namespace
) -> Phase:
    import trio

    from gateway.mqtt import MqttSettings, open_mqtt_client
    from lockerd.config import load_settings
    from lockerd.service import running_service
    from lockerd.telemetry.agents import AgentDirectory
    from lockerd.telemetry.pipeline import MetricsPipeline

    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as tmp:
        settings = load_settings(
            {},
            {
                "LOCKERD_HTTP": f"{HOST}:0",
                "LOCKERD_MQTT_URL": broker_url,
                "LOCKERD_DATABASE": f"sqlite:///{tmp}/bench.db",
                "LOCKERD_SECRET_KEY": "bench-secret-key",
            },
        )
        async with running_service(settings) as context:
            agents: AgentDirectory = context.agents
            pipeline: MetricsPipeline = context.pipeline
            tenant = await agents.create_tenant(context.store, "bench", context.clock())
            created = await agents.create_agent(
                context.store, context.keyring, tenant.tenant_id, "bench", context.clock()
            )
            prefix = f"metrics/{tenant.tenant_id}/{created.agent.agent_id}"
            # A retained probe reaches the gateway as soon as it has subscribed: once it is
            # stored, the burst cannot start before lockerd listens.
            probe = MqttSettings(host=HOST, port=broker_port, client_id="bench-probe")
            async with open_mqtt_client(probe, reconnect=False) as client:
                await client.publish(f"{prefix}/probe", b'{"value": 0}', qos=1, retain=True)
            with trio.fail_after(args.timeout):
                await pipeline.wait_until(lambda s: s.stored >= 1)
            base = pipeline.stats.stored
            base_batches = pipeline.stats.batches
            pub = await trio.to_thread.run_sync(publisher, broker_port, prefix, args)
            try:
                cpu0 = {
                    "lockerd": self_cpu(),
                    "broker": proc_cpu(broker_pid),
                    "publisher": proc_cpu(pub.pid),
                }
                started = await trio.to_thread.run_sync(go, pub)
                with trio.move_on_after(args.timeout):
                    await pipeline.wait_until(lambda s: s.stored - base >= args.points)
                ended = time.time()
                cpu = {
                    "lockerd": self_cpu() - cpu0["lockerd"],
                    "broker": proc_cpu(broker_pid) - cpu0["broker"],
                    "publisher": proc_cpu(pub.pid) - cpu0["publisher"],
                }
            finally:
                await trio.to_thread.run_sync(stop, pub)
            stored = pipeline.stats.stored - base
            batches = pipeline.stats.batches - base_batches
            seconds = ended - started
            return Phase(
                "lockerd (gateway + pipeline + store)",
                args.points,
                stored,
                seconds,
                stored / seconds,
                per_point(cpu, stored),
                batches=batches,
                mean_batch=round(stored / max(batches, 1), 1),
                largest_batch=pipeline.stats.largest_batch,
            )


def run_once(args: argparse.Namespace) -> tuple[Phase, Phase]:
    import trio

    from tests.support.mosquitto import MosquittoBroker

    with tempfile.TemporaryDirectory(prefix="metrics-bench-broker-") as tmp:
        broker = MosquittoBroker(
            Path(tmp),
            extra_config=[
                # not 0: Mosquitto before 2.0.17 can stop delivering (bench/common.py)
                "max_queued_messages 10000000",
                "max_inflight_messages 0",
                "connection_messages false",
                "log_type error",
            ],
        )
        with broker:
            assert broker.pid is not None
            prefix = "metrics/00000000-0000-4000-8000-000000000000/raw"
            raw = raw_phase(broker.port, broker.pid, prefix, args)
            ingest = trio.run(lockerd_phase, broker.url, broker.port, broker.pid, args)
    return raw, ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--role",
        choices=("harness", "publisher", "subscriber"),
        default="harness",
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--points", type=int, default=100_000, help="points per phase")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--dedupe", action="store_true", help="give every point a dedupe_id")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--database",
        help="store URL (default: a temporary SQLite file);"
        " give an empty PostgreSQL database or schema, it is written to",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per phase")
    parser.add_argument("--smoke", action="store_true", help="5,000 points, one run, ~2 s")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    if args.role == "publisher":
        run_publisher(args.port, args.prefix, args.points, args.qos, args.dedupe)
        return
    if args.role == "subscriber":
        run_subscriber(args.port, args.points, args.qos)
        return
    if args.smoke:
        args.points, args.runs, args.timeout = 5_000, 1, 20.0

    from lockerd.logging import configure_logging

    configure_logging("console", "error")
    results = [run_once(args) for _ in range(args.runs)]
    complete = all(
        ingest.received == args.points and raw.received == args.points for raw, ingest in results
    )
    if args.json:
        print(json.dumps([{"raw": asdict(r), "lockerd": asdict(i)} for r, i in results], indent=2))
    else:
        print(
            f"{args.points:,} points per phase, QoS {args.qos}, dedupe_id: {args.dedupe},"
            f" {args.runs} run(s), {os.cpu_count()} CPUs"
        )
        for n, (raw, ingest) in enumerate(results, start=1):
            for phase in (raw, ingest):
                extra = ""
                if phase.batches is not None:
                    extra = (
                        f"  batches {phase.batches} (mean {phase.mean_batch},"
                        f" max {phase.largest_batch})"
                    )
                print(
                    f"run {n} {phase.name:<40} {phase.received:>8,} in {phase.seconds:6.2f} s"
                    f" = {phase.rate:>9,.0f}/s  CPU µs/point {phase.cpu_us_per_point}{extra}"
                )
            print(f"run {n} ratio lockerd / raw = {ingest.rate / max(raw.rate, 1e-9):.2f}")
        if args.runs > 1:
            rates = [ingest.rate for _, ingest in results]
            raws = [raw.rate for raw, _ in results]
            print(
                f"lockerd min/median/max: {min(rates):,.0f} / {statistics.median(rates):,.0f}"
                f" / {max(rates):,.0f} points/s; raw median {statistics.median(raws):,.0f}/s"
            )
    if not complete:
        print("INCOMPLETE: a phase did not receive every point within the timeout", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
