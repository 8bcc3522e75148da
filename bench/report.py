"""Rendering ``report.json`` as ``report.md``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

FINDINGS = Path(__file__).resolve().parent / "findings.md"


def _number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    value = float(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _figure_table(figures: dict[str, Any]) -> list[str]:
    lines = ["| figure | unit | min | median | max |", "|---|---|---:|---:|---:|"]
    for name, fig in figures.items():
        label = f"**{name}**" if name.startswith("ratio") else name
        lines.append(
            f"| {label} | {fig.get('unit', '')} | {_number(fig.get('min'))} |"
            f" {_number(fig.get('median'))} | {_number(fig.get('max'))} |"
        )
    return lines


def _headlines(benchmarks: dict[str, Any]) -> list[str]:
    lines = ["| benchmark | ratio | median (min-max) | better |", "|---|---|---|---|"]
    for result in benchmarks.values():
        if "figures" not in result:
            continue
        for name, fig in result["figures"].items():
            if name.startswith("ratio"):
                timed = any(key in name for key in ("p50", "online", "loaded"))
                lines.append(
                    f"| {result['title']} | {name} | {_number(fig.get('median'))}"
                    f" ({_number(fig.get('min'))}-{_number(fig.get('max'))}) |"
                    f" {'lower (a time)' if timed else 'higher; 1 = as fast as the baseline'} |"
                )
    return lines


def _profile(section: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for scenario, summary in section.items():
        if not isinstance(summary, dict) or "samples" not in summary:
            lines.append(f"* {scenario}: {summary}")
            continue
        lines += [
            "",
            f"### Profile: {scenario} ({summary['samples']} samples of the thread holding the GIL)",
            "",
        ]
        lines += ["Self time by package (leaf frame):", ""]
        lines += [
            ", ".join(f"{p['name']} {p['percent']}%" for p in summary.get("packages_self", [])),
            "",
            "| self time: function (file) | % |",
            "|---|---:|",
        ]
        lines += [f"| `{row['name']}` | {row['percent']} |" for row in summary.get("self", [])]
        lines += ["", "| inclusive time in our code: function (file) | % |", "|---|---:|"]
        lines += [
            f"| `{row['name']}` | {row['percent']} |" for row in summary.get("inclusive_ours", [])
        ]
    return lines


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        "# lockerd benchmarks",
        "",
        f"Run {meta['date']} on {meta['machine']}; commit {meta['commit']};"
        f" {'SMOKE sizes (not figures to quote)' if meta['smoke'] else 'full sizes'},"
        f" {meta['runs']} run(s) per benchmark; wall time {meta['seconds']:.0f} s.",
        f"Software: {meta['software']}.",
        "",
        "Every benchmark starts its own mosquitto (`set_tcp_nodelay true`, 1,000 in flight, a"
        " queue no burst fills) and"
        " `lockerd serve` as a child process (honest CPU/RSS), measures a baseline in the same"
        " run, and reports min / median / max over the runs. Loopback only; every load loop is"
        " bounded in count and time. Produced by `python bench/run.py`"
        " (see the end of this page).",
        "",
        "## Headline ratios (lockerd vs its baseline)",
        "",
        *_headlines(report["benchmarks"]),
    ]
    for name, result in report["benchmarks"].items():
        lines += ["", f"## {result.get('title', name)} (`{name}`)", ""]
        if "error" in result:
            lines += ["**FAILED:**", "", "```", result["error"][-3000:], "```"]
            continue
        params = ", ".join(f"{k} {v}" for k, v in result.get("params", {}).items())
        busy = result.get("other_cores_busy")
        load = (
            f" Other processes on the machine kept {busy:.2f} of its cores busy meanwhile"
            " (a lower bound)."
            if busy is not None
            else ""
        )
        took = f" Took {result['seconds']:.0f} s." if "seconds" in result else ""
        lines += [f"Parameters: {params}.{took}{load}", "", *_figure_table(result["figures"])]
        if result.get("notes"):
            lines += ["", *[f"* {note}" for note in result["notes"]]]
        if result.get("doc"):
            lines += ["", result["doc"]]
    if report.get("profile"):
        lines += ["", "## Profiles of the hot paths (py-spy on the `lockerd serve` child)"]
        lines += _profile(report["profile"])
    if report.get("external"):
        lines += ["", "## Benchmarks owned by other modules", ""]
        for name, ext in report["external"].items():
            lines += [
                f"### `{name}` (exit status {ext.get('returncode')},"
                f" {ext.get('seconds', 0):.1f} s)",
                "",
                "```",
                (ext.get("stdout") or ext.get("skipped") or "").strip()[-4000:],
                "```",
                "",
            ]
    if FINDINGS.exists() and not meta["smoke"]:
        lines += ["", FINDINGS.read_text().strip()]
    lines += [
        "",
        "## Reproducing",
        "",
        "```",
        "python bench/run.py            # full sizes, 3 runs each (about 15 min)",
        "python bench/run.py --smoke    # tiny sizes, 1 run (CI: tests/bench/test_bench_smoke.py)",
        "python bench/run.py --only ingest,open --runs 5",
        "```",
        "",
        "Results go to `bench/results/report.json` and `report.md` (git-ignored); py-spy"
        " collapsed stacks to `bench/results/profile-*.txt`.",
        "",
    ]
    return "\n".join(lines)
