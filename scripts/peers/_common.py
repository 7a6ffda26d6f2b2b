"""The timing harness every throughput worker shares (sliceserve, vLLM, transformers).

A worker is one process that loads one system once and runs every case of a spec file:

    {"model": "/path/to/hf-folder", "dtype": "bfloat16", "threads": 2, "max_model_len": 1024,
     "options": {...system specific...},
     "cases": [{"name": "16x32", "max_tokens": 32, "prompts": [...],
                "warmup_prompts": [...], "warmup_max_tokens": 32}, ...]}

For each case it makes one warm-up call on the warm-up prompts, then times one call on the
measured prompts, or one call per prompt set when the case has "prompt_sets" (a list of
prompt lists: several short timed calls per process make one stall matter less): wall seconds
from prompt strings in to outputs out (tokenization, prefill, decode and detokenization
included). The case's tok_s is the median over its timed calls; every call is kept.
Greedy and ignore-EOS everywhere, so each system generates exactly len(prompts) * max_tokens
tokens; a worker that generates any other number fails rather than report a throughput over
different work.

This file is imported by workers running in other venvs (vLLM's own), so it uses the standard
library only.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# generate(prompts, max_tokens) -> (generated_tokens, prompt_tokens)
GenerateFn = Callable[[list[str], int], tuple[int, int]]


class BenchSpecError(ValueError):
    """The spec file is missing or malformed."""


class TokenCountError(ValueError):
    """A system generated a different number of tokens than asked for."""


def load_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchSpecError(f"cannot read bench spec {path}: {exc}") from exc
    for key in ("model", "cases"):
        if key not in spec:
            raise BenchSpecError(f"bench spec {path} has no '{key}'")
    for case in spec["cases"]:
        if "prompt_sets" in case and not case.get("prompts"):
            case["prompts"] = case["prompt_sets"][0] if case["prompt_sets"] else []
        if not case.get("prompts") or int(case.get("max_tokens", 0)) < 1:
            raise BenchSpecError(f"bench spec {path}: case {case.get('name')} needs prompts and "
                                 "max_tokens >= 1")
    return spec


def run_cases(spec: dict[str, Any], generate: GenerateFn) -> list[dict[str, Any]]:
    """Warm up and time `generate` on every case of the spec."""
    results = []
    for case in spec["cases"]:
        max_tokens = int(case["max_tokens"])
        prompt_sets = [list(p) for p in case.get("prompt_sets") or [case["prompts"]]]
        warmup = list(case.get("warmup_prompts") or prompt_sets[0])
        warmup_tokens = int(case.get("warmup_max_tokens", max_tokens))
        start = time.perf_counter()
        generate(warmup, warmup_tokens)
        warmup_s = time.perf_counter() - start

        calls = []
        for prompts in prompt_sets:
            start = time.perf_counter()
            generated, prompt_tokens = generate(prompts, max_tokens)
            wall_s = time.perf_counter() - start
            expected = len(prompts) * max_tokens
            if generated != expected:
                raise TokenCountError(f"case {case['name']}: generated {generated} tokens, "
                                      f"expected {expected} ({len(prompts)} prompts x "
                                      f"{max_tokens})")
            calls.append({"wall_s": round(wall_s, 4), "tok_s": round(generated / wall_s, 2),
                          "prompt_tokens": prompt_tokens, "generated_tokens": generated})
            print(f"  {case['name']}: {generated} tokens in {wall_s:.2f} s = "
                  f"{generated / wall_s:.1f} tok/s", file=sys.stderr, flush=True)
        results.append({
            "name": case["name"], "num_prompts": len(prompt_sets[0]), "max_tokens": max_tokens,
            "tok_s": round(statistics.median(c["tok_s"] for c in calls), 2),
            "calls": calls, "warmup_s": round(warmup_s, 4),
        })
    return results


def write_result(result: dict[str, Any], out: str | None) -> None:
    """Write the result where asked and print it as the last line of stdout."""
    text = json.dumps(result)
    if out:
        Path(out).write_text(text + "\n")
    print(text, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start
