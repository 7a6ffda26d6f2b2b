"""GGUF models on llama.cpp's kernels, under sliceserve's scheduler (`backend="llamacpp"`).

`LlamaCppExecutor` is an `Executor` like `ModelRunner`: it runs each plan as one (or, past the
batch size, a few) `llama_decode` calls through llama-cpp-python's low-level API, every request
a sequence of llama.cpp's KV cache, and samples with the project's own `Sampler` from
llama.cpp's logits, so seeds, stop handling and detokenization mean the same on both
executors. It needs the optional extra `sliceserve[llamacpp]` (scripts/setup.sh installs it).
"""

from __future__ import annotations

import importlib.util

from sliceserve.llamacpp.config import LlamaCppConfig

INSTALL_HINT = "pip install 'sliceserve[llamacpp]' (scripts/setup.sh installs it)"


def missing_reason() -> str | None:
    """Why the llama.cpp backend cannot run here, or None when its bindings are installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return ("the llama.cpp backend needs llama-cpp-python, which is not installed: "
                + INSTALL_HINT)
    return None


__all__ = ["INSTALL_HINT", "LlamaCppConfig", "missing_reason"]
