"""bench/broker_bench.py runs end to end at a tiny size and reports every figure (no timing is
asserted: the machine is shared). Its zero-loss check must hold even at this size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_broker_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "broker.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "broker_bench.py"),
            "--smoke",
            "--count",
            "300",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert results["zero_loss"] is True
    for name in ("no_auth", "cache_off", "cache_on"):
        entry = results["through_broker"][name]
        assert entry["rate_median"] > 0 and math.isfinite(entry["rate_median"]), name
        assert [s["handled"] for s in entry["samples"]] == [300.0]
    # cache off: the broker asked lockerd about each of the 300 heartbeats; on: about one
    assert results["through_broker"]["cache_off"]["samples"][0]["http_checks"] >= 300
    assert results["through_broker"]["cache_on"]["samples"][0]["http_checks"] < 20
    assert results["ack"]["ratio_manual_vs_auto"] > 0
    assert "msgs/s to lockerd" in done.stdout
