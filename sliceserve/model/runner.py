"""ModelRunner: the engine's Executor for a real model.

It turns a `Plan` (per request: tokens to compute, its block table) into one batched forward
pass and one sampled token per sampling chunk, and reports the measured wall time. It owns the
weights and the KV memory; the scheduler owns which blocks belong to whom.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sliceserve.config import SchedulerConfig
from sliceserve.core.plan import ExecuteResult, Plan
from sliceserve.model.attention import build_layout
from sliceserve.model.config import ModelConfig
from sliceserve.model.cuda_graphs import DecodeGraphs
from sliceserve.model.kernels import cpu_kernels, kernel_info, paged_decode_attention
from sliceserve.model.kv_cache import DEFAULT_KV_CACHE_MEMORY_GB, KVCache, blocks_for_memory
from sliceserve.model.llama import LlamaModel
from sliceserve.model.loader import load_state_dict
from sliceserve.model.precision import Precision, check_choice, choose_precision, log_choice
from sliceserve.model.sampler import Sampler

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class RunnerStats:
    """Where the runner's time goes (seconds, summed over iterations): the model forward pass
    (logits included) against the engine's own work around it."""

    iterations: int = 0
    prepare_s: float = 0.0  # plan -> tensors (token ids, positions, slots, block tables, masks)
    forward_s: float = 0.0  # the model, logits included
    sample_s: float = 0.0  # sampling and the tokens back to Python

    def reset(self) -> None:
        self.iterations = 0
        self.prepare_s = self.forward_s = self.sample_s = 0.0


