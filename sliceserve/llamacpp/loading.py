"""Everything the engine needs to serve a GGUF on llama.cpp: the file, its tokenizer (the
project's own, through transformers, so that prompts and detokenization are the same as on the
PyTorch executor), the executor and the scheduler's limits that match its KV streams."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sliceserve.config import SchedulerConfig
from sliceserve.llamacpp.bindings import check_gguf
from sliceserve.llamacpp.config import LlamaCppConfig
from sliceserve.model.config import ModelLoadError


@dataclass
class LoadedGguf:
    executor: Any  # LlamaCppExecutor
    tokenizer: Any  # a transformers tokenizer
    scheduler_config: SchedulerConfig
    gguf_path: Path
    model_id: str  # keys the cached profile: the file's name and a hash of its identity


def resolve_gguf(model: str | Path | None) -> Path:
    """The GGUF file to run: the embedded default (None or "smollm2-135m"), or a .gguf path."""
    from sliceserve.model.loader import DEFAULT_MODEL, default_gguf_path

    if model is None or str(model).strip().lower() == DEFAULT_MODEL:
        return default_gguf_path()
    path = Path(model).expanduser()
    if path.is_dir():
        raise ModelLoadError(f"the llamacpp backend runs GGUF files; {path} is a folder (use "
                             f"backend='torch' for a Hugging Face folder)")
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist; the llamacpp backend needs a "
                             f".gguf file or 'smollm2-135m'")
    check_gguf(path)
    return path


def gguf_model_id(path: Path) -> str:
    st = path.resolve().stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return f"{path.stem}-{hashlib.sha256(key).hexdigest()[:10]}"


def load_gguf_tokenizer(path: Path) -> Any:
    """The GGUF's tokenizer as transformers builds it: from the converted folder when the
    PyTorch backend made one, else from the GGUF once, then from a small cached copy."""
    from sliceserve.model.loader import COMPLETE_MARKER, cache_dir, converted_folder
    from sliceserve.model.tokenizer import load_tokenizer

    converted = converted_folder(path)
    if (converted / COMPLETE_MARKER).is_file():
        return load_tokenizer(converted)
    cached = cache_dir() / "tokenizers" / converted.name
    if (cached / COMPLETE_MARKER).is_file():
        return load_tokenizer(cached)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # transformers raises many types for a bad file; name the file
        raise ModelLoadError(f"cannot read the tokenizer of {path}: {type(e).__name__}: {e}") \
            from e
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.tmp-", dir=cached.parent))
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(f"tokenizer of {path.resolve()}\n")
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    except OSError:
        pass  # a read-only cache costs the next start a few seconds, nothing else
    return tokenizer


def load_gguf(model: str | Path | None, config: LlamaCppConfig, *,
              max_num_batched_tokens: int = 2048, max_num_seqs: int | None = None) -> LoadedGguf:
    """Load `model` on llama.cpp. The scheduler's KV accounting is the executor's streams:
    `config.max_num_seqs` blocks of one stream each, max_model_len a stream's cells."""
    from sliceserve.llamacpp.executor import LlamaCppExecutor
    from sliceserve.model.tokenizer import eos_token_ids

    path = resolve_gguf(model)
    tokenizer = load_gguf_tokenizer(path)
    executor = LlamaCppExecutor(path, config)
    executor.profile_id = gguf_model_id(path)
    eos = eos_token_ids(tokenizer, executor.model_config)
    executor.sampler.eos_token_ids = eos  # min_tokens masks what stops
    rows = config.max_num_seqs if max_num_seqs is None else min(max_num_seqs,
                                                                config.max_num_seqs)
    scheduler_config = SchedulerConfig(
        max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=rows,
        block_size=executor.block_size, num_kv_blocks=executor.num_kv_blocks,
        max_model_len=executor.max_model_len, eos_token_ids=eos)
    return LoadedGguf(executor, tokenizer, scheduler_config, path, gguf_model_id(path))
