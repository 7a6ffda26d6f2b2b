#!/usr/bin/env python
"""The side-by-side comparison: sliceserve's policies against vLLM's CPU build, llama.cpp's
llama-server and llama-cpp-python's server, same model, same machine, same seeded arrivals.

    .venv/bin/python scripts/compare.py --out docs/bench/compare           # all phases
    # on a shared machine, in exclusive chunks of at most ~14 minutes until it is done:
    until /work/tools/cpu-exclusive .venv/bin/python scripts/compare.py --budget-s 720; \
        do [ $? -eq 3 ] || break; done

Resumable: every run is one result file under OUT/runs/<system>/<scale>/; a point whose file
exists is skipped, so a stopped or budgeted invocation picks up where the last one ended.
`--budget-s` stops before starting a point that might not end within the budget (exit 3:
"more to do"; 0: everything done). Phases, in order:
1. the device profile (sliceserve's, OUT/device_profile.json): absolute SLOs and the rates;
2. llama-server's -np: 4, 8 and 16 (--tune-np) at loads 1 and 1.5 (--tune-loads; one seed),
   the best kept;
3. for each system (one server at a time on 127.0.0.1): start, warm up, measure its batch-1
   speed (for --slo-scale relative), run every (load, seed) point of each scale, stop;
4. capacity at the SLO by bisection (sliceserve/bench/capacity.py) per system, absolute scale;
5. `--report`: tables, plots and docs/BENCHMARKS.md's section text (scripts/compare_report.py).
Loads are multiples of the device's capacity estimate (sliceserve/workloads/load.py), so the
same arrivals reach every system.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compare_systems as cs  # noqa: E402

from sliceserve.bench.capacity import bisect_capacity, bracket_from_points  # noqa: E402
from sliceserve.bench.http_bench import Target, bench_traffic, server_info, server_summary  # noqa: E402
from sliceserve.bench.machine import cpu_info, device_label  # noqa: E402
from sliceserve.bench.prompts import PromptMaker, load_tokenizer_file  # noqa: E402
from sliceserve.bench.speed import measure_speed  # noqa: E402
from sliceserve.bench.systems import client_options  # noqa: E402
from sliceserve.latency_model import LatencyModel  # noqa: E402
from sliceserve.metrics.results import dumps, load_results  # noqa: E402
from sliceserve.workloads import load_workload, make_traffic  # noqa: E402
from sliceserve.workloads.load import estimate_capacity  # noqa: E402

EXIT_MORE = 3
DEFAULT_LOADS = (0.25, 0.5, 1.0, 1.5, 2.0)
DEFAULT_SYSTEMS = ("sliceserve-torch-slice", "sliceserve-torch-vllm", "vllm-fcfs",
                   "vllm-priority", "llama-server-tuned", "llama-cpp-python")
TUNED = "llama-server-tuned"  # the -np of llama-server that did best at loads 1 and 1.5
TUNE_NP = (4, 8, 16)
TUNE_LOADS = (1.0, 1.5)
WARMUP_REQUESTS = 6


def all_systems(out: Path) -> dict[str, cs.System]:
    profile = out / "device_profile.json"
    # Only the torch executor: `serve --backend` (the llama.cpp executor) is not on main yet.
    systems = [cs.sliceserve_system(p, "torch", profile)
               for p in ("slice", "slice-paper", "vllm", "vllm-priority", "edf", "orca",
                         "fastserve")]
    systems += [cs.vllm_system("fcfs"), cs.vllm_system("priority")]
    systems += [cs.llama_server_system(n) for n in (1, 2, 4, 8, 16, 32)]
    systems.append(cs.llama_cpp_python_system())
    return {s.name: s for s in systems}


class Budget:
    def __init__(self, seconds: float | None) -> None:
        self.start, self.seconds = time.monotonic(), seconds

    def allows(self, estimate_s: float) -> bool:
        return self.seconds is None or time.monotonic() - self.start + estimate_s <= self.seconds


MAX_DRAIN_S = 240.0  # a point ends at most this long after its last arrival


def max_run_s(num_requests: int, rate_rps: float) -> float:
    """A point's hard time limit: its arrivals (with slack for a slow Poisson draw) plus
    MAX_DRAIN_S; requests unfinished then count as aborted (time_limit), so that a system far
    slower than the device's estimate cannot hold a chunk of the machine's time forever."""
    return 1.5 * num_requests / rate_rps + MAX_DRAIN_S


def estimate_point_s(num_requests: int, rate_rps: float, load: float) -> float:
    """What a point is expected to take, for --budget-s: its arrivals with 10% slack, the
    backlog an overload leaves (twice the device estimate's, for slower systems) and 30 s
    of warm-up and writing. A point that runs longer is still cut at max_run_s."""
    arrivals_s = num_requests / rate_rps
    return 1.1 * arrivals_s + 2.0 * max(0.0, load - 1.0) * arrivals_s + 30.0


def device_profile(out: Path) -> LatencyModel:
    path = out / "device_profile.json"
    if not path.exists():
        import subprocess

        subprocess.run([str(cs.ROOT / ".venv/bin/sliceserve"), "profile", "--threads",
                        str(cs.THREADS), "--out", str(path), "--no-cache"], check=True)
    return LatencyModel.load(str(path))


def point_path(out: Path, system: str, scale: str, load: float, seed: int) -> Path:
    return out / "runs" / system / scale / f"load{load:g}_seed{seed}.json"


def run_point(target: Target, system: cs.System, spec: Any, device: LatencyModel,
              slo_model: LatencyModel, maker: PromptMaker, scale: str, load: float, seed: int,
              num_requests: int) -> dict[str, Any]:
    estimate = estimate_capacity(spec, device)
    traffic = make_traffic(spec, rate_rps=estimate.rate_for(load), num_requests=num_requests,
                           seed=seed, latency_model=slo_model)
    salt = secrets.randbelow(2**31)
    target = replace(target, max_run_s=max_run_s(num_requests, estimate.rate_for(load)))
    prompts = [maker.text(r.num_prompt_tokens, seed, salt, i)
               for i, r in enumerate(traffic.requests)]
    run = bench_traffic(traffic, target, prompts, slo_scale=scale,
                        latency_model_name=slo_model.name, device=device_label(),
                        policy=system.policy,
                        extra_client={"prompt_salt": salt, "settings": system.describe()})
    run.update(label=system.label, load=load, capacity_estimate=estimate.to_dict())
    return run


def serve_system(system: cs.System, args: argparse.Namespace, device: LatencyModel,
                 maker: PromptMaker, budget: Budget) -> bool:
    """Every missing point of one system; False when the budget stopped it."""
    spec = load_workload(args.workload)
    rate_1 = estimate_capacity(spec, device).rate_rps
    todo = [(scale, load, seed) for scale in args.scales for load in args.loads
            for seed in args.seeds
            if not point_path(args.out, system.name, scale, load, seed).exists()]
    if not todo:
        return True
    if not budget.allows(60 + estimate_point_s(args.num_requests, rate_1 * todo[0][1],
                                               todo[0][1])):
        return False
    cs.run_setup(system)
    server = cs.Running(system, args.out / "logs" / f"{system.name}.log")
    try:
        ready_s = server.wait_ready()
        info = server_info(server.base_url)
        model = info["/v1/models"]["data"][0]["id"]
        options = client_options(system.client, eos_ids=list(maker.special_ids))
        target = Target(server.base_url, model, options, timeout_s=args.timeout_s)
        print(f"{system.name}: ready in {ready_s:.1f} s", file=sys.stderr)
        slo_models = {"absolute": device}
        if "relative" in args.scales:
            slo_models["relative"] = system_speed(args.out, system, target, maker)
        else:  # warm up all the same
            measure_speed(target, maker, repeats=1, max_prompt_tokens=64)
        for scale, load, seed in todo:
            if not budget.allows(estimate_point_s(args.num_requests, rate_1 * load, load)):
                return False
            print(f"{system.name} {scale} load {load:g} seed {seed} ...", file=sys.stderr)
            run = run_point(target, system, spec, device, slo_models[scale], maker, scale,
                            load, seed, args.num_requests)
            run["client"]["server"] = server_summary(info)
            path = point_path(args.out, system.name, scale, load, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps(run))
            s = run["summary"]
            print(f"  attainment {s['slo_attainment']:.1%}, {s['completed']}/{s['n']} "
                  f"completed, failures {s['failures']}", file=sys.stderr)
    finally:
        server.stop()
    return True


def system_speed(out: Path, system: cs.System, target: Target, maker: PromptMaker
                 ) -> LatencyModel:
    path = out / "speed" / f"{system.name}.json"
    if path.exists():
        data = json.loads(path.read_text())
        measure_speed(target, maker, repeats=1, max_prompt_tokens=64)  # warm-up
        return LatencyModel.from_dict(data["latency_model"])
    model, raw = measure_speed(target, maker, device=device_label())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"latency_model": model.to_dict(), "raw": raw}, indent=1))
    return model


def tuned_llama_server(args: argparse.Namespace, device: LatencyModel, maker: PromptMaker,
                       systems: dict[str, cs.System], budget: Budget) -> str | None:
    """The llama-server system with the best -np (mean attainment at --tune-loads, seed 0,
    absolute SLOs; those points are the sweep's own); None when the budget stopped it."""
    path = args.out / "llama_np.json"
    if path.exists():
        return str(json.loads(path.read_text())["system"])
    tune = argparse.Namespace(**{**vars(args), "loads": list(args.tune_loads),
                                 "seeds": [args.seeds[0]], "scales": ["absolute"]})
    scores = {}
    for n in args.tune_np:
        name = f"llama-server-np{n}"
        if not serve_system(systems[name], tune, device, maker, budget):
            return None
        values = [load_results(point_path(args.out, name, "absolute", x, args.seeds[0]))[0]
                  ["summary"]["slo_attainment"] for x in args.tune_loads]
        scores[name] = sum(values) / len(values)
    best = max(scores, key=lambda k: scores[k])
    path.write_text(json.dumps({"system": best, "mean_attainment": scores,
                                "loads": list(args.tune_loads), "seed": args.seeds[0]},
                               indent=1))
    return best


def capacities(args: argparse.Namespace, device: LatencyModel, maker: PromptMaker,
               systems: dict[str, cs.System], budget: Budget) -> bool:
    """Bisect each system's capacity between its sweep points (absolute scale)."""
    spec = load_workload(args.workload)
    rate_1 = estimate_capacity(spec, device).rate_rps
    for name in args.systems:
        path = args.out / "capacity" / f"{name}.json"
        if path.exists():
            continue
        points = []
        for load in args.loads:
            files = [point_path(args.out, name, "absolute", load, s) for s in args.seeds]
            values = [load_results(f)[0]["summary"]["slo_attainment"] for f in files
                      if f.exists()]
            if len(values) == len(args.seeds):
                points.append((load * rate_1, sorted(values)[len(values) // 2]))
        bracket = bracket_from_points(points)
        if bracket is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"system": name, "points": points, "bracket": None,
                                        "capacity_rps": None}, indent=1))
            continue
        if not budget.allows(args.capacity_steps * len(args.seeds) * 120):
            return False
        result = bisect_in_server(systems[name], args, device, maker, spec, bracket, rate_1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"system": name, "label": systems[name].label,
                                    "points": points, "capacity_rps": result.capacity_rps,
                                    "bracket": result.bracket, "probes": result.probes,
                                    "seeds": args.seeds}, indent=1))
    return True


