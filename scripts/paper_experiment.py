"""The SLICE paper's experiment in simulation: every policy on the `paper` workload, from light
load to heavy overload; the ablation of SLICE's full-mode options; the baselines' sensitivity
to max_batch_size. Writes result files and plots, and prints the Markdown tables quoted in
docs/RESULTS-paper.md.

    .venv/bin/python scripts/paper_experiment.py [--num-requests 2000] [--jobs 2] [--out docs/paper]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sliceserve.metrics.plots import plot_sweep
from sliceserve.metrics.results import capacity_rps, write_results
from sliceserve.sim.run import sweep

POLICIES = ["orca", "vllm", "vllm-priority", "fastserve", "edf", "slice-paper", "slice"]
RATES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0]
RT_CLASSES = ("rt-short", "rt-long")
ABLATION_RATES = [0.4, 1.0, 4.0]
ABLATIONS: dict[str, dict[str, Any]] = {
    "slice (all options)": {},
    "no spread_mask": {"spread_mask": False},
    "no prefill_aware": {"prefill_aware": False},
    "no ttft_urgency": {"ttft_urgency": False},
    "no memory_aware": {"memory_aware": False},
    "no skip_and_continue": {"skip_and_continue": False},
    "no work_conserving": {"work_conserving": False},
    "no deadlines": {"deadlines": False},
    "no triage": {"triage": False},
    "aging on": {"aging": True},
    "best_effort_share 0": {"best_effort_share": 0.0},
    "rate_margin 0": {"rate_margin": 0.0},
    "extras_guard_tpots 0": {"extras_guard_tpots": 0.0},
    "extras_guard_tpots 1": {"extras_guard_tpots": 1.0},
    "rank utility_rate (paper)": {"rank": "utility_rate"},
}
EDGE_RATES = [0.1, 0.2, 0.4, 0.6, 1.0, 2.0]
EDGE_ABLATION_RATES = [0.6, 1.0, 2.0]
EDGE_ABLATIONS = ["slice (all options)", "no spread_mask", "no prefill_aware", "no ttft_urgency",
                  "no work_conserving", "no deadlines", "no triage", "aging on",
                  "rank utility_rate (paper)"]
BATCH_SIZES = [4, 8, 16]
BASELINES = ["orca", "vllm", "fastserve", "edf"]


def find(runs: list[dict[str, Any]], policy: str, rate: float) -> dict[str, Any]:
    return next(r for r in runs if r["policy"] == policy and r["rate_rps"] == rate)


def rt_mean_e2e_ms(run: dict[str, Any]) -> float:
    """Mean E2E of the completed real-time requests (weighted by class count)."""
    total, n = 0.0, 0
    for name in RT_CLASSES:
        stats = run["classes"][name]
        if stats["e2e_ms"] and stats["completed"]:
            total += stats["e2e_ms"]["mean"] * stats["completed"]
            n += stats["completed"]
    return total / n if n else float("nan")


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def attainment_table(runs: list[dict[str, Any]], policies: list[str], rates: list[float],
                     key: str = "slo_attainment") -> str:
    head = "| policy | " + " | ".join(f"{r:g}" for r in rates) + " | capacity@90% |"
    lines = [head, "|" + "---|" * (len(rates) + 2)]
    for p in policies:
        cells = [pct(find(runs, p, r)["summary"][key]) for r in rates]
        cap = capacity_rps(runs, p)
        cap_text = f"{cap:g}" if cap is not None else f"< {rates[0]:g}"
        lines.append(f"| {p} | " + " | ".join(cells) + f" | {cap_text} |")
    return "\n".join(lines)


def ratio(a: float, b: float) -> str:
    if b == 0:
        return "inf" if a > 0 else "n/a"
    return f"{a / b:.1f}x"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-requests", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="docs/paper")
    ap.add_argument("--skip-ablation", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, seed, jobs = args.num_requests, args.seed, args.jobs

    t0 = time.perf_counter()
    runs = sweep("paper", POLICIES, RATES, num_requests=n, seed=seed, jobs=jobs)
    write_results(out / "sweep.json", runs)
    plot_sweep(runs, out / "attainment.png")
    print(f"## Sweep ({n} requests per point, seed {seed}, {time.perf_counter() - t0:.0f} s)\n")
    print("SLO attainment (paper definition):\n")
    print(attainment_table(runs, POLICIES, RATES))
    print("\nStrict SLO attainment:\n")
    print(attainment_table(runs, POLICIES, RATES, "slo_attainment_strict"))
    print("\nUtility attainment:\n")
    print(attainment_table(runs, POLICIES, RATES, "utility_attainment"))

    heavy, light = RATES[-1], RATES[0]
    print("\n## SLICE against the paper's baselines\n")
    print("| rate | slice | orca | fastserve | slice/orca | slice/fastserve | "
          "rt mean E2E slice | orca | fastserve | orca/slice | fastserve/slice |")
    print("|" + "---|" * 11)
    for rate in RATES:
        s, o, f = (find(runs, p, rate) for p in ("slice", "orca", "fastserve"))
        att = [x["summary"]["slo_attainment"] for x in (s, o, f)]
        e2e = [rt_mean_e2e_ms(x) / 1000 for x in (s, o, f)]
        print(f"| {rate:g} | {pct(att[0])} | {pct(att[1])} | {pct(att[2])} | "
              f"{ratio(att[0], att[1])} | {ratio(att[0], att[2])} | {e2e[0]:.1f} s | "
              f"{e2e[1]:.1f} s | {e2e[2]:.1f} s | {ratio(e2e[1], e2e[0])} | "
              f"{ratio(e2e[2], e2e[0])} |")
    print(f"\n(heaviest {heavy:g} rps, lightest {light:g} rps; E2E over completed requests; "
          "every policy completes every request in these runs)")

    if not args.skip_ablation:
        t0 = time.perf_counter()
        names = list(ABLATIONS)
        abl_runs: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            abl_runs[name] = sweep("paper", ["slice"], ABLATION_RATES, num_requests=n,
                                   seed=seed, jobs=jobs,
                                   policy_options={"slice": ABLATIONS[name]})
        paper_runs = [find(runs, "slice-paper", r) for r in ABLATION_RATES]
        write_results(out / "ablation.json", [r for v in abl_runs.values() for r in v])
        print(f"\n## Ablation: SLICE with one option changed ({time.perf_counter() - t0:.0f} s)\n")
        print("| variant | " + " | ".join(f"{r:g} rps" for r in ABLATION_RATES) + " |")
        print("|" + "---|" * (len(ABLATION_RATES) + 1))
        for name in names:
            cells = [pct(r["summary"]["slo_attainment"]) for r in abl_runs[name]]
            print(f"| {name} | " + " | ".join(cells) + " |")
        cells = [pct(r["summary"]["slo_attainment"]) for r in paper_runs]
        print("| slice-paper (paper mode) | " + " | ".join(cells) + " |")

        t0 = time.perf_counter()
        print("\n## Baselines' max_batch_size\n")
        print("| policy | max_batch_size | " + " | ".join(f"{r:g} rps" for r in ABLATION_RATES)
              + " |")
        print("|" + "---|" * (len(ABLATION_RATES) + 2))
        bs_runs = []
        for bs in BATCH_SIZES:
            opts = {p: {"max_batch_size": bs} for p in BASELINES}
            res = sweep("paper", BASELINES, ABLATION_RATES, num_requests=n, seed=seed,
                        jobs=jobs, policy_options=opts)
            bs_runs += res
            for p in BASELINES:
                cells = [pct(find(res, p, r)["summary"]["slo_attainment"])
                         for r in ABLATION_RATES]
                print(f"| {p} | {bs} | " + " | ".join(cells) + " |")
        write_results(out / "batch_size.json", bs_runs)
        print(f"\n({time.perf_counter() - t0:.0f} s)")
    t0 = time.perf_counter()
    edge = sweep("edge", POLICIES, EDGE_RATES, num_requests=n, seed=seed, jobs=jobs)
    write_results(out / "edge.json", edge)
    plot_sweep(edge, out / "edge.png")
    print(f"\n## The edge workload on the same latency model ({time.perf_counter() - t0:.0f} s)\n")
    print(attainment_table(edge, POLICIES, EDGE_RATES))
    print("\nUtility attainment:\n")
    print(attainment_table(edge, POLICIES, EDGE_RATES, "utility_attainment"))
    if not args.skip_ablation:
        print("\n## Ablation on edge\n")
        print("| variant | " + " | ".join(f"{r:g} rps" for r in EDGE_ABLATION_RATES) + " |")
        print("|" + "---|" * (len(EDGE_ABLATION_RATES) + 1))
        edge_abl = []
        for name in EDGE_ABLATIONS:
            res = sweep("edge", ["slice"], EDGE_ABLATION_RATES, num_requests=n, seed=seed,
                        jobs=jobs, policy_options={"slice": ABLATIONS[name]})
            edge_abl += res
            print(f"| {name} | " + " | ".join(pct(r["summary"]["slo_attainment"]) for r in res)
                  + " |")
        write_results(out / "edge_ablation.json", edge_abl)
    best = max(find(runs, p, heavy)["summary"]["slo_attainment"] for p in BASELINES)
    print(f"\nbest baseline attainment at {heavy:g} rps: {pct(best)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
