"""The broker stack of issue 13: Mosquitto + go-auth (our faithful plugin) in front of lockerd.

    .venv/bin/python bench/broker_bench.py            # 20,000-message bursts, 3 runs each
    .venv/bin/python bench/broker_bench.py --smoke    # 1,000 messages, 1 run (seconds)
    .venv/bin/python bench/broker_bench.py --json out.json

Two measurements, each with its baseline in the same run, runs alternating between the
variants so that drift on the shared machine hits all of them:

1. **Through the broker.** One device writes N heartbeats to its bank at once (pre-encoded
   QoS 1 PUBLISH packets, one ``sendall``), as a burst; ``lockerd serve`` (a child process)
   handles them. Rate = N / (time from the first byte until ``lockerd_inbound_messages_total``
   has grown by N). Brokers: plain Mosquitto without auth (the baseline), and the deployment's
   configuration (docker/mosquitto/, rendered by its entrypoint) with go-auth's cache off and
   on (30 s). Every run must lose nothing: processed + dropped = N exactly, and no "dropped"
   line in the broker's log (the deployment's queue limits).
2. **Manual vs automatic acknowledgement.** Plain Mosquitto, 100 banks, N heartbeats round
   robin; lockerd as it is (PUBACK after its bank actor handled the message) against the same
   lockerd with paho acknowledging on receipt (``--serve --auto-ack`` patches
   ``lockerd.service.mqtt_settings``; nothing else differs).

The machine has 2 cores shared with other work: read the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import trio  # noqa: E402

from bench.common import (  # noqa: E402
    ADMIN_TOKEN,
    INBOUND,
    PROVISIONING_PASSWORD,
    LockerdProcess,
    broker_cpu,
    metric,
    new_broker,
    wait_metric,
)
from bench.rawmqtt import RawPublisher, publish_burst  # noqa: E402
from lockerd.device.fleet import create_banks  # noqa: E402

BACKEND_USER = "lockerd-backend"
BACKEND_PASSWORD = "bench-backend-password"
MOSQ_SECRET = "bench-mosq-secret"
PROVISIONING_USER = "provisioning_client"


# --------------------------------------------------------------------------- lockerd child


def serve(auto_ack: bool) -> int:
    """``lockerd serve``; with ``auto_ack`` paho acknowledges on receipt (the old behaviour)."""
    import lockerd.service as service
    from lockerd.cli import main

    if auto_ack:
        original = service.mqtt_settings
        service.mqtt_settings = lambda settings: dataclasses.replace(
            original(settings), manual_ack=False
        )
    return main(["serve"])


def lockerd_child(
    workdir: Path, *, port: int, mqtt_url: str, cache_seconds: int, auto_ack: bool = False
) -> LockerdProcess:
    class _Url:  # LockerdProcess only reads the broker's url
        url = mqtt_url

    service = LockerdProcess(
        workdir,
        _Url(),  # type: ignore[arg-type]
        log_level="warning",
        extra_env={
            "LOCKERD_HTTP": f"127.0.0.1:{port}",
            "LOCKERD_MOSQ_SECRET": MOSQ_SECRET,
            "LOCKERD_BROKER_AUTH_CACHE_SECONDS": str(cache_seconds),
            "LOCKERD_MQTT_CLIENT_ID": "lockerd-backend",
        },
    )
    service.port, service.url = port, f"http://127.0.0.1:{port}"
    service.command = [sys.executable, str(SCRIPT), "--serve", *(["--auto-ack"] * auto_ack)]
    return service


# --------------------------------------------------------------------------- brokers


@dataclasses.dataclass
class Stack:
    name: str
    broker: Any  # MosquittoBroker or GoAuthBroker
    lockerd_port: int
    cache_seconds: int
    auth: bool

    @property
    def lockerd_mqtt_url(self) -> str:
        if not self.auth:
            url: str = self.broker.url
            return url
        return f"mqtt://{BACKEND_USER}:{BACKEND_PASSWORD}@{self.broker.host}:{self.broker.port}"


def make_stack(name: str, workdir: Path) -> Stack:
    from tests.support.goauth_broker import render_compose_config, start_compose_broker
    from tests.support.mosquitto import free_port

    port = free_port()
    if name == "no_auth":
        return Stack(name, new_broker(workdir / name), port, 0, auth=False)
    cache = 30 if name == "cache_on" else 0
    compose = render_compose_config(
        workdir / name / "compose",
        secret=MOSQ_SECRET,
        backend_user=BACKEND_USER,
        backend_password=BACKEND_PASSWORD,
        cache_seconds=cache,
        http_host="127.0.0.1",
        http_port=port,
    )
    return Stack(name, start_compose_broker(workdir / name, compose), port, cache, auth=True)


async def provision_device(stack: Stack, token: str) -> tuple[str, str, str]:
    """(client id, user, password) of a device provisioned through the broker."""
    from tests.support.goauth import registrar

    client_id = f"bench-box-{uuid.uuid4().hex[:8]}"
    async with registrar(
        stack.broker.url, client_id, username=PROVISIONING_USER, password=PROVISIONING_PASSWORD
    ) as device:
        reply = await device.register(token, within=30.0)
    assert reply.ok, reply.body
    return client_id, reply.data["mqtt_user"], reply.data["mqtt_password"]


def heartbeats(bank_ids: list[str], count: int) -> list[tuple[str, bytes]]:
    """``count`` heartbeats round robin over the banks, uptimes and device times increasing."""
    start = datetime.now(UTC) - timedelta(seconds=count)
    out = []
    for index in range(count):
        moment = start + timedelta(milliseconds=index)
        payload = {
            "type": "state",
            "state": "heartbeat",
            "session_id": "bench-session",
            "data": {
                "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "uptime_seconds": 10 + index // len(bank_ids),
            },
        }
        out.append(
            (f"locker/{bank_ids[index % len(bank_ids)]}/state", json.dumps(payload).encode())
        )
    return out


async def burst_run(
    stack: Stack, workdir: Path, *, banks: int, count: int, auto_ack: bool = False
) -> dict[str, Any]:
    """One lockerd, one burst of ``count`` heartbeats from one device connection."""
    service = lockerd_child(
        workdir / f"lockerd-{uuid.uuid4().hex[:6]}",
        port=stack.lockerd_port,
        mqtt_url=stack.lockerd_mqtt_url,
        cache_seconds=stack.cache_seconds,
        auto_ack=auto_ack,
    )
    log_mark = len(stack.broker.log_text())
    checks_before = len(stack.broker.plugin_requests()) if stack.auth else 0
    async with httpx.AsyncClient(timeout=30.0) as http:
        service.start()
        try:
            await service.wait_ready(http)
            tickets = await create_banks(
                service.url, ADMIN_TOKEN, banks, 1, heartbeat_interval_seconds=3600
            )
            ids = [t.bank_id for t in tickets if t.bank_id]
            credentials: dict[str, str] = {}
            client_id = f"bench-pub-{uuid.uuid4().hex[:6]}"
            if stack.auth:
                token = tickets[0].provisioning_token
                assert token is not None
                client_id, user, password = await provision_device(stack, token)
                credentials = {"username": user, "password": password}
                ids = ids[:1]  # a device may write to its own bank only
            blob = publish_burst(heartbeats(ids, count), qos=1)
            kinds = ("processed", "dropped")
            before = {
                k: await metric(http, service.url, INBOUND, kind="state", outcome=k) for k in kinds
            }
            with RawPublisher(
                stack.broker.host, stack.broker.port, client_id, **credentials
            ) as pub:
                cpu0, bcpu0 = service.cpu(), broker_cpu(stack.broker)
                started = time.monotonic()
                await trio.to_thread.run_sync(pub.send, blob)
                seen = await wait_metric(
                    http,
                    service.url,
                    INBOUND,
                    before["processed"] + count,
                    time_limit=600.0,
                    kind="state",
                    outcome="processed",
                )
                cpu1, bcpu1 = service.cpu(), broker_cpu(stack.broker)
                await trio.to_thread.run_sync(pub.wait_acks, count)
            after = {
                k: await metric(http, service.url, INBOUND, kind="state", outcome=k) for k in kinds
            }
        finally:
            service.stop()
    handled = sum(after[k] - before[k] for k in kinds)
    broker_log = stack.broker.log_text()[log_mark:]
    elapsed = seen - started
    return {
        "rate": count / elapsed,
        "seconds": elapsed,
        "handled": handled,
        "dropped_by_lockerd": after["dropped"] - before["dropped"],
        "broker_dropped_lines": broker_log.count("dropped"),
        "lockerd_cpu_us_per_msg": (cpu1 - cpu0) / count * 1e6,
        "broker_cpu_us_per_msg": (bcpu1 - bcpu0) / count * 1e6,
        # HTTP requests the broker made during this run (provisioning the device included)
        "http_checks": (len(stack.broker.plugin_requests()) - checks_before) if stack.auth else 0,
    }


# --------------------------------------------------------------------------- runs


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def run(count: int, runs: int, ack_banks: int) -> dict[str, Any]:
    results: dict[str, Any] = {"count": count, "runs": runs, "through_broker": {}, "ack": {}}
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as tmp:
        workdir = Path(tmp)
        stacks = {name: make_stack(name, workdir) for name in ("no_auth", "cache_off", "cache_on")}
        try:
            through: dict[str, list[dict[str, Any]]] = {name: [] for name in stacks}
            ack: dict[str, list[dict[str, Any]]] = {"manual": [], "auto": []}
            for _ in range(runs):
                for name, stack in stacks.items():
                    through[name].append(await burst_run(stack, workdir, banks=1, count=count))
                for mode in ("manual", "auto"):
                    ack[mode].append(
                        await burst_run(
                            stacks["no_auth"],
                            workdir,
                            banks=ack_banks,
                            count=count,
                            auto_ack=mode == "auto",
                        )
                    )
        finally:
            for stack in stacks.values():
                stack.broker.close()
    for name, samples in through.items():
        results["through_broker"][name] = {
            "rate_median": median([s["rate"] for s in samples]),
            "samples": samples,
        }
    base = results["through_broker"]["no_auth"]["rate_median"]
    for name in ("cache_off", "cache_on"):
        results["through_broker"][name]["ratio_vs_no_auth"] = (
            results["through_broker"][name]["rate_median"] / base
        )
    for name, samples in through.items():
        entry = results["through_broker"][name]
        entry["lockerd_cpu_us_median"] = median([s["lockerd_cpu_us_per_msg"] for s in samples])
        entry["broker_cpu_us_median"] = median([s["broker_cpu_us_per_msg"] for s in samples])
    for mode, samples in ack.items():
        results["ack"][mode] = {
            "rate_median": median([s["rate"] for s in samples]),
            "lockerd_cpu_us_median": median([s["lockerd_cpu_us_per_msg"] for s in samples]),
            "samples": samples,
        }
    results["ack"]["ratio_manual_vs_auto"] = (
        results["ack"]["manual"]["rate_median"] / results["ack"]["auto"]["rate_median"]
    )
    results["ack"]["cpu_ratio_manual_vs_auto"] = (
        results["ack"]["manual"]["lockerd_cpu_us_median"]
        / results["ack"]["auto"]["lockerd_cpu_us_median"]
    )
    lost = [
        (name, s["handled"], s["broker_dropped_lines"])
        for name, samples in [*through.items(), *ack.items()]
        for s in samples
        if s["handled"] != count or s["broker_dropped_lines"]
    ]
    results["zero_loss"] = not lost
    results["losses"] = lost
    return results


def report(results: dict[str, Any]) -> str:
    count = results["count"]
    lines = [
        f"bursts of {count:,} heartbeats from one device, {results['runs']} run(s) each "
        "(medians; 2-core machine shared with other work)",
        "",
        "| broker | msgs/s to lockerd | ratio vs no auth | HTTP checks"
        " | lockerd µs/msg | broker µs/msg |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in results["through_broker"].items():
        sample = entry["samples"][-1]
        ratio = entry.get("ratio_vs_no_auth", 1.0)
        lines.append(
            f"| {name} | {entry['rate_median']:,.0f} | {ratio:.2f} | {sample['http_checks']} "
            f"| {entry['lockerd_cpu_us_median']:.0f} | {entry['broker_cpu_us_median']:.0f} |"
        )
    ack = results["ack"]
    lines += [
        "",
        f"manual PUBACK {ack['manual']['rate_median']:,.0f} heartbeats/s, automatic "
        f"{ack['auto']['rate_median']:,.0f}/s: ratio {ack['ratio_manual_vs_auto']:.2f}; "
        f"lockerd CPU {ack['manual']['lockerd_cpu_us_median']:.0f} vs "
        f"{ack['auto']['lockerd_cpu_us_median']:.0f} µs/heartbeat: ratio "
        f"{ack['cpu_ratio_manual_vs_auto']:.2f}",
        f"zero loss: {results['zero_loss']} {results['losses'] or ''}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--auto-ack", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="1,000 messages, 1 run")
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    if args.serve:
        return serve(args.auto_ack)
    count = args.count or (1_000 if args.smoke else 20_000)
    runs = args.runs or (1 if args.smoke else 3)
    results = trio.run(run, count, runs, 100)
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results["zero_loss"] else 1


if __name__ == "__main__":
    sys.exit(main())
