"""Sampling profiles of the ``lockerd serve`` child with py-spy, summarised for the report.

py-spy (``pip install py-spy`` into the venv; used for profiling only) attaches to the
running process and samples the stack of whichever thread holds the GIL (``--gil``: threads
blocked on a lock, a queue or a socket are left out, which py-spy's own idle detection does
not always manage) and writes collapsed stacks (``--format raw``). :func:`summarize` turns
them into self time and inclusive time per function and per package.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def available() -> bool:
    return Path(PY_SPY).exists()


class PySpy:
    def __init__(self, pid: int, output: Path, rate: int = 200) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                PY_SPY,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--gil",
                "--format",
                "raw",
                "--output",
                str(self.output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/work/" in path:
        parts = Path(path).parts
        for anchor in ("lockerd", "actors", "gateway", "store", "bench", "tests"):
            if anchor in parts:
                return "/".join(parts[parts.index(anchor) :])
    return path


def _package(short: str) -> str:
    head = short.split("/", 1)[0]
    if head.endswith(".py"):
        head = head[:-3]
    groups = {
        "lockerd": "lockerd (ours)",
        "actors": "actors (ours)",
        "gateway": "gateway (ours)",
        "store": "store (ours)",
        "paho": "paho-mqtt",
        "trio": "trio",
        "msgspec": "msgspec",
        "structlog": "structlog",
        "prometheus_client": "prometheus_client",
        "sqlite3": "sqlite3",
        "pyrsistent": "pyrsistent",
        "quart": "quart/hypercorn/h11",
        "hypercorn": "quart/hypercorn/h11",
        "h11": "quart/hypercorn/h11",
        "werkzeug": "quart/hypercorn/h11",
        "quart_trio": "quart/hypercorn/h11",
        "quart_schema": "quart/hypercorn/h11",
    }
    return groups.get(head, f"stdlib/other: {head}")


def _frame_name(raw: str) -> tuple[str, str]:
    match = _FRAME.match(raw.strip())
    if match is None:
        return raw.strip(), "?"
    short = _short(match.group("file"))
    return f"{match.group('func')} ({short})", short


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    package_inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f[0].startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf, leaf_file = frames[-1]
        self_time[leaf] += count
        packages[_package(leaf_file)] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count
        for package in {_package(file) for _, file in frames}:
            package_inclusive[package] += count

    def share(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [
            {"name": name, "percent": round(100.0 * value / total, 1)}
            for name, value in counter.most_common(n)
        ]

    if total == 0:
        return {"samples": 0, "self": [], "inclusive": [], "packages": []}
    ours_inclusive = Counter(
        {
            name: value
            for name, value in inclusive.items()
            # leave out the entry points every sample passes through (main, serve, ...)
            if value < 0.9 * total
            and any(f"({pkg}/" in name for pkg in ("lockerd", "actors", "gateway", "store"))
        }
    )
    return {
        "samples": total,
        "self": share(self_time, top),
        "inclusive_ours": share(ours_inclusive, top),
        "packages_self": share(packages, 12),
        "packages_inclusive": share(package_inclusive, 12),
    }


def breakdown(path: Path, anchor: str, depth: int = 1, top: int = 12) -> dict[str, Any]:
    """Where the samples under a function go: the share of all samples whose stack passes
    through ``anchor`` (a frame name prefix, e.g. ``"BankActor._handle"``), split by the
    ``depth`` frames right below it. Line numbers are ignored."""
    total = 0
    under = 0
    children: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f)[0] for f in stack.split(";") if f]
        for index, name in enumerate(frames):
            if name.startswith(anchor):
                under += count
                below = frames[index + 1 : index + 1 + depth]
                children[" > ".join(below) or "(itself)"] += count
                break
    if total == 0:
        return {"samples": 0, "percent": 0.0, "below": []}
    return {
        "samples": total,
        "percent": round(100.0 * under / total, 1),
        "below": [
            {"name": name, "percent": round(100.0 * value / total, 1)}
            for name, value in children.most_common(top)
        ],
    }
