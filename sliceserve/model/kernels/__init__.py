"""Hand-written CPU kernels, compiled on first use for this machine and cached.

`cpu_kernels()` returns the compiled module, or None where it cannot be built (no compiler, no
`ninja`, SLICESERVE_KERNELS=0): the engine then uses its pure-PyTorch path, which computes
the same thing more slowly. The module holds
- paged_attention.cpp: `paged_decode_attention`, decode attention read in place through the
  block tables;
- fused_ops.cpp: `rms_norm`, `add_rms_norm_`, `rope_store_` and `silu_mul`, a layer's
  element-wise steps one pass each, and `argmax_rows` for greedy sampling.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# One compiled unit: simd.h (shared helpers) first.
_SOURCES = [Path(__file__).with_name(n) for n in ("simd.h", "paged_attention.cpp", "fused_ops.cpp")]
_FUNCTIONS = ["paged_decode_attention", "rms_norm", "add_rms_norm_", "rope_store_", "silu_mul",
              "argmax_rows"]
# -fopenmp: at::parallel_for runs on OpenMP threads only when the extension is built with it.
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
_loaded: dict[str, Any] = {}


def cpu_kernels() -> Any | None:
    """The compiled module (its functions are listed above), or None."""
    if "module" not in _loaded:
        _loaded["module"] = _build()
    return _loaded["module"]


def paged_decode_attention() -> Callable[..., torch.Tensor] | None:
    """kernel(q [rows, H, D], key_cache [Hkv, slots, D], value_cache, tables [rows, blocks],
    lengths [rows], block_size, scale) -> [rows, H, D]; or None."""
    module = cpu_kernels()
    return None if module is None else module.paged_decode_attention


def _build() -> Any | None:
    if os.environ.get("SLICESERVE_KERNELS", "1") == "0":
        return None
    from sliceserve.model.loader import cache_dir

    source = "\n".join(path.read_text() for path in _SOURCES)
    key = hashlib.sha256("\n".join([source, torch.__version__, platform.machine(),
                                    _cpu_model(), *_FLAGS]).encode()).hexdigest()[:16]
    build_dir = cache_dir() / "kernels" / key
    try:
        from torch.utils.cpp_extension import load_inline

        build_dir.mkdir(parents=True, exist_ok=True)
        return load_inline(f"sliceserve_cpu_{key}", cpp_sources=source, functions=_FUNCTIONS,
                           extra_cflags=_FLAGS, extra_ldflags=["-fopenmp"],
                           build_directory=str(build_dir), verbose=False)
    except Exception as e:  # no compiler, no ninja, a failed build: fall back, say why once
        print(f"sliceserve: CPU kernels unavailable ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); using the PyTorch path",
              file=sys.stderr)
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()
