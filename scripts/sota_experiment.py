"""SLICE against the SLO-aware state of the art (scorpio, andes, vllm-priority(-preempt),
sglang-priority; vllm FCFS as the common reference), in simulation.

For each scenario (a workload on a latency model) it finds the device's saturation rate (the
arrival rate at which the requests' work, priced at the model's most efficient batching, fills
the device), sweeps every policy over multiples of it on identical traffic (same seed), and
prints Markdown tables: each metric per policy and rate (the median over the seeds, with
their range), SLICE over the best SOTA baseline (medians), named classes' SLO attainment, and
capacity at 90% SLO attainment (median over seeds at each rate). `--rates` gives absolute
rates instead of multiples. Result files (the RESULTS.md schema) go to --out, one per
scenario with every seed's runs.

    .venv/bin/python scripts/sota_experiment.py --num-requests 1000 --out docs/sota
    .venv/bin/python scripts/sota_experiment.py --scenario edge:slow --multipliers 1.5,3
    .venv/bin/python scripts/sota_experiment.py --scenario edge:slow --rates 4 --seeds 0,1,2 \
        --num-requests 60 --classes control
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sliceserve.latency_model import LatencyModel
from sliceserve.metrics.results import capacity_rps, load_results, write_results
from sliceserve.sim.run import sweep
from sliceserve.workloads import make_traffic

SOTA = ["scorpio", "andes", "vllm-priority", "vllm-priority-preempt", "sglang-priority"]
POLICIES = ["vllm", *SOTA, "slice"]
MULTIPLIERS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0]
LATENCY_MODELS = {
    "paper": "paper",
    "device": "docs/bench/profile_smollm2.json",  # this machine's profile (BENCHMARKS.md)
    "slow": "avx2-epyc-smollm2",  # the slow AVX2 EPYC profile, a bundled preset
}
SCENARIOS = ["paper:paper", "edge:paper", "paper:device", "edge:device", "edge:slow"]
METRICS = [("utility_attainment", "utility attainment"), ("slo_attainment", "SLO attainment"),
           ("qoe_mean", "mean QoE (Andes)"), ("scorpio_goodput_rps", "goodput, req/s (SCORPIO)")]
MAX_BATCH_FOR_SATURATION = 16


def saturation_rps(workload: str, model: LatencyModel) -> float:
    """Requests/s whose work fills the device: per request, its prompt's extra cost in a
    batch plus its output tokens at the cheapest decode cost per token (batches up to 16)."""
    traffic = make_traffic(workload, rate_rps=1.0, num_requests=2000, seed=12345,
                           latency_model=model)
    per_token_ms = min(model.decode_latency_ms(k) / k
                       for k in range(1, MAX_BATCH_FOR_SATURATION + 1))
    total_ms = 0.0
    for spec in traffic.requests:
        total_ms += model.chunk_extra_ms(spec.num_prompt_tokens)
        total_ms += spec.num_output_tokens * per_token_ms
    return 1000.0 * len(traffic.requests) / total_ms


def values(runs: list[dict[str, Any]], policy: str, rate: float, key: str,
           class_name: str | None = None) -> list[float]:
    """`key` of `policy`'s runs at `rate` (one per seed), overall or of one class."""
    out = []
    for r in runs:
        if r["policy"] != policy or r["rate_rps"] != rate:
            continue
        stats = r["summary"] if class_name is None else r["classes"].get(class_name)
        if stats is not None and stats.get(key) is not None:
            out.append(stats[key])
    return out


def median(runs: list[dict[str, Any]], policy: str, rate: float, key: str,
           class_name: str | None = None) -> float | None:
    data = values(runs, policy, rate, key, class_name)
    return statistics.median(data) if data else None


