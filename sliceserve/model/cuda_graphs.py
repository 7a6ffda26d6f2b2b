"""CUDA graphs for decode iterations: one kernel launch sequence replayed instead of ~1,000
eager launches, which dominate a small model's decode step on a GPU.

A graph is captured lazily for each (batch bucket, context bucket): the plan's rows are padded
to the next batch size in BATCH_BUCKETS and their block tables to the next power of two of
blocks. Padding rows write their (ignored) keys to a scratch slot that no request owns and
attend to position 0 only, so they never touch a real request's cache.

With `capture=False` the same static-buffer path runs eagerly: that is how the padding logic
is tested on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sliceserve.core.plan import ScheduledChunk
from sliceserve.model.attention import BatchLayout, chunk_token_ids
from sliceserve.model.kv_cache import KVCache
from sliceserve.model.llama import LlamaModel

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)
MIN_CONTEXT_BLOCKS = 16


@dataclass
class _Graph:
    batch: int
    num_blocks: int
    inputs: torch.Tensor  # flat int64 buffer; the fields below are views of it
    layout: BatchLayout
    logits: torch.Tensor | None = None  # the captured output, [batch, vocab]
    graph: torch.cuda.CUDAGraph | None = None


class DecodeGraphs:
    def __init__(self, model: LlamaModel, cache: KVCache, max_model_len: int,
                 scratch_slot: int, *, capture: bool = True) -> None:
        self.model = model
        self.cache = cache
        self.block_size = cache.block_size
        self.max_blocks = -(-max_model_len // cache.block_size)
        self.scratch_slot = scratch_slot
        self.capture = capture
        self.device = model.device
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None

    def can_run(self, chunks: Sequence[ScheduledChunk]) -> bool:
        return (0 < len(chunks) <= BATCH_BUCKETS[-1]
                and all(c.num_new_tokens == 1 and c.samples for c in chunks))

    def run(self, chunks: Sequence[ScheduledChunk]) -> torch.Tensor:
        """Logits [len(chunks), vocab] of a decode-only plan, rows in plan order."""
        n = len(chunks)
        batch = next(b for b in BATCH_BUCKETS if b >= n)
        longest = max(c.num_computed_tokens + 1 for c in chunks)
        need = -(-longest // self.block_size)
        num_blocks = min(max(MIN_CONTEXT_BLOCKS, 1 << (need - 1).bit_length()), self.max_blocks)
        graph = self._graphs.get((batch, num_blocks))
        if graph is None:
            graph = self._graphs[(batch, num_blocks)] = self._build(batch, num_blocks)
        graph.inputs.copy_(self._pack(chunks, batch, num_blocks), non_blocking=False)
        if graph.graph is None:
            logits = self.model.logits(self.model.forward(graph.layout, self.cache))
        else:
            graph.graph.replay()
            logits = graph.logits
        assert logits is not None
        return logits[:n]

    def _pack(self, chunks: Sequence[ScheduledChunk], batch: int, num_blocks: int,
              ) -> torch.Tensor:
        """ids | positions | slots | lengths | tables, padded to `batch` rows."""
        bs = self.block_size
        pad = batch - len(chunks)
        ids, positions, slots, lengths, tables = [], [], [], [], []
        for c in chunks:
            pos = c.num_computed_tokens
            ids.extend(chunk_token_ids(c))
            positions.append(pos)
            slots.append(c.block_ids[pos // bs] * bs + pos % bs)
            lengths.append(pos + 1)
            table = list(c.block_ids[:num_blocks])
            tables.extend(table + [0] * (num_blocks - len(table)))
        ids += [0] * pad
        positions += [0] * pad
        slots += [self.scratch_slot] * pad
        lengths += [1] * pad
        tables += [0] * (pad * num_blocks)
        return torch.tensor(ids + positions + slots + lengths + tables, dtype=torch.long)

    def _build(self, batch: int, num_blocks: int) -> _Graph:
        inputs = torch.zeros(batch * (4 + num_blocks), dtype=torch.long, device=self.device)
        views = inputs[:4 * batch].view(4, batch)
        layout = BatchLayout(
            order=tuple(range(batch)), input_ids=views[0], positions=views[1], slots=views[2],
            num_rows=batch, row_tables=inputs[4 * batch:].view(batch, num_blocks),
            row_lengths=views[3], prefills=(), fresh=None,
            sample_index=torch.arange(batch, device=self.device), sample_chunks=(),
        )
        graph = _Graph(batch, num_blocks, inputs, layout)
        if not self.capture:
            return graph
        # Safe inputs for the warm-up and capture runs: every row writes the scratch slot.
        inputs.copy_(torch.tensor([0] * (2 * batch) + [self.scratch_slot] * batch
                                  + [1] * batch + [0] * (batch * num_blocks)))
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.model.logits(self.model.forward(layout, self.cache))
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph.graph, pool=self._pool):
            graph.logits = self.model.logits(self.model.forward(layout, self.cache))
        return graph