@dataclass(frozen=True)
class RunnerConfig:
    dtype: str = "auto"  # or bfloat16, float16, float32 (sliceserve.model.precision)
    quantization: str = "none"  # or "int8": weight-only int8 linear layers (CPU)
    device: str = "cpu"
    block_size: int = 16
    kv_cache_memory_gb: float | None = None  # KV budget; DEFAULT_KV_CACHE_MEMORY_GB when unset
    num_kv_blocks: int | None = None  # overrides kv_cache_memory_gb
    max_model_len: int | None = None  # default: the model's positions, capped by the cache
    num_threads: int | None = None  # torch CPU threads; None leaves torch's choice
    seed: int | None = None  # for requests without their own seed
    cuda_graphs: bool = True  # replay decode iterations as CUDA graphs (CUDA devices only)
    cpu_kernels: bool = True  # compiled CPU decode attention (built once per machine, cached)

    def __post_init__(self) -> None:
        check_choice(self.dtype, self.quantization)
        for name in ("block_size", "num_kv_blocks", "max_model_len", "num_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.kv_cache_memory_gb is not None and not self.kv_cache_memory_gb > 0:
            raise ValueError(f"kv_cache_memory_gb must be > 0, got {self.kv_cache_memory_gb!r}")

    def precision(self) -> Precision:
        """The number format this config gives on its device ("auto" resolved)."""
        return choose_precision(self.dtype, self.quantization, self.device)


class ModelRunner:
    def __init__(self, folder: str | Path, config: RunnerConfig | None = None) -> None:
        config = config or RunnerConfig()
        self.config = config
        try:
            self.device = torch.device(config.device)
        except RuntimeError as e:
            raise ValueError(f"bad device {config.device!r}: {e}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.folder = Path(folder)
        self.model_config = ModelConfig.from_folder(folder)
        self.precision = config.precision()
        log_choice(self.precision, config.device)
        self.dtype = DTYPES[self.precision.dtype]
        self.block_size = config.block_size
        self.num_kv_blocks = config.num_kv_blocks or blocks_for_memory(
            self.model_config, config.kv_cache_memory_gb or DEFAULT_KV_CACHE_MEMORY_GB,
            config.block_size, self.dtype)
        capacity = self.num_kv_blocks * self.block_size
        self.max_model_len = min(config.max_model_len or self.model_config.max_position_embeddings,
                                 self.model_config.max_position_embeddings, capacity)
        weights = load_state_dict(self.folder, self.dtype, self.device)
        self.model = LlamaModel(self.model_config, weights, self.max_model_len, self.dtype,
                                self.device, quantization=self.precision.quantization)
        del weights
        # One block more than the scheduler hands out: a scratch slot for padding rows.
        self.cache = KVCache(self.model_config, self.num_kv_blocks + 1, self.block_size,
                             self.dtype, self.device)
        self.scratch_slot = self.num_kv_blocks * self.block_size
        if self.device.type == "cpu" and config.cpu_kernels:
            if _kernel_fits(self.model_config):
                self.model.decode_kernel = paged_decode_attention()
            self.model.fused_ops = cpu_kernels()
        # Prompt chunks up to this many tokens go through the CPU kernel as rows: faster than
        # SDPA up to about this length, slower beyond, where the kernel's per-token cost grows
        # with the chunk (measured: docs/BENCHMARKS.md, "Figures behind the code").
        self.max_row_chunk = 1024 if self.model.decode_kernel is not None else 1
        self.graphs: DecodeGraphs | None = None
        if self.device.type == "cuda" and config.cuda_graphs:
            self.graphs = DecodeGraphs(self.model, self.cache, self.max_model_len,
                                       self.scratch_slot)
        fused = self.model.fused_ops
        self.sampler = Sampler(self.device, config.seed,
                               argmax_rows=None if fused is None else fused.argmax_rows,
                               eos_token_ids=self.model_config.eos_token_ids)
        self.stats = RunnerStats()

    def scheduler_config(self, **overrides: Any) -> SchedulerConfig:
        """Scheduler limits that match this runner's cache and model; `overrides` set the rest
        (the engine's `max_num_batched_tokens` and `max_num_seqs`, from its EngineConfig)."""
        base = SchedulerConfig(
            block_size=self.block_size,
            num_kv_blocks=self.num_kv_blocks,
            max_model_len=self.max_model_len,
            eos_token_ids=self.model_config.eos_token_ids,
        )
        return replace(base, **overrides)

    @property
    def kernel_path(self) -> str:
        """The compiled kernels' vector path ("avx512", "avx2", "portable", "scalar"), or
        "eager" when the runner uses none."""
        module = self.model.fused_ops
        return "eager" if module is None else str(kernel_info(module)["path"])

    @property
    def fast_paths(self) -> tuple[str, ...]:
        """The optional fast paths in use ("attention-kernel", "fused-ops", "cuda-graphs"):
        part of a profile's key (model/profile_cache.py)."""
        return tuple(name for name, on in (("attention-kernel", self.model.decode_kernel),
                                           ("fused-ops", self.model.fused_ops),
                                           ("cuda-graphs", self.graphs)) if on is not None)

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu-{torch.get_num_threads()}t"

    @torch.inference_mode()
    def execute(self, plan: Plan) -> ExecuteResult:
        start = time.perf_counter()
        chunks = plan.chunks
        for chunk in chunks:
            end = chunk.num_computed_tokens + chunk.num_new_tokens
            if end > self.max_model_len:
                raise ValueError(f"request {chunk.request.request_id} reaches position {end}, "
                                 f"beyond max_model_len {self.max_model_len}")
        if self.graphs is not None and self.graphs.can_run(chunks):
            prepared = time.perf_counter()
            logits: torch.Tensor | None = self.graphs.run(chunks)
            sample_chunks: Sequence[int] = range(len(chunks))
        else:
            layout = build_layout(chunks, self.block_size, self.dtype, self.device,
                                  max_row_chunk=self.max_row_chunk)
            prepared = time.perf_counter()
            hidden = self.model.forward(layout, self.cache)
            logits = self.model.logits(hidden) if layout.sample_chunks else None
            sample_chunks = layout.sample_chunks
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        computed = time.perf_counter()
        token_ids: list[int | None] = [None] * len(chunks)
        if logits is not None:
            requests = [chunks[i].request for i in sample_chunks]
            for i, token in zip(sample_chunks, self.sampler.sample(logits, requests)):
                token_ids[i] = token
        end = time.perf_counter()
        stats = self.stats
        stats.iterations += 1
        stats.prepare_s += prepared - start
        stats.forward_s += computed - prepared
        stats.sample_s += end - computed
        return ExecuteResult(token_ids=token_ids, duration_s=end - start)


def _kernel_fits(config: ModelConfig) -> bool:
    """The kernel's limits: head_dim 64 or 128, at most 8 query heads per kv head."""
    return (config.head_dim in (64, 128)
            and config.num_heads // config.num_kv_heads <= 8)
