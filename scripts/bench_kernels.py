#!/usr/bin/env python
"""The compiled CPU kernels, each build variant side by side in one process, at SmolLM2's
shapes: decode attention over the paged cache and the fused element-wise ops, per dtype.

    .venv/bin/python scripts/bench_kernels.py --threads 2 --out docs/bench/kernels.json

Variants (sliceserve/model/kernels: native, avx2, portable, scalar; the ones this CPU can
run), plus "eager" (the PyTorch code the kernels replace). Each op is timed in rounds over
all variants (the machine drifts), median of the rounds' medians, microseconds per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sliceserve.model import kernels  # noqa: E402
from sliceserve.model.cpu import cpu_info  # noqa: E402
from sliceserve.model.llama import _rms_norm  # noqa: E402
from sliceserve.model.rope import apply_rope  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# SmolLM2-135M: hidden 576, 9 query / 3 KV heads of 64, intermediate 1536.
HIDDEN, HEADS, KV_HEADS, DIM, INTER = 576, 9, 3, 64, 1536


def cases(dtype: torch.dtype, rows: int, context: int, block_size: int = 16
          ) -> dict[str, tuple[Callable[[Any], Callable[[], Any]], Callable[[], Any]]]:
    """op name -> (kernel call given a module, the eager call)."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    x, res, w = randn(rows, HIDDEN), randn(rows, HIDDEN), randn(HIDDEN)
    gate_up = randn(rows, 2 * INTER)
    width = (HEADS + 2 * KV_HEADS) * DIM
    qkv = randn(rows, width)
    cos, sin = randn(rows, DIM), randn(rows, DIM)
    blocks = rows * -(-(context + 1) // block_size)
    key_cache, value_cache = randn(KV_HEADS, blocks * block_size, DIM), randn(
        KV_HEADS, blocks * block_size, DIM)
    slots = torch.arange(rows) * block_size
    tables = torch.arange(blocks).view(rows, -1)
    lengths = torch.full((rows,), context + 1)
    q = qkv[:, :HEADS * DIM].view(rows, HEADS, DIM)
    scale = DIM ** -0.5
    span = torch.arange(tables.shape[1] * block_size)
    mask = torch.zeros(rows, span.numel()).masked_fill_(span[None] >= lengths[:, None],
                                                        float("-inf"))[None, :, None, :]
    logits = randn(rows, 49152)

    def eager_rope() -> None:
        qq = apply_rope(qkv[:, :HEADS * DIM].view(rows, HEADS, DIM), cos[:, None], sin[:, None])
        kk = apply_rope(qkv[:, HEADS * DIM:(HEADS + KV_HEADS) * DIM].view(rows, KV_HEADS, DIM),
                        cos[:, None], sin[:, None])
        key_cache[:, slots] = kk.transpose(0, 1)
        value_cache[:, slots] = kk.transpose(0, 1)
        return qq

    def eager_attention() -> torch.Tensor:
        from sliceserve.model.attention import _decode_attention, _gather

        queries = q.reshape(rows, KV_HEADS, HEADS // KV_HEADS, DIM).transpose(0, 1) * scale
        return _decode_attention(queries, _gather(key_cache, tables, block_size),
                                 _gather(value_cache, tables, block_size), mask)

    return {
        "rms_norm": (lambda m: lambda: m.rms_norm(x, w, 1e-5), lambda: _rms_norm(x, w, 1e-5)),
        "add_rms_norm_": (lambda m: lambda: m.add_rms_norm_(x, res, w, 1e-5),
                          lambda: _rms_norm(x + res, w, 1e-5)),
        "silu_mul": (lambda m: lambda: m.silu_mul(gate_up),
                     lambda: F.silu(gate_up[:, :INTER]) * gate_up[:, INTER:]),
        "rope_store_": (lambda m: lambda: m.rope_store_(qkv, cos, sin, slots, key_cache,
                                                        value_cache, HEADS), eager_rope),
        f"attention ctx {context}": (
            lambda m: lambda: m.paged_decode_attention(q, key_cache, value_cache, tables,
                                                       lengths, block_size, scale),
            eager_attention),
        "argmax_rows": (lambda m: lambda: m.argmax_rows(logits),
                        lambda: logits.float().argmax(-1)),
    }


def reference_module(checkout: Path) -> Any:
    """The kernels of an older checkout, built as it built them (commit 9a3b1a1's flags)."""
    import hashlib

    from torch.utils.cpp_extension import load_inline

    from sliceserve.model.loader import cache_dir

    folder = checkout / "sliceserve" / "model" / "kernels"
    source = "\n".join((folder / n).read_text()
                       for n in ("simd.h", "paged_attention.cpp", "fused_ops.cpp"))
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    build_dir = cache_dir() / "kernels" / f"reference-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    return load_inline(f"sliceserve_reference_{key}", cpp_sources=source,
                       functions=["paged_decode_attention", "rms_norm", "add_rms_norm_",
                                  "rope_store_", "silu_mul", "argmax_rows"],
                       extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
                       extra_ldflags=["-fopenmp"], build_directory=str(build_dir))


def time_us(fn: Callable[[], Any], calls: int) -> float:
    fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,64", help="token rows per call")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--variants", default=",".join(kernels.VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--reference", type=Path,
                        help="a sliceserve checkout whose kernels (from before the build "
                        "variants: load_inline, -ffast-math) to time beside these")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modules = {}
    if args.reference is not None:
        modules["reference"] = reference_module(args.reference)
    for variant in args.variants.split(","):
        if kernels.can_run(variant):
            module = kernels.cpu_kernels(variant)
            if module is not None:
                modules[f"{variant} ({module.kernel_path()})"] = module
    results: dict[str, Any] = {}
    with torch.inference_mode():
        for dtype_name in args.dtypes.split(","):
            for rows in (int(r) for r in args.rows.split(",")):
                table = cases(DTYPES[dtype_name], rows, args.context)
                for op, (kernel, eager) in table.items():
                    calls = {"eager": eager, **{name: kernel(m) for name, m in modules.items()}}
                    rounds: dict[str, list[float]] = {name: [] for name in calls}
                    for _ in range(args.rounds):
                        for name, fn in calls.items():
                            rounds[name].append(time_us(fn, args.calls))
                    row = {name: round(statistics.median(v), 1) for name, v in rounds.items()}
                    results[f"{dtype_name} rows {rows} {op}"] = row
                    print(f"{dtype_name:9} rows {rows:3} {op:18} "
                          + "  ".join(f"{k}: {v:.1f}" for k, v in row.items()), flush=True)
    report = {"command": " ".join(["scripts/bench_kernels.py", *sys.argv[1:]]),
              "cpu": cpu_info().describe(), "torch": torch.__version__,
              "threads": args.threads, "unit": "microseconds per call (median)",
              "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
