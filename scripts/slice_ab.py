"""A/B of SLICE option sets in simulation: scenarios x loads (multiples of saturation) x
seeds, identical traffic per (scenario, load, seed). Prints one line per scenario and load
(medians over the seeds of SLO attainment, utility attainment and the control class's SLO
attainment) and writes every run's summary to --out.

    .venv/bin/python scripts/slice_ab.py \
        --variants '{"off": {"ttft_chunk_share": null}, "default": {}}' \
        --loads 0.25,0.5,1,1.5,3 --seeds 0,1,2,3,4,5,6,7,8,9 \
        --scenarios edge:zen5,edge:device,edge:paper --out docs/bench/chunkcap/ab.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sota_experiment import saturation_rps  # noqa: E402

from sliceserve.sim.run import load_latency_model, simulate_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ZEN5 = str(ROOT / "docs/bench/compare/amd-epyc/device_profile.json")  # Zen 5 EPYC profile
DEVICE = str(ROOT / "docs/bench/profile_smollm2.json")  # an AMD EPYC's profile (BENCHMARKS)
ZEN4 = str(ROOT / "docs/bench/chunkcap/live/device_profile.json")  # Zen 4 EPYC, live runs
SCENARIOS = {"edge:zen5": ("edge", ZEN5), "paper:zen5": ("paper", ZEN5),
             "edge:device": ("edge", DEVICE), "paper:device": ("paper", DEVICE),
             "edge:zen4": ("edge", ZEN4), "paper:zen4": ("paper", ZEN4),
             "edge:slow": ("edge", "avx2-epyc-smollm2"),
             "paper:slow": ("paper", "avx2-epyc-smollm2"),
             "edge:paper": ("edge", "paper"), "paper:paper": ("paper", "paper")}


def one(task: tuple[str, float, int, str, dict[str, Any], int]) -> dict[str, Any]:
    scenario, load, seed, variant, options, num_requests = task
    workload, latency = SCENARIOS[scenario]
    model = load_latency_model(latency)
    rate = load * saturation_rps(workload, model)
    run = simulate_run(workload, "slice", rate, num_requests=num_requests, seed=seed,
                       latency_model=model, policy_options=options)
    return {"scenario": scenario, "load": load, "seed": seed, "variant": variant,
            "slo_attainment": run["summary"]["slo_attainment"],
            "utility_attainment": run["summary"]["utility_attainment"],
            "classes": {k: v.get("slo_attainment") for k, v in run["classes"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", required=True, help='JSON: {"name": {option: value}}')
    ap.add_argument("--loads", default="0.25,0.5,1,1.5,3")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--num-requests", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    variants = json.loads(args.variants)
    loads = [float(x) for x in args.loads.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    scenarios = args.scenarios.split(",")
    tasks = [(s, load, seed, name, opts, args.num_requests) for s in scenarios
             for load in loads for seed in seeds for name, opts in variants.items()]
    with ProcessPoolExecutor(args.workers) as ex:
        runs = list(ex.map(one, tasks))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"variants": variants, "runs": runs}, indent=1))
    for s in scenarios:
        for load in loads:
            line = f"{s:13s} {load:5.2f}"
            for name in variants:
                key = (s, load, name)
                rs = [r for r in runs if (r["scenario"], r["load"], r["variant"]) == key]
                slo = statistics.median(r["slo_attainment"] for r in rs)
                ut = statistics.median(r["utility_attainment"] for r in rs)
                ctrl = [r["classes"]["control"] for r in rs
                        if r["classes"].get("control") is not None]
                ctrl_txt = f"{statistics.median(ctrl):.3f}" if ctrl else "-"
                line += f" | {name}: slo {slo:.3f} ut {ut:.3f} control {ctrl_txt}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
