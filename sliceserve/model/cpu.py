"""What this CPU is and which of its features the engine's speed depends on.

    info = cpu_info()        # CpuInfo(model="AMD EPYC 7B13", arch="x86_64", flags=(...))
    info.native_bf16         # bf16 arithmetic in hardware (AVX512-BF16 / AMX, Arm BF16)
    info.as_dict()           # the machine block of result files and profiles

Read from /proc/cpuinfo (Linux), else from torch's own CPU probes. SLICESERVE_CPU_FLAGS
overrides the flags (space-separated, for trying the engine's choices as if on another CPU;
it changes no code the CPU runs).
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The flags that decide the engine's number format and kernels, as /proc/cpuinfo names them
# (x86 "flags", Arm "Features").
X86_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")
ARM_FLAGS = ("asimd", "asimdhp", "fphp", "asimddp", "bf16", "i8mm", "sve", "sve2", "svebf16")
FLAGS_ENV = "SLICESERVE_CPU_FLAGS"


@dataclass(frozen=True)
class CpuInfo:
    model: str  # "Intel(R) Xeon(R) Processor", "AMD EPYC 7B13", "Neoverse-N1", ...
    arch: str  # platform.machine(): x86_64, aarch64, arm64, ...
    all_flags: tuple[str, ...]  # every flag the CPU reports, sorted

    @property
    def flags(self) -> tuple[str, ...]:
        """The flags that matter here (X86_FLAGS / ARM_FLAGS) that this CPU has."""
        wanted = X86_FLAGS if self.is_x86 else ARM_FLAGS
        present = set(self.all_flags)
        return tuple(f for f in wanted if f in present)

    @property
    def is_x86(self) -> bool:
        return self.arch.lower() in ("x86_64", "amd64", "i686", "i386", "x86")

    @property
    def is_arm(self) -> bool:
        return self.arch.lower() in ("aarch64", "arm64") or self.arch.lower().startswith("arm")

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls in hardware: AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm. Without
        them oneDNN emulates bf16 (measured on an AVX2 EPYC: 5x slower than float32)."""
        have = set(self.all_flags)
        if self.is_x86:
            return bool({"avx512_bf16", "amx_bf16"} & have)
        return bool({"bf16", "svebf16"} & have)

    def describe(self) -> str:
        """One line: the model, the architecture and the flags that matter."""
        return f"{self.model} ({self.arch}; {' '.join(self.flags) or 'no listed flags'})"

    def as_dict(self) -> dict[str, Any]:
        return {"cpu": self.model, "arch": self.arch, "cpu_flags": list(self.flags),
                "native_bf16": self.native_bf16}


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """CpuInfo from the text of /proc/cpuinfo (its first processor's entry)."""
    model, flags = "", ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value
    if not model:
        model = _arm_part_name(text) or platform.processor() or "unknown CPU"
    return CpuInfo(model=model, arch=arch, all_flags=tuple(sorted(set(flags.split()))))


def _arm_part_name(text: str) -> str:
    """Arm's /proc/cpuinfo has no model name; name it by implementer and part numbers."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    implementer, part = fields.get("cpu implementer"), fields.get("cpu part")
    return f"Arm CPU (implementer {implementer}, part {part})" if implementer and part else ""


@functools.cache
def detected_cpu() -> CpuInfo:
    """The CPU as the machine reports it (SLICESERVE_CPU_FLAGS ignored): what code it runs."""
    arch = platform.machine() or "unknown"
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(), arch)
    except OSError:
        pass
    flags = []
    try:  # not Linux: torch's probes (cpuinfo) for the x86 features that matter
        import torch

        probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported",
                  "avx512f": "_is_avx512_supported", "avx2": "_is_avx2_supported"}
        flags = [name for name, probe in probes.items()
                 if getattr(torch._C._cpu, probe, lambda: False)()]
    except (ImportError, AttributeError, RuntimeError):
        pass
    return CpuInfo(model=platform.processor() or "unknown CPU", arch=arch,
                   all_flags=tuple(sorted(flags)))


def cpu_info() -> CpuInfo:
    """This machine's CPU (SLICESERVE_CPU_FLAGS, when set, replaces its flags)."""
    info = detected_cpu()
    override = os.environ.get(FLAGS_ENV)
    if override is not None:
        return CpuInfo(info.model, info.arch, tuple(sorted(set(override.split()))))
    return info
