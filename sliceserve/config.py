"""Frozen configuration of the scheduler mechanism, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass


def blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    """KV blocks that hold `num_tokens` tokens."""
    return -(-num_tokens // block_size)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Hard limits the scheduler enforces whatever the policy asks for.

    A policy's own batch limits (e.g. the baselines' `max_batch_size`) live in its options.
    """

    max_num_batched_tokens: int = 2048  # token budget of one iteration
    max_num_seqs: int = 256  # requests in one iteration
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int = 2048  # KV memory budget, in blocks
    max_model_len: int = 4096  # prompt + output tokens of one request
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "block_size", "num_kv_blocks",
                     "max_model_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"SchedulerConfig.{name} must be a positive integer, got {value!r}")

    def blocks_for(self, num_tokens: int) -> int:
        return blocks_for_tokens(num_tokens, self.block_size)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size

    @classmethod
    def for_capacity(cls, kv_capacity_tokens: int, block_size: int = 16) -> SchedulerConfig:
        """The default limits with a KV cache of `kv_capacity_tokens` tokens (at least one
        block); `dataclasses.replace` sets the others."""
        return cls(block_size=block_size,
                   num_kv_blocks=max(1, kv_capacity_tokens // block_size))
