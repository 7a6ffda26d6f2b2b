#!/usr/bin/env python
"""The linear layers of one SmolLM2 forward pass in each weight format, on this CPU: what
dtype="auto" and quantization="int8" are chosen from.

    .venv/bin/python scripts/bench_linear.py --threads 2 --out docs/bench/linear.json

Per format and batch (token rows), the time of every linear of a forward pass at SmolLM2's
shapes (30 layers of qkv 960x576, out 576x576, gate/up 3072x576, down 576x1536, and the LM
head 49152x576 over the same rows), each as sliceserve.model.linear.Linear runs it. Timed in
rounds over all formats (the machine drifts); the median of the rounds, milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sliceserve.model.cpu import cpu_info  # noqa: E402
from sliceserve.model.linear import Linear  # noqa: E402

LAYERS = 30
SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))  # qkv, out, gate/up, down
LM_HEAD = (49152, 576)
FORMATS = ("float32", "bfloat16", "float32+int8", "bfloat16+int8")


def forward_ms(linears: list[Linear], head: Linear, x_of: dict[int, torch.Tensor],
               calls: int) -> float:
    """One forward's linears: every layer's four, then the head; median of `calls`."""
    samples = []
    for _ in range(calls + 1):
        start = time.perf_counter()
        for linear in linears:
            linear(x_of[linear.shape[1]])
        head(x_of[LM_HEAD[1]])
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(*shape, generator=gen) * 0.02 for shape in SHAPES] * LAYERS
    head_weight = torch.randn(*LM_HEAD, generator=gen) * 0.02
    formats = args.formats.split(",")
    built = {}
    for fmt in formats:
        dtype_name, _, quant = fmt.partition("+")
        dtype = getattr(torch, dtype_name)
        # distinct weights per layer, as in the model: no layer finds another's in cache
        layers = [Linear(w.to(dtype) + 0, None, quant or "none") for w in weights]
        built[fmt] = (dtype, layers, Linear(head_weight.to(dtype), None, quant or "none"))
    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for rows in (int(b) for b in args.batches.split(",")):
            rounds: dict[str, list[float]] = {fmt: [] for fmt in formats}
            for _ in range(args.rounds):
                for fmt, (dtype, layers, head) in built.items():
                    x_of = {k: torch.randn(rows, k, generator=gen).to(dtype)
                            for k in (576, 1536)}
                    rounds[fmt].append(forward_ms(layers, head, x_of, args.calls))
            results[f"rows {rows}"] = {fmt: round(statistics.median(v), 3)
                                       for fmt, v in rounds.items()}
            print(f"rows {rows:3}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in
                                                 results[f"rows {rows}"].items()), flush=True)
    report = {"command": " ".join(["scripts/bench_linear.py", *sys.argv[1:]]),
              "cpu": cpu_info().describe(), "torch": torch.__version__,
              "threads": args.threads, "unit": "ms per forward pass's linear layers (median)",
              "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
