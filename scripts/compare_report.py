"""The comparison's report: markdown tables (medians with ranges over seeds), capacity at the
SLO, the light-load check, and the plots, from the run files scripts/compare.py wrote.

    .venv/bin/python scripts/compare.py --report --out docs/bench/compare

Writes OUT/REPORT.md (the text docs/BENCHMARKS.md quotes), OUT/attainment_<scale>.png
(attainment vs rate per system, overall and per class) and OUT/overload_<scale>.png (per-class
bars and TTFT/TPOT distributions at the overload load).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sliceserve.metrics.aggregate import group, labels, metric_spread, rates, run_label, spread
from sliceserve.metrics.plots import plot_sweep
from sliceserve.metrics.plots_single import plot_single_rate
from sliceserve.metrics.results import load_results

OVERLOAD = 1.5


def _cell(members: Sequence[dict[str, Any]], metric: str, class_name: str | None = None,
          percent: bool = True) -> str:
    value = metric_spread(members, metric, class_name)
    if value is None:
        return "-"
    med, low, high = value
    if percent:
        return f"{100 * med:.1f}% ({100 * low:.0f}-{100 * high:.0f})"
    return f"{med:.3g} ({low:.3g}-{high:.3g})"


LIGHT_METRICS = (("slo_attainment", None, "attainment"), ("utility_attainment", None, "utility"),
                 ("goodput_rps", None, "goodput (req/s)"), ("ttft_ms", "p50", "TTFT p50 (ms)"),
                 ("ttft_ms", "p90", "TTFT p90 (ms)"), ("tpot_ms", "p50", "TPOT p50 (ms)"),
                 ("tpot_ms", "p90", "TPOT p90 (ms)"))


def light_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Every metric at the lightest load, median (min-max) over seeds: the "no cost for its
    care" check (latencies of completed requests only)."""
    light = min(r["load"] for r in runs)
    at = [r for r in runs if r["load"] == light]
    lines = [f"### Light load ({light:g})", "",
             "| system | " + " | ".join(name for *_, name in LIGHT_METRICS) + " |",
             "|---" * (len(LIGHT_METRICS) + 1) + "|"]
    for label in labels(at):
        members = [r for r in at if run_label(r) == label]
        cells = []
        for metric, sub, _ in LIGHT_METRICS:
            if sub is None:
                cells.append(_cell(members, metric, percent=metric.endswith("attainment")))
                continue
            value = spread([r["summary"][metric][sub] for r in members])
            cells.append("-" if value is None else
                         f"{value[0]:.0f} ({value[1]:.0f}-{value[2]:.0f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def load_runs(out: Path, systems: Sequence[str], scale: str) -> list[dict[str, Any]]:
    runs = []
    for name in systems:
        for path in sorted((out / "runs" / name / scale).glob("*.json")):
            runs.extend(load_results(path))
    return runs


def attainment_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    by_key = group(runs)
    loads = sorted({r["load"] for r in runs})
    head = "| system | " + " | ".join(f"load {x:g}" for x in loads) + " |"
    lines = [head, "|---" * (len(loads) + 1) + "|"]
    for label in labels(runs):
        cells = []
        for load in loads:
            members = [r for (lab, _), rs in by_key.items() if lab == label
                       for r in rs if r["load"] == load]
            cells.append(_cell(members, "slo_attainment"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def class_table(runs: Sequence[dict[str, Any]], load: float) -> list[str]:
    at = [r for r in runs if r["load"] == load]
    classes = list(dict.fromkeys(c for r in at for c in r["classes"]))
    lines = ["| system | overall | " + " | ".join(classes) + " | utility | failures |",
             "|---" * (len(classes) + 4) + "|"]
    for label in labels(at):
        members = [r for r in at if run_label(r) == label]
        failures: dict[str, int] = {}
        for r in members:
            for code, n in r["summary"].get("failures", {}).items():
                failures[code] = failures.get(code, 0) + n
        cells = [_cell(members, "slo_attainment"),
                 *(_cell(members, "slo_attainment", c) for c in classes),
                 _cell(members, "utility_attainment"),
                 ", ".join(f"{k} {v}" for k, v in sorted(failures.items())) or "none"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def capacity_lines(out: Path, systems: Sequence[str]) -> list[str]:
    lines = ["| system | capacity at 90% (req/s) | bracket | probes (rate: median) |",
             "|---|---|---|---|"]
    for name in systems:
        path = out / "capacity" / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        cap = data.get("capacity_rps")
        bracket = data.get("bracket")
        probes = ", ".join(f"{r:.3g}: {100 * v:.0f}%" for r, v in data.get("probes", []))
        lines.append(f"| {data.get('label', name)} | {'-' if cap is None else f'{cap:.3g}'} | "
                     f"{bracket if bracket else 'no bracket in the sweep'} | {probes} |")
    return lines


def write_report(out: Path, systems: Sequence[str], seeds: Sequence[int]) -> Path:
    text = [f"# Comparison: {', '.join(systems)}; seeds {list(seeds)}", ""]
    machine = out / "machine.json"
    if machine.exists():
        text += [f"Machine: `{machine.read_text().strip()}`", ""]
    for scale in ("absolute", "relative"):
        runs = load_runs(out, systems, scale)
        if not runs:
            continue
        text += [f"## SLO attainment, {scale} SLOs (median (min-max) over seeds)", "",
                 *attainment_table(runs), ""]
        if len({r["load"] for r in runs}) > 1:
            text += [*light_table(runs), ""]
        if any(r["load"] == OVERLOAD for r in runs):
            text += [f"### By class at load {OVERLOAD:g}", "", *class_table(runs, OVERLOAD), ""]
            plot_single_rate([r for r in runs if r["load"] == OVERLOAD],
                             out / f"overload_{scale}.png")
        if len(rates(runs)) > 1:
            plot_sweep(runs, out / f"attainment_{scale}.png")
    caps = capacity_lines(out, systems)
    if len(caps) > 2:
        text += ["## Capacity at the SLO (absolute SLOs, bisection)", "", *caps, ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(text) + "\n")
    return path
