"""The online latency model under a live slowdown: SLICE with the model corrected online
(the default) and with it frozen at the profile, on the same arrivals, while a CPU hog
started part-way through the run takes cores from the engine (issue 11, item 4).

    .venv/bin/python scripts/slowdown_experiment.py --seeds 0,1,2 --out docs/bench/slowdown/X
    .venv/bin/python scripts/slowdown_experiment.py --report --out docs/bench/slowdown/X

Steps, through the `sliceserve` command line a user would run:
 1. `sliceserve profile --out OUT/device.json` once (the quiet device's latency model: what
    both conditions start planning with, and what sets the load);
 2. per seed and condition: `sliceserve run -w edge -p slice --load L -l OUT/device.json`
    (with `--frozen-latency` for the frozen condition). When the run has written its trace
    (just before its first arrival), the script waits until the arrival of request
    `--hog-at` x n and starts `--hogs` busy-loop processes at the engine's own priority, each
    busy `--hog-duty` of every 20 ms; they are stopped when the run ends. Condition `quiet`
    (the online model, no hog) is the reference;
 3. a table per seed and condition and the medians: overall, control's and utility
    attainment, and the same for the requests that arrived after the hog started; the final
    online correction factors. Written to OUT/REPORT.md and OUT/summary.json.
The hog's start is measured from the trace's writing, so it is early by the run's warm-up
(a few iterations, well under a second); the split counts requests by their arrival time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sliceserve.bench.machine import cpu_info  # noqa: E402

CONDITIONS = ("online", "frozen", "quiet")
# A busy loop that runs `duty` of every 20 ms period and sleeps the rest (duty 1: always busy).
HOG = ("import time\nbusy, idle = 0.02 * {duty}, 0.02 * (1 - {duty})\nwhile True:\n"
       "    end = time.perf_counter() + busy\n    while time.perf_counter() < end:\n        pass\n"
       "    if idle > 0:\n        time.sleep(idle)\n")


def sliceserve_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "sliceserve.cli", *map(str, args)]


def run_one(out: Path, seed: int, condition: str, args: argparse.Namespace) -> dict[str, Any]:
    stem = out / f"seed{seed}-{condition}"
    trace = stem.with_suffix(".trace.jsonl")
    result = stem.with_suffix(".json")
    for path in (trace, result):
        path.unlink(missing_ok=True)
    command = sliceserve_command(
        "run", "-w", args.workload, "-p", "slice", "--load", args.load, "-n", args.num_requests,
        "-s", seed, "-l", out / "device.json", "--threads", args.threads, "--out", result,
        "--trace-out", trace, "--no-table")
    if condition == "frozen":
        command.append("--frozen-latency")
    print("$ sliceserve " + " ".join(command[3:]), file=sys.stderr, flush=True)
    log = stem.with_suffix(".log").open("w")
    run = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    hogs: list[subprocess.Popen[bytes]] = []
    hog_info: dict[str, Any] = {"hogs": 0}
    try:
        while not trace.exists() and run.poll() is None:
            time.sleep(0.05)
        if run.poll() is None and condition != "quiet":
            t0 = time.monotonic()
            time.sleep(0.2)  # the trace is written whole: let the writer finish
            arrivals = sorted(json.loads(line)["arrival_s"]
                              for line in trace.read_text().splitlines() if line.strip())
            hog_s = arrivals[min(len(arrivals) - 1, int(args.hog_at * len(arrivals)))]
            time.sleep(max(0.0, hog_s - (time.monotonic() - t0)))
            if run.poll() is None:
                hog = HOG.format(duty=args.hog_duty)
                hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(args.hogs)]
                hog_info = {"hogs": args.hogs, "duty": args.hog_duty,
                            "start_s": round(time.monotonic() - t0, 3),
                            "planned_start_s": hog_s}
        run.wait()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        if run.poll() is None:
            run.kill()
        log.close()
    if run.returncode != 0:
        raise SystemExit(f"the run failed (exit {run.returncode}): see {stem}.log")
    stem.with_suffix(".hog.json").write_text(json.dumps(hog_info, indent=1) + "\n")
    return summarize(json.loads(result.read_text()), hog_info)


def attainment(rows: list[dict[str, Any]]) -> dict[str, Any]:
    control = [r for r in rows if r["class"] == "control"]
    utility = sum(r["target"]["utility"] for r in rows)
    return {"n": len(rows),
            "slo_attainment": sum(r["met"] for r in rows) / len(rows) if rows else None,
            "control": sum(r["met"] for r in control) / len(control) if control else None,
            "utility_attainment": (sum(r["target"]["utility"] for r in rows if r["met"])
                                   / utility if utility else None)}


def summarize(run: dict[str, Any], hog: dict[str, Any]) -> dict[str, Any]:
    rows = run["requests"]
    split = hog.get("planned_start_s")
    after = [r for r in rows if split is not None and r["arrival_s"] >= split]
    correction = run.get("latency_correction") or {}
    return {"all": attainment(rows), "after_hog": attainment(after) if after else None,
            "decode_factor": correction.get("decode_factor"),
            "prompt_factor": correction.get("prompt_factor"), "hog": hog,
            "rate_rps": run["rate_rps"]}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def median_range(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{pct(statistics.median(values))} ({pct(min(values))}-{pct(max(values))})"


def report(out: Path, seeds: list[int], conditions: list[str]) -> str:
    summary = json.loads((out / "summary.json").read_text())
    lines = ["| seed | condition | SLO attainment | control | utility attainment | "
             "after the hog: SLO / control / utility | decode factor at the end |",
             "|---|---|---|---|---|---|---|"]
    for seed in seeds:
        for condition in conditions:
            s = summary.get(f"{seed}:{condition}")
            if s is None:
                continue
            a, h = s["all"], s["after_hog"] or {}
            factor = s["decode_factor"]
            lines.append(
                f"| {seed} | {condition} | {pct(a['slo_attainment'])} | {pct(a['control'])} | "
                f"{pct(a['utility_attainment'])} | {pct(h.get('slo_attainment'))} / "
                f"{pct(h.get('control'))} / {pct(h.get('utility_attainment'))} | "
                f"{'-' if factor is None else f'{factor:.2f}'} |")
    lines += ["", "Medians (min-max) over the seeds:", "",
              "| condition | SLO attainment | control | utility attainment | after the hog: "
              "SLO | control | utility |", "|---|---|---|---|---|---|---|"]
    for condition in conditions:
        runs = [summary[k] for k in (f"{s}:{condition}" for s in seeds) if k in summary]
        if not runs:
            continue
        cells = [median_range([r["all"][m] for r in runs])
                 for m in ("slo_attainment", "control", "utility_attainment")]
        cells += [median_range([(r["after_hog"] or {}).get(m) for r in runs])
                  for m in ("slo_attainment", "control", "utility_attainment")]
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--workload", default="edge")
    parser.add_argument("--load", type=float, default=1.0)
    parser.add_argument("-n", "--num-requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hogs", type=int, default=2, help="busy-loop processes")
    parser.add_argument("--hog-duty", type=float, default=1.0,
                        help="share of each 20 ms period a hog is busy (1: always)")
    parser.add_argument("--hog-at", type=float, default=0.5,
                        help="start the hog at the arrival of this share of the requests")
    parser.add_argument("--report", action="store_true", help="only print the tables again")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    conditions = args.conditions.split(",")
    if not 0 < args.hog_duty <= 1:
        parser.error("--hog-duty must be in (0, 1]")
    if unknown := set(conditions) - set(CONDITIONS):
        parser.error(f"unknown conditions {sorted(unknown)}; choose from {CONDITIONS}")
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    if not args.report:
        if not (args.out / "device.json").exists():
            command = sliceserve_command("profile", "--threads", args.threads, "--no-cache",
                                         "--out", args.out / "device.json")
            print("$ sliceserve " + " ".join(command[3:]), file=sys.stderr, flush=True)
            subprocess.run(command, cwd=REPO, check=True)
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        summary["machine"] = cpu_info()
        summary["command"] = " ".join(sys.argv)
        for seed in seeds:
            for condition in conditions:
                summary[f"{seed}:{condition}"] = run_one(args.out, seed, condition, args)
                summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    text = report(args.out, seeds, conditions)
    (args.out / "REPORT.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
