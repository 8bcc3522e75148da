"""Shared pieces of the benchmarks: brokers, a ``lockerd serve`` child process, /metrics,
process CPU/RSS, statistics, and the TIME_WAIT guard (research/limits.md §2)."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.mosquitto import MosquittoBroker, free_port  # noqa: E402

ADMIN_TOKEN = "bench-admin-token"
PROVISIONING_PASSWORD = "bench-provisioning-password"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------- stats


def summary(values: Sequence[float]) -> dict[str, Any]:
    """min / median / max of the runs, plus the runs themselves."""
    clean = [float(v) for v in values]
    if not clean:
        return {"min": None, "median": None, "max": None, "runs": []}
    return {
        "min": min(clean),
        "median": statistics.median(clean),
        "max": max(clean),
        "runs": clean,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------------- processes


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU of a process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def proc_hwm_bytes(pid: int) -> int:
    return _status_kib(pid, "VmHWM") * 1024


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def count_time_wait() -> int:
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        count += sum(1 for line in lines if line.split()[3] == "06")
    return count


async def wait_time_wait(limit: int = 3000, time_limit: float = 75.0) -> float:
    """Wait (bounded) until few sockets are in TIME_WAIT, so a connection storm does not run
    out of ephemeral ports (limits.md §2). Returns the seconds waited."""
    started = time.monotonic()
    with trio.move_on_after(time_limit):
        while count_time_wait() > limit:  # noqa: ASYNC110
            await trio.sleep(1.0)  # the kernel's TIME_WAIT timer cannot be awaited
    return time.monotonic() - started


def new_broker(workdir: Path, **options: Any) -> MosquittoBroker:
    """A private mosquitto: the production window (docs/deploy.md), a queue no burst fills,
    quiet log."""
    extra = [
        # Nagle off on the broker's sockets, as recommended for production (see
        # docs/benchmarks.md: without it every hop of a command round trip waits ~40 ms).
        "set_tcp_nodelay true",
        "max_inflight_messages 1000",
        # Not 0 ("no maximum"): Mosquitto before 2.0.17 can stop delivering to a client for
        # good with it (2.0.17's "Fix max_queued_message 0 stopping clients from receiving
        # messages", eclipse-mosquitto/mosquitto#3088); Debian's 2.0.11 did under a heartbeat
        # burst: lockerd had acknowledged everything, the broker held 38,000 messages for it.
        "max_queued_messages 10000000",
        "connection_messages false",
        "log_type error",
        "log_type warning",
        *options.pop("extra_config", ()),
    ]
    broker = MosquittoBroker(workdir, extra_config=extra, **options)
    broker.start()
    return broker


def broker_cpu(broker: MosquittoBroker) -> float:
    return proc_cpu_seconds(broker.pid) if broker.pid else 0.0


def broker_rss(broker: MosquittoBroker) -> int:
    return proc_rss_bytes(broker.pid) if broker.pid else 0


class LockerdProcess:
    """``lockerd serve`` as a child process, so its CPU and RSS are its own."""

    def __init__(
        self,
        workdir: Path,
        broker: MosquittoBroker,
        *,
        database: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        log_level: str = "info",
        nodelay_patch: bool = False,
    ) -> None:
        self.workdir = workdir
        # nodelay_patch: run bench/lockerd_nodelay.py (TCP_NODELAY what-if) instead of lockerd
        self.command = (
            [sys.executable, str(REPO / "bench" / "lockerd_nodelay.py"), "serve"]
            if nodelay_patch
            else [sys.executable, "-m", "lockerd.cli", "serve"]
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = database or workdir / "lockerd.db"
        self.log_path = workdir / "lockerd.log"
        self.env = {
            **os.environ,
            "LOCKERD_HTTP": f"127.0.0.1:{self.port}",
            "LOCKERD_MQTT_URL": broker.url,
            "LOCKERD_DATABASE": f"sqlite:///{self.database}",
            "LOCKERD_ADMIN_TOKEN": ADMIN_TOKEN,
            "LOCKERD_MOSQ_SECRET": "bench-mosq-secret",
            "LOCKERD_PROVISIONING_PASSWORD": PROVISIONING_PASSWORD,
            "LOCKERD_SECRET_KEY": "bench-secret-key",
            "LOCKERD_MQTT_CLIENT_ID": f"lockerd-bench-{self.port}",
            "LOCKERD_LOG_LEVEL": log_level,
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> float:
        log = self.log_path.open("ab")
        try:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        return self.started_at

    async def wait_ready(self, http: httpx.AsyncClient, time_limit: float = 120.0) -> float:
        """Poll /healthz until 200 with MQTT connected; returns the monotonic time seen."""
        with trio.fail_after(time_limit):
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"lockerd exited at start-up:\n{self.log_tail()}")
                try:
                    response = await http.get(f"{self.url}/healthz", timeout=2.0)
                    if response.status_code == 200:
                        return time.monotonic()
                except httpx.TransportError:
                    pass
                await trio.sleep(0.01)  # an external process: nothing to await but its port

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss(self) -> int:
        return proc_rss_bytes(self.pid)

    def hwm(self) -> int:
        return proc_hwm_bytes(self.pid)

    def stop(self, timeout: float = 20.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def log_warnings(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if '"level": "error"' in line][:10]


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# ---------------------------------------------------------------------------------- /metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        key = frozenset(_LABEL.findall(labels or ""))
        samples[(name, key)] = float(value)
    return samples


async def metric(http: httpx.AsyncClient, base: str, name: str, **labels: str) -> float:
    response = await http.get(f"{base}/metrics", timeout=10.0)
    response.raise_for_status()
    return parse_metrics(response.text).get((name, frozenset(labels.items())), 0.0)


INBOUND = "lockerd_inbound_messages_total"


async def wait_metric(
    http: httpx.AsyncClient,
    base: str,
    name: str,
    target: float,
    *,
    time_limit: float,
    interval: float = 0.01,
    **labels: str,
) -> float:
    """Poll /metrics until the sample reaches ``target``; returns the monotonic time seen.

    Load tests cannot await the service's internals: the counter is the contract's way to
    tell that a burst has been fully handled (contract §4)."""
    last = 0.0
    first: tuple[float, float] | None = None
    try:
        with trio.fail_after(time_limit):
            while True:
                last = await metric(http, base, name, **labels)
                now = time.monotonic()
                if last >= target:
                    return now
                # Each scrape costs the service CPU (it walks every mailbox), so poll
                # sparsely while far from the target and closely near it: the error stays
                # within ``interval`` without the scrapes weighing on a long run.
                pause = interval
                if first is None:
                    first = (now, last)
                elif last > first[1]:
                    rate = (last - first[1]) / (now - first[0])
                    pause = min(0.25, max(interval, 0.5 * (target - last) / rate))
                await trio.sleep(pause)
    except trio.TooSlowError:
        raise TimeoutError(
            f"{name}{labels} reached {last:g} of {target:g} in {time_limit} s"
        ) from None


def mib(value: float) -> float:
    return value / (1024 * 1024)


def rounded(values: Iterable[float], digits: int = 3) -> list[float]:
    return [round(v, digits) for v in values]


class OtherLoad:
    """CPU used on this machine by processes outside this benchmark's process group (other
    people's tests, say). Sampled from /proc; processes that live less than one sampling
    interval are missed, so it is a lower bound."""

    def __init__(self) -> None:
        self.cpu_seconds = 0.0
        self._pgrp = os.getpgrp()
        self._previous: dict[int, tuple[int, float]] = {}

    def sample(self) -> None:
        current: dict[int, tuple[int, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if int(fields[2]) == self._pgrp:
                continue
            started = int(fields[19])
            current[int(entry.name)] = (started, (int(fields[11]) + int(fields[12])) / CLK_TCK)
        for pid, (started, cpu) in current.items():
            before = self._previous.get(pid)
            if before is not None and before[0] == started:
                self.cpu_seconds += max(0.0, cpu - before[1])
        self._previous = current

    async def run(self, interval: float = 1.0) -> None:
        while True:
            self.sample()
            await trio.sleep(interval)  # a sampling period, not a wait for an event
