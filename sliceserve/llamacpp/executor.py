"""LlamaCppExecutor: the engine's Executor on llama.cpp (a GGUF model, ggml's kernels).

A plan becomes one `llama_decode` call over all of its chunks (prompt chunks and decode tokens
of many sequences in one batch), or a few when it holds more than `batch_tokens` tokens. Each
request holds one KV stream of llama.cpp's cache (a sequence id), as it holds one KV block
of the scheduler's (see LlamaCppConfig). Logits come back only for the sampling tokens and are
sampled by the project's `Sampler`.

Stream ids are the executor's, not the scheduler's block ids, and are kept dense. llama.cpp
runs a batch over separate streams as one ubatch (one pass over the weights) per run of
consecutive stream ids in batch order (its `split_equal`), so rows in streams {0, 2, 5} cost
three passes where {0, 1, 2} cost one. Hence a new request takes the lowest free stream; when
one ends below a higher one that is still held, the highest is moved into the gap (a stream
copy, done by llama.cpp at the next decode); and each batch is written in stream order.

What a stream holds is tracked: which request (the object, not its id: ids may be reused) and
how many of its tokens. A request's block is remembered too: when the scheduler gives that
block to another request, the previous holder has ended, and its stream is cleared even if
no release reached the executor. A stream that holds more of a request than the plan says is
computed (recompute after preemption, a retried iteration) is cut back to it, so a stream
never mixes two requests and positions always continue where the cache ends, as llama.cpp
requires. A request that finishes, is aborted or rejected (`release`, which the Engine
registers as a scheduler finish listener) or is preempted (the plan's `preempted_ids`) has its
stream cleared at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sliceserve.core.plan import ExecuteResult, Plan, ScheduledChunk
from sliceserve.llamacpp.batch import BatchBuffers, token_at, tokens_of
from sliceserve.llamacpp.bindings import load_bindings, open_context, open_model
from sliceserve.llamacpp.config import LlamaCppConfig
from sliceserve.request import Request


class LlamaCppError(RuntimeError):
    """llama.cpp refused a batch or a plan does not fit the executor's streams."""


