"""Fleet scale: N banks connected at once, heartbeating at their configured interval.

The devices are ``lockerd simulate`` child processes (at most 5,000 devices each: one
simulator process costs about 60% of a core for 5,000 idle devices, see docs/benchmarks.md),
so lockerd, the broker and the simulators each show their own CPU.

Per run:

1. **Baseline** (fresh broker, no lockerd): N devices with made-up credentials connect and
   send their first heartbeat; a bare paho subscriber notes when it has seen a heartbeat from
   every one of them.
2. **lockerd** (fresh broker, ``lockerd serve`` child): N banks created through the admin
   API, written to token files; the simulators provision, connect and beat. Timed: all
   provisioned (``register`` processed on /metrics), every bank's first heartbeat at the
   broker (the same bare subscriber), every bank ``online`` in the admin API. Then a
   steady-state window of W seconds: heartbeats processed per second (should be N /
   interval), CPU of lockerd, broker and simulators, lockerd RSS and RSS per bank.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.common import (
    ADMIN_TOKEN,
    INBOUND,
    PROVISIONING_PASSWORD,
    REPO,
    LockerdProcess,
    admin_headers,
    broker_cpu,
    broker_rss,
    metric,
    new_broker,
    proc_cpu_seconds,
    summary,
    wait_metric,
    wait_time_wait,
)
from tests.support.mosquitto import MosquittoBroker

DEVICES_PER_PROCESS = 5000
BENCH_DIR = Path(__file__).resolve().parent


class Simulators:
    """``lockerd simulate`` children sharing the devices; stopped with SIGINT (graceful)."""

    def __init__(self, workdir: Path, broker: MosquittoBroker, interval: float) -> None:
        self.workdir = workdir
        self.broker = broker
        self.interval = interval
        self.processes: list[subprocess.Popen[bytes]] = []
        self.summaries: list[Path] = []

    def start(self, files: list[Path], source: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(files):
            summary_path = self.workdir / f"summary-{index}.json"
            log = (self.workdir / f"simulate-{index}.log").open("ab")
            try:
                self.processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "lockerd.cli",
                            "--log-level",
                            "warning",
                            "simulate",
                            source,
                            str(path),
                            "--mqtt-url",
                            self.broker.url,
                            "--provisioning-password",
                            PROVISIONING_PASSWORD,
                            "--heartbeat-interval",
                            f"{self.interval:g}",
                            "--connect-concurrency",
                            "256",
                            "--progress-interval",
                            "10",
                            "--summary-json",
                            str(summary_path),
                        ],
                        cwd=REPO,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                    )
                )
            finally:
                log.close()
            self.summaries.append(summary_path)

    def cpu(self) -> float:
        total = 0.0
        for process in self.processes:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += proc_cpu_seconds(process.pid)
        return total

    def stop(self) -> list[dict[str, Any]]:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reports = []
        for path in self.summaries:
            try:
                reports.append(json.loads(path.read_text()))
            except (FileNotFoundError, ValueError):
                reports.append({"error": f"no summary in {path}"})
        return reports


class OnlineWatcher:
    """A bare paho subscriber that reports when every bank's first heartbeat arrived."""

    def __init__(self, broker: MosquittoBroker, count: int, time_limit: float) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(BENCH_DIR / "paho_sub.py"),
                broker.host,
                str(broker.port),
                "locker/+/state",
                "1",
                str(count),
                str(time_limit),
                "distinct",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.count = count

    async def ready(self) -> None:
        assert self.process.stdout is not None
        line = await trio.to_thread.run_sync(self.process.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"online watcher did not start: {line!r}")

    async def all_online(self) -> float:
        """The monotonic time the last bank's first heartbeat arrived."""
        assert self.process.stdout is not None
        line = await trio.to_thread.run_sync(self.process.stdout.readline)
        await trio.to_thread.run_sync(self.process.wait)
        result = json.loads(line)
        if result["received"] < self.count:
            raise RuntimeError(f"only {result['received']} of {self.count} banks came online")
        return float(result["last"])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _split(lines: list[str], workdir: Path, name: str) -> list[Path]:
    parts = max(1, math.ceil(len(lines) / DEVICES_PER_PROCESS))
    size = math.ceil(len(lines) / parts)
    workdir.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(parts):
        path = workdir / f"{name}-{index}.txt"
        path.write_text("".join(line + "\n" for line in lines[index * size : (index + 1) * size]))
        files.append(path)
    return files


