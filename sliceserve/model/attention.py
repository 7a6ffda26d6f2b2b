"""Attention over the paged KV cache for a batch of variable-length chunks.

A plan's chunks are flattened into one token stream: every linear layer runs once over all
tokens. Attention differs by chunk shape, so `BatchLayout` (built once per iteration, shared
by all layers) orders the chunks as
    [rows (chunks of up to `max_row_chunk` tokens) | longer chunks (prefill pieces)]
A row chunk's every token is a row that attends over its own cached history, keys
0..position through its block table (this iteration's keys are stored first): decodes, and,
where the CPU kernel runs (`max_row_chunk` > 1), short prompt chunks too. Rows attend
together, in the kernel or with their keys gathered into one padded batch with an additive
mask. Longer chunks attend causally, together when they start their sequence (one padded
call), else each over its gathered history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sliceserve.core.plan import ScheduledChunk

DecodeKernel = Callable[..., torch.Tensor]


@dataclass(frozen=True, slots=True)
class PrefillSegment:
    start: int  # first token index in the flattened stream
    num_tokens: int
    num_computed: int  # tokens already in the cache before this chunk
    block_table: torch.Tensor | None  # [blocks] (only when num_computed > 0)
    mask: torch.Tensor | None  # [num_tokens, num_computed + num_tokens] additive


@dataclass(frozen=True, slots=True)
class FreshGroup:
    """Multi-token chunks that start their sequences, attended in one padded call (one kernel
    per layer instead of one per prompt: on a GPU the per-call cost dominates short prompts).
    Padded position p * max_len + i is token i of sequence p."""

    num_seqs: int
    max_len: int
    gather: torch.Tensor  # [num_seqs * max_len] stream index of each padded position
    targets: torch.Tensor  # [real tokens] stream index of each real token ...
    sources: torch.Tensor  # [real tokens] ... and its padded position
    mask: torch.Tensor  # [num_seqs, 1, max_len, max_len] additive: causal, within the sequence


@dataclass(frozen=True, slots=True)
class BatchLayout:
    order: tuple[int, ...]  # plan chunk index for each position in the flattened order
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slots: torch.Tensor  # [T] KV slot of each token
    num_rows: int  # row tokens (of chunks up to max_row_chunk tokens), first in the stream
    row_tables: torch.Tensor | None  # [rows, max_blocks]
    row_lengths: torch.Tensor | None  # [rows] context length of each row, new token included
    prefills: tuple[PrefillSegment, ...]  # chunks attended one by one
    fresh: FreshGroup | None  # chunks attended together
    sample_index: torch.Tensor  # [S] token index whose hidden state samples, per sampling chunk
    sample_chunks: tuple[int, ...]  # plan chunk index of each sampling row


def chunk_token_ids(chunk: ScheduledChunk) -> list[int]:
    """The tokens this chunk computes: a slice of prompt + output tokens."""
    request = chunk.request
    prompt = request.prompt_token_ids
    if prompt is None:
        raise ValueError(f"request {request.request_id} has no prompt token ids")
    start = chunk.num_computed_tokens
    end = start + chunk.num_new_tokens
    num_prompt = request.num_prompt_tokens
    output = request.output_token_ids
    if start >= num_prompt:
        return list(output[start - num_prompt:end - num_prompt])
    if end <= num_prompt:
        return list(prompt[start:end])
    return list(prompt[start:]) + list(output[:end - num_prompt])


def build_layout(chunks: Sequence[ScheduledChunk], block_size: int, dtype: torch.dtype,
                 device: torch.device, max_row_chunk: int = 1) -> BatchLayout:
    """Chunks of up to `max_row_chunk` new tokens are attended as rows: each of their tokens
    over its own cached history (keys 0..position through the block table, this iteration's
    keys stored first), which is how the CPU kernel takes decodes and short prompt chunks
    alike. Longer chunks go the padded/segment path (SDPA), better for long prompts."""
    rows = [i for i, c in enumerate(chunks) if c.num_new_tokens <= max_row_chunk]
    multi = [i for i, c in enumerate(chunks) if c.num_new_tokens > max_row_chunk]
    order = rows + multi
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    sample_index: list[int] = []
    sample_chunks: list[int] = []
    prefills = []
    for i in order:
        chunk = chunks[i]
        start = len(ids)
        first = chunk.num_computed_tokens
        end = first + chunk.num_new_tokens
        table = chunk.block_ids
        ids.extend(chunk_token_ids(chunk))
        positions.extend(range(first, end))
        slots.extend(table[pos // block_size] * block_size + pos % block_size
                     for pos in range(first, end))
        if chunk.samples:
            sample_index.append(len(ids) - 1)
            sample_chunks.append(i)
        if chunk.num_new_tokens > max_row_chunk:
            prefills.append(_segment(chunk, start, block_size, dtype, device))
    fresh = None
    starts = [seg for seg in prefills if seg.num_computed == 0]
    if len(starts) > 1:
        fresh = _fresh_group(starts, dtype, device)
        prefills = [seg for seg in prefills if seg.num_computed > 0]
    num_rows = sum(chunks[i].num_new_tokens for i in rows)
    row_tables, row_lengths = _row_tables(chunks, rows, positions[:num_rows], block_size,
                                          device)
    as_long = {"dtype": torch.long, "device": device}
    return BatchLayout(
        order=tuple(order),
        input_ids=torch.tensor(ids, **as_long),
        positions=torch.tensor(positions, **as_long),
        slots=torch.tensor(slots, **as_long),
        num_rows=num_rows,
        row_tables=row_tables,
        row_lengths=row_lengths,
        prefills=tuple(prefills),
        fresh=fresh,
        sample_index=torch.tensor(sample_index, **as_long),
        sample_chunks=tuple(sample_chunks),
    )


def _row_tables(chunks: Sequence[ScheduledChunk], rows: list[int], positions: list[int],
                block_size: int, device: torch.device,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per row token: its chunk's block table (padded with block 0, beyond every length) and
    its context length, position + 1."""
    if not rows:
        return None, None
    max_blocks = -(-(max(positions) + 1) // block_size)
    tables = [list(chunks[i].block_ids[:max_blocks]) for i in rows]
    padded = torch.tensor([t + [0] * (max_blocks - len(t)) for t in tables], dtype=torch.long)
    counts = [chunks[i].num_new_tokens for i in rows]
    if any(n > 1 for n in counts):
        padded = padded.repeat_interleave(torch.tensor(counts), dim=0)
    lengths = torch.tensor(positions, dtype=torch.long) + 1
    return padded.to(device), lengths.to(device)


def row_mask(layout: BatchLayout, block_size: int) -> torch.Tensor | None:
    """The rows' additive float32 mask [1, rows, 1, max_blocks * block_size]:
    each row sees its own context, not the padding of its block table."""
    if layout.row_tables is None or layout.row_lengths is None:
        return None
    span = torch.arange(layout.row_tables.shape[1] * block_size, device=layout.row_tables.device)
    hidden = span[None, :] >= layout.row_lengths[:, None]
    mask = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    return mask.masked_fill_(hidden, float("-inf"))[None, :, None, :]


def _fresh_group(segments: list[PrefillSegment], dtype: torch.dtype,
                 device: torch.device) -> FreshGroup:
    max_len = max(seg.num_tokens for seg in segments)
    gather: list[int] = []
    targets: list[int] = []
    sources: list[int] = []
    for p, seg in enumerate(segments):
        n = seg.num_tokens
        gather.extend(range(seg.start, seg.start + n))
        gather.extend([seg.start] * (max_len - n))
        targets.extend(range(seg.start, seg.start + n))
        sources.extend(range(p * max_len, p * max_len + n))
    lengths = torch.tensor([seg.num_tokens for seg in segments], device=device)
    pos = torch.arange(max_len, device=device)
    # Key j is visible to query i when j <= i and j is a real token; padding queries still see
    # key 0, so no row of the softmax is empty.
    hidden = (pos[None, None, :] > pos[None, :, None]) | (pos[None, None, :] >= lengths[:, None,
                                                                                        None])
    mask = torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(hidden,
                                                                                float("-inf"))
    as_long = {"dtype": torch.long, "device": device}
    return FreshGroup(len(segments), max_len, torch.tensor(gather, **as_long),
                      torch.tensor(targets, **as_long), torch.tensor(sources, **as_long),
                      mask[:, None])


def _segment(chunk: ScheduledChunk, start: int, block_size: int, dtype: torch.dtype,
             device: torch.device) -> PrefillSegment:
    n = chunk.num_new_tokens
    done = chunk.num_computed_tokens
    if done == 0:  # the chunk is the whole history: causal attention over fresh keys
        return PrefillSegment(start, n, 0, None, None)
    total = done + n
    table = torch.tensor(chunk.block_ids[:-(-total // block_size)], dtype=torch.long,
                         device=device)
    query_pos = torch.arange(done, total, device=device)[:, None]
    key_pos = torch.arange(total, device=device)[None, :]
    mask = torch.zeros((n, total), dtype=dtype, device=device)
    mask.masked_fill_(key_pos > query_pos, float("-inf"))
    return PrefillSegment(start, n, done, table, mask)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    key_cache: torch.Tensor, value_cache: torch.Tensor,
                    layout: BatchLayout, block_size: int,
                    mask: torch.Tensor | None, decode_kernel: DecodeKernel | None = None,
                    kv_stored: bool = False) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, Hkv, D] (this iteration's); caches: [Hkv, slots, D];
    mask: `row_mask(layout)`, built once per iteration.

    Writes k, v into their slots (unless `kv_stored`: already written) and returns the
    attention output [T, H, D].
    """
    if not kv_stored:
        key_cache.index_copy_(1, layout.slots, k.transpose(0, 1))
        value_cache.index_copy_(1, layout.slots, v.transpose(0, 1))
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    rows = layout.num_rows
    if decode_kernel is not None and rows and rows == q.shape[0]:  # every token a row
        return decode_kernel(q, key_cache, value_cache, layout.row_tables, layout.row_lengths,
                             block_size, head_dim**-0.5)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if rows and decode_kernel is not None:
        # The CPU kernel reads each row's history in place, through its block table.
        out[:rows] = decode_kernel(q[:rows], key_cache, value_cache,
                                   layout.row_tables, layout.row_lengths, block_size,
                                   head_dim**-0.5)
    elif rows:
        keys = _gather(key_cache, layout.row_tables, block_size)  # [Hkv, rows, L, D]
        values = _gather(value_cache, layout.row_tables, block_size)
        # Grouped-query attention without repeating keys: a kv head's query heads act
        # as that head's query positions.
        queries = q[:rows].view(rows, num_kv_heads, group, head_dim).transpose(0, 1)
        att = _decode_attention(queries * head_dim**-0.5, keys, values, mask)
        out[:rows] = att.transpose(0, 1).reshape(rows, num_heads, head_dim)
    if layout.fresh is not None:
        _fresh_attention(q, k, v, layout.fresh, group, out)
    for seg in layout.prefills:
        end = seg.start + seg.num_tokens
        queries = q[seg.start:end].transpose(0, 1)[None]  # [1, H, n, D]
        if seg.block_table is None:
            keys = k[seg.start:end].transpose(0, 1)[None]
            values = v[seg.start:end].transpose(0, 1)[None]
            att = _sdpa_gqa(queries, keys, values, None, group)
        else:
            total = seg.num_computed + seg.num_tokens
            table = seg.block_table[None]
            keys = _gather(key_cache, table, block_size).transpose(0, 1)[:, :, :total]
            values = _gather(value_cache, table, block_size).transpose(0, 1)[:, :, :total]
            att = _sdpa_gqa(queries, keys, values, seg.mask, group)
        out[seg.start:end] = att[0].transpose(0, 1)
    return out


def _fresh_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fresh: FreshGroup,
                     group: int, out: torch.Tensor) -> None:
    shape = (fresh.num_seqs, fresh.max_len)
    queries = q.index_select(0, fresh.gather).view(*shape, *q.shape[1:]).transpose(1, 2)
    keys = k.index_select(0, fresh.gather).view(*shape, *k.shape[1:]).transpose(1, 2)
    values = v.index_select(0, fresh.gather).view(*shape, *v.shape[1:]).transpose(1, 2)
    att = _sdpa_gqa(queries, keys, values, fresh.mask, group)  # [P, H, max_len, D]
    att = att.transpose(1, 2).reshape(-1, *q.shape[1:])
    out.index_copy_(0, fresh.targets, att.index_select(0, fresh.sources))


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """q: [Hkv, rows, G, D] (pre-scaled); k, v: [Hkv, rows, L, D]; mask: float32 additive.

    Plain matmuls: for a few query rows per head they beat the CPU flash kernel
    (docs/BENCHMARKS.md, "Figures behind the code").
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float() + mask  # [Hkv, rows, G, L]
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


def _gather(cache: torch.Tensor, tables: torch.Tensor, block_size: int) -> torch.Tensor:
    """[Hkv, slots, D] gathered by block tables [B, nb] -> [Hkv, B, nb * block_size, D].

    index_select over whole blocks copies at memory speed (advanced indexing does not).
    """
    num_kv_heads, _, head_dim = cache.shape
    num_seqs, num_blocks = tables.shape
    blocks = cache.view(num_kv_heads, -1, block_size * head_dim)
    picked = blocks.index_select(1, tables.reshape(-1))
    return picked.view(num_kv_heads, num_seqs, num_blocks * block_size, head_dim)


def _sdpa_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              group: int) -> torch.Tensor:
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
