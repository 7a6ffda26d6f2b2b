"""Capacity at the SLO, simulated: for each policy, the highest arrival rate at which the
median over seeds of its SLO attainment (or utility attainment) stays >= 90%, found by
bisection (sliceserve/bench/capacity.py) on identical traffic per seed, in the discrete-event
simulator (the same scheduler and policy code as live runs; figures depend on the code, the
latency model and the seeds, not on the CPU that runs them).

Rates are multiples of the scenario's saturation rate as scripts/sota_experiment.py computes
it. The bracket [--low, --high] is checked first: a policy that misses at --low has capacity
"< low", one that meets at --high "> high".

    .venv/bin/python scripts/capacity_experiment.py --scenario edge:paper --scenario edge:slow \
        --scenario paper:paper --seeds 0,1,2 --num-requests 200 --jobs 2 \
        --out docs/bench/sota/capacity
    .venv/bin/python scripts/capacity_experiment.py ... --out docs/bench/sota/capacity --report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sota_experiment import LATENCY_MODELS, POLICIES, SOTA, saturation_rps  # noqa: E402

from sliceserve.bench.capacity import THRESHOLD, bisect_capacity  # noqa: E402
from sliceserve.latency_model import LatencyModel  # noqa: E402
from sliceserve.sim.run import simulate_run  # noqa: E402

METRICS = {"slo_attainment": "SLO attainment", "utility_attainment": "utility attainment"}


def bisect_policy(scenario: str, policy: str, metric: str, low: float, high: float,
                  steps: int, seeds: list[int], n: int, options: dict[str, Any] | None,
                  ) -> dict[str, Any]:
    """One policy's bisection over multiples of saturation: its capacity and every probe
    (rate, each seed's value, the median)."""
    workload, lm_key = scenario.split(":")
    model = LatencyModel.load(LATENCY_MODELS.get(lm_key, lm_key))
    sat = saturation_rps(workload, model)
    probes: list[dict[str, Any]] = []

    def measure(multiple: float) -> list[float]:
        rate = multiple * sat
        per_seed = [simulate_run(workload, policy, rate=rate, num_requests=n, seed=seed,
                                 latency_model=model, policy_options=options)
                    ["summary"][metric] for seed in seeds]
        probes.append({"multiple": multiple, "rate_rps": rate, "per_seed": per_seed,
                       "median": statistics.median(per_seed)})
        return per_seed

    result = bisect_capacity(measure, low, high, steps=steps, check_ends=True)
    capacity = result.capacity_rps  # a multiple here
    return {"scenario": scenario, "policy": policy, "metric": metric, "threshold": THRESHOLD,
            "saturation_rps": sat, "seeds": seeds, "num_requests": n,
            "policy_options": options or {},
            "capacity_multiple": capacity,
            "capacity_rps": None if capacity is None else capacity * sat,
            "bracket_multiple": list(result.bracket), "probes": probes}


def _task(args: tuple[Any, ...]) -> dict[str, Any]:
    return bisect_policy(*args)


def cell(r: dict[str, Any]) -> str:
    low, high = r["bracket_multiple"]
    if r["capacity_multiple"] is None:
        return f"< {high:.3g}x"
    if high == float("inf"):
        return f">= {low:.3g}x"
    return f"{r['capacity_multiple']:.3g}x ({r['capacity_rps']:.3g} rps; < {high:.3g}x)"


def report(results: list[dict[str, Any]], policies: list[str]) -> str:
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in results):
        for metric, label in METRICS.items():
            rows = {r["policy"]: r for r in results
                    if r["scenario"] == scenario and r["metric"] == metric}
            if not rows:
                continue
            any_row = next(iter(rows.values()))
            out.append(f"### {scenario}: capacity at {100 * THRESHOLD:.0f}% {label} "
                       f"(saturation {any_row['saturation_rps']:.3g} rps, "
                       f"{any_row['num_requests']} requests, seeds "
                       f"{','.join(map(str, any_row['seeds']))})\n")
            out.append("| policy | capacity (x saturation) |\n|---|---|")
            for p in policies:
                if p in rows:
                    out.append(f"| {'**slice**' if p == 'slice' else p} | {cell(rows[p])} |")
            best = max((rows[p] for p in SOTA if p in rows),
                       key=lambda r: r["capacity_multiple"] or 0.0, default=None)
            mine = rows.get("slice")
            if best is not None and mine is not None:
                a, b = mine["capacity_multiple"], best["capacity_multiple"]
                ratio = "-" if not a or not b else f"{a / b:.2f}x"
                out.append(f"\nSLICE over the best SOTA baseline ({best['policy']}): {ratio}\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", required=True,
                        help="WORKLOAD:LATENCY (repeatable), as in sota_experiment.py")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--metrics", default="slo_attainment,utility_attainment")
    parser.add_argument("--low", type=float, default=0.1, help="multiple of saturation")
    parser.add_argument("--high", type=float, default=2.0, help="multiple of saturation")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--num-requests", type=int, default=200)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--option", action="append", default=[],
                        help="POLICY.KEY=JSON, e.g. slice.reject_infeasible=true")
    parser.add_argument("--out", type=Path, help="folder: capacity.json and REPORT.md")
    parser.add_argument("--report", action="store_true",
                        help="simulate nothing: the tables from --out/capacity.json")
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    metrics = args.metrics.split(",")
    for metric in metrics:
        if metric not in METRICS:
            parser.error(f"--metrics: unknown {metric!r} (known: {', '.join(METRICS)})")
    options: dict[str, dict[str, Any]] = {}
    for item in args.option:
        key, _, raw = item.partition("=")
        policy, _, name = key.partition(".")
        options.setdefault(policy, {})[name] = json.loads(raw)
    if args.report:
        if args.out is None:
            parser.error("--report reads --out/capacity.json: give --out")
        results = json.loads((args.out / "capacity.json").read_text())["results"]
        print(report(results, policies))
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = [(scenario, p, metric, args.low, args.high, args.steps, seeds, args.num_requests,
              options.get(p)) for scenario in args.scenario for metric in metrics
             for p in policies]
    start = time.time()
    results: list[dict[str, Any]] = []
    pool = ProcessPoolExecutor(max_workers=args.jobs) if args.jobs > 1 else None
    try:
        for r in (pool.map(_task, tasks) if pool is not None else map(_task, tasks)):
            results.append(r)
            print(f"{r['scenario']} {r['metric']} {r['policy']}: {cell(r)} "
                  f"({time.time() - start:.0f} s)", file=sys.stderr)
    finally:
        if pool is not None:
            pool.shutdown()
    text = report(results, policies)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "scripts/capacity_experiment.py " + " ".join(argv or sys.argv[1:])
        (args.out / "capacity.json").write_text(json.dumps(
            {"command": command, "results": results}, indent=1) + "\n")
        (args.out / "REPORT.md").write_text(f"`{command}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
