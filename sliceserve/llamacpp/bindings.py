"""llama-cpp-python's low-level API: import it (with a clear error when it is missing), load a
GGUF model and make the context the executor runs on."""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sliceserve.llamacpp.config import LlamaCppConfig
from sliceserve.model.config import ModelLoadError

# GGUF architectures whose KV cache is plain causal attention, as the executor assumes (no
# recurrent state, no sliding window): the Llama family the PyTorch executor runs, plus Qwen3.
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class GgufFacts:
    """What the engine needs to know of the model (the part of ModelConfig it reads)."""

    architecture: str
    description: str  # llama.cpp's, e.g. "llama ?B Q4_1"
    file_type: str  # the weights' quantization as llama.cpp names it, e.g. "Q4_1"
    vocab_size: int
    max_position_embeddings: int  # the training context
    eos_token_ids: tuple[int, ...]  # the vocabulary's end-of-sequence and end-of-turn ids


def load_bindings(verbose: bool = False) -> Any:
    """The `llama_cpp` module, its backend initialised and its log quiet unless `verbose`."""
    from sliceserve.llamacpp import missing_reason

    reason = missing_reason()
    if reason is not None:
        raise ModelLoadError(reason)
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
    llama_cpp.llama_backend_init()
    return llama_cpp


def check_gguf(path: Path) -> str:
    """The GGUF's architecture; ModelLoadError when it is not a GGUF or not supported here."""
    from sliceserve.model.loader import gguf_architecture

    if not path.is_file():
        raise ModelLoadError(f"the llamacpp backend needs a .gguf file; {path} is not a file")
    arch = gguf_architecture(path)
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"the llamacpp backend does not support the GGUF architecture "
                             f"{arch!r} of {path}; supported: {', '.join(ARCHITECTURES)}")
    return arch


def open_model(lib: Any, path: Path, config: LlamaCppConfig) -> tuple[Any, GgufFacts]:
    arch = check_gguf(path)
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0x7FFFFFFF if config.n_gpu_layers == -1 else config.n_gpu_layers
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelLoadError(f"llama.cpp could not load {path} (a corrupt or unsupported GGUF)")
    vocab = lib.llama_model_get_vocab(model)
    n_vocab = lib.llama_vocab_n_tokens(vocab)
    eos = [t for t in (lib.llama_vocab_eos(vocab), lib.llama_vocab_eot(vocab)) if t >= 0]
    buf = ctypes.create_string_buffer(256)
    lib.llama_model_desc(model, buf, 256)
    description = buf.value.decode("utf-8", "replace")
    facts = GgufFacts(architecture=arch, description=description,
                      file_type=description.rsplit(" ", 1)[-1] if description else "gguf",
                      vocab_size=n_vocab,
                      max_position_embeddings=lib.llama_model_n_ctx_train(model),
                      eos_token_ids=tuple(dict.fromkeys(eos)))
    return model, facts


def open_context(lib: Any, model: Any, config: LlamaCppConfig, threads: int,
                 num_streams: int) -> tuple[Any, int]:
    """A context of `num_streams` KV streams (kv_unified off) of at least
    config.context_tokens cells each; returns it and the cells per stream."""
    params = lib.llama_context_default_params()
    params.n_seq_max = num_streams
    params.kv_unified = False
    params.n_ctx = config.context_tokens * num_streams
    params.n_batch = config.batch_tokens
    params.n_ubatch = min(config.ubatch_tokens, config.batch_tokens)
    params.n_threads = threads
    params.n_threads_batch = threads
    params.flash_attn_type = {None: lib.LLAMA_FLASH_ATTN_TYPE_AUTO,
                              True: lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                              False: lib.LLAMA_FLASH_ATTN_TYPE_DISABLED}[config.flash_attn]
    params.no_perf = True
    ctx = lib.llama_init_from_model(model, params)
    if not ctx:
        lib.llama_model_free(model)
        raise ModelLoadError(f"llama.cpp could not make a context of {num_streams} sequences x "
                             f"{config.context_tokens} tokens (too little memory?)")
    return ctx, int(lib.llama_n_ctx_seq(ctx))
