"""Scheduler and Python overhead per iteration on the llama.cpp executor (issue 9's row:
at most 5% at 32 running requests; docs/BENCHMARKS.md).

    .venv/bin/python scripts/overhead_llamacpp.py --threads 2 --policy slice \
        --out docs/bench/llamacpp/overhead_32_slice.json

`--batch` requests (random `--prompt-tokens` prompts, `--tokens` output tokens, greedy, EOS
ignored) go through `LLM.generate` on `backend="llamacpp"` with `--batch` KV streams. Each
iteration of generate's loop is timed from one `engine.step()` start to the next, and split
into: time inside `llama_decode` (the bindings' call, wrapped), the rest of the executor
(batch preparation, logits, sampling), the scheduler (schedule + update: step minus execute)
and the output processing (detokenization: the loop minus the step). Only iterations whose
plan runs exactly `--batch` rows, all decoding, count ("32 running"). Overhead = the share of
their wall time outside `llama_decode`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sliceserve.bench.machine import device_label


class _TimedLib:
    """The bindings with `llama_decode` timed (every other name passes through)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.decode_s = 0.0

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        t0 = time.perf_counter()
        rc = self._lib.llama_decode(ctx, batch)
        self.decode_s += time.perf_counter() - t0
        return rc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--policy", default="slice")
    parser.add_argument("--latency-model", default="paper")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from sliceserve import LLM, SamplingParams

    n = args.batch
    rows = {"slice": "max_rows"}.get(args.policy, "max_batch_size")  # every row runs at once
    llm = LLM(policy=args.policy, policy_options={rows: n}, backend="llamacpp",
              latency_model=args.latency_model, num_threads=args.threads,
              llamacpp={"context_tokens": max(256, args.prompt_tokens + args.tokens),
                        "max_num_seqs": n})
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(1000, 30000, size=args.prompt_tokens)]
               for _ in range(n)]
    llm.generate(prompts[:1], SamplingParams(max_tokens=4, temperature=0.0))  # warm
    engine = llm.engine
    executor = engine.executor
    timed = _TimedLib(executor.lib)
    executor.lib = timed
    records: list[dict[str, float]] = []
    state: dict[str, Any] = {"last_start": None, "open": None}
    inner_execute = executor.execute
    inner_step = engine.step

    def execute(plan: Any) -> Any:
        t0 = time.perf_counter()
        d0 = timed.decode_s
        result = inner_execute(plan)
        rec = state["open"]
        rec["rows"] = len(plan.chunks)
        rec["tokens"] = plan.num_tokens
        rec["execute_s"] = time.perf_counter() - t0
        rec["decode_s"] = timed.decode_s - d0
        return result

    def step() -> Any:
        t0 = time.perf_counter()
        if state["last_start"] is not None and state["open"] is not None:
            state["open"]["loop_s"] = t0 - state["last_start"]
            records.append(state["open"])
        state["last_start"] = t0
        state["open"] = {"rows": 0, "tokens": 0, "execute_s": 0.0, "decode_s": 0.0}
        out = inner_step()
        state["open"]["step_s"] = time.perf_counter() - t0
        return out

    executor.execute = execute
    engine.step = step
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    assert all(len(o.token_ids) == args.tokens for o in outs)
    full = [r for r in records if r["rows"] == n and r["tokens"] == n]
    if not full:
        sys.exit(f"no iteration ran {n} decode rows")
    loop = sum(r["loop_s"] for r in full)
    decode = sum(r["decode_s"] for r in full)
    execute_other = sum(r["execute_s"] - r["decode_s"] for r in full)
    scheduler = sum(r["step_s"] - r["execute_s"] for r in full)
    output = sum(r["loop_s"] - r["step_s"] for r in full)
    per_it = [(r["loop_s"] - r["decode_s"]) * 1000.0 for r in full]
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cpu": device_label(), "threads": args.threads, "policy": args.policy, "batch": n,
        "prompt_tokens": args.prompt_tokens, "tokens": args.tokens,
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_average": os.getloadavg()[0], "generate_s": round(elapsed, 3),
        "iterations_all": len(records), "iterations_full": len(full),
        "full_wall_s": round(loop, 4), "llama_decode_s": round(decode, 4),
        "executor_other_s": round(execute_other, 4), "scheduler_s": round(scheduler, 4),
        "output_processing_s": round(output, 4),
        "overhead_share": round(1.0 - decode / loop, 4),
        "executor_other_share": round(execute_other / loop, 4),
        "scheduler_share": round(scheduler / loop, 4),
        "output_processing_share": round(output / loop, 4),
        "iteration_ms_median": round(statistics.median(r["loop_s"] for r in full) * 1000, 3),
        "overhead_ms_per_iteration_median": round(statistics.median(per_it), 3),
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)



if __name__ == "__main__":
    main()
