"""The synthetic iterations the profiler times (sliceserve/model/profiler.py): shapes, plans
made to look like live ones (random prompt ids, KV blocks laid out as the block manager lays
them), and what a profiler needs of a runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from sliceserve.config import blocks_for_tokens
from sliceserve.core.plan import ExecuteResult, Plan, ScheduledChunk
from sliceserve.model.config import ModelConfig
from sliceserve.model.profile_fit import ProfileError, ProfilePoint
from sliceserve.request import SLO, Request, SamplingParams

if TYPE_CHECKING:
    import torch

    from sliceserve.model.kv_cache import KVCache
    from sliceserve.model.precision import Precision

# No profiled iteration is larger than the engine's default token budget
# (EngineConfig.max_num_batched_tokens).
MAX_ITERATION_TOKENS = 2048
_PROFILE_SLO = SLO(ttft_ms=1e6, tpot_ms=1e6)
# Greedy, like the live runs: sampling cost is part of every measured iteration.
_PROFILE_SAMPLING = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)

class Runner(Protocol):
    """What the profiler reads of a model runner (sliceserve.model.runner.ModelRunner):
    typed here, so nothing reaches into it by name."""

    @property
    def num_kv_blocks(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def folder(self) -> Path: ...  # the weights: profiles are keyed by their content id
    @property
    def model_config(self) -> ModelConfig: ...
    @property
    def precision(self) -> Precision: ...  # the number format it computes in
    @property
    def device(self) -> torch.device: ...
    @property
    def cache(self) -> KVCache | None: ...  # None: the executor's own memory (llama.cpp)
    @property
    def fast_paths(self) -> tuple[str, ...]: ...  # optional fast paths in use
    @property
    def kernel_path(self) -> str: ...  # the compiled kernels' vector path, or "eager"

    def execute(self, plan: Plan) -> ExecuteResult: ...


class Shape(NamedTuple):
    """One iteration to time: `rows` decode rows over `context` tokens each, plus a prefill
    chunk of `prefill` tokens after `prefill_context` of its prompt already cached."""

    rows: int
    context: int
    prefill: int
    prefill_context: int = 0

    def label(self) -> str:
        return self.point(1.0).label()

    def point(self, ms: float, samples_ms: tuple[float, ...] = ()) -> ProfilePoint:
        kind = "mixed" if self.rows and self.prefill else ("decode" if self.rows else "prefill")
        return ProfilePoint(kind, self.rows, self.context if self.rows else 0,  # type: ignore
                            self.prefill, ms, samples_ms, self.prefill_context)


def fits(runner: Runner, shape: Shape) -> bool:
    """Whether `shape` fits the runner's KV cache, context and the engine's token budget."""
    block_size = runner.block_size
    prefill = shape.prefill + shape.prefill // 32  # the longest jittered chunk (see _plan)
    need = (shape.rows * blocks_for_tokens(shape.context + 1, block_size)
            + blocks_for_tokens(shape.prefill_context + prefill, block_size))
    return (need <= runner.num_kv_blocks
            and max(shape.context + 1, shape.prefill_context + prefill) <= runner.max_model_len
            and shape.rows + prefill <= MAX_ITERATION_TOKENS)


def synthetic_plan(runner: Runner, shape: Shape, rng: np.random.Generator, prefix: str,
                   layout: str = "contiguous") -> Plan:
    """A synthetic iteration of `shape` with random token ids and KV blocks laid out by
    `layout` (see `block_tables`)."""
    vocab = runner.model_config.vocab_size
    # (tokens in the sequence, already computed): decode rows, then the prefill chunk.
    rows = [(shape.context + 1, shape.context)] * shape.rows
    if shape.prefill:
        # Jittered by up to 1/32 either way, so that a prompt length hardly ever repeats: live
        # ones rarely do, and the first call at a new length costs more (per-shape set-up in
        # the math libraries; docs/BENCHMARKS.md, "Figures behind the code"). The median
        # stays at the nominal length.
        spread = shape.prefill // 32
        prefill = max(1, shape.prefill + int(rng.integers(-spread, spread + 1)))
        rows.append((shape.prefill_context + prefill, shape.prefill_context))
    sizes = [blocks_for_tokens(length, runner.block_size) for length, _ in rows]
    chunks = []
    for i, ((length, computed), blocks) in enumerate(
            zip(rows, block_tables(sizes, runner.num_kv_blocks, rng, layout))):
        ids = rng.integers(min(16, vocab - 1), vocab, size=length).tolist()
        request = Request(f"{prefix}-{i}", 0.0, length, _PROFILE_SAMPLING, _PROFILE_SLO,
                          prompt_token_ids=ids)
        chunks.append(ScheduledChunk(request, length - computed, computed, True, blocks))
    return Plan(0.0, tuple(chunks))


def block_tables(sizes: Sequence[int], num_blocks: int, rng: np.random.Generator,
                  layout: str) -> list[tuple[int, ...]]:
    """Block tables of `sizes` blocks each, from a pool of `num_blocks`.

    On a CPU the cost of attention depends on where the blocks lie: decode over blocks
    scattered across the whole pool costs several times what it costs over consecutive ones
    (docs/BENCHMARKS.md, "Figures behind the code"). The
    scheduler's block manager places each request's blocks consecutively with room to grow,
    so live tables are consecutive but where the pool is fragmented: "contiguous" (the
    default) is what the profile measures; "scattered" and "mixed" (each row's first half
    consecutive, its second half scattered) are the worse cases, for comparison.
    """
    if layout not in ("contiguous", "scattered", "mixed"):
        raise ProfileError(f"block layout must be contiguous, scattered or mixed, got {layout!r}")
    if layout == "scattered":
        heads = [0] * len(sizes)
    elif layout == "contiguous":
        heads = list(sizes)
    else:
        heads = [-(-n // 2) for n in sizes]
    start = sum(heads)
    rest = iter(int(b) for b in rng.permutation(np.arange(start, num_blocks)))
    tables, next_block = [], 0
    for n, head in zip(sizes, heads):
        table = list(range(next_block, next_block + head))
        next_block += head
        table += [next(rest) for _ in range(n - head)]
        tables.append(tuple(table))
    return tables
