"""The machine a benchmark ran on, as its result files name it (no torch needed)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The instruction-set flags that decide these engines' speed on x86-64.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni",
                  "amx_bf16", "amx_int8")


def cpu_info() -> dict[str, Any]:
    """CPU model, the relevant flags it has, logical CPUs."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "flags": [f for f in RELEVANT_FLAGS if f in flags],
            "logical_cpus": os.cpu_count()}


def device_label() -> str:
    """'cpu (<model>; avx512f avx512_bf16 ...)': what a result file's `device` says."""
    info = cpu_info()
    return f"cpu ({info['cpu']}; {' '.join(info['flags']) or 'no avx2'})"
