"""Cost of the pure domain's ``evolve``/``fold`` of a locker bank, and of copying a ``BankState``.

Run from the repository root: ``python bench/bench_evolve.py [--baseline REV] [--opens N]``.

The event sequence is a bank's realistic life, every event produced by ``domain.bank.decide``
as the actor does: created with 8 compartments, provisioned, granted, online, then ``--opens``
opens (``CompartmentOpeningRequested``, ``CommandDispatched``, ``CompartmentOpened``, the
door's ``DoorStateChanged`` open and closed) with a heartbeat after every fourth open.

Reported, all measured in this one run:

* µs per event of ``fold`` over that sequence with this tree's ``domain``, and with the
  ``domain`` package of ``--baseline`` (a git revision, default ``fac5811``: before the fast
  copy) exported to a temporary directory, each timed in child processes on the same
  sequence, alternately (``--rounds``); the ratio of the two, and whether both folds reach
  the same state;
* µs per copy-with-one-change of a ``BankState``: ``dataclasses.replace`` against
  ``domain.state.copy_with`` (when this tree has it).

Timings are the minimum over ``--repeat`` folds and ``--rounds`` processes (the machine is
shared: the minimum is the least disturbed one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tarfile
import tempfile
import timeit
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
TIMEOUT = 30


def build_events(opens: int) -> list[Any]:
    """The bank's events, decided and folded one command at a time (as the actor does)."""
    from domain import bank as b
    from domain import commands as c
    from domain import events as e
    from domain.state import BankState

    state = BankState()
    events: list[Any] = []

    def run(command: Any, now: datetime) -> None:
        nonlocal state
        new = b.decide(state, command, now)
        state = b.fold(state, new)
        events.extend(new)

    specs = tuple(
        e.CompartmentSpec(id=f"comp-{n}", number=n, slave_id=1, address=n - 1) for n in range(1, 9)
    )
    run(
        c.CreateBank(
            bank_id="0b6d3c8e-5a1f-4c2b-9d7e-1f2a3b4c5d6e",
            name="Bank A",
            location="Hall 1",
            heartbeat_interval_seconds=10,
            compartments=specs,
            token_hash="token-hash-1",
            token_expires_at=T0 + timedelta(days=7),
        ),
        T0,
    )
    now = T0 + timedelta(seconds=60)
    run(
        c.Provision(
            token_hash="token-hash-1",
            client_id="device-client-1",
            new_mqtt_user="mqtt-user-1",
            new_credential_hash="cred-hash-1",
        ),
        now,
    )
    for n in range(1, 9):
        run(c.GrantAccess(compartment_id=f"comp-{n}", user_id="user-1", expires_at=None), now)

    def heartbeat(spare: str) -> None:
        run(
            c.RecordHeartbeat(
                uptime_seconds=100,
                session_id="session-1",
                spare_transaction_id=spare,
                command_timeout_seconds=TIMEOUT,
            ),
            now,
        )

    now += timedelta(seconds=1)
    heartbeat("cfg-tx")  # online; the device has applied nothing yet: an apply_config
    config_tx = state.pending_config()
    if config_tx is not None:
        run(c.MarkDispatched(transaction_id=config_tx.transaction_id), now)
        run(
            c.RecordAnswer(
                transaction_id=config_tx.transaction_id,
                action="apply_config",
                result="success",
                error_code=None,
                message=None,
                applied_config_hash=state.config_hash,
            ),
            now,
        )

    for i in range(opens):
        now += timedelta(seconds=2)
        number = i % 8 + 1
        tx = f"tx-{i}"
        run(
            c.RequestOpen(
                compartment_id=f"comp-{number}",
                user_id="user-1",
                transaction_id=tx,
                command_timeout_seconds=TIMEOUT,
            ),
            now,
        )
        run(c.MarkDispatched(transaction_id=tx), now)
        run(
            c.RecordAnswer(
                transaction_id=tx,
                action="open_compartment",
                result="success",
                error_code=None,
                message=None,
                applied_config_hash=None,
            ),
            now,
        )
        for door, k in (("open", 0), ("closed", 1)):
            run(
                c.RecordDeviceEvent(
                    event="door_state_changed",
                    event_id=f"ev-{i}-{k}",
                    data={"compartment_number": number, "state": door},
                ),
                now,
            )
        if i % 4 == 3:
            heartbeat(f"hb-{i}")
    return events


