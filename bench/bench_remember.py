"""Cost of ``evolve`` for a busy bank past the cap of what it remembers for deduplication.

Run from the repository root: ``python bench/bench_remember.py [--baseline REV] [--rounds N]``.

A bank remembers at most ``MAX_REMEMBERED`` (10,000) finished transactions and seen device
event ids (``domain.state``). A bank busy enough to pass the cap inside the 24 h window is
what this measures, with real events folded by ``domain.bank.evolve``:

* **door events**: 10,000 door events with ids inside the window are folded in, then
  ``--events`` more; µs per event of the latter;
* **opens**: 10,000 opens (requested, opened) inside the window, then ``--events`` more; µs
  per open of the latter, and how many transactions the bank remembers at the end.

Each is timed in child processes with this tree's ``domain`` and with the ``domain`` package
of ``--baseline`` (a git revision, default ``2fc1b73``: before pruning was amortized)
exported to a temporary directory, alternately (``--rounds``); the minimum over the rounds is
reported (the machine is shared), with the ratio of the two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
FILLED = 10_000  # what the bank has folded in before the measured events


def measure(events: int) -> dict[str, Any]:
    """Both figures for the ``domain`` package first on ``sys.path``."""
    from domain import bank as b
    from domain import events as e
    from domain.state import BankState

    created = e.LockerBankCreated(
        bank_id="0b6d3c8e-5a1f-4c2b-9d7e-1f2a3b4c5d6e",
        name="Bank",
        location=None,
        heartbeat_interval_seconds=10,
        compartments=[
            e.CompartmentSpec(id=f"comp-{n}", number=n, slave_id=1, address=n - 1)
            for n in range(1, 9)
        ],
        created_at=T0,
    )

    def at(n: int) -> datetime:
        return T0 + timedelta(seconds=n)  # all inside the 24 h window

    def door(n: int) -> Any:
        state = "open" if n % 2 else "closed"
        return e.DoorStateChanged(compartment_number=1, state=state, at=at(n), event_id=f"ev-{n}")

    def open_events(n: int) -> list[Any]:
        return [
            e.CompartmentOpeningRequested(
                transaction_id=f"tx-{n}",
                compartment_id="comp-1",
                compartment_number=1,
                user_id="user-1",
                requested_at=at(n),
                expires_at=at(n + 30),
            ),
            e.CompartmentOpened(
                transaction_id=f"tx-{n}", compartment_number=1, message=None, received_at=at(n)
            ),
        ]

    base = b.evolve(BankState(), created)
    doors = b.fold(base, [door(n) for n in range(FILLED)])
    started = time.perf_counter()
    doors = b.fold(doors, [door(n) for n in range(FILLED, FILLED + events)])
    door_us = (time.perf_counter() - started) / events * 1e6

    opens = base
    for n in range(FILLED):
        opens = b.fold(opens, open_events(n))
    more = [open_events(n) for n in range(FILLED, FILLED + events)]
    started = time.perf_counter()
    for pair in more:
        opens = b.fold(opens, pair)
    open_us = (time.perf_counter() - started) / events * 1e6
    return {
        "door_event_us": door_us,
        "open_us": open_us,
        "remembered_event_ids": len(doors.seen_event_ids),
        "remembered_transactions": len(opens.transactions),
    }


def child(domain_root: str, events: int) -> dict[str, Any]:
    code = (
        f"import sys, json; sys.path.insert(0, {domain_root!r}); sys.path.insert(1, {str(ROOT)!r});"
        f" from bench.bench_remember import measure; print(json.dumps(measure({events})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=domain_root
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def export_domain(rev: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "archive", rev, "domain"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="2fc1b73")
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export_domain(args.baseline, Path(tmp))
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
        for _ in range(args.rounds):
            runs["baseline"].append(child(tmp, args.events))
            runs["this"].append(child(str(ROOT), args.events))
    report: dict[str, Any] = {}
    for side, results in runs.items():
        report[side] = {
            "door_event_us": min(r["door_event_us"] for r in results),
            "open_us": min(r["open_us"] for r in results),
            "remembered_event_ids": results[-1]["remembered_event_ids"],
            "remembered_transactions": results[-1]["remembered_transactions"],
        }
    for figure in ("door_event_us", "open_us"):
        report[f"ratio_{figure}"] = report["this"][figure] / report["baseline"][figure]
    print(json.dumps({"baseline_rev": args.baseline, "filled": FILLED, **report}, indent=2))


if __name__ == "__main__":
    main()
