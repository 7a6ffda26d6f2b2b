#!/usr/bin/env python
"""SLICE's row cap in simulation: fixed 16 (the paper's), fixed 32, and derived from the device
(`max_rows`/`max_extra_rows` null: the most rows whose predicted decode step stays
within `row_tpot_share` of the tightest TPOT served), on identical traffic per point;
`--variants derived-0.8,derived-0.7` for other shares.

    .venv/bin/python scripts/rows_experiment.py --out docs/bench/vllm/rows
    .venv/bin/python scripts/rows_experiment.py --out docs/bench/vllm/rows --report

Scenarios (workload on a latency model):
- `vllm:edge`: SLICE inside vLLM. The device is the plug-in's fitted vLLM model
  (docs/bench/vllm/rows/vllm_fitted.json); the SLOs are resolved, as in the live runs, against
  vLLM's measured batch-1 speed (docs/bench/vllm/xargs/vllm_speed.json); absolute rates.
- `device:edge`, `device:paper`: sliceserve's own engine, this project's profile
  (docs/bench/profile_smollm2.json); `slow:edge`, `slow:paper`: the slow AVX2 EPYC profile
  (../shared/data/latency/avx2-epyc-smollm2-bf16.json, else the bundled preset). Rates are
  loads (multiples of the estimated capacity, as `--load` of the CLI).

One result file per scenario (OUT/<scenario>.json, every run, RESULTS.md's schema); the table
gives medians over the seeds with [min, max].
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from sliceserve.bench.machine import cpu_info
from sliceserve.latency_model import LatencyModel
from sliceserve.metrics.results import load_results, write_results
from sliceserve.policies.slice_options import SliceOptions
from sliceserve.policies.slice_select import Selector
from sliceserve.sim.run import run_traffic, scheduler_config_for
from sliceserve.workloads import load_workload, make_traffic
from sliceserve.workloads.load import estimate_capacity

ROOT = Path(__file__).resolve().parents[1]
VLLM_FITTED = ROOT / "docs/bench/vllm/rows/vllm_fitted.json"
VLLM_SPEED = ROOT / "docs/bench/vllm/xargs/vllm_speed.json"
DEVICE = ROOT / "docs/bench/profile_smollm2.json"
SLOW = ROOT.parent / "shared/data/latency/avx2-epyc-smollm2-bf16.json"
SCENARIOS = ["vllm:edge", "device:edge", "device:paper", "slow:edge", "slow:paper"]
VLLM_RATES = [1.5, 3.0, 4.5, 6.0, 8.0]
LOADS = [0.5, 1.5, 3.0]
ALL_VARIANTS: dict[str, dict[str, Any]] = {
    "16": {"max_rows": 16, "max_extra_rows": 16},
    "32": {"max_rows": 32, "max_extra_rows": 32},
    "derived": {"max_rows": None, "max_extra_rows": None},  # row_tpot_share 0.9
    "derived-0.8": {"max_rows": None, "max_extra_rows": None, "row_tpot_share": 0.8},
    "derived-0.7": {"max_rows": None, "max_extra_rows": None, "row_tpot_share": 0.7},
}
DEFAULT_VARIANTS = "16,32,derived"
METRICS = [("slo_attainment", "SLO attainment"), ("utility_attainment", "utility attainment")]


def models(scenario: str) -> tuple[LatencyModel, LatencyModel]:
    """(the device, the model the SLOs are resolved against)."""
    name = scenario.split(":")[0]
    if name == "vllm":
        return LatencyModel.load(str(VLLM_FITTED)), LatencyModel.load(str(VLLM_SPEED))
    if name == "device":
        path = str(DEVICE)
    else:
        path = str(SLOW) if SLOW.exists() else "avx2-epyc-smollm2"
    model = LatencyModel.load(path)
    return model, model


def points(scenario: str) -> list[tuple[str, float]]:
    """(label, rate) of every point."""
    device, _ = models(scenario)
    if scenario.startswith("vllm:"):
        return [(f"{r:g} req/s", r) for r in VLLM_RATES]
    estimate = estimate_capacity(load_workload(scenario.split(":")[1]), device)
    return [(f"load {x:g} ({estimate.rate_for(x):.3g} req/s)", estimate.rate_for(x))
            for x in LOADS]


def derived_cap(device: LatencyModel, tightest_tpot_ms: float, options: dict[str, Any]) -> int:
    """The cap the rule gives with the traffic's tightest TPOT (on the profile, uncorrected)."""
    selector = Selector(SliceOptions(**options), device, scheduler_config_for(device))
    return selector.row_cap(tightest_tpot_ms)


def run(scenario: str, seeds: list[int], n: int, variants: list[str]) -> list[dict[str, Any]]:
    device, slo_model = models(scenario)
    workload = scenario.split(":")[1]
    runs = []
    for label, rate in points(scenario):
        for seed in seeds:
            traffic = make_traffic(workload, rate_rps=rate, num_requests=n, seed=seed,
                                   latency_model=slo_model)
            tightest = min(spec.slo.tpot_ms for spec in traffic.requests)
            for variant in variants:
                options = ALL_VARIANTS[variant]
                cap = derived_cap(device, tightest, options)
                result = run_traffic(traffic, "slice", device, options)
                result["rows_experiment"] = {"scenario": scenario, "point": label,
                                             "variant": variant, "derived_cap": cap,
                                             "slo_latency_model": slo_model.name,
                                             "ran_on": cpu_info()["cpu"]}
                runs.append(result)
        print(f"{scenario} {label}: done", file=sys.stderr, flush=True)
    return runs


def cell(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.2f} [{min(values):.2f}, {max(values):.2f}]"


def report(scenario: str, runs: list[dict[str, Any]]) -> list[str]:
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    order: list[str] = []
    variants: list[str] = []
    for r in runs:
        meta = r["rows_experiment"]
        by.setdefault((meta["point"], meta["variant"]), []).append(r)
        for seen, key in ((order, "point"), (variants, "variant")):
            if meta[key] not in seen:
                seen.append(meta[key])
    derived = [v for v in variants if v.startswith("derived")]
    device = runs[0]["latency_model"]
    meta = runs[0]["rows_experiment"]
    lines = [f"**{scenario}** (device {device}, SLOs from {meta['slo_latency_model']}; "
             f"simulated on {meta['ran_on']})", "",
             "| point | " + " | ".join(f"cap, {v}" for v in derived) + " | " + " | ".join(
                 f"{m}, {v}" for _, m in METRICS for v in variants) + " |",
             "|---" * (1 + len(derived) + len(METRICS) * len(variants)) + "|"]
    for point in order:
        row = [point]
        for v in derived:
            caps = sorted({r["rows_experiment"]["derived_cap"] for r in by[(point, v)]})
            row.append("/".join(map(str, caps)))
        for key, _ in METRICS:
            for v in variants:
                row.append(cell([r["summary"][key] for r in by[(point, v)]]))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("-n", "--num-requests", type=int, default=100)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help=f"comma-separated, of {', '.join(ALL_VARIANTS)}")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", action="store_true", help="print the tables from the files")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for scenario in args.scenarios.split(","):
        path = args.out / f"{scenario.replace(':', '_')}.json"
        if args.report:
            runs = load_results(path)
        else:
            runs = run(scenario, seeds, args.num_requests, args.variants.split(","))
            write_results(path, runs)
        print("\n".join(report(scenario, runs)) + "\n")


if __name__ == "__main__":
    main()
