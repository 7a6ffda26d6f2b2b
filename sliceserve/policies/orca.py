"""Orca: iteration-level FCFS with full KV reservation.

Admit in arrival order while the batch is under `max_batch_size` and the KV cache can reserve
`prompt + max_tokens` for the request; a new request prefills as much of its prompt as the
iteration's token budget (`max_num_batched_tokens`) leaves, all of it when it fits, the rest
in the next iterations; nothing is ever preempted. Every admitted request computes in every
iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

from sliceserve.policies.base import (
    Decision,
    Policy,
    PolicyOptions,
    RequestView,
    SchedulerView,
    tokens_to_compute,
)
from sliceserve.policies.registry import register


@dataclass(frozen=True)
class OrcaOptions(PolicyOptions):
    max_batch_size: int = 8

    def __post_init__(self) -> None:
        if type(self.max_batch_size) is not int or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")


@register
class OrcaPolicy(Policy):
    name = "orca"
    Options = OrcaOptions
    options: OrcaOptions

    def reserved_blocks(self, request: RequestView) -> int:
        """Blocks a request may ever need: its prompt plus all of its output."""
        return self.config.blocks_for(request.num_prompt_tokens + request.max_tokens)

    def schedule(self, view: SchedulerView) -> Decision:
        cfg = view.config
        tokens_left = cfg.max_num_batched_tokens
        batch: list[tuple[RequestView, int]] = []
        reserved = 0
        for request in view.running:
            reserved += self.reserved_blocks(request)
            n = min(tokens_to_compute(request), tokens_left)
            if n > 0:
                batch.append((request, n))
                tokens_left -= n
        rows = len(view.running)
        max_rows = min(self.options.max_batch_size, cfg.max_num_seqs)
        for request in view.waiting:
            if rows >= max_rows or tokens_left <= 0:
                break
            need = self.reserved_blocks(request)
            if reserved + need > cfg.num_kv_blocks:
                break  # FCFS: the head waits for memory; nobody overtakes it
            n = min(tokens_to_compute(request), tokens_left)
            batch.append((request, n))
            tokens_left -= n
            reserved += need
            rows += 1
        return Decision(batch=batch)
