"""The executor options of the commands that load a model: `--backend` and llama.cpp's own
(serve, run, profile)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

BACKENDS = ("torch", "llamacpp", "auto")  # sliceserve.engine.backends.BACKENDS

BackendOpt = Annotated[str, typer.Option(
    "--backend", help="torch (sliceserve's PyTorch executor), llamacpp (a GGUF on llama.cpp's "
    "kernels: the `llamacpp` extra) or auto (llamacpp for a GGUF where it is installed)")]
CtxSizeOpt = Annotated[int | None, typer.Option(
    "--ctx-size", help="llamacpp: tokens per sequence (prompt + output; default 2048, "
    "rounded up to a multiple of 256)")]
SeqsOpt = Annotated[int | None, typer.Option(
    "--kv-seqs", help="llamacpp: sequences that hold KV at once (default 16)")]
GpuLayersOpt = Annotated[int, typer.Option(
    "--n-gpu-layers", help="llamacpp: layers offloaded to a GPU build of llama.cpp (-1: all)")]
BatchOpt = Annotated[int | None, typer.Option(
    "--batch-size", help="llamacpp: tokens per llama_decode call (default 2048)")]


def llamacpp_options(ctx_size: int | None, kv_seqs: int | None, n_gpu_layers: int,
                     batch_size: int | None) -> dict[str, Any]:
    """EngineConfig.llamacpp from these flags (the ones given)."""
    given = {"context_tokens": ctx_size, "max_num_seqs": kv_seqs, "batch_tokens": batch_size,
             "n_gpu_layers": n_gpu_layers or None}
    return {k: v for k, v in given.items() if v is not None}