async def baseline(
    workdir: Path, count: int, interval: float, time_limit: float
) -> dict[str, float]:
    broker = new_broker(workdir / "broker-baseline")
    watcher = OnlineWatcher(broker, count, time_limit)
    simulators = Simulators(workdir / "sim-baseline", broker, interval)
    try:
        await watcher.ready()
        lines = [
            json.dumps(
                {
                    "client_id": f"base-{n:05d}",
                    "bank_id": str(uuid.uuid4()),
                    "mqtt_user": f"user-{n}",
                    "mqtt_password": "password",
                    "compartments": 4,
                }
            )
            for n in range(count)
        ]
        files = _split(lines, workdir / "sim-baseline", "credentials")
        started = time.monotonic()
        simulators.start(files, "--credentials")
        online = await watcher.all_online()
        sim_cpu = simulators.cpu()
        rss = broker_rss(broker)
    finally:
        simulators.stop()
        watcher.close()
        broker.close()
    return {
        "online_seconds": online - started,
        "broker_rss_mib": rss / 2**20,
        "sim_cpu_ms_per_device": sim_cpu / count * 1000,
    }


async def _backend_online(http: httpx.AsyncClient, base: str) -> int:
    listed = (await http.get(f"{base}/api/admin/locker-banks", headers=admin_headers())).json()
    return sum(1 for bank in listed if bank["presence"] == "online")


async def lockerd_phase(
    workdir: Path, count: int, interval: float, window: float, time_limit: float
) -> dict[str, Any]:
    from lockerd.device.fleet import create_banks

    broker = new_broker(workdir / "broker")
    service = LockerdProcess(workdir / "lockerd", broker)
    simulators = Simulators(workdir / "sim", broker, interval)
    watcher: OnlineWatcher | None = None
    try:
        async with httpx.AsyncClient(timeout=60.0) as http:
            service.start()
            await service.wait_ready(http)
            rss_empty = service.rss()
            created = time.monotonic()
            tickets = await create_banks(
                service.url, ADMIN_TOKEN, count, 4, heartbeat_interval_seconds=int(interval)
            )
            create_seconds = time.monotonic() - created
            files = _split([t.provisioning_token or "" for t in tickets], workdir / "sim", "tokens")
            watcher = OnlineWatcher(broker, count, time_limit)
            await watcher.ready()
            started = time.monotonic()
            simulators.start(files, "--bank-tokens")
            provisioned = await wait_metric(
                http,
                service.url,
                INBOUND,
                count,
                time_limit=time_limit,
                interval=0.2,
                kind="register",
                outcome="processed",
            )
            devices_online = await watcher.all_online()
            with trio.fail_after(time_limit):
                while await _backend_online(http, service.url) < count:  # noqa: ASYNC110
                    await trio.sleep(0.5)  # presence lives behind the HTTP API
            backend_online = time.monotonic()
            labels = {"kind": "state", "outcome": "processed"}
            beats0 = await metric(http, service.url, INBOUND, **labels)
            cpu0, sim0, broker0 = service.cpu(), simulators.cpu(), broker_cpu(broker)
            t0 = time.monotonic()
            await trio.sleep(window)  # the steady state is a span of time
            beats1 = await metric(http, service.url, INBOUND, **labels)
            cpu1, sim1, broker1 = service.cpu(), simulators.cpu(), broker_cpu(broker)
            t1 = time.monotonic()
            still_online = await _backend_online(http, service.url)
            rss = service.rss()
            reports = simulators.stop()
    finally:
        simulators.stop()
        if watcher is not None:
            watcher.close()
        service.stop()
        broker.close()
    span = t1 - t0
    beats = beats1 - beats0
    return {
        "banks_created_per_s": count / create_seconds,
        "provisioned_seconds": provisioned - started,
        "devices_online_seconds": devices_online - started,
        "backend_online_seconds": backend_online - started,
        "heartbeats_per_s": beats / span,
        "expected_heartbeats_per_s": count / interval,
        "cpu_percent": (cpu1 - cpu0) / span * 100,
        "cpu_us_per_heartbeat": (cpu1 - cpu0) / max(1.0, beats) * 1e6,
        "sim_cpu_percent": (sim1 - sim0) / span * 100,
        "broker_cpu_percent": (broker1 - broker0) / span * 100,
        "rss_mib": rss / 2**20,
        "rss_kib_per_bank": (rss - rss_empty) / 1024 / count,
        "online_at_end": float(still_online),
        "simulators": len(files),
        "simulator_counters": [r.get("counters", r) for r in reports],
    }