def fmt(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if key.endswith("_rps") else f"{100 * value:.1f}%"


def fmt_spread(data: list[float], key: str) -> str:
    if not data:
        return "-"
    mid, low, high = statistics.median(data), min(data), max(data)
    if len(data) == 1 or low == high:
        return fmt(mid, key)
    if key.endswith("_rps"):
        return f"{mid:.3f} ({low:.3f}-{high:.3f})"
    return f"{100 * mid:.1f}% ({100 * low:.0f}-{100 * high:.0f})"


def metric_table(runs: list[dict[str, Any]], policies: list[str], rates: list[float],
                 multipliers: list[float], key: str, class_name: str | None = None) -> str:
    head = "| policy | " + " | ".join(f"{m:.3g}x ({r:.3g} rps)"
                                      for m, r in zip(multipliers, rates))
    lines = [head + " |", "|" + "---|" * (len(rates) + 1)]
    for p in policies:
        cells = [fmt_spread(values(runs, p, rate, key, class_name), key) for rate in rates]
        lines.append(f"| {'**slice**' if p == 'slice' else p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_sota(runs: list[dict[str, Any]], rate: float, key: str,
              class_name: str | None = None) -> tuple[str, float]:
    """The SOTA baseline with the highest median `key` at `rate`."""
    best = ("-", -1.0)
    for p in SOTA:
        value = median(runs, p, rate, key, class_name)
        if value is not None and value > best[1]:
            best = (p, value)
    return best


def ratio_table(runs: list[dict[str, Any]], rates: list[float],
                multipliers: list[float]) -> str:
    lines = ["| load | metric | slice | best SOTA | slice / best |", "|---|---|---|---|---|"]
    for m, rate in zip(multipliers, rates):
        for key, label in METRICS:
            mine = median(runs, "slice", rate, key)
            if mine is None:
                continue
            name, value = best_sota(runs, rate, key)
            ratio = "-" if value <= 0 else f"{mine / value:.2f}x"
            lines.append(f"| {m:.3g}x | {label} | {fmt(mine, key)} | {fmt(value, key)} "
                         f"({name}) | {ratio} |")
    return "\n".join(lines)


def capacity_line(runs: list[dict[str, Any]], policies: list[str]) -> str:
    parts = []
    for p in policies:
        cap = capacity_rps(runs, p, 0.9, "slo_attainment")
        parts.append(f"{p} {cap:.3g}" if cap is not None else f"{p} <lowest")
    return "capacity at 90% SLO attainment (requests/s): " + ", ".join(parts)


def run_scenario(scenario: str, policies: list[str], multipliers: list[float] | None,
                 absolute_rates: list[float] | None, n: int, seeds: list[int], jobs: int,
                 options: dict[str, dict[str, Any]], online: bool,
                 out_dir: Path | None = None, report_only: bool = False,
                 ) -> tuple[list[dict[str, Any]], list[float], list[float], float]:
    """Every seed's runs (simulated, each seed's written to `out_dir`; with `report_only`
    read back from there instead), the rates, their multiples of saturation, saturation."""
    workload, lm_key = scenario.split(":")
    model = LatencyModel.load(LATENCY_MODELS.get(lm_key, lm_key))
    sat = saturation_rps(workload, model)
    if absolute_rates is not None:
        rates = absolute_rates
        multipliers = [rate / sat for rate in rates]
    else:
        assert multipliers is not None
        rates = [round(m * sat, 4) for m in multipliers]
    if out_dir is not None and report_only:
        runs = []
        for seed in seeds:
            runs += load_results(out_dir / f"{file_stem(scenario, n, absolute_rates)}_s{seed}.json")
        return runs, rates, multipliers, sat
    runs = []
    for seed in seeds:
        start = time.time()

        def progress(done: int, total: int, run: dict[str, Any], seed: int = seed,
                     start: float = start) -> None:
            print(f"{scenario} seed {seed}: {done}/{total} {run['policy']} at "
                  f"{run['rate_rps']:g} rps ({time.time() - start:.0f} s)", file=sys.stderr)

        seed_runs = sweep(workload, policies, rates, num_requests=n, seed=seed,
                          latency_model=model, policy_options=options, jobs=jobs,
                          online_latency=online, progress=progress)
        if out_dir is not None:
            write_results(out_dir / f"{file_stem(scenario, n, absolute_rates)}_s{seed}.json",
                          seed_runs)
        runs += seed_runs
    return runs, rates, multipliers, sat


def file_stem(scenario: str, n: int, absolute_rates: list[float] | None) -> str:
    stem = f"{scenario.replace(':', '_')}_n{n}"
    if absolute_rates is not None:
        stem += "_r" + "-".join(f"{r:g}" for r in absolute_rates)
    return stem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="WORKLOAD:LATENCY (repeatable); "
                        f"latency: {', '.join(LATENCY_MODELS)} or a file")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--multipliers", default=",".join(f"{m:g}" for m in MULTIPLIERS))
    parser.add_argument("--rates", help="absolute rates (requests/s) instead of multipliers")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--classes", default="",
                        help="comma-separated classes whose SLO attainment is tabulated")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--option", action="append", default=[],
                        help="POLICY.KEY=JSON, e.g. slice.rank=\"utility_rate\"")
    parser.add_argument("--frozen-latency", action="store_true")
    parser.add_argument("--out", type=Path, help="result files: one per scenario and seed")
    parser.add_argument("--report", action="store_true",
                        help="simulate nothing: the tables from the result files in --out")
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    multipliers = [float(m) for m in args.multipliers.split(",")]
    absolute = [float(r) for r in args.rates.split(",")] if args.rates else None
    seeds = [int(x) for x in args.seeds.split(",")]
    class_names = [c for c in args.classes.split(",") if c]
    options: dict[str, dict[str, Any]] = {}
    for item in args.option:
        key, _, raw = item.partition("=")
        policy, _, name = key.partition(".")
        options.setdefault(policy, {})[name] = json.loads(raw)
    for scenario in args.scenario or SCENARIOS:
        start = time.time()
        runs, rates, mults, sat = run_scenario(scenario, policies, multipliers, absolute,
                                               args.num_requests, seeds, args.jobs, options,
                                               not args.frozen_latency, args.out, args.report)
        print(f"\n## {scenario}: saturation {sat:.3g} requests/s, {args.num_requests} requests, "
              f"seeds {args.seeds}, median (min-max) over seeds ({time.time() - start:.0f} s)\n")
        for key, label in METRICS:
            print(f"{label}:\n\n{metric_table(runs, policies, rates, mults, key)}\n")
        for name in class_names:
            table = metric_table(runs, policies, rates, mults, "slo_attainment", name)
            print(f"SLO attainment of class {name}:\n\n{table}\n")
        print(ratio_table(runs, rates, mults) + "\n")
        if len(rates) > 1:
            print(capacity_line(runs, policies) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
