"""The contracts between scheduler, policy and executor.

`Plan` is the only thing an executor sees: per request, how many tokens to compute now.
A prefill, a chunk of a prefill, a recompute after preemption and a decode step are all
the same thing here; an iteration may mix them freely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sliceserve.latency_model import chunk_pairs
from sliceserve.request import Request


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    request: Request  # read-only for the executor
    num_new_tokens: int  # tokens computed this iteration, starting at num_computed_tokens
    num_computed_tokens: int  # tokens already in the KV cache before this iteration
    samples: bool  # True when this chunk reaches the end of the sequence: one token is sampled
    block_ids: tuple[int, ...]  # the request's KV blocks, covering computed + new tokens


@dataclass(frozen=True, slots=True)
class Plan:
    """One iteration's work, decided at `now_s` (engine clock)."""

    now_s: float
    chunks: tuple[ScheduledChunk, ...]
    preempted_ids: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.chunks

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)

    def shape(self) -> tuple[int, int, int, float]:
        """What the latency model prices a plan by: (rows, new tokens, context tokens,
        query-key pairs of causal attention within the prompt chunks, 0 for decode rows)."""
        num_new = 0
        num_context = 0
        pairs = 0.0
        for chunk in self.chunks:
            num_new += chunk.num_new_tokens
            num_context += chunk.num_computed_tokens + chunk.num_new_tokens
            pairs += chunk_pairs(chunk.num_new_tokens, chunk.num_computed_tokens)
        return len(self.chunks), num_new, num_context, pairs


@dataclass(frozen=True, slots=True)
class ExecuteResult:
    """What an executor returns for a plan."""

    # One entry per plan chunk, in order: the sampled token id, or None for a chunk that
    # does not sample (a prefill chunk that is not the last).
    token_ids: Sequence[int | None]
    duration_s: float  # measured (live) or predicted (simulated) duration of the iteration


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What an engine step produced, for output streams and callers."""

    now_s: float
    new_tokens: tuple[tuple[Request, int], ...] = ()
    finished: tuple[Request, ...] = ()
    idle: bool = False  # nothing was scheduled


IDLE = StepOutput(now_s=0.0, idle=True)
