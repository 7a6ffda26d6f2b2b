"""Simulator fidelity: one `edge` trace served live and simulated with the profiled model.

    .venv/bin/python scripts/fidelity.py --threads 2                  # slice, 60 requests
    .venv/bin/python scripts/fidelity.py --threads 2 --policy vllm
    .venv/bin/python scripts/fidelity.py --compare-only               # re-analyse a run

Steps, each through the `sliceserve` command line a user would run:
 1. `sliceserve run --profile-out PROFILE --trace-out TRACE`: profile the model in the run's
    own process (the device's latency model, docs/bench/profile_*.json with its points, a
    table and a plot), then serve the workload on the real engine, arrivals in wall time, at
    a rate that keeps the device about half busy. Before it, wait for a quiet machine; after
    it, rerun if other processes took more than 5% of the CPUs meanwhile;
 2. `sliceserve simulate --workload TRACE --latency-model PROFILE`: the same requests;
 3. p50 / p90 of TTFT, TPOT and E2E, live vs simulated, overall and per class: written to
    docs/bench/fidelity_<name>.json and .md. Target: p50 and p90 of TTFT and TPOT within 10%.
Step 1 also writes PROFILE's model rescaled to the run's own measured iterations
(`--calibrated-out`, sliceserve/bench/calibrate.py): steps 2-3 run for it too, which separates
the simulator's own fidelity from the drift of the device's speed between the profile and the
run (5-10% between minutes on this shared machine).
The latency model fitted in step 1 has the prefill attention term
(`prefill_attention_ms_per_pair`), so the live run's policy, the simulated one and the
simulator's executor all plan and charge prompt chunks with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.10
COMPARED = (("ttft_ms", "p50"), ("ttft_ms", "p90"), ("tpot_ms", "p50"), ("tpot_ms", "p90"))
SHOWN = (*COMPARED, ("e2e_ms", "p50"), ("e2e_ms", "p90"))


def sliceserve(*args: object) -> None:
    # Through the module, so that an un-installed checkout works too (PYTHONPATH=.).
    command = [sys.executable, "-m", "sliceserve.cli", *map(str, args)]
    print("$ sliceserve " + " ".join(command[3:]), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def others_cpu_share(command: Callable[[], None]) -> float:
    """Run `command` (a subprocess) and return the share of the machine's CPU time that other
    processes used meanwhile (0: none; 1: every core, all the time)."""
    busy0, total0 = _cpu_jiffies()
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    command()
    busy1, total1 = _cpu_jiffies()
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick = os.sysconf("SC_CLK_TCK")
    own = (own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime) * tick
    return max(0.0, (busy1 - busy0 - own) / max(1, total1 - total0))


def wait_until_quiet(seconds: float, limit_s: float) -> None:
    """Wait until other processes leave the CPUs >= 90% idle for `seconds` in a row."""
    quiet = waited = 0.0
    while quiet < seconds and waited < limit_s:
        busy0, total0 = _cpu_jiffies()
        time.sleep(5)
        busy1, total1 = _cpu_jiffies()
        waited += 5
        quiet = quiet + 5 if busy1 - busy0 <= 0.1 * (total1 - total0) else 0.0


def auto_rate(workload: str, profile: Path, load: float, seed: int) -> float:
    """The arrival rate that keeps the device busy about `load` of the time: mean work per
    request from the latency model (its prefill, then its output tokens at batch 8)."""
    sys.path.insert(0, str(REPO))
    from sliceserve.latency_model import LatencyModel
    from sliceserve.workloads import make_traffic

    model = LatencyModel.load(str(profile))
    traffic = make_traffic(workload, rate_rps=1.0, num_requests=500, seed=seed,
                           latency_model=model)
    per_token_ms = model.iteration_ms(8, 8, 8 * 512) / 8
    work_ms = sum(model.prefill_ms(r.num_prompt_tokens) + r.num_output_tokens * per_token_ms
                  for r in traffic.requests) / len(traffic.requests)
    return round(load * 1000.0 / work_ms, 3)


def write_profile_report(profile: Path) -> None:
    """The profile's tables (.md) and plot (.png) beside it."""
    sys.path.insert(0, str(REPO))
    from sliceserve.bench.profile_report import plot_profile, points_path, profile_markdown
    from sliceserve.latency_model import LatencyModel
    from sliceserve.model.profile_fit import Profile

    points = Profile.from_dict(json.loads(points_path(profile).read_text())["profile"])
    model = LatencyModel.load(str(profile))
    profile.with_suffix(".md").write_text(profile_markdown(points, model))
    plot_profile(points, model, profile.with_suffix(".png"))


