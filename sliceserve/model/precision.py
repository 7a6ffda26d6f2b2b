"""The number format a model runs in: the dtype it computes in and how its linear weights are
stored, chosen for the device (`dtype="auto"`, the default) or as asked.

    p = choose_precision("auto", "none", "cpu")
    p.dtype, p.quantization, p.reason   # 'float32', 'none', 'no native bf16 on this CPU ...'

What "auto" picks (measured, per CPU, in docs/BENCHMARKS.md, "Number format"):
- CUDA: bfloat16 where the GPU supports it, else float16;
- a CPU that computes bf16 natively (AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm): bfloat16,
  whose matmuls there run faster than float32's and read half the bytes;
- any other CPU: float32. There oneDNN emulates bf16, and every bf16 matmul is several times
  slower than the float32 one.
"auto" never quantizes: `quantization="int8"` (weight-only int8 linears) is an option,
measured in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sliceserve.model.cpu import CpuInfo, cpu_info

DTYPES = ("bfloat16", "float16", "float32")
DTYPE_CHOICES = ("auto", *DTYPES)
QUANTIZATIONS = ("none", "int8")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    dtype: str  # activations, KV cache, norms and embeddings; the linears compute in it too
    quantization: str  # "none", or "int8": the linear layers' weights stored as int8
    requested: str  # what was asked: "auto" or a dtype
    reason: str  # why this dtype, one line

    @property
    def label(self) -> str:
        """'bfloat16', 'float32+int8': the format in one word (profile keys, file names)."""
        return self.dtype if self.quantization == "none" else f"{self.dtype}+{self.quantization}"

    def as_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "quantization": self.quantization,
                "dtype_requested": self.requested, "dtype_reason": self.reason}


def check_choice(dtype: str, quantization: str | None) -> None:
    """ValueError unless `dtype` and `quantization` name formats the engine has."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    if (quantization or "none") not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got "
                         f"{quantization!r}")


def choose_precision(dtype: str = "auto", quantization: str | None = "none",
                     device: str = "cpu", cpu: CpuInfo | None = None) -> Precision:
    """The format for `device`: `dtype` as asked, or for "auto" the fastest measured there."""
    check_choice(dtype, quantization)
    quantization = quantization or "none"
    kind = device.split(":")[0]
    if quantization != "none" and kind != "cpu":
        raise ValueError(f"quantization={quantization!r} is for CPUs; device {device!r} "
                         "computes in bfloat16 or float16")
    if dtype != "auto":
        return Precision(dtype, quantization, dtype, "asked for")
    if kind == "cuda":
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Precision("bfloat16", quantization, "auto", "a GPU with bf16")
        return Precision("float16", quantization, "auto", "a GPU without bf16")
    if kind != "cpu":
        return Precision("float32", quantization, "auto", f"device {device!r}: float32")
    info = cpu if cpu is not None else cpu_info()
    if info.native_bf16:
        native = [f for f in ("avx512_bf16", "amx_bf16", "bf16", "svebf16") if f in info.flags]
        return Precision("bfloat16", quantization, "auto",
                         f"bf16 computed natively ({', '.join(native)})")
    return Precision("float32", quantization, "auto",
                     f"no native bf16 on this CPU ({' '.join(info.flags) or 'no listed flags'}): "
                     "bf16 matmuls would be emulated, float32 is computed natively")


def log_choice(precision: Precision, device: str) -> None:
    log.info("sliceserve: %s on %s (%s%s)", precision.label, device, precision.requested,
             "" if precision.requested != "auto" else f": {precision.reason}")


def machine_block(runner: Any) -> dict[str, Any]:
    """What a runner's timings depend on, for result files and profiles: the device, the CPU
    (model, architecture, the flags that matter), the number format and why, the compiled
    kernels' vector path, the thread count."""
    import torch

    config = getattr(runner, "config", None)
    device = str(getattr(config, "device", "cpu"))
    block: dict[str, Any] = {"device": device}
    if device.split(":")[0] == "cpu":
        block.update(cpu_info().as_dict())
    precision = getattr(runner, "precision", None)
    if isinstance(precision, Precision):
        block.update(precision.as_dict())
    block["kernels"] = str(getattr(runner, "kernel_path", "eager"))
    block["threads"] = int(torch.get_num_threads())
    return block