async def run(sizes: dict[str, Any], runs: int, workdir: Path) -> dict[str, Any]:
    count, interval = sizes["banks"], sizes["interval"]
    window, time_limit = sizes["window"], sizes["timeout"]
    results = []
    for index in range(runs):
        run_dir = workdir / f"run{index + 1}"
        await wait_time_wait()
        base = await baseline(run_dir, count, interval, time_limit)
        await wait_time_wait()
        lk = await lockerd_phase(run_dir, count, interval, window, time_limit)
        results.append({"baseline": base, "lockerd": lk})

    def pick(key: str) -> list[float]:
        return [r["lockerd"][key] for r in results]

    figures = {
        "lockerd_provisioned_s": {"unit": "s", **summary(pick("provisioned_seconds"))},
        "lockerd_devices_online_s": {"unit": "s", **summary(pick("devices_online_seconds"))},
        "lockerd_backend_online_s": {"unit": "s", **summary(pick("backend_online_seconds"))},
        "baseline_devices_online_s": {
            "unit": "s",
            **summary([r["baseline"]["online_seconds"] for r in results]),
        },
        "ratio_backend_online_vs_baseline": {
            "unit": "ratio",
            **summary(
                [
                    r["lockerd"]["backend_online_seconds"] / r["baseline"]["online_seconds"]
                    for r in results
                ]
            ),
        },
        "lockerd_heartbeats_per_s": {"unit": "msg/s", **summary(pick("heartbeats_per_s"))},
        "ratio_heartbeats_vs_expected": {
            "unit": "ratio",
            **summary([h / (count / interval) for h in pick("heartbeats_per_s")]),
        },
        "lockerd_cpu_percent": {"unit": "% of a core", **summary(pick("cpu_percent"))},
        "lockerd_cpu_us_per_heartbeat": {"unit": "µs", **summary(pick("cpu_us_per_heartbeat"))},
        "broker_cpu_percent": {"unit": "% of a core", **summary(pick("broker_cpu_percent"))},
        "simulator_cpu_percent": {"unit": "% of a core", **summary(pick("sim_cpu_percent"))},
        "lockerd_rss_mib": {"unit": "MiB", **summary(pick("rss_mib"))},
        "lockerd_rss_kib_per_bank": {"unit": "KiB", **summary(pick("rss_kib_per_bank"))},
        "lockerd_banks_created_per_s": {"unit": "banks/s", **summary(pick("banks_created_per_s"))},
        "baseline_broker_rss_mib": {
            "unit": "MiB",
            **summary([r["baseline"]["broker_rss_mib"] for r in results]),
        },
        "baseline_simulator_cpu_ms_per_device_connect": {
            "unit": "ms",
            **summary([r["baseline"]["sim_cpu_ms_per_device"] for r in results]),
        },
    }
    online_at_end = pick("online_at_end")
    notes = [
        f"{count} banks, heartbeat every {interval:g} s, steady window {window:g} s,"
        f" {results[0]['lockerd']['simulators']} simulator process(es)",
    ]
    if any(n < count for n in online_at_end):
        notes.append(f"banks online at the end of the window: {online_at_end}")
    return {
        "title": "Fleet scale",
        "params": {"banks": count, "interval_s": interval, "window_s": window, "runs": runs},
        "figures": figures,
        "notes": notes,
        "raw": results,
    }
