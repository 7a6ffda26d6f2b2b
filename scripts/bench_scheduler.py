#!/usr/bin/env python
"""Benchmark of the scheduler and the simulator, per registered policy (not a test).

Measures, on one core:
  (a) simulator speed: simulated iterations per second of wall time for N requests (10,000
      by default) on the `paper` latency model, Poisson arrivals at a rate where the reference
      policy's (Orca, FCFS) mean batch is about `--target-batch` rows (found by bisection on
      the same workload, or given with --rate). With the paper table, throughput hardly grows
      with the batch, so batches of 7-8 mean the device is near or past saturation; the
      T/arr column (virtual run time / arrival span) says by how much. Paper-like classes:
      prompts 32-128 tokens, outputs 16-64 or 128-384, rt (ttft 200 ms, tpot 50 ms, utility
      100) and nrt (ttft 2000 ms, tpot 100 or 250 ms, utility 1). Also the mean batch size
      each policy ran.
  (b) the wall time of one sweep point: `sliceserve.sim.run.simulate_run` on the `paper`
      workload preset with N requests (traffic generation, simulation and metrics).
  (c) scheduler cost with 256 candidate requests (waiting + running): one `schedule(view)`
      call, and one re-plan for policies that keep a plan (`Policy.replan(view)`, e.g. SLICE).

Every time is the median of `--repeats` measurements with time.perf_counter.

    .venv/bin/python scripts/bench_scheduler.py [--quick] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sliceserve.sim.simulator as simulator_module  # noqa: E402
from sliceserve.clock import VirtualClock  # noqa: E402
from sliceserve.config import SchedulerConfig  # noqa: E402
from sliceserve.core.plan import ExecuteResult, Plan  # noqa: E402
from sliceserve.core.scheduler import Scheduler  # noqa: E402
from sliceserve.engine.engine import Engine  # noqa: E402
from sliceserve.latency_model import LatencyModel  # noqa: E402
from sliceserve.policies.registry import make_policy, policy_names  # noqa: E402
from sliceserve.request import SLO, Request, SamplingParams  # noqa: E402
from sliceserve.sim.run import scheduler_config_for  # noqa: E402
from sliceserve.sim.sim_executor import SimExecutor  # noqa: E402

REFERENCE_POLICY = "orca"
NUM_CANDIDATES = 256
KNOWN_POLICIES = ("slice", "slice-paper", "orca", "vllm", "vllm-priority", "fastserve", "edf")

# (share, output range, ttft_ms, tpot_ms choices, utility): the paper preset's four queues.
CLASSES = [
    ("rt-short", (16, 64), 200.0, (50.0,), 100.0),
    ("rt-long", (128, 384), 200.0, (50.0,), 100.0),
    ("nrt-short", (16, 64), 2000.0, (100.0,), 1.0),
    ("nrt-long", (128, 384), 2000.0, (250.0,), 1.0),
]


# --- workload ---

def make_requests(num: int, rate_rps: float, seed: int, start_s: float = 0.0) -> list[Request]:
    rng = random.Random(seed)
    t = start_s
    requests = []
    for i in range(num):
        t += rng.expovariate(rate_rps)
        name, (lo, hi), ttft, tpots, utility = rng.choice(CLASSES)
        slo = SLO(ttft_ms=ttft, tpot_ms=rng.choice(tpots), utility=utility, slo_class=name)
        requests.append(Request(f"r{i}", t, rng.randint(32, 128),
                                SamplingParams(max_tokens=rng.randint(lo, hi), ignore_eos=True),
                                slo))
    return requests


# --- (a) simulator speed ---

class CountingExecutor(SimExecutor):
    """Counts the rows of every executed plan (for the mean batch size)."""

    rows = 0
    plans = 0

    def execute(self, plan: Plan) -> ExecuteResult:
        CountingExecutor.rows += len(plan.chunks)
        CountingExecutor.plans += 1
        return super().execute(plan)


def simulate_counting(policy_name: str, requests: list[Request], model: LatencyModel,
                      config: SchedulerConfig) -> dict[str, Any]:
    policy = make_policy(policy_name, model, config)
    CountingExecutor.rows = CountingExecutor.plans = 0
    saved = simulator_module.SimExecutor
    simulator_module.SimExecutor = CountingExecutor  # type: ignore[misc]
    try:
        t0 = time.perf_counter()
        result = simulator_module.simulate(requests, policy, model, config)
        wall_s = time.perf_counter() - t0
    finally:
        simulator_module.SimExecutor = saved  # type: ignore[misc]
    completed = sum(r.status.value == "completed" for r in result.requests)
    last_arrival_s = max((r.arrival_s for r in result.requests), default=0.0)
    return {
        "wall_s": wall_s,
        "iterations": result.num_iterations,
        "iterations_per_s": result.num_iterations / wall_s if wall_s > 0 else float("inf"),
        "mean_batch": CountingExecutor.rows / max(1, CountingExecutor.plans),
        "completed": completed,
        "requests": len(result.requests),
        "virtual_s": result.duration_s,
        # > 1: the queue outgrew the arrivals (overload); the run drained it after them.
        "virtual_over_arrival_span": result.duration_s / last_arrival_s if last_arrival_s else None,
    }


def calibrate_rate(model: LatencyModel, config: SchedulerConfig, target_batch: float,
                   num: int, seed: int, log: Callable[[str], None],
                   policy_name: str = REFERENCE_POLICY, hi: float = 5.0) -> float:
    """Bisect the arrival rate at which `policy_name`'s mean batch is `target_batch`."""
    lo = 0.01
    for _ in range(14):
        mid = (lo * hi) ** 0.5
        batch = simulate_counting(policy_name, make_requests(num, mid, seed), model,
                                  config)["mean_batch"]
        log(f"  calibrate {policy_name}: rate {mid:.4f} req/s -> mean batch {batch:.2f}")
        if batch < target_batch:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.01:
            break
    return round((lo * hi) ** 0.5, 4)


