"""`llama-server -np N` on the embedded GGUF: N concurrent streamed requests of random prompts,
a fixed number of output tokens each, beside scripts/bench_llamacpp.py's rows (issue 9's
"report `llama-server -np 16` beside it"; docs/BENCHMARKS.md).

    .venv/bin/python scripts/bench_llama_server.py --threads 2 --batch 16 --tokens 128 \
        --out docs/bench/llamacpp/llama_server_16x128.json

The binary is scripts/peers/build_llama_server.sh's (never committed). It runs with `-np N`,
`-t/-tb THREADS` and a context of N x (prompt + tokens + 32) so every slot holds its request.
Each request is a POST /completion with the prompt as token ids (the same random prompts as
bench_llamacpp.py's batch row: its `prompts(N, length, seed=1)`), `n_predict` tokens with
`ignore_eos`, greedy (temperature 0), no prompt cache, streamed. Throughput counts
N x tokens over the time from the first request sent to the last token received (prefill
included, as in the other rows); each request must report `tokens` predicted tokens. One short
warm-up request first; then `--repeats` timed rounds: median and range.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import compare_systems as cs  # noqa: E402  (how the project starts and stops its peers)
from bench_llamacpp import prompts  # noqa: E402  (the same prompts as the other rows)

from sliceserve.bench.machine import device_label  # noqa: E402

DEFAULT_BINARY = Path.home() / ".cache/sliceserve/peers/llama-server-0.3.36/llama-server"


def server_system(binary: Path, gguf: Path, parallel: int, context: int,
                  threads: int) -> cs.System:
    """compare_systems' llama-server, with this row's context and batch threads."""
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(cs.PORT),
               "-np", str(parallel), "-c", str(context), "-t", str(threads),
               "-tb", str(threads), "--no-webui"]
    base = cs.llama_server_system(parallel)
    return replace(base, command=command, settings={**base.settings, "ctx": context,
                                                    "threads": threads})


async def one_request(client: httpx.AsyncClient, prompt: list[int], tokens: int) -> dict:
    """Stream one completion; returns its last-token time and the server's token counts."""
    body = {"prompt": prompt, "n_predict": tokens, "ignore_eos": True, "temperature": 0.0,
            "cache_prompt": False, "stream": True}
    chunks, last_token_at, final = 0, None, None
    async with client.stream("POST", "/completion", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: "):])
            last_token_at = time.perf_counter()  # the final event may carry the last token
            if event.get("stop"):
                final = event
                break
            chunks += 1
    if final is None:
        raise RuntimeError("stream ended without a final event")
    timings = final.get("timings", {})
    predicted = int(final.get("tokens_predicted", timings.get("predicted_n", -1)))
    return {"last_token_at": last_token_at, "chunks": chunks, "predicted": predicted,
            "prompt_n": timings.get("prompt_n"), "stop_type": final.get("stop_type")}


async def one_round(base: str, batch_prompts: list[list[int]], tokens: int) -> dict:
    limits = httpx.Limits(max_connections=len(batch_prompts) + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600.0, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, p, tokens)
                                         for p in batch_prompts))
    end = max(r["last_token_at"] for r in results)
    bad = [r for r in results if r["predicted"] != tokens]
    if bad:
        raise RuntimeError(f"{len(bad)} requests did not get {tokens} tokens: {bad[:3]}")
    seconds = end - start
    return {"seconds": round(seconds, 3),
            "tok_per_s": round(len(batch_prompts) * tokens / seconds, 1),
            "chunks_min": min(r["chunks"] for r in results),
            "prompt_n": sorted({r["prompt_n"] for r in results}, key=str)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="requests and -np slots")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--binary", type=Path, default=DEFAULT_BINARY)
    parser.add_argument("--log", type=Path, default=Path("/tmp/bench_llama_server.log"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from sliceserve.model.loader import default_gguf_path

    if not args.binary.exists():
        sys.exit(f"{args.binary} missing: build it with scripts/peers/build_llama_server.sh")
    gguf = default_gguf_path()
    context = args.batch * (args.prompt_tokens + args.tokens + 32)
    system = server_system(args.binary, gguf, args.batch, context, args.threads)
    command = system.command
    server = cs.Running(system, args.log)
    base = server.base_url
    rounds = []
    try:
        load_s = server.wait_ready(120.0)
        asyncio.run(one_round(base, prompts(1, args.prompt_tokens, seed=99), 4))  # warm-up
        batch_prompts = prompts(args.batch, args.prompt_tokens, seed=1)
        for i in range(args.repeats):
            rounds.append(asyncio.run(one_round(base, batch_prompts, args.tokens)))
            print(json.dumps({"round": i, **rounds[-1]}), file=sys.stderr, flush=True)
    finally:
        server.stop()
    rates = [r["tok_per_s"] for r in rounds]
    server_command = " ".join([args.binary.name, *command[1:]]).replace(str(gguf), gguf.name)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "server_command": server_command,
              "binary_flags": _flags(args.binary), "cpu": device_label(),
              "threads": args.threads, "gguf": gguf.name, "prompt_tokens": args.prompt_tokens,
              "requests": args.batch, "tokens": args.tokens, "context": context,
              "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "load_average": os.getloadavg()[0], "load_s": round(load_s, 2),
              "system": f"llama-server -np {args.batch}",
              "tok_per_s_median": statistics.median(rates),
              "tok_per_s_range": [min(rates), max(rates)], "rounds": rounds}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


def _flags(binary: Path) -> str | None:
    """The build flags build_llama_server.sh records beside the binary."""
    flags = binary.with_name(binary.name + ".flags")
    return flags.read_text().strip() if flags.exists() else None


if __name__ == "__main__":
    main()
