"""The llama.cpp executor's settings (frozen, checked on construction)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaCppConfig:
    """How llama.cpp is set up for the scheduler.

    The KV cache is one stream per sequence (llama.cpp's `kv_unified=False`): `max_num_seqs`
    streams of `context_tokens` cells each (llama.cpp rounds that up to a multiple of 256).
    The scheduler is told that one KV block is one stream (block size = the stream's cells), so
    its admission is exact: a request runs only while it holds a stream, and a stream is the
    sequence id of the request that holds it. Attention reads only the request's own stream,
    where a unified cache would mask over every request's cells."""

    context_tokens: int = 2048  # per sequence: the engine's max_model_len
    max_num_seqs: int = 16  # KV streams = requests that hold KV at once
    num_threads: int | None = None  # llama.cpp's threads (and torch's, for sampling); None: all
    batch_tokens: int = 2048  # tokens per llama_decode call (n_batch); a larger plan is split
    ubatch_tokens: int = 512  # llama.cpp's physical batch (n_ubatch)
    n_gpu_layers: int = 0  # layers offloaded to a GPU (a CUDA/Metal/Vulkan build of llama.cpp)
    # Flash attention: None lets llama.cpp decide by what the device supports (its "auto",
    # llama-server's default: on for a CPU); True / False force it.
    flash_attn: bool | None = None
    seed: int | None = None  # for requests without their own seed
    verbose: bool = False  # llama.cpp's own log on stderr

    def __post_init__(self) -> None:
        for name in ("context_tokens", "max_num_seqs", "batch_tokens", "ubatch_tokens",
                     "num_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_num_seqs > 255:  # llama.cpp's LLAMA_MAX_SEQ is 256; one is the scratch
            raise ValueError(f"max_num_seqs must be at most 255, got {self.max_num_seqs}")
        if self.flash_attn is not None and not isinstance(self.flash_attn, bool):
            raise ValueError(f"flash_attn must be None (llama.cpp's auto), True or False, got "
                             f"{self.flash_attn!r}")
        if not isinstance(self.n_gpu_layers, int) or self.n_gpu_layers < -1:
            raise ValueError(f"n_gpu_layers must be an integer >= -1 (-1: all), got "
                             f"{self.n_gpu_layers!r}")

    @property
    def device(self) -> str:
        return "cpu" if self.n_gpu_layers == 0 else "gpu"