def bench_simulator(policy_name: str, num: int, rate: float, seed: int, repeats: int,
                    model: LatencyModel, config: SchedulerConfig) -> dict[str, Any]:
    runs = [simulate_counting(policy_name, make_requests(num, rate, seed), model, config)
            for _ in range(repeats)]
    wall = statistics.median(r["wall_s"] for r in runs)
    first = runs[0]
    return {**first, "wall_s": wall, "iterations_per_s": first["iterations"] / wall,
            "wall_s_all": [r["wall_s"] for r in runs]}


# --- (b) one sweep point ---

def bench_sweep_point(policy_name: str, num: int, rate: float, seed: int,
                      repeats: int) -> dict[str, Any] | None:
    try:
        from sliceserve.sim.run import simulate_run
    except ImportError:
        return None
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        simulate_run("paper", policy_name, rate, num_requests=num, seed=seed,
                     latency_model="paper")
        walls.append(time.perf_counter() - t0)
    return {"wall_s": statistics.median(walls), "wall_s_all": walls}


# --- (c) scheduler cost with 256 candidates ---

def filled_scheduler(policy_name: str, model: LatencyModel, config: SchedulerConfig,
                     seed: int, warmup_steps: int) -> tuple[Scheduler, Any]:
    """A scheduler holding NUM_CANDIDATES unfinished requests.

    With `warmup_steps` > 0 the policy itself first runs that many iterations (so that some
    requests run, some have missed their TTFT, and the policy's own state is consistent); then
    new arrivals top the count up. With 0, all of them have just arrived: every one is still a
    feasible candidate, the worst case for a selection."""
    policy = make_policy(policy_name, model, config)
    clock = VirtualClock()
    engine = Engine(Scheduler(config, policy), SimExecutor(model), clock)
    requests = make_requests(NUM_CANDIDATES, 1000.0, seed)  # all within ~0.3 s
    for r in requests:
        r.arrival_s = 0.0
        engine.add_request(r)
    for _ in range(warmup_steps):
        engine.step()
    extra = make_requests(NUM_CANDIDATES, 1000.0, seed + 1)
    i = 0
    while engine.scheduler.num_unfinished() < NUM_CANDIDATES:
        r = extra[i]
        r.request_id = f"x{i}"
        r.arrival_s = clock.now()
        engine.add_request(r)
        i += 1
    engine.scheduler.view.now_s = clock.now()
    return engine.scheduler, policy


def time_calls(fn: Callable[[], object], repeats: int, min_time_s: float = 0.2) -> float:
    """Median seconds per call over `repeats` batches of calls."""
    fn()  # warm up (and a first re-plan where one is pending)
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - t0 >= min_time_s / 4 or calls >= 1 << 16:
            break
        calls *= 2
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - t0) / calls)
    return statistics.median(per_call)


def bench_schedule_cost(policy_name: str, model: LatencyModel, config: SchedulerConfig,
                        seed: int, repeats: int) -> dict[str, Any]:
    scheduler, policy = filled_scheduler(policy_name, model, config, seed, warmup_steps=50)
    view = scheduler.view
    out: dict[str, Any] = {"waiting": len(scheduler.waiting), "running": len(scheduler.running)}
    out["schedule_s"] = time_calls(lambda: policy.schedule(view), repeats)
    keeps_plan = policy.replan(view)  # False: the policy keeps no plan across iterations
    out["replan_s"] = time_calls(lambda: policy.replan(view), repeats) if keeps_plan else None
    # All NUM_CANDIDATES just arrived (t = 0): every one is a feasible candidate.
    scheduler, fresh = filled_scheduler(policy_name, model, config, seed, warmup_steps=0)
    out["replan_fresh_s"] = (time_calls(lambda: fresh.replan(scheduler.view), repeats)
                             if keeps_plan else None)
    return out


# --- report ---

def fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * scale:,.{digits}f}"


