"""Hand-written CPU kernels, compiled on first use for this machine and cached.

`paged_decode_attention()` returns the compiled decode-attention kernel (paged_attention.cpp),
or None where it cannot be built (no compiler, no `ninja`, SLICESERVE_KERNELS=0): the engine
then uses its pure-PyTorch path, which gives the same results more slowly.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("paged_attention.cpp")
_FLAGS = ["-O3", "-march=native", "-ffast-math"]
_loaded: dict[str, Callable[..., torch.Tensor] | None] = {}


def paged_decode_attention() -> Callable[..., torch.Tensor] | None:
    """kernel(q [rows, H, D], key_cache [Hkv, slots, D], value_cache, tables [rows, blocks],
    lengths [rows], block_size, scale) -> [rows, H, D]; or None."""
    if "paged" not in _loaded:
        _loaded["paged"] = _build()
    return _loaded["paged"]


def _build() -> Callable[..., torch.Tensor] | None:
    if os.environ.get("SLICESERVE_KERNELS", "1") == "0":
        return None
    from sliceserve.model.loader import cache_dir

    source = _SOURCE.read_text()
    key = hashlib.sha256("\n".join([source, torch.__version__, platform.machine(),
                                    _cpu_model(), *_FLAGS]).encode()).hexdigest()[:16]
    build_dir = cache_dir() / "kernels" / key
    try:
        from torch.utils.cpp_extension import load_inline

        build_dir.mkdir(parents=True, exist_ok=True)
        module = load_inline(f"sliceserve_paged_{key}", cpp_sources=source,
                             functions=["paged_decode_attention"], extra_cflags=_FLAGS,
                             build_directory=str(build_dir), verbose=False)
    except Exception as e:  # no compiler, no ninja, a failed build: fall back, say why once
        print(f"sliceserve: CPU attention kernel unavailable ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); using the PyTorch path",
              file=sys.stderr)
        return None
    return module.paged_decode_attention


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()
