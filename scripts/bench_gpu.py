"""Throughput on a CUDA GPU, sliceserve vs transformers `generate` with a static cache, on a
model of a given shape (random weights: the speed of a model does not depend on its values).

    python scripts/bench_gpu.py --shape-from FOLDER --cases 64x128,256x128

FOLDER holds a config.json and tokenizer files (e.g. the converted SmolLM2 folder without its
weights); random bf16 weights of that shape are written next to them in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def random_model(shape_from: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(tempfile.mkdtemp(prefix="sliceserve-random-"))
    for f in shape_from.iterdir():
        if f.suffix in (".json", ".jinja") and f.name != "model.safetensors.index.json":
            shutil.copy(f, folder / f.name)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(200, vocab) for _ in range(rng.randrange(30, 170))] for _ in range(n)]


def run_ours(folder: Path, cases: list[tuple[int, int]], repeats: int) -> dict[str, float]:
    from sliceserve import LLM, SamplingParams

    llm = LLM(model=folder, policy="vllm", policy_options={"max_batch_size": 256},
              device="cuda", dtype="bfloat16", kv_cache_memory_gb=8.0, latency_model="paper")
    vocab = llm.live.vocab_size
    out = {}
    for n, m in cases:
        sp = SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True)
        llm.generate(prompts(min(n, 8), vocab, 99), SamplingParams(max_tokens=4, temperature=0,
                                                                   ignore_eos=True))
        rates = []
        for r in range(repeats):
            batch = prompts(n, vocab, r)
            t = time.perf_counter()
            outs = llm.generate(batch, sp)
            rates.append(sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t))
        out[f"{n}x{m}"] = statistics.median(rates)
        print(f"sliceserve {n}x{m}: {out[f'{n}x{m}']:.0f} tok/s {rates}", flush=True)
    return out


def run_hf(folder: Path, cases: list[tuple[int, int]], repeats: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda()
    model.generation_config.eos_token_id = None
    vocab = model.config.vocab_size
    out = {}
    for n, m in cases:
        rates = []
        for r in range(repeats + 1):
            batch = prompts(n, vocab, r)
            width = max(map(len, batch))
            ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device="cuda")
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch],
                                device="cuda")
            torch.cuda.synchronize()
            t = time.perf_counter()
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=m, min_new_tokens=m,
                                 do_sample=False, pad_token_id=0, cache_implementation="static")
            torch.cuda.synchronize()
            if r:  # the first run compiles/warms the static cache
                rates.append((gen.shape[1] - width) * n / (time.perf_counter() - t))
        out[f"{n}x{m}"] = statistics.median(rates)
        print(f"transformers-static {n}x{m}: {out[f'{n}x{m}']:.0f} tok/s {rates}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape-from", type=Path, required=True)
    parser.add_argument("--cases", default="64x128,256x128")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cases = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")]
    folder = random_model(args.shape_from)
    ours = run_ours(folder, cases, args.repeats)
    hf = run_hf(folder, cases, args.repeats)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cases": {c: {"sliceserve_tok_s": ours[c], "transformers_static_tok_s": hf[c],
                            "ratio": ours[c] / hf[c]} for c in ours}}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