def canonical(value: Any) -> Any:
    """A process-independent form of a state (pyrsistent's iteration order follows hashing)."""
    from pyrsistent import PMap, PSet

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [[f.name, canonical(getattr(value, f.name))] for f in dataclasses.fields(value)]
    if isinstance(value, PMap):
        return sorted([repr(k), canonical(v)] for k, v in value.items())
    if isinstance(value, PSet):
        return sorted(repr(v) for v in value)
    return repr(value)


def time_fold(opens: int, repeat: int) -> dict[str, Any]:
    """µs per event of ``fold`` over :func:`build_events`, with whichever ``domain`` is imported."""
    from collections import Counter

    from domain import bank as b
    from domain.state import BankState

    events = build_events(opens)
    start = BankState()
    final = b.fold(start, events)
    rounds = timeit.repeat(lambda: b.fold(start, events), number=1, repeat=repeat)
    return {
        "domain": str(Path(b.__file__).resolve().parent),
        "events": len(events),
        "kinds": dict(Counter(type(ev).__name__ for ev in events).most_common()),
        "us_per_event": min(rounds) / len(events) * 1e6,
        "state": json.dumps(canonical(final)),
    }


def time_copies(repeat: int) -> dict[str, float]:
    """µs per copy of a full ``BankState`` with one field changed."""
    from domain import state as st

    events = build_events(8)
    from domain import bank as b

    s = b.fold(st.BankState(), events)
    n = 20_000
    out = {
        "dataclasses.replace": min(
            timeit.repeat(lambda: dataclasses.replace(s, version=1), number=n, repeat=repeat)
        )
        / n
        * 1e6
    }
    fast = getattr(st, "copy_with", None)
    if fast is not None:
        out["domain.state.copy_with"] = (
            min(timeit.repeat(lambda: fast(s, version=1), number=n, repeat=repeat)) / n * 1e6
        )
    return out


def child_fold(domain_root: str, opens: int, repeat: int) -> dict[str, Any]:
    """:func:`time_fold` in a child process that imports ``domain`` from ``domain_root``."""
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            domain_root,
            "--opens",
            str(opens),
            "--repeat",
            str(repeat),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(child.stdout)
    return result


def compare(rev: str, opens: int, repeat: int, rounds: int) -> tuple[dict[str, Any], ...]:
    """The fold timed with the ``domain`` of git revision ``rev`` and with this tree's, each in
    a child process, alternately for ``rounds`` rounds (the same conditions for both on a
    shared machine); each side's fastest round."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "domain"], check=True, capture_output=True
    ).stdout
    old: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        for _ in range(rounds):
            old.append(child_fold(tmp, opens, repeat))
            new.append(child_fold(str(ROOT), opens, repeat))
    return tuple(min(side, key=lambda r: float(r["us_per_event"])) for side in (old, new))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="fac5811", help="git revision ('' for none)")
    parser.add_argument("--opens", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="alternations old/new")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, args.child or str(ROOT))
    if args.child:
        print(json.dumps(time_fold(args.opens, args.repeat)))
        return

    if args.baseline:
        old, new = compare(args.baseline, args.opens, args.repeat, args.rounds)
    else:
        old, new = None, time_fold(args.opens, args.repeat)
    print(f"events: {new['events']} ({', '.join(f'{k} {v}' for k, v in new['kinds'].items())})")
    print(f"fold, this tree ({new['domain']}): {new['us_per_event']:.2f} µs/event")
    if old is not None:
        print(f"fold, baseline {args.baseline}: {old['us_per_event']:.2f} µs/event")
        print(f"ratio baseline/this tree: {old['us_per_event'] / new['us_per_event']:.2f}x")
        same = old["state"] == new["state"] and old["events"] == new["events"]
        print(f"same final state as the baseline: {same}")
        if not same:
            sys.exit(1)
    for name, us in time_copies(args.repeat).items():
        print(f"copy of a BankState, one field changed, {name}: {us:.2f} µs")


if __name__ == "__main__":
    main()
