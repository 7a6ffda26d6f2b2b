"""Which executor runs a model: "torch" (sliceserve's own PyTorch runner), "llamacpp" (a GGUF
on llama.cpp's kernels, sliceserve/llamacpp) or "auto".

"auto" picks llama.cpp for a GGUF file (the embedded default is one) when the `llamacpp` extra
is installed: it runs the file's quantized weights as shipped, where the PyTorch runner
dequantizes them to 16 or 32 bits (3-4x the memory). It does not time both: the speeds
measured side by side are in docs/BENCHMARKS.md. Anything else (a Hugging Face folder, no
extra) goes to "torch".
"""

from __future__ import annotations

from pathlib import Path

BACKENDS = ("torch", "llamacpp", "auto")


def resolve_backend(backend: str, model: str | Path | None) -> str:
    """"torch" or "llamacpp" for `model`; ValueError for an unknown backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    from sliceserve.llamacpp import missing_reason
    from sliceserve.model.loader import DEFAULT_MODEL

    is_gguf = (model is None or str(model).strip().lower() == DEFAULT_MODEL
               or str(model).lower().endswith(".gguf"))
    return "llamacpp" if is_gguf and missing_reason() is None else "torch"
