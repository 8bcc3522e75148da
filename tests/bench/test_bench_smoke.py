"""The benchmark suite in smoke mode: every benchmark runs end to end at tiny sizes and the
report carries every figure. No timing is asserted: CI machines vary."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

EXPECTED: dict[str, list[str]] = {
    "ingest": [
        "lockerd_heartbeats_per_s",
        "baseline_paho_heartbeats_per_s",
        "ratio_lockerd_vs_baseline",
        "lockerd_cpu_us_per_heartbeat",
        "baseline_paho_cpu_us_per_heartbeat",
        "broker_cpu_us_per_heartbeat",
        "lockerd_rss_mib",
    ],
    "open": [
        "lockerd_opens_per_s",
        "lockerd_open_p50_ms",
        "lockerd_open_p99_ms",
        "lockerd_open_accept_p50_ms",
        "lockerd_open_device_answer_p50_ms",
        "lockerd_cpu_ms_per_open",
        "lockerd_open_c1_p50_ms",
        "lockerd_open_c1_p99_ms",
        "lockerd_open_c1_device_answer_p50_ms",
        "baseline_mqtt_c1_p50_ms",
        "ratio_open_c1_p50_vs_mqtt_c1_p50",
        "baseline_mqtt_roundtrips_per_s",
        "baseline_mqtt_p50_ms",
        "baseline_mqtt_p99_ms",
        "baseline_http_healthz_per_s",
        "baseline_http_healthz_p50_ms",
        "ratio_opens_vs_mqtt_roundtrips",
        "ratio_opens_vs_healthz",
        "whatif_nodelay_opens_per_s",
        "whatif_nodelay_open_p50_ms",
        "whatif_nodelay_open_p99_ms",
        "whatif_nodelay_open_c1_p50_ms",
        "whatif_nodelay_c1_device_answer_p50_ms",
        "whatif_nodelay_device_answer_p50_ms",
        "ratio_whatif_nodelay_opens_vs_mqtt_roundtrips",
    ],
    "fleet": [
        "lockerd_provisioned_s",
        "lockerd_devices_online_s",
        "lockerd_backend_online_s",
        "baseline_devices_online_s",
        "ratio_backend_online_vs_baseline",
        "lockerd_heartbeats_per_s",
        "ratio_heartbeats_vs_expected",
        "lockerd_cpu_percent",
        "lockerd_cpu_us_per_heartbeat",
        "broker_cpu_percent",
        "simulator_cpu_percent",
        "lockerd_rss_mib",
        "lockerd_rss_kib_per_bank",
        "lockerd_banks_created_per_s",
        "baseline_broker_rss_mib",
        "baseline_simulator_cpu_ms_per_device_connect",
    ],
    "recovery": [
        f"{variant}_{figure}"
        for variant in ("baseline", "no_snapshots", "snapshots")
        for figure in ("start_to_ready_s", "start_to_all_loaded_s", "rss_mib")
    ]
    + [
        "ratio_no_snapshots_vs_baseline_all_loaded",
        "ratio_snapshots_vs_baseline_all_loaded",
    ],
    "app": [
        *(
            f"http_{section}_{figure}"
            for section in ("bare_hypercorn", "healthz", "transaction_get", "open_route")
            for figure in ("per_s", "p50_ms")
        ),
        "open_route_cpu_ms_per_open",
        "idle_open_poll_p50_ms",
        *(
            f"{section}_{figure}"
            for section in ("poll", "closed", "wait", "ws")
            for figure in ("opens_per_s", "p50_ms", "p99_ms", "cpu_ms_per_open", "polls_per_open")
        ),
        "ratio_healthz_vs_bare_hypercorn",
        "ratio_transaction_get_vs_bare_hypercorn",
        "ratio_open_route_vs_bare_hypercorn",
        "ratio_poll_served_vs_offered",
    ],
    "storm": [
        "lockerd_provisions_per_s",
        "lockerd_provision_p50_ms",
        "lockerd_provision_p99_ms",
        "lockerd_cpu_ms_per_provision",
        "lockerd_banks_created_per_s",
        "baseline_provisions_per_s",
        "baseline_provision_p50_ms",
        "ratio_lockerd_vs_baseline",
    ],
}


def test_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--no-external", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["meta"]["smoke"] is True
    markdown = (tmp_path / "report.md").read_text()
    missing = []
    for bench, names in EXPECTED.items():
        result = report["benchmarks"].get(bench, {})
        assert "error" not in result, result.get("error")
        assert result["title"] in markdown
        for name in names:
            figure = result.get("figures", {}).get(name)
            if figure is None:
                missing.append(f"{bench}.{name}")
                continue
            for key in ("min", "median", "max"):
                value = figure[key]
                assert isinstance(value, int | float), (bench, name, key, value)
                assert math.isfinite(value), (bench, name, key, value)
            assert figure["min"] <= figure["median"] <= figure["max"]
            assert f"| {name} |" in markdown or f"| **{name}** |" in markdown
    assert not missing, f"figures missing from the report: {missing}"
