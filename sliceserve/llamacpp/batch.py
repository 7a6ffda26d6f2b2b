"""A `llama_batch` over numpy buffers: the plan's tokens are written with array slices, not
one ctypes store per field per token.

llama.cpp's `llama_batch_init` mallocs one seq-id array per token, which numpy cannot view as
one array; here every token's single seq id lives in one int32 buffer and the batch's `seq_id`
pointers point into it once, at allocation. A piece of the buffers (for a plan larger than
one llama_decode call) is a batch whose pointers start at an offset.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

_I32 = ctypes.POINTER(ctypes.c_int32)


class BatchBuffers:
    """Token ids, positions, sequence ids and logits flags for up to `capacity` tokens."""

    def __init__(self, llama_cpp: Any, capacity: int) -> None:
        self._llama_cpp = llama_cpp
        self.capacity = 0
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)  # one sequence per token, always
        # seq_id[i] -> &seq[i]
        self._seq_ptrs = (self.seq.ctypes.data
                          + 4 * np.arange(capacity, dtype=np.uint64)).astype(np.uint64)

    def view(self, start: int, count: int) -> Any:
        """A llama_batch of tokens [start, start + count) (valid while these buffers live)."""
        lc = self._llama_cpp
        batch = lc.llama_batch()
        batch.n_tokens = count
        batch.token = ctypes.cast(self.token.ctypes.data + 4 * start, _I32)
        batch.embd = None
        batch.pos = ctypes.cast(self.pos.ctypes.data + 4 * start, _I32)
        batch.n_seq_id = ctypes.cast(self._n_seq_id.ctypes.data + 4 * start, _I32)
        batch.seq_id = ctypes.cast(self._seq_ptrs.ctypes.data + 8 * start,
                                   ctypes.POINTER(_I32))
        batch.logits = ctypes.cast(self.logits.ctypes.data + start,
                                   ctypes.POINTER(ctypes.c_int8))
        return batch


def token_at(request: Any, index: int) -> int:
    """Token `index` of the request's sequence (prompt, then output)."""
    prompt = request.prompt_token_ids
    p = len(prompt)
    return prompt[index] if index < p else request.output_token_ids[index - p]


def tokens_of(request: Any, first: int, end: int) -> list[int]:
    """Tokens [first, end) of the request's sequence."""
    prompt = request.prompt_token_ids
    p = len(prompt)
    if end <= p:
        return list(prompt[first:end])
    out = request.output_token_ids
    if first >= p:
        return list(out[first - p:end - p])
    return list(prompt[first:]) + list(out[:end - p])
