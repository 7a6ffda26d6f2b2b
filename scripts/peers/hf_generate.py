#!/usr/bin/env python
"""transformers `generate` throughput with a static KV cache (the reference a user gets from HF).

    .venv/bin/python scripts/peers/hf_generate.py SPEC.json [--out RESULT.json]

SPEC.json: the format of scripts/peers/_common.py. The whole case is one batched call: prompts
left-padded, bf16 (or the spec's dtype), `cache_implementation="static"` (HF's DynamicCache
concatenates every step and is not a fair baseline), greedy, no EOS (so every row generates
exactly max_tokens), `torch.set_num_threads(threads)`. Timed from prompt strings to decoded
strings.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_spec, run_cases, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--out")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    threads = int(spec.get("threads", 2))

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    dtype = getattr(torch, spec.get("dtype", "bfloat16"))
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    tokenizer.padding_side = "left"  # decoder-only: new tokens must follow every prompt directly
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype).eval()
    load_s = time.perf_counter() - start

    base = copy.deepcopy(model.generation_config)
    base.do_sample = False
    base.cache_implementation = "static"
    base.eos_token_id = None  # ignore EOS: exactly max_new_tokens per row
    base.pad_token_id = tokenizer.pad_token_id
    for name in ("temperature", "top_p", "top_k"):  # unset sampling knobs: no warnings
        setattr(base, name, None)

    @torch.inference_mode()
    def generate(prompts: list[str], max_tokens: int) -> tuple[int, int]:
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        config = copy.deepcopy(base)
        config.max_new_tokens = max_tokens
        out = model.generate(**batch, generation_config=config)
        new = out[:, batch["input_ids"].shape[1]:]
        tokenizer.batch_decode(new, skip_special_tokens=True)
        return int(new.numel()), int(batch["attention_mask"].sum())

    cases = run_cases(spec, generate)
    write_result({
        "system": "hf", "load_s": round(load_s, 3), "cases": cases,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "config": {"dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                   "cache_implementation": "static", "padding_side": "left"},
    }, args.out)


if __name__ == "__main__":
    main()
