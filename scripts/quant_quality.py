#!/usr/bin/env python
"""What a number format costs in quality on SmolLM2, against float32: perplexity on a real
English text and greedy agreement on prompts, per (dtype, quantization).

    .venv/bin/python scripts/quant_quality.py --out docs/bench/quant_quality.json

Perplexity: the text (default /usr/share/common-licenses/GPL-3, plain English that every
Debian machine has) tokenized, cut into windows of --window tokens, each scored from its start
(teacher forcing through the engine's own forward pass: every position's logits), exp of the
mean negative log-likelihood. Greedy agreement: --prompts prompts (the throughput benchmark's
random common words, seeded) x --tokens greedy tokens through `LLM.generate`; per format the
share of prompts whose tokens all equal float32's, the mean length of the common prefix, and
the share of positions equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from bench_throughput import make_prompts  # noqa: E402

from sliceserve.model.cpu import cpu_info  # noqa: E402

FORMATS = ("float32", "float32+int8", "bfloat16", "bfloat16+int8")


def split(fmt: str) -> tuple[str, str]:
    dtype, _, quant = fmt.partition("+")
    return dtype, quant or "none"


@torch.inference_mode()
def perplexity(runner: Any, ids: list[int], window: int) -> float:
    """exp(mean NLL) of `ids`, window by window, each window scored from its first token."""
    from sliceserve.core.plan import ScheduledChunk
    from sliceserve.model.attention import build_layout
    from sliceserve.request import SLO, Request, SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk_ids = ids[start:start + window + 1]
        if len(chunk_ids) < 2:
            break
        inputs, targets = chunk_ids[:-1], torch.tensor(chunk_ids[1:])
        request = Request("ppl", 0.0, len(inputs), params, SLO(ttft_ms=1e9, tpot_ms=1e9),
                          prompt_token_ids=inputs)
        blocks = tuple(range(-(-len(inputs) // runner.block_size)))
        chunk = ScheduledChunk(request, len(inputs), 0, True, blocks)
        layout = build_layout([chunk], runner.block_size, runner.dtype, runner.device,
                              max_row_chunk=runner.max_row_chunk)
        layout = dataclasses.replace(layout, sample_index=torch.arange(len(inputs)))
        hidden = runner.model.forward(layout, runner.cache)
        logits = runner.model.logits(hidden).float()
        total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += targets.numel()
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    parser.add_argument("--max-text-tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sliceserve import LLM, SamplingParams

    prompts = make_prompts("quality", args.prompts)
    greedy = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    results: dict[str, Any] = {}
    reference: list[list[int]] | None = None
    for fmt in args.formats.split(","):
        dtype, quant = split(fmt)
        llm = LLM(policy="vllm", policy_options={"max_batch_size": 256}, dtype=dtype,
                  quantization=quant, num_threads=args.threads, warm_up=False,
                  latency_model="paper")
        runner = llm.live.runner
        ids = llm.tokenizer(args.text.read_text())["input_ids"][:args.max_text_tokens]
        ppl = perplexity(runner, ids, args.window)
        tokens = [list(o.token_ids) for o in llm.generate(prompts, greedy)]
        if reference is None:
            reference = tokens
        prefixes = []
        for mine, ref in zip(tokens, reference):
            same = next((i for i, (a, b) in enumerate(zip(mine, ref)) if a != b), len(ref))
            prefixes.append(same)
        equal = sum(a == b for mine, ref in zip(tokens, reference) for a, b in zip(mine, ref))
        results[fmt] = {
            "perplexity": round(ppl, 4),
            "prompts_identical": sum(p == args.tokens for p in prefixes) / len(prefixes),
            "mean_common_prefix": round(statistics.mean(prefixes), 2),
            "positions_equal": round(equal / (len(prompts) * args.tokens), 4),
            "text_tokens": len(ids),
        }
        print(f"{fmt:15} {json.dumps(results[fmt])}", flush=True)
        del llm, runner
    report = {"command": " ".join(["scripts/quant_quality.py", *sys.argv[1:]]),
              "cpu": cpu_info().describe(), "torch": torch.__version__,
              "reference": args.formats.split(",")[0], "text": str(args.text),
              "window": args.window, "prompts": args.prompts, "tokens": args.tokens,
              "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