def compare(live: dict[str, Any], sim: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of (scope, metric, stat, live, sim, sim/live) for overall and every class."""
    rows = []
    scopes = [("overall", live["summary"], sim["summary"])] + [
        (name, stats, sim["classes"].get(name)) for name, stats in live["classes"].items()]
    for scope, a, b in scopes:
        if b is None:
            continue
        for metric, stat in SHOWN:
            x, y = a[metric][stat], b[metric][stat]
            ratio = y / x if x and y is not None else None
            rows.append({"scope": scope, "metric": metric, "stat": stat, "live": x, "sim": y,
                         "sim_over_live": ratio,
                         "compared": scope == "overall" and (metric, stat) in COMPARED})
    return rows


def markdown(rows: list[dict[str, Any]], live: dict[str, Any], sim: dict[str, Any],
             settings: dict[str, Any]) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [f"# Simulator fidelity: {settings['workload']} under {settings['policy']}, "
             f"{settings['num_requests']} requests at {settings['rate']} rps", "",
             f"Model {live['model']} on {live['device']}; latency model "
             f"`{settings['profile']}` ({live['latency_model']}).", "",
             "| scope | metric | live | simulated | sim / live |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        ratio = "-" if r["sim_over_live"] is None else f"{r['sim_over_live']:.3f}"
        mark = " **" if r["compared"] else ""
        lines.append(f"| {r['scope']} | {r['metric'][:-3].upper()} {r['stat']} (ms){mark} | "
                     f"{num(r['live'])} | {num(r['sim'])} | {ratio} |")
    worst = max(abs(r["sim_over_live"] - 1) for r in rows
                if r["compared"] and r["sim_over_live"] is not None)
    lines += ["", f"** compared against the target: worst |sim/live - 1| = "
              f"{100 * worst:.1f}% (target {100 * TARGET:.0f}%).", "",
              f"Live: {live['duration_s']:.1f} s, {live['summary']['completed']} of "
              f"{live['summary']['n']} completed, SLO attainment "
              f"{100 * live['summary']['slo_attainment']:.1f}%; simulated: "
              f"{sim['duration_s']:.1f} s, {100 * sim['summary']['slo_attainment']:.1f}%. "
              f"Other processes used {100 * settings['live_attempts'][-1]['others_cpu_share']:.1f}%"
              f" of the CPUs during the live run (attempt {len(settings['live_attempts'])})."]
    return "\n".join(lines) + "\n"


def calibrated_path(profile: Path) -> Path:
    """Where the live run writes the profile's latency model rescaled to its iterations."""
    return profile.with_name(profile.stem + ".calibrated.json")


def run_live(args: argparse.Namespace, model_args: list[Any], trace: Path,
             live_path: Path) -> dict[str, Any]:
    """The live run (retried while other processes take the CPUs); its settings."""
    rate = (auto_rate(args.workload, args.profile, args.load, args.seed)
            if args.rate == "auto" else float(args.rate))
    print(f"rate: {rate} requests/s", file=sys.stderr)
    attempts = []
    for attempt in range(1 + args.retries):
        wait_until_quiet(args.quiet_s, limit_s=3600)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        # Profiled in the live run's own process unless told to reuse a profile: processes
        # differ by up to 8% in prefill speed here (memory placement, the host's load).
        command = ["run", "-w", args.workload, "-p", args.policy, "--rate", rate,
                   "-n", args.num_requests, "--seed", args.seed, *model_args,
                   *(["--latency-model", args.profile] if args.reuse_profile
                     else ["--profile-out", args.profile]),
                   "--calibrated-out", calibrated_path(args.profile),
                   "--iterations-out", trace.with_name(trace.name.replace(".trace.jsonl",
                                                                         ".iterations.jsonl")),
                   *(["--frozen-latency"] if args.frozen_latency else []),
                   "--trace-out", trace, "--out", live_path]
        share = others_cpu_share(lambda: sliceserve(*command))  # noqa: B023 (called at once)
        live_wall_s = time.perf_counter() - started
        load_after = os.getloadavg()[0]
        attempts.append({"others_cpu_share": round(share, 3), "wall_s": round(live_wall_s, 1)})
        print(f"live run {attempt + 1}: other processes used {100 * share:.1f}% of the CPUs",
              file=sys.stderr)
        if share <= args.max_others_share:
            break
    profile = (str(args.profile.relative_to(REPO)) if args.profile.is_relative_to(REPO)
               else str(args.profile))
    return {"workload": args.workload, "policy": args.policy, "rate": rate,
            "num_requests": args.num_requests, "seed": args.seed, "model": args.model,
            "dtype": args.dtype, "threads": args.threads, "device": args.device,
            "load": args.load, "profile": profile, "frozen_latency": args.frozen_latency,
            "live_wall_s": round(live_wall_s, 1),
            "load_average_before_after": [round(load_before, 2), round(load_after, 2)],
            "cpu_count": os.cpu_count(), "live_attempts": attempts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--workload", default="edge")
    parser.add_argument("--policy", default="slice")
    parser.add_argument("--rate", default="auto",
                        help="arrival rate (requests/s), or auto: --load of the device's time")
    parser.add_argument("--load", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-requests", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--profile", type=Path, default=REPO / "docs/bench/profile_smollm2.json",
                        help="the latency model file the live run writes (or, with "
                        "--reuse-profile, reads)")
    parser.add_argument("--reuse-profile", action="store_true",
                        help="run with the --profile file instead of profiling in the run")
    parser.add_argument("--frozen-latency", action="store_true",
                        help="the live run plans with the profile as measured, not corrected "
                        "online (as the simulator does, whose executor charges the profile)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs/bench")
    parser.add_argument("--name", default=None, help="default: <workload>_<policy>")
    parser.add_argument("--retries", type=int, default=3,
                        help="rerun the live run when other processes took the CPUs")
    parser.add_argument("--max-others-share", type=float, default=0.05,
                        help="the share of CPU time other processes may use during a live run")
    parser.add_argument("--compare-only", action="store_true",
                        help="reuse the trace and live result of an earlier run: simulate and "
                        "compare again")
    parser.add_argument("--quiet-s", type=float, default=20,
                        help="wait for this long a quiet machine before each live run")
    args = parser.parse_args()
    name = args.name or f"{args.workload}_{args.policy}"
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    model_args = ["--model", args.model, "--dtype", args.dtype, "--threads", args.threads,
                  "--device", args.device]
    if not args.compare_only and not args.profile.exists():  # to choose the rate
        wait_until_quiet(args.quiet_s, limit_s=3600)
        sliceserve("profile", *model_args, "--out", args.profile)
    trace, live_path = out / f"fidelity_{name}.trace.jsonl", out / f"fidelity_{name}.live.json"
    sim_path, result_path = out / f"fidelity_{name}.sim.json", out / f"fidelity_{name}.json"
    if args.compare_only:
        settings = json.loads(result_path.read_text())["settings"]
    else:
        settings = run_live(args, model_args, trace, live_path)
        write_profile_report(args.profile)
    live = json.loads(live_path.read_text())
    result: dict[str, Any] = {"settings": settings}
    texts = []
    # The profile taken before the run, then that model rescaled to the run's own iterations
    # (the device's speed during the run: the simulator's fidelity apart from profile drift).
    calibrated_sim = sim_path.with_suffix(".calibrated.json")
    for key, model_path, path in (("profile", args.profile, sim_path),
                                  ("calibrated", calibrated_path(args.profile), calibrated_sim)):
        if not model_path.exists():
            continue
        sliceserve("simulate", "-w", trace, "-p", args.policy, "--latency-model", model_path,
                   "--out", path)
        sim = json.loads(path.read_text())
        rows = compare(live, sim)
        worst = max(abs(r["sim_over_live"] - 1) for r in rows
                    if r["compared"] and r["sim_over_live"] is not None)
        result[key] = {"latency_model": str(model_path.relative_to(REPO)
                                            if model_path.is_relative_to(REPO) else model_path),
                       "worst_relative_difference": worst, "within_target": worst <= TARGET,
                       "comparison": rows}
        shown = {**settings, "profile": result[key]["latency_model"]}
        texts.append(markdown(rows, live, sim, shown))
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    text = "\n".join(texts)
    (out / f"fidelity_{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
