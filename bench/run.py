"""Run every lockerd benchmark and write ``report.json`` and ``report.md``.

    python bench/run.py                 # full sizes, 3 runs each, profiles, other benches
    python bench/run.py --smoke         # tiny sizes, 1 run: every figure, a few seconds each
    python bench/run.py --only ingest,open --runs 5 --out /tmp/bench

Benchmarks: ingest (heartbeat ingestion), open (open round trip), fleet (fleet scale),
recovery (start-to-ready with many events), storm (provisioning storm), app (the citizen app's
open path: polling, long poll, websocket; bench/bench_app.py). Each starts its own
mosquitto and ``lockerd serve`` child and measures its baseline in the same run. Also runs
``bench/goauth_bench.py`` and ``bench/metrics_bench.py`` (owned by their modules) if present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from bench import (  # noqa: E402
    bench_app,
    bench_fleet,
    bench_ingest,
    bench_open,
    bench_recovery,
    bench_storm,
    profiling,
)
from bench.common import OtherLoad, new_broker  # noqa: E402
from bench.report import render  # noqa: E402

BENCHMARKS = {
    "ingest": bench_ingest.run,
    "open": bench_open.run,
    "fleet": bench_fleet.run,
    "recovery": bench_recovery.run,
    "storm": bench_storm.run,
    "app": bench_app.run,
}

FULL: dict[str, dict[str, Any]] = {
    "ingest": {"banks": 1000, "heartbeats": 100_000, "timeout": 300.0},
    "open": {
        "banks": 20,
        "compartments": 8,
        "workers": 32,
        "seconds": 10.0,
        "max_opens": 50_000,
        "http_seconds": 3.0,
        "sequential_seconds": 5.0,
        "what_if_nodelay": True,
    },
    "fleet": {"banks": 10_000, "interval": 10.0, "window": 30.0, "timeout": 900.0},
    "recovery": {"banks": 200, "events": 1000, "timeout": 300.0},
    "storm": {"devices": 2000},
    "app": bench_app.FULL,
}

SMOKE: dict[str, dict[str, Any]] = {
    "ingest": {"banks": 5, "heartbeats": 300, "timeout": 60.0},
    "open": {
        "banks": 2,
        "compartments": 2,
        "workers": 2,
        "seconds": 0.5,
        "max_opens": 40,
        "http_seconds": 0.3,
        "sequential_seconds": 0.3,
        "what_if_nodelay": True,
    },
    "fleet": {"banks": 5, "interval": 1.0, "window": 1.0, "timeout": 60.0},
    "recovery": {"banks": 3, "events": 120, "timeout": 60.0},
    "storm": {"devices": 5},
    "app": bench_app.SMOKE,
}

EXTERNAL = ("goauth_bench.py", "metrics_bench.py")


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=10, cwd=REPO
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    commit = run(["git", "rev-parse", "--short", "HEAD"])
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"])
    mosquitto = run([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"]).splitlines()
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} vCPU ({cpu_model}), {mem_kib / 2**20:.0f} GiB,"
        f" Linux {platform.release()}, ulimit -n {_nofile()}",
        "commit": commit + (" (+ uncommitted changes)" if dirty else ""),
        "software": f"Python {platform.python_version()},"
        f" {mosquitto[0] if mosquitto else 'mosquitto ?'}",
        "smoke": args.smoke,
        "runs": args.runs,
    }


def _nofile() -> str:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return str(soft)


async def _profiles(sizes: dict[str, dict[str, Any]], out: Path) -> dict[str, Any]:
    if not profiling.available():
        return {"skipped": "py-spy not installed (pip install py-spy into the venv)"}
    result: dict[str, Any] = {}
    work = out / "work" / "profile"
    ingest = sizes["ingest"]
    broker = new_broker(work / "ingest-broker")
    try:
        spy_file = out / "profile-ingest.txt"
        await bench_ingest.lockerd_run(
            work / "ingest",
            broker.host,
            broker.port,
            broker,
            ingest["banks"],
            ingest["heartbeats"],
            ingest["timeout"],
            profile_to=spy_file,
        )
        result["heartbeat ingestion"] = profiling.summarize(spy_file)
    finally:
        broker.close()
    opens = dict(sizes["open"], what_if_nodelay=False)
    spy_file = out / "profile-open.txt"
    await bench_open.lockerd_phase(
        work / "open",
        opens["banks"],
        opens["compartments"],
        opens["workers"],
        opens,
        profile_to=spy_file,
    )
    result["open round trip"] = profiling.summarize(spy_file)
    return result


def _external(smoke: bool, runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in EXTERNAL:
        script = REPO / "bench" / name
        if not script.exists():
            results[name] = {"skipped": "not present", "returncode": None}
            continue
        command = [sys.executable, str(script)]
        if smoke:
            command.append("--smoke")
        elif name == "metrics_bench.py":
            command += ["--runs", str(runs)]
        started = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
            results[name] = {
                "command": " ".join(command[1:]),
                "returncode": done.returncode,
                "stdout": done.stdout[-20_000:],
                "stderr": done.stderr[-5_000:],
                "seconds": time.monotonic() - started,
            }
        except subprocess.TimeoutExpired:
            results[name] = {"returncode": None, "stdout": "timed out after 900 s"}
    return results


async def _main(args: argparse.Namespace) -> int:
    out: Path = args.out
    sizes = SMOKE if args.smoke else FULL
    if args.fleet_banks:
        sizes["fleet"]["banks"] = args.fleet_banks
    wanted = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(wanted) - set(BENCHMARKS)
    if unknown:
        print(f"unknown benchmarks: {sorted(unknown)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    report: dict[str, Any] = {"meta": _meta(args), "benchmarks": {}}
    failed = False
    other = OtherLoad()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other.run)
        for name in wanted:
            failed |= await _one(name, args, sizes, out, report, other, started)
        nursery.cancel_scope.cancel()
    if args.profile and not args.smoke:
        print("== profiles ...", file=sys.stderr, flush=True)
        try:
            report["profile"] = await _profiles(sizes, out)
        except Exception:
            report["profile"] = {"error": traceback.format_exc()}
    if args.external:
        print("== benchmarks of other modules ...", file=sys.stderr, flush=True)
        report["external"] = await trio.to_thread.run_sync(_external, args.smoke, args.runs)
    _write(out, report, started)
    if not args.keep_work:
        shutil.rmtree(out / "work", ignore_errors=True)
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}", file=sys.stderr)
    return 1 if failed else 0


async def _one(
    name: str,
    args: argparse.Namespace,
    sizes: dict[str, dict[str, Any]],
    out: Path,
    report: dict[str, Any],
    other: OtherLoad,
    started: float,
) -> bool:
    """Run one benchmark into the report; True if it failed."""
    print(f"== {name} ({args.runs} run(s)) ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    other0 = other.cpu_seconds
    failed = False
    try:
        result = await BENCHMARKS[name](sizes[name], args.runs, out / "work" / name)
    except Exception:
        failed = True
        result = {"title": name, "error": traceback.format_exc()}
        print(result["error"], file=sys.stderr)
    elapsed = time.monotonic() - t0
    result["seconds"] = elapsed
    result["other_cores_busy"] = (other.cpu_seconds - other0) / elapsed
    report["benchmarks"][name] = result
    print(f"   {name} done in {elapsed:.1f} s", file=sys.stderr, flush=True)
    _write(out, report, started)
    return failed


def _write(out: Path, report: dict[str, Any], started: float) -> None:
    report["meta"]["seconds"] = time.monotonic() - started
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--runs", type=int, help="runs per benchmark (default 3; smoke 1)")
    parser.add_argument("--only", help="comma-separated subset: " + ",".join(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--fleet-banks", type=int, help="override the fleet size")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--no-external", dest="external", action="store_false")
    parser.add_argument("--keep-work", action="store_true", help="keep logs and databases")
    parser.add_argument(
        "--render", type=Path, help="only re-render report.md from this report.json"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        args.render.with_name("report.md").write_text(render(report))
        return 0
    if args.runs is None:
        args.runs = 1 if args.smoke else 3
    args.out.mkdir(parents=True, exist_ok=True)
    return trio.run(_main, args)


if __name__ == "__main__":
    sys.exit(main())
