#!/usr/bin/env python
"""sliceserve's offline `LLM.generate` throughput, the same harness as the peers.

    .venv/bin/python scripts/peers/sliceserve_offline.py SPEC.json [--out RESULT.json]

SPEC.json: the format of scripts/peers/_common.py; its "options" go to `LLM(...)` (e.g.
{"policy": "vllm"}). dtype, thread count, max_model_len and the KV cache budget (kv_cache_gb,
the same as vLLM's VLLM_CPU_KVCACHE_SPACE) go to `LLM` when its signature takes them; torch's
thread count is set here as well, before the model loads.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _common import load_spec, run_cases, write_result  # noqa: E402


def llm_kwargs(llm_cls: type, spec: dict[str, Any], threads: int) -> dict[str, Any]:
    """The spec's settings under the names `LLM` takes (it may not take all of them)."""
    params = inspect.signature(llm_cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    wanted = {"dtype": spec.get("dtype", "auto"), "num_threads": threads,
              "max_model_len": spec.get("max_model_len"),
              "kv_cache_memory_gb": spec.get("kv_cache_gb")}
    kwargs = {k: v for k, v in wanted.items() if (takes_any or k in params) and v is not None}
    kwargs.update(spec.get("options") or {})
    return kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--out")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    threads = int(spec.get("threads", 2))

    import torch

    torch.set_num_threads(threads)
    from sliceserve import LLM, SamplingParams

    kwargs = llm_kwargs(LLM, spec, threads)
    start = time.perf_counter()
    llm = LLM(model=spec["model"], **kwargs)
    load_s = time.perf_counter() - start

    def generate(prompts: list[str], max_tokens: int) -> tuple[int, int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        outputs = llm.generate(prompts, params)
        generated = sum(len(o.token_ids) for o in outputs)
        prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
        return generated, prompt_tokens

    cases = run_cases(spec, generate)
    commit = os.popen(f"git -C {ROOT} describe --always --dirty 2>/dev/null").read().strip()
    result = {
        "system": "sliceserve", "load_s": round(load_s, 3), "cases": cases,
        "versions": {"sliceserve_commit": commit, "torch": torch.__version__},
        "config": {**{k: v for k, v in kwargs.items()}, "threads": torch.get_num_threads()},
    }
    try:  # what it computed in and on (checkouts from before the machine block lack it)
        from sliceserve.model.precision import machine_block

        result["machine"] = machine_block(llm.live.runner)
    except ImportError:
        result["machine"] = {"dtype": str(llm.live.runner.dtype).replace("torch.", "")}
    write_result(result, args.out)


if __name__ == "__main__":
    main()