class LlamaCppExecutor:
    def __init__(self, gguf_path: str | Path, config: LlamaCppConfig | None = None) -> None:
        import torch

        from sliceserve.model.runner import RunnerStats
        from sliceserve.model.sampler import Sampler

        self.config = config = config or LlamaCppConfig()
        self.gguf_path = Path(gguf_path)
        self.lib = load_bindings(config.verbose)
        threads = config.num_threads or torch.get_num_threads()
        torch.set_num_threads(threads)  # sampling runs in torch; the profile key reads it
        self.num_threads = threads
        self._model, self.model_config = open_model(self.lib, self.gguf_path, config)
        # One stream more than the scheduler hands out: the scratch sequence that profiling
        # copies placeholder history from (fill_history).
        self._ctx, stream_tokens = open_context(self.lib, self._model, config, threads,
                                                config.max_num_seqs + 1)
        self._mem = self.lib.llama_get_memory(self._ctx)
        self.block_size = stream_tokens  # one KV block = one stream
        self.num_kv_blocks = config.max_num_seqs
        self.max_model_len = min(stream_tokens, self.model_config.max_position_embeddings)
        self._scratch = config.max_num_seqs
        self._scratch_len = 0
        self._owner: list[Request | None] = [None] * (config.max_num_seqs + 1)
        self._stored = [0] * (config.max_num_seqs + 1)  # tokens of the owner in the stream
        self._seq_of: dict[str, int] = {}  # request id -> its stream
        self._block = [-1] * (config.max_num_seqs + 1)  # the owner's scheduler block (-1: none)
        self.stream_moves = 0  # streams moved down into a free one (_compact)
        # Runs of consecutive stream ids in the last batch: llama.cpp runs at least one ubatch
        # (a pass over the weights) per run, more where prompt chunks differ in length.
        self.last_stream_runs = 0
        self._buffers = BatchBuffers(self.lib, config.batch_tokens)
        # All-greedy batches take numpy's argmax (the same first maximum as torch's): torch's
        # runs on its own OpenMP threads, which then spin beside llama.cpp's.
        self.sampler = Sampler(torch.device("cpu"), config.seed, argmax_rows=_argmax_rows,
                               eos_token_ids=self.model_config.eos_token_ids)
        self.stats = RunnerStats()
        # What the profiler reads of a runner (model/profile_plans.Runner).
        self.kernel_path = "llama.cpp"
        self.fast_paths: tuple[str, ...] = ()
        self.folder = self.gguf_path
        self.device = config.device
        self.cache = None  # llama.cpp allocates (and writes) its KV memory itself
        self.profile_id: str | None = None  # set by load_gguf: keys the cached profile

    # --- facts for the engine, the profiler and result files ---
    @property
    def dtype(self) -> str:
        # No dots: profile keys keep what follows a dtype's last dot.
        version = str(self.lib.__version__).replace(".", "-")
        attention = {None: "fa-auto", True: "fa", False: "no-fa"}[self.config.flash_attn]
        return f"llamacpp-v{version}/{self.model_config.file_type}-{attention}"

    @property
    def precision(self) -> Any:
        from sliceserve.model.precision import Precision

        return Precision(self.dtype, "none", "gguf",
                         "llama.cpp computes on the GGUF's weights as stored")

    @property
    def device_name(self) -> str:
        return f"{self.config.device}-{self.num_threads}t"

    # --- the Executor contract ---
    def execute(self, plan: Plan) -> ExecuteResult:
        start = time.perf_counter()
        for request_id in plan.preempted_ids:
            self._clear_request(request_id)
        self._compact()
        buffers = self._buffers
        buffers.grow(plan.num_tokens)
        token, pos, seq, flags = buffers.token, buffers.pos, buffers.seq, buffers.logits
        sampled: list[int] = []  # chunk index of each logits row, in batch order
        i = 0
        # In stream order: llama.cpp splits a batch over separate KV streams into one ubatch
        # (one pass over the weights) per run of consecutive stream ids in batch order.
        streams = [self._stream_for(chunk) for chunk in plan.chunks]
        order = sorted(range(len(streams)), key=streams.__getitem__)
        self.last_stream_runs = _runs([streams[k] for k in order])
        for k in order:
            chunk, s = plan.chunks[k], streams[k]
            first, n = chunk.num_computed_tokens, chunk.num_new_tokens
            end = first + n
            if end > self.max_model_len:
                raise LlamaCppError(f"request {chunk.request.request_id} reaches position "
                                    f"{end}, beyond max_model_len {self.max_model_len}")
            if n == 1:
                token[i] = token_at(chunk.request, first)
                pos[i] = first
                seq[i] = s
                flags[i] = chunk.samples
            else:
                token[i:i + n] = tokens_of(chunk.request, first, end)
                pos[i:i + n] = np.arange(first, end, dtype=np.int32)
                seq[i:i + n] = s
                flags[i:i + n] = 0
                flags[i + n - 1] = chunk.samples
            if chunk.samples:
                sampled.append(k)
            self._stored[s] = end
            i += n
        prepared = time.perf_counter()
        logits = self._decode(i, len(sampled))
        computed = time.perf_counter()
        token_ids: list[int | None] = [None] * len(plan.chunks)
        if sampled:
            import torch

            requests = [plan.chunks[k].request for k in sampled]
            for k, t in zip(sampled, self.sampler.sample(torch.from_numpy(logits), requests)):
                token_ids[k] = t
        end_s = time.perf_counter()
        stats = self.stats
        stats.iterations += 1
        stats.prepare_s += prepared - start
        stats.forward_s += computed - prepared
        stats.sample_s += end_s - computed
        return ExecuteResult(token_ids=token_ids, duration_s=end_s - start)

    def release(self, request: Request) -> None:
        """The request ended (completed, aborted, rejected): clear its sequence now. Register
        as a scheduler finish listener; safe for requests that never ran."""
        s = self._seq_of.get(request.request_id)
        if s is not None and self._owner[s] is request:
            self._clear_stream(s)

    # --- sequences ---
    def _assign(self, chunk: ScheduledChunk) -> int:
        """The chunk's stream: the one its request holds, else the lowest free one."""
        if len(chunk.block_ids) != 1 or not 0 <= chunk.block_ids[0] < self._scratch:
            raise LlamaCppError(f"request {chunk.request.request_id} has KV blocks "
                                f"{chunk.block_ids}: this executor needs exactly one block (its "
                                f"stream) per request; give the scheduler its scheduler_config()")
        block = chunk.block_ids[0]
        request = chunk.request
        try:
            held = self._block.index(block)
        except ValueError:
            held = -1
        if held >= 0 and self._owner[held] is not request:
            self._clear_stream(held)  # the scheduler gave its block away: its holder ended
        s = self._seq_of.get(request.request_id)
        if s is not None and self._owner[s] is request:
            self._block[s] = block  # the same, or the block it was re-admitted under
            return s
        if request.prompt_token_ids is None:
            raise LlamaCppError(f"request {request.request_id} has no prompt token ids")
        s = self._owner.index(None)  # one stream per block held: a free one exists
        if s >= self._scratch:
            raise LlamaCppError("no free KV stream: more requests hold KV than the executor "
                                "has streams")
        self._owner[s] = request
        self._block[s] = block
        self._seq_of[request.request_id] = s
        return s

    def _stream_for(self, chunk: ScheduledChunk) -> int:
        s = self._assign(chunk)
        request = chunk.request
        computed = chunk.num_computed_tokens
        if computed < self._stored[s]:
            self.lib.llama_memory_seq_rm(self._mem, s, computed, -1)
            self._stored[s] = computed
        elif computed > self._stored[s]:
            raise LlamaCppError(f"request {request.request_id} has {computed} tokens computed "
                                f"but its sequence holds {self._stored[s]}")
        return s

    def _clear_stream(self, s: int) -> None:
        owner = self._owner[s]
        if owner is not None and self._seq_of.get(owner.request_id) == s:
            del self._seq_of[owner.request_id]
        self.lib.llama_memory_seq_rm(self._mem, s, -1, -1)
        self._owner[s] = None
        self._stored[s] = 0
        self._block[s] = -1

    def _clear_request(self, request_id: str) -> None:
        s = self._seq_of.get(request_id)
        if s is not None:
            self._clear_stream(s)

    def _compact(self) -> None:
        """Move the highest held streams into the free ones below them, so that held streams
        are 0..n-1. llama.cpp copies the data at the next decode, before that decode's
        tokens are written, so a moved stream may be read (and its old id reused) at once."""
        owner = self._owner
        top = self._scratch - 1
        while True:
            while top >= 0 and owner[top] is None:
                top -= 1
            if top < 0:
                return
            try:
                hole = owner.index(None, 0, top)
            except ValueError:
                return
            self.lib.llama_memory_seq_cp(self._mem, top, hole, -1, -1)  # the whole stream
            self.lib.llama_memory_seq_rm(self._mem, top, -1, -1)
            request = owner[top]
            owner[hole], owner[top] = request, None
            self._stored[hole], self._stored[top] = self._stored[top], 0
            self._block[hole], self._block[top] = self._block[top], -1
            self._seq_of[request.request_id] = hole
            self.stream_moves += 1

    def reset(self) -> None:
        """Clear every sequence (after warm-up or profiling: their placeholder KV goes)."""
        self.lib.llama_memory_clear(self._mem, False)
        self._owner = [None] * len(self._owner)
        self._stored = [0] * len(self._stored)
        self._block = [-1] * len(self._block)
        self._seq_of.clear()
        self._scratch_len = 0

    def sequences_in_use(self) -> dict[int, int]:
        """{stream: tokens llama.cpp holds in it} for every non-empty stream (tests: no leak)."""
        used = {}
        for s in range(self._scratch):
            top = self.lib.llama_memory_seq_pos_max(self._mem, s)
            if top >= 0:
                used[s] = top + 1
        return used

    # --- decoding ---
    def _decode(self, num_tokens: int, num_outputs: int) -> np.ndarray:
        """Run the buffers' first `num_tokens` tokens in pieces of at most batch_tokens; the
        logits rows of the flagged tokens, in batch order ([num_outputs, vocab] float32)."""
        step = self.config.batch_tokens
        vocab = self.model_config.vocab_size
        pieces = []
        for start in range(0, num_tokens, step):
            count = min(step, num_tokens - start)
            rc = self.lib.llama_decode(self._ctx, self._buffers.view(start, count))
            if rc != 0:
                raise LlamaCppError(f"llama_decode failed with status {rc} on {count} tokens")
            outputs = int(self._buffers.logits[start:start + count].sum())
            if outputs:
                rows = np.ctypeslib.as_array(self.lib.llama_get_logits(self._ctx),
                                             shape=(outputs, vocab))
                # The buffer is llama.cpp's and the next call overwrites it.
                pieces.append(rows if start + count >= num_tokens else rows.copy())
        if not pieces:
            return np.zeros((0, vocab), dtype=np.float32)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    # --- profiling ---
    def fill_history(self, plan: Plan) -> None:
        """Give every chunk's sequence the history the plan says is computed, with placeholder
        KV copied from the scratch stream (llama.cpp only decodes a position after the ones
        its cache holds). For the profiler's synthetic plans; untimed there."""
        self._compact()
        gaps: list[tuple[ScheduledChunk, int]] = []
        for chunk in plan.chunks:
            if len(chunk.block_ids) != 1 or not 0 <= chunk.block_ids[0] < self._scratch:
                continue  # execute() names the problem
            s = self._assign(chunk)
            if 0 < chunk.num_computed_tokens and self._stored[s] < chunk.num_computed_tokens:
                gaps.append((chunk, s))
        if not gaps:
            return
        need = max(c.num_computed_tokens for c, _ in gaps) + 1
        if self._scratch_len < need:  # placeholder tokens, decoded once
            buffers = self._buffers
            buffers.grow(need)
            n = need - self._scratch_len
            buffers.token[:n] = 1
            buffers.pos[:n] = np.arange(self._scratch_len, need, dtype=np.int32)
            buffers.seq[:n] = self._scratch
            buffers.logits[:n] = 0
            self._decode(n, 0)
            self._scratch_len = need
        buffers = self._buffers
        for i, (chunk, s) in enumerate(gaps):
            self.lib.llama_memory_seq_rm(self._mem, s, -1, -1)
            self.lib.llama_memory_seq_cp(self._mem, self._scratch, s, -1, -1)  # whole stream
            self.lib.llama_memory_seq_rm(self._mem, s, chunk.num_computed_tokens, -1)
            # One token per stream makes llama.cpp copy the data now, not in the timed call
            # (which then cuts this token off again: it holds one more than computed).
            buffers.token[i] = 1
            buffers.pos[i] = chunk.num_computed_tokens
            buffers.seq[i] = s
            buffers.logits[i] = 0
        self._decode(len(gaps), 0)
        for chunk, s in gaps:
            self._stored[s] = chunk.num_computed_tokens + 1

    def close(self) -> None:
        """Free llama.cpp's context and model (also at garbage collection)."""
        lib = getattr(self, "lib", None)
        if lib is None:
            return
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the bindings may be gone already
            pass


def _runs(ordered: list[int]) -> int:
    """How many runs of consecutive ids an ascending list holds ([0, 1, 3] -> 2)."""
    return sum(1 for i, s in enumerate(ordered) if i == 0 or s != ordered[i - 1] + 1)


def _argmax_rows(logits: Any) -> Any:
    import torch

    return torch.from_numpy(logits.numpy().argmax(axis=1))
