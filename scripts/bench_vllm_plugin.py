#!/usr/bin/env python
"""The vLLM plug-in's own cost per step, at 256 running requests; run by the vLLM venv's python.

    PYTHONPATH=. $VLLM_PY scripts/bench_vllm_plugin.py MODEL_DIR --out OUT.json

One process with vLLM's engine core in it (VLLM_ENABLE_V1_MULTIPROCESSING=0), bf16, 256
prompts of 24-40 tokens that all arrive at once, 64 new tokens each (greedy, ignore_eos),
`max_num_seqs` 256. Per step: the adapter's own time (the plug-in's work in `schedule()` and
`update_from_output()`, without the policy's decision and without vLLM's base calls, as the
adapter counts it), the policy's decision, and vLLM's own `schedule()` (the base call), for
the steps with 256 requests running. Runs: vLLM's own scheduler (its `schedule()` time, for
scale), then the plug-in with the `vllm` policy (everything runs: no mask) and with SLICE
(lax SLOs, `max_rows` 256: its decode mask leaves rows out every step).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

for key, value in {"VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
                   "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "HF_HUB_OFFLINE": "1",
                   "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}.items():
    os.environ.setdefault(key, value)

NUM_REQUESTS, MAX_TOKENS = 256, 64


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)
    return {"median": round(statistics.median(values), 4),
            "p90": round(values[int(0.9 * (len(values) - 1))], 4),
            "max": round(values[-1], 4), "steps": len(values)}


def instrument(scheduler: Any, plugin: bool) -> list[dict[str, float]]:
    """Per step: running requests, vLLM's schedule() (base) time and, with the plug-in, the
    adapter's and the policy's time since the previous step."""
    steps: list[dict[str, float]] = []
    schedule = scheduler.schedule
    adapter = getattr(scheduler, "sliceserve", None)
    last = [0.0, 0.0]

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = schedule(*args, **kwargs)
        wall_ms = (time.perf_counter() - t0) * 1e3
        row = {"running": len(scheduler.running), "tokens": out.total_num_scheduled_tokens,
               "schedule_ms": wall_ms}
        if adapter is not None:
            a, p = adapter.stats.adapter_s, adapter.stats.policy_s
            row["adapter_ms"] = (a - last[0]) * 1e3  # this schedule() + the last update
            row["policy_ms"] = (p - last[1]) * 1e3
            last[:] = [a, p]
        steps.append(row)
        return out

    scheduler.schedule = timed
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import random

    from vllm import LLM, SamplingParams

    rng = random.Random(0)
    words = ("robot arm sensor path map chat log status update motor camera battery "
             "signal route obstacle grid").split()
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 34)))
               for _ in range(NUM_REQUESTS)]
    lax = {"ttft_ms": 3_600_000, "tpot_ms": 600_000, "utility": 1, "slo_class": "bulk"}
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True,
                            extra_args=lax)
    result: dict[str, Any] = {"requests": NUM_REQUESTS, "max_tokens": MAX_TOKENS}
    runs = [("vllm-own-scheduler", None, None),
            ("plugin-vllm-policy", "vllm", {"max_batch_size": 256}),
            ("plugin-slice", "slice", {"max_rows": 256, "max_extra_rows": 256})]
    llm = None
    for name, policy, options in runs:
        plugin = policy is not None
        if llm is None or not plugin:
            llm = LLM(model=args.model, dtype="bfloat16", max_model_len=512, enforce_eager=True,
                      seed=0, max_num_seqs=NUM_REQUESTS, max_num_batched_tokens=2048,
                      scheduler_cls=("sliceserve.integrations.vllm.SliceScheduler" if plugin
                                     else None))
        scheduler = llm.llm_engine.engine_core.engine_core.scheduler
        if plugin:
            scheduler.sliceserve.select_policy(policy, options)
        llm.generate(prompts[:16], params, use_tqdm=False)  # warm-up
        steps = instrument(scheduler, plugin)
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        wall_s = time.perf_counter() - t0
        scheduler.schedule = type(scheduler).schedule.__get__(scheduler)
        full = [s for s in steps if s["running"] >= NUM_REQUESTS]
        entry: dict[str, Any] = {"wall_s": round(wall_s, 2), "steps": len(steps),
                                 "steps_at_256": len(full),
                                 "schedule_ms": summary([s["schedule_ms"] for s in full])}
        if plugin:
            entry["adapter_ms"] = summary([s["adapter_ms"] for s in full])
            entry["policy_ms"] = summary([s["policy_ms"] for s in full])
            entry["state"] = scheduler.sliceserve.state()
        result[name] = entry
        print(name, json.dumps({k: v for k, v in entry.items() if k != "state"}), flush=True)
        if not plugin:
            del llm, scheduler
            llm = None
            gc.collect()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
