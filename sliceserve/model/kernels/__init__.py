"""Hand-written CPU kernels, compiled on first use for this machine and cached.

`cpu_kernels()` returns the compiled module, or None where it cannot be built (no compiler, no
`ninja`, SLICESERVE_KERNELS=0): the engine then uses its pure-PyTorch path, which computes
the same thing more slowly. The module holds
- paged_attention.cpp: `paged_decode_attention`, decode attention read in place through the
  block tables;
- fused_ops.cpp: `rms_norm`, `add_rms_norm_`, `rope_store_` and `silu_mul`, a layer's
  element-wise steps one pass each, and `argmax_rows` for greedy sampling;
- `kernel_path()`: the vector path the build took (simd.h): "avx512/16", "avx2/8",
  "portable/4" (ATen's vectors, e.g. NEON), "scalar/1" (the path, then float lanes).

Build variants (`VARIANTS`; SLICESERVE_KERNELS=<variant> picks one for the engine, default
"native"): "native" builds for this CPU (-march=native; the path follows the compiler's
target flags), "avx2" for AVX2 + FMA + F16C only (x86; what an AVX2 CPU gets, buildable on
an AVX-512 one), "portable" and "scalar" force those paths. Each variant is its own build,
cached under `<cache dir>/kernels/<hash>` (hash over the sources, torch, the CPU and its
flags, the variant and its compiler flags), with a `build.json` that records what it took.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# One compiled unit: simd.h (shared helpers) first, the Python bindings last.
_SOURCES = [Path(__file__).with_name(n)
            for n in ("simd.h", "paged_attention.cpp", "fused_ops.cpp", "bindings.cpp")]
# -fopenmp: at::parallel_for runs on OpenMP threads only when the extension is built with it.
# No -ffast-math: the kernels vectorize explicitly, and -ffp-contract=off keeps the compiler
# from fusing a rounded product into an add (eager PyTorch rounds each).
_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp"]
VARIANTS = ("native", "avx2", "portable", "scalar")
_VARIANT_FLAGS = {
    "native": ["-march=native"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],  # x86-64 + these: no AVX-512 whatever the host
    "portable": ["-march=native", "-DSLICESERVE_SIMD_PORTABLE"],
    "scalar": ["-march=native", "-DSLICESERVE_SIMD_SCALAR"],
}
ENV = "SLICESERVE_KERNELS"  # 0: off; 1 or a variant name: that build (default native)
_loaded: dict[str, Any] = {}


def engine_variant() -> str | None:
    """The variant the engine uses (SLICESERVE_KERNELS), None when the kernels are off."""
    value = os.environ.get(ENV, "1").strip().lower()
    if value in ("0", "off", "false", "no"):
        return None
    if value in ("", "1", "on", "true", "yes"):
        return "native"
    if value not in VARIANTS:
        raise ValueError(f"{ENV}={value!r}: expected 0, 1 or one of {', '.join(VARIANTS)}")
    return value


def cpu_kernels(variant: str | None = None) -> Any | None:
    """The compiled module of `variant` (default: the engine's, see `engine_variant`), or
    None where it cannot be built."""
    if variant is None:
        variant = engine_variant()
        if variant is None:
            return None
    if variant not in VARIANTS:
        raise ValueError(f"kernel variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if variant not in _loaded:
        _loaded[variant] = _build(variant)
    return _loaded[variant]


def paged_decode_attention() -> Callable[..., torch.Tensor] | None:
    """kernel(q [rows, H, D], key_cache [Hkv, slots, D], value_cache, tables [rows, blocks],
    lengths [rows], block_size, scale) -> [rows, H, D]; or None."""
    module = cpu_kernels()
    return None if module is None else module.paged_decode_attention


def kernel_info(module: Any | None = None) -> dict[str, Any]:
    """What the engine's kernels are (or `module`'s): {"variant", "path", "lanes"}; path
    "eager" when there are none."""
    if module is None:
        variant = engine_variant()
        module = cpu_kernels() if variant is not None else None
    if module is None:
        return {"variant": None, "path": "eager", "lanes": None}
    path, _, lanes = str(module.kernel_path()).partition("/")
    return {"variant": getattr(module, "_sliceserve_variant", None), "path": path,
            "lanes": int(lanes) if lanes.isdigit() else None}


def can_run(variant: str) -> bool:
    """Whether this machine can run `variant`'s code (avx2: an x86 CPU with AVX2, FMA, F16C)."""
    if variant != "avx2":
        return variant in VARIANTS
    from sliceserve.model.cpu import detected_cpu

    info = detected_cpu()
    return info.is_x86 and {"avx2", "fma", "f16c"} <= set(info.flags)


def _build(variant: str) -> Any | None:
    from sliceserve.model.cpu import detected_cpu
    from sliceserve.model.loader import cache_dir

    info = detected_cpu()  # the real one: the build is for the code this CPU runs
    if variant == "avx2" and not info.is_x86:
        print("sliceserve: the avx2 kernel variant needs an x86 CPU", file=sys.stderr)
        return None
    flags = _FLAGS + _VARIANT_FLAGS[variant]
    source = "\n".join(path.read_text() for path in _SOURCES)
    key = hashlib.sha256("\n".join([source, torch.__version__, platform.machine(), info.model,
                                    " ".join(info.all_flags), variant, *flags]
                                   ).encode()).hexdigest()[:16]
    build_dir = cache_dir() / "kernels" / key
    try:
        from torch.utils.cpp_extension import load

        build_dir.mkdir(parents=True, exist_ok=True)
        unit = _write_once(build_dir / "sliceserve_kernels.cpp", source)
        module = load(f"sliceserve_cpu_{key}", sources=[str(unit)], extra_cflags=flags,
                      extra_ldflags=["-fopenmp"], build_directory=str(build_dir), verbose=False)
    except Exception as e:  # no compiler, no ninja, a failed build: fall back, say why once
        print(f"sliceserve: CPU kernels ({variant}) unavailable ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); using the PyTorch path",
              file=sys.stderr)
        return None
    module._sliceserve_variant = variant
    _record(build_dir, variant, flags, str(module.kernel_path()), info.describe())
    return module


def _write_once(path: Path, text: str) -> Path:
    """`text` at `path`, written only when it differs (a newer file would rebuild)."""
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _record(build_dir: Path, variant: str, flags: list[str], path: str, cpu: str) -> None:
    """build.json beside the module: which variant, flags and vector path it took."""
    record = {"variant": variant, "path": path, "flags": flags, "torch": torch.__version__,
              "cpu": cpu}
    target = build_dir / "build.json"
    try:
        if not target.exists() or json.loads(target.read_text()) != record:
            tmp = build_dir / f".build.json.{os.getpid()}"
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(tmp, target)
    except (OSError, ValueError):
        pass  # a read-only cache: the record is a courtesy, the module is what matters
