"""The paged KV cache: one key and one value tensor per layer, addressed by slot.

Slot `block_id * block_size + offset` holds the key/value of one token (per layer and KV head:
`[layers, kv_heads, slots, head_dim]`). Which blocks a
request owns is decided by the scheduler's `BlockManager` (core/kv_blocks.py); the plan
carries each request's block table, so this module owns memory, never accounting.
"""

from __future__ import annotations

import torch

from sliceserve.model.config import ModelConfig

DEFAULT_KV_CACHE_MEMORY_GB = 1.0


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * element


def blocks_for_memory(config: ModelConfig, memory_gb: float, block_size: int,
                      dtype: torch.dtype) -> int:
    """How many blocks of `block_size` tokens fit in `memory_gb` GiB of KV cache."""
    if not memory_gb > 0:
        raise ValueError(f"kv_cache_memory_gb must be > 0, got {memory_gb!r}")
    per_block = kv_bytes_per_token(config, dtype) * block_size
    num_blocks = int(memory_gb * 2**30) // per_block
    if num_blocks < 1:
        raise ValueError(f"kv_cache_memory_gb={memory_gb} holds no block of {block_size} tokens "
                         f"({per_block} bytes)")
    return num_blocks


class KVCache:
    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Head-major: a gathered batch of block tables is contiguous per (head, request).
        shape = (config.num_layers, config.num_kv_heads, num_blocks * block_size, config.head_dim)
        # Zeroed, not empty: attention over a padded block table reads slots no request wrote,
        # and the mask hides finite garbage but not a NaN (NaN + -inf is NaN).
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def num_bytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[index], self.values[index]
