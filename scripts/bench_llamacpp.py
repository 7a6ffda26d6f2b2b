"""The llama.cpp executor against llama.cpp without a scheduler, side by side in one process on
the same GGUF, threads and machine (issue 9's performance rows; docs/BENCHMARKS.md).

    .venv/bin/python scripts/bench_llamacpp.py --threads 2 --out docs/bench/llamacpp/run.json

Rows (greedy, EOS ignored, timed from the first prompt token to the last output token):
- single: one request of `--tokens` output tokens: sliceserve (`LLM(backend="llamacpp")`)
  against llama-cpp-python's own high-level generation (`Llama.generate`).
- batch: `--batch` requests x `--tokens` tokens arriving together: sliceserve (policy
  `--policy`, max_batch_size = the batch) against a plain batched `llama_decode` loop over the
  same bindings (all prompts in one call, then one call per step for all sequences, argmax in
  numpy), and, with `--torch`, the PyTorch executor on the same GGUF (dequantized).
- churn: `--churn` requests with 16-63-token prompts and 8-128 output tokens (seeded) arriving
  together, on `--batch` KV streams and rows: requests end at different times and new ones
  take their streams, so this row measures how the executor places rows over llama.cpp's KV
  streams (one ubatch per run of consecutive stream ids), not only the kernels. `--gguf`
  runs another GGUF (e.g. a Q8_0 file, whose kernels scale with the batch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from sliceserve.bench.machine import device_label


def prompts(n: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(1000, 30000, size=length)] for _ in range(n)]


def high_level_single(gguf: Path, prompt: list[int], tokens: int, threads: int,
                      flash_attn: bool = True) -> float:
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=len(prompt) + tokens + 16, n_threads=threads,
                flash_attn=flash_attn,
                n_threads_batch=threads, n_batch=512, verbose=False)
    out = 0
    start = time.perf_counter()
    for _ in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        out += 1
        if out == tokens:
            break
    elapsed = time.perf_counter() - start
    llm.close()
    return elapsed


def plain_batched_loop(gguf: Path, batch_prompts: list[list[int]], tokens: int,
                       threads: int, flash_attn: bool = True) -> float:
    """No scheduler: every prompt in one llama_decode, then one call per step for all."""
    import llama_cpp as lc

    lc.llama_backend_init()
    mparams = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(str(gguf).encode(), mparams)
    n = len(batch_prompts)
    cparams = lc.llama_context_default_params()
    cparams.n_seq_max = n
    cparams.kv_unified = False
    cparams.n_ctx = n * (max(map(len, batch_prompts)) + tokens + 16)
    cparams.n_batch = cparams.n_ubatch = max(512, sum(map(len, batch_prompts)))
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                               else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    ctx = lc.llama_init_from_model(model, cparams)
    vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(cparams.n_batch, 0, 1)

    def decode(entries: list[tuple[int, int, int, bool]]) -> np.ndarray:
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(entries)
        assert lc.llama_decode(ctx, batch) == 0
        rows = sum(e[3] for e in entries)
        return np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(rows, vocab))

    start = time.perf_counter()
    entries = [(t, p, s, p == len(ids) - 1) for s, ids in enumerate(batch_prompts)
               for p, t in enumerate(ids)]
    last = decode(entries).argmax(axis=1)
    for step in range(1, tokens):
        last = decode([(int(last[s]), len(ids) + step - 1, s, True)
                       for s, ids in enumerate(batch_prompts)]).argmax(axis=1)
    elapsed = time.perf_counter() - start
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return elapsed


def sliceserve_run(batch_prompts: list[list[int]], tokens: int | list[int], threads: int,
                   backend: str, policy: str, model: Path | None = None,
                   rows: int | None = None, flash_attn: bool = True) -> tuple[float, dict]:
    from sliceserve import LLM, SamplingParams

    lengths = tokens if isinstance(tokens, list) else [tokens] * len(batch_prompts)
    n = rows or len(batch_prompts)
    longest = max(map(len, batch_prompts)) + max(lengths)
    # flash attention on: the executor's default (llama.cpp's "auto": on for a CPU)
    settings = {"context_tokens": max(256, longest), "max_num_seqs": max(n, 1),
                "flash_attn": None if flash_attn else False}
    extra = {"llamacpp": settings} if backend == "llamacpp" else {}
    llm = LLM(model=model, policy=policy, policy_options={"max_batch_size": n},
              backend=backend, latency_model="paper", num_threads=threads, **extra)
    params = [SamplingParams(max_tokens=k, temperature=0.0, ignore_eos=True) for k in lengths]
    llm.generate(batch_prompts[:1], SamplingParams(max_tokens=4, temperature=0.0))  # warm
    runner = llm.live.runner
    runner.stats.reset()
    moves = getattr(runner, "stream_moves", None)
    start = time.perf_counter()
    outs = llm.generate(batch_prompts, params)
    elapsed = time.perf_counter() - start
    assert [len(o.token_ids) for o in outs] == lengths
    s = runner.stats
    more = {"stream_moves": runner.stream_moves - moves} if moves is not None else {}
    return elapsed, {"iterations": s.iterations, "prepare_s": round(s.prepare_s, 3),
                     "forward_s": round(s.forward_s, 3), "sample_s": round(s.sample_s, 3),
                     **more}


def row(name: str, n: int, tokens: int, seconds: float, total: int | None = None,
        **more: object) -> dict:
    """`tokens` per request, or with `total` the tokens of all requests together."""
    total = n * tokens if total is None else total
    out = {"system": name, "requests": n, "tokens": tokens, "seconds": round(seconds, 3),
           "tok_per_s": round(total / seconds, 1), **more}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--policy", default="vllm")
    parser.add_argument("--rows", default="single,batch", help="single,batch,churn")
    parser.add_argument("--churn", type=int, default=48, help="requests in the churn row")
    parser.add_argument("--gguf", type=Path, help="another GGUF (default: the embedded one)")
    parser.add_argument("--torch", action="store_true", help="also the PyTorch executor")
    parser.add_argument("--no-flash-attn", dest="flash_attn", action="store_false",
                        help="flash attention off in every row (default on in every row: the "
                        "executor's and llama-server's 'auto' turn it on for a CPU)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from sliceserve.model.loader import default_gguf_path

    gguf = args.gguf or default_gguf_path()
    rows = []
    wanted = args.rows.split(",")
    if "single" in wanted:
        one = prompts(1, args.prompt_tokens)
        rows.append(row("llama-cpp-python high-level", 1, args.tokens,
                        high_level_single(gguf, one[0], args.tokens, args.threads,
                                          args.flash_attn)))
        seconds, stats = sliceserve_run(one, args.tokens, args.threads, "llamacpp", args.policy,
                                        gguf, flash_attn=args.flash_attn)
        rows.append(row("sliceserve llamacpp", 1, args.tokens, seconds, **stats))
    if "batch" in wanted:
        many = prompts(args.batch, args.prompt_tokens, seed=1)
        rows.append(row("plain batched llama_decode", args.batch, args.tokens,
                        plain_batched_loop(gguf, many, args.tokens, args.threads,
                                           args.flash_attn)))
        seconds, stats = sliceserve_run(many, args.tokens, args.threads, "llamacpp",
                                        args.policy, gguf, flash_attn=args.flash_attn)
        rows.append(row("sliceserve llamacpp", args.batch, args.tokens, seconds, **stats))
        if args.torch:
            seconds, stats = sliceserve_run(many, args.tokens, args.threads, "torch",
                                            args.policy, gguf)
            rows.append(row("sliceserve torch", args.batch, args.tokens, seconds, **stats))
    if "churn" in wanted:
        rng = np.random.default_rng(2)
        mixed = [[int(t) for t in rng.integers(1000, 30000, size=int(rng.integers(16, 64)))]
                 for _ in range(args.churn)]
        lengths = [int(k) for k in rng.integers(8, 129, size=args.churn)]
        seconds, stats = sliceserve_run(mixed, lengths, args.threads, "llamacpp", args.policy,
                                        gguf, rows=args.batch, flash_attn=args.flash_attn)
        rows.append(row("sliceserve llamacpp, churn", args.churn, sum(lengths), seconds,
                        total=sum(lengths), **stats))
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "cpu": device_label(), "threads": args.threads, "policy": args.policy,
              "gguf": gguf.name, "prompt_tokens": args.prompt_tokens,
              "flash_attn": args.flash_attn,
              "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "load_average": os.getloadavg()[0], "rows": rows}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)



if __name__ == "__main__":
    main()