def bisect_in_server(system: cs.System, args: argparse.Namespace, device: LatencyModel,
                     maker: PromptMaker, spec: Any, bracket: tuple[float, float],
                     rate_1: float) -> Any:
    server = cs.Running(system, args.out / "logs" / f"{system.name}.capacity.log")
    try:
        server.wait_ready()
        info = server_info(server.base_url)
        target = Target(server.base_url, info["/v1/models"]["data"][0]["id"],
                        client_options(system.client, eos_ids=list(maker.special_ids)),
                        timeout_s=args.timeout_s)
        measure_speed(target, maker, repeats=1, max_prompt_tokens=64)  # warm-up

        def measure(rate: float) -> list[float]:
            values = []
            for seed in args.seeds:
                run = run_point(target, system, spec, device, device, maker, "absolute",
                                rate / rate_1, seed, args.num_requests)
                path = args.out / "capacity" / system.name / f"rate{rate:.4g}_seed{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(dumps(run))
                values.append(run["summary"]["slo_attainment"])
            return values

        return bisect_capacity(measure, *bracket, steps=args.capacity_steps)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=cs.ROOT / "docs/bench/compare")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                        help="comma-separated (see all_systems)")
    parser.add_argument("--loads", default=",".join(f"{x:g}" for x in DEFAULT_LOADS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--scales", default="absolute,relative")
    parser.add_argument("-n", "--num-requests", type=int, default=200)
    parser.add_argument("--workload", default="edge")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--tune-np", default=",".join(str(n) for n in TUNE_NP),
                        help="llama-server -np values to try (1, 2, 4, 8, 16 or 32)")
    parser.add_argument("--tune-loads", default=",".join(f"{x:g}" for x in TUNE_LOADS),
                        help="loads the -np tuning scores (seed: the first of --seeds)")
    parser.add_argument("--capacity-steps", type=int, default=3)
    parser.add_argument("--no-capacity", action="store_true")
    parser.add_argument("--budget-s", type=float, default=None)
    parser.add_argument("--report", action="store_true", help="only write tables and plots")
    args = parser.parse_args()
    args.loads = [float(x) for x in args.loads.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.scales = [x for x in args.scales.split(",") if x]
    args.tune_np = [int(x) for x in args.tune_np.split(",")]
    args.tune_loads = [float(x) for x in args.tune_loads.split(",")]
    systems = all_systems(args.out)
    args.systems = [x for x in args.systems.split(",") if x]
    unknown = [x for x in args.systems if x not in systems and x != TUNED]
    unknown += [f"llama-server-np{n}" for n in args.tune_np
                if f"llama-server-np{n}" not in systems]
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {', '.join(systems)}")
    if args.report:
        from compare_report import write_report

        tuned = args.out / "llama_np.json"
        best = json.loads(tuned.read_text())["system"] if tuned.exists() else None
        write_report(args.out, [best if x == TUNED else x for x in args.systems if
                                x != TUNED or best], args.seeds)
        return 0
    budget = Budget(args.budget_s)
    (args.out).mkdir(parents=True, exist_ok=True)
    (args.out / "machine.json").write_text(json.dumps(cpu_info(), indent=1))
    device = device_profile(args.out)
    folder, _ = cs.model_paths()
    maker = PromptMaker(load_tokenizer_file(folder), str(folder))
    if TUNED in args.systems:
        best = tuned_llama_server(args, device, maker, systems, budget)
        if best is None:
            return EXIT_MORE
        args.systems = [best if x == TUNED else x for x in args.systems]
    for name in args.systems:
        if not serve_system(systems[name], args, device, maker, budget):
            return EXIT_MORE
    if not args.no_capacity and not capacities(args, device, maker, systems, budget):
        return EXIT_MORE
    return 0


if __name__ == "__main__":
    sys.exit(main())