def print_table(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    print()
    print(f"{meta['requests']} requests, rate {meta['rate_rps']} req/s (Poisson), latency model "
          f"{meta['latency_model']}, {NUM_CANDIDATES} candidates for the scheduler cost; "
          f"median of {meta['repeats']}. T/arr: virtual run time / arrival span (> 1: "
          "overload); schedule / re-plan: one call with 256 unfinished requests after 50 "
          "iterations; re-plan 256 new: all 256 just arrived; n/a: no separate re-plan")
    header = ("policy", "sim it/s", "iters", "mean batch", "T/arr", "done %", "sim wall s",
              "sweep pt s", "schedule us", "re-plan us", "re-plan 256 new us")
    rows = []
    for name, r in results.items():
        sim, sweep, cost = r.get("simulator"), r.get("sweep_point"), r.get("schedule_cost")
        rows.append((
            name,
            fmt(sim and sim["iterations_per_s"], digits=0),
            fmt(sim and sim["iterations"], digits=0),
            fmt(sim and sim["mean_batch"], digits=2),
            fmt(sim and sim["virtual_over_arrival_span"], digits=2),
            fmt(sim and 100.0 * sim["completed"] / max(1, sim["requests"]), digits=1),
            fmt(sim and sim["wall_s"], digits=2),
            fmt(sweep and sweep["wall_s"], digits=2),
            fmt(cost and cost["schedule_s"], 1e6),
            fmt(cost and cost["replan_s"], 1e6),
            fmt(cost and cost.get("replan_fresh_s"), 1e6),
        ) if not r.get("error") else (name, *(["n/a"] * (len(header) - 1))))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                    for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    for row in rows:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    for name, r in results.items():
        if r.get("error"):
            print(f"  {name}: {r['error']}")


def pin_to_one_core() -> int | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1,000 requests, shorter calibration (a smoke run)")
    p.add_argument("--requests", type=int, default=None, help="requests per run (10000)")
    p.add_argument("--rate", type=float, default=None,
                   help="arrival rate in req/s (default: calibrated to --target-batch)")
    p.add_argument("--target-batch", type=float, default=7.0,
                   help=f"mean batch of {REFERENCE_POLICY} at the calibrated rate (its "
                        "max_batch_size is 8)")
    p.add_argument("--policies", nargs="*", default=None,
                   help="policies (default: every registered one, and n/a for missing ones)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", nargs="*", default=[], choices=["simulator", "sweep", "schedule"])
    p.add_argument("--own-batch", type=float, default=None, metavar="B",
                   help="also measure each policy's simulator speed at the rate where its "
                        "own mean batch is B (SLICE paces requests, so at the reference rate "
                        "its batches are small)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    num = args.requests or (1000 if args.quick else 10_000)
    cpu = pin_to_one_core()
    model = LatencyModel.load("paper")
    config = scheduler_config_for(model)
    registered = policy_names()
    wanted = args.policies or list(dict.fromkeys([*registered, *KNOWN_POLICIES]))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rate = args.rate
    if rate is None:
        log(f"calibrating the rate for a mean {REFERENCE_POLICY} batch of {args.target_batch}")
        rate = calibrate_rate(model, config, args.target_batch, num,
                              args.seed, log)
    log(f"rate {rate} req/s")

    results: dict[str, dict[str, Any]] = {}
    for name in wanted:
        if name not in registered:
            results[name] = {"error": "not registered"}
            continue
        r: dict[str, Any] = {}
        try:
            if "simulator" not in args.skip:
                log(f"{name}: simulator, {num} requests")
                r["simulator"] = bench_simulator(name, num, rate, args.seed, args.repeats,
                                                 model, config)
            if "sweep" not in args.skip:
                log(f"{name}: sweep point")
                r["sweep_point"] = bench_sweep_point(name, num, rate, args.seed, args.repeats)
            if "schedule" not in args.skip:
                log(f"{name}: scheduler cost")
                r["schedule_cost"] = bench_schedule_cost(name, model, config, args.seed,
                                                         max(args.repeats, 5))
        except Exception as e:  # a broken policy is reported, not fatal to the benchmark
            r = {"error": f"{type(e).__name__}: {e}"}
        results[name] = r

    if args.own_batch:
        print(f"\nsimulator speed at each policy's own mean batch of {args.own_batch} "
              f"({num} requests, median of {args.repeats}):")
        for name in wanted:
            if name not in registered:
                continue
            own = calibrate_rate(model, config, args.own_batch, min(num, 2000), args.seed,
                                 log, policy_name=name, hi=50.0)
            sim = bench_simulator(name, num, own, args.seed, args.repeats, model, config)
            results[name]["own_batch"] = {"rate_rps": own, **sim}
            print(f"  {name:14s} rate {own:8.4f} req/s  mean batch {sim['mean_batch']:5.2f}  "
                  f"{sim['iterations_per_s']:9,.0f} it/s  ({sim['iterations']:,} iterations, "
                  f"{sim['wall_s']:.2f} s)")

    meta = {"requests": num, "rate_rps": rate, "target_batch": args.target_batch,
            "latency_model": model.name, "repeats": args.repeats, "seed": args.seed,
            "cpu_pinned": cpu, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print_table(results, meta)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
